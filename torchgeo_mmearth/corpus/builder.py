"""Build MMEarth-format pretraining corpora from your own rasters.

MMEarth pairs modalities by location and time, with Sentinel-2 as the anchor: each
tile is a window of a Sentinel-2 acquisition's pixel grid, and every other
modality is resampled onto that window (bilinear for continuous values, nearest
for classes), from its acquisition nearest in time to the Sentinel-2 date within
a window of days (Sentinel-1: one per orbit direction, as MMEarth-data pairs
them). ERA5 monthly aggregates are paired by calendar month and reduced to 12
values per tile (:mod:`.era5`). Latitude, longitude and month are derived from the
tile. The result is written in the published layout by
:class:`~torchgeo_mmearth.corpus.writer.CorpusWriter` and reads with
:class:`torchgeo_mmearth.datasets.MMEarth` and :class:`torchgeo.datasets.MMEarth`.

Example::

    from torchgeo_mmearth.corpus import build_corpus

    report = build_corpus(
        'data', 'my_corpus',
        sentinel2='rasters/s2',           # GeoTIFFs, or a TorchGeo RasterDataset
        sources={
            'sentinel1': 'rasters/s1',
            'aster': 'rasters/dem',
            'era5': 'rasters/era5_land_monthly',  # monthly ERA5-Land GeoTIFFs
        },
        locations='points.geojson',
    )
    print(report.summary())
"""

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform as transform_coords

from ..modalities import MODALITIES, Level
from .encoding import (
    encode_aster,
    encode_classes,
    encode_continuous,
    encode_image_class,
    encode_latlon,
    encode_month,
    encode_sentinel1,
    encode_sentinel2,
    nodata_tile,
    sentinel2_valid,
)
from .era5 import (
    DEFAULT_YEAR_MONTHS,
    check_era5_source,
    check_year_months,
    era5_band_names,
    read_era5,
)
from .geotiff import GeoTiffSource
from .grid import TileGrid, anchor_lattice
from .locations import Location, resolve_locations
from .sources import SOURCE_BANDS, Acquisition, ModalitySource, fill_band, read_mosaic
from .torchgeo_source import TorchGeoSource
from .writer import CorpusWriter, Drop, TileRecord, corpus_folder

_logger = logging.getLogger(__name__)


class BuildInterrupted(KeyboardInterrupt):
    """A build stopped by Ctrl-C (SIGINT); what it had committed is kept.

    Building again with the same inputs and options resumes it.

    Attributes:
        folder: the corpus folder, whose ``.partial`` holds the kept segments.
        kept: locations done and kept (whole segments).
        total: locations of the build.
    """

    def __init__(self, folder: Path, kept: int, total: int) -> None:
        """Initialize a new BuildInterrupted instance.

        Args:
            folder: the corpus folder.
            kept: locations done and kept.
            total: locations of the build.
        """
        super().__init__(f'{kept} of {total} locations are kept in {folder}')
        self.folder = folder
        self.kept = kept
        self.total = total


__all__ = [
    'DROP_REASONS',
    'BuildInterrupted',
    'BuildReport',
    'CorpusBuilder',
    'ModalityCoverage',
    'as_source',
    'build_corpus',
]

#: Why a location can give no tile.
DROP_REASONS: Mapping[str, str] = {
    'outside_sentinel2': 'outside every Sentinel-2 raster',
    'too_little_valid_sentinel2': 'too little valid Sentinel-2',
    'duplicate': 'same pixels as an earlier tile',
}

#: Modalities that can come from a source other than the Sentinel-2 anchor.
AUXILIARY_MODALITIES = tuple(name for name in SOURCE_BANDS if name != 'sentinel2')

_S2_SPECTRAL = MODALITIES['sentinel2'].bands

# tile_info 'BANDS' names of MMEarth-data, for the modalities a tile holds.
_TILE_INFO_BANDS = {
    'aster': ['b1', 'slope'],
    'dynamic_world': ['label'],
    'canopy_height_eth': ['height', 'std'],
    'esa_worldcover': ['Map'],
}


