"""GEO-Bench v1.0: the six downstream tasks of MMEarth, read from GEO-Bench's files.

`GEO-Bench <https://github.com/ServiceNow/geo-bench>`__ (Lacoste et al., 2023,
https://arxiv.org/abs/2306.03831) is the benchmark on which MMEarth
(https://arxiv.org/abs/2405.02771) evaluates its encoders. :class:`GeoBench`
reads the six tasks MMEarth reports directly from GEO-Bench's on-disk format,
without the ``geobench`` package (whose pinned dependencies conflict with
current stacks) and without unpickling anything but plain data.

On-disk format (established from ServiceNow/geo-bench ``geobench/dataset.py``
``write_sample_hdf5``/``load_sample_hdf5``, ``task.py``, ``label.py``,
``make_benchmark/bandstats.py``, ``generate_partitions.py`` and the converters of
the six tasks):

* ``<root>/classification_v1.0/<task>/`` and ``<root>/segmentation_v1.0/<task>/``,
  as ``geobench-download`` unpacks them into ``$GEO_BENCH_DIR``. The folder of
  m-cashew-plantation is ``m-cashew-plant`` in v1.0 (``m-cashew-plantation`` in
  the earlier Zenodo release; both are accepted).
* One ``<sample name>.hdf5`` per sample. Every band is a 2-D dataset (H, W) named
  by its GEO-Bench band name, e.g. ``'08A - Vegetation Red Edge'``, with
  ``_YYYY-MM-DD`` appended when the band has an acquisition date (m-cashew-plant:
  ``'02 - Blue_2019-11-15'``; one date per sample file). The root attribute
  ``pickle`` holds ``str(pickle.dumps(attrs))``: ``attrs['bands_order']`` lists the
  dataset names in channel order; ``attrs[<dataset name>]`` is a dict with the
  band's ``band_info`` (a GEO-Bench ``Sentinel2``/``Sentinel1``/
  ``CloudProbability``/``SpectralBand``/``SegmentationClasses`` object with
  ``name``, ``alt_names``, ``spatial_resolution``, ``wavelength``), ``date``,
  ``date_id``, ``spatial_resolution``, ``meta_info``, ``transform`` (an
  ``affine.Affine``) and ``crs`` (a ``rasterio.crs.CRS`` or string).
* The label: classification tasks store it in ``attrs['label']``: a Python ``int``
  (m-so2sat, m-eurosat, m-brick-kiln) or, for m-bigearthnet, an ``int64`` 0/1
  NumPy vector of the 43 classes. Segmentation tasks store the mask as one more
  band, the dataset ``label`` (H, W) (``int64`` in m-cashew-plant, ``int16`` in
  m-SA-crop-type), listed in ``bands_order`` with a ``SegmentationClasses``
  ``band_info``.
* Pixel dtypes as written by the converters: ``int16`` (m-eurosat,
  m-SA-crop-type), ``float32`` (m-bigearthnet, m-so2sat, m-cashew-plant), the
  source array's dtype (m-brick-kiln). m-so2sat pixels are reflectances (digital
  number / 10 000, as So2Sat LCZ42 publishes them); the others digital numbers.
* ``band_stats.json``: ``{band name (no date): {'min', 'max', 'mean', 'std',
  'median', 'percentile_0_1', ..., 'percentile_99_9'}}`` plus ``'label'``,
  computed on the train split of the default partition.
* ``<partition>_partition.json``: ``{'train': [...], 'valid': [...], 'test':
  [...]}`` sample names, for ``default`` and the label-efficiency partitions
  ``0.01x_train``, ``0.02x_train``, ``0.05x_train``, ``0.10x_train``,
  ``0.20x_train``, ``0.50x_train`` and ``1.00x_train`` (a random
  ``int(n * fraction)`` subset of the default train split; valid and test are
  the default ones).
* ``task_specs.pkl``: a pickled ``TaskSpecifications``. It is **not read**: it
  needs the ``geobench`` package and unpickling it would run code from the file.
  What it holds is taken from :data:`~torchgeo_mmearth.datasets.geobench_tasks.TASKS` and from the sample files.

How bands are chosen. Channels are matched by Sentinel-2 band, never by
position, so B8 and B8A land where the chosen weights expect them (the reference
implementation swapped them, reference issue 8.10). Bands that are not
Sentinel-2 reflectances (m-so2sat's eight Sentinel-1 bands, the cloud
probability of m-cashew-plant and m-SA-crop-type, m-brick-kiln's 8-bit
true-colour channels, the label) are never selected. A band stored at several
dates in one file would be read at its earliest date (the v1.0 files have one
date per file). The published m-eurosat and m-brick-kiln files carry wrong band
names (GEO-Bench README "Known issues", issues #28 and #29): when a file of
these tasks lists exactly the 13 canonical names in canonical order, the
channels are re-labelled by position with their true bands (m-eurosat:
B1-B8, B9, B10, B11, B12, B8A; m-brick-kiln: B1-B5, B7, B8A, B8, B11, B12 and
three true-colour channels); files written by GEO-Bench's corrected converters
are read by name. m-brick-kiln therefore has no B6 or B9, and m-so2sat no B1 or
B9: the default ``fill`` substitutes neighbouring bands (:data:`BRICK_KILN_FILL`,
:data:`~torchgeo_mmearth.transforms.SO2SAT_FILL`).
"""

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset

