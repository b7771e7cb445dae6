"""A tiny random Sentinel-2 datamodule for the ``torchgeo fit`` tests of the weights.

Referenced from ``tests/conf/weights_*.yaml`` by ``class_path``, which also makes
the CLI import ``torchgeo_mmearth`` (and so register ``MMEarthWeights``).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import NonGeoDataset

import torchgeo_mmearth  # noqa: F401  (registers the models and weights)
from torchgeo_mmearth.models import MMEarthWeights

#: GEO-Bench / BigEarthNet band order: B8 before B8A, unlike MMEarth.
GEOBENCH_BANDS = (
    'B01',
    'B02',
    'B03',
    'B04',
    'B05',
    'B06',
    'B07',
    'B08',
    'B8A',
    'B09',
    'B11',
    'B12',
)


class FakeS2Dataset(NonGeoDataset):
    """Random raw Sentinel-2 digital numbers with random labels."""

    def __init__(
        self,
        split: str = 'train',
        task: str = 'multiclass',
        num_classes: int = 3,
        bands: Sequence[str] = GEOBENCH_BANDS,
        size: int = 32,
        length: int = 4,
    ) -> None:
        generator = torch.Generator().manual_seed(len(split))
        shape = (length, len(bands), size, size)
        self.images = torch.randint(1, 10_000, shape, generator=generator)
        self.images = self.images.to(torch.int32)
        self.task = task
        if task == 'segmentation':
            self.targets = torch.randint(
                0, num_classes, (length, size, size), generator=generator
            )
        elif task == 'multilabel':
            self.targets = torch.randint(
                0, 2, (length, num_classes), generator=generator
            )
        else:
            self.targets = torch.randint(0, num_classes, (length,), generator=generator)

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One sample: raw ``image`` with ``label`` or ``mask``."""
        key = 'mask' if self.task == 'segmentation' else 'label'
        return {'image': self.images[index].float(), key: self.targets[index]}


class FakeS2DataModule(NonGeoDataModule):
    """Fake Sentinel-2 data in GEO-Bench band order.

    It is remapped and normalised for an MMEarth weights member on the device
    (``transforms_for``).
    """

    def __init__(
        self,
        batch_size: int = 2,
        num_workers: int = 0,
        weights: str = 'S2_MP_MAE',
        **kwargs: Any,
    ) -> None:
        super().__init__(FakeS2Dataset, batch_size, num_workers, **kwargs)
        bands = kwargs.get('bands', GEOBENCH_BANDS)
        self.aug = MMEarthWeights[weights].transforms_for(bands)
