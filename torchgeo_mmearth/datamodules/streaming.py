"""MMEarth from litdata shards: many processes and nodes, local disk or S3."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from .loaders import pack_collate
from .mmearth import _OnDeviceMMEarthDataModule

__all__ = ['MMEarthStreamingDataModule']


class MMEarthStreamingDataModule(_OnDeviceMMEarthDataModule):
    """LightningDataModule for MMEarth shards (:class:`~torchgeo_mmearth.datasets.StreamingMMEarth`).

    The streaming counterpart of
    :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`, for training on many
    GPUs and nodes: the same samples (raw stored values leave the workers, each
    batch as one buffer) and the same normalisation and crops on the device, read
    from a shard folder written once by ``torchgeo-mmearth shard``, on local disk
    or on S3-compatible object storage (``input_dir='s3://bucket/prefix'``).

    Under distributed training each rank (and each of its DataLoader workers)
    streams its own part of the split, a different part every epoch when
    *shuffle* is set: litdata shuffles the chunks across ranks and the tiles
    within chunks, from *seed* and the epoch. Lightning adds no
    DistributedSampler. The training loader is a
    :class:`litdata.StreamingDataLoader`, whose position in the epoch Lightning's
    checkpoints keep: a run resumed from a checkpoint taken mid-epoch (Ctrl-C's
    ``interrupted.ckpt``, or ``ModelCheckpoint(every_n_train_steps=...)``) reads
    the rest of that epoch, then the following epochs, in the order of an
    uninterrupted run. A checkpoint taken mid-epoch resumes only with the numbers
    of processes, DataLoader workers (0 and 1 are the same) and the batch size
    that saved it (another is refused); one taken at the end of an epoch resumes
    with any.

    A config switches an :class:`~torchgeo_mmearth.trainers.MPMAETask` run from
    the HDF5 corpus to shards by its ``data:`` section only (see
    ``examples/conf/mpmae_atto_mmearth64_shards.yaml``).
    """

    def __init__(
        self,
        input_dir: str = 'shards',
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
        shuffle: bool = True,
        seed: int = 42,
        cache_dir: str | None = None,
        max_cache_size: int | str = '100GB',
        storage_options: dict[str, Any] | None = None,
        verify_chunks: bool = True,
        **kwargs: Any,
    ) -> None:
        """Initialize a new MMEarthStreamingDataModule instance.

        Args:
            input_dir: the shard folder: a local path or ``s3://bucket/prefix``.
            modalities: modalities to load; None loads the 12 MP-MAE pretext
                modalities.
            modality_bands: bands per modality (see
                :class:`~torchgeo_mmearth.datasets.MMEarth`).
            batch_size: size of each mini-batch (per process).
            num_workers: number of DataLoader worker processes (per process).
            input_size: side of the crop fed to the model; None uses the published
                recipe (112 for 128 px tiles, 56 for 64 px tiles).
            flips: add random horizontal and vertical flips during training.
            train_split: split used for training.
            val_split: split used for validation; None, or an empty split, skips
                validation.
            test_split: split used for testing and prediction.
            pin_memory: pin host memory when a CUDA device is available.
            shuffle: shuffle the training split every epoch.
            seed: seed of the shuffle (the same on every rank).
            cache_dir: where remote (or compressed) chunks are kept while read
                (per node); None uses litdata's default.
            max_cache_size: the most that *cache_dir* may hold.
            storage_options: options of the remote store (for an S3-compatible
                endpoint: ``{'endpoint_url': 'http://host:port'}``).
            verify_chunks: check each chunk against the SHA-256 that ``shard``
                wrote, once per chunk and process, when it is first read.
            **kwargs: additional keyword arguments passed to
                :class:`~torchgeo_mmearth.datasets.StreamingMMEarth` (e.g.
                ``transforms``).

        Raises:
            ImportError: if litdata is not installed.
            ValueError: if *input_size* is not positive.
        """
        from ..datasets.streaming import StreamingMMEarth

        super().__init__(
            StreamingMMEarth,
            batch_size,
            num_workers,
            input_size,
            flips,
            train_split,
            val_split,
            test_split,
            pin_memory,
            input_dir=input_dir,
            modalities=modalities,
            modality_bands=modality_bands,
            seed=seed,
            cache_dir=cache_dir,
            max_cache_size=max_cache_size,
            storage_options=storage_options,
            verify_chunks=verify_chunks,
            **kwargs,
        )
        self.shuffle = shuffle
        self._manifest: dict[str, Any] | None = None
        # The training loader, and the position a resumed run gives it.
        self._train_loader: Any = None
        self._train_loader_state: dict[str, Any] | None = None

    def _dataset(self, split: str) -> Any:
        from ..datasets.streaming import StreamingMMEarth, read_manifest

        if self._manifest is None:
            self._manifest = read_manifest(
                self.kwargs['input_dir'], self.kwargs['storage_options']
            )
        if self._manifest['splits'].get(split) == 0:
            return None  # an empty split: the published corpora have only 'train'
        dataset = StreamingMMEarth(
            split=split,
            shuffle=self.shuffle and split == 'train',
            # Workers collate with pack_collate: pixel tiles stay views of the
            # mapped chunk, copied once, into the batch.
            worker_views=self.num_workers > 0,
            **self.kwargs,
        )
        if self.normalizer is None:
            self._build_augmentations(
                dataset.tile_size,
                dataset.band_stats,
                dataset.modality_bands,
                dataset.version,
                self.kwargs['input_dir'],
            )
        return dataset

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Any]]:
        """A :class:`litdata.StreamingDataLoader` whose workers send packed batches.

        Args:
            split: 'train', 'val', 'test' or 'predict'.

        Returns:
            The DataLoader of *split*.
        """
        dataset = self._valid_attribute(f'{split}_dataset', 'dataset')
        train = split == 'train'
        from ._streaming_loader import PackedStreamingDataLoader

        loader = PackedStreamingDataLoader(
            dataset,
            batch_size=self._valid_attribute(f'{split}_batch_size', 'batch_size'),
            num_workers=self.num_workers,
            collate_fn=pack_collate if self.num_workers > 0 else default_collate,
            drop_last=train,
            # Workers must see each epoch's shuffle and a resumed position, which
            # the loader sets on its dataset when it starts iterating.
            persistent_workers=False,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            # Workers' seeds not from torch's global generator, which draws the
            # masks and crops: a resumed run starts its first iterator after the
            # checkpoint's random state is set, an uninterrupted run before.
            generator=torch.Generator().manual_seed(self.kwargs['seed']),
        )
        if train:
            state = self._train_loader_state
            if state is not None and state.get('epoch_ended'):
                # The next iteration starts the epoch after the saved one.
                loader.current_epoch = state['current_epoch']
            elif state is not None:
                loader.load_state_dict(state)
            self._train_loader_state = None
            self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch, saved in checkpoints.

        As for :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`: the
        datamodule's state is restored before the task makes the training loader
        (which :class:`~torchgeo_mmearth.trainers.MPMAETask` does in
        ``configure_optimizers``), so the loader starts at the saved position.

        Returns:
            The state of the training loader, once it has handed out batches, and
            whether its epoch has ended (at ``limit_train_batches``).
        """
        loader = self._train_loader
        if loader is None or loader._num_samples_yielded_streaming == 0:
            return {}
        state: dict[str, Any] = loader.state_dict()
        trainer = self.trainer
        batches = loader._num_samples_yielded_streaming // max(loader.batch_size, 1)
        # An epoch that Lightning ended at limit_train_batches, short of the
        # loader's end: a resumed run starts the next epoch.
        ended = trainer is not None and batches >= trainer.num_training_batches
        return {'train_loader': state, 'epoch_ended': ended}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next training loader at the position of a checkpoint.

        Args:
            state_dict: a state returned by :meth:`state_dict`.
        """
        self._train_loader_state = state_dict.get('train_loader')
        if self._train_loader_state is not None and state_dict.get('epoch_ended'):
            self._train_loader_state = {
                'current_epoch': self._train_loader_state['current_epoch'],
                'epoch_ended': True,
            }
