#!/usr/bin/env python3
"""Write small GEO-Bench v1.0 tasks in the exact on-disk format, for tests.

The format is hard-coded here from GEO-Bench's own code (ServiceNow/geo-bench:
``geobench/dataset.py`` ``write_sample_hdf5`` and the band tables, ``task.py``,
``label.py``, ``make_benchmark/bandstats.py``, ``generate_partitions.py`` and the
converters of the six tasks), deliberately independently of
``torchgeo_mmearth.datasets.geobench``, so that a mistake in the reader's
description of the format cannot hide in the test data:

* ``<root>/classification_v1.0/<task>/`` or ``<root>/segmentation_v1.0/<task>/``
  (m-cashew-plantation is published as the folder ``m-cashew-plant``);
* one ``<sample name>.hdf5`` per sample: one 2-D dataset per band, named by the
  band name (plus ``_YYYY-MM-DD`` when the band has a date, as in
  m-cashew-plant), and the root attribute ``pickle``, the ``str()`` of a pickle
  (protocol 4) of ``{band descriptor: {'date', 'date_id', 'spatial_resolution',
  'band_info', 'meta_info', 'transform', 'crs'}, 'bands_order': [...]}`` plus
  ``'label'`` (an ``int`` class, or a 0/1 ``int64`` vector for m-bigearthnet) for
  classification; segmentation tasks store the mask as one more band named
  ``label`` instead. ``band_info`` objects are pickled under GEO-Bench's class
  names (``geobench.dataset.Sentinel2`` ...), so no geobench install is needed;
* ``band_stats.json`` (GEO-Bench's ``Stats`` fields per band name and for
  ``label``, computed over the train split of the default partition; GEO-Bench
  samples 1000 values per image, this writer uses all of them),
  ``task_specs.pkl`` and the partitions ``default_partition.json`` and
  ``0.01x_train`` ... ``1.00x_train`` (``{'train', 'valid', 'test'}`` lists of
  sample names; the fractional partitions keep valid and test whole).

Published quirks reproduced on purpose (GEO-Bench README, "Known issues",
issues #28 and #29): with ``published=True`` (the default) the m-eurosat and
m-brick-kiln files label their 13 channels ``B01 ... B08, B8A, B09, B10, B11,
B12`` although the pixels are in the order ``B01 ... B08, B09, B10, B11, B12,
B8A`` (m-eurosat) and ``B01 ... B05, B07, B8A, B08, B11, B12, TCI_R, TCI_G,
TCI_B`` (m-brick-kiln); ``published=False`` writes the corrected metadata of
GEO-Bench's current converters. m-so2sat pixels are reflectances (digital
numbers / 10 000, as So2Sat LCZ42 publishes them), while its band statistics are
written 10 000 times larger (``so2sat_stats_scale``), which is what MMEarth's
``geobenchdataset.py`` reports for the published ``band_stats.json``.

Scaled down: a few samples per split and small images (:data:`DEFAULT_SIZES`).
The pixel values are synthetic. Nothing computed on these files is a GEO-Bench
result.

Run ``python tests/data/geobench/data.py --root DIR`` to write all six tasks, or
import :func:`write_task`.
"""

import argparse
import contextlib
import datetime
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import affine
import h5py
import numpy as np
from rasterio.crs import CRS

