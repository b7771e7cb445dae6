"""Turn resampled rasters into the stored MMEarth arrays, with the readers' no-data.

Every function takes float arrays on the tile grid with NaN for no-data (what the
sources return) and gives the arrays of the published layout: the dtypes and band
order of :data:`torchgeo_mmearth.modalities.MODALITIES`, and no-data written the way
:class:`~torchgeo_mmearth.datasets.MMEarth` (and the published writer) leaves it:
Sentinel-2 0, Sentinel-1 ``-inf``, ASTER -32768, canopy height 127, Dynamic World and
ESA WorldCover 0, QA60 and MSK_CLDPRB 65535, SCL 255, ERA5 NaN, and an all-zero
vector for biome and ecoregion: the placeholders of the v1.0 release of the data
(:data:`DATA_VERSION`), which the writer records in every corpus.
"""

import math
from collections.abc import Mapping
from datetime import datetime

import numpy as np

from ..modalities import MODALITIES, VERSION_NODATA, Kind, Level

__all__ = [
    'DATA_VERSION',
    'NODATA',
    'encode_aster',
    'encode_classes',
    'encode_continuous',
    'encode_image_class',
    'encode_latlon',
    'encode_month',
    'encode_sentinel1',
    'encode_sentinel2',
    'nodata_tile',
    'slope_degrees',
    'valid_mask',
]

#: The release of the MMEarth data whose no-data placeholders the builder writes
#: (:data:`~torchgeo_mmearth.modalities.VERSION_NODATA`).
DATA_VERSION = 'v1.0'

#: Stored no-data value of every modality (None: image-level one-hot classes, whose
#: no-data is a vector of zeros).
NODATA: Mapping[str, float | None] = {
    'sentinel2': 0,
    'sentinel2_cloudmask': 65535,
    'sentinel2_cloudprod': 65535,
    'sentinel2_scl': 255,
    'sentinel1': float('-inf'),
    'aster': -32768,
    'era5': VERSION_NODATA[DATA_VERSION]['era5'],
    'dynamic_world': 0,
    'canopy_height_eth': 127,
    'lat': float('nan'),
    'lon': float('nan'),
    'biome': None,
    'eco_region': None,
    'month': float('nan'),
    'esa_worldcover': VERSION_NODATA[DATA_VERSION]['esa_worldcover'],
}


def nodata_tile(name: str, size: int) -> np.ndarray:
    """The stored array of a modality with no data at all.

    Args:
        name: modality name.
        size: tile side in pixels.

    Returns:
        ``(C, size, size)`` for pixel-level modalities, ``(C,)`` for vectors.
    """
    modality = MODALITIES[name]
    if modality.level is Level.PIXEL:
        shape: tuple[int, ...] = (len(modality.bands), size, size)
    elif modality.one_hot:
        shape = (modality.num_classes,)
    else:
        shape = (len(modality.bands),)
    value = NODATA[name]
    return np.full(shape, 0 if value is None else value, dtype=modality.dtype)


def _to_int(array: np.ndarray, name: str, low: float, high: float) -> np.ndarray:
    """Round valid values into [low, high]; NaN becomes the stored no-data."""
    modality = MODALITIES[name]
    nodata = NODATA[name]
    assert nodata is not None
    out = np.where(np.isnan(array), nodata, np.clip(np.rint(array), low, high))
    return out.astype(modality.dtype)


def encode_sentinel2(
    bands: Mapping[str, np.ndarray], size: int
) -> dict[str, np.ndarray]:
    """Sentinel-2 and its cloud and scene-classification layers.

    Args:
        bands: resampled bands by name (B1..B12, QA60, SCL, MSK_CLDPRB); missing
            bands (B10 in L2A, the cloud layers of most sources) are no-data.
        size: tile side in pixels.

    Returns:
        ``sentinel2`` (uint16 digital numbers, 0 = no-data), ``sentinel2_cloudmask``,
        ``sentinel2_cloudprod`` and ``sentinel2_scl``.
    """
    s2 = np.zeros((13, size, size), dtype=np.uint16)
    for i, band in enumerate(MODALITIES['sentinel2'].bands):
        if band in bands:
            # A valid digital number is >= 1 (0 is no-data), so round into [1, 65535].
            s2[i] = _to_int(bands[band], 'sentinel2', 1, 65535)
    out = {'sentinel2': s2}
    for name, band, low, high in (
        ('sentinel2_cloudmask', 'QA60', 0, 65534),
        ('sentinel2_cloudprod', 'MSK_CLDPRB', 0, 100),
        ('sentinel2_scl', 'SCL', 0, 254),
    ):
        if band in bands:
            out[name] = _to_int(bands[band], name, low, high)[None]
        else:
            out[name] = nodata_tile(name, size)
    return out


