"""Datamodule of the labelled demo tiles (:class:`~torchgeo_mmearth.datasets.BigEarthNetDemo`)."""

import os
from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
from torchgeo.datamodules import NonGeoDataModule

from ..datasets.bigearthnet_demo import BigEarthNetDemo
from ..modalities import SENTINEL2_INPUT_BANDS

__all__ = ['BigEarthNetDemoDataModule']


class BigEarthNetDemoDataModule(NonGeoDataModule):
    """Multi-label classification on the 56 packaged demo tiles.

    Batches are ``{'image': (B, C, 64, 64), 'label': (B, 43)}``, z-scored on the
    device with the demo corpus's L2A band statistics (TorchGeo's default ``aug``
    with :attr:`mean` and :attr:`std`), which is how MP-MAE pretraining on the demo
    corpus normalises Sentinel-2. Use it with TorchGeo's ``ClassificationTask``
    (``task='multilabel', num_labels=43``) or the frozen-feature probes; see
    :class:`~torchgeo_mmearth.datasets.BigEarthNetDemo` for what the numbers mean.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data',
        bands: Sequence[str] = SENTINEL2_INPUT_BANDS,
        batch_size: int = 8,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        """Initialize a new BigEarthNetDemoDataModule instance.

        Args:
            root: directory searched for ``data_bigearthnet_demo`` (the packaged
                copy is used when it is not there).
            bands: Sentinel-2 bands, in channel order (default: MMEarth's 12 input
                bands).
            batch_size: size of each mini-batch.
            num_workers: number of workers for parallel data loading.
            **kwargs: additional keyword arguments passed to
                :class:`~torchgeo_mmearth.datasets.BigEarthNetDemo`.
        """
        super().__init__(
            BigEarthNetDemo,
            batch_size,
            num_workers,
            root=root,
            bands=list(bands),
            **kwargs,
        )
        train = BigEarthNetDemo(root, bands=bands)
        self.mean, self.std = train.band_statistics()
        self.aug = K.AugmentationSequential(
            K.Normalize(mean=self.mean, std=self.std), data_keys=None, keepdim=True
        )
        #: The number of labels (43, BigEarthNet's nomenclature).
        self.num_labels = len(train.classes)