# --------------------------------------------------------------------------------
# GEO-Bench's band tables (geobench/dataset.py): name, alt names, resolution (m),
# wavelength (um).
S2_13 = [
    ('01 - Coastal aerosol', ('1', '01'), 60, 0.443),
    ('02 - Blue', ('2', '02', 'blue'), 10, 0.49),
    ('03 - Green', ('3', '03', 'green'), 10, 0.56),
    ('04 - Red', ('4', '04', 'red'), 10, 0.665),
    ('05 - Vegetation Red Edge', ('5', '05'), 20, 0.705),
    ('06 - Vegetation Red Edge', ('6', '06'), 20, 0.74),
    ('07 - Vegetation Red Edge', ('7', '07'), 20, 0.783),
    ('08 - NIR', ('8', '08', 'NIR'), 10, 0.842),
    ('08A - Vegetation Red Edge', ('8A', '08A'), 20, 0.865),
    ('09 - Water vapour', ('9', '09'), 60, 0.945),
    ('10 - SWIR - Cirrus', ('10',), 60, 1.375),
    ('11 - SWIR', ('11',), 20, 1.61),
    ('12 - SWIR', ('12',), 20, 2.19),
]
S1_8 = [
    '01 - VH.Real',
    '02 - VH.Imaginary',
    '03 - VV.Real',
    '04 - VV.Imaginary',
    '05 - VH.LEE Filtered',
    '06 - VV.LEE Filtered',
    '07 - VH.LEE Filtered.Real',
    '08 - VV.LEE Filtered.Imaginary',
]
# Physical Sentinel-2 band of each row of S2_13.
S2_PHYSICAL = [
    *('B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A', 'B09'),
    *('B10', 'B11', 'B12'),
]
# Typical digital numbers per physical band, so that every band has its own level.
LEVEL = {
    'B01': 1500.0,
    'B02': 1300.0,
    'B03': 1200.0,
    'B04': 1150.0,
    'B05': 1450.0,
    'B06': 2000.0,
    'B07': 2250.0,
    'B08': 2400.0,
    'B8A': 2600.0,
    'B09': 900.0,
    'B10': 30.0,
    'B11': 1900.0,
    'B12': 1300.0,
    'TCI_R': 120.0,
    'TCI_G': 110.0,
    'TCI_B': 90.0,
    'CLOUD': 20.0,
}

EUROSAT_CLASSES = [
    'Annual Crop',
    'Forest',
    'Herbaceous Vegetation',
    'Highway',
    'Industrial Buildings',
    'Pasture',
    'Permanent Crop',
    'Residential Buildings',
    'River',
    'Sea & Lake',
]
CASHEW_CLASSES = [
    'no data',
    'well-managed plantation',
    'poorly-managed plantation',
    'non-plantation',
    'residential',
    'background',
    'uncertain',
]
SA_CROP_CLASSES = [
    'No Data',
    'Lucerne/Medics',
    'Planted pastures (perennial)',
    'Fallow',
    'Wine grapes',
    'Weeds',
    'Small grain grazing',
    'Wheat',
    'Canola',
    'Rooibos',
]
CASHEW_DATES = ['2019-11-10', '2019-12-05', '2020-01-04', '2020-03-14']

# Task: benchmark folder, task folder, label type, classes, native size, dtype.
TASKS: dict[str, dict[str, Any]] = {
    'm-bigearthnet': {
        'benchmark': 'classification_v1.0',
        'folder': 'm-bigearthnet',
        'label': 'multilabel',
        'num_classes': 43,
        'size': 120,
        'dtype': 'float32',
    },
    'm-so2sat': {
        'benchmark': 'classification_v1.0',
        'folder': 'm-so2sat',
        'label': 'multiclass',
        'num_classes': 17,
        'size': 32,
        'dtype': 'float32',
    },
    'm-eurosat': {
        'benchmark': 'classification_v1.0',
        'folder': 'm-eurosat',
        'label': 'multiclass',
        'num_classes': 10,
        'size': 64,
        'dtype': 'int16',
    },
    'm-brick-kiln': {
        'benchmark': 'classification_v1.0',
        'folder': 'm-brick-kiln',
        'label': 'multiclass',
        'num_classes': 2,
        'size': 64,
        # Not stated by the converter (it keeps the source array's dtype).
        'dtype': 'float32',
    },
    'm-cashew-plantation': {
        'benchmark': 'segmentation_v1.0',
        'folder': 'm-cashew-plant',
        'label': 'segmentation',
        'num_classes': 7,
        'size': 256,
        'dtype': 'float32',
        'mask_dtype': 'int64',
    },
    'm-SA-crop-type': {
        'benchmark': 'segmentation_v1.0',
        'folder': 'm-SA-crop-type',
        'label': 'segmentation',
        'num_classes': 10,
        'size': 256,
        'dtype': 'int16',
        'mask_dtype': 'int16',
    },
}

