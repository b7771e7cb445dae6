"""NaN-safe losses of the individual MP-MAE pretext tasks.

The four losses of MP-MAE (Nedungadi et al., "MMEarth: Exploring Multi-Modal
Pretext Tasks For Geospatial Representation Learning", ECCV 2024,
https://arxiv.org/abs/2405.02771): masked-patch MSE for continuous maps,
masked-pixel cross-entropy for class maps, and MSE and cross-entropy for
image-level vectors and classes.

No-data never contributes: non-finite (NaN, +-inf) continuous targets and
:data:`~torchgeo_mmearth.modalities.IGNORE_INDEX` class targets are left out, and a
batch without any valid target gives a loss of exactly 0 that is still connected to
the predictions (with zero gradients), never NaN. The reference code instead
zero-filled missing continuous map targets and trained on them (reference bug 8.4).
Every loss is computed in float32 and without boolean indexing, so it causes no
host-device synchronisation.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modalities import IGNORE_INDEX
from .patches import patchify

__all__ = [
    'TaskLoss',
    'image_cross_entropy',
    'image_mse',
    'masked_patch_cross_entropy',
    'masked_patch_mse',
    'patch_statistics',
]


class TaskLoss(NamedTuple):
    """Loss of one pretext task and how much of its target was usable."""

    #: Scalar loss (float32); exactly 0 when no valid target counted.
    loss: Tensor
    #: Scalar fraction (float32, no gradient) of the target entries eligible for the
    #: loss (those of masked patches for pixel-level tasks, all for image-level
    #: tasks) that hold a valid target; 0 when none is eligible.
    valid_fraction: Tensor


def _patch_mask(mask: Tensor, batch: int, rows: int, cols: int) -> Tensor:
    """Validate a patch mask and flatten it to ``(B, L)`` booleans."""
    if mask.shape not in ((batch, rows, cols), (batch, rows * cols)):
        raise ValueError(
            f'mask must be ({batch}, {rows}, {cols}) to match the patch grid of the '
            f'target, got shape {tuple(mask.shape)}'
        )
    return mask.reshape(batch, rows * cols) != 0


def _patch_grid(target: Tensor, patch_size: int) -> tuple[int, int]:
    """Patch grid ``(rows, cols)`` of a ``(B, C, H, W)`` target map."""
    height, width = target.shape[-2:]
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(
            f'patch_size={patch_size} must divide the target size {height} x {width}'
        )
    return height // patch_size, width // patch_size


def _ratio(numerator: Tensor, denominator: Tensor | int) -> Tensor:
    """``numerator / denominator`` as float32 without gradient, 0 for 0 / 0."""
    if isinstance(denominator, int):
        return numerator.detach().float() / max(denominator, 1)
    return numerator.detach().float() / denominator.clamp(min=1).float()


def masked_patch_mse(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix: bool = False,
    eps: float = 1e-6,
) -> TaskLoss:
    """Mean squared error of a continuous map on the masked patches.

    For every masked patch, the squared error is averaged over the patch's valid
    (finite) target entries; the loss is the mean of these per-patch errors over the
    masked patches that have at least one valid entry. Visible patches and
    non-finite targets get exactly zero gradient.

    Unlike the reference, missing values are not zero-filled targets, and a masked
    patch whose error happens to be 0 still counts (the reference divides by the
    number of non-zero patch errors, NaN when all are 0).

    Args:
        pred: predictions ``(B, L, P * P * C)`` in the layout of
            :func:`~torchgeo_mmearth.losses.tasks.patchify`.
        target: target map ``(B, C, H, W)`` with ``H = G_h * P``, ``W = G_w * P``;
            non-finite values are no-data.
        mask: ``(B, G_h, G_w)`` (or ``(B, L)``), True or 1 where the patch was
            masked.
        patch_size: patch side *P* in pixels.
        norm_pix: normalise the target per patch (MP-MAE does so for sentinel2):
            ``(t - mean) / sqrt(var + eps)`` with the mean and unbiased variance of
            the patch's valid entries (variance 0 for a single valid entry).
        eps: added to the variance by *norm_pix*.

    Returns:
        The loss and the fraction of valid entries in the masked patches.

    Raises:
        ValueError: if the shapes of *pred*, *target* and *mask* do not agree, in
            particular if the prediction width is not ``patch_size**2`` times the
            target channels.
    """
    if target.ndim != 4:
        raise ValueError(
            f'target must be (B, C, H, W), got shape {tuple(target.shape)}'
        )
    batch, channels = target.shape[:2]
    rows, cols = _patch_grid(target, patch_size)
    width = patch_size * patch_size * channels
    if pred.shape != (batch, rows * cols, width):
        raise ValueError(
            f'pred must be ({batch}, {rows * cols}, {width}) for a target of shape '
            f'{tuple(target.shape)} and patch_size={patch_size} '
            f'(width patch_size**2 * {channels} channels), got {tuple(pred.shape)}'
        )
    masked = _patch_mask(mask, batch, rows, cols)

    patches = patchify(target.float(), patch_size)
    valid = torch.isfinite(patches)
    count = valid.sum(dim=-1)  # (B, L)
    if norm_pix:
        mean, std = patch_statistics(patches, eps)
        patches = (patches - mean) / std
    patches = torch.where(valid, patches, 0.0)

    error = torch.where(valid, (pred.float() - patches).square(), 0.0)
    per_patch = error.sum(dim=-1) / count.clamp(min=1)
    counted = masked & (count > 0)
    loss = torch.where(counted, per_patch, 0.0).sum() / counted.sum().clamp(min=1)
    eligible = masked.sum() * width
    valid_fraction = _ratio((valid & masked.unsqueeze(-1)).sum(), eligible)
    return TaskLoss(loss, valid_fraction)


def patch_statistics(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each patch over its valid (finite) entries.

    The statistics with which :func:`masked_patch_mse` normalises a target patch
    (*norm_pix*), so that a prediction can be drawn in the target's units:
    ``prediction * std + mean``.

    Args:
        patches: patches ``(..., N)``, e.g. from
            :func:`~torchgeo_mmearth.losses.tasks.patchify`; non-finite entries are
            no-data.
        eps: added to the variance.

    Returns:
        The mean and ``sqrt(var + eps)`` of every patch, each of shape ``(..., 1)``,
        with the unbiased variance of the valid entries (0 for a single valid entry).
        A patch without valid entries gets mean 0 and variance 0.
    """
    valid = torch.isfinite(patches)
    count = valid.sum(dim=-1, keepdim=True)
    values = torch.where(valid, patches, 0.0)
    mean = values.sum(dim=-1, keepdim=True) / count.clamp(min=1)
    deviation = torch.where(valid, values - mean, 0.0)
    var = deviation.square().sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
    return mean, torch.sqrt(var + eps)


