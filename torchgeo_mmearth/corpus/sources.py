"""Modality sources: rasters a corpus is built from, and how they reach a tile grid.

A source holds the rasters of one modality, grouped into *acquisitions* (the files
acquired together: one date, one orbit direction, one CRS). The builder asks a
source which acquisitions overlap a tile, pairs one by date, and has the source
resample it onto the tile grid. This module holds the interface
(:class:`ModalitySource`), its records and the naming rules; two kinds of source
implement it:

* :class:`~torchgeo_mmearth.corpus.geotiff.GeoTiffSource`: GeoTIFF files or
  folders, read with rasterio and warped onto the tile grid;
* :class:`~torchgeo_mmearth.corpus.torchgeo_source.TorchGeoSource`: a TorchGeo
  :class:`~torchgeo.datasets.RasterDataset`, queried with
  ``dataset[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax]``.

ERA5 sources (monthly aggregates) are either kind too; :mod:`.era5` pairs their
months with a tile and reduces them to the 12 stored values.

Every read returns float32 arrays on the tile grid with NaN wherever the source
has no data (outside its footprint or equal to its no-data value).
"""

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely  # type: ignore[import-untyped]
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform as transform_coords
from rasterio.warp import transform_bounds

from ..modalities import MODALITIES, Kind, canonical_band_name
from .grid import WGS84, TileGrid

__all__ = [
    'ERA5_ALIASES',
    'ERA5_VARIABLES',
    'SOURCE_BANDS',
    'Acquisition',
    'BandFile',
    'ModalitySource',
    'Scene',
    'fill_band',
    'normalize_band',
    'orbit_from_time',
    'read_mosaic',
    'resampling_for',
]

#: Sentinel-2 bands a Sentinel-2 source may hold besides the 13 spectral bands: they
#: fill ``sentinel2_cloudmask``, ``sentinel2_scl`` and ``sentinel2_cloudprod``.
S2_EXTRA_BANDS = ('QA60', 'SCL', 'MSK_CLDPRB')

#: Variables of an ERA5 source: the bands of Earth Engine's ERA5-Land monthly
#: aggregates (``ECMWF/ERA5_LAND/MONTHLY_AGGR``) that MMEarth-data used: the mean,
#: minimum and maximum 2 m air temperature of the month (K; the extremes of the
#: hourly values) and the month's total precipitation (m).
ERA5_VARIABLES = (
    'temperature_2m',
    'temperature_2m_min',
    'temperature_2m_max',
    'total_precipitation_sum',
)

#: Other accepted names of the ERA5 variables: the variable part of the stored
#: MMEarth band names (``curr_month_avg_temp``, ...).
ERA5_ALIASES: Mapping[str, str] = {
    'avg_temp': 'temperature_2m',
    'min_temp': 'temperature_2m_min',
    'max_temp': 'temperature_2m_max',
    'total_precip': 'total_precipitation_sum',
}

#: Band names a source of each modality may provide. Sentinel-1 bands are
#: polarisations of one orbit direction (the acquisition's), or the stored names
#: with their orbit prefix; ``aster`` is a DEM (slope is computed from it);
#: ``era5`` holds monthly aggregates (see :data:`ERA5_VARIABLES`).
SOURCE_BANDS: Mapping[str, tuple[str, ...]] = {
    'sentinel2': MODALITIES['sentinel2'].bands + S2_EXTRA_BANDS,
    'sentinel1': ('VV', 'VH', 'HH', 'HV', *MODALITIES['sentinel1'].bands),
    'aster': ('elevation',),
    'canopy_height_eth': MODALITIES['canopy_height_eth'].bands,
    'dynamic_world': MODALITIES['dynamic_world'].bands,
    'esa_worldcover': MODALITIES['esa_worldcover'].bands,
    'biome': MODALITIES['biome'].bands,
    'eco_region': MODALITIES['eco_region'].bands,
    'era5': ERA5_VARIABLES,
}

