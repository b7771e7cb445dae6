"""Figures of MP-MAE pretraining: what the model made of a tile, and the loss curves.

:func:`plot_reconstruction` draws one tile of a batch: the input, the visible
patches, and for each pixel-level task its target and prediction.
:func:`plot_training_progress` puts such rows, from several points of a run, above
one another beside the loss curves; :class:`~torchgeo_mmearth.trainers.MPMAETask`
saves it at the end of fit, with the same validation tile in every row.
"""

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from .._panels import draw_panel, has_data, shown_bands
from ..losses import patchify, unpatchify
from ..losses.pretext import patch_statistics
from ..modalities import IGNORE_INDEX, PRETEXT_MODALITIES, Kind, Level, PretextTask
from ..models import MPMAEOutput

__all__ = (
    'Panel',
    'plot_reconstruction',
    'plot_training_progress',
    'reconstruction_panels',
)

# Inches per image panel, and the width of the loss curves.
_PANEL_SIZE = 2.2
_CURVES_WIDTH = 4.0


class Panel(NamedTuple):
    """One image of a reconstruction figure."""

    #: Title above the image.
    title: str
    #: ``(H, W)`` or ``(H, W, 3)`` image for ``imshow``; None for a modality the
    #: tile does not have, drawn as a "no data" panel.
    image: np.ndarray | None
    #: Further ``imshow`` options (the colour map and range of class maps).
    options: Mapping[str, Any]


def reconstruction_panels(
    batch: Mapping[str, Any],
    output: MPMAEOutput,
    tasks: Sequence[PretextTask],
    patch_size: int,
    norm_pix: Collection[str] = ('sentinel2',),
    index: int = 0,
) -> list[Panel]:
    """The panels of one sample: input, mask, and target and prediction of pixel tasks.

    Sentinel-2 is drawn as RGB (the 12 MP-MAE bands or the 3 BGR bands), Sentinel-1
    by one band per pass that the tile has, other continuous maps by their first band
    with data, class maps by class. Each prediction is stretched like its target.
    The Sentinel-2 reconstruction shows the input in the visible patches and the
    prediction in the masked ones, as MAE figures do, followed by the squared error
    of its masked patches; the other predictions are shown in the masked patches
    only (white elsewhere and where the target has no data). The tasks whose target
    holds no data in this sample are listed in one last "no data" panel.

    Predictions of the tasks in *norm_pix* were trained against targets normalised
    per patch; they are drawn in target units with the target patch's own mean and
    standard deviation, so the brightness and contrast of a masked patch come from
    the target and only the structure within it from the model.

    Args:
        batch: the batch given to MP-MAE.
        output: what MP-MAE computed on it.
        tasks: the pretext tasks.
        patch_size: the patch size.
        norm_pix: tasks whose targets were normalised per patch.
        index: which sample of the batch to draw.

    Returns:
        The panels, in drawing order.

    Raises:
        IndexError: if *index* is not a sample of the batch.
    """
    size = len(output.mask)
    if not -size <= index < size:
        raise IndexError(f'index {index} is out of range for a batch of {size}')
    index %= size  # a negative index would give empty slices below
    mask = output.mask[index].detach().cpu()
    pixel_mask = mask.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    shown_input = _panel(
        'Sentinel-2 input', _rgb(batch['image_sentinel2'][index].detach().cpu().float())
    )
    visible = None
    if shown_input.image is not None:
        # The input as stretched above, the masked patches grey checks: black or a
        # flat colour could be an image or a prediction, the checks cannot.
        extra_axes = (1,) * (shown_input.image.ndim - 2)
        hidden = pixel_mask.numpy().reshape(*pixel_mask.shape, *extra_axes)
        rows, columns = np.indices(pixel_mask.shape) // 2
        checks = (0.4 + 0.25 * ((rows + columns) % 2)).reshape(hidden.shape)
        visible = np.where(hidden, checks, shown_input.image)
    panels = [shown_input, Panel('visible patches\n(masked: grey checks)', visible, {})]
    absent = []
    for task in tasks:
        if task.level is not Level.PIXEL or task.key not in batch:
            continue
        target = batch[task.key][index].detach().cpu()
        if not has_data(target.float().numpy(), task.kind):
            absent.append(task.name)
            continue
        prediction = output.predictions[task.name][index : index + 1].detach().cpu()
        if task.kind is Kind.CATEGORICAL:
            panels += _class_map_panels(
                task, target, prediction, pixel_mask, patch_size
            )
        else:
            predicted = _in_target_units(
                prediction.float(), target.float(), patch_size, task.name in norm_pix
            )
            panels += _continuous_panels(task, target.float(), predicted, pixel_mask)
            if task.name == 'sentinel2':
                panels.append(
                    _error_panel(
                        prediction.float(),
                        target.float(),
                        pixel_mask,
                        patch_size,
                        task.name in norm_pix,
                    )
                )
    if absent:
        panels.append(Panel('no data in this tile:\n' + ', '.join(absent), None, {}))
    return panels