def masked_patch_cross_entropy(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    patch_size: int,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> TaskLoss:
    """Cross-entropy of a class map on the pixels of the masked patches.

    The loss is the mean over all labelled pixels of the masked patches of the
    whole batch (as the reference); pixels labelled *ignore_index* and visible
    patches do not count and get exactly zero gradient.

    Args:
        pred: logits ``(B, L, P * P * K)``: per pixel of the patch (row-major), the
            logits of the *K* classes, classes fastest.
        target: class indices ``(B, 1, H, W)`` or ``(B, H, W)``, integer dtype,
            in ``[0, K)`` or *ignore_index*.
        mask: ``(B, G_h, G_w)`` (or ``(B, L)``), True or 1 where the patch was
            masked.
        patch_size: patch side *P* in pixels.
        num_classes: *K*; None infers it from the prediction width. Give it to
            catch a prediction made for another patch size.
        ignore_index: target value that carries no label.

    Returns:
        The loss and the fraction of labelled pixels in the masked patches.

    Raises:
        ValueError: if *target* is not an integer map or the shapes of *pred*,
            *target* and *mask* do not agree.
    """
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f'target must hold integer class indices, got {target.dtype}')
    if target.ndim == 3:
        target = target.unsqueeze(1)
    if target.ndim != 4 or target.shape[1] != 1:
        raise ValueError(
            f'target must be (B, 1, H, W) or (B, H, W), got shape {tuple(target.shape)}'
        )
    batch = target.shape[0]
    rows, cols = _patch_grid(target, patch_size)
    area = patch_size * patch_size
    if pred.ndim != 3 or pred.shape[:2] != (batch, rows * cols):
        raise ValueError(
            f'pred must be ({batch}, {rows * cols}, patch_size**2 * num_classes) for a '
            f'target of shape {tuple(target.shape)}, got {tuple(pred.shape)}'
        )
    if num_classes is None:
        num_classes = pred.shape[-1] // area
    if num_classes < 1 or pred.shape[-1] != area * num_classes:
        raise ValueError(
            f'pred width {pred.shape[-1]} does not match patch_size={patch_size} '
            f'and {num_classes} classes (expected {area * num_classes})'
        )
    masked = _patch_mask(mask, batch, rows, cols)

    labels = patchify(target, patch_size)  # (B, L, P*P)
    labelled = (labels != ignore_index) & masked.unsqueeze(-1)
    labels = torch.where(labelled, labels, ignore_index).long()
    total = F.cross_entropy(
        pred.float().reshape(-1, num_classes),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction='sum',
    )
    count = labelled.sum()
    loss = total / count.clamp(min=1)
    valid_fraction = _ratio(count, masked.sum() * area)
    return TaskLoss(loss, valid_fraction)


