"""Convert an MMEarth-format corpus into litdata shards (``torchgeo-mmearth shard``).

The HDF5 corpora need every node to see the whole file and cost most of their CPU
time in gzip. :func:`shard_corpus` writes each split once as litdata chunks, which
:class:`~torchgeo_mmearth.datasets.StreamingMMEarth` streams from local disk or
S3-compatible storage to any number of processes and nodes. The layout of a shard
folder is described in :mod:`torchgeo_mmearth.datasets.streaming`.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .._atomic import atomic_path
from .._errors import USER_ERRORS, check_new_output, report_error
from .._interrupt import command_line, report_interrupted
from ..modalities import MODALITIES

if TYPE_CHECKING:
    # The reader brings PyTorch, TorchGeo's datasets and matplotlib: it is imported
    # when a conversion runs, so that importing the corpus builder (and
    # `build-corpus --help`) does without them.
    from ..datasets import MMEarth

__all__ = [
    'DEFAULT_CHUNK_BYTES',
    'DEFAULT_COMPRESSION',
    'ShardReport',
    'folder_bytes',
    'shard_corpus',
]

#: Compression of the chunks, chosen by measurement (docs/multinode.md): none.
#: Uncompressed chunks read in about 0.15 CPU ms per 64 px tile (their bytes are
#: mapped, not copied); zstd (any level) halves the bytes but costs about 0.5 CPU
#: ms per tile, three times as much.
DEFAULT_COMPRESSION: str | None = None
#: Size of one chunk: a few hundred 64 px tiles, so that shuffling across chunks
#: mixes the corpus well and each read from object storage is large.
DEFAULT_CHUNK_BYTES = '64MB'
# In-progress record of a conversion, inside the temporary folder.
_PROGRESS = '.progress.json'
# Why a worker could not read the corpus, inside the temporary folder: litdata
# passes on only the text of a worker's traceback.
_FAILURE = '.failure.txt'
# What the command reports in one line: a user's mistakes, and litdata missing.
_COMMAND_ERRORS: tuple[type[Exception], ...] = (ImportError, *USER_ERRORS)


@dataclasses.dataclass(frozen=True)
class ShardReport:
    """What a conversion wrote, and what it cost.

    Attributes:
        output_dir: the shard folder.
        h5_bytes: size of the HDF5 file converted.
        shard_bytes: size on disk of the shard folder.
        seconds: wall time of this run (a resumed run counts its own time only).
        tiles: tiles written per split.
        compression: compression of the chunks (None: none).
        resumed_splits: splits kept from an interrupted earlier run.
    """

    output_dir: Path
    h5_bytes: int
    shard_bytes: int
    seconds: float
    tiles: dict[str, int]
    compression: str | None
    resumed_splits: tuple[str, ...] = ()

    def summary(self) -> str:
        """A few lines for people: sizes, ratio and time.

        Returns:
            The report as text.
        """
        tiles = sum(self.tiles.values())
        ratio = self.shard_bytes / self.h5_bytes if self.h5_bytes else float('nan')
        lines = [
            f'shards written to {self.output_dir}',
            f'  tiles: {tiles} ('
            + ', '.join(f'{split} {n}' for split, n in self.tiles.items())
            + ')',
            f'  compression: {self.compression or "none"}',
            (
                f'  bytes on disk: {self.shard_bytes:,} '
                f'(HDF5: {self.h5_bytes:,}; ratio {ratio:.2f})'
            ),
            f'  time: {self.seconds:.1f} s'
            + (f' ({tiles / self.seconds:.0f} tiles/s)' if self.seconds > 0 else ''),
        ]
        if self.resumed_splits:
            lines.append(
                f'  resumed: kept {", ".join(self.resumed_splits)} from the '
                'interrupted run'
            )
        return '\n'.join(lines)


class _StoredTiles:
    """The items of one split (picklable for workers).

    Each item is ``MMEarth.stored_tile`` with every modality as its bytes (C
    order, the manifest's native-order dtype and shape), which the reader maps
    straight from the chunk: no copy, no header to parse. The HDF5 row is a NumPy
    array: litdata 0.2.76 writes a dict of nothing but bytes, strings and
    integers as Arrow rows, which it copies on reading and never compresses.
    """

    def __init__(
        self,
        root: str,
        subset: str,
        split: str,
        layout: Mapping[str, Mapping[str, Any]],
        version: str | None,
        failure: str,
    ) -> None:
        self.arguments = (root, subset, split, dict(layout), version)
        self.failure = failure
        self._dataset: MMEarth | None = None

    def __call__(self, index: int) -> dict[str, Any]:
        root, subset, split, layout, version = self.arguments
        try:
            if self._dataset is None:
                from ..datasets import MMEarth

                self._dataset = MMEarth(
                    root, subset, split, modalities=list(layout), version=version
                )
            tile = self._dataset.stored_tile(index)
        except OSError as error:  # the reader's: the file, dataset and row
            Path(self.failure).write_text(str(error))
            # litdata stops a failed worker but not the helper processes it
            # started, which would wait for work forever.
            for helper in multiprocessing.active_children():
                helper.terminate()
            raise
        for name, stored in layout.items():
            tile[name] = np.asarray(tile[name], dtype=stored['dtype']).tobytes()
        tile['row'] = np.array([tile['row']], dtype=np.int64)
        return tile

    def __getstate__(self) -> dict[str, Any]:
        return {'arguments': self.arguments, '_dataset': None}


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of the files under *path* (or of the file *path*).

    Args:
        path: a file or folder.

    Returns:
        The total size of its files.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def shard_corpus(
    root: str | os.PathLike[str],
    subset: str,
    output_dir: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    compression: str | None = DEFAULT_COMPRESSION,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    num_workers: int | None = None,
    overwrite: bool = False,
    start_method: str | None = None,
    progress: bool = True,
    version: str | None = None,
) -> ShardReport:
    """Write every modality of every split of an MMEarth corpus as litdata shards.

    The tiles keep their stored dtypes and bands (the reader selects bands and
    turns one-hot vectors into classes, as the HDF5 reader does); the splits are
    those of the corpus's splits file, read as
    :class:`~torchgeo_mmearth.datasets.MMEarth` reads them, and each tile keeps its
    tile id and Sentinel-2 processing level (from ``_tile_info.json`` for merged
    corpora whose HDF5 lacks it). The manifest records the release of the data
    (``data_version``: ``MMEarth.version``), which
    :class:`~torchgeo_mmearth.datasets.StreamingMMEarth` exposes as its
    ``version``.

    The shards are written into ``<output_dir>.partial`` and renamed to
    *output_dir* when every split is complete. An interrupted run leaves the
    temporary folder; running the same conversion again keeps the finished splits
    and continues the interrupted one from litdata's checkpoints.

    Args:
        root: directory that holds the corpus folder.
        subset: 'MMEarth', 'MMEarth64', 'MMEarth100k', 'MMEarthDemo' or a corpus
            folder name ``data_<name>`` (as for :class:`MMEarth`).
        output_dir: the shard folder to write (local; upload it afterwards).
        splits: the splits to convert; None converts those of the splits file.
        compression: ``None`` or litdata's ``'zstd'`` / ``'zstd:<level>'``.
        chunk_bytes: the size of each chunk (an int, or a string such as '64MB').
        num_workers: processes that read and write tiles; None uses litdata's
            default (one per CPU core).
        overwrite: replace an existing shard folder at *output_dir*.
        start_method: multiprocessing start method of the workers; None forks
            where the platform can (the workers start in a fraction of the time
            of spawn, and the reader closes its HDF5 handles before a fork).
        progress: show litdata's progress bar.
        version: the release of the data (``'v001'`` or ``'v1.0'``), as for
            :class:`MMEarth`: chooses the folder when *root* holds both releases of
            a published subset; None detects it.

    Returns:
        The sizes, tiles and time of the conversion.

    Raises:
        FileExistsError: if *output_dir* exists and *overwrite* is False.
        ValueError: for an unknown subset or split, or a temporary folder left by
            an interrupted conversion with other arguments.
        OSError: if the corpus cannot be read (naming the file, dataset and row,
            and the temporary folder kept for resuming).
    """
    # First: it turns off litdata's version check (a call to PyPI) before import.
    from ..datasets.streaming import MANIFEST, SHARD_FORMAT  # noqa: I001

    from litdata import optimize

    from ..datasets import MMEarth

    started = time.perf_counter()
    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise FileExistsError(
            f'{output} exists; pass overwrite=True (--overwrite) to replace it'
        )
    # Any split reads the corpus files: take the layout from the first one.
    probe = MMEarth(root, subset, MMEarth.splits[0], modalities=[], version=version)
    with open(probe.splits_path) as f:
        split_names = list(json.load(f))
    if splits is None:
        splits = [name for name in MMEarth.splits if name in split_names]
    for split in splits:
        if split not in split_names:
            raise ValueError(
                f'{probe.splits_path} has no split {split!r}; it has {split_names}'
            )
    stored = _layout(probe.h5_path)
    modalities = list(stored)
    arguments = {
        'source': str(probe.h5_path.resolve()),
        'splits': list(splits),
        'compression': compression,
        'chunk_bytes': chunk_bytes,
        'modalities': modalities,
    }

    partial = output.with_name(output.name + '.partial')
    record_path = partial / _PROGRESS
    done: list[str] = []
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record['arguments'] != arguments:
            raise ValueError(
                f'{partial} holds an interrupted conversion with other arguments '
                f'({record["arguments"]}); remove it to start again'
            )
        done = list(record['done'])
    elif partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    resumed = tuple(done)

    failure = partial / _FAILURE
    tiles: dict[str, int] = {}
    for split in splits:
        dataset = MMEarth(root, subset, split, modalities=modalities, version=version)
        tiles[split] = len(dataset)
        if split in done or len(dataset) == 0:
            continue
        if progress:
            print(f'split {split!r}: {len(dataset)} tiles', file=sys.stderr)
        # litdata prints a dozen lines per split (and an advertisement) to stdout,
        # its forked workers too; its progress bar is on stderr. They are shown
        # only when the conversion fails.
        chatter = io.StringIO()
        failure.unlink(missing_ok=True)
        try:
            with contextlib.redirect_stdout(chatter), _no_leftover_processes():
                optimize(
                    fn=_StoredTiles(
                        str(root), subset, split, stored, version, str(failure)
                    ),
                    inputs=list(range(len(dataset))),
                    output_dir=str(partial / split),
                    chunk_bytes=chunk_bytes,
                    compression=compression,
                    num_workers=max(
                        1, min(num_workers or os.cpu_count() or 1, len(dataset))
                    ),
                    use_checkpoint=True,
                    start_method=start_method or _default_start_method(),
                    verbose=progress,
                )
            written = _items_written(partial / split)
            if written != len(dataset):
                raise RuntimeError(
                    f'{partial / split}: litdata wrote {written} of the '
                    f'{len(dataset)} tiles of split {split!r} (a worker failed; see '
                    'its error above)'
                )
        except Exception as error:
            if failure.is_file():
                raise OSError(
                    f'{failure.read_text()}. What was converted is kept in '
                    f'{partial}: run the same conversion again to resume once the '
                    'file is replaced, or delete that folder'
                ) from error
            sys.stderr.write(chatter.getvalue())
            raise
        done.append(split)
        with atomic_path(record_path) as temporary:
            temporary.write_text(json.dumps({'arguments': arguments, 'done': done}))

    for split in splits:
        shutil.rmtree(partial / split / '.checkpoints', ignore_errors=True)
    manifest = {
        'format': SHARD_FORMAT[0],
        'version': SHARD_FORMAT[1],
        'subset': subset,
        'folder': probe.directory.name,
        'data_version': probe.version,
        'tile_size': _tile_size(probe.h5_path, stored),
        'modalities': stored,
        'splits': tiles,
        'compression': compression,
        'source': {'h5': probe.h5_path.name, 'h5_bytes': folder_bytes(probe.h5_path)},
        'band_stats': probe.band_stats,
        'checksums': {
            split: _checksums(partial / split, num_workers)
            for split in splits
            if (partial / split).is_dir()
        },
    }
    with atomic_path(partial / MANIFEST) as temporary:
        temporary.write_text(json.dumps(manifest))
    record_path.unlink()
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)
    return ShardReport(
        output_dir=output,
        h5_bytes=manifest['source']['h5_bytes'],
        shard_bytes=folder_bytes(output),
        seconds=time.perf_counter() - started,
        tiles=tiles,
        compression=compression,
        resumed_splits=resumed,
    )


def _layout(h5_path: Path) -> dict[str, dict[str, Any]]:
    """Stored dtype and shape of each modality of a corpus HDF5 file.

    Args:
        h5_path: the corpus HDF5 file.

    Returns:
        ``{'dtype': ..., 'shape': [...]}`` per modality, in registry order.

    Raises:
        OSError: naming the file and dataset, if it cannot be read.
    """
    name = None
    try:
        with h5py.File(h5_path, 'r') as file:
            stored = {}
            for name in MODALITIES:
                if name in file:
                    dataset = file[name]
                    stored[name] = {
                        'dtype': dataset.dtype.newbyteorder('=').str,
                        'shape': list(dataset.shape[1:]),
                    }
    except (OSError, KeyError) as error:
        where = f'dataset {name!r} of ' if name is not None else ''
        raise OSError(
            f'cannot read {where}{h5_path} ({error}); the file may be corrupt or '
            'truncated'
        ) from error
    return stored


def _tile_size(h5_path: Path, stored: dict[str, dict[str, Any]]) -> int | None:
    """The side of the pixel-level tiles of a corpus, None without any.

    Args:
        h5_path: the corpus HDF5 file (for the error message).
        stored: stored shape and dtype per modality.

    Returns:
        The tile side in pixels.

    Raises:
        ValueError: if the pixel-level modalities differ in size.
    """
    sizes = {tuple(s['shape'][1:]) for s in stored.values() if len(s['shape']) == 3}
    if len(sizes) > 1:
        raise ValueError(f'{h5_path}: pixel-level datasets differ in size: {sizes}')
    return sizes.pop()[0] if sizes else None


def _checksums(split_dir: Path, num_workers: int | None) -> dict[str, str]:
    """SHA-256 of every file of a split folder (its chunks and index), by name."""
    from ..datasets.streaming import file_sha256

    files = sorted(path for path in split_dir.iterdir() if path.is_file())
    # hashlib lets go of the GIL: threads hash files side by side.
    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        digests = pool.map(file_sha256, files)
        return {path.name: digest for path, digest in zip(files, digests, strict=True)}


@contextlib.contextmanager
def _no_leftover_processes() -> Iterator[None]:
    """End the processes that a conversion started, once it is over.

    When a litdata worker fails (a write error, a full disk), litdata terminates
    the worker but not the helper processes that the worker started (uploaders, a
    remover), which then wait for work forever, each with a copy of the worker's
    memory. On Linux this process becomes their subreaper while the conversion
    runs: they become its children when their worker ends, and are ended here.

    Yields:
        Nothing.
    """
    before = _child_pids()
    subreaper = _set_child_subreaper(True)
    try:
        yield
    finally:
        started = [p for p in multiprocessing.active_children() if p.pid not in before]
        for process in started:
            process.terminate()
        # A failed run's workers get a second to stop (some outlive SIGTERM).
        deadline = time.monotonic() + 1
        for process in started:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        # What is left are the workers' helpers, adopted when their worker ended.
        for pid in _child_pids() - before:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        if subreaper:
            _set_child_subreaper(False)


def _child_pids() -> set[int]:
    """The processes whose parent is this one (Linux; elsewhere: none)."""
    pids = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir('/proc'):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(entry.path, 'stat').read_text()
                # The parent's pid is the second field after the command's ')'.
                if int(stat.rsplit(')', 1)[1].split()[1]) == os.getpid():
                    pids.add(int(entry.name))
    return pids


def _set_child_subreaper(enabled: bool) -> bool:
    """Make this process the subreaper of its descendants (Linux ``prctl``).

    Returns:
        Whether the setting was changed.
    """
    set_child_subreaper = 36  # PR_SET_CHILD_SUBREAPER, <linux/prctl.h>
    if not sys.platform.startswith('linux'):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(set_child_subreaper, int(enabled), 0, 0, 0) == 0)


def _items_written(split_dir: Path) -> int:
    """Items listed by the litdata index of one split (0 without an index)."""
    index = split_dir / 'index.json'
    if not index.is_file():
        return 0
    chunks = json.loads(index.read_text()).get('chunks', [])
    return sum(int(chunk['chunk_size']) for chunk in chunks)


def _default_start_method() -> str:
    return 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchgeo-mmearth shard``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog='torchgeo-mmearth shard',
        description='Convert an MMEarth-format corpus (HDF5) into litdata shards '
        'for streaming to many GPUs and nodes.',
        epilog='example: torchgeo-mmearth shard --root data --subset MMEarth64 '
        '--out shards/mmearth64 --workers 16; then upload the folder (e.g. '
        'aws s3 sync shards/mmearth64 s3://bucket/mmearth64). An interrupted '
        'conversion resumes when run again with the same arguments. '
        'torchgeo-mmearth shard --verify shards/mmearth64 checks a shard folder.',
    )
    parser.add_argument('--root', help='folder that holds the corpus (required)')
    parser.add_argument(
        '--subset',
        help='MMEarth, MMEarth64, MMEarth100k, MMEarthDemo or a corpus folder '
        "'data_<name>' (required)",
    )
    parser.add_argument('--out', help='shard folder to write (required)')
    parser.add_argument(
        '--verify',
        metavar='DIR',
        help='instead of converting: check every chunk and index of the shard '
        'folder DIR against the SHA-256 checksums of its manifest; prints one line '
        'per bad file and exits with 1, or an OK summary',
    )
    parser.add_argument(
        '--splits', nargs='*', default=None, help='splits to convert (default: all)'
    )
    parser.add_argument(
        '--compression',
        default='none' if DEFAULT_COMPRESSION is None else DEFAULT_COMPRESSION,
        help="'none', 'zstd' or 'zstd:<level>' (default: none; zstd halves the "
        'bytes and triples the CPU time of reading a tile)',
    )
    parser.add_argument(
        '--chunk-bytes',
        default=DEFAULT_CHUNK_BYTES,
        help=f'size of each chunk (default {DEFAULT_CHUNK_BYTES})',
    )
    parser.add_argument(
        '--workers', type=int, default=None, help='processes (default: CPU cores)'
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace an existing shard folder'
    )
    parser.add_argument(
        '--data-version',
        default=None,
        help="release of the data, 'v001' or 'v1.0' (default: detected from the "
        'file, then the folder name); chooses the folder when the root holds both',
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``torchgeo-mmearth shard``: convert, then print the report.

    Args:
        argv: the arguments after ``shard``.

    Returns:
        The exit status: 0, 2 for a refused or wrong conversion (one ``error:``
        line naming the file, and what was kept of the conversion), 130 when
        interrupted (the finished splits are kept for the next run); with
        ``--verify``, 1 if a file differs from its checksum.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        return _verify(args.verify)
    missing = [
        f'--{name}' for name in ('root', 'subset', 'out') if not vars(args)[name]
    ]
    if missing:
        parser.error(f'the following arguments are required: {", ".join(missing)}')
    compression = None if args.compression in (None, 'none') else args.compression
    try:
        check_new_output(args.out, args.overwrite)
        report = shard_corpus(
            args.root,
            args.subset,
            args.out,
            splits=args.splits,
            compression=compression,
            chunk_bytes=args.chunk_bytes,
            num_workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            version=args.data_version,
        )
    except KeyboardInterrupt:
        return report_interrupted(
            f'the finished splits are kept in {args.out}.partial',
            'To resume',
            command_line('shard', argv),
        )
    except _COMMAND_ERRORS as error:
        return report_error(error)
    print(report.summary())
    return 0


def _verify(shards: str) -> int:
    """Run ``torchgeo-mmearth shard --verify``: one line per bad file, or OK.

    Args:
        shards: the shard folder.

    Returns:
        The exit status: 0 if every file matches, 1 if one does not, 2 if the
        folder has no manifest of this format.
    """
    from ..datasets.streaming import MANIFEST, verify_shards

    try:
        checked, problems = verify_shards(shards)
    except _COMMAND_ERRORS as error:
        return report_error(error)
    for problem in problems:
        print(f'error: {problem}', file=sys.stderr)
    if problems:
        return 1
    print(f'OK: {checked} files match the checksums of {Path(shards) / MANIFEST}')
    return 0
