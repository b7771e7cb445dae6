"""A training DataLoader that Lightning checkpoints and resumes mid-epoch.

Lightning (2.3 and later) saves the ``state_dict()`` of every training loader that
has ``state_dict`` and ``load_state_dict`` into its checkpoints, and loads it back
before it iterates the loader again (``trainer.fit(..., ckpt_path=...)``). A
shuffling :class:`~torch.utils.data.DataLoader` has no such state: a run resumed
mid-epoch draws a new order and repeats or skips samples. The loader here draws
each epoch's order from a seed and the epoch, as
:class:`~torch.utils.data.distributed.DistributedSampler` does, and counts the
batches it has handed out, so a resumed run sees the rest of the interrupted
epoch's order, then the same epochs as an uninterrupted run, with any number of
workers.
"""

from collections.abc import Iterator, Sized
from typing import Any, TypeVar

import torch
from torch.utils.data import RandomSampler

from .loaders import PackedDataLoader

__all__ = ['ResumableDataLoader', 'ResumableRandomSampler']

T_co = TypeVar('T_co', covariant=True)


class ResumableRandomSampler(RandomSampler):
    """A random order per epoch, fixed by a seed and the epoch, that can start late.

    Lightning calls :meth:`set_epoch` before each epoch (as for a
    DistributedSampler). The order of an epoch is ``torch.randperm`` with a
    generator seeded ``seed + epoch``: it needs no state but the seed, and draws
    nothing from torch's global random number generator.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        """Initialize a new ResumableRandomSampler instance.

        Args:
            data_source: the dataset.
            seed: the seed of the orders; by default drawn from torch's global
                generator, so that ``seed_everything`` (``seed_everything: 0`` in a
                config) fixes it.
        """
        super().__init__(data_source)
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = seed
        self.epoch = 0
        #: Samples of the epoch's order to skip once, at the next iteration.
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration yields.

        Args:
            epoch: the epoch.
        """
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        """Iterate over the epoch's order, from :attr:`start` (then reset to 0).

        Returns:
            An iterator over the dataset indices.
        """
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        start, self.start = self.start, 0
        return iter(order[start:])


class ResumableDataLoader(PackedDataLoader[T_co]):
    """A shuffling :class:`PackedDataLoader` that resumes mid-epoch.

    Takes the arguments of :class:`~torch.utils.data.DataLoader`, with a
    :class:`ResumableRandomSampler` as *sampler*. Its :meth:`state_dict` (the
    seed, the epoch and the batches handed out in it), saved by Lightning in
    every checkpoint, makes the loader of a resumed run yield the batches that
    an uninterrupted run would have yielded next: the rest of the epoch, then
    the following epochs. The workers' seeds come from a generator of the loader
    (seeded with the sampler's seed), so that iterating draws nothing from torch's
    global generator either.

    The position is exact on one device; under a DistributedSampler (which
    Lightning adds on several devices) the state is empty and a resumed run
    starts the epoch again, as with a plain DataLoader. The loader cannot tell
    that Lightning ended an epoch early (``limit_train_batches``); a checkpoint
    taken there resumes the next epoch only through a datamodule that records
    it (:class:`~torchgeo_mmearth.datamodules.MMEarthDataModule` does).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize a new ResumableDataLoader instance.

        Args:
            *args: positional arguments of :class:`~torch.utils.data.DataLoader`.
            **kwargs: keyword arguments of :class:`~torch.utils.data.DataLoader`.
        """
        super().__init__(*args, **kwargs)
        if self.generator is None and isinstance(self.sampler, ResumableRandomSampler):
            self.generator = torch.Generator().manual_seed(self.sampler.seed)
        # Batches handed out by the current iterator, and where the next starts.
        self._batches = 0
        self._start = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate over the batches of the epoch, from the resumed position.

        Returns:
            An iterator over the batches.
        """
        sampler = self.sampler
        if isinstance(sampler, ResumableRandomSampler) and self.batch_size:
            sampler.start = self._start * self.batch_size
        # The resumed position holds until a batch is handed out: Lightning may
        # make an iterator that it never uses before the one it does.
        self._batches = self._start
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict[str, int]:
        """The position in the epoch's order, saved by Lightning in checkpoints.

        Returns:
            The sampler's seed and epoch and the batches handed out in the epoch;
            empty when the sampler is not a :class:`ResumableRandomSampler`.
        """
        sampler = self.sampler
        if not isinstance(sampler, ResumableRandomSampler):
            return {}
        return {'seed': sampler.seed, 'epoch': sampler.epoch, 'batches': self._batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a position of :meth:`state_dict` at the next iteration.

        Args:
            state_dict: a state returned by :meth:`state_dict`.
        """
        sampler = self.sampler
        if not state_dict or not isinstance(sampler, ResumableRandomSampler):
            return
        sampler.seed = state_dict['seed']
        if self.generator is not None:
            self.generator.manual_seed(sampler.seed)
        if state_dict['batches'] >= len(self):
            # Saved at the end of the epoch: the next iteration is the next epoch,
            # which Lightning announces (set_epoch) only after it iterates again.
            sampler.epoch, self._start = state_dict['epoch'] + 1, 0
        else:
            sampler.epoch, self._start = state_dict['epoch'], state_dict['batches']


class _CountingIterator(Iterator[Any]):
    """Counts the batches that a loader's iterator hands out."""

    def __init__(
        self, iterator: Iterator[Any], loader: ResumableDataLoader[Any] | None
    ) -> None:
        self.iterator = iterator
        self.loader = loader

    def __next__(self) -> Any:
        batch = next(self.iterator)
        if self.loader is not None:
            self.loader._batches += 1
            self.loader._start = 0
        return batch

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        # Lightning pickles its running iterators; a loader with persistent
        # workers cannot be pickled, and a copy has nothing to count for.
        return {'iterator': self.iterator, 'loader': None}
