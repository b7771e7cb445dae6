#!/usr/bin/env python3
"""Loader throughput: torchgeo_mmearth's datamodule loader against torchgeo.datasets.MMEarth.

Writes (once) a synthetic corpus in the exact MMEarth64 layout (gzip, one chunk per
tile; about 130 KB per tile, like the real files) with ``tests/data/mmearth/data.py``,
then reads random batches in the same run, with 0 and 2 DataLoader workers:

* TorchGeo: ``torchgeo.datasets.MMEarth`` in a plain DataLoader (default collate);
* ours: what users get from ``MMEarthDataModule.train_dataloader()`` (a
  PackedDataLoader over ``MMEarth``: raw values out of the workers, each batch sent
  as one shared buffer, normalised later on the device) and, for reference, the
  same with the normalisation (``MMEarthNormalize``) run on the CPU in the main
  process ("+ CPU norm"). TorchGeo normalises in its workers.

Modality sets:

* all modalities: every modality TorchGeo can return (all but lat, lon and month,
  which TorchGeo cannot read), for both readers;
* all modalities + lat/lon/month: ours alone reads the 3 more datasets per tile,
  compared with the same TorchGeo baseline;
* Sentinel-2 only: the 12 MP-MAE input bands.

Besides samples/s, the table gives the CPU time per sample of the main process and
its workers together (Linux only): on a shared machine it varies much less than
samples/s, and it bounds the throughput of a CPU-bound loader (cores / CPU time).
Run from the repo root::

    python benchmarks/bench_mmearth_loader.py [--tiles 2000] [--batches 30] [--threads 1]

Synthetic data: the numbers measure reading speed only.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from synthetic_corpus import DEFAULT_ROOT, ensure_corpus
from torch.utils.data import DataLoader
from torchgeo.datasets import MMEarth as TorchGeoMMEarth

from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.modalities import MODALITIES, SENTINEL2_INPUT_BANDS

Hook = Callable[[dict[str, Any]], Any]

_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def cpu_seconds() -> float | None:
    """CPU time used so far by this process and its live children (DataLoader workers).

    Returns:
        Seconds of user and system time, or None where ``/proc`` is missing.
    """
    me = str(os.getpid())
    total = 0
    try:
        for entry in os.scandir('/proc'):
            if not entry.name.isdigit():
                continue
            try:
                with open(f'/proc/{entry.name}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            if entry.name == me or fields[1] == me:  # fields[1]: parent pid
                total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / _TICKS


def measure(
    loader: Iterable[dict[str, Any]],
    batches: int,
    batch_size: int,
    on_batch: Hook | None = None,
) -> tuple[float, float | None]:
    """Samples/s and CPU ms per sample over *batches* batches, after one warm-up batch.

    Returns:
        Samples per second and CPU milliseconds per sample (None without ``/proc``).
    """
    iterator = iter(loader)
    next(iterator)  # worker start-up and first reads are not throughput
    cpu = cpu_seconds()
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if on_batch is not None:
            on_batch(batch)
    elapsed = time.perf_counter() - start
    end_cpu = cpu_seconds()
    del iterator
    samples = batches * batch_size
    cpu_ms = None
    if cpu is not None and end_cpu is not None:
        cpu_ms = (end_cpu - cpu) / samples * 1e3
    return samples / elapsed, cpu_ms


def main() -> None:
    """Run the benchmark and print a table with ratios against TorchGeo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=DEFAULT_ROOT)
    parser.add_argument('--tiles', type=int, default=2000)
    parser.add_argument('--batches', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument(
        '--threads',
        type=int,
        help="intra-op threads of the main process (default: PyTorch's); on a "
        'machine shared with other jobs, 1 avoids threads spinning while they wait',
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ensure_corpus(args.root, args.tiles)
    h5 = args.root / 'data_1M_v001_64' / 'data_1M_v001_64.h5'
    h5.read_bytes()  # both readers then start from the page cache
    torch.manual_seed(0)

    s2_bands = list(SENTINEL2_INPUT_BANDS)
    torchgeo_set = [m for m in MODALITIES if m not in ('lat', 'lon', 'month')]
    theirs_all = TorchGeoMMEarth(args.root, subset='MMEarth64')
    theirs_s2 = TorchGeoMMEarth(
        args.root,
        subset='MMEarth64',
        modalities=['sentinel2'],
        modality_bands={'sentinel2': s2_bands},
    )

    def ours(modalities: list[str], workers: int) -> MMEarthDataModule:
        dm = MMEarthDataModule(
            root=str(args.root),
            subset='MMEarth64',
            modalities=modalities,
            batch_size=args.batch_size,
            num_workers=workers,
        )
        dm.setup('fit')
        return dm

    print(
        f'{len(ours(torchgeo_set, 0).train_dataset)} tiles, batch size '  # type: ignore[arg-type]
        f'{args.batch_size}, {args.batches} batches, median of {args.repeats} runs; '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'{os.cpu_count()} CPUs'
    )

    rows = []
    for label, modalities, theirs in (
        ('all modalities', torchgeo_set, theirs_all),
        ('all + lat/lon/month (ours)', list(MODALITIES), theirs_all),
        ('Sentinel-2 only', ['sentinel2'], theirs_s2),
    ):
        for workers in (0, 2):

            def baseline(
                theirs: TorchGeoMMEarth = theirs, workers: int = workers
            ) -> Any:
                loader = DataLoader(
                    theirs,
                    batch_size=args.batch_size,
                    shuffle=True,
                    num_workers=workers,
                )
                return measure(loader, args.batches, args.batch_size)

            def datamodule(
                normalize: bool,
                modalities: list[str] = modalities,
                workers: int = workers,
            ) -> Any:
                dm = ours(modalities, workers)
                hook = dm.normalizer if normalize else None
                return measure(
                    dm.train_dataloader(), args.batches, args.batch_size, hook
                )

            # Interleaved rounds, so that load from other processes hits all alike.
            rounds = [
                [baseline(), datamodule(False), datamodule(True)]
                for _ in range(args.repeats)
            ]
            rates = [
                statistics.median(run[0] for run in runs)
                for runs in zip(*rounds, strict=True)
            ]
            cpus = [
                statistics.median(run[1] for run in runs)
                if all(run[1] is not None for run in runs)
                else None
                for runs in zip(*rounds, strict=True)
            ]
            rows.append((label, workers, rates, cpus))
            print(f'  measured {label}, {workers} workers', flush=True)

    print()
    print(
        '| modalities | workers | torchgeo MMEarth (samples/s) '
        '| ours, raw to device (samples/s) | ratio '
        '| ours + CPU norm (samples/s) | ratio '
        '| CPU ms/sample: torchgeo | ours | ratio |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|')
    for label, workers, (baseline, raw, normalized), (cpu_tg, cpu_raw, _) in rows:
        cpu = 'n/a | n/a | n/a'
        if cpu_tg is not None and cpu_raw is not None:
            cpu = f'{cpu_tg:.2f} | {cpu_raw:.2f} | {cpu_tg / cpu_raw:.1f}x'
        print(
            f'| {label} | {workers} | {baseline:.0f} | {raw:.0f} | '
            f'{raw / baseline:.1f}x | {normalized:.0f} | {normalized / baseline:.1f}x | '
            f'{cpu} |'
        )


if __name__ == '__main__':
    main()