#: Image side written when ``size`` is None: the native sizes scaled down.
DEFAULT_SIZES = {
    'm-bigearthnet': 24,
    'm-so2sat': 16,
    'm-eurosat': 16,
    'm-brick-kiln': 16,
    'm-cashew-plantation': 32,
    'm-SA-crop-type': 32,
}

PARTITIONS = (
    '0.01x_train',
    '0.02x_train',
    '0.05x_train',
    '0.10x_train',
    '0.20x_train',
    '0.50x_train',
    '1.00x_train',
)

STATS_FIELDS = (
    'min',
    'max',
    'mean',
    'std',
    'median',
    'percentile_0_1',
    'percentile_1',
    'percentile_5',
    'percentile_95',
    'percentile_99',
    'percentile_99_9',
)


class _Pickled:
    """Stand-in for a GEO-Bench class: pickles as ``<module>.<name>`` + __dict__."""

    def __init__(self, **state: Any) -> None:
        self.__dict__.update(state)


_MODULES = ('geobench', 'geobench.dataset', 'geobench.label', 'geobench.task')
_CLASSES: dict[tuple[str, str], type] = {}


def _cls(module: str, name: str) -> type:
    key = (module, name)
    if key not in _CLASSES:
        _CLASSES[key] = type(
            name, (_Pickled,), {'__module__': module, '__qualname__': name}
        )
    return _CLASSES[key]


@contextlib.contextmanager
def _geobench_modules() -> Iterator[None]:
    """Make the stand-in classes importable by pickle under GEO-Bench's names."""
    saved = {name: sys.modules.get(name) for name in _MODULES}
    try:
        for name in _MODULES:
            sys.modules[name] = ModuleType(name)
        for (module, cls_name), cls in _CLASSES.items():
            setattr(sys.modules[module], cls_name, cls)
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _s2_info(row: int) -> _Pickled:
    name, alt_names, resolution, wavelength = S2_13[row]
    return _cls('geobench.dataset', 'Sentinel2')(
        name=name,
        alt_names=alt_names,
        spatial_resolution=resolution,
        wavelength=wavelength,
    )


def _rgb_info(name: str, wavelength: float) -> _Pickled:
    return _cls('geobench.dataset', 'SpectralBand')(
        name=name,
        alt_names=(name.lower(),),
        spatial_resolution=10,
        wavelength=wavelength,
    )


def _cloud_info(alt_names: tuple[str, ...]) -> _Pickled:
    return _cls('geobench.dataset', 'CloudProbability')(
        name='Cloud Probability', alt_names=alt_names, spatial_resolution=10
    )


