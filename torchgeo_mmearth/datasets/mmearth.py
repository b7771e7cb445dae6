"""MMEarth dataset: a fast, faithful reader of the published MMEarth HDF5 corpora."""

import functools
import json
import operator
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import deflate
import h5py
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset

from .._panels import draw_panel, has_data, shown_bands
from ..modalities import (
    DATA_VERSIONS,
    IGNORE_INDEX,
    MODALITIES,
    S2_TYPES,
    VERSION_ATTRIBUTE,
    Kind,
    Level,
    band_statistics,
    check_data_version,
    data_version,
    resolve_modality_bands,
    split_data_version,
)
from ..transforms import MMEarthNormalize
from .utils import percentile_stretch

__all__ = ['DEMO_ROOT', 'MMEarth']

#: Folder holding the demo corpus packaged with torchgeo-mmearth (subset
#: ``'MMEarthDemo'``): 56 tiles of real BigEarthNet Sentinel-2 and Sentinel-1.
DEMO_ROOT = Path(__file__).resolve().parents[1] / 'data' / 'demo'

# Folder names of corpora written by the corpus builder (and of the published ones).
_CORPUS_FOLDER = re.compile(r'data_[A-Za-z0-9][A-Za-z0-9._-]*')

Sample = dict[str, Any]

# HDF5 handles must not cross a fork: close every open one before the process forks
# (DataLoader workers then open their own) and reopen lazily afterwards.
_OPEN_DATASETS: 'weakref.WeakSet[MMEarth]' = weakref.WeakSet()


def _close_before_fork() -> None:
    for dataset in list(_OPEN_DATASETS):
        dataset.close()


os.register_at_fork(before=_close_before_fork)

# Official colours of the Dynamic World and ESA WorldCover legends.
_CLASS_COLORS = {
    'dynamic_world': (
        '#419bdf',
        '#397d49',
        '#88b053',
        '#7a87c6',
        '#e49635',
        '#dfc35a',
        '#c4281b',
        '#a59b8f',
        '#b39fe1',
    ),
    'esa_worldcover': (
        '#006400',
        '#ffbb22',
        '#ffff4c',
        '#f096ff',
        '#fa0000',
        '#b4b4b4',
        '#f0f0f0',
        '#0064c8',
        '#0096a0',
        '#00cf75',
        '#fae6a0',
    ),
}


