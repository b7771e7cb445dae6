#!/usr/bin/env python3
"""Streaming from litdata shards against the HDF5 readers, and the shards' compression.

One run on one synthetic corpus in the exact MMEarth64 layout (written once by
``synthetic_corpus.py``; gzip HDF5, one chunk per tile), all modalities that
TorchGeo can read (all but lat, lon and month), 2 DataLoader workers, batches of 32:

* TorchGeo: ``torchgeo.datasets.MMEarth`` in a plain DataLoader;
* ours, HDF5: ``MMEarthDataModule.train_dataloader()``;
* ours, shards: ``MMEarthStreamingDataModule.train_dataloader()`` on local shards
  written by ``torchgeo-mmearth shard``, for each compression measured (none and
  zstd levels); for each, the conversion time and the bytes on disk.

TorchGeo normalises in its workers; our loaders return the stored values, which the
datamodules normalise on the device (``on_after_batch_transfer``). So each of ours is
measured twice, as in ``bench_mmearth_loader.py``: as is (the figure for a trainer
that normalises on a GPU) and "+ CPU norm", with ``MMEarthNormalize`` run on the CPU
in the main process (the figure for a CPU-only trainer). Both are compared with
TorchGeo's reader in the same run.

Each loader is timed over ``--batches`` batches after one warm-up batch (worker
start-up and the first chunk reads excluded), interleaved, median of
``--repeats`` runs. CPU ms per sample counts the main process and its workers
together (Linux ``/proc``). Run from the repo root::

    python benchmarks/bench_streaming.py [--tiles 2000] [--batches 30]

Synthetic data: the numbers measure reading speed and relative sizes only; real
imagery compresses differently.
"""

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from bench_mmearth_loader import measure
from synthetic_corpus import DEFAULT_ROOT, ensure_corpus
from torch.utils.data import DataLoader
from torchgeo.datasets import MMEarth as TorchGeoMMEarth

from torchgeo_mmearth.corpus import shard_corpus
from torchgeo_mmearth.corpus.shards import folder_bytes
from torchgeo_mmearth.datamodules import MMEarthDataModule, MMEarthStreamingDataModule
from torchgeo_mmearth.modalities import MODALITIES

COMPRESSIONS = (None, 'zstd:1', 'zstd:3', 'zstd:9')

#: What ``measure`` returns: samples/s and CPU ms per sample (None without /proc).
Result = tuple[float, float | None]


def median(runs: list[Result]) -> Result:
    """The median samples/s and CPU ms per sample of repeated runs of one loader.

    Args:
        runs: the results of ``measure``, one per run.

    Returns:
        The medians; the CPU time is None if any run lacks it.
    """
    cpus = [cpu for _, cpu in runs]
    return (
        statistics.median(rate for rate, _ in runs),
        statistics.median(c for c in cpus if c is not None)
        if all(c is not None for c in cpus)
        else None,
    )


