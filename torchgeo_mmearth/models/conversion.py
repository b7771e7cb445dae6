"""MMEarth checkpoint formats, and their conversion to the timm model's keys.

The official MP-MAE checkpoints (Nedungadi et al., "MMEarth: Exploring Multi-Modal
Pretext Tasks For Geospatial Representation Learning", ECCV 2024,
https://arxiv.org/abs/2405.02771) hold a sparse MinkowskiEngine encoder;
MMEarth's dense models, FCMAE, UNets, Lightning tasks and ``torchgeo-mmearth
export-weights`` files hold the same encoder under other keys and wrappers.
:func:`encoder_entries` turns any of them into the keys of
:class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`, which
:func:`~torchgeo_mmearth.models.checkpoint_filter_fn` then checks against a model.
:func:`mpmae_parts` converts a whole pretraining checkpoint (encoder, decoder,
prediction heads and task weights) for :meth:`~torchgeo_mmearth.models.MPMAE.load_pretrained`.
"""

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..modalities import MODALITIES, Level

__all__ = ['MPMAEParts', 'encoder_entries', 'minkowski_to_conv', 'mpmae_parts']

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


@dataclass(frozen=True)
class MPMAEParts:
    """The parts of a whole MP-MAE pretraining checkpoint, in this package's keys.

    Attributes:
        tasks: pretext task names, in the checkpoint's order (the order of its
            uncertainty log-variances).
        encoder: the encoder in the timm keys of
            :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`.
        projection: the 1x1 projection to the decoder width (``weight``, ``bias``).
        mask_token: the learned mask token, ``(1, decoder_dim, 1, 1)``.
        decoders: per task, the decoder blocks in the keys of an ``nn.Sequential`` of
            timm ``ConvNeXtBlock`` (``0.conv_dw.weight``, ``0.mlp.grn.weight``, ...);
            the same tensors for every task when the decoder is shared.
        image_norms: per image-level task, the LayerNorm before its pooling
            (``weight``, ``bias``); the same tensors when shared.
        heads: per task, its prediction head (``weight``, ``bias``).
        log_vars: per task, its uncertainty log-variance (a scalar); empty for a
            checkpoint trained with unweighted losses.
        shared_decoder: whether all tasks share one decoder (as in the official
            checkpoints).
    """

    tasks: tuple[str, ...]
    encoder: dict[str, Tensor]
    projection: dict[str, Tensor]
    mask_token: Tensor
    decoders: dict[str, dict[str, Tensor]]
    image_norms: dict[str, dict[str, Tensor]]
    heads: dict[str, dict[str, Tensor]]
    log_vars: dict[str, Tensor]
    shared_decoder: bool


# What an official pretraining checkpoint holds besides the model: dropped.
_OFFICIAL_WRAPPER_KEYS = frozenset(('model', 'optimizer', 'epoch', 'scaler', 'args'))
# The reference decoder block (ConvNeXt V2's dense Block) in timm's names.
_DECODER_BLOCK_RENAMES = {
    'dwconv.weight': 'conv_dw.weight',
    'dwconv.bias': 'conv_dw.bias',
    'norm.weight': 'norm.weight',
    'norm.bias': 'norm.bias',
    'pwconv1.weight': 'mlp.fc1.weight',
    'pwconv1.bias': 'mlp.fc1.bias',
    'grn.gamma': 'mlp.grn.weight',
    'grn.beta': 'mlp.grn.bias',
    'pwconv2.weight': 'mlp.fc2.weight',
    'pwconv2.bias': 'mlp.fc2.bias',
}
_OFFICIAL_DECODER_KEY = re.compile(r'decoder_dict\.(\w+)\.(\d+)\.(\w+\.\w+)')
_OFFICIAL_HEAD_KEY = re.compile(r'pred_dict\.(\w+)\.(weight|bias)')
_OWN_KEYS = (
    (re.compile(r'decoder\.decoder\.(.+)'), 'shared decoder'),
    (re.compile(r'decoder\.decoders\.(\w+)\.(.+)'), 'decoder'),
    (re.compile(r'decoder\.image_norm\.(weight|bias)'), 'shared image norm'),
    (re.compile(r'decoder\.image_norms\.(\w+)\.(weight|bias)'), 'image norm'),
    (re.compile(r'decoder\.heads\.(\w+)\.(weight|bias)'), 'head'),
)


def _is_image_level(task: str, key: str) -> bool:
    modality = MODALITIES.get(task)
    if modality is None:
        raise ValueError(
            f'the checkpoint has {key!r} for the pretext task {task!r}, which is '
            f'not an MMEarth modality ({list(MODALITIES)})'
        )
    return modality.level is Level.IMAGE


