#!/usr/bin/env python3
"""Load an MMEarth corpus end to end, as pretraining will, and report what it holds.

Reads the corpus through :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`
(raw tiles from DataLoader workers, then normalisation, aligned random crops and
flips on the device: CUDA when available, else the CPU), and prints per modality the
batch shape and the fraction of valid values, and the loader throughput. Saves a
figure of one tile. Works on the published corpora (``--root`` is the folder holding
``data_1M_v001_64/``), on corpora built with ``torchgeo-mmearth build-corpus`` and on
the packaged demo corpus.

Example::

    python examples/explore_mmearth.py --root data --subset MMEarth64 --output out
    python examples/explore_mmearth.py --subset MMEarthDemo
"""

import argparse
import time
from pathlib import Path

import torch
from lightning.pytorch.utilities import move_data_to_device

from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import IGNORE_INDEX, MODALITIES, Kind


def main() -> None:
    """Load batches, print a per-modality summary and save a figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=Path('data'))
    parser.add_argument(
        '--subset',
        default='MMEarth64',
        help=f'one of {list(MMEarth.subsets)} or a corpus folder name data_<name>',
    )
    parser.add_argument('--output', type=Path, default=Path('demo-output'))
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=8)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

    datamodule = MMEarthDataModule(
        root=str(args.root),
        subset=args.subset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        flips=True,
    )
    datamodule.setup('fit')
    dataset = datamodule.train_dataset
    assert isinstance(dataset, MMEarth)
    print(
        f'{dataset.h5_path}: {dataset.num_tiles} tiles of {dataset.tile_size} px, '
        f'{len(dataset)} in the training split; device {device}'
    )

    valid: dict[str, list[float]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    loaded = 0
    start = time.perf_counter()
    for index, batch in enumerate(datamodule.train_dataloader()):
        if index == args.batches:
            break
        # What on_after_batch_transfer runs in the training stage.
        batch = datamodule.train_aug(move_data_to_device(batch, device))
        loaded += len(batch['tile_id'])
        for name in dataset.modalities:
            modality = MODALITIES[name]
            values = batch[modality.key]
            shapes[name] = tuple(values.shape)
            ok = (
                values != IGNORE_INDEX
                if modality.kind is Kind.CATEGORICAL
                else values.isfinite()
            )
            valid.setdefault(name, []).append(ok.float().mean().item())
    elapsed = time.perf_counter() - start

    print(f'\n{"modality":<20}{"batch shape":<24}valid values')
    for name, fractions in valid.items():
        print(
            f'{name:<20}{shapes[name]!s:<24}{100 * sum(fractions) / len(fractions):5.1f} %'
        )
    print(
        f'\n{loaded} tiles loaded and augmented in {elapsed:.1f} s '
        f'({loaded / elapsed:.0f} tiles/s with {args.workers} workers, including start-up)'
    )

    figure = dataset.plot(dataset[0], suptitle=f'tile {dataset[0]["tile_id"]}')
    path = args.output / 'sample.png'
    figure.savefig(path, dpi=100)
    print(f'figure of one tile: {path}')


if __name__ == '__main__':
    main()