class _TileReader:
    """Reads the tile at one row of one HDF5 dataset.

    The published corpora store every dataset gzip-compressed with one chunk per
    tile. For that layout the compressed chunk is read directly and inflated with
    libdeflate, which skips HDF5's selection and filter machinery, inflates about
    2x faster than zlib and returns a writable buffer that needs no further copy;
    any other layout (contiguous, other filters) is read through h5py.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.tile_shape: tuple[int, ...] = dataset.shape[1:]
        self.dtype = np.dtype(dataset.dtype)
        self.nbytes = (
            int(np.prod(self.tile_shape, dtype=np.int64)) * self.dtype.itemsize
        )
        self.direct = _is_gzip_per_tile(dataset)

    def __call__(self, row: int) -> np.ndarray:
        """Return the tile at *row* as a new, writable array in native byte order."""
        if not self.direct:
            return np.asarray(self.dataset[row])
        filter_mask, chunk = self.dataset.id.read_direct_chunk(
            (row,) + (0,) * len(self.tile_shape)
        )
        if filter_mask & 1:  # bit 0 set: HDF5 skipped the deflate filter
            chunk = bytearray(chunk)  # writable, like the inflated buffer
        else:
            chunk = deflate.zlib_decompress(chunk, self.nbytes)
        array = np.frombuffer(chunk, dtype=self.dtype).reshape(self.tile_shape)
        if not self.dtype.isnative:
            array = array.astype(self.dtype.newbyteorder('='))
        return array


def _is_gzip_per_tile(dataset: h5py.Dataset) -> bool:
    """Whether a dataset is deflate-compressed, alone, with one chunk per tile."""
    if dataset.chunks != (1, *dataset.shape[1:]):
        return False
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    return filters == [h5py.h5z.FILTER_DEFLATE]


class MMEarth(NonGeoDataset):
    """MMEarth: the multi-modal pretraining corpora of MP-MAE.

    `MMEarth <https://vishalned.github.io/mmearth/>`__ pairs 1.2 million Sentinel-2
    tiles, sampled uniformly across the world's biomes, with Sentinel-1, elevation,
    canopy height, land cover, climate, biome, ecoregion, location and date, all
    aligned by location and time.

    Subsets (folder under *root*; tile size):

    * ``MMEarth``: ``data_1M_v001``, 1.2 M tiles of 128 x 128 px at 10 m
    * ``MMEarth64``: ``data_1M_v001_64``, the same tiles center-cropped to 64 x 64 px
    * ``MMEarth100k``: ``data_100k_v001``, 100 k tiles of 128 x 128 px
    * ``MMEarthDemo``: ``data_bigearthnet_demo``, 56 tiles of 64 x 64 px of real
      BigEarthNet Sentinel-2 L2A and Sentinel-1, packaged with torchgeo-mmearth
      (read from :data:`DEMO_ROOT` unless *root* holds the folder)
    * any corpus folder name ``data_<name>`` under *root*, such as those written
      by :func:`torchgeo_mmearth.corpus.build_corpus`

    Each folder holds ``<folder>.h5`` and the ``_band_stats.json``, ``_splits.json``
    and ``_tile_info.json`` files, as published. The tile size is read from the file
    (:attr:`tile_size`).

    Two releases of the data exist (:data:`~torchgeo_mmearth.modalities.DATA_VERSIONS`):
    v001, the published folders above, and v1.0, which stores the no-data of ESA
    WorldCover as 0 instead of 255 and of ERA5 as NaN instead of ``+inf``. Both read
    correctly. The three published subsets are found in the folder of either
    release: the v001 name, or the same name with the release spelled ``v1.0``,
    ``v1_0``, ``v1-0`` or ``v100`` (``data_1M_v1.0_64``, ...); with folders of both
    releases under *root*, *version* chooses. :attr:`version` is the release of the
    file: *version* when given, else the file's ``version`` root attribute (which the
    corpus builder writes), else the release the folder name states (``v001`` or a
    v1.0 spelling), else None (unknown). Pass it to
    :class:`~torchgeo_mmearth.transforms.MMEarthNormalize`, which flags that
    release's no-data placeholders (every release's for None).

    Samples follow TorchGeo/Kornia key conventions: ``image_<modality>`` for
    continuous rasters (``(C, H, W)``), ``mask_<modality>`` for class maps
    (``(1, H, W)``) and plain keys for image-level vectors (``era5``, ``lat``,
    ``lon``, ``month``: ``(C,)``) and classes (``biome``, ``eco_region``: a scalar
    class index). Which of these are pixel- or image-level pretext targets, their
    kind and channel count is given by :data:`torchgeo_mmearth.modalities.MODALITIES`
    for each key. Every sample also has ``s2_type`` (0 = L1C, 1 = L2A) and
    ``tile_id``.

    Samples hold the raw stored values and dtypes (uint16 Sentinel-2 digital
    numbers, int8 canopy height, uint8 class codes, ...), so that DataLoader
    workers move as few bytes as possible; image-level classes are class indices.
    :class:`~torchgeo_mmearth.transforms.MMEarthNormalize`, built from
    :attr:`band_stats` and :attr:`modality_bands`, makes them model-ready: no-data
    becomes NaN in continuous rasters and vectors and
    :data:`~torchgeo_mmearth.modalities.IGNORE_INDEX` (-1) in class maps and
    classes, continuous values are z-scored with the corpus statistics (Sentinel-2
    with the L1C or L2A statistics of its tile) and class codes become class
    indices. Apply it to a sample, or to a batch on the device::

        dataset = MMEarth(root, 'MMEarth64')
        normalize = MMEarthNormalize(
            dataset.band_stats, dataset.modality_bands, version=dataset.version
        )
        sample = normalize(dataset[0])

    or pass it as *transforms*
    (``MMEarthNormalize('<folder>/<folder>_band_stats.json', modality_bands)``
    also reads the statistics from the file), or use
    :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`, which normalises each
    batch on the device.

    This reader fixes the reference implementation's no-data bugs (Sentinel-2 zeros
    are flagged before normalisation, ESA WorldCover tree cover is kept, the int8
    and int16 placeholders are recognised); see :mod:`torchgeo_mmearth.modalities`.

    If you use this dataset in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    subsets: ClassVar[dict[str, str]] = {
        'MMEarth': 'data_1M_v001',
        'MMEarth64': 'data_1M_v001_64',
        'MMEarth100k': 'data_100k_v001',
        'MMEarthDemo': 'data_bigearthnet_demo',
    }
    splits = ('train', 'val', 'test')

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data',
        subset: str = 'MMEarth',
        split: str = 'train',
        modalities: Sequence[str] | None = None,
        modality_bands: Mapping[str, Sequence[str]] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        version: str | None = None,
    ) -> None:
        """Initialize a new MMEarth instance.

        Args:
            root: directory that holds the subset folder.
            subset: 'MMEarth', 'MMEarth64', 'MMEarth100k', 'MMEarthDemo', or the
                name of a corpus folder ``data_<name>`` under *root*.
            split: 'train', 'val' or 'test', as listed in the splits file.
            modalities: modalities to load; None loads the 12 pretext modalities of
                MP-MAE (:data:`~torchgeo_mmearth.modalities.PRETEXT_MODALITIES`).
            modality_bands: bands per modality, in the order wanted in the samples;
                unlisted modalities get their default bands (the 12 MP-MAE input
                bands for sentinel2, all bands otherwise).
            transforms: a function/transform that takes a raw sample and returns a
                transformed version, e.g.
                :class:`~torchgeo_mmearth.transforms.MMEarthNormalize`.
            version: the release of the data, ``'v001'`` or ``'v1.0'``: chooses the
                folder of a published subset when *root* holds both, and overrides
                the release the file records or its name states; None detects it.

        Raises:
            DatasetNotFoundError: if the subset folder, its HDF5 file, band statistics
                or splits file is missing.
            ValueError: for an unknown subset, split, modality, band or release, a
                split missing from the splits file, band statistics that do not
                match the HDF5 file, a file that records an unknown release, or
                several folders of a published subset that *version* does not tell
                apart.
            OSError: if the HDF5 file is corrupt or truncated.
        """
        explicit = None if version is None else check_data_version(version)
        folder = self.subsets.get(subset)
        if folder is None:
            if not _CORPUS_FOLDER.fullmatch(subset):
                raise ValueError(
                    f'Unknown subset {subset!r}; valid subsets are '
                    f'{list(self.subsets)}, or the name of a corpus folder '
                    "'data_<name>' under root"
                )
            folder = subset
        if split not in self.splits:
            raise ValueError(f'Unknown split {split!r}; valid splits are {self.splits}')
        if subset == 'MMEarthDemo' and not (Path(root) / folder).is_dir():
            # The demo corpus ships inside the package: usable with any root.
            root = DEMO_ROOT
        elif subset in self.subsets:
            folder = _release_folder(Path(root), subset, folder, explicit)
        self.root = root
        self.subset = subset
        self.split = split
        self.modality_bands = resolve_modality_bands(modalities, modality_bands)
        self.modalities = tuple(self.modality_bands)
        self.transforms = transforms

        self.directory = Path(root) / folder
        stem = self.directory / folder
        self.h5_path = stem.with_name(stem.name + '.h5')
        self.stats_path = stem.with_name(stem.name + '_band_stats.json')
        self.splits_path = stem.with_name(stem.name + '_splits.json')
        self.tile_info_path = stem.with_name(stem.name + '_tile_info.json')
        self._verify()

        self._h5: h5py.File | None = None
        self._h5_pid = -1
        self._readers: dict[str, _TileReader] = {}
        self._s2_type_by_row: np.ndarray | None = None
        recorded = self._inspect_file()
        #: The release of the data (see the class description); None if unknown.
        self.version: str | None = (
            explicit
            or self._recorded_version(recorded)
            or split_data_version(self.directory.name)[1]
        )
        self.indices = self._load_split()
        self.band_stats = self._load_json(self.stats_path)
        try:
            for name in self.modality_bands:
                for stats_key in MODALITIES[name].stats_keys:
                    band_statistics(self.band_stats, stats_key, name)
        except ValueError as error:
            raise ValueError(f'{self.stats_path}: {error}') from None
        self._plan = _sample_plan(self.modality_bands)

    def __len__(self) -> int:
        """Return the number of tiles in the split.

        Returns:
            Length of the dataset.
        """
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        """Return one tile.

        Args:
            index: index within the split.

        Returns:
            The sample: one entry per modality (keys as in the class description),
            ``s2_type`` and ``tile_id``.

        Raises:
            OSError: naming the file, dataset and row when a tile cannot be read.
        """
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Return several tiles at once.

        PyTorch's DataLoader calls this method, when present, with the indices of a
        whole batch. The result equals ``[self[i] for i in indices]``; reading one
        modality for all tiles in a row only saves Python overhead.

        Args:
            indices: indices within the split.

        Returns:
            One sample per index, as returned by :meth:`__getitem__`.

        Raises:
            OSError: naming the file, dataset and row when a tile cannot be read.
        """
        positions = [operator.index(index) for index in indices]
        rows: list[int] = self.indices[positions].tolist()
        samples: list[Sample] = [{} for _ in rows]
        for name, key, one_hot, selection in self._plan:
            tiles = self._read(name, rows)
            for sample, tile in zip(samples, tiles, strict=True):
                sample[key] = _sample_entry(tile, one_hot, selection)
        records = self._read('metadata', rows)
        for sample, row, record in zip(samples, rows, records, strict=True):
            tile_id, s2_type = self._metadata(row, record)
            sample['s2_type'] = torch.tensor(s2_type)
            sample['tile_id'] = tile_id

        if self.transforms is not None:
            samples = [self.transforms(sample) for sample in samples]
        return samples

    def stored_tile(self, index: int) -> dict[str, Any]:
        """Return one tile as stored: what shards keep of it.

        Args:
            index: index within the split.

        Returns:
            Every selected modality as stored in the HDF5 file (all its bands, raw
            dtype, one-hot vectors as vectors) under its modality name, plus
            ``tile_id``, ``s2_type`` (0 = L1C, 1 = L2A, as in the samples) and
            ``row`` (the tile's row in the HDF5 file).

        Raises:
            OSError: naming the file, dataset and row when a tile cannot be read.
        """
        row = int(self.indices[operator.index(index)])
        tile: dict[str, Any] = {
            name: self._read(name, [row])[0] for name in self.modality_bands
        }
        tile_id, s2_type = self._metadata(row, self._read('metadata', [row])[0])
        tile.update(tile_id=tile_id, s2_type=s2_type, row=row)
        return tile

    @functools.cached_property
    def _display_normalizer(self) -> MMEarthNormalize:
        """The normalisation :meth:`plot` applies to raw samples, built on first use."""
        return MMEarthNormalize(
            self.band_stats, self.modality_bands, version=self.version
        )

    def close(self) -> None:
        """Close this process's HDF5 handle; the next read reopens it."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._readers = {}
        _OPEN_DATASETS.discard(self)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the HDF5 handle (DataLoader workers started by spawn).

        Returns:
            The instance state without open handles.
        """
        state = self.__dict__.copy()
        state.update(_h5=None, _h5_pid=-1, _readers={})
        return state

    def _verify(self) -> None:
        """Check that the subset folder and the files the reader needs exist."""
        # tile_info.json is only read for corpora whose HDF5 metadata lacks S2_type.
        paths = (self.h5_path, self.stats_path, self.splits_path)
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            error = DatasetNotFoundError(self)
            error.args = (f'{error} Missing: {", ".join(missing)}',)
            raise error

    def _file(self) -> h5py.File:
        """This process's HDF5 handle, opened on first use."""
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5 = None
            self._readers = {}
            self._h5 = self._open()
            self._h5_pid = os.getpid()
            _OPEN_DATASETS.add(self)
        return self._h5

    def _open(self) -> h5py.File:
        try:
            # Default locking: HDF5 refuses a second handle on the same file with other
            # locking flags in one process. On file systems without locks, users set
            # HDF5_USE_FILE_LOCKING=FALSE.
            return h5py.File(self.h5_path, 'r')
        except OSError as error:
            raise OSError(
                f'{self.h5_path} is not a readable HDF5 file ({error}); '
                'the download may be incomplete or the file corrupt'
            ) from error

    def _reader(self, name: str) -> _TileReader:
        file = self._file()
        if name not in self._readers:
            self._readers[name] = _TileReader(file[name])
        return self._readers[name]

    def _read(self, name: str, rows: Sequence[int]) -> list[np.ndarray]:
        """The tiles of dataset *name* at *rows*, as new writable arrays."""
        tiles = []
        row = rows[0] if len(rows) else -1
        try:
            read = self._reader(name)
            for row in rows:
                tiles.append(read(row))
        except (OSError, ValueError, deflate.DeflateError) as error:
            raise OSError(
                f'{self.h5_path}: cannot read row {row} of dataset {name!r} ({error}); '
                'the file may be corrupt or truncated'
            ) from error
        return tiles

    def _metadata(self, row: int, record: np.ndarray) -> tuple[str, int]:
        """Tile id and Sentinel-2 processing level index of one metadata record."""
        tile_id = bytes(record[()][0]).rstrip(b'\0').decode()
        if self._s2_type_by_row is not None:
            return tile_id, int(self._s2_type_by_row[row])
        return tile_id, _s2_type_index(bytes(record[()][1]), self.h5_path, row)

    def _inspect_file(self) -> object:
        """Check that the HDF5 file holds the selected modalities as published.

        Returns:
            The value of the file's ``version`` root attribute, None without one.
        """
        with self._open() as file:
            recorded = file.attrs.get(VERSION_ATTRIBUTE)
            if 'metadata' not in file:
                raise ValueError(f'{self.h5_path} has no "metadata" dataset')
            self.num_tiles = len(file['metadata'])
            tile_sizes = set()
            for name in self.modality_bands:
                modality = MODALITIES[name]
                if name not in file:
                    present = sorted(k for k in file if k != 'metadata')
                    raise ValueError(
                        f'{self.h5_path} has no dataset {name!r}; it holds {present}'
                    )
                dataset = file[name]
                channels = (
                    modality.num_classes if modality.one_hot else len(modality.bands)
                )
                expected_ndim = 4 if modality.level is Level.PIXEL else 2
                if (
                    dataset.ndim != expected_ndim
                    or dataset.shape[0] != self.num_tiles
                    or dataset.shape[1] != channels
                ):
                    raise ValueError(
                        f'{self.h5_path}: dataset {name!r} has shape {dataset.shape}, '
                        f'expected ({self.num_tiles}, {channels}'
                        f'{", S, S" if expected_ndim == 4 else ""})'
                    )
                if dataset.dtype != np.dtype(modality.dtype):
                    raise ValueError(
                        f'{self.h5_path}: dataset {name!r} is {dataset.dtype}, '
                        f'expected {modality.dtype} as published'
                    )
                if expected_ndim == 4:
                    tile_sizes.add(dataset.shape[2:])
            if len(tile_sizes) > 1:
                raise ValueError(
                    f'{self.h5_path}: pixel-level datasets differ in size: {tile_sizes}'
                )
            fields = file['metadata'].dtype.names or ()
            if len(fields) < 2:
                # Merged corpora store only the tile id: take S2_type from tile_info.
                tile_ids = file['metadata'][...][fields[0]] if fields else None
                self._s2_type_by_row = self._s2_types_from_tile_info(tile_ids)
        self.tile_size = tile_sizes.pop()[0] if tile_sizes else None
        return recorded

    def _recorded_version(self, value: object) -> str | None:
        """The release a ``version`` root attribute names (None: no attribute)."""
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        release = data_version(str(text))
        if release is None:
            raise ValueError(
                f'{self.h5_path}: the root attribute {VERSION_ATTRIBUTE!r} is '
                f'{value!r}, which is not an MMEarth data release '
                f'({list(DATA_VERSIONS)}); pass version= to read the file as one'
            )
        return release

    def _s2_types_from_tile_info(self, tile_ids: np.ndarray | None) -> np.ndarray:
        if tile_ids is None:
            raise ValueError(f'{self.h5_path}: "metadata" has no tile id field')
        if not self.tile_info_path.is_file():
            raise ValueError(
                f'{self.h5_path}: "metadata" has no S2_type field, so the processing '
                f'level of each tile must come from {self.tile_info_path}, which is missing'
            )
        tile_info = self._load_json(self.tile_info_path)
        types = np.empty(len(tile_ids), dtype=np.uint8)
        for row, raw_id in enumerate(tile_ids):
            tile_id = bytes(raw_id).rstrip(b'\0').decode()
            if tile_id not in tile_info or 'S2_type' not in tile_info[tile_id]:
                raise ValueError(
                    f'{self.tile_info_path} has no S2_type for {tile_id!r}'
                )
            types[row] = _s2_type_index(
                tile_info[tile_id]['S2_type'].encode(), self.tile_info_path, row
            )
        return types

    def _load_split(self) -> np.ndarray:
        splits = self._load_json(self.splits_path)
        if self.split not in splits:
            raise ValueError(
                f'{self.splits_path} has no split {self.split!r}; it has {list(splits)}'
            )
        indices = np.asarray(splits[self.split], dtype=np.int64)
        if indices.ndim != 1 or (
            len(indices) and (indices.min() < 0 or indices.max() >= self.num_tiles)
        ):
            raise ValueError(
                f'{self.splits_path}: split {self.split!r} must list row indices in '
                f'[0, {self.num_tiles}) of {self.h5_path.name}'
            )
        return indices

    @staticmethod
    def _load_json(path: Path) -> Any:
        try:
            with open(path) as f:
                return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path} is not valid JSON ({error})') from error

    def _is_raw(self, sample: Sample) -> bool:
        """Whether a map stored as integers still has its stored dtype (see plot)."""
        for name in self.modality_bands:
            modality = MODALITIES[name]
            value = sample.get(modality.key)
            stored = _torch_dtype(modality.dtype)
            if (
                modality.level is Level.PIXEL
                and not stored.is_floating_point
                and isinstance(value, torch.Tensor)
                and value.dtype == stored
            ):
                return True
        return False

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample: Sentinel-2 RGB and one panel per other pixel modality.

        Sentinel-1 gets one panel per pass the tile has (ascending, descending),
        other continuous modalities their first band with data. The modalities the
        tile lacks (no finite value, or only the ignore index) are listed in one
        last grey "no data" panel.

        Raw samples are normalised for display with
        :class:`~torchgeo_mmearth.transforms.MMEarthNormalize` (no-data to NaN or the
        ignore index, class codes to class indices); normalised ones are plotted as
        they are. A sample counts as raw when any of its maps stored as integers
        (every pixel-level modality but Sentinel-1) still has its stored dtype, such
        as uint16 Sentinel-2 or uint8 land cover: MMEarthNormalize turns these into
        float32 values and int64 class indices. Sentinel-1, stored as float32,
        looks the same either way (each of its panels is stretched on its own).

        Args:
            sample: a sample as returned by :meth:`__getitem__` (raw), or normalised
                by :class:`~torchgeo_mmearth.transforms.MMEarthNormalize` (for
                instance as the dataset's *transforms*).
            show_titles: whether to show panel titles.
            suptitle: optional figure title.

        Returns:
            The figure.
        """
        if self._is_raw(sample):
            sample = self._display_normalizer(sample)
        panels: list[tuple[str, np.ndarray | None, dict[str, Any]]] = []
        absent: list[str] = []
        for name, bands in self.modality_bands.items():
            modality = MODALITIES[name]
            if modality.level is not Level.PIXEL or modality.key not in sample:
                continue
            data = sample[modality.key].numpy()
            title = name.replace('_', ' ')
            if name == 'sentinel2' and {'B2', 'B3', 'B4'} <= set(bands):
                rgb = data[[bands.index(b) for b in ('B4', 'B3', 'B2')]]
                if has_data(rgb, modality.kind):
                    stretched = percentile_stretch(rgb.transpose(1, 2, 0))
                    panels.append(('sentinel2 RGB', stretched, {}))
                else:
                    absent.append(title)
            elif not has_data(data, modality.kind):
                absent.append(title)
            elif modality.kind is Kind.CATEGORICAL:
                colors = _CLASS_COLORS.get(name)
                cmap = ListedColormap(colors) if colors else plt.get_cmap('tab20')
                options = {'cmap': cmap, 'vmin': 0, 'vmax': modality.num_classes - 1}
                if colors is None:
                    options['vmax'] = max(modality.num_classes - 1, 1)
                panels.append(
                    (title, np.ma.masked_equal(data[0], IGNORE_INDEX), options)
                )
            else:
                for label, channel in shown_bands(name, bands, data):
                    panels.append(
                        (
                            f'{title} {label}',
                            percentile_stretch(data[channel]),
                            {'cmap': 'viridis'},
                        )
                    )

        if absent:
            panels.append(('no data in this tile:\n' + ', '.join(absent), None, {}))
        columns = max(len(panels), 1)
        fig, axes = plt.subplots(1, columns, figsize=(3 * columns, 3.4), squeeze=False)
        for ax, (title, image, options) in zip(axes[0], panels, strict=False):
            draw_panel(ax, image, options)
            if show_titles:
                ax.set_title(title)
        if 'biome' in sample and show_titles:
            biome = int(sample['biome'])
            names = MODALITIES['biome'].class_names
            label = names[biome] if biome != IGNORE_INDEX else 'unknown biome'
            suptitle = f'{suptitle}\n{label}' if suptitle else label
        if suptitle is not None:
            fig.suptitle(suptitle)
        fig.tight_layout()
        return fig


#: Per modality: name, sample key, one-hot flag, channel selection.
_Plan = tuple[tuple[str, str, bool, np.ndarray | None], ...]


def _sample_plan(modality_bands: Mapping[str, Sequence[str]]) -> _Plan:
    """How to turn the stored tiles of each modality into sample entries."""
    return tuple(
        (name, MODALITIES[name].key, MODALITIES[name].one_hot, _band_index(name, bands))
        for name, bands in modality_bands.items()
    )


def _sample_entry(
    tile: np.ndarray, one_hot: bool, selection: np.ndarray | None
) -> torch.Tensor:
    """The sample entry of one stored tile (writable, native byte order).

    One-hot vectors become a class index (the ignore index unless exactly one 1),
    other tiles keep their stored dtype, with their channels selected.
    """
    if one_hot:
        return torch.tensor(_one_hot_index(tile))
    if selection is not None:
        return torch.from_numpy(tile[selection])
    return torch.from_numpy(tile)


def _torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a NumPy dtype name, as ``torch.from_numpy`` gives it."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _band_index(name: str, bands: Sequence[str]) -> np.ndarray | None:
    """Channel indices of *bands*, or None when they are all bands in stored order."""
    modality = MODALITIES[name]
    if modality.one_hot or tuple(bands) == modality.bands:
        return None
    return np.array([modality.bands.index(band) for band in bands])


def _one_hot_index(vector: np.ndarray) -> int:
    """Class index of a one-hot vector; the ignore index unless exactly one 1."""
    if np.count_nonzero(vector) == 1:
        hot = int(vector.argmax())  # the one non-zero, unless it is negative
        if vector[hot] == 1:
            return hot
    return IGNORE_INDEX


def _release_folder(root: Path, subset: str, folder: str, version: str | None) -> str:
    """The folder under *root* of a published subset, of either release.

    Args:
        root: the dataset root.
        subset: the subset name, for errors.
        folder: the subset's v001 folder name.
        version: the release asked for, or None.

    Returns:
        The folder of the release asked for; else the one folder of the subset under
        *root*, of any release; else *folder* (which the file check then reports
        missing).

    Raises:
        ValueError: if *root* holds several folders of the subset and *version*
            does not choose one.
    """
    template, _ = split_data_version(folder)
    found: list[tuple[str, str | None]] = []
    if root.is_dir():
        for path in sorted(root.iterdir()):
            name_template, release = split_data_version(path.name)
            if release and name_template == template and path.is_dir():
                found.append((path.name, release))
    chosen = [name for name, release in found if release == version]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen and len(found) <= 1:
        return found[0][0] if found else folder
    raise ValueError(
        f'{root} holds {subset} in several folders: '
        + ', '.join(f'{name} ({release})' for name, release in found)
        + f'; pass version= (one of {list(DATA_VERSIONS)}) to choose, and keep one '
        'folder per release'
    )


def _s2_type_index(value: bytes, path: Path, row: int) -> int:
    level = value.rstrip(b'\0').decode().lower()
    if level not in S2_TYPES:
        raise ValueError(
            f'{path}: row {row} has S2_type {level!r}, expected {S2_TYPES}'
        )
    return S2_TYPES.index(level)
