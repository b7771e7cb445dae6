"""The multi-pretext loss of MP-MAE."""

from collections.abc import Collection, Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ..modalities import IGNORE_INDEX, Kind, Level, PretextTask, check_tasks
from .pretext import (
    TaskLoss,
    image_cross_entropy,
    image_mse,
    masked_patch_cross_entropy,
    masked_patch_mse,
)
from .uncertainty import UncertaintyWeighting

__all__ = ['MultiPretextLoss']

#: How :class:`MultiPretextLoss` combines the task losses.
Aggregation = Literal['uncertainty', 'unweighted']


class MultiPretextLoss(nn.Module):
    """Loss of the MP-MAE pretext tasks, combined over tasks.

    Per task, chosen by its level and kind (see :mod:`torchgeo_mmearth.losses.pretext`):

    * continuous map: MSE on the masked patches
      (:func:`~torchgeo_mmearth.losses.pretext.masked_patch_mse`), with per-patch
      target normalisation for the tasks in *norm_pix_loss*;
    * class map: cross-entropy on the pixels of the masked patches
      (:func:`~torchgeo_mmearth.losses.pretext.masked_patch_cross_entropy`);
    * image-level vector: MSE over the finite entries
      (:func:`~torchgeo_mmearth.losses.pretext.image_mse`);
    * image-level class: cross-entropy over the labelled samples
      (:func:`~torchgeo_mmearth.losses.pretext.image_cross_entropy`).

    The task losses are then summed, weighted by learned uncertainties
    (:class:`~torchgeo_mmearth.losses.uncertainty.UncertaintyWeighting`, the MP-MAE
    default, whose log-variances follow the order of *tasks*) or unweighted. A task
    without any valid target in the batch (all no-data, all ignored, or no masked
    patch) has loss 0 and adds nothing to the total.

    If you use this loss in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        tasks: Sequence[PretextTask],
        patch_size: int,
        aggregation: Aggregation = 'uncertainty',
        norm_pix_loss: Collection[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        """Initialize a new MultiPretextLoss instance.

        Args:
            tasks: the pretext tasks, in the order of the decoder's tasks; names
                must be unique.
            patch_size: patch side *P* in pixels of the pixel-level predictions.
            aggregation: ``'uncertainty'`` (learned weighting, MP-MAE's default) or
                ``'unweighted'`` (plain sum).
            norm_pix_loss: names of continuous pixel-level tasks whose targets are
                normalised per patch; None selects sentinel2 when it is a task, as
                MP-MAE does. Pass ``()`` to normalise none.
            ignore_index: class target that carries no label.

        Raises:
            ValueError: for an empty or duplicated task list, a non-positive
                *patch_size*, an unknown *aggregation*, or a *norm_pix_loss* name
                that is not a continuous pixel-level task of *tasks*.
            TypeError: if *norm_pix_loss* is a single string.
        """
        super().__init__()
        self.tasks = check_tasks(tasks)
        if patch_size < 1:
            raise ValueError(f'patch_size must be positive, got {patch_size}')
        if aggregation not in get_args(Aggregation):
            raise ValueError(
                f'Unknown aggregation {aggregation!r}; '
                f'valid choices are {get_args(Aggregation)}'
            )
        if isinstance(norm_pix_loss, str):
            raise TypeError(
                f'norm_pix_loss must be a collection of task names, '
                f'got the string {norm_pix_loss!r}'
            )
        maps = [
            task.name
            for task in self.tasks
            if task.level is Level.PIXEL and task.kind is Kind.CONTINUOUS
        ]
        if norm_pix_loss is None:
            norm_pix_loss = [name for name in ('sentinel2',) if name in maps]
        for name in norm_pix_loss:
            if name not in maps:
                raise ValueError(
                    f'norm_pix_loss names {name!r}, which is not a continuous '
                    f'pixel-level task; those are {maps}'
                )

        self.patch_size = patch_size
        self.aggregation = aggregation
        self.norm_pix_loss = frozenset(norm_pix_loss)
        self.ignore_index = ignore_index
        self.weighting = (
            UncertaintyWeighting(len(self.tasks))
            if aggregation == 'uncertainty'
            else None
        )

    def task_loss(
        self, task: PretextTask, pred: Tensor, target: Tensor, mask: Tensor
    ) -> TaskLoss:
        """Loss of one task.

        Args:
            task: the task.
            pred: its prediction, as returned by the decoder.
            target: its target, as found in the batch under ``task.key``.
            mask: ``(B, G_h, G_w)`` (or ``(B, G_h * G_w)``), True or 1 where the
                patch was masked.

        Returns:
            The task loss and valid-target fraction.

        Raises:
            ValueError: if the shapes do not fit the task and patch size.
        """
        size = self.patch_size
        if task.level is Level.PIXEL and task.kind is Kind.CONTINUOUS:
            if target.ndim != 4 or target.shape[1] != task.channels:
                raise ValueError(
                    f'target must be (B, {task.channels}, H, W), '
                    f'got shape {tuple(target.shape)}'
                )
            norm_pix = task.name in self.norm_pix_loss
            return masked_patch_mse(pred, target, mask, size, norm_pix=norm_pix)
        if task.level is Level.PIXEL:
            return masked_patch_cross_entropy(
                pred, target, mask, size, task.channels, self.ignore_index
            )
        if pred.ndim != 2 or pred.shape[1] != task.channels:
            raise ValueError(
                f'pred must be (B, {task.channels}), got shape {tuple(pred.shape)}'
            )
        if task.kind is Kind.CONTINUOUS:
            return image_mse(pred, target)
        return image_cross_entropy(pred, target, self.ignore_index)

    def forward(
        self,
        predictions: Mapping[str, Tensor],
        batch: Mapping[str, Tensor],
        mask: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Compute the loss of every task and their combination.

        Args:
            predictions: predictions by task name, as returned by
                :class:`~torchgeo_mmearth.models.mpmae_decoder.MultiPretextDecoder`.
            batch: targets by :attr:`PretextTask.key` (e.g. ``image_sentinel2``,
                ``mask_dynamic_world``, ``era5``, ``biome``), cropped to the model
                input: maps must be ``(B, C, G_h * P, G_w * P)``.
            mask: ``(B, G_h, G_w)`` (or ``(B, G_h * G_w)``), True or 1 where the
                patch was masked.

        Returns:
            The scalar total loss, the loss of each task (unweighted, with
            gradient) and the fraction of each task's eligible target entries that
            were valid (without gradient), both by task name.

        Raises:
            ValueError: if a task's prediction or target is missing or has the
                wrong shape, e.g. when *patch_size* does not match the predictions.
        """
        losses: dict[str, Tensor] = {}
        valid: dict[str, Tensor] = {}
        for task in self.tasks:
            if task.name not in predictions:
                raise ValueError(
                    f'predictions has no entry for task {task.name!r}; '
                    f'it has {list(predictions)}'
                )
            if task.key not in batch:
                raise ValueError(
                    f'batch has no key {task.key!r}, the target of task '
                    f'{task.name!r}; it has {list(batch)}'
                )
            try:
                result = self.task_loss(
                    task, predictions[task.name], batch[task.key], mask
                )
            except ValueError as error:
                raise ValueError(f'Task {task.name!r}: {error}') from error
            losses[task.name] = result.loss
            valid[task.name] = result.valid_fraction

        stacked = torch.stack(list(losses.values()))
        if self.weighting is None:
            total = stacked.sum()
        else:
            has_target = torch.stack(list(valid.values())) > 0
            total = self.weighting(stacked, has_target)
        return total, losses, valid
