"""Resumable writer of MMEarth-format corpora.

A corpus named ``<name>`` is the folder ``data_<name>/`` holding, exactly as the
published MMEarth corpora:

* ``data_<name>.h5``: one dataset per modality (the dtypes and band order of
  :data:`~torchgeo_mmearth.modalities.MODALITIES`), and ``metadata`` with the
  compound dtype ``[('tile_id', 'S100'), ('S2_type', 'S10')]``; every dataset gzip
  compressed with one chunk per tile; the root attribute ``version`` records the
  release of the data whose no-data placeholders the tiles hold
  (:data:`~torchgeo_mmearth.corpus.encoding.DATA_VERSION`, ``'v1.0'``);
* ``data_<name>_band_stats.json``: per-band mean/std/min/max over *valid* values
  only, Sentinel-2 L1C and L2A apart;
* ``data_<name>_splits.json``: train/val/test row indices;
* ``data_<name>_tile_info.json``: per-tile metadata;

and ``data_<name>_build_report.json``, the build summary.

The build is made safe and resumable with *segments*: the locations are cut into
runs of ``segment_size``, and each run's tiles are written to
``data_<name>/.partial/segment_<k>.h5`` with a ``segment_<k>.json`` record (its
tiles' metadata, dropped locations and statistics sums). Both go to a temporary
file first and are renamed; the record is renamed last, so a segment exists
only once complete. An interrupted build resumes at the first missing segment,
and since a segment depends only on its locations and the inputs, the corpus is
the same whether or not the build was interrupted. :meth:`CorpusWriter.finish`
copies the compressed chunks of every segment into ``data_<name>.h5.partial``
(without recompressing), writes the JSON files through temporary files, renames
the HDF5 file last and removes ``.partial``.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._atomic import atomic_path
from ..modalities import MODALITIES, S2_TYPES, VERSION_ATTRIBUTE, Kind, Level
from .encoding import DATA_VERSION, valid_mask

__all__ = [
    'METADATA_DTYPE',
    'STATS_KEYS',
    'CorpusWriter',
    'Drop',
    'StatsAccumulator',
    'TileRecord',
    'corpus_folder',
    'make_splits',
]

#: The published ``metadata`` record of a tile.
METADATA_DTYPE = np.dtype([('tile_id', 'S100'), ('S2_type', 'S10')])

#: Band statistics keys, in file order: Sentinel-2 per processing level, then every
#: other continuous modality.
STATS_KEYS = tuple(
    key
    for modality in MODALITIES.values()
    if modality.kind is Kind.CONTINUOUS
    for key in modality.stats_keys
)

_FORMAT_VERSION = 1


def corpus_folder(root: str | os.PathLike[str], name: str) -> Path:
    """The folder of corpus *name* under *root*: ``root/data_<name>``."""
    return Path(root) / f'data_{name}'


@dataclass
class TileRecord:
    """One written tile.

    Args:
        tile_id: the tile id (``metadata`` and ``tile_info`` key).
        location: index of its location in the build's location list.
        s2_type: 'l1c' or 'l2a'.
        arrays: the stored array of every modality.
        info: the ``tile_info`` record.
        group: split group (tiles of one group go to the same split).
        key: identity of the tile's pixels (Sentinel-2 acquisition and window), to
            drop duplicates.
    """

    tile_id: str
    location: int
    s2_type: str
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]
    group: str
    key: str


@dataclass(frozen=True)
class Drop:
    """A location that produced no tile.

    Args:
        location: index of the location.
        reason: short reason code (e.g. ``too_little_valid_sentinel2``).
        detail: human-readable detail.
    """

    location: int
    reason: str
    detail: str = ''


@dataclass
class StatsAccumulator:
    """Per-band count, sum, sum of squares, min and max over valid values.

    Args:
        bands: number of bands.
    """

    bands: int
    count: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        """Start with no values."""
        self.count = np.zeros(self.bands, dtype=np.int64)
        self.total = np.zeros(self.bands, dtype=np.float64)
        self.squares = np.zeros(self.bands, dtype=np.float64)
        self.low = np.full(self.bands, np.inf)
        self.high = np.full(self.bands, -np.inf)

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile: ``(C, ...)`` values and their validity."""
        flat = values.reshape(self.bands, -1).astype(np.float64)
        ok = valid.reshape(self.bands, -1)
        self.count += ok.sum(axis=1)
        self.total += np.where(ok, flat, 0).sum(axis=1)
        self.squares += np.where(ok, flat * flat, 0).sum(axis=1)
        self.low = np.minimum(self.low, np.where(ok, flat, np.inf).min(axis=1))
        self.high = np.maximum(self.high, np.where(ok, flat, -np.inf).max(axis=1))

    def merge(self, other: 'StatsAccumulator') -> None:
        """Add another accumulator's values."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)

    def to_json(self) -> dict[str, list[float]]:
        """The sums, exactly (JSON floats round-trip)."""
        return {
            'count': [int(v) for v in self.count],
            'total': [float(v) for v in self.total],
            'squares': [float(v) for v in self.squares],
            'low': [float(v) for v in self.low],
            'high': [float(v) for v in self.high],
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Sequence[float]]) -> 'StatsAccumulator':
        """Rebuild an accumulator from :meth:`to_json`."""
        accumulator = cls(len(record['count']))
        accumulator.count = np.asarray(record['count'], dtype=np.int64)
        accumulator.total = np.asarray(record['total'], dtype=np.float64)
        accumulator.squares = np.asarray(record['squares'], dtype=np.float64)
        accumulator.low = np.asarray(record['low'], dtype=np.float64)
        accumulator.high = np.asarray(record['high'], dtype=np.float64)
        return accumulator

    def stats(self) -> dict[str, list[float]]:
        """Mean, standard deviation (population), min and max; NaN when empty."""
        empty = self.count == 0
        count = np.where(empty, 1, self.count)
        mean = self.total / count
        variance = np.maximum(self.squares / count - mean * mean, 0)
        nan = float('nan')
        return {
            'mean': [nan if e else float(v) for e, v in zip(empty, mean, strict=True)],
            'std': [
                nan if e else float(v)
                for e, v in zip(empty, np.sqrt(variance), strict=True)
            ],
            'min': [
                nan if e else float(v) for e, v in zip(empty, self.low, strict=True)
            ],
            'max': [
                nan if e else float(v) for e, v in zip(empty, self.high, strict=True)
            ],
        }


def _stats_key(name: str, s2_type: str) -> str | None:
    modality = MODALITIES[name]
    if modality.kind is not Kind.CONTINUOUS:
        return None
    if len(modality.stats_keys) > 1:
        return modality.stats_keys[S2_TYPES.index(s2_type)]
    return modality.stats_keys[0]


def tile_coverage(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Fraction of a tile's pixels with at least one valid band, per modality.

    Image-level vectors (era5, lat, lon, month) count the fraction of valid
    elements (ERA5 with its year window missing: 8/12); one-hot classes count 1.0
    when the tile has a class.

    Args:
        arrays: the stored arrays of the tile.

    Returns:
        The fraction per modality.
    """
    coverage = {}
    for name, array in arrays.items():
        modality = MODALITIES[name]
        valid = valid_mask(name, array)
        if modality.level is Level.PIXEL:
            coverage[name] = float(valid.any(axis=0).mean())
        elif modality.one_hot:
            coverage[name] = float(valid.any())
        else:
            coverage[name] = float(valid.mean())
    return coverage