from ..modalities import (
    GEOBENCH_SENTINEL2_NAMES,
    SENTINEL2_INPUT_BANDS,
    canonical_band_name,
)
from ..transforms import SO2SAT_FILL, remap_bands
from .geobench_metadata import load_metadata
from .geobench_tasks import TASKS, GeoBenchTask, resolve_task
from .utils import percentile_stretch

__all__ = ['BRICK_KILN_FILL', 'GeoBench']

Sample = dict[str, Any]

#: Substitutes for the bands m-brick-kiln lacks (it has no B6, B9 or B10): B6
#: (740 nm) from B7 (783 nm), the neighbouring red-edge band on the same side of
#: the vegetation red edge, and B9 from B8A, as :data:`SO2SAT_FILL` does. This is
#: this package's choice: MMEarth's runs read m-brick-kiln's mislabelled channels
#: by name instead (see the module description).
BRICK_KILN_FILL: Mapping[str, str] = {'B6': 'B7', 'B9': 'B8A'}

#: Band names of the published m-eurosat and m-brick-kiln files, in channel order.
_PUBLISHED_NAMES = tuple(GEOBENCH_SENTINEL2_NAMES)
#: The bands those channels really hold (GEO-Bench README, "Known issues").
_TRUE_CHANNELS = {
    'm-eurosat': (
        *('B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8'),
        *('B9', 'B10', 'B11', 'B12', 'B8A'),
    ),
    'm-brick-kiln': (
        *('B1', 'B2', 'B3', 'B4', 'B5', 'B7', 'B8A', 'B8', 'B11', 'B12'),
        *('TCI_R', 'TCI_G', 'TCI_B'),
    ),
}
# A band_info class of Sentinel-2 reflectances, under any module GEO-Bench used.
_S2_CLASS = 'Sentinel2'
# Band means above this are digital numbers; reflectance means are below ~1.
_REFLECTANCE_LIMIT = 10.0
_DATED = re.compile(r'(?P<name>.+)_(?P<date>\d{4}-\d{2}-\d{2})')
_FLOAT32 = h5py.h5t.py_create(np.dtype(np.float32))
_INT64 = h5py.h5t.py_create(np.dtype(np.int64))


_DEFAULT_FILL: Mapping[str, Mapping[str, str]] = {
    'm-so2sat': SO2SAT_FILL,
    'm-brick-kiln': BRICK_KILN_FILL,
}


def _base_name(key: str) -> str:
    """The band name of an HDF5 dataset name (without its ``_YYYY-MM-DD``)."""
    match = _DATED.fullmatch(key)
    return match['name'] if match else key


def _pickled_class(band_info: Any) -> str:
    name = getattr(type(band_info), 'pickled_as', '')
    return name.rsplit('.', 1)[-1]


