"""MP-MAE: the Multi-Pretext Masked Autoencoder of MMEarth, in one module."""

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import timm
import torch
from torch import Tensor, nn

from ..losses import MultiPretextLoss
from ..losses.mpmae import Aggregation
from ..modalities import PretextTask, default_pretext_tasks
from .masked_encoder import (
    GRNPooling,
    MaskedPath,
    masked_forward,
    random_patch_mask,
    upsample_mask,
)
from .mpmae_decoder import DecoderInit, MultiPretextDecoder

__all__ = ['MPMAE', 'MPMAEOutput']


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
            ValueError: if *mask_ratio* is out of range or *patch_size* is not the
                encoder's total stride.
            TypeError: if *encoder* has no ``num_features``.
        """
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
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