def channels(task: str, published: bool = True) -> list[tuple[_Pickled, str]]:
    """Band info and physical content of every channel, in storage order.

    Args:
        task: one of :data:`TASKS`.
        published: the metadata of the published files (True) or of GEO-Bench's
            corrected converters (False); only m-eurosat and m-brick-kiln differ.

    Returns:
        ``(band_info, physical band)`` per channel; the physical band is a key of
        :data:`LEVEL`, ``'S1:<name>'`` for Sentinel-1.
    """
    all_s2 = list(range(13))
    no_b10 = [i for i in all_s2 if i != 10]
    if task == 'm-bigearthnet':
        return [(_s2_info(i), S2_PHYSICAL[i]) for i in no_b10]
    if task == 'm-so2sat':
        s1 = [
            (
                _cls('geobench.dataset', 'Sentinel1')(
                    name=name, alt_names=(), spatial_resolution=10, wavelength=None
                ),
                f'S1:{name}',
            )
            for name in S1_8
        ]
        return (
            s1
            + [(_s2_info(i), S2_PHYSICAL[i]) for i in (1, 2, 3, 4, 5, 6, 7, 8)]
            + [(_s2_info(i), S2_PHYSICAL[i]) for i in (11, 12)]
        )
    if task == 'm-eurosat':
        physical = [S2_PHYSICAL[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8)]
        rows = all_s2 if published else [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8]
        return [(_s2_info(r), p) for r, p in zip(rows, physical, strict=True)]
    if task == 'm-brick-kiln':
        physical = [S2_PHYSICAL[i] for i in (0, 1, 2, 3, 4, 6, 8, 7, 11, 12)]
        physical += ['TCI_R', 'TCI_G', 'TCI_B']
        if published:
            infos = [_s2_info(i) for i in all_s2]
        else:
            infos = [_s2_info(i) for i in (0, 1, 2, 3, 4, 6, 8, 7, 11, 12)]
            infos += [
                _rgb_info('Red', 0.665),
                _rgb_info('Green', 0.56),
                _rgb_info('Blue', 0.49),
            ]
        return list(zip(infos, physical, strict=True))
    if task == 'm-cashew-plantation':
        return [(_s2_info(i), S2_PHYSICAL[i]) for i in no_b10] + [
            (_cloud_info(('CPL', 'CLD')), 'CLOUD')
        ]
    if task == 'm-SA-crop-type':
        return [(_s2_info(i), S2_PHYSICAL[i]) for i in no_b10] + [
            (_cloud_info(('CPL', 'CLM')), 'CLOUD')
        ]
    raise ValueError(f'unknown task {task!r}; expected one of {list(TASKS)}')


def _pixels(
    rng: np.random.Generator, physical: str, size: int, task: str, dtype: str
) -> np.ndarray:
    if physical.startswith('S1:'):
        values = rng.normal(0.0, 0.2, (size, size))
    else:
        level = LEVEL[physical]
        values = np.clip(rng.normal(level, 0.2 * level + 1, (size, size)), 0, None)
        if physical.startswith('TCI') or physical == 'CLOUD':
            values = np.clip(np.round(values), 0, 255 if physical != 'CLOUD' else 100)
        elif task == 'm-so2sat':
            values = values / 10_000  # So2Sat LCZ42 stores reflectance
        elif np.dtype(dtype).kind in 'iu':
            values = np.round(values)
    return values.astype(dtype)


def _sample_name(task: str, index: int) -> str:
    if task == 'm-brick-kiln':
        return f'examples_{index // 3}_{index % 3}'
    if task == 'm-cashew-plantation':
        return f'sample_{index}'
    if task == 'm-SA-crop-type':
        return f'ref_south_africa_crops_competition_v1_train_labels_{index:04d}_0'
    return f'id_{index:04d}'


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'wb') as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_sample(
    path: Path,
    bands: list[tuple[str, np.ndarray, dict[str, Any]]],
    label: Any,
    is_band_label: bool,
) -> None:
    """Write one sample the way geobench's ``write_sample_hdf5`` does."""
    attr_dict: dict[str, Any] = {}
    if not is_band_label:
        attr_dict['label'] = label
    order = []
    tmp = path.with_name(f'.{path.name}.tmp')
    with h5py.File(tmp, 'w') as fp:
        for descriptor, data, attrs in bands:
            fp.create_dataset(name=descriptor, data=data)
            attr_dict[descriptor] = attrs
            order.append(descriptor)
        attr_dict['bands_order'] = order
        with _geobench_modules():
            fp.attrs['pickle'] = str(pickle.dumps(attr_dict, protocol=4))
    os.replace(tmp, path)