def image_mse(pred: Tensor, target: Tensor) -> TaskLoss:
    """Mean squared error of image-level vectors over their finite target entries.

    Args:
        pred: predictions ``(B, C)``.
        target: targets ``(B, C)``; non-finite values are no-data.

    Returns:
        The loss (mean over all valid entries of the batch) and the fraction of
        valid entries.

    Raises:
        ValueError: if the shapes differ.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f'pred and target must both be (B, C), got {tuple(pred.shape)} and '
            f'{tuple(target.shape)}'
        )
    target = target.float()
    valid = torch.isfinite(target)
    error = torch.where(valid, (pred.float() - torch.where(valid, target, 0.0)), 0.0)
    count = valid.sum()
    loss = error.square().sum() / count.clamp(min=1)
    return TaskLoss(loss, _ratio(count, target.numel()))


def image_cross_entropy(
    pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX
) -> TaskLoss:
    """Cross-entropy of image-level classes, ignoring unlabelled samples.

    Args:
        pred: logits ``(B, K)``.
        target: class indices ``(B,)`` (or ``(B, 1)``), integer dtype, in
            ``[0, K)`` or *ignore_index*.
        ignore_index: target value that carries no label.

    Returns:
        The loss (mean over the labelled samples) and the fraction of labelled
        samples.

    Raises:
        ValueError: if *target* is not integer or the shapes do not agree.
    """
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f'target must hold integer class indices, got {target.dtype} '
            '(convert one-hot vectors with argmax first)'
        )
    if target.ndim == 2 and target.shape[1] == 1:
        target = target.squeeze(1)
    if pred.ndim != 2 or target.shape != pred.shape[:1]:
        raise ValueError(
            f'pred must be (B, K) and target (B,), got {tuple(pred.shape)} and '
            f'{tuple(target.shape)}'
        )
    labelled = target != ignore_index
    total = F.cross_entropy(
        pred.float(), target.long(), ignore_index=ignore_index, reduction='sum'
    )
    count = labelled.sum()
    loss = total / count.clamp(min=1)
    return TaskLoss(loss, _ratio(count, target.numel()))