def main() -> None:
    """Convert, read, and print the two tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=DEFAULT_ROOT)
    parser.add_argument('--tiles', type=int, default=2000)
    parser.add_argument('--batches', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ensure_corpus(args.root, args.tiles)
    h5 = args.root / 'data_1M_v001_64' / 'data_1M_v001_64.h5'
    h5.read_bytes()  # every reader starts from the page cache
    modalities = [m for m in MODALITIES if m not in ('lat', 'lon', 'month')]
    work = Path(tempfile.mkdtemp(prefix='bench_streaming_'))

    conversions = []
    for compression in COMPRESSIONS:
        out = work / f'shards_{compression or "none"}'
        report = shard_corpus(
            args.root,
            'MMEarth64',
            out,
            compression=compression,
            num_workers=args.workers,
            progress=False,
        )
        conversions.append((compression, report))
        folder_bytes(out)  # and into the page cache
        for path in out.rglob('*.bin'):
            path.read_bytes()

    def torchgeo() -> Result:
        loader = DataLoader(
            TorchGeoMMEarth(args.root, subset='MMEarth64'),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
        )
        return measure(loader, args.batches, args.batch_size)

    def ours(
        dm: MMEarthDataModule | MMEarthStreamingDataModule, normalize: bool
    ) -> Result:
        dm.setup('fit')
        hook = dm.normalizer if normalize else None
        return measure(dm.train_dataloader(), args.batches, args.batch_size, hook)

    def hdf5(normalize: bool) -> Result:
        dm = MMEarthDataModule(
            root=str(args.root),
            subset='MMEarth64',
            modalities=modalities,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        return ours(dm, normalize)

    def shards(compression: str | None, normalize: bool) -> Result:
        cache = work / 'cache'
        shutil.rmtree(cache, ignore_errors=True)
        dm = MMEarthStreamingDataModule(
            str(work / f'shards_{compression or "none"}'),
            modalities=modalities,
            batch_size=args.batch_size,
            num_workers=args.workers,
            cache_dir=str(cache),
        )
        return ours(dm, normalize)

    # (label, bytes on disk, as is, + CPU norm); TorchGeo normalises in its workers.
    readers: list[tuple[str, int, Callable[[], Result], Callable[[], Result] | None]]
    readers = [('TorchGeo MMEarth (HDF5)', h5.stat().st_size, torchgeo, None)]
    readers.append(
        (
            'ours, MMEarthDataModule (HDF5)',
            h5.stat().st_size,
            partial(hdf5, False),
            partial(hdf5, True),
        )
    )
    for compression, report in conversions:
        readers.append(
            (
                f'ours, MMEarthStreamingDataModule (shards, {compression or "none"})',
                report.shard_bytes,
                partial(shards, compression, False),
                partial(shards, compression, True),
            )
        )
    # Interleaved rounds, so that load from other processes hits all alike.
    rounds = [
        [(raw(), norm() if norm is not None else None) for _, _, raw, norm in readers]
        for _ in range(args.repeats)
    ]

    results = []
    for runs in zip(*rounds, strict=True):
        norms = [norm for _, norm in runs if norm is not None]
        results.append(
            (median([raw for raw, _ in runs]), median(norms) if norms else None)
        )

    tiles = sum(conversions[0][1].tiles.values())
    print(
        f'synthetic MMEarth64 layout, {tiles} tiles of 64 px, {len(modalities)} '
        f'modalities, batch {args.batch_size}, {args.workers} workers, '
        f'{args.batches} batches, median of {args.repeats}; torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads, {os.cpu_count()} CPUs'
    )
    print()
    print(
        '| reader | samples/s | vs TorchGeo | + CPU norm: samples/s | vs TorchGeo '
        '| CPU ms/sample | TorchGeo / ours | + CPU norm: CPU ms/sample '
        '| TorchGeo / ours | bytes on disk |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|')
    base_rate, base_cpu = results[0][0]
    for (label, size, _, _), (raw, normalized) in zip(readers, results, strict=True):
        cells = []
        for rate, cpu in (raw, normalized or raw):
            cells.append(f'{rate:.0f} | {rate / base_rate:.1f}x')
            if cpu is None or base_cpu is None:
                cells.append('n/a | n/a')
            else:
                cells.append(f'{cpu:.3f} | {base_cpu / cpu:.1f}x')
        if normalized is None:  # TorchGeo: its figures already include normalisation
            cells[2] = cells[3] = 'same | 1.0x'
        rates, cpus = cells[0::2], cells[1::2]  # as is, + CPU norm
        print(f'| {label} | {" | ".join(rates + cpus)} | {size:,} |')
    print()
    print('| compression | bytes on disk | vs HDF5 | conversion s |')
    print('|---|---|---|---|')
    for compression, report in conversions:
        print(
            f'| {compression or "none"} | {report.shard_bytes:,} | '
            f'{report.shard_bytes / report.h5_bytes:.2f} | {report.seconds:.1f} |'
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