# Modalities whose acquisition date matters (nearest within the window is paired).
NEEDS_DATE = ('sentinel2',)
_ORBITS = {'asc': 'asc', 'ascending': 'asc', 'a': 'asc'}
_ORBITS.update({'desc': 'desc', 'descending': 'desc', 'd': 'desc'})
_DATE_FORMATS = ('%Y%m%dT%H%M%S', '%Y-%m-%dT%H:%M:%S', '%Y%m%d', '%Y-%m-%d')
LEVEL_PATTERN = re.compile(r'L(1C|2A)', re.IGNORECASE)


@dataclass(frozen=True)
class BandFile:
    """Where one band is stored.

    Args:
        path: the raster file.
        index: 1-based band index in the file.
    """

    path: Path
    index: int = 1


@dataclass(frozen=True)
class Scene:
    """The files of one raster product (e.g. one Sentinel-2 patch or tile).

    Args:
        name: unique name of the scene (used in reports and ``tile_info``).
        bands: where each band is stored, by band name (see :data:`SOURCE_BANDS`).
        date: acquisition date and time (None for static data such as a DEM).
        orbit: 'asc' or 'desc' for Sentinel-1 polarisation bands.
        level: 'l1c' or 'l2a' for Sentinel-2.
    """

    name: str
    bands: Mapping[str, BandFile]
    date: datetime | None = None
    orbit: str | None = None
    level: str | None = None


@dataclass(frozen=True)
class Acquisition:
    """Scenes of one source acquired together, read as one mosaic.

    Args:
        key: readable unique name.
        date: acquisition date (None for static data).
        orbit: 'asc', 'desc' or None.
        level: 'l1c', 'l2a' or None.
        crs: CRS of its rasters.
        lattice: transform of its finest raster (pixel size and alignment).
        footprints: bounds (left, bottom, right, top) of each scene in *crs*.
        lonlat_bounds: bounds (west, south, east, north) of all scenes in degrees.
        scenes: names of the scenes, in mosaic order (first valid value wins).
        handle: source-specific reference to the data.
    """

    key: str
    date: datetime | None
    orbit: str | None
    level: str | None
    crs: CRS
    lattice: Affine
    footprints: tuple[tuple[float, float, float, float], ...]
    lonlat_bounds: tuple[float, float, float, float]
    scenes: tuple[str, ...]
    handle: Any = field(default=None, compare=False, repr=False)

    def contains(self, x: float, y: float, crs: CRS) -> str | None:
        """The first scene whose footprint contains a point, or None.

        Args:
            x: point x in *crs*.
            y: point y in *crs*.
            crs: CRS of the point.

        Returns:
            The scene name, or None when the point is outside every scene.
        """
        if crs != self.crs:
            xs, ys = transform_coords(crs, self.crs, [x], [y])
            x, y = xs[0], ys[0]
        for name, (left, bottom, right, top) in zip(
            self.scenes, self.footprints, strict=True
        ):
            if left <= x < right and bottom < y <= top:
                return name
        return None

    def overlaps(self, grid: TileGrid) -> bool:
        """Whether any scene footprint overlaps the grid (with positive area)."""
        left, bottom, right, top = bounds_in(grid, self.crs)
        return any(
            left < r and l < right and bottom < t and b < top
            for l, b, r, t in self.footprints
        )


def bounds_in(grid: TileGrid, crs: CRS) -> tuple[float, float, float, float]:
    """Bounds of a tile grid in another CRS (densified edges)."""
    if grid.crs == crs:
        return grid.bounds
    left, bottom, right, top = transform_bounds(
        grid.crs, crs, *grid.bounds, densify_pts=21
    )
    return float(left), float(bottom), float(right), float(top)