def make_splits(
    groups: Sequence[str], fractions: Sequence[float], seed: int
) -> dict[str, list[int]]:
    """Seeded train/val/test split of rows, keeping each group in one split.

    Groups are shuffled with ``numpy.random.default_rng(seed)`` and allotted by
    largest remainder, so the counts add up; every split with a positive fraction
    gets at least one group when there are enough groups.

    Args:
        groups: the group of every row.
        fractions: train, val and test fractions (summing to 1).
        seed: random seed.

    Returns:
        ``{'train': rows, 'val': rows, 'test': rows}``, each sorted.
    """
    unique = sorted(set(groups))
    counts = _allot(len(unique), fractions)
    order = np.random.default_rng(seed).permutation(len(unique))
    split_of: dict[str, str] = {}
    start = 0
    for split, count in zip(('train', 'val', 'test'), counts, strict=True):
        for position in order[start : start + count]:
            split_of[unique[position]] = split
        start += count
    splits: dict[str, list[int]] = {'train': [], 'val': [], 'test': []}
    for row, group in enumerate(groups):
        splits[split_of[group]].append(row)
    return splits


def _allot(total: int, fractions: Sequence[float]) -> list[int]:
    exact = [f * total for f in fractions]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    # Every split asked for gets a group, taken from the largest split.
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if total >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                largest = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[largest] -= 1
                counts[i] += 1
    return counts


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as temporary, open(temporary, 'w') as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def _create(file: h5py.File, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A dataset in the published layout: gzip, one chunk per tile."""
    return file.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(1, *shape[1:]),
        compression='gzip',
        track_times=False,
    )


class CorpusWriter:
    """Writes the tiles of one build into segments, then assembles the corpus.

    Args:
        root: directory that receives the corpus folder ``data_<name>``.
        name: corpus name.
        fingerprint: JSON-serialisable description of every input and option; a
            resume requires the same fingerprint.
        segment_size: locations per segment.
        overwrite: replace an existing corpus and discard any partial build.

    Raises:
        ValueError: for an invalid name or segment size, or a partial build with
            another fingerprint.
        FileExistsError: if the corpus exists and *overwrite* is False.
        OSError: if the output folder cannot be written.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        fingerprint: Mapping[str, Any],
        segment_size: int = 64,
        overwrite: bool = False,
    ) -> None:
        """Initialize a new CorpusWriter instance (see the class docstring)."""
        if not name or any(c in name for c in '/\\') or name.startswith('.'):
            raise ValueError(f'Invalid corpus name {name!r}')
        if segment_size < 1:
            raise ValueError(f'segment_size must be >= 1, got {segment_size}')
        self.name = name
        self.folder = corpus_folder(root, name)
        self.stem = self.folder / f'data_{name}'
        self.h5_path = self.stem.with_name(self.stem.name + '.h5')
        self.scratch = self.folder / '.partial'
        self.segment_size = segment_size
        self.digest = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()

        if self.h5_path.exists() and not overwrite:
            raise FileExistsError(
                f'{self.h5_path} already exists: the corpus {name!r} has been built. '
                'Pass overwrite=True (--overwrite) to replace it, or choose another '
                'name'
            )
        self._check_writable()
        if overwrite and self.scratch.exists():
            shutil.rmtree(self.scratch)
        self.resumed = self._resume()
        self._tiles: list[TileRecord] = []
        self._drops: list[Drop] = []

    def _check_writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as error:
            raise OSError(
                f'The output folder {self.folder} is not writable '
                f'({error.strerror or error}); choose another root'
            ) from error

    def _segment(self, k: int, suffix: str) -> Path:
        return self.scratch / f'segment_{k:06d}.{suffix}'

    def _resume(self) -> bool:
        """Validate a partial build and find its first missing segment."""
        build = self.scratch / 'build.json'
        self.segments = 0
        self.seen: set[str] = set()
        if build.is_file():
            record = json.loads(build.read_text())
            same = (record.get('fingerprint'), record.get('segment_size')) == (
                self.digest,
                self.segment_size,
            )
            if not same:
                raise ValueError(
                    f'{self.scratch} holds a partial build of {self.name!r} with other '
                    'inputs or options; pass overwrite=True (--overwrite) to discard '
                    'it, or use the same inputs and options to resume it'
                )
            while self._segment(self.segments, 'json').is_file():
                record = json.loads(self._segment(self.segments, 'json').read_text())
                self.seen.update(tile['key'] for tile in record['tiles'])
                self.segments += 1
            # Anything after the last complete segment is an interrupted write.
            for path in self.scratch.iterdir():
                if path.name.startswith('.') or (
                    path.name.startswith('segment_')
                    and int(path.name[8:14]) >= self.segments
                ):
                    path.unlink()
            return True
        self.scratch.mkdir(parents=True, exist_ok=True)
        _write_json(
            build,
            {
                'format_version': _FORMAT_VERSION,
                'fingerprint': self.digest,
                'segment_size': self.segment_size,
            },
        )
        return False

    @property
    def start(self) -> int:
        """Index of the first location still to process."""
        return self.segments * self.segment_size

    def add(self, location: int, result: TileRecord | Drop, total: int) -> None:
        """Record the outcome of one location; commit the segment when complete.

        Args:
            location: index of the location (consecutive from :attr:`start`).
            result: the tile, or why the location was dropped.
            total: number of locations of the build.
        """
        if isinstance(result, TileRecord):
            self._tiles.append(result)
            self.seen.add(result.key)
        else:
            self._drops.append(result)
        if (location + 1) % self.segment_size == 0 or location + 1 == total:
            self._commit()

    def _commit(self) -> None:
        k = self.segments
        stats: dict[str, StatsAccumulator] = {}
        tiles = []
        for tile in self._tiles:
            for name, array in tile.arrays.items():
                key = _stats_key(name, tile.s2_type)
                if key is None:
                    continue
                if key not in stats:
                    stats[key] = StatsAccumulator(array.shape[0])
                stats[key].add(array, valid_mask(name, array))
            tiles.append(
                {
                    'tile_id': tile.tile_id,
                    'location': tile.location,
                    's2_type': tile.s2_type,
                    'group': tile.group,
                    'key': tile.key,
                    'info': tile.info,
                    'coverage': tile_coverage(tile.arrays),
                }
            )
        if self._tiles:
            path = self._segment(k, 'h5')
            with atomic_path(path) as temporary, h5py.File(temporary, 'w') as file:
                for name in MODALITIES:
                    data = np.stack([tile.arrays[name] for tile in self._tiles])
                    _create(file, name, data.shape, data.dtype)[...] = data
                metadata = np.array(
                    [(t.tile_id.encode(), t.s2_type.encode()) for t in self._tiles],
                    dtype=METADATA_DTYPE,
                )
                _create(file, 'metadata', metadata.shape, METADATA_DTYPE)[...] = (
                    metadata
                )
        _write_json(
            self._segment(k, 'json'),
            {
                'segment': k,
                'tiles': tiles,
                'drops': [
                    {'location': d.location, 'reason': d.reason, 'detail': d.detail}
                    for d in self._drops
                ],
                'stats': {key: acc.to_json() for key, acc in sorted(stats.items())},
            },
        )
        self.segments += 1
        self._tiles, self._drops = [], []

    def records(self) -> list[dict[str, Any]]:
        """The records of every committed segment, in order."""
        return [
            json.loads(self._segment(k, 'json').read_text())
            for k in range(self.segments)
        ]

    def finish(
        self,
        tile_size: int,
        fractions: Sequence[float],
        seed: int,
        report: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Assemble the corpus from the segments.

        Args:
            tile_size: tile side in pixels.
            fractions: train, val and test fractions.
            seed: seed of the splits.
            report: build summary, written as ``data_<name>_build_report.json``
                (the split sizes are added).

        Returns:
            The report as written.

        Raises:
            ValueError: if no location gave a tile.
        """
        if self._tiles or self._drops:
            self._commit()
        records = self.records()
        tiles = [tile for record in records for tile in record['tiles']]
        if not tiles:
            raise ValueError(
                f'No tile was written for corpus {self.name!r}: every location was '
                f'dropped ({report.get("dropped")})'
            )
        stats: dict[str, StatsAccumulator] = {}
        for record in records:
            for key, value in record['stats'].items():
                accumulator = StatsAccumulator.from_json(value)
                if key in stats:
                    stats[key].merge(accumulator)
                else:
                    stats[key] = accumulator
        band_stats = {}
        for key in STATS_KEYS:
            modality = next(m for m in MODALITIES.values() if key in m.stats_keys)
            accumulator = stats.get(key) or StatsAccumulator(
                modality.num_classes if modality.one_hot else len(modality.bands)
            )
            band_stats[key] = accumulator.stats()

        splits = make_splits([t['group'] for t in tiles], fractions, seed)
        tile_info = {tile['tile_id']: tile['info'] for tile in tiles}
        if len(tile_info) != len(tiles):
            raise ValueError(f'Tile ids of corpus {self.name!r} are not unique')
        report = {**report, 'splits': {k: len(v) for k, v in splits.items()}}

        partial = self.h5_path.with_name(self.h5_path.name + '.partial')
        self._assemble(partial, records, len(tiles), tile_size)
        for suffix, data in (
            ('_band_stats.json', band_stats),
            ('_splits.json', splits),
            ('_tile_info.json', tile_info),
            ('_build_report.json', report),
        ):
            _write_json(self.stem.with_name(self.stem.name + suffix), data)
        os.replace(partial, self.h5_path)  # the corpus exists from here on
        shutil.rmtree(self.scratch)
        return report

    def _assemble(
        self, path: Path, records: list[dict[str, Any]], rows: int, tile_size: int
    ) -> None:
        """Copy the compressed chunks of every segment into one file, in order."""
        with h5py.File(path, 'w') as out:
            out.attrs[VERSION_ATTRIBUTE] = DATA_VERSION
            targets = {}
            for name, modality in MODALITIES.items():
                if modality.level is Level.PIXEL:
                    shape: tuple[int, ...] = (
                        rows,
                        len(modality.bands),
                        tile_size,
                        tile_size,
                    )
                else:
                    channels = (
                        modality.num_classes
                        if modality.one_hot
                        else len(modality.bands)
                    )
                    shape = (rows, channels)
                targets[name] = _create(out, name, shape, modality.dtype)
            targets['metadata'] = _create(out, 'metadata', (rows,), METADATA_DTYPE)
            row = 0
            for k, record in enumerate(records):
                count = len(record['tiles'])
                if not count:
                    continue
                with h5py.File(self._segment(k, 'h5'), 'r') as segment:
                    for name, target in targets.items():
                        source = segment[name]
                        zeros = (0,) * (source.ndim - 1)
                        for i in range(count):
                            mask, chunk = source.id.read_direct_chunk((i, *zeros))
                            target.id.write_direct_chunk((row + i, *zeros), chunk, mask)
                row += count
