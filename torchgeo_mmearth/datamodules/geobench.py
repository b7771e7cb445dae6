"""GEO-Bench datamodule: raw bands in the workers, GEO-Bench z-scores on the device."""

from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.models import get_weight
from torchvision.models._api import WeightsEnum

from ..datasets import GeoBench
from ..datasets.geobench_tasks import resolve_task
from ..modalities import canonical_band_name

__all__ = ['GeoBenchDataModule']


class GeoBenchDataModule(NonGeoDataModule):
    """LightningDataModule for the GEO-Bench v1.0 tasks of MMEarth.

    Uses :class:`~torchgeo_mmearth.datasets.GeoBench` for the train, val
    (GEO-Bench's valid) and test splits of a partition; the test split is the
    whole split. DataLoader workers return the raw bands, in the order of the
    chosen weights (``weights.meta['bands']``) or of *bands*. After the batch
    reaches the device, ``aug`` z-scores every channel with GEO-Bench's own
    per-band mean and std of the task (``band_stats.json``, for the band the
    channel is read from; m-so2sat's statistics brought to its reflectance
    units), as MMEarth's fine-tuning and linear probing do (reference 5.3).
    TorchGeo's default divide-by-255 is not applied, and there is no resizing,
    cropping or flipping: images keep their native size, as in the paper.
    Masks (segmentation) and labels pass through exactly.

    If you use this datamodule in your research, please cite the following
    papers:

    * https://arxiv.org/abs/2306.03831
    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        task: str = 'm-eurosat',
        root: str | None = None,
        partition: str = 'default',
        bands: list[str] | None = None,
        weights: WeightsEnum | str | None = None,
        fill: dict[str, str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        """Initialize a new GeoBenchDataModule instance.

        Args:
            task: a GEO-Bench task, see :attr:`GeoBench.tasks
                <torchgeo_mmearth.datasets.GeoBench.tasks>`.
            root: the GEO-Bench root; None for ``$GEO_BENCH_DIR`` (or
                ``'data/geobench'``).
            partition: 'default' or a label-efficiency partition such as
                '0.01x_train'.
            bands: the Sentinel-2 bands of the model input, in order; None for
                the bands of *weights*, or the 12 MP-MAE input bands.
            weights: weights whose ``meta['bands']`` give the band order, or
                their name (``'MMEarthWeights.S2_MP_MAE'``).
            fill: ``{missing band: substitute}``; None for the task's default
                (see :class:`~torchgeo_mmearth.datasets.GeoBench`).
            batch_size: size of each mini-batch.
            num_workers: number of DataLoader worker processes.
            **kwargs: additional keyword arguments passed to
                :class:`~torchgeo_mmearth.datasets.GeoBench` (e.g.
                ``transforms``).

        Raises:
            ValueError: for an unknown task, weights without band names, or
                *bands* that differ from those of *weights*.
        """
        self.spec = resolve_task(task)
        weight_bands = _weight_bands(weights)
        if (
            bands is not None
            and weight_bands is not None
            and _canonical(bands) != _canonical(weight_bands)
        ):
            raise ValueError(
                f'bands {list(bands)} differ from the bands of {weights!r} '
                f'{list(weight_bands)}; pass one of them'
            )
        chosen = bands if bands is not None else weight_bands
        super().__init__(
            GeoBench,
            batch_size,
            num_workers,
            root=root,
            task=task,
            partition=partition,
            bands=None if chosen is None else list(chosen),
            fill=fill,
            **kwargs,
        )
        self.task = task
        self.weights = weights
        # Set in setup(), once the task's statistics are read.
        self.aug = None  # type: ignore[assignment]

    @property
    def num_classes(self) -> int:
        """Number of classes of the task."""
        return self.spec.num_classes

    @property
    def task_type(self) -> str:
        """``'multiclass'``, ``'multilabel'`` or ``'segmentation'``.

        These are the ``task`` values of TorchGeo's ``ClassificationTask``
        (multiclass, multilabel) and ``SemanticSegmentationTask`` (multiclass
        for segmentation).
        """
        return self.spec.task_type

    def setup(self, stage: str) -> None:
        """Set up datasets and the on-device normalisation.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.
        """
        if stage == 'fit':
            self.train_dataset = self._dataset('train')
        if stage in ('fit', 'validate'):
            self.val_dataset = self._dataset('val')
        if stage == 'test':
            self.test_dataset = self._dataset('test')
        if stage == 'predict':
            self.predict_dataset = self._dataset('test')

    def _dataset(self, split: str) -> GeoBench:
        dataset = GeoBench(split=split, **self.kwargs)
        if self.aug is None:
            mean, std = dataset.normalization_stats()
            self.mean = torch.tensor(mean)
            self.std = torch.tensor(std)
            # TorchGeo's default aug, with the task's statistics instead of /255
            self.aug = K.AugmentationSequential(
                K.Normalize(mean=self.mean, std=self.std), data_keys=None, keepdim=True
            )
        return dataset


def _canonical(bands: Sequence[str]) -> list[str]:
    try:
        return [canonical_band_name(b) for b in bands]
    except ValueError as error:
        raise ValueError(f'bands: {error}') from None


def _weight_bands(weights: WeightsEnum | str | None) -> Sequence[str] | None:
    """``meta['bands']`` of the weights (resolved by name if a string)."""
    if weights is None:
        return None
    resolved: WeightsEnum
    if isinstance(weights, str):
        try:
            resolved = get_weight(weights)
        except ValueError as error:
            raise ValueError(
                f'weights={weights!r} is not a WeightsEnum member known to TorchGeo '
                f'({error}); import torchgeo_mmearth to register MMEarthWeights'
            ) from None
    else:
        resolved = weights
    meta = resolved.meta
    bands = meta.get('bands') if isinstance(meta, Mapping) else None
    if not bands:
        raise ValueError(f'{resolved!r} has no meta["bands"]; pass bands= explicitly')
    return tuple(str(b) for b in bands)
