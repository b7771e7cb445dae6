"""The MP-MAE objective after the encoder, computed from an official state dict.

An independent test oracle for :meth:`torchgeo_mmearth.models.MPMAE.load_pretrained`:
it reads the tensors of an official pretraining checkpoint under their own keys
(FCMAE's ``proj``, ``mask_token``, ``decoder_dict``, ``layer_norm_tmp``,
``pred_dict``, ``loss_fn.log_vars``) and computes what FCMAE's
``forward_decoder`` and ``forward_loss`` compute (vishalned/MMEarth-train,
``models/fcmae.py``, ``custom_loss.py``), with plain tensor operations and no code
of the package: the dense ConvNeXt V2 decoder block with its (1, 1, 1, C) GRN,
the channels-first LayerNorm written out, the reference's patch layout and loss
reductions, and the uncertainty weighting ``exp(-s) L + s``.

Batches are in the reference's format: ``sentinel2`` and the other continuous maps
z-scored ``(B, C, H, W)`` without NaN (the reference turns them into 0 before the
loss, which this package deliberately does not); class maps ``(B, 1, H, W)`` int64
with -1 for no label; image-level vectors ``(B, C)``, NaN where missing; biome and
ecoregion one-hot.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_TASKS = frozenset(
    (
        'sentinel2',
        'sentinel1',
        'aster',
        'canopy_height_eth',
        'dynamic_world',
        'esa_worldcover',
    )
)
CLASS_MAP_TASKS = frozenset(('dynamic_world', 'esa_worldcover'))
ONE_HOT_TASKS = frozenset(('biome', 'eco_region'))


def decoder_block(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """ConvNeXt V2's dense Block: dwconv, LN, MLP with GRN (eps 1e-4), residual."""
    channels = x.shape[1]
    y = F.conv2d(x, p['dwconv.weight'], p['dwconv.bias'], padding=3, groups=channels)
    y = y.permute(0, 2, 3, 1)
    y = F.layer_norm(y, (channels,), p['norm.weight'], p['norm.bias'], 1e-6)
    y = F.gelu(F.linear(y, p['pwconv1.weight'], p['pwconv1.bias']))
    gx = torch.norm(y, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-4)
    y = p['grn.gamma'] * (y * nx) + p['grn.beta'] + y
    y = F.linear(y, p['pwconv2.weight'], p['pwconv2.bias']).permute(0, 3, 1, 2)
    return x + y


def channels_first_layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-6)
    return weight[:, None, None] * x + bias[:, None, None]


def patchify(images: Tensor, p: int) -> Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), channels fastest."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def decode(
    sd: dict[str, Tensor], features: Tensor, mask: Tensor, tasks: list[str]
) -> dict[str, Tensor]:
    """FCMAE's forward_decoder. *mask* is (N, L), 1 = removed."""
    x = F.conv2d(features, sd['proj.weight'], sd['proj.bias'])
    n, _, h, w = x.shape
    m = mask.reshape(n, 1, h, w).to(x.dtype)
    x = x * (1.0 - m) + sd['mask_token'].repeat(n, 1, h, w) * m
    predictions = {}
    for task in tasks:
        prefix = f'decoder_dict.{task}.0.'
        block = {
            k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)
        }
        y = decoder_block(x, block)
        weight, bias = sd[f'pred_dict.{task}.weight'], sd[f'pred_dict.{task}.bias']
        if task in PIXEL_TASKS:
            predictions[task] = F.conv2d(y, weight, bias)
        else:
            y = channels_first_layer_norm(
                y, sd['layer_norm_tmp.weight'], sd['layer_norm_tmp.bias']
            )
            predictions[task] = F.linear(y.mean(dim=(-2, -1)), weight, bias)
    return predictions


def task_loss(
    task: str, prediction: Tensor, target: Tensor, mask: Tensor, p: int
) -> Tensor:
    """FCMAE's forward_loss for one task (norm_pix_loss on sentinel2)."""
    if task in ONE_HOT_TASKS:
        return F.cross_entropy(prediction, target.argmax(dim=-1))
    if task not in PIXEL_TASKS:
        valid = ~torch.isnan(target)
        return F.mse_loss(prediction[valid], target[valid])
    n = prediction.shape[0]
    prediction = torch.einsum(
        'ncl->nlc', prediction.reshape(n, prediction.shape[1], -1)
    )
    if task in CLASS_MAP_TASKS:
        classes = prediction.shape[-1] // (p * p)
        logits = prediction.reshape(n, -1, classes)
        labels = patchify(target, p).reshape(n, -1)
        selected = mask.unsqueeze(-1).repeat(1, 1, p * p).reshape(n, -1) == 1
        logits, labels = logits[selected], labels[selected]
        labelled = labels != -1
        return F.cross_entropy(logits[labelled], labels[labelled])
    target = patchify(target, p)
    if task == 'sentinel2':
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((prediction - target) ** 2).mean(dim=-1)
    masked = per_patch * mask
    return masked.sum() / torch.count_nonzero(masked)


def reference_objective(
    sd: dict[str, Tensor],
    features: Tensor,
    mask: Tensor,
    batch: dict[str, Tensor],
    tasks: list[str],
    patch_size: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """FCMAE's total and per-task losses after its encoder.

    The total is uncertainty-weighted when ``loss_fn.log_vars`` is in *sd*.
    """
    predictions = decode(sd, features, mask, tasks)
    losses = {
        task: task_loss(task, predictions[task], batch[task], mask, patch_size)
        for task in tasks
    }
    stacked = torch.stack([losses[task] for task in tasks])
    if 'loss_fn.log_vars' not in sd:
        return stacked.sum(), losses
    log_vars = sd['loss_fn.log_vars']
    weighted = (torch.exp(-log_vars) * stacked + log_vars) * (stacked != 0)
    return weighted.sum(), losses