def _stats(values: np.ndarray) -> dict[str, float]:
    """GEO-Bench's ``compute_stats`` over every value."""
    values = values.astype(np.float64).ravel()
    q = np.percentile(values, [0.1, 1, 5, 50, 95, 99, 99.9])
    numbers = [
        values.min(),
        values.max(),
        values.mean(),
        values.std(),
        q[3],
        q[0],
        q[1],
        q[2],
        q[4],
        q[5],
        q[6],
    ]
    return {k: float(v) for k, v in zip(STATS_FIELDS, numbers, strict=True)}


def write_task(
    root: Path,
    task: str,
    samples_per_split: int = 4,
    size: int | None = None,
    seed: int = 0,
    *,
    published: bool = True,
    so2sat_stats_scale: float = 10_000.0,
) -> Path:
    """Write one GEO-Bench v1.0 task under *root* and return its folder.

    Args:
        root: the GEO-Bench root (it receives ``classification_v1.0/...`` or
            ``segmentation_v1.0/...``).
        task: one of :data:`TASKS`.
        samples_per_split: samples in each of train, valid and test.
        size: image side in pixels; None for :data:`DEFAULT_SIZES`.
        seed: random seed; the same arguments write the same files.
        published: write m-eurosat and m-brick-kiln with the band metadata of the
            published files (True) or of the corrected converters (False).
        so2sat_stats_scale: factor applied to the m-so2sat band statistics
            (10 000 as reported for the published file; 1 writes statistics in
            the pixels' reflectance units).

    Returns:
        The task folder.

    Raises:
        ValueError: for an unknown task or a non-positive size or sample count.
    """
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; expected one of {list(TASKS)}')
    if samples_per_split < 1:
        raise ValueError(f'samples_per_split must be >= 1, got {samples_per_split}')
    spec = TASKS[task]
    size = DEFAULT_SIZES[task] if size is None else size
    if size < 1:
        raise ValueError(f'size must be positive, got {size}')
    folder = Path(root) / spec['benchmark'] / spec['folder']
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    layout = channels(task, published)
    is_segmentation = spec['label'] == 'segmentation'
    transform = affine.Affine(10.0, 0.0, 331040.0, 0.0, -10.0, -3714560.0)
    crs = CRS.from_epsg(32634)

    names: dict[str, list[str]] = {'train': [], 'valid': [], 'test': []}
    accumulated: dict[str, list[np.ndarray]] = {}
    index = 0
    for split, split_names in names.items():
        for _ in range(samples_per_split):
            name = _sample_name(task, index)
            index += 1
            date = None
            if task == 'm-cashew-plantation':
                date = datetime.date.fromisoformat(
                    CASHEW_DATES[int(rng.integers(len(CASHEW_DATES)))]
                )
            bands = []
            for info, physical in layout:
                data = _pixels(rng, physical, size, task, spec['dtype'])
                descriptor = info.name if date is None else f'{info.name}_{date}'
                attrs = {
                    'date': date,
                    'date_id': date,
                    'spatial_resolution': 10,
                    'band_info': info,
                    'meta_info': None,
                    'transform': transform if is_segmentation else None,
                    'crs': crs if is_segmentation else None,
                }
                bands.append((descriptor, data, attrs))
                if split == 'train':
                    accumulated.setdefault(info.name, []).append(data)
            label: Any
            if is_segmentation:
                mask = rng.integers(0, spec['num_classes'], (size, size))
                mask = mask.astype(spec['mask_dtype'])
                label_info = _cls('geobench.dataset', 'SegmentationClasses')(
                    name='label',
                    alt_names=(),
                    spatial_resolution=10,
                    n_classes=spec['num_classes'],
                    _class_names=None,
                )
                bands.append(
                    (
                        'label',
                        mask,
                        {
                            'date': None,
                            'date_id': None,
                            'spatial_resolution': 10,
                            'band_info': label_info,
                            'meta_info': None,
                            'transform': transform,
                            'crs': crs,
                        },
                    )
                )
                label = mask
            elif spec['label'] == 'multilabel':
                label = (rng.random(spec['num_classes']) < 0.15).astype(np.int64)
                label[int(rng.integers(spec['num_classes']))] = 1
            else:
                label = int(rng.integers(spec['num_classes']))
            if split == 'train':
                accumulated.setdefault('label', []).append(np.asarray(label))
            _write_sample(folder / f'{name}.hdf5', bands, label, is_segmentation)
            split_names.append(name)

    stats = {
        key: _stats(np.concatenate([v.ravel() for v in values]))
        for key, values in accumulated.items()
    }
    if task == 'm-so2sat':
        for key, entry in stats.items():
            if key != 'label':
                stats[key] = {k: v * so2sat_stats_scale for k, v in entry.items()}
    _atomic_write(
        folder / 'band_stats.json', json.dumps(stats, indent=4, sort_keys=True).encode()
    )

    _atomic_write(
        folder / 'default_partition.json', json.dumps(names, indent=2).encode()
    )
    for partition in PARTITIONS:
        fraction = float(partition.split('x')[0])
        # GEO-Bench keeps int(n * fraction) samples; at least one here, since the
        # test tasks are tiny.
        count = max(1, int(len(names['train']) * fraction))
        train = [str(n) for n in rng.choice(names['train'], count, replace=False)]
        content = {'train': train, 'valid': names['valid'], 'test': names['test']}
        _atomic_write(
            folder / f'{partition}_partition.json',
            json.dumps(content, indent=2).encode(),
        )

    _write_task_specs(folder, task, spec, layout, size)
    return folder


