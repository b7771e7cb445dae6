"""MMEarth datamodule: raw tiles in the workers, normalisation and crops on the device."""

from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchgeo.datamodules import NonGeoDataModule

from ..datasets import MMEarth
from ..transforms import MMEarthNormalize
from .loaders import PackedDataLoader
from .resumable import (
    ResumableDataLoader,
    ResumableDistributedSampler,
    ResumableRandomSampler,
)

__all__ = ['MMEarthDataModule']

#: Model input size of the published MP-MAE recipes, per stored tile size.
_DEFAULT_INPUT_SIZE = {128: 112, 64: 56}


class _OnDeviceMMEarthDataModule(NonGeoDataModule):
    """What the MMEarth datamodules share: raw batches, normalised and cropped on device.

    Subclasses make the datasets (:meth:`_dataset`, which calls
    :meth:`_build_augmentations` with the first one) and the loaders.
    """

    def __init__(
        self,
        dataset_class: type[Any],
        batch_size: int,
        num_workers: int,
        input_size: int | None,
        flips: bool,
        train_split: str,
        val_split: str | None,
        test_split: str,
        pin_memory: bool,
        **kwargs: Any,
    ) -> None:
        """Initialize the shared parts (arguments as in :class:`MMEarthDataModule`).

        Args:
            dataset_class: the dataset class.
            batch_size: size of each mini-batch.
            num_workers: number of DataLoader worker processes.
            input_size: side of the crop fed to the model, or None.
            flips: add random horizontal and vertical flips during training.
            train_split: split used for training.
            val_split: split used for validation, or None.
            test_split: split used for testing and prediction.
            pin_memory: pin host memory when a CUDA device is available.
            **kwargs: keyword arguments of the dataset.

        Raises:
            ValueError: if *input_size* is not positive.
        """
        if input_size is not None and input_size <= 0:
            raise ValueError(f'input_size must be positive, got {input_size}')
        super().__init__(dataset_class, batch_size, num_workers, **kwargs)
        self.input_size = input_size
        self.flips = flips
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.pin_memory = pin_memory
        self.normalizer: MMEarthNormalize | None = None
        # Set in setup(), once the corpus statistics and tile size are known.
        self.aug = None  # type: ignore[assignment]

    def setup(self, stage: str) -> None:
        """Set up datasets and the on-device augmentations.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.
        """
        if stage == 'fit':
            self.train_dataset = self._dataset(self.train_split)
        if stage in ('fit', 'validate') and self.val_split is not None:
            self.val_dataset = self._dataset(self.val_split)
        if stage == 'test':
            self.test_dataset = self._dataset(self.test_split)
        if stage == 'predict':
            self.predict_dataset = self._dataset(self.test_split)

    def _dataset(self, split: str) -> Any:
        raise NotImplementedError

    def _build_augmentations(
        self,
        tile_size: int | None,
        band_stats: Mapping[str, Any],
        modality_bands: Mapping[str, Sequence[str]],
        version: str | None,
        source: object,
    ) -> None:
        """Build the normalisation and crops from the first dataset's corpus.

        Args:
            tile_size: side of the stored tiles (None without pixel-level data).
            band_stats: the corpus band statistics.
            modality_bands: bands per modality of the samples.
            version: the release of the data (None: unknown).
            source: the corpus, named in errors.

        Raises:
            ValueError: if the crop exceeds the tiles.
        """
        size = self.input_size
        if size is None:
            size = _DEFAULT_INPUT_SIZE.get(tile_size or 0, tile_size)
        if tile_size is not None and size is not None and size > tile_size:
            raise ValueError(
                f'input_size {size} exceeds the {tile_size} px tiles of {source}'
            )
        # The normalisation runs here, on the device, after the raw batch moved.
        self.normalizer = MMEarthNormalize(band_stats, modality_bands, version=version)
        train: list[K.GeometricAugmentationBase2D] = []
        evaluation: list[K.GeometricAugmentationBase2D] = []
        if size is not None and size != tile_size:
            train.append(K.RandomCrop((size, size), cropping_mode='slice'))
            evaluation.append(K.CenterCrop((size, size), cropping_mode='slice'))
        if self.flips:
            train += [K.RandomHorizontalFlip(), K.RandomVerticalFlip()]
        self.train_aug = _pipeline(self.normalizer, train)
        self.aug = _pipeline(self.normalizer, evaluation)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Return the validation loader, or none when there is no validation split.

        Returns:
            The validation DataLoader; an empty list (Lightning then skips
            validation) when *val_split* is None or the split is empty.
        """
        if self.val_dataset is None or len(self.val_dataset) == 0:  # type: ignore[arg-type]
            return []  # type: ignore[return-value]
        return super().val_dataloader()


class MMEarthDataModule(_OnDeviceMMEarthDataModule):
    """LightningDataModule for the :class:`~torchgeo_mmearth.datasets.MMEarth` corpora.

    DataLoader workers return the raw stored values (uint16 Sentinel-2, uint8 class
    codes, ...), so they move as few bytes as possible, and send each batch to the
    main process as one shared buffer
    (:class:`~torchgeo_mmearth.datamodules.loaders.PackedDataLoader`; the batches are
    the usual dictionaries of tensors). After the batch reaches the device,
    ``on_after_batch_transfer`` runs, all with Kornia-compatible modules:

    1. :class:`~torchgeo_mmearth.transforms.MMEarthNormalize`: no-data to NaN or
       the ignore index, z-score with the corpus band statistics (this replaces
       TorchGeo's default divide-by-255, which would corrupt MMEarth batches);
    2. a crop to ``input_size`` that is identical across every pixel-level modality:
       random per sample for training (offsets uniform in ``[0, S - input_size]``,
       as MP-MAE pretraining), central for validation, test and prediction; exact
       slicing, so class maps are never interpolated and NaN never spreads;
    3. optionally random horizontal and vertical flips (training only).

    Image-level entries (``era5``, ``biome``, ...) pass through untouched.

    The datamodule works unchanged under distributed training: each worker
    process opens its own HDF5 handle; the training loader of each process gets a
    :class:`~torchgeo_mmearth.datamodules.resumable.ResumableDistributedSampler`
    (which Lightning keeps, and which resumes mid-epoch), the other loaders the
    DistributedSampler that Lightning adds.
    """

    def __init__(
        self,
        root: str = 'data',
        subset: str = 'MMEarth64',
        modalities: Sequence[str] | None = None,
        modality_bands: Mapping[str, Sequence[str]] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        input_size: int | None = None,
        flips: bool = False,
        train_split: str = 'train',
        val_split: str | None = 'val',
        test_split: str = 'test',
        pin_memory: bool = True,
        **kwargs: Any,
    ) -> None:
        """Initialize a new MMEarthDataModule instance.

        Args:
            root: directory that holds the subset folder.
            subset: 'MMEarth', 'MMEarth64' or 'MMEarth100k'.
            modalities: modalities to load; None loads the 12 MP-MAE pretext
                modalities.
            modality_bands: bands per modality (see
                :class:`~torchgeo_mmearth.datasets.MMEarth`).
            batch_size: size of each mini-batch.
            num_workers: number of DataLoader worker processes.
            input_size: side of the crop fed to the model; None uses the published
                recipe (112 for 128 px tiles, 56 for 64 px tiles).
            flips: add random horizontal and vertical flips during training.
            train_split: split of the splits file used for training.
            val_split: split used for validation; None, or an empty split (the
                published corpora put every tile in 'train'), skips validation.
            test_split: split used for testing and prediction.
            pin_memory: pin host memory when a CUDA device is available.
            **kwargs: additional keyword arguments passed to
                :class:`~torchgeo_mmearth.datasets.MMEarth` (e.g. ``transforms``,
                applied to the raw samples in the workers, before the
                normalisation on the device, or ``version``, the release of the
                data, whose no-data placeholders the normalisation flags).

        Raises:
            ValueError: if *input_size* is not positive.
        """
        super().__init__(
            MMEarth,
            batch_size,
            num_workers,
            input_size,
            flips,
            train_split,
            val_split,
            test_split,
            pin_memory,
            root=root,
            subset=subset,
            modalities=modalities,
            modality_bands=modality_bands,
            **kwargs,
        )
        # The training loader, and the position a resumed run gives it.
        self._train_loader: ResumableDataLoader[dict[str, Any]] | None = None
        self._train_loader_state: dict[str, int] | None = None

    def _dataset(self, split: str) -> MMEarth:
        dataset = MMEarth(split=split, **self.kwargs)
        if self.normalizer is None:
            self._build_augmentations(
                dataset.tile_size,
                dataset.band_stats,
                dataset.modality_bands,
                dataset.version,
                dataset.h5_path,
            )
        return dataset

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """TorchGeo's loader factory, with packed batches and pinned memory.

        The loader is a
        :class:`~torchgeo_mmearth.datamodules.loaders.PackedDataLoader`: with
        workers, each batch crosses to the main process as one buffer. The
        training loader is a
        :class:`~torchgeo_mmearth.datamodules.resumable.ResumableDataLoader`,
        which Lightning's checkpoints resume mid-epoch, on one process or on
        several.

        Args:
            split: 'train', 'val', 'test' or 'predict'.

        Returns:
            The DataLoader of *split*.
        """
        dataset = self._valid_attribute(f'{split}_dataset', 'dataset')
        train = split == 'train'
        # Training shuffles by a seed and the epoch, and resumes mid-epoch from a
        # checkpoint in the order an uninterrupted run would have taken.
        loader: DataLoader[dict[str, Any]] = (
            ResumableDataLoader if train else PackedDataLoader
        )(
            dataset=dataset,
            batch_size=self._valid_attribute(f'{split}_batch_size', 'batch_size'),
            sampler=self._train_sampler(dataset) if train else None,
            # Workers' seeds not from torch's global generator, which draws the
            # masks: a resumed run starts the persistent validation workers later
            # than an uninterrupted run (after, not in, the sanity check).
            generator=None if train else torch.Generator(),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=train,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )
        if isinstance(loader, ResumableDataLoader):
            if self._train_loader_state is not None:
                loader.load_state_dict(self._train_loader_state)
                self._train_loader_state = None
            self._train_loader = loader
        return loader

    def _train_sampler(self, dataset: MMEarth) -> Sampler[int]:
        """The training sampler: one order per epoch, resumable mid-epoch.

        Args:
            dataset: the training dataset.

        Returns:
            A :class:`ResumableRandomSampler` on one process, or when the Trainer
            was given ``use_distributed_sampler=False`` (every process then reads
            the whole split); on several, each process's share of a
            :class:`ResumableDistributedSampler`'s order.
        """
        trainer = self.trainer
        # Lightning keeps the Trainer's use_distributed_sampler only there.
        shard = (
            trainer is not None
            and trainer._accelerator_connector.use_distributed_sampler
        )
        if trainer is None or trainer.world_size == 1 or not shard:
            return ResumableRandomSampler(dataset)
        # The processes and rank that Lightning would give its DistributedSampler.
        shares = trainer.distributed_sampler_kwargs
        assert shares is not None  # a strategy of several processes
        sampler = ResumableDistributedSampler(dataset, **shares)
        # Rank 0's seed: the ranks' global generators agree only if every process
        # called seed_everything with one seed.
        sampler.seed = trainer.strategy.broadcast(sampler.seed)
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch, saved in checkpoints.

        Lightning saves the loader's own state too, but restores it only into a
        loader made after the loops' state is restored, and a task that reads
        ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (as
        :class:`~torchgeo_mmearth.trainers.MPMAETask` does) makes it before; the
        datamodule's state is restored before either, and it knows when an epoch
        cut short by ``limit_train_batches`` has ended.

        Returns:
            The state of the training loader, if one was made.
        """
        loader = self._train_loader
        if loader is None:
            return {}
        state = loader.state_dict()
        trainer = self.trainer
        if (
            state
            and trainer is not None
            and (state['batches'] >= trainer.num_training_batches)
        ):
            # The epoch ended at limit_train_batches, short of the loader's end:
            # a resumed run starts the next epoch.
            state['batches'] = len(loader)
        return {'train_loader': state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next training loader at the position of a checkpoint.

        Args:
            state_dict: a state returned by :meth:`state_dict`.
        """
        self._train_loader_state = state_dict.get('train_loader')


def _pipeline(
    normalizer: nn.Module, augmentations: list[K.GeometricAugmentationBase2D]
) -> nn.Module:
    """Normalisation followed by Kornia augmentations applied to every image_/mask_ key."""
    if not augmentations:
        return normalizer
    return nn.Sequential(
        normalizer,
        K.AugmentationSequential(*augmentations, data_keys=None, keepdim=True),
    )