def plot_reconstruction(
    batch: Mapping[str, Any],
    output: MPMAEOutput,
    tasks: Sequence[PretextTask],
    patch_size: int,
    norm_pix: Collection[str] = ('sentinel2',),
    index: int = 0,
) -> Figure:
    """Figure of one sample: input, mask, and target and prediction of pixel tasks.

    Args:
        batch: the batch given to MP-MAE.
        output: what MP-MAE computed on it.
        tasks: the pretext tasks.
        patch_size: the patch size.
        norm_pix: tasks whose targets were normalised per patch (their predictions
            are shown in target units).
        index: which sample of the batch to draw.

    Returns:
        One row of the panels of :func:`reconstruction_panels`.
    """
    panels = reconstruction_panels(batch, output, tasks, patch_size, norm_pix, index)
    return plot_training_progress([('', panels)])


def plot_training_progress(
    rows: Sequence[tuple[str, Sequence[Panel]]],
    losses: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    loss_title: str = 'loss',
    task_losses: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    caption: str | None = None,
) -> Figure:
    """Rows of reconstruction panels, each labelled, beside the loss curves.

    Args:
        rows: a label (drawn left of the row, e.g. the epoch and step) and the
            panels of each row, top to bottom.
        losses: curves to draw beside the rows, by legend label: ``(step, loss)``
            points. None or only empty curves draws no curves.
        loss_title: title of the loss curves.
        task_losses: each task's training loss per epoch, ``(step, loss)``
            points by task name, drawn below the total relative to their first
            point, so that tasks on different scales show how much each changed.
        caption: a line of text below the figure.

    Returns:
        The figure.

    Raises:
        ValueError: if *rows* is empty.
    """
    if not rows:
        raise ValueError('plot_training_progress needs at least one row of panels')
    curves = {label: points for label, points in (losses or {}).items() if points}
    per_task = {name: points for name, points in (task_losses or {}).items() if points}
    columns = max(len(panels) for _, panels in rows)
    ratios = [1.0] * columns + ([_CURVES_WIDTH / _PANEL_SIZE] if curves else [])
    height = _PANEL_SIZE * max(len(rows), 2 if curves and per_task else 1) + 0.5
    figure = plt.figure(
        figsize=(_PANEL_SIZE * sum(ratios), height), layout='constrained'
    )
    grid = figure.add_gridspec(len(rows), len(ratios), width_ratios=ratios)
    for row, (label, panels) in enumerate(rows):
        for column, panel in enumerate(panels):
            axis = figure.add_subplot(grid[row, column])
            draw_panel(axis, panel.image, panel.options)
            axis.set_title(panel.title, fontsize=9)
            if column == 0 and label:
                axis.set_ylabel(label, fontsize=10)
    if curves:
        cells = grid[:, -1].subgridspec(2 if per_task else 1, 1)
        _draw_curves(figure.add_subplot(cells[0]), curves, loss_title)
        if per_task:
            relative = {
                name: [(step, value / points[0][1]) for step, value in points]
                for name, points in per_task.items()
                if points[0][1] > 0
            }
            _draw_curves(
                figure.add_subplot(cells[1]),
                relative,
                'training loss of each task (epoch mean),\nrelative to its first epoch',
            )
    if caption:
        figure.supxlabel(caption, fontsize=8, wrap=True)
    return figure


def _draw_curves(
    axis: Axes, curves: Mapping[str, Sequence[tuple[int, float]]], title: str
) -> None:
    """Line plots of ``(step, value)`` points, one per legend label."""
    for label, points in curves.items():
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, marker='o', markersize=3, label=label)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel('step')
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _panel(title: str, image: Tensor, reference: Tensor | None = None) -> Panel:
    """A panel of a ``(C, H, W)`` map (C in 1, 3) stretched like *reference*."""
    reference = image if reference is None else reference
    if not reference.isfinite().any():
        return Panel(title, None, {})
    return Panel(title, _display(image, reference).numpy(), {})


def _continuous_panels(
    task: PretextTask, target: Tensor, predicted: Tensor, pixel_mask: Tensor
) -> list[Panel]:
    """Target and prediction: Sentinel-2 in RGB, other maps per band shown."""
    if task.name == 'sentinel2':
        reconstructed = torch.where(pixel_mask, predicted, target)
        return [
            _panel('sentinel2 target', _rgb(target)),
            _panel(
                'sentinel2 reconstructed\n(masked patches predicted)',
                _rgb(reconstructed),
                _rgb(target),
            ),
        ]
    predicted = predicted.masked_fill(~pixel_mask, math.nan)
    panels = []
    for label, channel in shown_bands(task.name, _band_names(task), target.numpy()):
        band = slice(channel, channel + 1)
        panels += [
            _panel(f'{task.name} {label} target', target[band]),
            _panel(
                f'{task.name} {label}\npredicted (masked patches)',
                predicted[band],
                target[band],
            ),
        ]
    return panels


#: How to read a reconstruction figure, printed below it.
RECONSTRUCTION_CAPTION = (
    'Reconstructed: the input in the visible patches, the prediction in the masked '
    "ones, in target units with the target patch's mean and spread (a flat patch: "
    'the model predicts little more than the patch mean, as after a short run). '
    "Squared error: masked patches, in the loss's units, 0 (black) to 2 (yellow)."
)