def _checkpoint_tasks(
    keys: list[str], pattern: re.Pattern[str], args: Any = None
) -> tuple[str, ...]:
    """Task names in checkpoint order: the pretraining arguments', else the heads'."""
    out_modalities = getattr(args, 'out_modalities', None)
    if isinstance(out_modalities, Mapping):
        return tuple(out_modalities)
    tasks: dict[str, None] = {}
    for key in keys:
        match = pattern.fullmatch(key)
        if match:
            tasks[match[1]] = None
    return tuple(tasks)


def _log_vars(
    value: Tensor | None, tasks: tuple[str, ...], key: str
) -> dict[str, Tensor]:
    if value is None:
        return {}
    if value.shape != (len(tasks),):
        raise ValueError(
            f'{key!r} has shape {tuple(value.shape)}, but the checkpoint has '
            f'{len(tasks)} pretext tasks {list(tasks)}'
        )
    return {task: value[i] for i, task in enumerate(tasks)}


def _is_shared(decoders: Mapping[str, Mapping[str, Tensor]]) -> bool:
    """Whether every task's decoder holds the same values."""
    stacks = list(decoders.values())
    return all(
        stack.keys() == stacks[0].keys()
        and all(torch.equal(stack[k], stacks[0][k]) for k in stack)
        for stack in stacks[1:]
    )


def _official_parts(model: Mapping[str, Tensor], args: Any) -> MPMAEParts:
    """Convert the ``model`` entry of an official MP-MAE checkpoint (FCMAE keys)."""
    tasks = _checkpoint_tasks(list(model), _OFFICIAL_HEAD_KEY, args)
    if any(key.startswith('encoder.stem_orig.') for key in model):
        encoder_entries(model)  # raises the use_orig_stem error
    encoder: dict[str, Tensor] = {}
    projection: dict[str, Tensor] = {}
    mask_token = None
    log_vars = None
    decoders: dict[str, dict[str, Tensor]] = {}
    image_norm: dict[str, Tensor] = {}
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in model.items():
        if key.startswith('encoder.'):
            item = _from_mmearth(key.removeprefix('encoder.'), value)
            if item is None:
                raise ValueError(
                    f'the checkpoint has {key!r}, which is not part of an MMEarth '
                    'ConvNeXt V2 encoder'
                )
            # The dense FCMAE's encoder has an unused classifier: dropped.
            if not item[0].startswith(('norm.', 'head.')):
                encoder[item[0]] = item[1]
        elif key in ('proj.weight', 'proj.bias'):
            projection[key.removeprefix('proj.')] = value
        elif key == 'mask_token':
            mask_token = value
        elif key == 'loss_fn.log_vars':
            log_vars = value
        elif key in ('layer_norm_tmp.weight', 'layer_norm_tmp.bias'):
            image_norm[key.removeprefix('layer_norm_tmp.')] = value
        elif match := _OFFICIAL_DECODER_KEY.fullmatch(key):
            task, index, name = match.groups()
            if name not in _DECODER_BLOCK_RENAMES:
                raise ValueError(
                    f'the checkpoint has {key!r}, which is not part of a ConvNeXt V2 '
                    f'decoder block ({sorted(_DECODER_BLOCK_RENAMES)})'
                )
            if name.startswith('grn.'):
                value = value.flatten()  # (1, 1, 1, C) in the reference
            decoders.setdefault(task, {})[f'{index}.{_DECODER_BLOCK_RENAMES[name]}'] = (
                value
            )
        elif match := _OFFICIAL_HEAD_KEY.fullmatch(key):
            heads.setdefault(match[1], {})[match[2]] = value
        else:
            raise ValueError(
                f'the checkpoint has {key!r}, which is not part of MP-MAE (encoder, '
                "'proj', 'mask_token', 'decoder_dict', 'layer_norm_tmp', 'pred_dict' "
                "or 'loss_fn.log_vars')"
            )
    if mask_token is None or len(projection) != 2:
        raise ValueError(
            "the checkpoint lacks the decoder's 'proj' or 'mask_token': it is not a "
            'whole MP-MAE pretraining checkpoint'
        )
    missing = [task for task in tasks if task not in heads]
    if missing:
        raise ValueError(f"the checkpoint has no 'pred_dict' head for {missing}")
    image_tasks = [t for t in tasks if _is_image_level(t, f'pred_dict.{t}')]
    if image_tasks and len(image_norm) != 2:
        raise ValueError(
            f"the checkpoint has image-level tasks {image_tasks} but no 'layer_norm_tmp'"
        )
    return MPMAEParts(
        tasks=tasks,
        encoder=encoder,
        projection=projection,
        mask_token=mask_token,
        decoders=decoders,
        image_norms={task: image_norm for task in image_tasks},
        heads=heads,
        log_vars=_log_vars(log_vars, tasks, 'loss_fn.log_vars'),
        shared_decoder=_is_shared(decoders),
    )


