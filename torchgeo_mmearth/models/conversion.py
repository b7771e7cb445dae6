"""MMEarth checkpoint formats, and their conversion to the timm model's keys.

The official MP-MAE checkpoints (Nedungadi et al., "MMEarth: Exploring Multi-Modal
Pretext Tasks For Geospatial Representation Learning", ECCV 2024,
https://arxiv.org/abs/2405.02771) hold a sparse MinkowskiEngine encoder;
MMEarth's dense models, FCMAE, UNets, Lightning tasks and ``torchgeo-mmearth
export-weights`` files hold the same encoder under other keys and wrappers.
:func:`encoder_entries` turns any of them into the keys of
:class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`, which
:func:`~torchgeo_mmearth.models.checkpoint_filter_fn` then checks against a model.
"""

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ['encoder_entries', 'minkowski_to_conv']

# First key components of every accepted encoder format (before any prefix).
_TOP_LEVEL_KEYS = frozenset(
    ('encoder', 'stem', 'stages', 'norm', 'head', 'initial_conv', 'downsample_layers')
)


# Stem and stage keys (after the sparse-to-dense step) of the MMEarth models:
# FCMAE's encoder, the dense ConvNeXtV2 classifier and the dense UNet.
_MMEARTH_KEY_RULES: tuple[
    tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...
] = (
    (re.compile(r'^initial_conv\.([01])\.'), lambda m: f'stem.{m[1]}.'),
    (re.compile(r'^stem\.([01])\.'), lambda m: f'stem.{int(m[1]) + 3}.'),
    (
        re.compile(r'^downsample_layers\.(\d)\.'),
        lambda m: f'stages.{int(m[1]) + 1}.downsample.',
    ),
    (re.compile(r'^stages\.(\d)\.(\d+)\.'), lambda m: f'stages.{m[1]}.blocks.{m[2]}.'),
    (re.compile(r'^(norm|head)\.'), lambda m: m[0]),
)
_MMEARTH_BLOCK_RENAMES = (
    ('.dwconv.', '.conv_dw.'),
    ('.pwconv1.', '.mlp.fc1.'),
    ('.pwconv2.', '.mlp.fc2.'),
    ('.grn.gamma', '.mlp.grn.weight'),
    ('.grn.beta', '.mlp.grn.bias'),
)


def minkowski_to_conv(kernel: Tensor) -> Tensor:
    """Convert a MinkowskiEngine 2-D kernel to a Conv2d weight.

    MinkowskiEngine stores one (in, out) matrix per kernel offset, the offsets
    enumerated with the first spatial axis (H, the row of a dense tensor
    converted with ``to_sparse``) varying fastest: offset (h, w) is at index
    h + k * w. Even kernels (stem, downsampling) span offsets 0..k-1, odd ones
    -(k//2)..k//2, which is Conv2d's cross-correlation with padding 0 and k//2.

    Args:
        kernel: (k*k, in, out) for a convolution, (k*k, channels) for a depthwise
            convolution.

    Returns:
        The weight, (out, in, k, k) or (channels, 1, k, k).

    Raises:
        ValueError: if the kernel shape is not one of these.
    """
    k = math.isqrt(kernel.shape[0])
    if k * k != kernel.shape[0] or kernel.ndim not in (2, 3):
        raise ValueError(
            f'expected a MinkowskiEngine kernel of shape (k*k, in, out) or '
            f'(k*k, channels), got {tuple(kernel.shape)}'
        )
    grid = kernel.reshape(k, k, *kernel.shape[1:])  # (w, h, ...)
    if kernel.ndim == 3:
        return grid.permute(3, 2, 1, 0).contiguous()
    return grid.permute(2, 1, 0).unsqueeze(1).contiguous()


def _from_mmearth(key: str, value: Tensor) -> tuple[str, Tensor] | None:
    """Convert one encoder entry of an MMEarth checkpoint to this model's format.

    Args:
        key: key without the ``encoder.`` prefix, sparse or dense.
        value: its tensor.

    Returns:
        The key and tensor of this model, or None for a key that is not part of the
        encoder or classifier (a UNet decoder, say).
    """
    # MinkowskiLayerNorm and MinkowskiLinear wrap their torch layer as .ln/.linear.
    key = '.'.join(part for part in key.split('.') if part not in ('ln', 'linear'))
    if key.endswith('.kernel'):
        key = key.removesuffix('.kernel') + '.weight'
        value = minkowski_to_conv(value)
    elif value.ndim > 1 and (key.endswith('.bias') or '.grn.' in key):
        # Minkowski biases are (1, out); GRN parameters (1, C) or (1, 1, 1, C).
        value = value.flatten()
    for pattern, replace in _MMEARTH_KEY_RULES:
        match = pattern.match(key)
        if match:
            key = replace(match) + key[match.end() :]
            break
    else:
        return None
    for old, new in _MMEARTH_BLOCK_RENAMES:
        key = key.replace(old, new)
    return key, value


def encoder_entries(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """The encoder tensors of a checkpoint in any MMEarth format, in timm keys.

    Accepted formats: see :func:`~torchgeo_mmearth.models.checkpoint_filter_fn`.

    Args:
        state_dict: the checkpoint.

    Returns:
        The tensors of the encoder (and of ``norm`` and ``head`` when present), in
        the keys of :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`.

    Raises:
        ValueError: for a checkpoint pretrained with MMEarth's ``use_orig_stem``,
            which this model cannot hold.
    """
    if isinstance(state_dict.get('model'), Mapping):
        state_dict = state_dict['model']
    elif isinstance(state_dict.get('state_dict'), Mapping):
        # torchgeo-mmearth export ({'state_dict', 'meta'}) or Lightning checkpoint.
        state_dict = state_dict['state_dict']
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
    if not any(k.split('.')[0] in _TOP_LEVEL_KEYS for k in tensors) and any(
        k.startswith('model.') for k in tensors
    ):
        # A TorchGeo task (MPMAETask, ClassificationTask) keeps the network in
        # self.model; its decoder and loss live elsewhere.
        tensors = {
            k.removeprefix('model.'): v
            for k, v in tensors.items()
            if k.startswith('model.')
        }
    if any(k.split('.')[0] == 'encoder' for k in tensors):
        # A whole FCMAE or UNet: keep the encoder.
        tensors = {
            k.removeprefix('encoder.'): v
            for k, v in tensors.items()
            if k.startswith('encoder.')
        }
    if any(k.startswith('stem_orig.') for k in tensors):
        raise ValueError(
            "checkpoints pretrained with use_orig_stem=True ('stem_orig.*' keys) "
            'have no initial 3x3 convolution and cannot be loaded into this model'
        )
    if any(k.startswith(('initial_conv.', 'downsample_layers.')) for k in tensors):
        tensors = dict(
            item
            for item in (_from_mmearth(k, v) for k, v in tensors.items())
            if item is not None
        )
    return tensors