@dataclass(frozen=True)
class ModalityCoverage:
    """How much of a modality the written tiles hold.

    Args:
        tiles_with_data: tiles with at least one valid value.
        valid_fraction: mean fraction of pixels with a valid value in any band;
            for image-level vectors (era5, lat, lon, month) the mean fraction of
            valid elements, for one-hot classes (biome, eco_region) the fraction
            of tiles with a class.
    """

    tiles_with_data: int
    valid_fraction: float


@dataclass
class BuildReport:
    """Summary of a corpus build.

    Args:
        name: corpus name.
        folder: the corpus folder ``data_<name>``.
        locations: number of locations.
        tiles_written: number of tiles in the corpus.
        dropped: number of dropped locations per reason (see :data:`DROP_REASONS`).
        coverage: coverage of every modality over the written tiles.
        splits: number of tiles per split.
        resumed: whether this run resumed an interrupted build.
        dropped_locations: ``(location index, reason, detail)`` of every dropped
            location.
    """

    name: str
    folder: Path
    locations: int
    tiles_written: int
    dropped: dict[str, int]
    coverage: dict[str, ModalityCoverage]
    splits: dict[str, int]
    resumed: bool = False
    dropped_locations: list[tuple[int, str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A readable multi-line summary."""
        splits = ', '.join(f'{k} {v}' for k, v in self.splits.items())
        reasons = ''.join(
            f'\n  {count:6d}  {DROP_REASONS.get(reason, reason)}'
            for reason, count in self.dropped.items()
        )
        written = f'{self.tiles_written} tiles written to {self.folder} ({splits})'
        dropped = f'dropped: {sum(self.dropped.values())}{reasons}'
        lines = [
            f'Corpus data_{self.name}: {written}',
            f'Locations: {self.locations}; {dropped}',
            'Coverage (tiles with data, mean valid pixels):',
        ]
        for name, coverage in self.coverage.items():
            lines.append(
                f'  {name:20s} {coverage.tiles_with_data:6d}/{self.tiles_written:<6d}'
                f' {100 * coverage.valid_fraction:6.1f}%'
            )
        return '\n'.join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as written to ``data_<name>_build_report.json``."""
        return {
            'name': self.name,
            'locations': self.locations,
            'tiles_written': self.tiles_written,
            'dropped': self.dropped,
            'coverage': {
                name: {
                    'tiles_with_data': c.tiles_with_data,
                    'valid_fraction': c.valid_fraction,
                }
                for name, c in self.coverage.items()
            },
            'splits': self.splits,
            'dropped_locations': [
                {'location': i, 'reason': r, 'detail': d}
                for i, r, d in self.dropped_locations
            ],
        }


def as_source(value: Any, modality: str, **options: Any) -> ModalitySource:
    """Turn a source, a TorchGeo dataset, or files and folders into a source.

    Args:
        value: a :class:`ModalitySource`, a TorchGeo ``RasterDataset``, or paths
            of GeoTIFF files or folders.
        modality: modality the rasters fill.
        **options: keyword arguments of :meth:`GeoTiffSource.from_paths` or
            :class:`TorchGeoSource`.

    Returns:
        The source.

    Raises:
        ValueError: if a given source is for another modality.
        TypeError: for any other kind of value.
    """
    if isinstance(value, ModalitySource):
        if value.modality != modality:
            raise ValueError(
                f'The source given for {modality!r} is a {value.modality!r} source'
            )
        return value
    if hasattr(value, 'index') and hasattr(value, 'crs') and hasattr(value, 'res'):
        return TorchGeoSource(value, modality, **options)
    if isinstance(value, str | os.PathLike) or (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, str | os.PathLike) for v in value)
    ):
        return GeoTiffSource.from_paths(value, modality, **options)
    raise TypeError(
        f'The {modality!r} source must be a ModalitySource, a TorchGeo RasterDataset '
        f'or GeoTIFF paths, got {type(value).__name__}'
    )


def _days(a: datetime, b: datetime) -> float:
    return abs((a - b) / timedelta(days=1))


