"""A small classification datamodule whose class is the mean of a band.

Each image is Gaussian noise around a base level; the sample's class (or each of
its labels, multilabel) raises the mean of one band (class c: band c mod
channels) by ``signal`` noise standard deviations, so any backbone that keeps the
band means can learn it, and ``signal`` sets how hard it is. The datamodule
z-scores on the device with TorchGeo's default ``aug`` (``mean``/``std``), and
supports fake GEO-Bench-style ``partition`` names (``'0.25x_train'``: a fixed
quarter of the train split; val and test stay whole) with ``sample_ids``.
Referenced by ``class_path`` from the CLI tests and the probe benchmark.
"""

import re
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import NonGeoDataset

LEVEL = 1000.0
NOISE = 100.0
LENGTHS = {'train': 96, 'val': 48, 'test': 96}
_SPLIT_SEED = {'train': 0, 'val': 1, 'test': 2}


def partition_fraction(partition: str | None) -> float:
    """The train fraction of a partition name ('default' or '<f>x_train')."""
    if partition in (None, 'default'):
        return 1.0
    match = re.fullmatch(r'(\d+(?:\.\d+)?)x_train', partition)
    if match is None:
        raise ValueError(
            f"partition must be 'default' or '<f>x_train', got {partition!r}"
        )
    return float(match[1])


class BandMeanDataset(NonGeoDataset):
    """Random images whose class raises the mean of one band."""

    def __init__(
        self,
        split: str = 'train',
        task: str = 'multiclass',
        num_classes: int = 4,
        channels: int = 12,
        size: int = 16,
        signal: float = 1.0,
        lengths: dict[str, int] | None = None,
        seed: int = 0,
        partition: str | None = None,
    ) -> None:
        n = {**LENGTHS, **(lengths or {})}[split]
        generator = torch.Generator().manual_seed(1000 * seed + _SPLIT_SEED[split])
        if task == 'multiclass':
            self.labels = torch.arange(n) % num_classes
            self.labels = self.labels[torch.randperm(n, generator=generator)]
            active = torch.nn.functional.one_hot(self.labels, num_classes).float()
        else:
            self.labels = (torch.rand(n, num_classes, generator=generator) < 0.3).long()
            active = self.labels.float()
        band_signal = torch.zeros(n, channels)
        for c in range(num_classes):
            band_signal[:, c % channels] += active[:, c]
        noise = torch.randn(n, channels, size, size, generator=generator)
        self.images = LEVEL + NOISE * (noise + signal * band_signal[..., None, None])
        self.sample_ids = [f'{split}-{i}' for i in range(n)]
        fraction = partition_fraction(partition)
        if split == 'train' and fraction < 1:
            keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            keep = keep[: max(1, round(fraction * n))].sort().values
            self.images, self.labels = self.images[keep], self.labels[keep]
            self.sample_ids = [self.sample_ids[i] for i in keep.tolist()]

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One sample: image and label."""
        return {'image': self.images[index], 'label': self.labels[index]}


class BandMeanDataModule(NonGeoDataModule):
    """:class:`BandMeanDataset` splits, z-scored on the device."""

    def __init__(
        self, batch_size: int = 16, num_workers: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(BandMeanDataset, batch_size, num_workers, **kwargs)
        channels = kwargs.get('channels', 12)
        self.mean = torch.full((channels,), LEVEL)
        self.std = torch.full((channels,), NOISE)
        self.aug = K.AugmentationSequential(
            K.Normalize(mean=self.mean, std=self.std), data_keys=None, keepdim=True
        )
        self.num_classes = kwargs.get('num_classes', 4)
