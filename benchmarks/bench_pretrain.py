#!/usr/bin/env python3
"""End-to-end MP-MAE pretraining throughput: loader and training step together.

Trains :class:`~torchgeo_mmearth.trainers.MPMAETask` (atto, 56 px, patch 8, the 12
pretext tasks, shared decoder) with :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`
on the synthetic MMEarth64-layout corpus of ``benchmarks/synthetic_corpus.py`` (real
layout and size, synthetic values), through Lightning, and reports samples/s and
the loader's share of the time: the time between the end of one step and the start
of the next (waiting for the DataLoader, the transfer and the on-device
normalisation and crops) over the whole time. Options try bf16-mixed precision,
channels_last and torch.compile on a GPU, and ``--shards`` reads the same corpus
as litdata shards (written once by ``torchgeo-mmearth shard`` into
``<root>/shards``) through
:class:`~torchgeo_mmearth.datamodules.MMEarthStreamingDataModule`. Run from the
repo root::

    python benchmarks/bench_pretrain.py --steps 20
    python benchmarks/bench_pretrain.py --precision bf16-mixed --channels-last --compile
    python benchmarks/bench_pretrain.py --shards --batch-size 256 --workers 8
"""

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from synthetic_corpus import DEFAULT_ROOT, ensure_corpus

from torchgeo_mmearth.datamodules import MMEarthDataModule, MMEarthStreamingDataModule
from torchgeo_mmearth.trainers import MPMAETask


class StepTimer(Callback):
    """Records, per training batch, the wait before it and the step itself."""

    def __init__(self, skip: int) -> None:
        """Initialize a new StepTimer that ignores the first *skip* batches."""
        self.skip = skip
        self.waits: list[float] = []
        self.steps: list[float] = []
        self._end = 0.0
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: Trainer, module: LightningModule, batch: Any, index: int
    ) -> None:
        """Note the start of a step and the wait since the previous one."""
        self._start = time.perf_counter()
        if index >= self.skip:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        module: LightningModule,
        outputs: Any,
        batch: Any,
        index: int,
    ) -> None:
        """Note the end of a step (after the device finished it)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._end = time.perf_counter()
        if index >= self.skip:
            self.steps.append(self._end - self._start)


def main() -> None:
    """Train a few steps and print throughput and the loader's share."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=DEFAULT_ROOT)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--precision', default='32-true')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument(
        '--shards', action='store_true', help='read litdata shards of the corpus'
    )
    args = parser.parse_args()
    ensure_corpus(args.root)

    task = MPMAETask(plot_every_n_steps=None)
    if args.channels_last:
        task = task.to(memory_format=torch.channels_last)
    if args.compile:
        task.mpmae.decoder = torch.compile(task.mpmae.decoder)  # type: ignore[assignment]
    datamodule: MMEarthDataModule | MMEarthStreamingDataModule
    if args.shards:
        shards = args.root / 'shards'
        if not shards.exists():
            from torchgeo_mmearth.corpus import shard_corpus

            shard_corpus(args.root, 'MMEarth64', shards, progress=False)
        datamodule = MMEarthStreamingDataModule(
            str(shards),
            batch_size=args.batch_size,
            num_workers=args.workers,
            val_split=None,
            cache_dir=str(args.root / 'shards_cache'),
        )
    else:
        datamodule = MMEarthDataModule(
            root=str(args.root),
            subset='MMEarth64',
            batch_size=args.batch_size,
            num_workers=args.workers,
            val_split=None,
        )
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    trainer.fit(task, datamodule)

    total = sum(timer.waits) + sum(timer.steps)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f'CPU, {torch.get_num_threads()} threads'
    )
    source = 'shards' if args.shards else 'HDF5'
    print(
        f'MP-MAE atto 56/8, 12 tasks, {source}, batch {args.batch_size}, '
        f'{args.workers} workers, precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}; {device}'
    )
    print(f'{len(timer.steps)} steps after {args.warmup} warm-up steps')
    print(f'samples/s end to end: {len(timer.steps) * args.batch_size / total:.1f}')
    print(
        f'step (forward, backward, optimizer) median: {sorted(timer.steps)[len(timer.steps) // 2] * 1e3:.0f} ms'
    )
    print(f'loader share of the time: {100 * sum(timer.waits) / total:.1f} %')


if __name__ == '__main__':
    main()