def _distance(acquisition: Acquisition, date: datetime) -> tuple[float, datetime, str]:
    """Sort key of dated acquisitions: time to *date*, then date, then name."""
    assert acquisition.date is not None
    return _days(acquisition.date, date), acquisition.date, acquisition.key


class CorpusBuilder:
    """Pairs modalities by location and time onto Sentinel-2 tiles.

    Args:
        sentinel2: the anchor: a Sentinel-2 :class:`~.sources.ModalitySource`, a
            TorchGeo ``RasterDataset`` or GeoTIFF files/folders. It fixes each
            tile's grid, CRS, date and processing level.
        sources: other modalities by name (``sentinel1``, ``aster`` for a DEM,
            ``canopy_height_eth``, ``dynamic_world``, ``esa_worldcover``,
            ``biome``, ``eco_region``, ``era5`` for monthly ERA5(-Land)
            aggregates), each in any form *sentinel2* accepts. Modalities without
            a source are written as no-data; ``lat``, ``lon`` and ``month`` are
            derived.
        tile_size: tile side in pixels (64 or 128 as published).
        resolution: tile pixel size in the Sentinel-2 CRS units (10 m).
        max_days: largest time between a dated acquisition and the Sentinel-2
            date; sources may set their own.
        min_valid: smallest fraction of valid Sentinel-2 pixels (every band the
            scene provides non-zero) for a tile to be kept.
        split_by: 'tile' to split tiles independently, or 'scene' to keep the tiles
            of one Sentinel-2 scene in one split (overlapping tiles then never
            straddle splits).
        era5_year_months: months of the ERA5 ``year`` window, ending with the
            Sentinel-2 month. 12 (the default) is one year, each calendar month
            once, as MMEarth-data's docstring intends; 13 reproduces the published
            corpora, whose filter ``[same month of the previous year, end of the
            current month)`` takes 13 monthly images (see :mod:`.era5`). The
            previous and current month are paired by calendar month; a missing
            month leaves NaN in the values that need it.

    Raises:
        ValueError: for an unknown modality, invalid options, a source that
            does not overlap the Sentinel-2 rasters anywhere, or an ERA5 source
            that is not monthly.
    """

    def __init__(
        self,
        sentinel2: Any,
        sources: Mapping[str, Any] | None = None,
        tile_size: int = 64,
        resolution: float | None = 10.0,
        max_days: float = 30.0,
        min_valid: float = 0.9,
        split_by: str = 'tile',
        era5_year_months: int = DEFAULT_YEAR_MONTHS,
    ) -> None:
        """Initialize a new CorpusBuilder instance (see the class docstring)."""
        if not isinstance(tile_size, int) or tile_size < 2:
            raise ValueError(f'tile_size must be an integer >= 2, got {tile_size!r}')
        if resolution is not None and not resolution > 0:
            raise ValueError(f'resolution must be positive, got {resolution}')
        if not max_days >= 0:
            raise ValueError(f'max_days must be >= 0, got {max_days}')
        if not 0 <= min_valid <= 1:
            raise ValueError(f'min_valid must be in [0, 1], got {min_valid}')
        if split_by not in ('tile', 'scene'):
            raise ValueError(f"split_by must be 'tile' or 'scene', got {split_by!r}")
        check_year_months(era5_year_months)
        sources = dict(sources or {})
        unknown = [name for name in sources if name not in AUXILIARY_MODALITIES]
        if unknown:
            raise ValueError(
                f'Unknown modality {unknown[0]!r} in sources; modalities with a '
                f'source are {list(AUXILIARY_MODALITIES)} (sentinel2 is the anchor '
                'and holds QA60, SCL and MSK_CLDPRB; lat, lon and month are derived; '
                f'all modalities of the format: {list(MODALITIES)})'
            )
        self.sentinel2 = as_source(sentinel2, 'sentinel2')
        self.sources = {
            name: as_source(value, name) for name, value in sorted(sources.items())
        }
        self.tile_size = tile_size
        self.resolution = resolution
        self.max_days = float(max_days)
        self.min_valid = float(min_valid)
        self.split_by = split_by
        self.era5_year_months = era5_year_months
        if 'era5' in self.sources:
            check_era5_source(self.sources['era5'])
        if resolution is not None:
            for acquisition in self.sentinel2.acquisitions:
                if acquisition.crs.is_geographic:
                    raise ValueError(
                        f'Sentinel-2 acquisition {acquisition.key!r} is in the '
                        f'geographic CRS {acquisition.crs}, but tiles are cut at '
                        f'resolution={resolution} CRS units: give projected (e.g. UTM) '
                        "rasters, or resolution=None to keep the rasters' pixel size"
                    )
        self._check_overlap()

    def _check_overlap(self) -> None:
        """Every source must overlap the Sentinel-2 rasters somewhere."""
        for source in self.sources.values():
            if not any(
                self.sentinel2.intersects(a.lonlat_bounds) for a in source.acquisitions
            ):
                raise ValueError(
                    f'The {source.describe()} does not overlap the Sentinel-2 rasters: '
                    f'its bounds (lon/lat) are {_fmt(source.lonlat_bounds())}, '
                    f"Sentinel-2's are {_fmt(self.sentinel2.lonlat_bounds())}"
                )

    def fingerprint(self) -> dict[str, Any]:
        """Every input and option that shapes the tiles."""
        fingerprint = {
            'sentinel2': self.sentinel2.fingerprint(),
            'sources': {n: s.fingerprint() for n, s in self.sources.items()},
            'tile_size': self.tile_size,
            'resolution': self.resolution,
            'max_days': self.max_days,
            'min_valid': self.min_valid,
            'split_by': self.split_by,
        }
        if 'era5' in self.sources:
            fingerprint['era5_year_months'] = self.era5_year_months
        return fingerprint

    def check_locations(self, locations: Sequence[Location]) -> None:
        """Raise if no location lies inside the Sentinel-2 rasters.

        Raises:
            ValueError: naming the number of locations and the raster bounds.
        """
        for location in locations:
            if self.sentinel2.containing(
                location.x, location.y, CRS.from_user_input(location.crs)
            ):
                return
        raise ValueError(
            f'None of the {len(locations)} locations lies inside the Sentinel-2 '
            f'rasters (lon/lat bounds {_fmt(self.sentinel2.lonlat_bounds())}); '
            'check the coordinates and their CRS (points are lon/lat by default)'
        )

    def make_tile(self, index: int, location: Location) -> TileRecord | Drop:
        """Build the tile of one location, or say why there is none.

        Args:
            index: index of the location (the default tile id).
            location: the location.

        Returns:
            The tile, or a :class:`~.writer.Drop`.
        """
        crs = CRS.from_user_input(location.crs)
        candidates = self.sentinel2.containing(location.x, location.y, crs)
        if not candidates:
            return Drop(index, 'outside_sentinel2', 'no Sentinel-2 scene contains it')
        if location.date is not None:
            when = location.date
            candidates.sort(key=lambda a: (_days(a.date or when, when), a.key))
        best = 0.0
        for acquisition in candidates:
            xs, ys = transform_coords(crs, acquisition.crs, [location.x], [location.y])
            grid = TileGrid.centred(
                float(xs[0]),
                float(ys[0]),
                acquisition.crs,
                anchor_lattice(acquisition.lattice, self.resolution),
                self.tile_size,
            )
            bands = self.sentinel2.read(acquisition, grid)
            arrays = encode_sentinel2(bands, self.tile_size)
            spectral = tuple(b for b in _S2_SPECTRAL if b in bands)
            valid = float(sentinel2_valid(arrays['sentinel2'], spectral).mean())
            if spectral and valid >= self.min_valid:
                scene = acquisition.contains(xs[0], ys[0], acquisition.crs)
                return self._complete(
                    index, location, acquisition, grid, arrays, bands, scene
                )
            best = max(best, valid)
        return Drop(
            index,
            'too_little_valid_sentinel2',
            f'{100 * best:.1f}% valid pixels, {100 * self.min_valid:.1f}% required',
        )

    def _complete(
        self,
        index: int,
        location: Location,
        acquisition: Acquisition,
        grid: TileGrid,
        arrays: dict[str, np.ndarray],
        s2_bands: Mapping[str, np.ndarray],
        scene: str | None,
    ) -> TileRecord:
        """Add every other modality to a Sentinel-2 tile."""
        assert acquisition.date is not None and acquisition.level is not None
        date = acquisition.date
        size = self.tile_size
        paired: dict[str, list[dict[str, Any]]] = {}
        tile_bands: dict[str, Any] = {
            'sentinel2': [
                b for b in (*_S2_SPECTRAL, 'QA60', 'SCL', 'MSK_CLDPRB') if b in s2_bands
            ],
            'sentinel1_asc': None,
            'sentinel1_desc': None,
            'era5': None,
        }
        for name in ('aster', 'dynamic_world', 'canopy_height_eth', 'esa_worldcover'):
            tile_bands[name] = None
        era5_info: dict[str, Any] = {}

        for name, source in self.sources.items():
            if name == 'era5':
                era5 = read_era5(source, grid, date, self.era5_year_months)
                arrays['era5'] = era5.values
                paired['era5'] = [
                    {
                        'acquisition': a.key,
                        'date': a.date.isoformat() if a.date else None,
                        'orbit': a.orbit,
                    }
                    for a in era5.acquisitions
                ]
                if era5.acquisitions:
                    tile_bands['era5'] = era5_band_names(date)
                # The published record of the raw values, and the months used.
                era5_info = {'era5': era5.record, 'ERA5_MONTHS': era5.months}
                continue
            read_grid = grid.padded(1) if name == 'aster' else grid
            chosen = self._pair(source, read_grid, date)
            bands: dict[str, np.ndarray] = {}
            for orbit, group in chosen.items():
                for band, array in read_mosaic(source, group, read_grid).items():
                    key = f'{orbit}_{band}' if orbit and '_' not in band else band
                    fill_band(bands, key, array)
            paired[name] = [
                {
                    'acquisition': a.key,
                    'date': a.date.isoformat() if a.date else None,
                    'orbit': a.orbit,
                }
                for group in chosen.values()
                for a in group
            ]
            arrays[name] = self._encode(name, source, bands, read_grid)
            if name == 'sentinel1':
                for orbit in ('asc', 'desc'):
                    present = [
                        b.split('_')[1]
                        for b in MODALITIES['sentinel1'].bands
                        if b.startswith(orbit) and b in bands
                    ]
                    tile_bands[f'sentinel1_{orbit}'] = present or None
            elif name in _TILE_INFO_BANDS and bands:
                tile_bands[name] = _TILE_INFO_BANDS[name]

        lon, lat = grid.centre_lonlat()
        arrays.update(encode_latlon(lon, lat))
        arrays['month'] = encode_month(date)
        for name in MODALITIES:
            if name not in arrays:
                arrays[name] = nodata_tile(name, size)

        tile_id = location.id if location.id is not None else f'{index:06d}'
        biome = arrays['biome']
        eco_region = arrays['eco_region']
        info = {
            'S2_DATE': date.strftime('%Y-%m-%d'),
            'S2_type': acquisition.level,
            'CRS': grid.crs.to_string(),
            'lat': lat,
            'lon': lon,
            'biome': int(biome.argmax()) if biome.sum() == 1 else None,
            'eco_region': int(eco_region.argmax()) if eco_region.sum() == 1 else None,
            'NO_DATA': False,
            'BANDS': tile_bands,
            **({'era5': era5_info['era5']} if era5_info else {}),
            'S2_SCENE': acquisition.key,
            'S2_DATETIME': date.isoformat(),
            'LOCATION': index,
            'SOURCES': paired,
            **({'ERA5_MONTHS': era5_info['ERA5_MONTHS']} if era5_info else {}),
        }
        origin = f'{grid.transform.c:.6f},{grid.transform.f:.6f}'
        return TileRecord(
            tile_id=tile_id,
            location=index,
            s2_type=acquisition.level,
            arrays={name: arrays[name] for name in MODALITIES},
            info=info,
            group=tile_id if self.split_by == 'tile' else (scene or acquisition.key),
            key=f'{acquisition.key}|{grid.crs.to_string()}|{origin}',
        )

    def _pair(
        self, source: ModalitySource, grid: TileGrid, date: datetime
    ) -> dict[str | None, list[Acquisition]]:
        """The acquisitions to read, per orbit direction.

        The nearest dated acquisition within the window; failing that, every
        static (undated) acquisition, read as a mosaic.
        """
        window = source.max_days if source.max_days is not None else self.max_days
        groups: dict[str | None, list[Acquisition]] = {}
        for acquisition in source.overlapping(grid):
            groups.setdefault(acquisition.orbit, []).append(acquisition)
        chosen: dict[str | None, list[Acquisition]] = {}
        for orbit, group in sorted(groups.items(), key=lambda item: item[0] or ''):
            dated = [
                a for a in group if a.date is not None and _days(a.date, date) <= window
            ]
            if dated:
                # Nearest in time; ties go to the earlier acquisition.
                chosen[orbit] = [min(dated, key=lambda a: _distance(a, date))]
            elif static := [a for a in group if a.date is None]:
                chosen[orbit] = static
        return chosen

    def _encode(
        self,
        name: str,
        source: ModalitySource,
        bands: Mapping[str, np.ndarray],
        grid: TileGrid,
    ) -> np.ndarray:
        size = self.tile_size
        if name == 'sentinel1':
            return encode_sentinel1(bands, size)
        if name == 'aster':
            return encode_aster(bands.get('elevation'), grid.pixel_size_metres(), size)
        if name == 'canopy_height_eth':
            return encode_continuous(name, bands, size)
        band = SOURCE_BANDS[name][0]
        if MODALITIES[name].level is Level.IMAGE:
            return encode_image_class(name, bands.get(band), source.class_map)
        return encode_classes(name, bands.get(band), size, source.class_map)

    def build(
        self,
        root: str | Path,
        name: str,
        locations: Any,
        splits: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        segment_size: int = 64,
        overwrite: bool = False,
        progress: bool = True,
        on_tile: Callable[[int], None] | None = None,
    ) -> BuildReport:
        """Build the corpus ``root/data_<name>``.

        Args:
            root: directory that receives the corpus folder.
            name: corpus name; ``1M_v001_64`` reproduces the folder name of
                TorchGeo's ``MMEarth64`` subset.
            locations: Location objects, ``(lon, lat)`` pairs, a GeoJSON path, or a
                TorchGeo sampler (see :func:`~.locations.resolve_locations`).
            splits: train, val and test fractions.
            seed: seed of the splits.
            segment_size: locations per resumable segment.
            overwrite: replace an existing corpus (and discard a partial build).
            progress: show a progress bar.
            on_tile: called with each location index once it is processed (e.g.
                to report progress elsewhere, or to interrupt a build in tests).

        Returns:
            The build report.

        Raises:
            ValueError: for invalid splits, no locations inside the Sentinel-2
                rasters, a partial build with other inputs, or no tile at all.
            FileExistsError: if the corpus exists and *overwrite* is False.
            OSError: if the output folder is not writable.
            BuildInterrupted: on Ctrl-C while building tiles; what was committed
                is kept and the same call resumes.
        """
        fractions = tuple(float(f) for f in splits)
        if (
            len(fractions) != 3
            or min(fractions) < 0
            or not math.isclose(sum(fractions), 1)
        ):
            raise ValueError(
                f'splits must be three non-negative fractions (train, val, test) '
                f'summing to 1, got {tuple(splits)}'
            )
        resolved = resolve_locations(locations)
        self.check_locations(resolved)
        fingerprint = {
            'builder': self.fingerprint(),
            'locations': [location.to_json() for location in resolved],
            'splits': fractions,
            'seed': seed,
        }
        writer = CorpusWriter(root, name, fingerprint, segment_size, overwrite)
        if writer.resumed:
            _logger.info(
                'Resuming the interrupted build of data_%s in %s: %d of %d '
                'locations were kept, continuing from location %d',
                name,
                writer.folder,
                writer.start,
                len(resolved),
                writer.start,
            )
        bar = _progress(len(resolved), writer.start, f'data_{name}', progress)
        try:
            for index in range(writer.start, len(resolved)):
                result = self.make_tile(index, resolved[index])
                if isinstance(result, TileRecord) and result.key in writer.seen:
                    result = Drop(index, 'duplicate', 'same pixels as an earlier tile')
                writer.add(index, result, len(resolved))
                if bar is not None:
                    bar.update(1)
                if on_tile is not None:
                    on_tile(index)
        except KeyboardInterrupt:
            raise BuildInterrupted(writer.folder, writer.start, len(resolved)) from None
        finally:
            if bar is not None:
                bar.close()
            self.close()

        report = _report(
            name, corpus_folder(root, name), len(resolved), writer.records()
        )
        written = writer.finish(self.tile_size, fractions, seed, report.to_json())
        report.splits = dict(written['splits'])
        report.resumed = writer.resumed
        return report

    def close(self) -> None:
        """Release the sources' open files."""
        self.sentinel2.close()
        for source in self.sources.values():
            source.close()


