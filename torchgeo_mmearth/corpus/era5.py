"""ERA5 for the corpus builder: monthly climate aggregates reduced to 12 values.

MMEarth-data (``ee_utils/ee_data.py``) takes Earth Engine's ERA5-Land monthly
aggregates (``ECMWF/ERA5_LAND/MONTHLY_AGGR``: ``temperature_2m``,
``temperature_2m_min``, ``temperature_2m_max``, ``total_precipitation_sum``) around
the Sentinel-2 date and stores 12 values per tile, each
``[avg_temp, min_temp, max_temp, total_precip]``:

* ``prev_month_*``: the calendar month before the Sentinel-2 month;
* ``curr_month_*``: the Sentinel-2 month;
* ``year_*``: a window of months ending with the Sentinel-2 month, reduced per
  pixel: the mean of ``temperature_2m``, the minimum of ``temperature_2m_min``,
  the maximum of ``temperature_2m_max`` and the sum of
  ``total_precipitation_sum``;

every value reduced to a scalar as the mean over the tile (``reduceRegion`` with a
mean reducer at 10 m).

Here an ERA5 source is any :class:`~.sources.ModalitySource` of modality ``era5``
(GeoTIFF files or a TorchGeo ``RasterDataset``) with one dated acquisition per
calendar month. Each month needed is resampled bilinearly onto the tile grid (a
tile much smaller than an ERA5 cell gets the value interpolated at its location),
the year window is reduced per pixel, and each value is the mean over the tile
pixels with a valid value (NaN where none has). MMEarth-data does not resample
the ERA5 image before its ``reduceRegion``, so Earth Engine samples it by nearest
neighbour: the published values are those of the cell(s) under the tile, where
ours interpolate between cell centres. A month, or a variable of a month, without
data leaves NaN in exactly the values that need it: the window is never shifted
or shortened (MMEarth-data's band list would shift).

**The year window.** MMEarth-data means one year ("the full year", "exactly one
year of stats including the current month"), but its date filter, ``[same month of
the previous year, end of the current month)``, takes 13 monthly images, counting
the Sentinel-2 calendar month twice. ``year_months=12``, the default, is the
documented intent: the 12 months ending with the Sentinel-2 month, each calendar
month once, so that the mean temperature and the precipitation sum are annual
figures without a seasonal bias towards the Sentinel-2 month. ``year_months=13``
reproduces the published corpora (the builder's ``era5_year_months``).
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .grid import TileGrid
from .sources import ERA5_VARIABLES, Acquisition, ModalitySource, read_mosaic

__all__ = [
    'DEFAULT_YEAR_MONTHS',
    'Era5Tile',
    'Era5Window',
    'check_era5_source',
    'check_year_months',
    'era5_band_names',
    'read_era5',
    'tile_mean',
]

#: Months of the ``year`` window by default: one year (see the module docstring).
DEFAULT_YEAR_MONTHS = 12

#: A calendar month: (year, month).
Month = tuple[int, int]

# Per-pixel reduction of the year window, for each of ERA5_VARIABLES.
_YEAR_REDUCERS: tuple[Callable[..., Any], ...] = (np.mean, np.min, np.max, np.sum)

# tile_info 'BANDS' names of the year values in the published corpora:
# MMEarth-data reduces each variable ('<band>_<reducer>') and stacks the four
# images with toBands(), which prefixes the image index (as torchgeo's MMEarth
# lists them).
_YEAR_BAND_NAMES = (
    '0_temperature_2m_mean',
    '1_temperature_2m_min_min',
    '2_temperature_2m_max_max',
    '3_total_precipitation_sum_sum',
)


def _shift(month: Month, months: int) -> Month:
    """The month *months* calendar months after *month* (before when negative)."""
    index = month[0] * 12 + month[1] - 1 + months
    return index // 12, index % 12 + 1


def _text(month: Month) -> str:
    return f'{month[0]:04d}-{month[1]:02d}'


def check_year_months(year_months: int) -> None:
    """Raise unless *year_months* is a valid length of the year window.

    Args:
        year_months: the number of months of the ``year`` window.

    Raises:
        ValueError: if it is not an integer >= 1.
    """
    if (
        isinstance(year_months, bool)
        or not isinstance(year_months, int)
        or year_months < 1
    ):
        raise ValueError(
            f'era5_year_months must be an integer >= 1, got {year_months!r} (12: '
            'the 12 months ending with the Sentinel-2 month; 13: the window of the '
            'published MMEarth data)'
        )


@dataclass(frozen=True)
class Era5Window:
    """The calendar months whose ERA5 aggregates a tile needs.

    Args:
        previous: the month before the Sentinel-2 month (``prev_month_*``).
        current: the Sentinel-2 month (``curr_month_*``).
        year: the months of the ``year_*`` window, oldest first, ending with
            *current*.
    """

    previous: Month
    current: Month
    year: tuple[Month, ...]

    @classmethod
    def of(cls, date: datetime, year_months: int = DEFAULT_YEAR_MONTHS) -> 'Era5Window':
        """The months of a Sentinel-2 date.

        Args:
            date: the Sentinel-2 acquisition date.
            year_months: length of the year window, in months, ending with the
                Sentinel-2 month (12 by default; 13 as in the published data).

        Returns:
            The window.

        Raises:
            ValueError: for an invalid *year_months*.
        """
        check_year_months(year_months)
        current = (date.year, date.month)
        year = tuple(_shift(current, -k) for k in range(year_months - 1, -1, -1))
        return cls(_shift(current, -1), current, year)

    @property
    def months(self) -> tuple[Month, ...]:
        """Every month needed, oldest first."""
        return tuple(sorted({self.previous, self.current, *self.year}))


def era5_band_names(date: datetime) -> list[str]:
    """The ``tile_info`` ``BANDS['era5']`` names of a tile, as published.

    ``<YYYYMM>_<variable>`` for the previous and the current month, then the names
    Earth Engine gives the reduced year window (``0_temperature_2m_mean``,
    ``1_temperature_2m_min_min``, ...): the names of
    :class:`torchgeo.datasets.MMEarth`, which turns the months into
    ``prev``/``curr``.

    Args:
        date: the Sentinel-2 acquisition date.

    Returns:
        The 12 names, in stored order.
    """
    window = Era5Window.of(date, 1)
    return [
        f'{year:04d}{month:02d}_{variable}'
        for year, month in (window.previous, window.current)
        for variable in ERA5_VARIABLES
    ] + list(_YEAR_BAND_NAMES)


def tile_mean(array: np.ndarray | None) -> float:
    """Mean of the valid (finite) values of a tile, NaN when there is none.

    Args:
        array: values on the tile grid (NaN for no-data), or None.

    Returns:
        The mean, in float64.
    """
    if array is None:
        return math.nan
    valid = np.isfinite(array)
    if not valid.any():
        return math.nan
    return float(array[valid].astype(np.float64).mean())


@dataclass(frozen=True)
class Era5Tile:
    """The ERA5 values of one tile.

    Args:
        raw: the 12 values in float64, in the stored order (previous month,
            current month, year; each avg, min, max temperature and
            precipitation), NaN where data is missing.
        window: the months used.
        acquisitions: the acquisitions read, oldest month first.
        missing: for every month of the window lacking a variable on the tile
            (no raster, or no valid pixel), the variables it lacks.
    """

    raw: np.ndarray
    window: Era5Window
    acquisitions: tuple[Acquisition, ...]
    missing: Mapping[Month, tuple[str, ...]]

    @property
    def values(self) -> np.ndarray:
        """The stored float32 ``(12,)`` vector."""
        return self.raw.astype(np.float32)

    @property
    def record(self) -> dict[str, list[float]]:
        """The published ``tile_info`` ``era5`` record: month1, month2 and year."""
        values = [float(v) for v in self.raw]
        return {'month1': values[:4], 'month2': values[4:8], 'year': values[8:]}

    @property
    def months(self) -> dict[str, Any]:
        """The months used and those lacking data, for ``tile_info``."""
        return {
            'month1': _text(self.window.previous),
            'month2': _text(self.window.current),
            'year': [_text(self.window.year[0]), _text(self.window.year[-1])],
            'missing': {
                _text(month): list(variables)
                for month, variables in self.missing.items()
            },
        }


def read_era5(
    source: ModalitySource,
    grid: TileGrid,
    date: datetime,
    year_months: int = DEFAULT_YEAR_MONTHS,
) -> Era5Tile:
    """The 12 ERA5 values of a tile (see the module docstring).

    Args:
        source: an ERA5 source (modality ``era5``, one acquisition date per month;
            see :func:`check_era5_source`).
        grid: the tile grid.
        date: the Sentinel-2 acquisition date.
        year_months: length of the year window, in months, ending with the
            Sentinel-2 month.

    Returns:
        The values, with the months and acquisitions used.
    """
    window = Era5Window.of(date, year_months)
    wanted = set(window.months)
    by_month: dict[Month, list[Acquisition]] = {}
    for acquisition in source.overlapping(grid):
        if acquisition.date is None:
            continue  # refused by check_era5_source
        month = (acquisition.date.year, acquisition.date.month)
        if month in wanted:
            by_month.setdefault(month, []).append(acquisition)
    fields = {m: read_mosaic(source, by_month.get(m, []), grid) for m in window.months}

    raw = np.full(12, np.nan, dtype=np.float64)
    for i, (variable, reduce) in enumerate(
        zip(ERA5_VARIABLES, _YEAR_REDUCERS, strict=True)
    ):
        raw[i] = tile_mean(fields[window.previous].get(variable))
        raw[4 + i] = tile_mean(fields[window.current].get(variable))
        stack = [fields[m].get(variable) for m in window.year]
        if all(array is not None for array in stack):
            # Per pixel, as Earth Engine reduces the collection; a pixel missing
            # in any month stays NaN (the window is never shortened).
            values = np.stack([a for a in stack if a is not None]).astype(np.float64)
            raw[8 + i] = tile_mean(reduce(values, axis=0))

    missing: dict[Month, tuple[str, ...]] = {}
    for month in window.months:
        lacking = tuple(
            v
            for v in ERA5_VARIABLES
            if v not in fields[month] or not np.isfinite(fields[month][v]).any()
        )
        if lacking:
            missing[month] = lacking
    used = tuple(a for m in window.months for a in by_month.get(m, []))
    return Era5Tile(raw, window, used, missing)


def check_era5_source(source: ModalitySource) -> None:
    """Raise unless a source can serve ERA5: monthly, dated, -180..180 degrees.

    Args:
        source: the source.

    Raises:
        ValueError: naming the source and acquisition, if it is not an ``era5``
            source, sets ``max_days`` (ERA5 is paired by calendar month), has an
            acquisition without a date or two dates in one month, or a
            geographic raster with longitudes beyond 180 degrees (a 0-360 grid).
    """
    if source.modality != 'era5':
        raise ValueError(f'The {source.describe()} is not an era5 source')
    if source.max_days is not None:
        raise ValueError(
            f'max_days={source.max_days} does not apply to the {source.describe()}: '
            'ERA5 is paired by calendar month (the previous and the Sentinel-2 month, '
            'and the year window, era5_year_months)'
        )
    by_month: dict[Month, Acquisition] = {}
    for acquisition in source.acquisitions:
        if acquisition.date is None:
            raise ValueError(
                f'ERA5 raster {acquisition.key!r} of the {source.describe()} has no '
                'date: ERA5 rasters are monthly aggregates, dated by their file '
                "names (a 'date' group in filename_regex, e.g. era5_201904.tif or "
                'era5_2019-04.tif)'
            )
        month = (acquisition.date.year, acquisition.date.month)
        other = by_month.setdefault(month, acquisition)
        if other.date != acquisition.date:
            raise ValueError(
                f'The {source.describe()} has two dates in {_text(month)}: '
                f'{other.key!r} ({other.date}) and {acquisition.key!r} '
                f'({acquisition.date}); an ERA5 source holds monthly aggregates, one '
                'date per month'
            )
        if acquisition.crs.is_geographic and any(
            right > 180 + abs(acquisition.lattice.a)
            for _, _, right, _ in acquisition.footprints
        ):
            raise ValueError(
                f'ERA5 raster {acquisition.key!r} of the {source.describe()} spans '
                'longitudes beyond 180 degrees (a 0-360 grid); rewrap it to '
                '-180..180, e.g. gdalwarp -t_srs EPSG:4326 --config CENTER_LONG 0 '
                'in.tif out.tif'
            )