class GeoBench(NonGeoDataset):
    """GEO-Bench v1.0: the six tasks MMEarth evaluates on.

    `GEO-Bench <https://github.com/ServiceNow/geo-bench>`__ is a benchmark of
    Earth-observation classification and segmentation tasks, each a modified
    ("m-") version of a public dataset with fixed train/valid/test splits and
    label-efficiency partitions. MMEarth reports six of them:

    ======================= ============ ======= ======= ===========================
    task                    type         classes size    source
    ======================= ============ ======= ======= ===========================
    ``m-bigearthnet``       multi-label  43      120     BigEarthNet (Sentinel-2)
    ``m-so2sat``            multi-class  17      32      So2Sat LCZ42 (Sentinel-2)
    ``m-eurosat``           multi-class  10      64      EuroSAT (Sentinel-2)
    ``m-brick-kiln``        multi-class  2       64      SustainBench brick kilns
    ``m-cashew-plantation`` segmentation 7       256     Benin smallholder cashews
    ``m-SA-crop-type``      segmentation 10      256     South Africa crop types
    ======================= ============ ======= ======= ===========================

    Samples are ``{'image': float32 (C, H, W), 'label': int64 ()}`` (multi-class),
    ``{'image', 'label': int64 (43,) multi-hot}`` (m-bigearthnet) or ``{'image',
    'mask': int64 (H, W)}`` (segmentation). ``image`` holds the raw stored values
    (digital numbers; reflectances for m-so2sat) of *bands*, in that order, at the
    native size: no normalisation, resizing or augmentation (MMEarth's protocol;
    :class:`~torchgeo_mmearth.datamodules.GeoBenchDataModule` z-scores on the
    device with :meth:`normalization_stats`). Bands are matched by Sentinel-2
    band, and the published mislabelled channels of m-eurosat and m-brick-kiln
    are corrected; see :mod:`torchgeo_mmearth.datasets.geobench` for the format
    and the rules.

    Download GEO-Bench v1.0 on a connected machine (``docs/geobench.md``); *root*
    is the folder that holds ``classification_v1.0/`` and ``segmentation_v1.0/``
    (``$GEO_BENCH_DIR``).

    If you use this dataset in your research, please cite the following papers:

    * https://arxiv.org/abs/2306.03831
    * https://arxiv.org/abs/2405.02771
    """

    #: The tasks: name -> type, number of classes, native size, class names.
    tasks: ClassVar[Mapping[str, GeoBenchTask]] = TASKS
    #: Split names (TorchGeo's; ``'val'`` is GEO-Bench's ``'valid'``).
    splits: ClassVar[tuple[str, ...]] = ('train', 'val', 'test')
    #: The partitions GEO-Bench publishes for every task.
    partitions: ClassVar[tuple[str, ...]] = (
        'default',
        '0.01x_train',
        '0.02x_train',
        '0.05x_train',
        '0.10x_train',
        '0.20x_train',
        '0.50x_train',
        '1.00x_train',
    )

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        task: str = 'm-eurosat',
        split: str = 'train',
        partition: str = 'default',
        bands: Sequence[str] | None = None,
        fill: Mapping[str, str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Initialize a new GeoBench instance.

        Args:
            root: the GEO-Bench root (holding ``classification_v1.0/`` and
                ``segmentation_v1.0/``); None for ``$GEO_BENCH_DIR``, or
                ``'data/geobench'`` when that is not set.
            task: one of :attr:`tasks`.
            split: 'train', 'val' (GEO-Bench's 'valid') or 'test'.
            partition: 'default' or a label-efficiency partition such as
                '0.01x_train' (it subsamples the train split only).
            bands: the Sentinel-2 bands of the output channels, in order, in any
                spelling of :func:`~torchgeo_mmearth.modalities.canonical_band_name`
                or GEO-Bench's names; None for the MP-MAE input bands
                (:data:`~torchgeo_mmearth.modalities.SENTINEL2_INPUT_BANDS`).
                Pass ``weights.meta['bands']`` for other weights.
            fill: ``{missing band: band to use instead}``; None for the task's
                default (:data:`~torchgeo_mmearth.transforms.SO2SAT_FILL` for
                m-so2sat, :data:`BRICK_KILN_FILL` for m-brick-kiln, none
                otherwise); ``{}`` to refuse missing bands.
            transforms: a function/transform that takes a sample and returns a
                transformed version.

        Raises:
            DatasetNotFoundError: if the task folder, its partition files or a
                listed sample file is missing.
            ValueError: for an unknown task, split, partition or band, a band the
                task lacks (and *fill* does not substitute), or a malformed
                partition file.
            OSError: if a sample file is corrupt.
        """
        if root is None:
            root = os.environ.get('GEO_BENCH_DIR', 'data/geobench')
        spec = resolve_task(task)
        if split == 'valid':
            split = 'val'
        if split not in self.splits:
            raise ValueError(f'Unknown split {split!r}; valid splits are {self.splits}')
        if isinstance(bands, str):
            raise TypeError(f'bands must be a sequence of band names, got {bands!r}')
        self.root = root
        self.task = spec.name
        self.spec = spec
        self.split = split
        self.partition = partition
        self.transforms = transforms
        self.directory = self._find_directory()
        self.sample_names = self._load_partition()
        self._inspect()
        self._select_bands(bands, fill)
        self._band_stats: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of the task."""
        return self.spec.num_classes

    @property
    def task_type(self) -> str:
        """``'multiclass'``, ``'multilabel'`` or ``'segmentation'``."""
        return self.spec.task_type

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, in label order."""
        return self.spec.class_names

    def __len__(self) -> int:
        """Return the number of samples in the split of the partition.

        Returns:
            Length of the dataset.
        """
        return len(self.sample_names)

    def __getitem__(self, index: int) -> Sample:
        """Return one sample.

        Args:
            index: index within the split.

        Returns:
            ``image`` and ``label`` (classification) or ``mask`` (segmentation).

        Raises:
            OSError: naming the file when it is unreadable or corrupt.
            ValueError: naming the file when it lacks a band or has an invalid
                label.
        """
        path = self._path(self.sample_names[index])
        try:
            with h5py.File(path, 'r') as file:
                sample = self._read(file, path)
        except OSError as error:
            raise OSError(
                f'{path} is not a readable GEO-Bench sample ({error}); the download '
                'may be incomplete or the file corrupt'
            ) from error
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    # -----------------------------------------------------------------------------
    # Set-up

    def _find_directory(self) -> Path:
        benchmark = Path(self.root) / self.spec.benchmark
        for folder in self.spec.folders:
            if (benchmark / folder).is_dir():
                return benchmark / folder
        expected = benchmark / self.spec.folders[0]
        raise self._not_found(
            f'GEO-Bench task folder {expected} not found. Download GEO-Bench v1.0 on '
            'a connected machine (see docs/geobench.md: pip install geobench, then '
            'GEO_BENCH_DIR=<root> geobench-download) and pass root=<root> or set '
            '$GEO_BENCH_DIR.'
        )

    def _not_found(self, detail: str) -> DatasetNotFoundError:
        error = DatasetNotFoundError(self)
        error.args = (f'{error} {detail}',)
        return error

    def _path(self, sample_name: str) -> Path:
        return self.directory / f'{sample_name}.hdf5'

    def _load_partition(self) -> list[str]:
        present = sorted(
            p.name.removesuffix('_partition.json')
            for p in self.directory.glob('*_partition.json')
        )
        if not present:
            raise self._not_found(
                f'{self.directory} has no <partition>_partition.json file; the '
                'download is incomplete.'
            )
        if self.partition not in present:
            raise ValueError(
                f'Unknown partition {self.partition!r} for {self.task}; '
                f'{self.directory} has {present}'
            )
        path = self.directory / f'{self.partition}_partition.json'
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f'{path} is not valid JSON ({error})') from error
        key = 'valid' if self.split == 'val' else self.split
        names = content.get(key) if isinstance(content, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f'{path} must map {key!r} to a list of sample names; it has '
                f'{sorted(content) if isinstance(content, dict) else type(content)}'
            )
        on_disk = {p.name for p in os.scandir(self.directory)}
        missing = [n for n in names if f'{n}.hdf5' not in on_disk]
        if missing:
            raise self._not_found(
                f'{len(missing)} sample file(s) of {path.name} ({key}) are missing '
                f'from {self.directory}, e.g. {missing[0]}.hdf5; the download is '
                'incomplete.'
            )
        return names

    def _metadata(self, file: h5py.File, path: Path) -> dict[str, Any]:
        if 'pickle' not in file.attrs:
            raise OSError(f'{path} has no "pickle" attribute: not a GEO-Bench sample')
        try:
            metadata = load_metadata(file.attrs['pickle'])
        except pickle.UnpicklingError as error:
            raise OSError(f'{path}: unreadable sample metadata ({error})') from error
        if not isinstance(metadata, dict):
            raise OSError(f'{path}: the sample metadata is not a dictionary')
        return metadata

    def _inspect(self) -> None:
        """Read the band layout of the task from one sample file."""
        names = self.sample_names or self._any_sample_name()
        path = self._path(names[0])
        try:
            with h5py.File(path, 'r') as file:
                metadata = self._metadata(file, path)
                keys = list(file.keys())
        except OSError as error:
            raise OSError(
                f'{path} is not a readable GEO-Bench sample ({error}); the download '
                'may be incomplete or the file corrupt'
            ) from error
        order = metadata.get('bands_order', keys)
        stored: list[str] = []
        classes: list[str] = []
        for key in order:
            base = _base_name(key)
            if base.startswith('label') or base in stored:
                continue
            info = (metadata.get(key) or {}).get('band_info')
            stored.append(base)
            classes.append(_pickled_class(info))
        #: GEO-Bench band names of the stored channels, in channel order.
        self.stored_names = tuple(stored)
        true_bands = _TRUE_CHANNELS.get(self.task)
        #: Whether the file's band names were replaced by the true bands.
        self.relabelled = (
            true_bands is not None and self.stored_names == _PUBLISHED_NAMES
        )
        source: list[str] = []
        for i, (base, cls) in enumerate(zip(stored, classes, strict=True)):
            if self.relabelled:
                assert true_bands is not None
                source.append(true_bands[i])
            elif cls == _S2_CLASS and base in GEOBENCH_SENTINEL2_NAMES:
                source.append(GEOBENCH_SENTINEL2_NAMES[base])
            else:
                source.append(base)  # not a Sentinel-2 reflectance: never selected
        #: The band each stored channel holds (Sentinel-2 ``'B1'`` ... ``'B12'``,
        #: otherwise the stored name), in channel order.
        self.source_bands = tuple(source)

    def _any_sample_name(self) -> list[str]:
        """A sample of any split, to inspect the layout when the split is empty."""
        for path in sorted(self.directory.glob('*.hdf5')):
            return [path.stem]
        raise self._not_found(f'{self.directory} holds no .hdf5 sample file.')

    def _select_bands(
        self, bands: Sequence[str] | None, fill: Mapping[str, str] | None
    ) -> None:
        wanted = SENTINEL2_INPUT_BANDS if bands is None else tuple(bands)
        try:
            canonical = tuple(canonical_band_name(b) for b in wanted)
        except ValueError as error:
            raise ValueError(f'bands: {error}') from None
        if not canonical:
            raise ValueError('bands must name at least one band')
        fill = _DEFAULT_FILL.get(self.task, {}) if fill is None else fill
        try:
            index = remap_bands(self.source_bands, canonical, fill)
        except ValueError as error:
            raise ValueError(
                f'{self.task} ({self.directory}): {error}. Its files store '
                f'{list(self.stored_names)}'
                + (
                    ' (published names, relabelled by position as '
                    f'{list(self.source_bands)})'
                    if self.relabelled
                    else ''
                )
            ) from None
        #: The output bands, in channel order (canonical names).
        self.bands = canonical
        #: The substitutes in use (``{missing band: band read instead}``).
        self.fill = {
            band: self.source_bands[i]
            for band, i in zip(canonical, index, strict=True)
            if self.source_bands[i] != band
        }
        #: The Sentinel-2 band each output channel is read from.
        self.channel_bands = tuple(self.source_bands[i] for i in index)
        #: The stored GEO-Bench band name of each output channel (the
        #: band_stats.json key of its statistics).
        self.channel_sources = tuple(self.stored_names[i] for i in index)
        self._reads = tuple(dict.fromkeys(self.channel_sources))

    # -----------------------------------------------------------------------------
    # Reading

    def _read(self, file: h5py.File, path: Path) -> Sample:
        fid = file.id
        datasets: dict[str, list[bytes]] = {}
        for key in fid:  # low-level API: 4x less overhead per band than h5py's
            datasets.setdefault(_base_name(key.decode()), []).append(key)
        first = self._dataset(fid, datasets, self._reads[0], path)
        shape = first.shape
        if len(shape) != 2:
            raise ValueError(
                f'{path}: band {self._reads[0]!r} has shape {shape}, expected (H, W)'
            )
        image = np.empty((len(self.channel_sources), *shape), dtype=np.float32)
        done: dict[str, int] = {}
        for channel, name in enumerate(self.channel_sources):
            if name in done:  # a band read twice (fill): copy it
                image[channel] = image[done[name]]
                continue
            dataset = (
                first if channel == 0 else self._dataset(fid, datasets, name, path)
            )
            if dataset.shape != shape:
                raise ValueError(
                    f'{path}: band {name!r} has shape {dataset.shape}, expected '
                    f'{shape} like {self.channel_sources[0]!r}'
                )
            # HDF5 converts the stored dtype (int16, float32, ...) to float32.
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, image[channel], mtype=_FLOAT32)
            done[name] = channel
        sample: Sample = {'image': torch.from_numpy(image)}
        if self.spec.task_type == 'segmentation':
            sample['mask'] = self._mask(fid, datasets, path, shape)
        else:
            sample['label'] = self._label(self._metadata(file, path), path)
        return sample

    def _dataset(
        self, fid: Any, datasets: Mapping[str, list[bytes]], name: str, path: Path
    ) -> Any:
        """The HDF5 dataset of a band (its earliest date if it has several)."""
        if name not in datasets:
            raise ValueError(
                f'{path} has no band {name!r} (read for the output bands '
                f'{self._outputs_of(name)}); it holds {sorted(datasets)}'
            )
        return h5py.h5d.open(fid, min(datasets[name]))

    def _outputs_of(self, stored_name: str) -> list[str]:
        return [
            band
            for band, source in zip(self.bands, self.channel_sources, strict=True)
            if source == stored_name
        ]

    def _mask(
        self,
        fid: Any,
        datasets: Mapping[str, list[bytes]],
        path: Path,
        shape: tuple[int, ...],
    ) -> torch.Tensor:
        if 'label' not in datasets:
            raise ValueError(
                f'{path} has no "label" band (the segmentation mask); it holds '
                f'{sorted(datasets)}'
            )
        dataset = h5py.h5d.open(fid, min(datasets['label']))
        if dataset.shape != shape or dataset.dtype.kind not in 'iu':
            raise ValueError(
                f'{path}: the mask is {dataset.dtype} {dataset.shape}, expected '
                f'integer classes of shape {shape}'
            )
        mask = np.empty(shape, dtype=np.int64)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, mask, mtype=_INT64)
        if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            raise ValueError(
                f'{path}: mask values span [{mask.min()}, {mask.max()}], expected '
                f'classes in [0, {self.num_classes})'
            )
        return torch.from_numpy(mask)

    def _label(self, metadata: Mapping[str, Any], path: Path) -> torch.Tensor:
        if 'label' not in metadata:
            raise ValueError(f'{path}: the sample metadata has no "label"')
        label = metadata['label']
        if self.spec.task_type == 'multilabel':
            vector = np.asarray(label)
            if (
                vector.shape != (self.num_classes,)
                or vector.dtype.kind not in 'biuf'
                or not np.isin(vector, (0, 1)).all()
            ):
                raise ValueError(
                    f'{path}: label {vector!r} is not a 0/1 vector of '
                    f'{self.num_classes} classes'
                )
            return torch.from_numpy(vector.astype(np.int64))
        value = label.item() if isinstance(label, np.generic) else label
        valid = isinstance(value, int) and not isinstance(value, bool)
        if not (valid and 0 <= value < self.num_classes):
            raise ValueError(
                f'{path}: label {label!r} is not a class index in '
                f'[0, {self.num_classes})'
            )
        return torch.tensor(value, dtype=torch.int64)

    # -----------------------------------------------------------------------------
    # Statistics

    @property
    def band_stats(self) -> dict[str, Any]:
        """The task's ``band_stats.json`` (GEO-Bench's statistics per band name).

        Raises:
            DatasetNotFoundError: if the file is missing.
            ValueError: if it is not valid JSON.
        """
        if self._band_stats is None:
            path = self.directory / 'band_stats.json'
            if not path.is_file():
                raise self._not_found(f'Missing: {path}')
            try:
                content = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f'{path} is not valid JSON ({error})') from error
            if not isinstance(content, dict):
                raise ValueError(f'{path} must hold a JSON object of band statistics')
            self._band_stats = content
        return self._band_stats

    @property
    def stats_scale(self) -> float:
        """Factor that puts ``band_stats.json`` in the units of the pixels.

        1, except for a task whose pixels are reflectances (m-so2sat) while its
        statistics are in digital numbers (any Sentinel-2 mean above 10, which
        no reflectance reaches): 1e-4. MMEarth's ``geobenchdataset.py`` reports
        exactly this for the published m-so2sat files (pixels in 0-1, statistics
        10 000 times larger) and divides the statistics by 10 000; checking the
        values instead of assuming it keeps the normalisation right for files
        whose statistics are already in reflectance.
        """
        if not self.spec.reflectance:
            return 1.0
        means = [
            float(entry['mean'])
            for name, entry in self.band_stats.items()
            if name in GEOBENCH_SENTINEL2_NAMES
            and isinstance(entry, dict)
            and 'mean' in entry
        ]
        return 1e-4 if means and max(means) > _REFLECTANCE_LIMIT else 1.0

    def normalization_stats(self) -> tuple[list[float], list[float]]:
        """GEO-Bench's mean and std of every output channel, in pixel units.

        Each channel gets the statistics of the stored band it is read from (the
        substitute's for a filled band, as MMEarth's runs did), times
        :attr:`stats_scale`. This is MMEarth's normalisation (reference 5.3).

        Returns:
            ``(means, stds)``, one value per output channel.

        Raises:
            DatasetNotFoundError: if ``band_stats.json`` is missing.
            ValueError: if it lacks a band or has a non-positive or non-finite
                statistic.
        """
        stats = self.band_stats
        path = self.directory / 'band_stats.json'
        scale = self.stats_scale
        means: list[float] = []
        stds: list[float] = []
        for name in self.channel_sources:
            entry = stats.get(name)
            if not isinstance(entry, dict) or 'mean' not in entry or 'std' not in entry:
                raise ValueError(
                    f'{path} has no mean and std for {name!r}; it has {sorted(stats)}'
                )
            mean, std = float(entry['mean']), float(entry['std'])
            if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
                raise ValueError(
                    f'{path}: {name!r} has mean {mean} and std {std}; a finite mean '
                    'and a positive std are needed'
                )
            means.append(mean * scale)
            stds.append(std * scale)
        return means, stds

    # -----------------------------------------------------------------------------
    # Plotting

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample: the RGB composite (or the first band) and its label.

        Args:
            sample: a sample returned by :meth:`__getitem__`, optionally with a
                ``prediction`` (class index, multi-hot vector or mask).
            show_titles: whether to show panel titles.
            suptitle: optional figure title.

        Returns:
            The figure.
        """
        image = sample['image'].numpy()
        if {'B4', 'B3', 'B2'} <= set(self.bands):
            rgb = image[[self.bands.index(b) for b in ('B4', 'B3', 'B2')]]
            picture = percentile_stretch(rgb.transpose(1, 2, 0))
            title = 'B4, B3, B2'
        else:
            picture = percentile_stretch(image[0])
            title = self.bands[0]
        panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [
            (title, picture, {'cmap': 'gray'} if picture.ndim == 2 else {})
        ]
        if self.task_type == 'segmentation':
            options = {
                'cmap': 'tab10' if self.num_classes <= 10 else 'tab20',
                'vmin': 0,
                'vmax': max(self.num_classes - 1, 1),
                'interpolation': 'nearest',
            }
            panels.append(('mask', sample['mask'].numpy(), options))
            if 'prediction' in sample:
                panels.append(('prediction', sample['prediction'].numpy(), options))
        fig, axes = plt.subplots(
            1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False
        )
        for ax, (name, data, options) in zip(axes[0], panels, strict=True):
            ax.imshow(data, **options)
            ax.axis('off')
            if show_titles:
                ax.set_title(name)
        if self.task_type != 'segmentation' and show_titles:
            text = f'label: {self._describe(sample["label"])}'
            if 'prediction' in sample:
                text += f'\nprediction: {self._describe(sample["prediction"])}'
            axes[0][0].set_xlabel(text)
            axes[0][0].axis('on')
            axes[0][0].set_xticks([])
            axes[0][0].set_yticks([])
        if suptitle is not None:
            fig.suptitle(suptitle)
        fig.tight_layout()
        return fig

    def _describe(self, label: torch.Tensor) -> str:
        if self.task_type == 'multilabel':
            active = torch.nonzero(label).flatten().tolist()
            return ', '.join(self.class_names[i] for i in active) or 'none'
        return self.class_names[int(label)]
