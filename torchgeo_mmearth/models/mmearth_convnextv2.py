"""MMEarth ConvNeXt V2: the MP-MAE encoder as a timm model.

The encoder of MP-MAE (Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext
Tasks For Geospatial Representation Learning", ECCV 2024,
https://arxiv.org/abs/2405.02771) is a ConvNeXt V2 whose stem is split in two: a
3x3 convolution at full resolution (MMEarth's "initial conv") and a depthwise
patch convolution of kernel = stride = P/8, so that the total stride equals the
masked-autoencoder patch size P (8 for the 56 px MMEarth64 models, 16 for the
112 px MMEarth and MMEarth100k models). The encoder output is then a 7 x 7 grid
for the pretraining input in both configurations.

Importing this module registers with timm, for every size (atto, femto, pico,
nano, tiny, base, large, huge):

* ``mmearth_convnextv2_<size>``: patch size 8 (or 16 with ``patch_size=16``);
* ``mmearth_convnextv2_<size>_p16``: patch size 16.

:func:`checkpoint_filter_fn` loads the official MP-MAE checkpoints (sparse
MinkowskiEngine keys, converted by :mod:`torchgeo_mmearth.models.conversion`) and
every other MMEarth encoder format into this model.

The official checkpoints are timm pretrained tags of the architecture they fit
(``mmearth_convnextv2_atto.s2_mp_mae`` is the default of
``mmearth_convnextv2_atto``; every tag is the lower-cased name of its
:class:`~torchgeo_mmearth.models.MMEarthWeights` member)::

    timm.create_model('mmearth_convnextv2_atto.s2_mp_mae', pretrained=True)
    timm.create_model(
        'mmearth_convnextv2_atto.s2_mp_mae',
        pretrained=True,
        pretrained_cfg_overlay={'file': 'checkpoint-199.pth'},  # a local copy
    )

Every entry point takes the same arguments: ``pretrained`` loads the weights of
the timm pretrained tag; further keyword arguments go to
:class:`MMEarthConvNeXtV2` and timm. TorchGeo-style weights (an
:class:`~torchgeo_mmearth.models.MMEarthWeights` member, its name or a checkpoint
file) load through the builders of :mod:`torchgeo_mmearth.models.weights`::

    from torchgeo_mmearth.models import MMEarthWeights, mmearth_convnextv2_atto

    mmearth_convnextv2_atto(weights=MMEarthWeights.S2_MP_MAE)
"""

import contextlib
import re
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.layers.norm import LayerNorm, LayerNorm2d
from timm.layers.weight_init import trunc_normal_
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    named_apply,
    register_model,
)
from timm.models._features import feature_take_indices
from timm.models.convnext import ConvNeXtStage
from torch import Tensor, nn

from .checkpoints import (
    OFFICIAL_CHECKPOINTS,
    OfficialCheckpoint,
    load_checkpoint,
    safe_globals,
)
from .conversion import encoder_entries

# A list, not a tuple: timm's register_model appends every entry point to it.
__all__ = [
    'MMEARTH_CONVNEXTV2_SIZES',
    'PATCH_SIZES',
    'MMEarthConvNeXtV2',
    'checkpoint_filter_fn',
]

