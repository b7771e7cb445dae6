"""GeoTIFF files and folders as modality sources, read with rasterio."""

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from .era5 import check_era5_source
from .grid import TileGrid
from .sources import (
    ERA5_ALIASES,
    LEVEL_PATTERN,
    NEEDS_DATE,
    SOURCE_BANDS,
    Acquisition,
    BandFile,
    ModalitySource,
    RasterInfo,
    Scene,
    bounds_in,
    check_modality,
    has_time,
    inspect_raster,
    lonlat_bounds_of,
    normalize_band,
    normalize_level,
    normalize_orbit,
    orbit_from_time,
    parse_date,
    resampling_for,
    union_bounds,
)

__all__ = ['GeoTiffSource']


class GeoTiffSource(ModalitySource):
    """GeoTIFF files of one modality, read with rasterio.

    Build one from files or folders with :meth:`from_paths`, or from explicit
    :class:`Scene` records (dates and band layout known by other means, e.g. a
    metadata file) with the constructor.

    Scenes with the same date, orbit direction, processing level and CRS form one
    acquisition (e.g. neighbouring patches of one Sentinel-2 product, or the DEM
    tiles of a static source), read as a mosaic in scene-name order. An ``era5``
    source holds monthly aggregates: every scene has a date, and one date per
    calendar month (:func:`~.era5.check_era5_source`).

    Args:
        scenes: the scenes.
        modality: modality the rasters fill (a key of :data:`SOURCE_BANDS`).
        nodata: raw value that marks no-data in every file; None uses each file's
            own no-data value (and 0 for Sentinel-2 digital numbers).
        max_days: see :class:`ModalitySource`.
        class_map: see :class:`ModalitySource`.
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        modality: str,
        nodata: float | None = None,
        max_days: float | None = None,
        class_map: Mapping[int, int] | None = None,
    ) -> None:
        """Initialize a new GeoTiffSource instance (see the class docstring).

        Raises:
            ValueError: for an unknown modality or band, a scene without bands,
                a raster without CRS, a band index beyond the file's band count,
                scenes with duplicate names, a Sentinel-2 scene without date or
                level, or an ERA5 scene without date (or two in one month).
        """
        super().__init__(modality, max_days, class_map)
        if not scenes:
            raise ValueError(f'A {modality!r} source needs at least one scene')
        if modality == 'sentinel2' and nodata is None:
            nodata = 0.0  # digital number 0 is Sentinel-2's no-data
        self.nodata = nodata
        names = [scene.name for scene in scenes]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ValueError(f'Scene name {duplicate!r} appears twice in the source')
        self.scenes = {scene.name: self._check(scene) for scene in scenes}
        self._info: dict[Path, RasterInfo] = {}
        for scene in self.scenes.values():
            for band_file in scene.bands.values():
                if band_file.path not in self._info:
                    self._info[band_file.path] = inspect_raster(band_file.path)
                info = self._info[band_file.path]
                if not 1 <= band_file.index <= info.count:
                    raise ValueError(
                        f'{band_file.path} has {info.count} bands; band index '
                        f'{band_file.index} of scene {scene.name!r} does not exist'
                    )
        self.bands = tuple(
            band
            for band in SOURCE_BANDS[modality]
            if any(band in scene.bands for scene in self.scenes.values())
        )
        self.acquisitions = self._group()
        self._open: OrderedDict[Path, Any] = OrderedDict()
        if modality == 'era5':
            check_era5_source(self)

    def _check(self, scene: Scene) -> Scene:
        if not scene.bands:
            raise ValueError(f'Scene {scene.name!r} has no bands')
        bands = {
            normalize_band(self.modality, band): BandFile(Path(f.path), int(f.index))
            for band, f in scene.bands.items()
        }
        if len(bands) != len(scene.bands):
            raise ValueError(
                f'Scene {scene.name!r} names a band twice: {list(scene.bands)}'
            )
        if self.modality in NEEDS_DATE and scene.date is None:
            raise ValueError(
                f'Sentinel-2 scene {scene.name!r} has no acquisition date (it sets '
                "the tile's date and month)"
            )
        if self.modality == 'era5' and scene.date is None:
            files = sorted({str(f.path) for f in bands.values()})
            raise ValueError(
                f'ERA5 scene {scene.name!r} ({", ".join(files)}) has no date: ERA5 '
                'rasters are monthly aggregates, dated by their file names (give '
                "filename_regex a 'date' group, e.g. era5_201904.tif or "
                'era5_2019-04.tif)'
            )
        if self.modality == 'sentinel2' and scene.level is None:
            raise ValueError(
                f'Sentinel-2 scene {scene.name!r} has no processing level; '
                "pass level='l1c' or 'l2a'"
            )
        level = scene.level and normalize_level(scene.level, scene.name)
        orbit = scene.orbit and normalize_orbit(scene.orbit, scene.name)
        if self.modality == 'sentinel1' and orbit is None:
            unprefixed = [b for b in bands if '_' not in b]
            if unprefixed:
                raise ValueError(
                    f'Sentinel-1 scene {scene.name!r} has polarisation bands '
                    f'{unprefixed} but no orbit direction; give the scene an orbit '
                    "('asc' or 'desc') or name the bands asc_VV, desc_VH, ..."
                )
        return Scene(scene.name, bands, scene.date, orbit, level)

    @classmethod
    def from_paths(
        cls,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        modality: str,
        filename_glob: str = '*.tif*',
        filename_regex: str | None = None,
        date_format: str | None = None,
        bands: Sequence[str] | None = None,
        level: str | None = None,
        orbit: str | None = None,
        nodata: float | None = None,
        max_days: float | None = None,
        class_map: Mapping[int, int] | None = None,
    ) -> 'GeoTiffSource':
        """Find the rasters of a modality in files and folders.

        File names are matched (from their start, as TorchGeo does) against
        *filename_regex*, whose optional named groups give:

        * ``date``: the acquisition date, parsed with *date_format* (for ERA5,
          the month of the aggregate);
        * ``band``: the band held by a single-band file; files whose names differ
          only by this group form one scene;
        * ``orbit``: the Sentinel-1 orbit direction (asc, desc, ascending, ...);
        * ``level``: the Sentinel-2 processing level (L1C, L2A, MSIL2A, ...).

        Files without a ``band`` group hold the bands listed in *bands*, in order.
        The default expression takes the first ``YYYYMMDD[THHMMSS]`` run of digits
        as the date and a trailing ``_<band>`` as the band (``_B02``, ``_VV``, ...).

        ERA5 (``modality='era5'``): monthly aggregates in any CRS (usually
        EPSG:4326), one file per month holding the variables of
        :data:`~.sources.ERA5_VARIABLES` as bands (named by *bands*, or by the
        files' band descriptions as Earth Engine exports write them), or one file
        per variable and month (``era5_201904_temperature_2m.tif``). The default
        expression also takes ``YYYYMM`` and ``YYYY-MM`` as the date (the first
        day of the month). Float rasters without a no-data value have NaN as
        no-data.

        Args:
            paths: files, or folders searched recursively with *filename_glob*.
            modality: modality the rasters fill (a key of :data:`SOURCE_BANDS`).
            filename_glob: glob for files in folders.
            filename_regex: regular expression for file names (see above); files
                that do not match are skipped.
            date_format: :func:`~datetime.datetime.strptime` format of the ``date``
                group; None tries ``%Y%m%dT%H%M%S``, ``%Y%m%d`` and ISO dates, and
                ``%Y%m`` or ``%Y-%m`` for a month alone.
            bands: band names of multi-band files, in file order; None for files
                with a ``band`` group, for the modalities whose band layout is
                unambiguous (one band, or canopy height and std), or for ERA5 files
                whose band descriptions name the variables.
            level: Sentinel-2 processing level of every scene ('l1c' or 'l2a');
                None reads it from the ``level`` group or an ``L1C``/``L2A`` in the
                file name.
            orbit: Sentinel-1 orbit direction of every scene ('asc' or 'desc');
                None reads it from the ``orbit`` group, or derives it from the
                acquisition time (see :func:`orbit_from_time`).
            nodata: see the class docstring.
            max_days: see :class:`ModalitySource`.
            class_map: see :class:`ModalitySource`.

        Returns:
            The source.

        Raises:
            FileNotFoundError: if a path does not exist or no file matches.
            ValueError: for unknown bands, unparsable dates, rasters without CRS,
                or when the level, orbit or band layout cannot be told.
        """
        check_modality(modality)
        files = _find_files(paths, filename_glob)
        regex = re.compile(filename_regex or _default_regex(modality), re.VERBOSE)
        grouped: dict[str, list[tuple[Path, dict[str, str | None]]]] = {}
        for path in files:
            match = regex.match(path.name)
            if match is None:
                continue
            groups = match.groupdict()
            if groups.get('band') and inspect_raster(path).count > 1:
                # A file of several bands is a multi-band file, whatever its name
                # ends with (e.g. canopy_height.tif holding height and std).
                groups['band'] = None
            if groups.get('band'):
                start, end = match.span('band')
                key = str(path.parent / (path.name[:start] + path.name[end:]))
                key = re.sub(r'[_.-]+(\.[^.]+)$', r'\1', key)
            else:
                key = str(path)
            grouped.setdefault(key, []).append((path, groups))
        if not grouped:
            raise FileNotFoundError(
                f'No {modality!r} raster matches {filename_glob!r} and the regular '
                f'expression {regex.pattern.strip()!r} in {_as_list(paths)}'
            )

        scenes = []
        for key, members in sorted(grouped.items()):
            first_path, groups = members[0]
            name = Path(key).stem
            date = None
            timed = False
            if groups.get('date'):
                text = str(groups['date'])
                date = parse_date(text, date_format, first_path)
                timed = has_time(date_format, text)
            scene_bands: dict[str, BandFile] = {}
            if groups.get('band'):
                for path, member_groups in members:
                    band = normalize_band(modality, str(member_groups['band']))
                    if band in scene_bands:
                        raise ValueError(
                            f'Band {band!r} of scene {name!r} is in two files: '
                            f'{scene_bands[band].path} and {path}'
                        )
                    scene_bands[band] = BandFile(path, 1)
            else:
                names = _multiband_names(modality, bands, first_path)
                scene_bands = {
                    band: BandFile(first_path, i + 1) for i, band in enumerate(names)
                }
            scene_level = level
            if modality == 'sentinel2' and scene_level is None:
                if groups.get('level'):
                    scene_level = str(groups['level'])
                elif found := LEVEL_PATTERN.search(first_path.name):
                    scene_level = found.group(0)
                else:
                    raise ValueError(
                        f'Cannot tell the processing level of {first_path}: the name '
                        "has no L1C or L2A; pass level='l1c' or 'l2a'"
                    )
            scene_orbit = orbit
            if modality == 'sentinel1' and scene_orbit is None:
                if groups.get('orbit'):
                    scene_orbit = str(groups['orbit'])
                elif all('_' in b for b in scene_bands):
                    scene_orbit = None
                elif date is not None and timed:
                    info = inspect_raster(first_path)
                    lon = lonlat_bounds_of(info.crs, info.bounds)
                    scene_orbit = orbit_from_time(date, (lon[0] + lon[2]) / 2)
                else:
                    raise ValueError(
                        f'Cannot tell the orbit direction of {first_path}: give the '
                        "regular expression an 'orbit' group, pass orbit='asc' or "
                        "'desc', or include the acquisition time in the date"
                    )
            scenes.append(Scene(name, scene_bands, date, scene_orbit, scene_level))
        return cls(scenes, modality, nodata, max_days, class_map)

    def _group(self) -> tuple[Acquisition, ...]:
        groups: dict[tuple[Any, ...], list[Scene]] = {}
        for scene in self.scenes.values():
            crs = self._info[next(iter(scene.bands.values())).path].crs
            for band_file in scene.bands.values():
                if self._info[band_file.path].crs != crs:
                    raise ValueError(
                        f'The files of scene {scene.name!r} are in different CRSs: '
                        f'{[str(f.path) for f in scene.bands.values()]}'
                    )
            key = (scene.date, scene.orbit, scene.level, crs.to_string())
            groups.setdefault(key, []).append(scene)

        def order(item: tuple[tuple[Any, ...], list[Scene]]) -> tuple[Any, ...]:
            (date, orbit, level, crs), scenes = item
            return (date or datetime.min, orbit or '', level or '', crs, scenes[0].name)

        acquisitions = []
        for (date, orbit, level, _), scenes in sorted(groups.items(), key=order):
            scenes = sorted(scenes, key=lambda s: s.name)
            infos = [
                [self._info[f.path] for f in scene.bands.values()] for scene in scenes
            ]
            footprints = tuple(union_bounds(i.bounds for i in info) for info in infos)
            finest = min(
                (i for info in infos for i in info), key=lambda i: abs(i.transform.a)
            )
            name = scenes[0].name
            if len(scenes) > 1:
                name += f' (+{len(scenes) - 1} more)'
            acquisitions.append(
                Acquisition(
                    key=name,
                    date=date,
                    orbit=orbit,
                    level=level,
                    crs=finest.crs,
                    lattice=finest.transform,
                    footprints=footprints,
                    lonlat_bounds=lonlat_bounds_of(
                        finest.crs, union_bounds(footprints)
                    ),
                    scenes=tuple(s.name for s in scenes),
                )
            )
        return tuple(acquisitions)

    def read(self, acquisition: Acquisition, grid: TileGrid) -> dict[str, np.ndarray]:
        """Warp one acquisition onto a tile grid (see :class:`ModalitySource`).

        Args:
            acquisition: one of :attr:`acquisitions`.
            grid: the tile grid.

        Returns:
            One float32 ``(size, size)`` array per band, NaN where there is no data.
        """
        out: dict[str, np.ndarray] = {}
        left, bottom, right, top = bounds_in(grid, acquisition.crs)
        for name, footprint in zip(
            acquisition.scenes, acquisition.footprints, strict=True
        ):
            if not (
                left < footprint[2]
                and footprint[0] < right
                and bottom < footprint[3]
                and footprint[1] < top
            ):
                continue
            for band, band_file in self.scenes[name].bands.items():
                array = self._warp(band_file, grid, resampling_for(self.modality, band))
                if band in out:
                    # Mosaic: the first scene with a valid value wins.
                    missing = np.isnan(out[band])
                    out[band][missing] = array[missing]
                else:
                    out[band] = array
        return out

    def _warp(
        self, band_file: BandFile, grid: TileGrid, resampling: Resampling
    ) -> np.ndarray:
        src = self._dataset(band_file.path)
        destination = np.full((grid.size, grid.size), np.nan, dtype=np.float32)
        nodata = self.nodata if self.nodata is not None else src.nodata
        if (
            nodata is None
            and self.modality == 'era5'
            and np.issubdtype(np.dtype(src.dtypes[band_file.index - 1]), np.floating)
        ):
            # ERA5(-Land) masks the sea with NaN; without a declared no-data value
            # GDAL's bilinear kernel would spread NaN over whole blocks.
            nodata = math.nan
        reproject(
            source=rasterio.band(src, band_file.index),
            destination=destination,
            src_nodata=nodata,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=np.nan,
            init_dest_nodata=True,
            resampling=resampling,
        )
        if nodata is not None and not math.isnan(nodata):
            # Nearest neighbour copies the no-data value itself.
            destination[destination == np.float32(nodata)] = np.nan
        return destination

    def _dataset(self, path: Path) -> Any:
        """An open handle, from a small LRU cache."""
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        if len(self._open) >= 64:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        self._open[path] = rasterio.open(path)
        return self._open[path]

    def close(self) -> None:
        """Close the open files."""
        while self._open:
            _, dataset = self._open.popitem()
            dataset.close()

    def fingerprint(self) -> dict[str, Any]:
        """Scenes, files, sizes and options, to validate a resume."""
        return {
            'type': 'GeoTiffSource',
            'modality': self.modality,
            'nodata': self.nodata,
            'max_days': self.max_days,
            'class_map': sorted((self.class_map or {}).items()),
            'scenes': [
                {
                    'name': scene.name,
                    'date': scene.date.isoformat() if scene.date else None,
                    'orbit': scene.orbit,
                    'level': scene.level,
                    'bands': {
                        band: [str(f.path), f.index, self._info[f.path].size]
                        for band, f in scene.bands.items()
                    },
                }
                for scene in self.scenes.values()
            ],
        }

    def describe(self) -> str:
        """The modality and the folders of the files."""
        folders = sorted({str(path.parent) for path in self._info})
        shown = ', '.join(folders[:3]) + (' ...' if len(folders) > 3 else '')
        return f'{self.modality} source ({len(self._info)} files in {shown})'


def _as_list(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _find_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], pattern: str
) -> list[Path]:
    files: set[Path] = set()
    for path in _as_list(paths):
        if path.is_dir():
            files.update(p for p in path.rglob(pattern) if p.is_file())
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f'{path} does not exist')
    return sorted(files)


def _default_regex(modality: str) -> str:
    names = sorted(SOURCE_BANDS[modality], key=len, reverse=True)
    alternatives = '|'.join(re.escape(name) for name in names)
    if modality == 'sentinel2':
        alternatives = r'B0?\d{1,2}A?|QA60|SCL|MSK_CLDPRB'
    elif modality == 'sentinel1':
        alternatives = r'(?:(?:asc|desc)_)?(?:VV|VH|HH|HV)'
    elif modality == 'era5':
        names = sorted((*names, *ERA5_ALIASES), key=len, reverse=True)
        alternatives = '|'.join(re.escape(name) for name in names)
        # A month (YYYYMM, YYYY-MM) or a date, and the variable of a single file.
        return (
            r'^(?:.*?(?P<date>\d{4}-\d{2}(?:-\d{2})?|\d{6}(?:\d{2})?))?.*?'
            rf'(?:[_-](?P<band>(?i:{alternatives})))?\.tiff?$'
        )
    return (
        r'^(?:.*?(?P<date>\d{8}(?:T\d{6})?))?.*?'
        rf'(?:[_-](?P<band>(?i:{alternatives})))?\.tiff?$'
    )


def _multiband_names(
    modality: str, bands: Sequence[str] | None, path: Path
) -> tuple[str, ...]:
    count = inspect_raster(path).count
    if bands is not None:
        names = tuple(normalize_band(modality, band) for band in bands)
    elif modality == 'era5' and (described := _described_bands(modality, path)):
        names = described
    elif len(SOURCE_BANDS[modality]) == 1 or (
        modality == 'canopy_height_eth' and count <= 2
    ):
        names = SOURCE_BANDS[modality][:count]
    else:
        hint = ''
        if modality == 'era5':
            with rasterio.open(path) as src:
                found = [d for d in src.descriptions if d]
            hint = ' or band descriptions naming them' + (
                f' (its descriptions {found} are not all ERA5 variables)'
                if found
                else ''
            )
        raise ValueError(
            f'{path} holds {count} bands but their names are unknown: pass bands=[...] '
            f'(names from {list(SOURCE_BANDS[modality])}) in file order{hint}, '
            "or a filename_regex with a 'band' group for single-band files"
        )
    if len(names) != count:
        raise ValueError(
            f'{path} holds {count} bands, but {len(names)} band names were given: '
            f'{list(names)}'
        )
    if len(set(names)) != len(names):
        raise ValueError(f'Band names of {path} have duplicates: {list(names)}')
    return names


def _described_bands(modality: str, path: Path) -> tuple[str, ...] | None:
    """Band names from a file's band descriptions, if they all name valid bands."""
    with rasterio.open(path) as src:
        descriptions = src.descriptions
    if not descriptions or not all(descriptions):
        return None
    try:
        return tuple(normalize_band(modality, str(d)) for d in descriptions)
    except ValueError:
        return None
