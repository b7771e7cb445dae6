#!/usr/bin/env python3
"""Write small MMEarth corpora in the exact published layout, for tests and benchmarks.

The layout is hard-coded here from MMEarth-data's ``utils/convert_to_h5.py`` (commit
32fe297) and is deliberately independent of the package's own format table, so that
a mistake in the reader's description of the format cannot hide in the test data:

* one folder per subset with ``<stem>.h5``, ``<stem>_band_stats.json``,
  ``<stem>_splits.json`` and ``<stem>_tile_info.json``;
* every HDF5 dataset gzip-compressed with one chunk per tile;
* the published dtypes (int8 canopy height, int16 ASTER, one-hot uint8 biome and
  uint16 ecoregion, float32 sin/cos encodings) and no-data placeholders, written
  the way the published writer's casts leave them (the ``-inf`` ASTER placeholder
  clamped to -32768 and the ``255`` canopy placeholder clamped to 127 by HDF5);
* band statistics computed the way MMEarth-data's ``utils/normalization.py`` does
  (per band, over values that differ from its no-data value; L1C and L2A apart).

Two releases of the data store two placeholders differently (MMEarth-train 1f368b3,
"updated dataset class to v1.0"): v001, the published folders ``data_1M_v001`` and
so on, stores ESA WorldCover no-data as 255 and ERA5 no-data as ``+inf``; v1.0 as 0
and NaN. ``version='v1.0'`` writes the latter, into ``data_1M_v1.0`` and so on;
*attribute* records a release in the HDF5 root attribute ``version``.

Run ``python tests/data/mmearth/data.py --root DIR`` to write all three subsets, or
import :func:`write_corpus`.
"""

import argparse
import json
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SUBSETS = {
    'MMEarth': ('data_1M_v001', 128),
    'MMEarth64': ('data_1M_v001_64', 64),
    'MMEarth100k': ('data_100k_v001', 128),
}

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
# Typical L1C / L2A digital numbers per band (B10 is cirrus: low in L1C, 0 in L2A).
S2_LEVEL = {
    'l1c': [1500, 1300, 1200, 1200, 1450, 2000, 2250, 2400, 2300, 900, 30, 1900, 1300],
    'l2a': [600, 650, 800, 800, 1150, 2100, 2500, 2750, 2650, 2750, 0, 1900, 1300],
}
ESA_CODES = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
# The placeholders that differ between releases: ESA WorldCover and ERA5 no-data.
RELEASE_NODATA = {
    'v001': {'esa_worldcover': 255, 'era5': float('inf')},
    'v1.0': {'esa_worldcover': 0, 'era5': float('nan')},
}

# Creation order and stored dtypes of MMEarth-data's convert_to_h5.MODALITIES.
LAYOUT: dict[str, tuple[str, int | None]] = {
    'sentinel2': ('uint16', 13),
    'sentinel2_cloudmask': ('uint16', 1),
    'sentinel2_cloudprod': ('uint16', 1),
    'sentinel2_scl': ('uint8', 1),
    'sentinel1': ('float32', 8),
    'aster': ('int16', 2),
    'era5': ('float32', 12),
    'dynamic_world': ('uint8', 1),
    'canopy_height_eth': ('int8', 2),
    'lat': ('float32', 2),
    'lon': ('float32', 2),
    'biome': ('uint8', 14),
    'eco_region': ('uint16', 846),
    'month': ('float32', 2),
    'esa_worldcover': ('uint8', 1),
}
IMAGE_LEVEL = {'era5', 'lat', 'lon', 'biome', 'eco_region', 'month'}
# MMEarth-data utils/normalization.py NO_DATA_VAL (the values its statistics skip).
STATS_NO_DATA = {
    'sentinel2': 0,
    'sentinel2_cloudmask': 65535,
    'sentinel2_cloudprod': 65535,
    'sentinel1': float('-inf'),
    'aster': float('-inf'),
    'canopy_height_eth': 255,
}