#: Colour range of the error panel: squared errors in the loss's units.
ERROR_RANGE = (0.0, 2.0)


def _error_panel(
    prediction: Tensor,
    target: Tensor,
    pixel_mask: Tensor,
    patch_size: int,
    norm_pix: bool,
) -> Panel:
    """Squared error of the masked patches, averaged over bands, in the loss's units.

    Per-patch normalised for a *norm_pix* task, as the loss sees it, and on one
    fixed colour scale (:data:`ERROR_RANGE`), so that rows from different epochs
    compare; the title gives the tile's mean over the masked patches.
    """
    grid = target.shape[-2] // patch_size, target.shape[-1] // patch_size
    patches = patchify(target[None], patch_size)
    if norm_pix:
        mean, std = patch_statistics(patches)
        patches = (patches - mean) / std
    error = unpatchify((prediction - patches).square(), patch_size, grid)[0]
    error = error.nanmean(dim=0).masked_fill(~pixel_mask, math.nan)
    tile_mean = float(error.nanmean())
    return Panel(
        f'sentinel2 squared error\n(masked patches, mean {tile_mean:.2f})',
        error.numpy(),
        {'cmap': 'magma', 'vmin': ERROR_RANGE[0], 'vmax': ERROR_RANGE[1]},
    )


def _class_map_panels(
    task: PretextTask,
    target: Tensor,
    logits: Tensor,
    pixel_mask: Tensor,
    patch_size: int,
) -> list[Panel]:
    """Target and predicted classes (the argmax of the logits, masked patches)."""
    grid = target.shape[-2] // patch_size, target.shape[-1] // patch_size
    scores = logits.reshape(1, -1, patch_size * patch_size, task.channels)
    classes = scores.argmax(-1).to(target.dtype)
    predicted = unpatchify(classes, patch_size, grid)[0, 0]
    predicted = torch.where(pixel_mask, predicted, IGNORE_INDEX)
    options = {'cmap': 'tab20', 'vmin': 0, 'vmax': max(task.channels - 1, 1)}
    return [
        Panel(f'{task.name} target', _class_image(target[0]), options),
        Panel(
            f'{task.name}\npredicted (masked patches)', _class_image(predicted), options
        ),
    ]


def _class_image(classes: Tensor) -> np.ndarray:
    """Class map as floats, NaN (drawn blank) at the ignore index."""
    image: np.ndarray = (
        classes.float().masked_fill(classes == IGNORE_INDEX, math.nan).numpy()
    )
    return image


def _in_target_units(
    prediction: Tensor, target: Tensor, patch_size: int, norm_pix: bool
) -> Tensor:
    """``(C, H, W)`` map of a ``(1, L, P * P * C)`` prediction, in target units."""
    grid = target.shape[-2] // patch_size, target.shape[-1] // patch_size
    if norm_pix:
        # Undo the loss's per-patch normalisation with the same statistics. A patch
        # without valid target has none: its prediction cannot be drawn.
        patches = patchify(target[None], patch_size)
        mean, std = patch_statistics(patches)
        has_target = patches.isfinite().any(-1, keepdim=True)
        prediction = torch.where(has_target, prediction * std + mean, math.nan)
    return unpatchify(prediction, patch_size, grid)[0]


def _band_names(task: PretextTask) -> Sequence[str]:
    """Names of a task's channels: its modality's MP-MAE bands, else ``band i``."""
    bands = PRETEXT_MODALITIES.get(task.name, ())
    if len(bands) == task.channels:
        return bands
    return [f'band {channel}' for channel in range(task.channels)]


def _rgb(image: Tensor) -> Tensor:
    """Red, green, blue of the 12 MP-MAE bands or the 3 BGR bands, else band 0."""
    if len(image) == 12:
        return image[[3, 2, 1]]
    if len(image) == 3:
        return image[[2, 1, 0]]
    return image[:1]


def _display(image: Tensor, reference: Tensor | None = None) -> Tensor:
    """(C, H, W), C in (1, 3), to an (H, W[, 3]) image in [0, 1] for imshow.

    Each channel is stretched between the 2nd and 98th percentiles of the same
    channel of *reference* (default: the image), so that a prediction is drawn on
    the scale of its target. NaN (no data, not predicted) stays NaN in a single
    channel, which imshow leaves blank, and is white in RGB.
    """
    reference = image if reference is None else reference
    channels = []
    for channel, ref in zip(image, reference, strict=True):
        finite = ref[ref.isfinite()]
        if finite.numel() == 0:
            channels.append(torch.full_like(channel, math.nan))
            continue
        low, high = torch.quantile(finite, torch.tensor([0.02, 0.98]))
        channels.append(((channel - low) / (high - low + 1e-6)).clamp(0, 1))
    stacked = torch.stack(channels)
    if len(stacked) == 3:
        return stacked.nan_to_num(1.0).permute(1, 2, 0)
    return stacked[0]
