"""MMEarth as litdata shards: the samples of the HDF5 reader, streamed from disk or S3.

A shard folder, written once by :func:`torchgeo_mmearth.corpus.shard_corpus`
(``torchgeo-mmearth shard``), holds one litdata dataset per split and a manifest::

    <shards>/mmearth_shards.json      corpus name, release of the data, tile size,
                                      stored layout, band statistics, tiles per
                                      split, compression, SHA-256 of every chunk
                                      and index file
    <shards>/train/index.json, *.bin  litdata chunks of the 'train' split
    <shards>/val/...  <shards>/test/...

Each stored item is one tile: the bytes of every modality as stored in the HDF5
file (every band; the dtype, native byte order, and the shape are the manifest's),
its tile id, its Sentinel-2 processing level index and its HDF5 row.
:class:`StreamingMMEarth` turns items into exactly the samples that
``MMEarth`` returns for the same tile. This module needs litdata
(``pip install 'torchgeo-mmearth[streaming]'``); ``torchgeo_mmearth.datasets``
imports it on first use of :class:`StreamingMMEarth`.

Nothing read from a shard folder runs code: the reader accepts only the litdata
serialisers that ``shard`` writes (never litdata's ``pickle``), checked in each
split's ``index.json`` before litdata decodes an item, and it checks each chunk's
SHA-256 against the manifest when it first reads from the chunk.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .._errors import CorruptDataError
from ..modalities import resolve_modality_bands
from .mmearth import _one_hot_index, _sample_plan

# litdata asks PyPI for a newer version of itself in every dataset and conversion:
# no network call that the user did not ask for.
os.environ.setdefault('LITDATA_DISABLE_VERSION_CHECK', '1')
try:
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import PyTreeLoader
except ImportError as _error:  # pragma: no cover - tested without litdata
    raise ImportError(
        f'MMEarth shards need litdata ({_error}): '
        "pip install 'torchgeo-mmearth[streaming]'"
    ) from _error

__all__ = [
    'MANIFEST',
    'SHARD_FORMAT',
    'StreamingMMEarth',
    'check_index',
    'file_sha256',
    'read_manifest',
    'verify_shards',
]

#: Name of the manifest file at the top of a shard folder.
MANIFEST = 'mmearth_shards.json'
#: Value of the manifest's ``format`` entry, and its version. Version 3 added the
#: ``checksums`` entry; version 2 folders are read with a warning, unverified.
SHARD_FORMAT = ('torchgeo-mmearth-shards', 3)
# The earlier version still read: the same items, without checksums.
_UNVERIFIED_VERSION = 2
# litdata serialisers of the items that `shard` writes (the modalities as bytes,
# the tile id as str, the processing level as int, the HDF5 row as a NumPy array
# without header, whose suffix is a dtype number). Anything else, litdata's
# pickle first of all, could run code when decoded: refused.
_SHARD_SERIALIZERS = ('bytes', 'str', 'int')
_NUMPY_SERIALIZER = 'no_header_numpy'

Sample = dict[str, Any]


def _is_remote(path: str) -> bool:
    return '://' in path


def read_manifest(
    input_dir: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read the manifest of a shard folder, local or remote (``s3://...``).

    Args:
        input_dir: the shard folder.
        storage_options: options of the remote store (litdata's, e.g.
            ``{'endpoint_url': ...}``).

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: if the folder has no manifest.
        ValueError: if the manifest is not one of this format (version 2, without
            checksums, is read with a warning).
    """
    location = f'{str(input_dir).rstrip("/")}/{MANIFEST}'
    if _is_remote(str(input_dir)):
        from litdata.streaming.fs_provider import _get_fs_provider

        provider = _get_fs_provider(location, dict(storage_options or {}))
        with tempfile.TemporaryDirectory() as directory:
            local = Path(directory) / MANIFEST
            try:
                provider.download_file(location, str(local))
            except Exception as error:
                raise FileNotFoundError(
                    f'{location}: cannot read the shard manifest ({error}); '
                    "write shards with 'torchgeo-mmearth shard' and upload the "
                    'whole folder'
                ) from error
            text = local.read_text()
    else:
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(
                f'{path} is missing: {input_dir} is not a folder of MMEarth shards '
                "(write one with 'torchgeo-mmearth shard')"
            )
        text = path.read_text()
    try:
        manifest: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f'{location} is not valid JSON ({error})') from error
    if (manifest.get('format'), manifest.get('version')) == (
        SHARD_FORMAT[0],
        _UNVERIFIED_VERSION,
    ):
        warnings.warn(
            f'{location}: version {_UNVERIFIED_VERSION} shards have no checksums, '
            "so their chunks are not verified; convert again with 'torchgeo-mmearth "
            "shard' to have them checked",
            UserWarning,
            stacklevel=2,
        )
    elif (manifest.get('format'), manifest.get('version')) != SHARD_FORMAT:
        raise ValueError(
            f'{location}: format {manifest.get("format")!r} version '
            f'{manifest.get("version")!r}, expected {SHARD_FORMAT[0]!r} version '
            f"{SHARD_FORMAT[1]}; convert the corpus again with 'torchgeo-mmearth "
            "shard'"
        )
    return manifest


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, as ``sha256sum`` prints it.

    Args:
        path: the file.

    Returns:
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def check_index(path: str | os.PathLike[str], location: str) -> None:
    """Refuse a litdata index whose items ``shard`` did not write.

    Called before litdata decodes anything: a shard folder that declares another
    serialiser (litdata's ``pickle`` would run code while decoding) is refused.

    Args:
        path: the local ``index.json`` (for a remote split, litdata's copy).
        location: the index as the user knows it, for the message.

    Raises:
        ValueError: naming *location*, the field and its serialiser.
    """
    try:
        config = json.loads(Path(path).read_text())['config']
        formats = [str(name) for name in config['data_format']]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f'{location} is not the litdata index of MMEarth shards ({error!r})'
        ) from error
    fields = _field_names(config.get('data_spec'), len(formats))
    for field, name in zip(fields, formats, strict=True):
        kind, _, dtype = name.partition(':')
        if name in _SHARD_SERIALIZERS or (
            kind == _NUMPY_SERIALIZER and dtype.isdigit()
        ):
            continue
        raise ValueError(
            f'{location}: field {field!r} uses litdata serializer {name!r}; MMEarth '
            f'shards use only {", ".join(_SHARD_SERIALIZERS)} and '
            f'{_NUMPY_SERIALIZER}:<dtype>, and data from a folder is never '
            "unpickled: refusing to read it (write the shards with 'torchgeo-mmearth "
            "shard')"
        )
    if config.get('item_loader') != 'PyTreeLoader' or config.get('encryption'):
        raise ValueError(
            f'{location}: item loader {config.get("item_loader")!r}, encryption '
            f'{config.get("encryption")!r}; MMEarth shards use PyTreeLoader, no '
            'encryption: refusing to read it'
        )