def normalize_band(modality: str, band: str) -> str:
    """The canonical name of a band of a modality source.

    Sentinel-2 names lose their zero padding (``B02`` is ``B2``, ``b8a`` is
    ``B8A``); Sentinel-1 polarisations are upper case (``asc_vv`` is ``asc_VV``);
    ERA5 variables may also be named as in MMEarth (:data:`ERA5_ALIASES`:
    ``avg_temp`` is ``temperature_2m``); other names are matched without regard to
    case.

    Args:
        modality: modality of the source (a key of :data:`SOURCE_BANDS`).
        band: band name as found in a file name or given by the user.

    Returns:
        The canonical band name.

    Raises:
        ValueError: naming the band, the modality and the valid names.
    """
    text = band.strip()
    if modality == 'sentinel2':
        try:
            text = canonical_band_name(text)
        except ValueError:
            text = text.upper()  # QA60, SCL, MSK_CLDPRB
    elif modality == 'sentinel1':
        match = re.fullmatch(r'(?:(asc|desc)_)?([vVhH]{2})', text, re.IGNORECASE)
        if match:
            prefix = f'{match.group(1).lower()}_' if match.group(1) else ''
            text = prefix + match.group(2).upper()
    else:
        lowered = {name.lower(): name for name in SOURCE_BANDS.get(modality, ())}
        if modality == 'era5':
            lowered.update(ERA5_ALIASES)
        text = lowered.get(text.lower(), text)
    valid = SOURCE_BANDS.get(modality)
    if valid is None:
        raise ValueError(
            f'Modality {modality!r} cannot be read from rasters; '
            f'modalities with raster sources are {list(SOURCE_BANDS)}'
        )
    if text not in valid:
        raise ValueError(
            f'Unknown band {band!r} for a {modality!r} source; '
            f'valid bands are {list(valid)}'
        )
    return text


def resampling_for(modality: str, band: str) -> Resampling:
    """Resampling onto the tile grid: bilinear for continuous values, else nearest.

    Args:
        modality: modality of the source.
        band: canonical band name.

    Returns:
        The resampling method.
    """
    if modality == 'sentinel2':
        return Resampling.nearest if band in ('QA60', 'SCL') else Resampling.bilinear
    if modality == 'aster':
        return Resampling.bilinear
    if MODALITIES[modality].kind is Kind.CATEGORICAL:
        return Resampling.nearest
    return Resampling.bilinear


def orbit_from_time(date: datetime, lon: float) -> str:
    """Sentinel-1 orbit direction from the acquisition time and longitude.

    Sentinel-1 flies a dawn-dusk sun-synchronous orbit whose ascending node is at
    18:00 local solar time: ascending passes are in the local evening, descending
    passes in the local morning.

    Args:
        date: acquisition time in UTC.
        lon: longitude of the scene in degrees.

    Returns:
        'asc' or 'desc'.
    """
    hours = date.hour + date.minute / 60 + date.second / 3600 + lon / 15
    return 'asc' if 12 <= hours % 24 < 24 else 'desc'


def parse_date(text: str, date_format: str | None, where: object) -> datetime:
    """Parse a date from a file name; *where* names the file in errors.

    Without a format, a month alone (``YYYYMM`` or ``YYYY-MM``, as monthly ERA5
    files are named) is the first day of the month; longer texts are tried with
    the formats of full dates and times.
    """
    if date_format:
        formats: tuple[str, ...] = (date_format,)
    elif re.fullmatch(r'\d{6}', text):
        formats = ('%Y%m',)  # '%Y%m%d' would read 201912 as 2019-01-02
    elif re.fullmatch(r'\d{4}-\d{2}', text):
        formats = ('%Y-%m',)
    else:
        formats = _DATE_FORMATS
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(
        f'{where}: cannot parse the date {text!r} with '
        f'{"format " + repr(date_format) if date_format else "any of " + str(formats)}'
    )


def has_time(date_format: str | None, text: str) -> bool:
    """Whether a parsed date carries a time of day."""
    if date_format:
        return '%H' in date_format
    return 'T' in text


def normalize_orbit(value: str, where: object) -> str:
    """'asc' or 'desc' from any spelling (ascending, A, DESC, ...)."""
    orbit = _ORBITS.get(value.strip().lower())
    if orbit is None:
        raise ValueError(
            f'{where}: unknown orbit direction {value!r}; use one of {list(_ORBITS)}'
        )
    return orbit