def _smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A smooth random field in [-1, 1] (sum of a few low-frequency waves)."""
    y, x = np.mgrid[0:size, 0:size] / size
    field = np.zeros((size, size))
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0, 6.3)
        field += np.sin(2 * np.pi * (fy * y + fx * x) + phase)
    return scale * field / 3


def _tile(
    rng: np.random.Generator,
    size: int,
    s2_type: str,
    meta: dict[str, Any],
    version: str,
) -> dict[str, np.ndarray]:
    """All modalities of one tile, as the writer of the *version* release stores them."""
    nodata = RELEASE_NODATA[version]
    out: dict[str, np.ndarray] = {}
    base = _smooth_field(rng, size, 1.0)

    # Sentinel-2: a no-data block of all-zero pixels on some tiles (swath edge).
    levels = np.array(S2_LEVEL[s2_type], dtype=float)[:, None, None]
    s2 = levels * (1 + 0.3 * base) + rng.normal(0, 40, (13, size, size))
    s2 = np.clip(s2, 1, 20000).astype(np.uint16)
    if s2_type == 'l2a':
        s2[S2_BANDS.index('B10')] = 0
    if meta['s2_nodata']:
        s2[:, : size // 4, : size // 3] = 0
    out['sentinel2'] = s2

    qa60 = rng.choice(np.array([0, 0, 0, 1024, 2048], dtype=np.uint16), (1, size, size))
    out['sentinel2_cloudmask'] = (
        qa60 if meta['qa60'] else np.full((1, size, size), 65535, np.uint16)
    )
    if s2_type == 'l2a':
        out['sentinel2_cloudprod'] = rng.integers(
            0, 101, (1, size, size), dtype=np.uint16
        )
        out['sentinel2_scl'] = rng.integers(0, 12, (1, size, size), dtype=np.uint8)
    else:
        out['sentinel2_cloudprod'] = np.full((1, size, size), 65535, np.uint16)
        out['sentinel2_scl'] = np.full((1, size, size), 255, np.uint8)

    # Sentinel-1: missing orbits and polarisations stay -inf.
    s1 = np.full((8, size, size), -np.inf, dtype=np.float32)
    for offset, bands in ((0, meta['s1_asc']), (4, meta['s1_desc'])):
        for band in bands or []:
            channel = offset + ['VV', 'VH', 'HH', 'HV'].index(band)
            level = -10.0 if band in ('VV', 'HH') else -17.0
            s1[channel] = level + 3 * base + rng.normal(0, 1.0, (size, size))
    out['sentinel1'] = s1

    elevation = 800 + 600 * base + rng.normal(0, 5, (size, size))
    slope = np.abs(30 * _smooth_field(rng, size, 1.0))
    aster = np.stack([elevation, slope]).round().astype(np.int16)
    if meta['aster_nodata']:
        aster[:, -3:, :] = np.iinfo(
            np.int16
        ).min  # the -inf placeholder after HDF5's cast
    out['aster'] = aster

    era5 = np.array(
        meta['era5']['month1'] + meta['era5']['month2'] + meta['era5']['year'],
        dtype=np.float32,
    )
    era5[np.isnan(era5)] = nodata['era5']
    out['era5'] = era5

    dw = rng.integers(1, 10, (1, size, size), dtype=np.uint8)
    dw[:, : size // 8] = 0
    out['dynamic_world'] = dw

    if meta['canopy_missing']:
        canopy = np.full((2, size, size), 127, dtype=np.int8)  # 255 clamped by HDF5
    else:
        height = np.clip(15 + 12 * base + rng.normal(0, 2, (size, size)), 0, 60)
        std = np.clip(4 + rng.normal(0, 1, (size, size)), 0, 20)
        canopy = np.stack([height, std]).round().astype(np.int8)
        canopy[:, :2, :2] = -1  # 255 wrapped by a NumPy cast
    out['canopy_height_eth'] = canopy

    out['lat'] = np.array(
        [math.sin(math.radians(meta['lat'])), math.cos(math.radians(meta['lat']))],
        np.float32,
    )
    out['lon'] = np.array(
        [math.sin(math.radians(meta['lon'])), math.cos(math.radians(meta['lon']))],
        np.float32,
    )
    month = int(meta['date'].split('-')[1])
    out['month'] = np.array(
        [math.sin(2 * math.pi * month / 12), math.cos(2 * math.pi * month / 12)],
        np.float32,
    )
    out['biome'] = np.eye(14, dtype=np.uint8)[meta['biome']]
    out['eco_region'] = np.eye(846, dtype=np.uint16)[meta['eco_region']]

    esa = rng.choice(np.array(ESA_CODES, dtype=np.uint8), (1, size, size))
    esa[:, :, :2] = 0  # the v1.0 placeholder; no code of the legend in v001 either
    esa[:, :, -1] = nodata['esa_worldcover']
    out['esa_worldcover'] = esa
    return out


def _tile_meta(rng: np.random.Generator, index: int) -> dict[str, Any]:
    """Per-tile metadata: processing level, date, location, which sources exist."""
    s2_type = 'l2a' if index % 2 else 'l1c'
    day = date(2017, 1, 1) + timedelta(days=int(rng.integers(0, 4 * 365)))
    era5 = {
        'month1': [
            float(x)
            for x in (
                rng.normal(285, 8),
                rng.normal(280, 8),
                rng.normal(292, 8),
                abs(rng.normal(0.05, 0.03)),
            )
        ],
        'month2': [
            float(x)
            for x in (
                rng.normal(286, 8),
                rng.normal(281, 8),
                rng.normal(293, 8),
                abs(rng.normal(0.05, 0.03)),
            )
        ],
        'year': [
            float(x)
            for x in (
                rng.normal(284, 8),
                rng.normal(260, 8),
                rng.normal(305, 8),
                abs(rng.normal(0.8, 0.3)),
            )
        ],
    }
    if index % 7 == 3:
        era5['year'] = [float('nan')] * 4
    return {
        's2_type': s2_type,
        'date': day.isoformat(),
        'lat': float(rng.uniform(-60, 70)),
        'lon': float(rng.uniform(-180, 180)),
        'biome': int(rng.integers(0, 14)),
        'eco_region': int(rng.integers(0, 846)),
        's2_nodata': index % 4 == 1,
        'qa60': index % 5 != 2,
        's1_asc': ['VV', 'VH'] if index % 3 != 2 else None,
        's1_desc': (['VV', 'VH', 'HH', 'HV'] if index % 6 == 0 else ['VV', 'VH'])
        if index % 4 != 3
        else None,
        'aster_nodata': index % 5 == 0,
        'canopy_missing': index % 6 == 5,
        'era5': era5,
    }


def _tile_info_entry(meta: dict[str, Any]) -> dict[str, Any]:
    """A tile_info.json record with the published fields."""
    s2 = [b for b in S2_BANDS if not (meta['s2_type'] == 'l2a' and b == 'B10')]
    s2 += ['QA60'] if meta['qa60'] else []
    s2 += ['SCL', 'MSK_CLDPRB'] if meta['s2_type'] == 'l2a' else []
    day = date.fromisoformat(meta['date'])
    prev = (day.replace(day=1) - timedelta(days=1)).strftime('%Y%m')
    curr = day.strftime('%Y%m')
    era5_names = [
        f'{m}_{v}'
        for m in (prev, curr)
        for v in (
            'temperature_2m',
            'temperature_2m_min',
            'temperature_2m_max',
            'total_precipitation_sum',
        )
    ]
    era5_names += [
        '0_temperature_2m_mean',
        '1_temperature_2m_min_min',
        '2_temperature_2m_max_max',
        '3_total_precipitation_sum_sum',
    ]
    return {
        'S2_DATE': meta['date'],
        'S2_type': meta['s2_type'],
        'CRS': f'EPSG:{32600 + int((meta["lon"] + 180) // 6) + 1}',
        'lat': meta['lat'],
        'lon': meta['lon'],
        'biome': meta['biome'],
        'eco_region': meta['eco_region'],
        'NO_DATA': False,
        'BANDS': {
            'sentinel2': s2,
            'sentinel1_asc': meta['s1_asc'],
            'sentinel1_desc': meta['s1_desc'],
            'aster': ['b1', 'slope'],
            'era5': era5_names,
            'dynamic_world': ['label'],
            'canopy_height_eth': ['height', 'std'],
            'esa_worldcover': ['Map'],
        },
        'era5': meta['era5'],
    }


def _stats(values: np.ndarray, no_data: float) -> dict[str, list[float]]:
    """Per-band mean/std/min/max over values that differ from *no_data*."""
    flat = values.astype(np.float64).transpose(1, 0, 2, 3).reshape(values.shape[1], -1)
    valid = flat != no_data
    count = valid.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = np.where(valid, flat, 0).sum(1) / count
        std = np.sqrt(np.where(valid, flat**2, 0).sum(1) / count - mean**2)
    low = np.where(valid, flat, np.inf).min(1)
    high = np.where(valid, flat, -np.inf).max(1)
    empty = count == 0
    low[empty], high[empty] = np.nan, np.nan
    return {
        'mean': mean.tolist(),
        'std': std.tolist(),
        'min': low.tolist(),
        'max': high.tolist(),
    }


def _vector_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-element statistics of an image-level vector over its finite values."""
    values = np.where(np.isfinite(values), values, np.nan)
    count = np.count_nonzero(~np.isnan(values), axis=0)
    mean = np.nansum(values, axis=0) / count
    std = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / count)
    return {
        'mean': mean.tolist(),
        'std': std.tolist(),
        'min': np.nanmin(values, axis=0).tolist(),
        'max': np.nanmax(values, axis=0).tolist(),
    }


