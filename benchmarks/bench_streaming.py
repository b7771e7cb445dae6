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
from pathlib import Path
from typing import Any

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

    def torchgeo() -> tuple[float, float | None]:
        loader = DataLoader(
            TorchGeoMMEarth(args.root, subset='MMEarth64'),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
        )
        return measure(loader, args.batches, args.batch_size)

    def hdf5() -> tuple[float, float | None]:
        dm = MMEarthDataModule(
            root=str(args.root),
            subset='MMEarth64',
            modalities=modalities,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        dm.setup('fit')
        return measure(dm.train_dataloader(), args.batches, args.batch_size)

    def shards(compression: str | None) -> tuple[float, float | None]:
        cache = work / 'cache'
        shutil.rmtree(cache, ignore_errors=True)
        dm = MMEarthStreamingDataModule(
            str(work / f'shards_{compression or "none"}'),
            modalities=modalities,
            batch_size=args.batch_size,
            num_workers=args.workers,
            cache_dir=str(cache),
        )
        dm.setup('fit')
        return measure(dm.train_dataloader(), args.batches, args.batch_size)

    readers: list[tuple[str, Any]] = [('TorchGeo MMEarth (HDF5)', torchgeo)]
    readers.append(('ours, MMEarthDataModule (HDF5)', hdf5))
    for compression in COMPRESSIONS:
        readers.append(
            (
                f'ours, MMEarthStreamingDataModule (shards, {compression or "none"})',
                lambda c=compression: shards(c),
            )
        )
    rounds = [[run() for _, run in readers] for _ in range(args.repeats)]
    results = [
        (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs)
            if all(r[1] is not None for r in runs)
            else None,
        )
        for runs in zip(*rounds, strict=True)
    ]

    tiles = sum(conversions[0][1].tiles.values())
    print(
        f'synthetic MMEarth64 layout, {tiles} tiles of 64 px, {len(modalities)} '
        f'modalities, batch {args.batch_size}, {args.workers} workers, '
        f'{args.batches} batches, median of {args.repeats}; torch {torch.__version__}, '
        f'{os.cpu_count()} CPUs'
    )
    print()
    print('| reader | samples/s | CPU ms/sample | bytes on disk |')
    print('|---|---|---|---|')
    sizes = [h5.stat().st_size, h5.stat().st_size]
    sizes += [report.shard_bytes for _, report in conversions]
    for (label, _), (rate, cpu), size in zip(readers, results, sizes, strict=True):
        cpu_text = f'{cpu:.3f}' if cpu is not None else 'n/a'
        print(f'| {label} | {rate:.0f} | {cpu_text} | {size:,} |')
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