def sentinel2_valid(stored: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """Pixels where every band a Sentinel-2 source provides is valid (non-zero).

    Args:
        stored: the stored ``(13, S, S)`` uint16 array.
        bands: the spectral bands the source provides (B10 is absent from L2A).

    Returns:
        A boolean ``(S, S)`` array.
    """
    names = MODALITIES['sentinel2'].bands
    index = [names.index(b) for b in bands if b in names]
    valid: np.ndarray = np.all(stored[index] > 0, axis=0)
    return valid


def encode_sentinel1(bands: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """Sentinel-1 backscatter in dB; missing orbits and polarisations are -inf.

    Args:
        bands: resampled bands by stored name (``asc_VV``, ``desc_VH``, ...).
        size: tile side in pixels.

    Returns:
        The float32 ``(8, size, size)`` array.
    """
    out = nodata_tile('sentinel1', size)
    for i, band in enumerate(MODALITIES['sentinel1'].bands):
        if band in bands:
            out[i] = np.where(np.isnan(bands[band]), -np.inf, bands[band])
    return out


def slope_degrees(elevation: np.ndarray, pixel_size: tuple[float, float]) -> np.ndarray:
    """Terrain slope in degrees from the four neighbours of each pixel.

    The gradient is the central difference of the left/right and upper/lower
    neighbours, as Earth Engine's ``ee.Terrain.slope`` (which MMEarth-data used)
    computes it: ``atan(hypot(dz/dx, dz/dy))``. The border pixels, which lack a
    neighbour, are NaN: pass an elevation grid one pixel wider on every side.

    Args:
        elevation: ``(H, W)`` elevation in metres, NaN for no-data.
        pixel_size: pixel size (x, y) in metres.

    Returns:
        ``(H, W)`` slope in degrees.
    """
    dx, dy = pixel_size
    slope = np.full(elevation.shape, np.nan, dtype=np.float64)
    z = elevation.astype(np.float64)
    dzdx = (z[1:-1, 2:] - z[1:-1, :-2]) / (2 * dx)
    dzdy = (z[:-2, 1:-1] - z[2:, 1:-1]) / (2 * dy)
    slope[1:-1, 1:-1] = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    return slope


def encode_aster(
    padded_elevation: np.ndarray | None, pixel_size: tuple[float, float], size: int
) -> np.ndarray:
    """ASTER-style elevation and slope from a DEM.

    Args:
        padded_elevation: elevation on the tile grid grown by one pixel on every
            side (for the slope of border pixels), or None when there is no DEM.
        pixel_size: pixel size (x, y) in metres.
        size: tile side in pixels.

    Returns:
        The int16 ``(2, size, size)`` array (elevation in m, slope in degrees),
        -32768 where there is no data.
    """
    if padded_elevation is None:
        return nodata_tile('aster', size)
    slope = slope_degrees(padded_elevation, pixel_size)[1:-1, 1:-1]
    elevation = padded_elevation[1:-1, 1:-1]
    return np.stack(
        [
            _to_int(elevation, 'aster', -32767, 32767),
            _to_int(slope, 'aster', -32767, 32767),
        ]
    )


def encode_continuous(
    name: str, bands: Mapping[str, np.ndarray], size: int
) -> np.ndarray:
    """A continuous pixel modality stored as integers (canopy height).

    Values are rounded and clipped into the modality's valid range (canopy height
    and std: 0-126 m, since 127 is the no-data value).

    Args:
        name: modality name.
        bands: resampled bands by name; missing bands are no-data.
        size: tile side in pixels.

    Returns:
        The stored ``(C, size, size)`` array.
    """
    modality = MODALITIES[name]
    out = nodata_tile(name, size)
    low, high = modality.valid_range
    for i, band in enumerate(modality.bands):
        if band in bands:
            out[i] = _to_int(bands[band], name, low, high)
    return out


def _map_classes(
    array: np.ndarray, name: str, class_map: Mapping[int, int] | None
) -> np.ndarray:
    """Raw class values to stored codes; NaN and unknown values become no-data."""
    modality = MODALITIES[name]
    nodata = NODATA[name]
    valid = ~np.isnan(array)
    raw = np.where(valid, array, -1).astype(np.int64)
    if class_map is not None:
        keys = np.array(sorted(class_map), dtype=np.int64)
        if len(keys) == 0:
            raw = np.full(raw.shape, -1, dtype=np.int64)
        else:
            values = np.array([class_map[int(k)] for k in keys], dtype=np.int64)
            position = np.searchsorted(keys, raw).clip(0, len(keys) - 1)
            raw = np.where(valid & (keys[position] == raw), values[position], -1)
    legal = np.isin(raw, modality.class_values)
    fill = -1 if nodata is None else nodata
    return np.where(legal, raw, fill)


def encode_classes(
    name: str,
    array: np.ndarray | None,
    size: int,
    class_map: Mapping[int, int] | None = None,
) -> np.ndarray:
    """A class map (Dynamic World, ESA WorldCover, SCL-like layers).

    Args:
        name: modality name.
        array: the resampled (nearest-neighbour) raw values, or None.
        size: tile side in pixels.
        class_map: raw value to stored code; values outside the map, and codes
            outside the modality's legend, become no-data.

    Returns:
        The stored ``(1, size, size)`` array.
    """
    if array is None:
        return nodata_tile(name, size)
    return _map_classes(array, name, class_map).astype(MODALITIES[name].dtype)[None]


def encode_image_class(
    name: str, array: np.ndarray | None, class_map: Mapping[int, int] | None = None
) -> np.ndarray:
    """An image-level class (biome, ecoregion): the majority class, one-hot.

    Args:
        name: modality name.
        array: the resampled raw class indices over the tile, or None.
        class_map: raw value to class index.

    Returns:
        The one-hot vector; all zeros when the tile has no valid class.
    """
    modality = MODALITIES[name]
    out = nodata_tile(name, 0)
    if array is None:
        return out
    codes = _map_classes(array, name, class_map)
    codes = codes[codes >= 0]
    if codes.size:
        # Majority class; ties go to the smallest index, deterministically.
        out[int(np.bincount(codes, minlength=modality.num_classes).argmax())] = 1
    return out


def encode_latlon(lon: float, lat: float) -> dict[str, np.ndarray]:
    """The sin/cos encodings of the tile centre.

    Args:
        lon: longitude in degrees.
        lat: latitude in degrees.

    Returns:
        ``lat`` and ``lon`` float32 ``(2,)`` vectors.
    """
    return {
        'lat': np.array(
            [math.sin(math.radians(lat)), math.cos(math.radians(lat))], np.float32
        ),
        'lon': np.array(
            [math.sin(math.radians(lon)), math.cos(math.radians(lon))], np.float32
        ),
    }


def encode_month(date: datetime) -> np.ndarray:
    """The sin/cos encoding of the Sentinel-2 month (1-12).

    Args:
        date: the Sentinel-2 acquisition date.

    Returns:
        The float32 ``(2,)`` vector.
    """
    angle = 2 * math.pi * date.month / 12
    return np.array([math.sin(angle), math.cos(angle)], np.float32)


def valid_mask(name: str, stored: np.ndarray) -> np.ndarray:
    """Which stored values are valid, by the readers' no-data rules.

    Args:
        name: modality name.
        stored: the stored array of one tile.

    Returns:
        A boolean array of the same shape.
    """
    modality = MODALITIES[name]
    if modality.kind is Kind.CATEGORICAL:
        if modality.one_hot:
            return np.full(stored.shape, stored.sum() == 1 and stored.max() == 1)
        return np.isin(stored, modality.class_values)
    values = stored.astype(np.float64)
    low, high = modality.valid_range
    return np.isfinite(values) & (values >= low) & (values <= high)
