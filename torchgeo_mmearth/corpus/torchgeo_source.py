"""TorchGeo raster datasets as modality sources."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import rasterio.features
import shapely  # type: ignore[import-untyped]
from affine import Affine
from rasterio.warp import reproject

from .era5 import check_era5_source
from .grid import TileGrid
from .sources import (
    LEVEL_PATTERN,
    SOURCE_BANDS,
    Acquisition,
    ModalitySource,
    as_bounds,
    bounds_in,
    inspect_raster,
    lonlat_bounds_of,
    normalize_band,
    normalize_level,
    normalize_orbit,
    orbit_from_time,
    resampling_for,
    union_bounds,
)

__all__ = ['TorchGeoSource']


class TorchGeoSource(ModalitySource):
    """A TorchGeo :class:`~torchgeo.datasets.RasterDataset` as a modality source.

    Acquisitions are the groups of index entries with the same time interval
    (entries without a date are static); an acquisition's date is the start of its
    interval, the time parsed from the file name. A tile is read with
    ``dataset[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax]``: directly on the tile
    grid when the dataset's CRS and resolution are the grid's (TorchGeo then
    resamples with the dataset's ``resampling``, bilinear for images and nearest
    for masks), otherwise around the tile in the dataset's CRS, on the pixel
    lattice of the acquisition's first file, and warped onto the grid (bilinear
    for continuous values, nearest for classes). Pixels outside the footprints of
    the index entries, or equal to *nodata*, are no-data.

    An ``era5`` dataset holds monthly aggregates: its ``filename_regex`` needs a
    ``date`` group (e.g. ``date_format = '%Y%m'``, which TorchGeo indexes as the
    whole month), with one date per calendar month, and its bands name the
    variables of :data:`~.sources.ERA5_VARIABLES`.

    Args:
        dataset: the dataset (its ``bands`` name the channels of its samples).
        modality: modality the rasters fill (a key of :data:`SOURCE_BANDS`).
        bands: names of the dataset's channels; None uses ``dataset.bands``, or
            the modality's band when the dataset has a single unnamed channel.
        level: Sentinel-2 processing level ('l1c' or 'l2a'); None reads an
            ``L1C``/``L2A`` from the file names.
        orbit: Sentinel-1 orbit direction ('asc' or 'desc'); None derives it from
            the acquisition time (:func:`orbit_from_time`).
        nodata: raw value that marks no-data; None uses the first file's no-data
            value (0 for Sentinel-2).
        max_days: see :class:`ModalitySource`.
        class_map: see :class:`ModalitySource`.
    """

    def __init__(
        self,
        dataset: Any,
        modality: str,
        bands: Sequence[str] | None = None,
        level: str | None = None,
        orbit: str | None = None,
        nodata: float | None = None,
        max_days: float | None = None,
        class_map: Mapping[int, int] | None = None,
    ) -> None:
        """Initialize a new TorchGeoSource instance (see the class docstring).

        Raises:
            ValueError: for an unknown modality or band, an empty dataset, when
                the level or orbit cannot be told, or for an ERA5 dataset without
                dates (or with two in one month).
        """
        super().__init__(modality, max_days, class_map)
        self.dataset = dataset
        index = dataset.index
        if len(index) == 0:
            raise ValueError(f'{type(dataset).__name__} has no files')
        if dataset.crs is None:
            raise ValueError(f'{type(dataset).__name__} has no CRS')
        names = bands if bands is not None else getattr(dataset, 'bands', ())
        if not names:
            if len(SOURCE_BANDS[modality]) != 1:
                raise ValueError(
                    f'{type(dataset).__name__} does not name its bands; pass bands='
                )
            names = SOURCE_BANDS[modality]
        self.bands = tuple(normalize_band(modality, str(b)) for b in names)
        first = Path(index.iloc[0]['filepath'])
        if modality == 'sentinel2' and nodata is None:
            nodata = 0.0
        if nodata is None:
            nodata = inspect_raster(first).nodata
        self.nodata = nodata
        self.level = level and normalize_level(level, type(dataset).__name__)
        self.orbit = orbit and normalize_orbit(orbit, type(dataset).__name__)
        self.acquisitions = self._group()
        if modality == 'era5':
            check_era5_source(self)

    def _group(self) -> tuple[Acquisition, ...]:
        index = self.dataset.index
        crs = self.dataset.crs
        xres, yres = self.dataset.res
        groups: dict[tuple[Any, Any], list[int]] = {}
        for position, interval in enumerate(index.index):
            groups.setdefault((interval.left, interval.right), []).append(position)
        acquisitions = []
        for (left, right), positions in sorted(groups.items()):
            rows = index.iloc[positions]
            files = [Path(p) for p in rows['filepath']]
            static = left <= pd.Timestamp.min or right >= pd.Timestamp.max
            # The start of the interval: the timestamp parsed from the file name.
            date = None if static else left.to_pydatetime()
            footprints = tuple(as_bounds(g.bounds) for g in rows.geometry)
            level = self.level
            if self.modality == 'sentinel2' and level is None:
                found = LEVEL_PATTERN.search(files[0].name)
                if found is None:
                    raise ValueError(
                        f'Cannot tell the processing level of {files[0]}: the name '
                        "has no L1C or L2A; pass level='l1c' or 'l2a'"
                    )
                level = found.group(0).lower()
            lonlat = lonlat_bounds_of(crs, union_bounds(footprints))
            orbit = self.orbit
            if self.modality == 'sentinel1' and orbit is None:
                if all('_' in b for b in self.bands):
                    orbit = None
                elif date is None:
                    raise ValueError(
                        f'Cannot tell the orbit direction of {files[0]}: it has no '
                        "date; pass orbit='asc' or 'desc'"
                    )
                else:
                    orbit = orbit_from_time(date, (lonlat[0] + lonlat[2]) / 2)
            if self.modality in ('sentinel2', 'era5') and date is None:
                raise ValueError(
                    f'{files[0]} has no date: the '
                    f'{"Sentinel-2" if self.modality == "sentinel2" else "ERA5"} '
                    "dataset needs a filename_regex with a 'date' group (and its "
                    'date_format)'
                )
            # Pixel lattice: the first file's, when it is already in the dataset's
            # CRS and resolution; otherwise multiples of the resolution.
            lattice = Affine(xres, 0.0, 0.0, 0.0, -yres, 0.0)
            info = inspect_raster(files[0])
            if info.crs == crs and np.allclose(
                (info.transform.a, -info.transform.e), (xres, yres)
            ):
                lattice = info.transform
            acquisitions.append(
                Acquisition(
                    key=files[0].stem
                    + (f' (+{len(files) - 1} more)' * (len(files) > 1)),
                    date=date,
                    orbit=orbit,
                    level=level,
                    crs=crs,
                    lattice=lattice,
                    footprints=footprints,
                    lonlat_bounds=lonlat,
                    scenes=tuple(f.stem for f in files),
                    handle=(left, right),
                )
            )
        return tuple(acquisitions)

    def read(self, acquisition: Acquisition, grid: TileGrid) -> dict[str, np.ndarray]:
        """Query the dataset around a tile and resample onto its grid.

        Args:
            acquisition: one of :attr:`acquisitions`.
            grid: the tile grid.

        Returns:
            One float32 ``(size, size)`` array per band, NaN where there is no data.

        Raises:
            RuntimeError: if the dataset returns an array of an unexpected shape.
        """
        dataset = self.dataset
        crs = dataset.crs
        xres, yres = (float(r) for r in dataset.res)
        direct = crs == grid.crs and np.allclose(grid.res, (xres, yres))
        if direct:
            left, bottom, right, top = grid.bounds
            width = height = grid.size
            transform = grid.transform
        else:
            # Around the tile, on the acquisition's pixel lattice (files at the
            # dataset's resolution are then copied, not resampled, by the query),
            # with one more dataset pixel on every side: bilinear interpolation
            # needs the neighbouring pixel centres, which matters for rasters much
            # coarser than the tile (ERA5).
            west, south, east, north = bounds_in(grid.padded(2), crs)
            x0, y0 = acquisition.lattice.c, acquisition.lattice.f
            columns = (
                math.floor((west - x0) / xres) - 1,
                math.ceil((east - x0) / xres) + 1,
            )
            rows = (
                math.floor((y0 - north) / yres) - 1,
                math.ceil((y0 - south) / yres) + 1,
            )
            left, right = x0 + columns[0] * xres, x0 + columns[1] * xres
            top, bottom = y0 - rows[0] * yres, y0 - rows[1] * yres
            width = columns[1] - columns[0]
            height = rows[1] - rows[0]
            transform = Affine(xres, 0.0, left, 0.0, -yres, top)
        start, stop = acquisition.handle
        try:
            sample = dataset[
                slice(left, right, xres), slice(bottom, top, yres), slice(start, stop)
            ]
        except IndexError:
            return {}
        data = sample['image'] if 'image' in sample else sample['mask'][None]
        array = np.asarray(data.numpy(), dtype=np.float32)
        if array.shape != (len(self.bands), height, width):
            raise RuntimeError(
                f'{type(dataset).__name__} returned an array of shape {array.shape} '
                f'for a query of {height} x {width} px with bands {list(self.bands)}'
            )
        # No-data: outside the footprints of the entries the query merged, and the
        # no-data value (rasterio.merge fills uncovered pixels with it).
        index = dataset.index
        hit = index.iloc[index.index.overlaps(pd.Interval(start, stop, closed='both'))]
        shapes = [
            g
            for g in hit.geometry
            if g.intersects(shapely.box(left, bottom, right, top))
        ]
        covered = rasterio.features.geometry_mask(
            shapes, (height, width), transform, invert=True
        )
        array[:, ~covered] = np.nan
        if self.nodata is not None and not math.isnan(self.nodata):
            array[array == np.float32(self.nodata)] = np.nan
        if direct:
            return {band: array[i] for i, band in enumerate(self.bands)}
        out = {}
        for i, band in enumerate(self.bands):
            destination = np.full((grid.size, grid.size), np.nan, dtype=np.float32)
            reproject(
                source=array[i],
                destination=destination,
                src_transform=transform,
                src_crs=crs,
                src_nodata=np.nan,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=resampling_for(self.modality, band),
            )
            out[band] = destination
        return out

    def fingerprint(self) -> dict[str, Any]:
        """The dataset class, CRS, resolution, bands and files."""
        return {
            'type': 'TorchGeoSource',
            'dataset': type(self.dataset).__name__,
            'modality': self.modality,
            'crs': self.dataset.crs.to_string(),
            'res': [float(r) for r in self.dataset.res],
            'bands': list(self.bands),
            'nodata': self.nodata,
            'max_days': self.max_days,
            'class_map': sorted((self.class_map or {}).items()),
            'files': [str(p) for p in self.dataset.index['filepath']],
            'intervals': [
                [str(i.left), str(i.right)] for i in self.dataset.index.index
            ],
        }

    def describe(self) -> str:
        """The modality and the dataset class."""
        return (
            f'{self.modality} source ({type(self.dataset).__name__}, '
            f'{len(self.dataset.index)} files)'
        )
