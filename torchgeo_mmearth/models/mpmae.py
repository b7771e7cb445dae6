"""MP-MAE: the Multi-Pretext Masked Autoencoder of MMEarth, in one module."""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import timm
import torch
from torch import Tensor, nn

from ..losses import MultiPretextLoss
from ..losses.mpmae import Aggregation
from ..modalities import PretextTask, default_pretext_tasks
from .conversion import MPMAEParts, mpmae_parts
from .masked_encoder import (
    GRNPooling,
    MaskedPath,
    masked_forward,
    random_patch_mask,
    upsample_mask,
)
from .mmearth_convnextv2 import checkpoint_filter_fn
from .mpmae_decoder import DecoderInit, MultiPretextDecoder

__all__ = ['MPMAE', 'EncoderInit', 'MPMAEOutput', 'PretrainedLoad']

#: Weight initialisation schemes of the encoder of :class:`MPMAE`.
EncoderInit = Literal['timm', 'reference']


def _reference_encoder_init(encoder: nn.Module) -> None:
    """FCMAE's re-initialisation of its encoder (vishalned/MMEarth-train).

    FCMAE applies its ``_init_weights`` to every module after the encoder's own
    initialisation: depthwise kernels and ``MinkowskiLinear`` weights get a
    truncated normal of standard deviation 1.0 (truncated at +-2), their biases 0;
    the other convolutions keep standard deviation 0.02.
    """
    for name, module in encoder.named_modules():
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
        pointwise = isinstance(module, nn.Linear) and '.mlp.' in f'.{name}'
        if depthwise or pointwise:
            nn.init.trunc_normal_(module.weight, std=1.0, a=-2.0, b=2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MPMAEOutput(NamedTuple):
    """What one MP-MAE forward pass computes."""

    #: Total loss (uncertainty-weighted or plain sum over tasks).
    loss: Tensor
    #: Loss of each task, by task name.
    task_losses: dict[str, Tensor]
    #: Fraction of valid targets of each task (no gradient), by task name.
    valid_fractions: dict[str, Tensor]
    #: Decoder predictions, by task name (see :class:`MultiPretextDecoder`).
    predictions: dict[str, Tensor]
    #: Patch mask ``(B, G_h, G_w)``, True where a patch was masked.
    mask: Tensor
    #: Encoder features ``(B, C, G_h, G_w)``, zero at inactive cells.
    features: Tensor


@dataclass(frozen=True)
class PretrainedLoad:
    """What :meth:`MPMAE.load_pretrained` took from a checkpoint, and what it did not.

    Attributes:
        loaded: the parts of the model set from the checkpoint (module paths of
            :class:`MPMAE`, a task's log-variance as
            ``criterion.weighting.log_vars[<task>]``).
        new: the parts of the model left at their fresh initialisation, each with
            the reason (a task the checkpoint lacks, another shape).
        unused: the parts of the checkpoint that the model has no place for, each
            with the reason.
    """

    loaded: tuple[str, ...]
    new: dict[str, str]
    unused: dict[str, str]

    def summary(self) -> str:
        """The report in a few lines, as the pretraining task logs it.

        Returns:
            One line each for the loaded, new and unused parts.
        """

        def listed(parts: Mapping[str, str]) -> str:
            return '; '.join(f'{part} ({why})' for part, why in parts.items())

        return (
            f'loaded: {", ".join(_grouped(self.loaded))}\n'
            f'new (freshly initialised): {listed(self.new) or "none"}\n'
            f'unused from the checkpoint: {listed(self.unused) or "none"}'
        )


def _grouped(paths: Sequence[str]) -> list[str]:
    """``heads.a``, ``heads.b``, ``v[a]``, ``v[b]`` as ``heads.{a, b}``, ``v[a, b]``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        if path.endswith(']'):
            stem, _, name = path[:-1].partition('[')
            groups.setdefault((stem + '[', ']'), []).append(name)
        elif path.startswith('decoder.heads.'):
            groups.setdefault(('decoder.heads.{', '}'), []).append(path[14:])
        else:
            groups.setdefault((path, ''), [])
    return [
        f'{start}{", ".join(names)}{end}' if names else start
        for (start, end), names in groups.items()
    ]


class MPMAE(nn.Module):
    """Multi-Pretext Masked Autoencoder (MP-MAE) on an MMEarth ConvNeXt V2.

    One forward pass of MP-MAE pretraining (Nedungadi et al., MMEarth, ECCV 2024):

    1. per sample, a random ``mask_ratio`` of the patches of the Sentinel-2 input is
       masked (:func:`~torchgeo_mmearth.models.masked_encoder.random_patch_mask`);
    2. the encoder sees only the pixels of the visible patches that hold data (at
       least one finite band), exactly as the sparse ConvNeXt V2 of the reference
       (:func:`~torchgeo_mmearth.models.masked_encoder.masked_forward`);
    3. the decoder predicts every pretext task from the encoder features with mask
       tokens in the masked cells (:class:`MultiPretextDecoder`);
    4. the losses of the tasks, on masked patches for pixel-level tasks and with
       no-data left out, are combined (:class:`~torchgeo_mmearth.losses.MultiPretextLoss`).

    The batch is a normalised MMEarth batch (e.g. from
    :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`): the input is
    ``batch[input_key]``, NaN at no-data, and every task's target is
    ``batch[task.key]``. The encoder is a plain timm model: after pretraining,
    ``mpmae.encoder.state_dict()`` loads into ``timm.create_model(name)``.

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        encoder: str | nn.Module = 'mmearth_convnextv2_atto',
        in_chans: int = 12,
        patch_size: int = 8,
        tasks: Sequence[PretextTask] | None = None,
        mask_ratio: float = 0.6,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        shared_decoder: bool = True,
        decoder_init: DecoderInit = 'reference',
        encoder_init: EncoderInit = 'timm',
        norm_pix_loss: Collection[str] | None = None,
        aggregation: Aggregation = 'uncertainty',
        grn_pooling: GRNPooling = 'batch',
        masked_path: MaskedPath = 'auto',
        input_key: str = 'image_sentinel2',
    ) -> None:
        """Initialize a new MPMAE instance.

        Args:
            encoder: a registered timm model name (built with *in_chans* and
                *patch_size*, without classifier) or an encoder module with
                ``num_features`` and the layout of
                :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`.
            in_chans: input channels when *encoder* is a name.
            patch_size: masking patch size, which must equal the encoder's total
                stride (8 for 56 px inputs, 16 for 112 px inputs).
            tasks: pretext tasks; None for the 12 MP-MAE tasks
                (:func:`~torchgeo_mmearth.modalities.default_pretext_tasks`).
            mask_ratio: fraction of masked patches per sample, in [0, 1).
            decoder_dim: decoder width.
            decoder_depth: number of decoder blocks.
            shared_decoder: one decoder for all tasks (the released checkpoints)
                or one per task.
            decoder_init: ``'reference'`` or ``'timm'`` decoder initialisation.
            encoder_init: ``'timm'`` keeps the encoder's own initialisation
                (standard deviation 0.02); ``'reference'`` re-initialises its
                depthwise convolutions and MLPs with standard deviation 1.0, as the
                reference's FCMAE did (see :doc:`/fixes`).
            norm_pix_loss: tasks whose pixel targets are normalised per patch; None
                for sentinel2 when it is a task.
            aggregation: ``'uncertainty'`` or ``'unweighted'`` task weighting.
            grn_pooling: GRN statistics of the masked encoder over the whole batch
                (``'batch'``, as MinkowskiEngine and the released checkpoints) or per
                sample.
            masked_path: how the masked encoder computes its pointwise layers
                (``'auto'``, ``'dense'`` or ``'packed'``).
            input_key: batch key of the encoder input.

        Raises:
            ValueError: if *mask_ratio* is out of range, *patch_size* is not the
                encoder's total stride or *encoder_init* is unknown.
            TypeError: if *encoder* has no ``num_features``.
        """
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
        if encoder_init not in get_args(EncoderInit):
            raise ValueError(
                f'Unknown encoder_init {encoder_init!r}; valid choices are '
                f'{get_args(EncoderInit)}'
            )
        if isinstance(encoder, str):
            encoder = timm.create_model(
                encoder, in_chans=in_chans, patch_size=patch_size, num_classes=0
            )
        stride = getattr(encoder, 'patch_size', patch_size)
        if stride != patch_size:
            raise ValueError(
                f'patch_size {patch_size} must equal the encoder patch size {stride}'
            )
        num_features = getattr(encoder, 'num_features', None)
        if not isinstance(num_features, int):
            raise TypeError(
                f'encoder {type(encoder).__name__} has no integer num_features '
                '(the channels of its last stage)'
            )
        if encoder_init == 'reference':
            _reference_encoder_init(encoder)
        self.encoder = encoder
        self.tasks = tuple(default_pretext_tasks() if tasks is None else tasks)
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.grn_pooling = grn_pooling
        self.masked_path = masked_path
        self.input_key = input_key
        self.decoder = MultiPretextDecoder(
            num_features,
            patch_size,
            self.tasks,
            decoder_dim=decoder_dim,
            decoder_depth=decoder_depth,
            shared_decoder=shared_decoder,
            init=decoder_init,
        )
        self.criterion = MultiPretextLoss(
            self.tasks, patch_size, aggregation=aggregation, norm_pix_loss=norm_pix_loss
        )

    @property
    def norm_pix_loss(self) -> frozenset[str]:
        """Tasks whose pixel targets, and so predictions, are normalised per patch."""
        return self.criterion.norm_pix_loss

    def task_log_variances(self) -> dict[str, Tensor]:
        """The learned log-variances of the uncertainty weighting, by task name.

        Returns:
            Detached scalars, one per task; empty when the tasks are summed
            unweighted.
        """
        weighting = self.criterion.weighting
        if weighting is None:
            return {}
        log_vars = weighting.log_vars.detach()
        return {
            task.name: value for task, value in zip(self.tasks, log_vars, strict=True)
        }

    def load_pretrained(
        self, checkpoint: Mapping[str, Any] | MPMAEParts
    ) -> PretrainedLoad:
        """Initialise the model from a whole MP-MAE checkpoint, part by part.

        The encoder must be the checkpoint's (architecture, input bands and patch
        size; an error otherwise, as nothing could be continued). Every other part
        loads when the checkpoint has it with the same shape: the projection and
        mask token, the decoder (a shared decoder from the checkpoint's shared one;
        per-task decoders from the task's own or from the shared one), the
        image-level LayerNorm, each task's head and its uncertainty log-variance,
        matched by task name. A task the checkpoint lacks, or with other channels
        (bands, classes), keeps its fresh initialisation.

        Args:
            checkpoint: a checkpoint in a format of
                :func:`~torchgeo_mmearth.models.conversion.mpmae_parts` (the
                official pretraining checkpoints, an
                :class:`~torchgeo_mmearth.trainers.MPMAETask` checkpoint, an
                :class:`MPMAE` state dict), or its converted parts.

        Returns:
            Which parts were loaded, which are new, and which parts of the
            checkpoint were not used.

        Raises:
            ValueError: if the checkpoint is not a whole MP-MAE checkpoint, its
                encoder is another architecture, or it has one decoder per task
                and this model shares one.
        """
        parts = (
            checkpoint
            if isinstance(checkpoint, MPMAEParts)
            else mpmae_parts(checkpoint)
        )
        own = self.state_dict()
        values: dict[str, Tensor] = {}
        loaded: list[str] = []
        new: dict[str, str] = {}
        unused: dict[str, str] = {}

        def take(path: str, tensors: Mapping[str, Tensor] | None, why: str) -> None:
            """Load the module at *path* from *tensors* (its keys), or say why not."""
            wanted = {
                k.removeprefix(f'{path}.'): v
                for k, v in own.items()
                if k.startswith(f'{path}.')
            }
            if tensors is None:
                new[path] = why
            elif tensors.keys() != wanted.keys():
                extra = sorted(tensors.keys() - wanted.keys())
                lacking = sorted(wanted.keys() - tensors.keys())
                new[path] = (
                    f'other entries (only in the checkpoint: {extra[:3]}, only in '
                    f'the model: {lacking[:3]})'
                )
            elif any(tensors[k].shape != wanted[k].shape for k in wanted):
                key = next(k for k in wanted if tensors[k].shape != wanted[k].shape)
                new[path] = (
                    f'{key}: {tuple(tensors[key].shape)} in the checkpoint, '
                    f'{tuple(wanted[key].shape)} in the model'
                )
            else:
                values.update({f'{path}.{k}': v for k, v in tensors.items()})
                loaded.append(path)

        encoder = checkpoint_filter_fn(parts.encoder, self.encoder)
        values.update({f'encoder.{k}': v for k, v in encoder.items()})
        loaded.append('encoder')
        take('decoder.proj', parts.projection, '')
        token = own['decoder.mask_token']
        if parts.mask_token.shape == token.shape:
            values['decoder.mask_token'] = parts.mask_token
            loaded.append('decoder.mask_token')
        else:
            new['decoder.mask_token'] = (
                f'{tuple(parts.mask_token.shape)} in the checkpoint, '
                f'{tuple(token.shape)} in the model'
            )
        decoder = self.decoder
        ours = {task.name for task in self.tasks}
        if decoder.decoder is not None:
            if not parts.shared_decoder:
                raise ValueError(
                    'the checkpoint has one decoder per task; build MPMAE with '
                    'shared_decoder=False to continue it'
                )
            take(
                'decoder.decoder',
                next(iter(parts.decoders.values()), None),
                'the checkpoint has no decoder',
            )
            if decoder.image_norm is not None:
                take(
                    'decoder.image_norm',
                    next(iter(parts.image_norms.values()), None),
                    'the checkpoint has no image-level task',
                )
        else:
            # Per-task modules: the task's own, else the one the checkpoint shares.
            for modules, found, path, why in (
                (decoder.decoders, parts.decoders, 'decoders', 'a task'),
                (
                    decoder.image_norms,
                    parts.image_norms,
                    'image_norms',
                    'an image-level task',
                ),
            ):
                shared = (
                    next(iter(found.values()), None) if parts.shared_decoder else None
                )
                for name in modules:
                    take(
                        f'decoder.{path}.{name}',
                        found.get(name, shared),
                        f'not {why} of the checkpoint',
                    )
        for task in self.tasks:
            take(
                f'decoder.heads.{task.name}',
                parts.heads.get(task.name),
                'not a task of the checkpoint',
            )
        for name in parts.tasks:
            if name not in ours:
                unused[f'head {name}'] = 'not a task of the model'

        weighting = self.criterion.weighting
        if weighting is not None:
            log_vars = weighting.log_vars.detach().clone()
            for i, task in enumerate(self.tasks):
                path = f'criterion.weighting.log_vars[{task.name}]'
                if task.name in parts.log_vars:
                    log_vars[i] = parts.log_vars[task.name]
                    loaded.append(path)
                elif parts.log_vars:
                    new[path] = 'not a task of the checkpoint'
                else:
                    new[path] = 'the checkpoint was trained with unweighted losses'
            values['criterion.weighting.log_vars'] = log_vars
            for name in parts.log_vars:
                if name not in ours:
                    unused[f'log-variance {name}'] = 'not a task of the model'
        elif parts.log_vars:
            unused['log-variances'] = 'the model sums its losses unweighted'

        result = self.load_state_dict(values, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        return PretrainedLoad(tuple(loaded), new, unused)

    def forward(
        self,
        batch: Mapping[str, Any],
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MPMAEOutput:
        """Mask, encode, decode and compute the pretext losses of a batch.

        Args:
            batch: normalised MMEarth batch with the input and every task's target.
            mask: patch mask ``(B, G_h, G_w)`` (True = masked) to use instead of a
                random one.
            generator: random generator for the patch mask.

        Returns:
            The losses, predictions, mask and encoder features.

        Raises:
            KeyError: if the input is missing from the batch.
            ValueError: if the input size is not a multiple of the patch size.
        """
        if self.input_key not in batch:
            raise KeyError(f'The batch has no input {self.input_key!r}')
        x: Tensor = batch[self.input_key]
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f'Input size {height} x {width} is not a multiple of the patch size '
                f'{self.patch_size}'
            )
        grid = (height // self.patch_size, width // self.patch_size)
        if mask is None:
            mask = random_patch_mask(
                x.shape[0], grid, self.mask_ratio, generator=generator, device=x.device
            )
        finite = torch.isfinite(x)
        # No-data pixels (no finite band) are inactive, as in the sparse reference.
        active = upsample_mask(~mask, self.patch_size).unsqueeze(1)
        active = active & finite.any(dim=1, keepdim=True)
        x = torch.where(finite, x, 0.0)
        features, _ = masked_forward(
            self.encoder, x, active, grn_pooling=self.grn_pooling, path=self.masked_path
        )
        predictions = self.decoder(features, mask)
        loss, task_losses, valid_fractions = self.criterion(predictions, batch, mask)
        return MPMAEOutput(
            loss, task_losses, valid_fractions, predictions, mask, features
        )