def _report(
    name: str, folder: Path, locations: int, records: Sequence[Mapping[str, Any]]
) -> BuildReport:
    tiles = [tile for record in records for tile in record['tiles']]
    drops = sorted(
        (drop['location'], drop['reason'], drop['detail'])
        for record in records
        for drop in record['drops']
    )
    dropped: dict[str, int] = {}
    for _, reason, _ in drops:
        dropped[reason] = dropped.get(reason, 0) + 1
    coverage = {}
    for modality in MODALITIES:
        fractions = [tile['coverage'][modality] for tile in tiles]
        coverage[modality] = ModalityCoverage(
            tiles_with_data=sum(f > 0 for f in fractions),
            valid_fraction=float(np.mean(fractions)) if fractions else 0.0,
        )
    return BuildReport(
        name=name,
        folder=folder,
        locations=locations,
        tiles_written=len(tiles),
        dropped=dict(sorted(dropped.items())),
        coverage=coverage,
        splits={},
        dropped_locations=drops,
    )


def _progress(total: int, initial: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit='location',
        dynamic_ncols=True,
    )


def _fmt(bounds: Sequence[float]) -> str:
    return '(' + ', '.join(f'{v:.4f}' for v in bounds) + ')'


def build_corpus(
    root: str | Path,
    name: str,
    sentinel2: Any,
    locations: Any,
    sources: Mapping[str, Any] | None = None,
    tile_size: int = 64,
    resolution: float | None = 10.0,
    max_days: float = 30.0,
    min_valid: float = 0.9,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    split_by: str = 'tile',
    seed: int = 0,
    segment_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    on_tile: Callable[[int], None] | None = None,
    era5_year_months: int = DEFAULT_YEAR_MONTHS,
) -> BuildReport:
    """Build an MMEarth-format corpus ``root/data_<name>`` from your own rasters.

    See :class:`CorpusBuilder` for the pairing options and
    :meth:`CorpusBuilder.build` for the output options.

    Args:
        root: directory that receives the corpus folder.
        name: corpus name.
        sentinel2: the Sentinel-2 anchor (source, RasterDataset or GeoTIFF paths).
        locations: tile locations (see :func:`~.locations.resolve_locations`).
        sources: other modalities by name.
        tile_size: tile side in pixels.
        resolution: tile pixel size (10 m).
        max_days: pairing window in days.
        min_valid: smallest fraction of valid Sentinel-2 pixels.
        splits: train, val and test fractions.
        split_by: 'tile' or 'scene'.
        seed: seed of the splits.
        segment_size: locations per resumable segment.
        overwrite: replace an existing corpus.
        progress: show a progress bar.
        on_tile: called with each processed location index.
        era5_year_months: months of the ERA5 year window (12; 13 as published).

    Returns:
        The build report.
    """
    builder = CorpusBuilder(
        sentinel2,
        sources,
        tile_size,
        resolution,
        max_days,
        min_valid,
        split_by,
        era5_year_months,
    )
    return builder.build(
        root, name, locations, splits, seed, segment_size, overwrite, progress, on_tile
    )