def normalize_level(value: str, where: object) -> str:
    """'l1c' or 'l2a' from any spelling (L1C, MSIL2A, ...)."""
    level = value.strip().lower().removeprefix('msi')
    if level not in ('l1c', 'l2a'):
        raise ValueError(
            f"{where}: unknown Sentinel-2 processing level {value!r}; use 'l1c' or "
            "'l2a'"
        )
    return level


def check_modality(modality: str) -> None:
    """Raise, listing the valid ones, if a modality cannot have a source."""
    if modality not in SOURCE_BANDS:
        raise ValueError(
            f'Unknown modality {modality!r} for a source; valid modalities are '
            f'{list(SOURCE_BANDS)} (lat, lon and month are derived from the '
            'Sentinel-2 tile)'
        )


class ModalitySource(ABC):
    """Rasters of one modality, grouped into acquisitions.

    Args:
        modality: modality the rasters fill (a key of :data:`SOURCE_BANDS`).
        max_days: largest allowed time between this source's acquisition and the
            Sentinel-2 date, in days; None uses the builder's window.
        class_map: for class rasters, a mapping from raw values to the stored
            codes (values not in it become no-data); None keeps the values, except
            for ``dynamic_world`` whose raw labels 0-8 are stored as 1-9, as
            MMEarth-data does.
    """

    def __init__(
        self,
        modality: str,
        max_days: float | None = None,
        class_map: Mapping[int, int] | None = None,
    ) -> None:
        """Initialize a new ModalitySource instance (see the class docstring)."""
        check_modality(modality)
        if max_days is not None and max_days < 0:
            raise ValueError(f'max_days must be >= 0, got {max_days}')
        self.modality = modality
        self.max_days = max_days
        if class_map is None and modality == 'dynamic_world':
            class_map = {label: label + 1 for label in range(9)}
        self.class_map = dict(class_map) if class_map is not None else None
        self._tree: Any = None

    #: Canonical names of the bands this source provides (set by subclasses).
    bands: tuple[str, ...]
    #: Every acquisition of the source, in a stable order (set by subclasses).
    acquisitions: Sequence[Acquisition]

    @abstractmethod
    def read(self, acquisition: Acquisition, grid: TileGrid) -> dict[str, np.ndarray]:
        """Resample one acquisition onto a tile grid.

        Args:
            acquisition: one of :attr:`acquisitions`.
            grid: the tile grid.

        Returns:
            One float32 ``(size, size)`` array per band, NaN where there is no data.
        """

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-serialisable description of the inputs (to validate a resume)."""

    @abstractmethod
    def describe(self) -> str:
        """A short description naming the files, for messages."""

    def close(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release open files (nothing to release by default)."""

    def overlapping(self, grid: TileGrid) -> list[Acquisition]:
        """Acquisitions whose footprint overlaps a tile grid.

        Args:
            grid: the tile grid.

        Returns:
            The acquisitions, in :attr:`acquisitions` order.
        """
        west, south, east, north = grid.lonlat_bounds()
        hits = self._index().query(shapely.box(west, south, east, north))
        acquisitions = self.acquisitions
        return [acquisitions[i] for i in sorted(hits) if acquisitions[i].overlaps(grid)]

    def containing(self, x: float, y: float, crs: CRS) -> list[Acquisition]:
        """Acquisitions with a scene that contains a point.

        Args:
            x: point x in *crs*.
            y: point y in *crs*.
            crs: CRS of the point.

        Returns:
            The acquisitions, in :attr:`acquisitions` order.
        """
        if crs != WGS84:
            xs, ys = transform_coords(crs, WGS84, [x], [y])
            lon, lat = float(xs[0]), float(ys[0])
        else:
            lon, lat = x, y
        hits = self._index().query(shapely.Point(lon, lat).buffer(1e-6))
        acquisitions = self.acquisitions
        return [
            acquisitions[i]
            for i in sorted(hits)
            if acquisitions[i].contains(x, y, crs) is not None
        ]

    def intersects(self, lonlat_bounds: tuple[float, float, float, float]) -> bool:
        """Whether any acquisition's lon/lat bounds overlap the given bounds.

        Args:
            lonlat_bounds: (west, south, east, north) in degrees.

        Returns:
            True if some acquisition overlaps them with positive area.
        """
        query = shapely.box(*lonlat_bounds)
        boxes = self._index().geometries
        return any(
            boxes[i].intersection(query).area > 0 for i in self._index().query(query)
        )

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """Bounds (west, south, east, north) of all acquisitions, in degrees."""
        boxes = np.array([a.lonlat_bounds for a in self.acquisitions])
        return (
            float(boxes[:, 0].min()),
            float(boxes[:, 1].min()),
            float(boxes[:, 2].max()),
            float(boxes[:, 3].max()),
        )

    def _index(self) -> Any:
        if self._tree is None:
            self._tree = shapely.STRtree(
                [shapely.box(*a.lonlat_bounds) for a in self.acquisitions]
            )
        return self._tree


