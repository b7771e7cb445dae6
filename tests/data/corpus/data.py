#!/usr/bin/env python3
"""Write small georeferenced rasters with known values, for the corpus builder tests.

Everything lies in UTM zone 32N around ``(X0, Y0)`` (about 45.1 N, 9.0 E):

* ``s2/``: two Sentinel-2 scenes as single-band GeoTIFFs (``..._B02.tif``):

  - scene A, L1C, 2020-06-15 10:30:21, x in [X0, X0 + 960), 10/20/60 m bands.
    10 m band k (in :data:`S2_BANDS` order) holds ``1000 + 100 k + col`` (col of
    the 10 m pixel); 20 m and 60 m bands are linear ramps in x whose bilinear
    resampling to 10 m is ``2000 + 100 k + 2 col - 1`` and
    ``2000 + 100 k + 2 col - 5`` (exact, away from the scene edges). Columns
    ``>= NODATA_COL`` are 0 (no-data) in the 10 m bands.
  - scene B, L2A, 2020-07-01 10:30:31, x in [X0 + 2000, X0 + 2960), 12 bands (no
    B10), band k constant ``500 + 10 k``, plus an SCL layer at 20 m (checkerboard
    of classes 4 and 5).
* ``s2_torchgeo/``: scene A again, laid out as ``torchgeo.datasets.Sentinel2``
  expects (``R10m/T32TMR_<date>_B02_10m.tif``, ...).
* ``s1/``: Sentinel-1 in EPSG:4326, 2-band (VV, VH) files over scene A only:
  ascending 2020-06-10 17:30 (VV ``-10 + 100 (lon - LON0)``, VH
  ``-20 + 100 (lat - LAT0)``), ascending 2020-06-25 17:30 (VV -5, VH -6) and
  descending 2020-06-14 05:30 (VV -7, VH -8).
* ``dem/``: a DEM at 30 m, not aligned with the 10 m grid, elevation
  ``100 + 0.2 (x - X0)`` m (slope atan(0.2) = 11.3 degrees everywhere).
* ``canopy/``: canopy height and std (2-band uint8, no-data 255) on the 10 m grid:
  height 20, std 5, and 255 where col >= 40 of scene A.
* ``dynamic_world/``: raw Dynamic World labels in EPSG:3857 at 20 m, value
  ``(i + j) % 9`` of its pixel (i, j), no-data 255 in its first 10 rows.
* ``biome/``: a RESOLVE biome index raster in EPSG:4326, 4 everywhere.
* ``era5/``: monthly ERA5-Land-like aggregates in EPSG:4326 at 0.1 degrees (cell
  centres on multiples of 0.1, as ERA5-Land; 6 x 5 cells around both scenes),
  one float32 file per variable and month (``ERA5_LAND_202006_temperature_2m.tif``)
  for the months :data:`ERA5_MONTHS` (2019-05 to 2020-07). With ``k`` the month
  index (:func:`era5_index`: 2019-01 is 1): ``temperature_2m`` is
  ``270 + k + ERA5_GRADIENT (lon - 9)`` (a gradient along longitude, exact under
  bilinear interpolation), ``temperature_2m_min`` ``260 + k``,
  ``temperature_2m_max`` ``280 + k`` and ``total_precipitation_sum``
  ``0.01 k`` (see :func:`era5_expected`); the north-west cell is NaN (a sea cell,
  no declared no-data value, as ERA5-Land exports).
* ``era5_multiband/``: the same months as 4-band files (``era5_2020-06.tif``)
  whose band descriptions name the variables.

Run ``python tests/data/corpus/data.py --root DIR`` or import :func:`write_rasters`.
"""

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform, transform_bounds

CRS_UTM = 'EPSG:32632'
X0, Y0 = 500000.0, 5000000.0
SIZE = 96  # scene side in 10 m pixels
NODATA_COL = 80
SCENE_B_X0 = X0 + 2000
S2_BANDS = [
    'B1',
    'B2',
    'B3',
    'B4',
    'B5',
    'B6',
    'B7',
    'B8A',
    'B8',
    'B9',
    'B10',
    'B11',
    'B12',
]
RES = {
    'B1': 60,
    'B2': 10,
    'B3': 10,
    'B4': 10,
    'B5': 20,
    'B6': 20,
    'B7': 20,
    'B8': 10,
    'B8A': 20,
    'B9': 60,
    'B10': 60,
    'B11': 20,
    'B12': 20,
}
DATE_A = '20200615T103021'
DATE_B = '20200701T103031'
LON0, LAT0 = (float(v[0]) for v in transform(CRS_UTM, 'EPSG:4326', [X0], [Y0]))
ERA5_VARIABLES = (
    'temperature_2m',
    'temperature_2m_min',
    'temperature_2m_max',
    'total_precipitation_sum',
)
ERA5_MONTHS = [(2019, m) for m in range(5, 13)] + [(2020, m) for m in range(1, 8)]
ERA5_GRADIENT = 20.0  # K per degree of longitude
ERA5_WEST, ERA5_NORTH, ERA5_RES = 8.75, 45.35, 0.1
S1_FILES = {
    'S1A_IW_GRDH_20200610T173000_dual.tif': 'ramp',
    'S1A_IW_GRDH_20200625T173000_dual.tif': (-5.0, -6.0),
    'S1B_IW_GRDH_20200614T053000_dual.tif': (-7.0, -8.0),
}