def release_folder(subset: str, version: str = 'v001') -> str:
    """The folder of a subset in a release: ``data_1M_v001_64``, ``data_1M_v1.0_64``."""
    return SUBSETS[subset][0].replace('v001', version)


def write_corpus(
    root: Path | str,
    subset: str = 'MMEarth64',
    num_tiles: int = 10,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    compression: str | None = 'gzip',
    version: str = 'v001',
    folder: str | None = None,
    attribute: str | None = None,
) -> Path:
    """Write one subset folder under *root* and return its path.

    Args:
        root: directory that receives the ``data_*`` folder.
        subset: 'MMEarth', 'MMEarth64' or 'MMEarth100k'.
        num_tiles: number of tiles.
        seed: random seed; the same seed writes the same corpus.
        splits: train/val/test fractions of the shuffled tile indices.
        compression: 'gzip' with one chunk per tile, as published, or None for a
            contiguous file (the layout of MMEarth-data's merge mode).
        version: the release whose no-data placeholders to write, 'v001' or 'v1.0'.
        folder: the folder name; None for the subset's folder of *version*
            (:func:`release_folder`).
        attribute: the value of the HDF5 root attribute ``version``; None writes
            none (as in the published v001 files).

    Returns:
        The subset folder.
    """
    stem = folder or release_folder(subset, version)
    size = SUBSETS[subset][1]
    folder_path = Path(root) / stem
    folder_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metas = [_tile_meta(rng, i) for i in range(num_tiles)]
    tiles = [_tile(rng, size, m['s2_type'], m, version) for m in metas]
    tile_ids = [f'{seed}{i:06d}' for i in range(num_tiles)]

    with h5py.File(folder_path / f'{stem}.h5', 'w') as f:
        if attribute is not None:
            f.attrs['version'] = attribute
        for name, (dtype, channels) in LAYOUT.items():
            shape: tuple[int, ...] = (
                (num_tiles, channels)
                if name in IMAGE_LEVEL
                else (num_tiles, channels, size, size)
            )
            options: dict[str, Any] = {}
            if compression:
                options = {'compression': compression, 'chunks': (1, *shape[1:])}
            ds = f.create_dataset(name, shape=shape, dtype=dtype, **options)
            ds[...] = np.stack([t[name] for t in tiles])
        metadata_dtype = np.dtype([('tile_id', 'S100'), ('S2_type', 'S10')])
        options = {'compression': compression, 'chunks': (1,)} if compression else {}
        meta_ds = f.create_dataset(
            'metadata', shape=(num_tiles,), dtype=metadata_dtype, **options
        )
        meta_ds[...] = np.array(
            [
                (t.encode(), m['s2_type'].encode())
                for t, m in zip(tile_ids, metas, strict=True)
            ],
            dtype=metadata_dtype,
        )

    stats: dict[str, dict[str, list[float]]] = {}
    for name, no_data in STATS_NO_DATA.items():
        values = np.stack([t[name] for t in tiles])
        if name == 'sentinel2':
            for level in ('l2a', 'l1c'):
                rows = [i for i, m in enumerate(metas) if m['s2_type'] == level]
                stats[f'sentinel2_{level}'] = _stats(values[rows], no_data)
        else:
            stats[name] = _stats(values, no_data)
    for name in ('lat', 'lon', 'month', 'era5'):
        stats[name] = _vector_stats(
            np.stack([t[name] for t in tiles]).astype(np.float64)
        )
    (folder_path / f'{stem}_band_stats.json').write_text(json.dumps(stats))

    order = rng.permutation(num_tiles).tolist()
    n_train = round(splits[0] * num_tiles)
    n_val = round(splits[1] * num_tiles)
    split_indices = {
        'train': order[:n_train],
        'val': order[n_train : n_train + n_val],
        'test': order[n_train + n_val :],
    }
    (folder_path / f'{stem}_splits.json').write_text(json.dumps(split_indices))

    tile_info = {t: _tile_info_entry(m) for t, m in zip(tile_ids, metas, strict=True)}
    (folder_path / f'{stem}_tile_info.json').write_text(json.dumps(tile_info))
    return folder_path


def main() -> None:
    """Write all three subsets (or one) under --root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=Path(__file__).parent)
    parser.add_argument(
        '--subset', choices=list(SUBSETS), nargs='*', default=list(SUBSETS)
    )
    parser.add_argument('--num-tiles', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--version', choices=list(RELEASE_NODATA), default='v001')
    args = parser.parse_args()
    for subset in args.subset:
        folder = write_corpus(
            args.root, subset, args.num_tiles, args.seed, version=args.version
        )
        print(f'{subset}: {folder}')


if __name__ == '__main__':
    main()