def fill_band(out: dict[str, np.ndarray], band: str, array: np.ndarray) -> None:
    """Add a band; where it exists, fill only its no-data (first valid wins).

    Args:
        out: the bands read so far, updated in place.
        band: band name.
        array: its values, NaN for no-data.
    """
    if band in out:
        missing = np.isnan(out[band])
        out[band][missing] = array[missing]
    else:
        out[band] = array.copy()


def read_mosaic(
    source: ModalitySource, acquisitions: Sequence[Acquisition], grid: TileGrid
) -> dict[str, np.ndarray]:
    """Read acquisitions onto a tile grid as one mosaic (first valid value wins).

    Args:
        source: the source.
        acquisitions: some of its acquisitions, in mosaic order.
        grid: the tile grid.

    Returns:
        One float32 ``(size, size)`` array per band read, NaN where no acquisition
        has data; empty when *acquisitions* is.
    """
    out: dict[str, np.ndarray] = {}
    for acquisition in acquisitions:
        for band, array in source.read(acquisition, grid).items():
            fill_band(out, band, array)
    return out


def lonlat_bounds_of(
    crs: CRS, bounds: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Bounds (west, south, east, north) in degrees of bounds in a CRS."""
    west, south, east, north = (
        float(v) for v in transform_bounds(crs, WGS84, *bounds, densify_pts=21)
    )
    if west > east:  # crosses the antimeridian: keep the whole longitude range
        west, east = -180.0, 180.0
    return west, south, east, north


def union_bounds(
    boxes: Iterable[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    """The bounding box of several bounds."""
    array = np.array(list(boxes), dtype=np.float64)
    return (
        float(array[:, 0].min()),
        float(array[:, 1].min()),
        float(array[:, 2].max()),
        float(array[:, 3].max()),
    )


@dataclass(frozen=True)
class RasterInfo:
    """What the sources need to know of a raster file.

    Args:
        crs: its CRS.
        transform: its affine transform.
        bounds: its bounds in *crs*.
        count: number of bands.
        nodata: its no-data value.
        size: file size in bytes (for the build fingerprint).
    """

    crs: CRS
    transform: Affine
    bounds: tuple[float, float, float, float]
    count: int
    nodata: float | None
    size: int


def as_bounds(values: Iterable[float]) -> tuple[float, float, float, float]:
    """Four floats (left, bottom, right, top)."""
    left, bottom, right, top = (float(v) for v in values)
    return left, bottom, right, top


def inspect_raster(path: Path) -> RasterInfo:
    """Georeference of a raster file; raise if it has no CRS or is rotated."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ValueError(
                    f'{path} has no CRS: every raster must be georeferenced (set '
                    'its CRS, e.g. with gdal_edit.py -a_srs)'
                )
            transform = src.transform
            if transform.b != 0 or transform.d != 0 or transform.e >= 0:
                raise ValueError(
                    f'{path} is not a north-up raster (transform {transform!r}); '
                    'warp it first (gdalwarp)'
                )
            return RasterInfo(
                src.crs,
                transform,
                as_bounds(src.bounds),
                int(src.count),
                None if src.nodata is None else float(src.nodata),
                path.stat().st_size,
            )
    except rasterio.errors.RasterioIOError as error:
        raise ValueError(f'{path} is not a readable raster ({error})') from error