def _write(
    path: Path,
    data: np.ndarray,
    crs: str,
    transform_: Affine,
    nodata: float | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data.ndim == 2:
        data = data[None]
    profile: dict[str, Any] = {
        'driver': 'GTiff',
        'width': data.shape[2],
        'height': data.shape[1],
        'count': data.shape[0],
        'dtype': data.dtype,
        'crs': crs,
        'transform': transform_,
    }
    if nodata is not None:
        profile['nodata'] = nodata
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)


def s2_expected(band: str, col: np.ndarray | int) -> np.ndarray:
    """Scene A's value of a band at 10 m column(s) *col*, after resampling."""
    k = S2_BANDS.index(band)
    col = np.asarray(col)
    if RES[band] == 10:
        return 1000 + 100 * k + col
    if RES[band] == 20:
        return 2000 + 100 * k + 2 * col - 1
    return 2000 + 100 * k + 2 * col - 5


def _scene_a(folder: Path, name: str) -> None:
    for band in S2_BANDS:
        res = RES[band]
        n = SIZE * 10 // res
        cols = np.arange(n, dtype=np.float64)
        k = S2_BANDS.index(band)
        if res == 10:
            row = 1000 + 100 * k + cols
        else:
            # A ramp of 4 (20 m) or 12 (60 m) DN per pixel is 2 DN per 10 m.
            row = 2000 + 100 * k + 2 * (res // 10) * cols
        data = np.tile(row, (n, 1)).astype(np.uint16)
        if res == 10:
            data[:, NODATA_COL:] = 0
        _write(
            folder / name.format(band=band),
            data,
            CRS_UTM,
            Affine(res, 0, X0, 0, -res, Y0),
        )


def _scene_b(folder: Path) -> None:
    for band in S2_BANDS:
        if band == 'B10':
            continue
        res = RES[band]
        n = SIZE * 10 // res
        value = 500 + 10 * S2_BANDS.index(band)
        _write(
            folder / f'S2B_MSIL2A_{DATE_B}_T32TMR_{band}.tif',
            np.full((n, n), value, np.uint16),
            CRS_UTM,
            Affine(res, 0, SCENE_B_X0, 0, -res, Y0),
        )
    n = SIZE // 2
    scl = (4 + (np.add.outer(np.arange(n), np.arange(n)) % 2)).astype(np.uint8)
    _write(
        folder / f'S2B_MSIL2A_{DATE_B}_T32TMR_SCL.tif',
        scl,
        CRS_UTM,
        Affine(20, 0, SCENE_B_X0, 0, -20, Y0),
    )


def _sentinel1(folder: Path) -> None:
    west, south, east, north = transform_bounds(
        CRS_UTM,
        'EPSG:4326',
        X0 - 100,
        Y0 - SIZE * 10 - 100,
        X0 + SIZE * 10 + 100,
        Y0 + 100,
    )
    res = 0.0001
    width = int(np.ceil((east - west) / res))
    height = int(np.ceil((north - south) / res))
    lon = west + res * (np.arange(width) + 0.5)
    lat = north - res * (np.arange(height) + 0.5)
    for name, values in S1_FILES.items():
        if values == 'ramp':
            vv = np.tile(-10 + 100 * (lon - LON0), (height, 1))
            vh = np.tile((-20 + 100 * (lat - LAT0))[:, None], (1, width))
        else:
            vv = np.full((height, width), values[0])
            vh = np.full((height, width), values[1])
        _write(
            folder / name,
            np.stack([vv, vh]).astype(np.float32),
            'EPSG:4326',
            Affine(res, 0, west, 0, -res, north),
        )


def era5_index(year: int, month: int) -> int:
    """Month index k of the ERA5 test values: 2019-01 is 1."""
    return 12 * (year - 2019) + month


def era5_expected(variable: str, year: int, month: int, lon: float = 9.0) -> float:
    """The ERA5 test value of a variable and month at a longitude."""
    k = era5_index(year, month)
    if variable == 'temperature_2m':
        return 270 + k + ERA5_GRADIENT * (lon - 9.0)
    if variable == 'temperature_2m_min':
        return 260.0 + k
    if variable == 'temperature_2m_max':
        return 280.0 + k
    return 0.01 * k


def era5_fields(year: int, month: int) -> np.ndarray:
    """The (4, 5, 6) ERA5 test rasters of a month, NaN in the north-west cell."""
    lon = ERA5_WEST + ERA5_RES * (np.arange(6) + 0.5)
    fields = np.stack(
        [
            np.tile(np.array([era5_expected(v, year, month, x) for x in lon]), (5, 1))
            for v in ERA5_VARIABLES
        ]
    ).astype(np.float32)
    fields[:, 0, 0] = np.nan
    return fields


def _era5(root: Path) -> None:
    transform_ = Affine(ERA5_RES, 0, ERA5_WEST, 0, -ERA5_RES, ERA5_NORTH)
    for year, month in ERA5_MONTHS:
        fields = era5_fields(year, month)
        for variable, field in zip(ERA5_VARIABLES, fields, strict=True):
            _write(
                root / 'era5' / f'ERA5_LAND_{year}{month:02d}_{variable}.tif',
                field,
                'EPSG:4326',
                transform_,
            )
        path = root / 'era5_multiband' / f'era5_{year}-{month:02d}.tif'
        _write(path, fields, 'EPSG:4326', transform_)
        with rasterio.open(path, 'r+') as dst:
            for i, variable in enumerate(ERA5_VARIABLES, start=1):
                dst.set_band_description(i, variable)


def dem_expected(x: np.ndarray | float) -> np.ndarray:
    """DEM elevation at easting(s) *x*."""
    return 100 + 0.2 * (np.asarray(x) - X0)


def write_rasters(root: Path | str) -> Path:
    """Write every test raster under *root*.

    Args:
        root: destination folder.

    Returns:
        *root*.
    """
    root = Path(root)
    _scene_a(root / 's2', f'S2A_MSIL1C_{DATE_A}_T32TMR_{{band}}.tif')
    _scene_b(root / 's2')
    _scene_a(root / 's2_torchgeo', f'T32TMR_{DATE_A}_{{band}}.tif')
    for path in sorted((root / 's2_torchgeo').iterdir()):
        # As torchgeo.datasets.Sentinel2 expects: T32TMR_<date>_B01_60m.tif
        band = path.stem.split('_')[2]
        padded = f'B{int(band[1:]):02d}' if band[1:].isdigit() else band
        folder = path.parent / f'R{RES[band]}m'  # the L2A SAFE layout
        folder.mkdir(exist_ok=True)
        path.rename(folder / f'T32TMR_{DATE_A}_{padded}_{RES[band]}m.tif')
    _sentinel1(root / 's1')

    # DEM: 30 m pixels, origin 15 m off the 10 m lattice, covering both scenes.
    dem_x0, dem_y0 = X0 - 45, Y0 + 75
    width, height = 120, 40
    x = dem_x0 + 30 * (np.arange(width) + 0.5)
    _write(
        root / 'dem' / 'dem.tif',
        np.tile(dem_expected(x), (height, 1)).astype(np.float32),
        CRS_UTM,
        Affine(30, 0, dem_x0, 0, -30, dem_y0),
    )

    canopy = np.zeros((2, SIZE, SIZE), np.uint8)
    canopy[0], canopy[1] = 20, 5
    canopy[:, :, 40:] = 255
    _write(
        root / 'canopy' / 'canopy_height.tif',
        canopy,
        CRS_UTM,
        Affine(10, 0, X0, 0, -10, Y0),
        nodata=255,
    )

    west, south, east, north = transform_bounds(
        CRS_UTM, 'EPSG:3857', X0 - 200, Y0 - 1200, X0 + 3200, Y0 + 200
    )
    west, north = np.floor(west / 20) * 20, np.ceil(north / 20) * 20
    width = int(np.ceil((east - west) / 20))
    height = int(np.ceil((north - south) / 20))
    labels = (np.add.outer(np.arange(height), np.arange(width)) % 9).astype(np.uint8)
    labels[:10] = 255
    _write(
        root / 'dynamic_world' / 'dynamic_world.tif',
        labels,
        'EPSG:3857',
        Affine(20, 0, west, 0, -20, north),
        nodata=255,
    )

    west, south, east, north = transform_bounds(
        CRS_UTM, 'EPSG:4326', X0 - 500, Y0 - 1500, X0 + 3500, Y0 + 500
    )
    _write(
        root / 'biome' / 'biome.tif',
        np.full((20, 40), 4, np.uint8),
        'EPSG:4326',
        Affine((east - west) / 40, 0, west, 0, -(north - south) / 20, north),
    )
    _era5(root)
    return root


def utm_to_lonlat(x: float, y: float) -> tuple[float, float]:
    """Longitude and latitude of a UTM 32N point."""
    lon, lat = transform(CRS_UTM, 'EPSG:4326', [x], [y])
    return float(lon[0]), float(lat[0])


def main() -> None:
    """Write the rasters under --root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, required=True)
    args = parser.parse_args()
    print(write_rasters(args.root))


if __name__ == '__main__':
    main()