def _check_split_index(
    path: Path, split_dir: str, checksums: Mapping[str, str]
) -> None:
    """Refuse the index of a split read from *path*: serialisers, then checksum."""
    location = f'{split_dir}/index.json'
    cached = f' (its copy {path})' if _is_remote(split_dir) else ''
    check_index(path, location + cached)
    expected = checksums.get('index.json')
    if expected is not None and file_sha256(path) != expected:
        hint = (
            f'; delete the cache folder {path.parent} to download it again'
            if cached
            else ': the split was changed after the conversion'
        )
        raise ValueError(
            f'{location}{cached} differs from the checksum in {MANIFEST}{hint}'
        )


def _field_names(spec: object, count: int) -> list[str]:
    """The item keys of a litdata index (``data_spec``), or their positions."""
    try:
        _, tree = json.loads(str(spec))
        names = [str(name) for name in json.loads(tree['context'])]
    except (ValueError, TypeError, KeyError):
        names = []
    return names if len(names) == count else [f'#{i}' for i in range(count)]


def verify_shards(input_dir: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Check every chunk and index of a local shard folder against its manifest.

    Args:
        input_dir: the shard folder.

    Returns:
        The number of files checked, and one line per problem (a missing or
        changed file, a refused index, shards without checksums).

    Raises:
        FileNotFoundError: if the folder has no manifest.
        ValueError: if the manifest is not one of this format.
    """
    root = Path(input_dir)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        manifest = read_manifest(root)
    if 'checksums' not in manifest:
        problem = (
            f'{root / MANIFEST}: version {manifest["version"]} shards have no '
            "checksums; convert again with 'torchgeo-mmearth shard'"
        )
        return 0, [problem]
    checked, problems = 0, []
    for split, files in manifest['checksums'].items():
        index = root / split / 'index.json'
        try:
            check_index(index, str(index))
        except (OSError, ValueError) as error:
            problems.append(str(error))
        listed = set(files)
        if index.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                chunks = json.loads(index.read_text())['chunks']
                listed |= {str(chunk['filename']) for chunk in chunks}
        for name in sorted(listed):
            checked += 1
            mismatch = _chunk_problem(root / split / name, files)
            if mismatch:
                problems.append(mismatch)
    return checked, problems


def _chunk_problem(path: Path, checksums: Mapping[str, str]) -> str | None:
    """Why a file of a split does not match its manifest checksum, if it does not."""
    expected = checksums.get(path.name)
    if expected is None:
        return f'{path}: not in the checksums of the manifest'
    try:
        actual = file_sha256(path)
    except OSError as error:
        return f'{path}: cannot be read ({error.strerror or error})'
    if actual != expected:
        return f'{path}: SHA-256 {actual}, the manifest says {expected}: corrupt or changed'
    return None


class _VerifiedChunks(PyTreeLoader):  # type: ignore[misc]
    """litdata's item loader, checking each chunk's SHA-256 on its first read.

    The chunk is read once more, whole, when it is first opened in a process (or
    opened again after litdata evicted it from the cache): the cost is per chunk,
    not per item.
    """

    def __init__(self, checksums: Mapping[str, str], location: str) -> None:
        super().__init__(batch_decode=0)
        self.checksums = dict(checksums)
        self.location = location
        self._verified: set[str] = set()

    def load_item_from_chunk(
        self,
        index: int,
        chunk_index: int,
        chunk_filepath: str,
        begin: int,
        filesize_bytes: int,
        encryption: Any = None,
    ) -> Any:
        # litdata waits here until a remote chunk is downloaded whole.
        item = super().load_item_from_chunk(
            index, chunk_index, chunk_filepath, begin, filesize_bytes, encryption
        )
        if chunk_filepath not in self._verified:
            problem = _chunk_problem(Path(chunk_filepath), self.checksums)
            if problem:
                if _is_remote(self.location):
                    problem += (
                        f' (a cached copy from {self.location}; delete it to '
                        'download it again)'
                    )
                raise CorruptDataError(problem)
            self._verified.add(chunk_filepath)
        return item

    def delete(self, chunk_index: int, chunk_filepath: str) -> None:
        self._verified.discard(chunk_filepath)
        super().delete(chunk_index, chunk_filepath)

    def state_dict(self) -> None:
        # As litdata records its default loader: checkpoints stay interchangeable
        # with those written before chunks were verified.
        return None

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state['_verified'] = set()  # each process checks the chunks it reads
        return state


# litdata checks the loader against the index's by class name only (pickling
# goes by the qualified name, which stays).
_VerifiedChunks.__name__ = PyTreeLoader.__name__


class StreamingMMEarth(StreamingDataset):  # type: ignore[misc]
    """The MMEarth corpora streamed from litdata shards, local or on S3.

    A :class:`litdata.StreamingDataset` over one split of a shard folder written by
    :func:`~torchgeo_mmearth.corpus.shard_corpus`. Its samples are exactly those of
    :class:`~torchgeo_mmearth.datasets.MMEarth` for the same tiles: the raw stored
    values (same keys and dtypes, one-hot classes as indices, the ignore index
    unless exactly one 1), bands selected per *modality_bands*, ``s2_type`` and
    ``tile_id``; and the same split membership, taken from the corpus's splits
    file when the shards were written. To make them model-ready, apply
    :class:`~torchgeo_mmearth.transforms.MMEarthNormalize` built from
    :attr:`band_stats` and :attr:`modality_bands`, to a sample or to a batch on the
    device::

        dataset = StreamingMMEarth('shards')
        normalize = MMEarthNormalize(
            dataset.band_stats, dataset.modality_bands, version=dataset.version
        )
        sample = normalize(dataset[0])

    or use :class:`~torchgeo_mmearth.datamodules.MMEarthStreamingDataModule`,
    which normalises each batch on the device.

    Iterating shuffles across chunks and, under ``torch.distributed``, gives each
    rank and DataLoader worker its own part of the split (litdata's work
    distribution); use :class:`litdata.StreamingDataLoader` to resume mid-epoch.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike[str],
        split: str = 'train',
        modalities: Sequence[str] | None = None,
        modality_bands: Mapping[str, Sequence[str]] | None = None,
        shuffle: bool = False,
        seed: int = 42,
        drop_last: bool | None = None,
        cache_dir: str | None = None,
        max_cache_size: int | str = '100GB',
        storage_options: Mapping[str, Any] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        worker_views: bool = False,
        verify_chunks: bool = True,
    ) -> None:
        """Initialize a new StreamingMMEarth instance.

        Args:
            input_dir: the shard folder: a local path, or ``s3://bucket/prefix``.
            split: 'train', 'val' or 'test'.
            modalities: modalities to load; None loads the 12 MP-MAE pretext
                modalities, as :class:`~torchgeo_mmearth.datasets.MMEarth`.
            modality_bands: bands per modality, in the order wanted in the samples.
            shuffle: shuffle the chunks and the tiles within them every epoch.
            seed: seed of the shuffle (the same on every rank).
            drop_last: drop tiles so that every rank gets as many; litdata's default
                (None) drops them under distributed training only.
            cache_dir: where remote (or compressed) chunks are kept while read;
                None uses litdata's default.
            max_cache_size: the most that *cache_dir* may hold.
            storage_options: options of the remote store, passed to litdata (for
                an S3-compatible endpoint: ``{'endpoint_url': 'http://...'}``).
            transforms: a function/transform that takes a raw sample and returns a
                transformed version, e.g.
                :class:`~torchgeo_mmearth.transforms.MMEarthNormalize`.
            worker_views: in DataLoader workers and without *transforms*, return
                pixel tiles as read-only NumPy views of the memory-mapped chunk and
                classes as 0-d int64 arrays, for a collate function that copies
                them once into the batch
                (``torchgeo_mmearth.datamodules.loaders.pack_collate``; the
                streaming datamodule sets it when it has workers).
            verify_chunks: check each chunk against the SHA-256 of the manifest
                when a process first reads from it (about 0.08 s of CPU per 64 MB
                chunk; tiles fetched by index from S3 are read as byte ranges, not
                chunks, and are not checked).

        Raises:
            FileNotFoundError: if *input_dir* holds no shards (or not of *split*).
            ValueError: for an unknown split, modality or band, a modality that
                the shards do not hold, or a split whose ``index.json`` declares a
                serialiser that ``shard`` does not write or differs from the
                manifest's checksum.
            OSError: when iterating, for a chunk that differs from its checksum
                (naming the file).
        """
        input_dir = str(input_dir)
        manifest = read_manifest(input_dir, storage_options)
        splits: dict[str, int] = manifest['splits']
        if split not in splits:
            raise ValueError(
                f'{input_dir}/{MANIFEST} has no split {split!r}; it has {list(splits)}'
            )
        self.modality_bands = resolve_modality_bands(modalities, modality_bands)
        self.modalities = tuple(self.modality_bands)
        stored = manifest['modalities']
        missing = [name for name in self.modality_bands if name not in stored]
        if missing:
            raise ValueError(
                f'{input_dir} holds no shards of {missing}; it holds {sorted(stored)}'
            )
        split_dir = f'{input_dir.rstrip("/")}/{split}'
        if not _is_remote(input_dir) and not (Path(split_dir) / 'index.json').is_file():
            raise FileNotFoundError(
                f'{split_dir}/index.json is missing: the shards of split {split!r} '
                'are incomplete'
            )
        options: dict[str, Any] = {}
        if storage_options:
            options['storage_options'] = dict(storage_options)
        self._allow_http = str(
            (storage_options or {}).get('endpoint_url', '')
        ).startswith('http://')
        _allow_plain_http(self._allow_http)
        checksums: dict[str, str] = manifest.get('checksums', {}).get(split, {})
        if verify_chunks and checksums:
            options['item_loader'] = _VerifiedChunks(checksums, split_dir)
        super().__init__(
            split_dir,
            cache_dir=cache_dir,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            max_cache_size=max_cache_size,
            # One tile is a few hundred KB of arrays: decode the tile asked for
            # only (litdata's default decodes a window of up to 256 around it).
            batch_decode=0,
            **options,
        )
        # The index that litdata reads (for S3, its copy in the cache), before
        # litdata decodes any item.
        _check_split_index(
            Path(self.input_dir.path) / 'index.json', split_dir, checksums
        )
        #: The shard folder (as ``root`` of MMEarth, recorded in checkpoints).
        self.root = input_dir
        self.split = split
        self.subset: str = manifest['subset']
        self.tile_size: int | None = manifest['tile_size']
        self.band_stats: dict[str, Any] = manifest['band_stats']
        #: The release of the data, as the HDF5 reader detected it when the shards
        #: were written (None: unknown, or shards written before it was recorded).
        self.version: str | None = manifest.get('data_version')
        self.manifest = manifest
        self.transforms = transforms
        self._plan = _sample_plan(self.modality_bands)
        self._layout = {
            name: (np.dtype(stored[name]['dtype']), tuple(stored[name]['shape']))
            for name in self.modality_bands
        }
        self.worker_views = worker_views

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle in a DataLoader worker started by spawn.

        Args:
            state: the pickled state.
        """
        self.__dict__.update(state)
        _allow_plain_http(state.get('_allow_http', False))

    def __getitem__(self, index: Any) -> Any:
        """Return one tile (or a list of tiles for a slice).

        Args:
            index: index within the split (or litdata's chunked index, or a slice).

        Returns:
            The sample, as ``MMEarth`` returns it for the same tile.
        """
        item = super().__getitem__(index)
        if isinstance(item, list):
            return [self.sample(entry) for entry in item]
        return self.sample(item)

    def sample(self, item: Mapping[str, Any]) -> Sample:
        """Turn one stored item into a sample.

        Args:
            item: a deserialised item of the shards.

        Returns:
            The sample.
        """
        views = (
            self.worker_views
            and self.transforms is None
            and get_worker_info() is not None
        )
        sample: Sample = {}
        for name, key, one_hot, selection in self._plan:
            dtype, shape = self._layout[name]
            tile = np.frombuffer(item[name], dtype).reshape(shape)
            if one_hot:
                index = _one_hot_index(tile)
                sample[key] = _int64(index) if views else torch.tensor(index)
                continue
            if selection is not None:
                tile = tile[selection]  # a new array
            elif not views:
                tile = tile.copy()  # writable, as the HDF5 reader's
            sample[key] = tile if views else torch.from_numpy(tile)
        s2_type = int(item['s2_type'])
        sample['s2_type'] = _int64(s2_type) if views else torch.tensor(s2_type)
        sample['tile_id'] = str(item['tile_id'])
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def _int64(value: int) -> np.ndarray:
    """A 0-d int64 array: collated as ``torch.tensor(value)`` is, made faster."""
    return np.array(value, dtype=np.int64)


def _allow_plain_http(allow: bool) -> None:
    """Let litdata's obstore downloads use an ``http://`` S3-compatible endpoint.

    litdata 0.2.76 builds obstore's ``S3Store`` from the boto3 client's endpoint
    but not its scheme, and obstore refuses plain HTTP ("builder error") unless
    the client options allow it: a local MinIO or test server on ``http://``
    needs this.
    """
    if not allow:
        return
    from litdata.streaming import downloader

    options = getattr(downloader, '_OBSTORE_CLIENT_OPTIONS', None)
    if isinstance(options, dict):
        options['allow_http'] = True
