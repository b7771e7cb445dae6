"""Panels shared by :meth:`MMEarth.plot` and the MP-MAE figures (private).

Both figures decide from the data whether a tile has a modality (a finite value, or
a class other than :data:`~torchgeo_mmearth.modalities.IGNORE_INDEX`) and draw a
modality the tile lacks as a grey panel that says so, not as a blank or a
false-colour image.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from .modalities import IGNORE_INDEX, Kind

#: Text of the panel of a modality that a tile does not have.
NO_DATA = 'no data'


def has_data(values: np.ndarray, kind: Kind) -> bool:
    """Whether a map or vector holds any data.

    Args:
        values: normalised values, as in a sample (NaN or the ignore index is no-data).
        kind: continuous values or classes.

    Returns:
        True if a value is finite (continuous) or not the ignore index (classes).
    """
    if kind is Kind.CATEGORICAL:
        return bool((values != IGNORE_INDEX).any())
    return bool(np.isfinite(values).any())


def shown_bands(
    name: str, bands: Sequence[str], values: np.ndarray
) -> list[tuple[str, int]]:
    """The bands that stand for a continuous pixel-level map in a figure.

    Sentinel-1 gets one band per pass that holds data (ascending ``asc_*``,
    descending ``desc_*``), any other modality one band: in each, the first band
    with a finite value, so that a tile with only HH/HV, or only slope, shows it.

    Args:
        name: modality name.
        bands: names of the channels of *values*, in their order.
        values: the map ``(C, H, W)``, NaN where there is no data.

    Returns:
        ``(label, channel)`` per band to draw, where the label is the band name with
        its pass for Sentinel-1 (``'asc VV'``); empty if no band holds data.
    """
    by_pass = name == 'sentinel1'
    groups: dict[str, list[int]] = {}
    for channel, band in enumerate(bands):
        groups.setdefault(band.split('_')[0] if by_pass else name, []).append(channel)
    shown = []
    for channels in groups.values():
        with_data = [c for c in channels if np.isfinite(values[c]).any()]
        if with_data:
            band = bands[with_data[0]]
            shown.append((band.replace('_', ' ') if by_pass else band, with_data[0]))
    return shown


def draw_panel(
    axis: Axes, image: np.ndarray | None, options: Mapping[str, Any]
) -> None:
    """Draw an image without ticks and frame, or a "no data" panel for None.

    The axis label stays visible (figures use it to label rows).

    Args:
        axis: where to draw.
        image: ``(H, W)`` or ``(H, W, 3)`` image; None for a modality the tile lacks.
        options: further ``imshow`` options for the image.
    """
    if image is None:
        axis.imshow(np.full((1, 1), 0.85), cmap='gray', vmin=0, vmax=1)
        axis.text(
            0.5,
            0.5,
            NO_DATA,
            transform=axis.transAxes,
            ha='center',
            va='center',
            color='0.25',
        )
    else:
        axis.imshow(image, **{'interpolation': 'nearest', **options})
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)
