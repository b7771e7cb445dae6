"""The packaged demo tiles as a labelled (multi-label) classification dataset."""

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import h5py
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor
from torchgeo.datasets import NonGeoDataset, RGBBandsMissingError

from ..modalities import SENTINEL2_INPUT_BANDS, band_statistics
from .mmearth import MMEarth
from .utils import percentile_stretch

__all__ = ['BigEarthNetDemo']

Sample = dict[str, Any]


class BigEarthNetDemo(NonGeoDataset):
    """Sentinel-2 tiles of the demo corpus with the BigEarthNet labels of their patch.

    The 56 tiles (64 x 64 px, 10 m, L2A) of the packaged demo corpus
    (``MMEarth(subset='MMEarthDemo')``), cropped from 14 real BigEarthNet patches,
    each labelled with the 43-class BigEarthNet labels of the 120 px patch it was
    cropped from (``data_bigearthnet_demo_labels.json``): a multi-label task in the
    format of TorchGeo's classification datasets, with the corpus's splits
    (40 / 8 / 8 tiles, the four crops of a patch in one split).

    It exists so that the downstream tutorials and smoke tests run on real pixels
    and real labels without downloads. It is far too small for a benchmark, and a
    64 px crop may lack some of its patch's classes: numbers obtained on it are
    pipeline checks, not BigEarthNet or GEO-Bench results.

    If you use this dataset, cite BigEarthNet (Sumbul et al., IGARSS 2019,
    https://doi.org/10.1109/IGARSS.2019.8900532) and MMEarth
    (https://arxiv.org/abs/2405.02771).
    """

    #: Split names, as in the corpus splits file.
    splits: ClassVar[tuple[str, ...]] = MMEarth.splits

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data',
        split: str = 'train',
        bands: Sequence[str] = SENTINEL2_INPUT_BANDS,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Initialize a new BigEarthNetDemo instance.

        Args:
            root: directory searched for ``data_bigearthnet_demo`` first; the
                packaged copy is used when it is not there.
            split: 'train', 'val' or 'test'.
            bands: Sentinel-2 bands, in channel order (default: MMEarth's 12 input
                bands, B8A before B8).
            transforms: a function/transform that takes a sample and returns a
                transformed version.

        Raises:
            DatasetNotFoundError: if the demo corpus is missing.
            ValueError: for an unknown split or band.
            FileNotFoundError: if the corpus has no labels file.
        """
        self.tiles = MMEarth(
            root,
            'MMEarthDemo',
            split,
            modalities=['sentinel2'],
            modality_bands={'sentinel2': bands},
        )
        self.split = split
        self.bands = tuple(bands)
        self.transforms = transforms
        labels_path = self.tiles.directory / (
            self.tiles.directory.name + '_labels.json'
        )
        if not labels_path.is_file():
            raise FileNotFoundError(
                f'{labels_path} is missing: rebuild the demo corpus with '
                '`python -m torchgeo_mmearth.corpus.demo` (it writes the labels)'
            )
        record = json.loads(labels_path.read_text())
        #: The 43 BigEarthNet class names, in label-vector order.
        self.classes: tuple[str, ...] = tuple(record['classes'])
        with h5py.File(self.tiles.h5_path, 'r') as f:
            tile_ids = [
                f['metadata'][row]['tile_id'].decode() for row in self.tiles.indices
            ]
        self.labels = torch.zeros(len(tile_ids), len(self.classes), dtype=torch.long)
        for i, tile_id in enumerate(tile_ids):
            self.labels[i, record['labels'][tile_id]] = 1

    def __len__(self) -> int:
        """Return the number of tiles in the split.

        Returns:
            The length of the dataset.
        """
        return len(self.tiles)

    def __getitem__(self, index: int) -> Sample:
        """Return one tile and its labels.

        Args:
            index: index of the tile in the split.

        Returns:
            ``{'image': float32 (C, 64, 64) digital numbers, 'label': int64 (43,)
            multi-hot}``.
        """
        image = self.tiles[index]['image_sentinel2']
        sample = {'image': image.float(), 'label': self.labels[index]}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def band_statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of :attr:`bands` in the corpus statistics.

        The L2A entry of the corpus's ``band_stats.json`` (every demo tile is L2A),
        which is what MP-MAE pretraining on the demo corpus normalised with.

        Returns:
            Two float32 tensors of shape (C,).
        """
        entry = band_statistics(self.tiles.band_stats, 'sentinel2_l2a', 'sentinel2')
        mean, std = torch.tensor([entry[band] for band in self.bands]).unbind(dim=1)
        return mean, std

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample: the RGB composite, titled with its labels.

        Args:
            sample: a sample returned by :meth:`__getitem__` (may hold a
                ``prediction`` multi-hot vector too).
            show_titles: whether to show the labels as the title.
            suptitle: optional figure title.

        Returns:
            The figure.
        """
        if not {'B4', 'B3', 'B2'} <= set(self.bands):
            raise RGBBandsMissingError()
        rgb = [self.bands.index(band) for band in ('B4', 'B3', 'B2')]
        image = percentile_stretch(
            sample['image'][rgb].permute(1, 2, 0).float().numpy()
        )
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(image)
        ax.axis('off')
        if show_titles:
            title = 'labels: ' + self._names(sample['label'])
            if 'prediction' in sample:
                title += '\npredicted: ' + self._names(sample['prediction'])
            ax.set_title(title, fontsize=7, wrap=True)
        if suptitle is not None:
            fig.suptitle(suptitle)
        return fig

    def _names(self, multi_hot: Tensor) -> str:
        return ', '.join(self.classes[i] for i in multi_hot.nonzero().flatten())