#: Depths and widths of the four stages of each ConvNeXt V2 size.
MMEARTH_CONVNEXTV2_SIZES: dict[
    str, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
] = {
    'atto': ((2, 2, 6, 2), (40, 80, 160, 320)),
    'femto': ((2, 2, 6, 2), (48, 96, 192, 384)),
    'pico': ((2, 2, 6, 2), (64, 128, 256, 512)),
    'nano': ((2, 2, 8, 2), (80, 160, 320, 640)),
    'tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
    'huge': ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

#: Patch sizes (total encoder strides) of the published MP-MAE configurations.
PATCH_SIZES = (8, 16)

# Every LayerNorm of the MP-MAE encoder uses eps 1e-6.
_norm_layer = partial(LayerNorm2d, eps=1e-6)
_norm_layer_cl = partial(LayerNorm, eps=1e-6)

_GLOBAL_POOLS = ('avg', '')
_CLASSIFIER_PREFIXES = ('norm.', 'head.')


def _check_patch_size(patch_size: int) -> None:
    if patch_size not in PATCH_SIZES:
        raise ValueError(
            f'patch_size must be one of {PATCH_SIZES} (the total stride of the '
            f'encoder, 8 for 56 px and 16 for 112 px inputs), got {patch_size!r}'
        )


def _check_global_pool(global_pool: str) -> None:
    if global_pool not in _GLOBAL_POOLS:
        raise ValueError(
            f"global_pool must be 'avg' (average pooling) or '' (no pooling), "
            f'got {global_pool!r}'
        )


def _init_weights(
    module: nn.Module, name: str = '', head_init_scale: float = 1.0
) -> None:
    """Initialise a convolution or linear layer as timm's ConvNeXt does.

    Args:
        module: the layer.
        name: its qualified name in the model.
        head_init_scale: factor applied to the classifier's weight and bias.
    """
    if isinstance(module, nn.Conv2d | nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if name == 'head':
            module.weight.data.mul_(head_init_scale)
            if module.bias is not None:
                module.bias.data.mul_(head_init_scale)


def _make_head(num_features: int, num_classes: int) -> nn.Module:
    if num_classes < 0:
        raise ValueError(
            f'num_classes must be >= 0 (0 for no classifier), got {num_classes}'
        )
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(num_features, num_classes)
    _init_weights(head)
    return head


class MMEarthConvNeXtV2(nn.Module):
    """ConvNeXt V2 with the MMEarth stem, as pretrained by MP-MAE.

    The layers and their geometry are those of the sparse pretraining encoder and
    of MMEarth's segmentation UNet:

    * ``stem``: Conv 3x3 (stride 1, padding 1) -> LayerNorm -> GELU -> depthwise
      Conv of kernel = stride = P/8 (no padding) -> LayerNorm;
    * ``stages``: four ConvNeXt V2 stages (depthwise 7x7, LayerNorm, MLP with GRN,
      no layer scale); stages 1 to 3 start with LayerNorm -> Conv 2x2 stride 2;
    * global average pooling -> ``norm`` (LayerNorm) -> ``head`` (Linear), as in
      MMEarth's classifier.

    The total stride is the patch size P, so the feature maps have strides P/8,
    P/4, P/2 and P. MMEarth's own classifier pads differently (3x3 without
    padding, padded stem), which shifts the P=8 grid by one pixel against
    pretraining; this model keeps the pretraining geometry for classification too.

    GRN (timm's) uses eps 1e-6, as the sparse GRN (MinkowskiGRN) that the released
    weights were pretrained with; MMEarth's dense downstream GRN uses 1e-4. It
    normalises each sample over its positions, as MMEarth's downstream models do
    (the sparse GRN pools over the batch during pretraining).

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        in_chans: int = 12,
        num_classes: int = 0,
        global_pool: str = 'avg',
        depths: tuple[int, ...] = (2, 2, 6, 2),
        dims: tuple[int, ...] = (40, 80, 160, 320),
        patch_size: int = 8,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
    ) -> None:
        """Initialize a new MMEarthConvNeXtV2 instance.

        Args:
            in_chans: number of input bands (12 for the Sentinel-2 input of MP-MAE).
            num_classes: number of classifier outputs; 0 for none (``head`` is then
                an identity and the model returns pooled, normalised features).
            global_pool: 'avg' for global average pooling before ``norm`` and
                ``head``, '' to apply them at every position instead.
            depths: number of blocks of each of the four stages.
            dims: channels of each of the four stages.
            patch_size: total stride of the encoder, 8 or 16; the patch stem has
                kernel = stride = patch_size / 8.
            drop_rate: dropout rate before the classifier.
            drop_path_rate: stochastic depth rate of the last block, increasing
                linearly from 0 over the blocks.
            head_init_scale: factor applied to the initial classifier weights.

        Raises:
            ValueError: if an argument is out of range.
        """
        super().__init__()
        _check_patch_size(patch_size)
        _check_global_pool(global_pool)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(
                f'depths and dims need one entry per stage (4), got depths={depths} '
                f'and dims={dims}'
            )
        if in_chans < 1:
            raise ValueError(f'in_chans must be >= 1, got {in_chans}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')

        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = dims[-1]

        stem_stride = patch_size // 8
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=3, stride=1, padding=1),
            _norm_layer(dims[0]),
            nn.GELU(),
            nn.Conv2d(
                dims[0],
                dims[0],
                kernel_size=stem_stride,
                stride=stem_stride,
                groups=dims[0],
            ),
            _norm_layer(dims[0]),
        )

        # Rising linearly over all blocks; on the CPU so that meta-device builds work.
        drop_path_rates = torch.split(
            torch.linspace(0, drop_path_rate, sum(depths), device='cpu'), list(depths)
        )
        self.stages = nn.Sequential(
            *(
                ConvNeXtStage(
                    dims[max(i - 1, 0)],
                    dims[i],
                    kernel_size=7,
                    stride=1 if i == 0 else 2,
                    depth=depths[i],
                    drop_path_rates=drop_path_rates[i].tolist(),
                    # timm annotates float but documents None as no layer scale.
                    ls_init_value=None,  # type: ignore[arg-type]
                    conv_mlp=False,
                    use_grn=True,
                    norm_layer=_norm_layer,
                    norm_layer_cl=_norm_layer_cl,
                )
                for i in range(4)
            )
        )
        self.feature_info = [
            {
                'num_chs': dims[i],
                'reduction': stem_stride * 2**i,
                'module': f'stages.{i}',
            }
            for i in range(4)
        ]

        self.norm: nn.Module = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = _make_head(self.num_features, num_classes)
        named_apply(partial(_init_weights, head_init_scale=head_init_scale), self)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Group the parameters by depth, for layer-wise learning-rate decay.

        Args:
            coarse: one group per stage instead of one per block.

        Returns:
            timm's parameter-group regular expressions: the stem first, then the
            stages (their downsampling layers with their first block). ``norm`` and
            ``head`` fall in the last group. This is ConvNeXt V2's layer
            assignment; the fine-tuning recipe's layer decay uses it
            (:func:`torchgeo_mmearth.trainers.optim.param_groups_layer_decay`).
        """
        if coarse:
            return {'stem': r'^stem', 'blocks': r'^stages\.(\d+)'}
        return {
            'stem': r'^stem',
            'blocks': [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable or disable activation checkpointing in the stages.

        Args:
            enable: whether to recompute the block activations in the backward pass.
        """
        for stage in self.stages:
            cast(ConvNeXtStage, stage).grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        """Return the classifier.

        Returns:
            ``head``: the only layer that TorchGeo's ``freeze_backbone`` leaves
            trainable.
        """
        return self.head

    def reset_classifier(
        self, num_classes: int, global_pool: str | None = None
    ) -> None:
        """Replace the classifier with a freshly initialised one.

        Args:
            num_classes: number of outputs; 0 for none.
            global_pool: new pooling ('avg' or ''), or None to keep the current one.

        Raises:
            ValueError: if *num_classes* is negative or *global_pool* is unknown.
        """
        if global_pool is not None:
            _check_global_pool(global_pool)
            self.global_pool = global_pool
        self.head = _make_head(self.num_features, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the last feature map.

        Args:
            x: input of shape (B, in_chans, H, W).

        Returns:
            Features of shape (B, dims[-1], H / P, W / P).
        """
        return cast(Tensor, self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, normalise and classify a feature map.

        Args:
            x: output of :meth:`forward_features`.
            pre_logits: return the normalised features instead of the logits.

        Returns:
            (B, num_classes) logits, or (B, num_features) with *pre_logits*; with
            ``global_pool=''`` the same per position, as (B, C, H, W).
        """
        pooled = self.global_pool == 'avg'
        x = x.mean(dim=(2, 3)) if pooled else x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        if not pre_logits:
            x = self.head(x)
        return x if pooled else x.permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: input of shape (B, in_chans, H, W), H and W multiples of the patch
                size.

        Returns:
            Output of :meth:`forward_head`.
        """
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Compute the feature maps of selected stages.

        Args:
            x: input of shape (B, in_chans, H, W).
            indices: stages to return: the last *n* if an int, all if None.
            norm: accepted for timm compatibility; ``norm`` acts on pooled features,
                so there is no feature-map norm to apply.
            stop_early: skip the stages after the last one requested.
            output_fmt: 'NCHW', the only layout supported.
            intermediates_only: return only the list of feature maps.

        Returns:
            The selected feature maps (strides P/8, P/4, P/2, P), preceded by the
            last computed feature map unless *intermediates_only*.

        Raises:
            ValueError: if *output_fmt* is not 'NCHW'.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Remove the layers that :meth:`forward_intermediates` does not need.

        Args:
            indices: stages to keep, as in :meth:`forward_intermediates`.
            prune_norm: also remove ``norm``.
            prune_head: also remove the classifier.

        Returns:
            The indices of the stages that will be returned.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        truncated = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if truncated:
            # norm and head are sized for the last stage, which is gone.
            self.num_features = self.head_hidden_size = self.feature_info[max_index][
                'num_chs'
            ]
        if prune_norm or truncated:
            self.norm = nn.Identity()
        if prune_head or truncated:
            self.reset_classifier(0, '')
        return take_indices

    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a checkpoint in any format of :func:`checkpoint_filter_fn`.

        timm calls this for the pretrained tags of the official checkpoints
        (``custom_load``). The file is read with
        :func:`~torchgeo_mmearth.models.load_checkpoint`, which refuses pickles
        that could run code.

        Args:
            checkpoint_path: local path of the checkpoint.

        Raises:
            ValueError: if the checkpoint does not fit this model (other
                architecture, input bands or patch size).
        """
        checkpoint = load_checkpoint(checkpoint_path)
        self.load_state_dict(checkpoint_filter_fn(checkpoint, self), strict=False)


def _architecture(state_dict: Mapping[str, Tensor]) -> tuple[list[int], list[int]]:
    """Read the stage depths and widths off a state dict in this model's format."""
    depths: dict[int, int] = {}
    dims: dict[int, int] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight', key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), block + 1)
            dims[stage] = value.shape[0]
    return [depths[s] for s in sorted(depths)], [dims[s] for s in sorted(dims)]


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module, *, strict: bool = True
) -> dict[str, Tensor]:
    """Convert an MMEarth checkpoint to the keys and shapes of *model*.

    Accepted formats:

    * the official MP-MAE pretraining checkpoints (``checkpoint-199.pth``), whole
      (``{'model': ..., 'optimizer': ..., 'args': ...}``) or their ``'model'``
      entry: MinkowskiEngine keys under ``encoder.``; the decoder, heads, mask
      token and loss weights are dropped;
    * dense MMEarth / ConvNeXt V2 keys (``initial_conv.0.weight``, ``stem.0``,
      ``downsample_layers.i``, ``stages.s.b.dwconv``, ``grn.gamma``), as written
      by MMEarth's ``remap_checkpoint_keys`` or its dense models;
    * this model's own keys, with or without ``norm`` and ``head``, possibly under
      ``encoder.`` (the state dict of
      :class:`~torchgeo_mmearth.models.MMEarthUNet`, of an ``smp.Unet`` or of
      :class:`~torchgeo_mmearth.models.MPMAE`);
    * any of these under ``'state_dict'``: the exports of ``torchgeo-mmearth
      export-weights`` (``{'state_dict': ..., 'meta': ...}``) and Lightning
      checkpoints, whose network keys are prefixed ``model.`` (TorchGeo tasks
      keep it in ``self.model``; other entries are dropped).

    ``norm`` and ``head`` entries are kept when *model* has them with the same
    shape, dropped silently when it has none (a backbone) and dropped with a
    warning when their shape differs (another number of classes).

    Args:
        state_dict: the checkpoint.
        model: the model to load it into, to check shapes against; any module
            with this model's stem and stage keys.
        strict: check that the checkpoint is a whole encoder of *model*'s depths
            and widths; otherwise a subset of the entries is accepted (shapes and
            names are still checked).

    Returns:
        The state dict to load with ``model.load_state_dict(..., strict=False)``
        (only ``norm`` and ``head`` may be missing from it).

    Raises:
        ValueError: if the checkpoint is not an MMEarth ConvNeXt V2 encoder, has
            other depths or widths than *model* (with *strict*), another number
            of input bands (``stem.0.weight``), another patch size
            (``stem.3.weight``), an entry that *model* lacks, or, with *strict*,
            lacks stem or stage entries of *model*.
    """
    tensors = encoder_entries(state_dict)
    expected = model.state_dict()
    found, wanted = _architecture(tensors), _architecture(expected)
    if strict and not found[0]:
        raise ValueError(
            'the checkpoint holds no MMEarth ConvNeXt V2 encoder: found none of '
            "'encoder.stages.<s>.<b>.dwconv.kernel' (official MP-MAE), "
            "'stages.<s>.<b>.dwconv.weight' (dense) or "
            f"'stages.<s>.blocks.<b>.conv_dw.weight'; first keys: {list(tensors)[:5]}"
        )
    if strict and found != wanted:
        raise ValueError(
            f'the checkpoint is another architecture: depths={found[0]}, '
            f'dims={found[1]}, but the model has depths={wanted[0]}, dims={wanted[1]}'
        )

    filtered: dict[str, Tensor] = {}
    misfits = []
    for key, value in tensors.items():
        if key.startswith(_CLASSIFIER_PREFIXES):
            if key in expected and value.shape != expected[key].shape:
                misfits.append(key)
            elif key in expected:
                filtered[key] = value
            continue
        if key not in expected:
            raise ValueError(
                f'the checkpoint has {key!r}, which is not part of the model'
            )
        _check_shape(key, value.shape, expected[key].shape)
        filtered[key] = value
    if misfits:
        warnings.warn(
            f'dropping {misfits} from the checkpoint: their shapes do not fit the '
            'model (another number of classes?)',
            UserWarning,
            stacklevel=2,
        )

    missing = [
        k
        for k in expected
        if not k.startswith(_CLASSIFIER_PREFIXES) and k not in filtered
    ]
    if strict and missing:
        raise ValueError(
            f'the checkpoint lacks {len(missing)} encoder entries of the model, '
            f'e.g. {missing[:3]}'
        )
    return filtered


def _check_shape(key: str, found: torch.Size, wanted: torch.Size) -> None:
    """Raise a ValueError that explains a shape mismatch of one entry."""
    if found == wanted:
        return
    message = (
        f'{key!r} has shape {tuple(found)} in the checkpoint but {tuple(wanted)} '
        'in the model'
    )
    if key == 'stem.0.weight' and found[2:] == wanted[2:] and found[0] == wanted[0]:
        message += (
            f': the checkpoint was pretrained on {found[1]} input bands, the model '
            f'has in_chans={wanted[1]}'
        )
    elif key == 'stem.3.weight' and found[0] == wanted[0]:
        message += (
            f': the checkpoint has patch size {8 * found[-1]} (stem kernel '
            f'{found[-1]}), the model has patch_size={8 * wanted[-1]}; build the '
            f'model with patch_size={8 * found[-1]}'
        )
    raise ValueError(message)


def _cfg(patch_size: int, in_chans: int = 12) -> dict[str, Any]:
    size = 7 * patch_size  # the 7 x 7 patch grid of pretraining
    return {
        'url': '',
        'num_classes': 0,
        'input_size': (in_chans, size, size),
        'pool_size': (7, 7),
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        # Inputs are z-scored per band (MMEarth or downstream statistics).
        'mean': (0.0,) * in_chans,
        'std': (1.0,) * in_chans,
        'first_conv': 'stem.0',
        'classifier': 'head',
        'origin_url': 'https://github.com/vishalned/MMEarth-train',
        'paper_name': 'MMEarth: Exploring Multi-Modal Pretext Tasks For '
        'Geospatial Representation Learning',
        'paper_ids': 'arXiv:2405.02771',
        'notes': (
            'Input: z-scored Sentinel-2 B1-B7, B8A, B8, B9, B11, B12 (in this order).',
            'Load the official MP-MAE checkpoints with checkpoint_filter_fn.',
        ),
    }


def _official_cfg(checkpoint: OfficialCheckpoint) -> dict[str, Any]:
    """Pretrained configuration of an official MP-MAE checkpoint."""
    cfg = _cfg(checkpoint.patch_size, checkpoint.in_chans)
    cfg.update(
        # (url, cache file name): every official file is called checkpoint-199.pth.
        url=(checkpoint.url, checkpoint.file_name),
        # The official pickle needs the allow-list of load_checkpoint and the
        # sparse-to-dense conversion: MMEarthConvNeXtV2.load_pretrained does both.
        custom_load=True,
        license='unspecified',
        description=(
            f'MP-MAE pretraining checkpoint {checkpoint.folder}: '
            f'{", ".join(checkpoint.bands)} in, {checkpoint.outputs} out, '
            f'{checkpoint.dataset}, {checkpoint.loss} loss weighting, '
            f'{checkpoint.input_size} px input, patch size {checkpoint.patch_size}.'
        ),
        notes=(
            (
                f'Input: z-scored Sentinel-2 {", ".join(checkpoint.bands)} (in this '
                f'order), see MMEarthWeights.{checkpoint.name}.transforms.'
            ),
            'Load the official MP-MAE checkpoints with checkpoint_filter_fn.',
        ),
    )
    return cfg


default_cfgs = generate_default_cfgs(
    {
        # Tagged entries first, headline first: the first tag with weights is the
        # default of its architecture (pretrained=True without a tag).
        **{
            f'{checkpoint.model}.{checkpoint.tag}': _official_cfg(checkpoint)
            for checkpoint in OFFICIAL_CHECKPOINTS
        },
        **{
            f'mmearth_convnextv2_{size}{suffix}': _cfg(patch_size)
            for size in MMEARTH_CONVNEXTV2_SIZES
            for suffix, patch_size in (('', 8), ('_p16', 16))
        },
    }
)


def _create(
    size: str, fixed_patch_size: int | None, pretrained: bool, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """Build a registered model with its pretrained configuration.

    Args:
        size: one of :data:`MMEARTH_CONVNEXTV2_SIZES`.
        fixed_patch_size: 16 for a ``_p16`` entry point, None for the plain one
            (patch size 8 unless ``patch_size`` says otherwise).
        pretrained: load the weights of the timm pretrained tag (see
            :class:`~torchgeo_mmearth.models.MMEarthWeights` for the tags).
        **kwargs: further :class:`MMEarthConvNeXtV2` and timm arguments.

    Returns:
        The model.

    Raises:
        ValueError: for an unsupported patch size, or one that contradicts the
            entry point.
    """
    name = f'mmearth_convnextv2_{size}'
    patch_size = kwargs.pop('patch_size', fixed_patch_size or 8)
    _check_patch_size(patch_size)
    if fixed_patch_size is not None and patch_size != fixed_patch_size:
        raise ValueError(
            f'{name}_p{fixed_patch_size} has patch_size={fixed_patch_size}, got '
            f'patch_size={patch_size}; use {name} instead'
        )
    depths, dims = MMEARTH_CONVNEXTV2_SIZES[size]
    # timm loads a pretrained file with weights_only=True: allow the plain-data
    # types of the official pickles while it does.
    with safe_globals() if pretrained else contextlib.nullcontext():
        model: MMEarthConvNeXtV2 = build_model_with_cfg(
            MMEarthConvNeXtV2,
            name if patch_size == 8 else f'{name}_p{patch_size}',
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            # Pretraining checkpoints have no norm and head; the filter checks
            # the rest.
            pretrained_strict=False,
            feature_cfg={'out_indices': (0, 1, 2, 3), 'flatten_sequential': True},
            depths=depths,
            dims=dims,
            patch_size=patch_size,
            **kwargs,
        )
    cfg = cast(dict[str, Any], getattr(model, 'pretrained_cfg', None) or {})
    if cfg.get('state_dict') is not None:
        # Weights handed over through the configuration: no second copy of them.
        cfg['state_dict'] = None
    return model


@register_model
def mmearth_convnextv2_atto(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 atto, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_atto_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('atto', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_atto_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 atto, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('atto', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_femto(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 femto, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_femto_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('femto', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_femto_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 femto, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('femto', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_pico(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 pico, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_pico_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('pico', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_pico_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 pico, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('pico', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_nano(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 nano, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_nano_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('nano', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_nano_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 nano, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('nano', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_tiny(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 tiny, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_tiny_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('tiny', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_tiny_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 tiny, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('tiny', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_base(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 base, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_base_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('base', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_base_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 base, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('base', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_large(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 large, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_large_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('large', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_large_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 large, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('large', 16, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_huge(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 huge, patch size 8 (56 px MMEarth64 pretraining).

    ``patch_size=16`` builds the patch-16 model of ``mmearth_convnextv2_huge_p16``.
    Arguments as for every entry point (see the module docstring).
    """
    return _create('huge', None, pretrained, **kwargs)


@register_model
def mmearth_convnextv2_huge_p16(
    pretrained: bool = False, **kwargs: Any
) -> MMEarthConvNeXtV2:
    """MMEarth ConvNeXt V2 huge, patch size 16 (112 px MMEarth pretraining).

    Arguments as for every entry point (see the module docstring).
    """
    return _create('huge', 16, pretrained, **kwargs)