def _own_parts(state_dict: Mapping[str, Tensor]) -> MPMAEParts:
    """Convert the state dict of :class:`~torchgeo_mmearth.models.MPMAE`."""
    head_key = re.compile(r'decoder\.heads\.(\w+)\.(?:weight|bias)')
    tasks = _checkpoint_tasks(list(state_dict), head_key)
    encoder: dict[str, Tensor] = {}
    projection: dict[str, Tensor] = {}
    mask_token = None
    log_vars = None
    shared: dict[str, Tensor] = {}
    shared_norm: dict[str, Tensor] = {}
    decoders: dict[str, dict[str, Tensor]] = {}
    image_norms: dict[str, dict[str, Tensor]] = {}
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith('encoder.'):
            encoder[key.removeprefix('encoder.')] = value
            continue
        if key in ('decoder.proj.weight', 'decoder.proj.bias'):
            projection[key.removeprefix('decoder.proj.')] = value
            continue
        if key == 'decoder.mask_token':
            mask_token = value
            continue
        if key == 'criterion.weighting.log_vars':
            log_vars = value
            continue
        for pattern, part in _OWN_KEYS:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            if part == 'shared decoder':
                shared[match[1]] = value
            elif part == 'shared image norm':
                shared_norm[match[1]] = value
            else:
                parts = {'decoder': decoders, 'image norm': image_norms, 'head': heads}
                parts[part].setdefault(match[1], {})[match[2]] = value
            break
        else:
            raise ValueError(
                f'the checkpoint has {key!r}, which is not part of MP-MAE (encoder, '
                'decoder or criterion)'
            )
    if mask_token is None or len(projection) != 2:
        raise ValueError(
            "the checkpoint lacks the decoder's 'proj' or 'mask_token': it is not a "
            'whole MP-MAE checkpoint'
        )
    if shared:
        decoders = {task: shared for task in tasks}
    if shared_norm:
        image_norms = {
            task: shared_norm
            for task in tasks
            if _is_image_level(task, f'decoder.heads.{task}')
        }
    return MPMAEParts(
        tasks=tasks,
        encoder=encoder,
        projection=projection,
        mask_token=mask_token,
        decoders=decoders,
        image_norms=image_norms,
        heads=heads,
        log_vars=_log_vars(log_vars, tasks, 'criterion.weighting.log_vars'),
        shared_decoder=bool(shared) or _is_shared(decoders),
    )


def mpmae_parts(checkpoint: Mapping[str, Any]) -> MPMAEParts:
    """Every part of a whole MP-MAE checkpoint, converted to this package's keys.

    Accepted formats:

    * an official MP-MAE pretraining checkpoint (``checkpoint-199.pth``:
      ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``), or its ``'model'``
      entry: FCMAE's sparse (or dense) encoder, ``proj``, ``mask_token``, the
      decoder block repeated per task under ``decoder_dict.<task>.0``,
      ``layer_norm_tmp``, ``pred_dict.<task>`` and ``loss_fn.log_vars``. The task
      order is that of the pretraining arguments (``args.out_modalities``), else
      that of the heads;
    * a Lightning checkpoint of :class:`~torchgeo_mmearth.trainers.MPMAETask`
      (``mpmae.`` keys; the ``model.`` alias of the encoder is dropped), or the
      state dict of :class:`~torchgeo_mmearth.models.MPMAE`.

    The optimizer state, scaler, epoch and arguments of an official checkpoint
    are dropped; any other key is an error.

    Args:
        checkpoint: the checkpoint.

    Returns:
        The parts, by task.

    Raises:
        ValueError: for a key that is neither converted nor knowingly dropped
            (naming it), a checkpoint without decoder, or task weights that do not
            match its tasks.
    """
    if isinstance(checkpoint.get('model'), Mapping):
        unknown = sorted(set(checkpoint) - _OFFICIAL_WRAPPER_KEYS)
        if unknown:
            raise ValueError(
                f'the checkpoint has {unknown[0]!r} beside its model; an official '
                f'MP-MAE checkpoint holds {sorted(_OFFICIAL_WRAPPER_KEYS)}'
            )
        return _official_parts(checkpoint['model'], checkpoint.get('args'))
    if isinstance(checkpoint.get('state_dict'), Mapping):
        state_dict: Mapping[str, Any] = checkpoint['state_dict']
        if any(key.startswith('mpmae.') for key in state_dict):
            # MPMAETask: self.mpmae, and self.model aliasing its encoder.
            state_dict = {
                key.removeprefix('mpmae.'): value
                for key, value in state_dict.items()
                if not key.startswith('model.')
            }
        checkpoint = state_dict
    if any(key.startswith(('decoder_dict.', 'pred_dict.')) for key in checkpoint):
        return _official_parts(checkpoint, None)
    if any(key.startswith('decoder.heads.') for key in checkpoint):
        return _own_parts(checkpoint)
    raise ValueError(
        'the checkpoint holds no MP-MAE decoder (neither the official '
        "'decoder_dict' / 'pred_dict' keys nor MPMAE's 'decoder.heads'): it is an "
        f'encoder only, or not MP-MAE; first keys: {list(checkpoint)[:5]}'
    )