def _write_task_specs(
    folder: Path,
    task: str,
    spec: dict[str, Any],
    layout: list[tuple[_Pickled, str]],
    size: int,
) -> None:
    """``task_specs.pkl``, as GEO-Bench's ``TaskSpecifications.save`` writes it."""
    if spec['label'] == 'segmentation':
        label_type = _cls('geobench.dataset', 'SegmentationClasses')(
            name='label',
            alt_names=(),
            spatial_resolution=10,
            n_classes=spec['num_classes'],
            _class_names=None,
        )
    elif spec['label'] == 'multilabel':
        label_type = _cls('geobench.label', 'MultiLabelClassification')(
            n_classes=spec['num_classes'], class_name=None
        )
    else:
        classes = EUROSAT_CLASSES if task == 'm-eurosat' else None
        label_type = _cls('geobench.label', 'Classification')(
            n_classes=spec['num_classes'], _class_names=classes
        )
    task_specs = _cls('geobench.task', 'TaskSpecifications')(
        dataset_name=spec['folder'],
        benchmark_name=spec['benchmark'],
        patch_size=(size, size),
        n_time_steps=1,
        bands_info=[info for info, _ in layout],
        label_type=label_type,
        spatial_resolution=10,
    )
    with _geobench_modules():
        data = pickle.dumps(task_specs, protocol=4)
    _atomic_write(folder / 'task_specs.pkl', data)


def write_all(root: Path, samples_per_split: int = 4, seed: int = 0) -> dict[str, Path]:
    """Write all six tasks under *root*.

    Args:
        root: the GEO-Bench root.
        samples_per_split: samples in each split.
        seed: random seed.

    Returns:
        The folder of every task.
    """
    return {
        task: write_task(root, task, samples_per_split, seed=seed) for task in TASKS
    }


def main() -> None:
    """Write the six tasks (or some) under --root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, required=True)
    parser.add_argument('--task', choices=list(TASKS), nargs='*', default=list(TASKS))
    parser.add_argument('--samples-per-split', type=int, default=4)
    parser.add_argument('--size', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for task in args.task:
        folder = write_task(
            args.root, task, args.samples_per_split, args.size, args.seed
        )
        print(f'{task}: {folder}')


if __name__ == '__main__':
    main()
