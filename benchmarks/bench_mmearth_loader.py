#!/usr/bin/env python3
"""Loader throughput: torchgeo_mmearth.datasets.MMEarth against torchgeo.datasets.MMEarth.

Writes (once) a synthetic corpus in the exact MMEarth64 layout (gzip, one chunk per
tile; about 130 KB per tile, like the real files) with ``tests/data/mmearth/data.py``,
then reads random batches through a DataLoader with both readers, in the same run:

* all modalities: every modality TorchGeo can return (all but lat, lon and month,
  which TorchGeo cannot read), for both readers;
* all modalities + lat/lon/month: ours alone reads the 3 more datasets per tile,
  compared with the same TorchGeo baseline;
* Sentinel-2 only: the 12 MP-MAE input bands.

Ours is timed as the datamodule uses it (raw values out of the workers, normalised
on the device) and, for reference, with the normalisation run on the CPU in the main
process ("+ CPU norm"). TorchGeo normalises in its workers. Run from the repo root::

    python benchmarks/bench_mmearth_loader.py [--tiles 2000] [--batches 30]

Synthetic data: the numbers measure reading speed only.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from synthetic_corpus import DEFAULT_ROOT, ensure_corpus
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import MMEarth as TorchGeoMMEarth

from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import MODALITIES, SENTINEL2_INPUT_BANDS

Hook = Callable[[dict[str, Any]], Any]


def samples_per_second(
    dataset: Dataset[dict[str, Any]],
    workers: int,
    batches: int,
    batch_size: int,
    on_batch: Hook | None = None,
) -> float:
    """Samples/s over *batches* random batches, after one warm-up batch."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up and first reads are not throughput
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if on_batch is not None:
            on_batch(batch)
    elapsed = time.perf_counter() - start
    del iterator
    return batches * batch_size / elapsed


def main() -> None:
    """Run the benchmark and print a table with ratios against TorchGeo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=DEFAULT_ROOT)
    parser.add_argument('--tiles', type=int, default=2000)
    parser.add_argument('--batches', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    ensure_corpus(args.root, args.tiles)
    h5 = args.root / 'data_1M_v001_64' / 'data_1M_v001_64.h5'
    h5.read_bytes()  # both readers then start from the page cache

    s2_bands = list(SENTINEL2_INPUT_BANDS)
    torchgeo_set = [m for m in MODALITIES if m not in ('lat', 'lon', 'month')]
    ours_all = MMEarth(args.root, 'MMEarth64', modalities=torchgeo_set, normalize=False)
    ours_every = MMEarth(
        args.root, 'MMEarth64', modalities=list(MODALITIES), normalize=False
    )
    ours_s2 = MMEarth(args.root, 'MMEarth64', modalities=['sentinel2'], normalize=False)
    theirs_all = TorchGeoMMEarth(args.root, subset='MMEarth64')
    theirs_s2 = TorchGeoMMEarth(
        args.root,
        subset='MMEarth64',
        modalities=['sentinel2'],
        modality_bands={'sentinel2': s2_bands},
    )
    print(
        f'{len(ours_all)} tiles, batch size {args.batch_size}, {args.batches} batches, '
        f'median of {args.repeats} runs; torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads'
    )

    rows = []
    for label, ours, theirs in (
        ('all modalities', ours_all, theirs_all),
        ('all + lat/lon/month (ours)', ours_every, theirs_all),
        ('Sentinel-2 only', ours_s2, theirs_s2),
    ):
        for workers in (0, 2):
            runs: list[tuple[Dataset[dict[str, Any]], Hook | None]] = [
                (theirs, None),
                (ours, None),
                (ours, ours.normalizer),
            ]
            # Interleaved rounds, so that load from other processes hits all alike.
            rounds = [
                [
                    samples_per_second(d, workers, args.batches, args.batch_size, h)
                    for d, h in runs
                ]
                for _ in range(args.repeats)
            ]
            baseline, raw, normalized = (
                statistics.median(r) for r in zip(*rounds, strict=True)
            )
            rows.append((label, workers, baseline, raw, normalized))
            print(f'  measured {label}, {workers} workers', flush=True)

    print()
    print(
        '| modalities | workers | torchgeo MMEarth (samples/s) | ours, raw to device (samples/s) | ratio | ours + CPU norm (samples/s) | ratio |'
    )
    print('|---|---|---|---|---|---|---|')
    for label, workers, baseline, raw, normalized in rows:
        print(
            f'| {label} | {workers} | {baseline:.0f} | {raw:.0f} | {raw / baseline:.1f}x | '
            f'{normalized:.0f} | {normalized / baseline:.1f}x |'
        )


if __name__ == '__main__':
    main()
