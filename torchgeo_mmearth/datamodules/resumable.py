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
workers, on one process or (with :class:`ResumableDistributedSampler`) on each of
several.
"""

import math
from collections.abc import Iterator, Sized
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from .._errors import ResumeError
from .loaders import PackedDataLoader

__all__ = [
    'ResumableDataLoader',
    'ResumableDistributedSampler',
    'ResumableRandomSampler',
]

T_co = TypeVar('T_co', covariant=True)


def _draw_seed() -> int:
    """A seed for the epochs' orders, drawn from torch's global generator."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


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
        self.seed = _draw_seed() if seed is None else seed
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


class ResumableDistributedSampler(DistributedSampler[int]):
    """A :class:`~torch.utils.data.distributed.DistributedSampler` that can start late.

    Each process's order is DistributedSampler's (a permutation seeded ``seed +
    epoch``, padded or cut to a multiple of the processes, and this rank's share
    of it); :attr:`start` skips the samples that the process had handed out
    before a checkpoint. Lightning keeps a DistributedSampler that a loader
    already has, instead of adding its own, which could not resume. On one process
    the order is :class:`ResumableRandomSampler`'s.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        num_replicas: int,
        rank: int,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        """Initialize a new ResumableDistributedSampler instance.

        Args:
            dataset: the dataset.
            num_replicas: the number of processes.
            rank: this process's rank.
            seed: the seed of the orders, the same on every process; by default
                drawn from torch's global generator, as
                :class:`ResumableRandomSampler`'s.
            drop_last: cut the order to a multiple of the processes instead of
                repeating samples to fill it.
        """
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=_draw_seed() if seed is None else seed,
            drop_last=drop_last,
        )
        #: Samples of this process's order to skip once, at the next iteration.
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        """Iterate over this process's order, from :attr:`start` (then reset to 0).

        Returns:
            An iterator over the dataset indices.
        """
        order = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(order[start:])


#: The samplers whose position a ResumableDataLoader saves and restores.
_ResumableSampler = ResumableRandomSampler | ResumableDistributedSampler
_RESUMABLE_SAMPLERS = (ResumableRandomSampler, ResumableDistributedSampler)


class ResumableDataLoader(PackedDataLoader[T_co]):
    """A shuffling :class:`PackedDataLoader` that resumes mid-epoch.

    Takes the arguments of :class:`~torch.utils.data.DataLoader`, with a
    :class:`ResumableRandomSampler` as *sampler*, or on each of several processes
    a :class:`ResumableDistributedSampler`. Its :meth:`state_dict` (the seed, the
    epoch and the batches handed out in it, and the number of processes), saved
    by Lightning in every checkpoint, makes the loader of a resumed run yield the
    batches that an uninterrupted run would have yielded next: the rest of the
    epoch, then the following epochs. Every process hands out as many batches,
    so rank 0's state, the one in the checkpoint, holds for all. The workers'
    seeds come from a generator of the loader (seeded with the sampler's seed,
    plus the rank), so that iterating draws nothing from torch's global
    generator either.

    A checkpoint taken mid-epoch resumes only on as many processes as saved it;
    one taken at the end of an epoch, on any number. With another sampler (such
    as the DistributedSampler that Lightning adds to a loader on several
    devices) the state is empty and a resumed run starts the epoch again, as
    with a plain DataLoader. The loader cannot tell that Lightning ended an
    epoch early (``limit_train_batches``); a checkpoint taken there resumes the
    next epoch only through a datamodule that records it
    (:class:`~torchgeo_mmearth.datamodules.MMEarthDataModule` does).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize a new ResumableDataLoader instance.

        Args:
            *args: positional arguments of :class:`~torch.utils.data.DataLoader`.
            **kwargs: keyword arguments of :class:`~torch.utils.data.DataLoader`.
        """
        super().__init__(*args, **kwargs)
        if self.generator is None and isinstance(self.sampler, _RESUMABLE_SAMPLERS):
            self.generator = torch.Generator().manual_seed(_worker_seed(self.sampler))
        # Batches handed out by the current iterator, and where the next starts.
        self._batches = 0
        self._start = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate over the batches of the epoch, from the resumed position.

        Returns:
            An iterator over the batches.
        """
        sampler = self.sampler
        if isinstance(sampler, _RESUMABLE_SAMPLERS) and self.batch_size:
            sampler.start = self._start * self.batch_size
        # The resumed position holds until a batch is handed out: Lightning may
        # make an iterator that it never uses before the one it does.
        self._batches = self._start
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict[str, int]:
        """The position in the epoch's order, saved by Lightning in checkpoints.

        Returns:
            The sampler's seed and epoch and the batches handed out in the epoch
            (by each process), with the number of processes
            (``world_size``) under a :class:`ResumableDistributedSampler`;
            empty with another sampler.
        """
        sampler = self.sampler
        if not isinstance(sampler, _RESUMABLE_SAMPLERS):
            return {}
        state = {'seed': sampler.seed, 'epoch': sampler.epoch, 'batches': self._batches}
        if isinstance(sampler, ResumableDistributedSampler):
            state['world_size'] = sampler.num_replicas
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a position of :meth:`state_dict` at the next iteration.

        Args:
            state_dict: a state returned by :meth:`state_dict`.

        Raises:
            ValueError: if the state was saved mid-epoch by another number of
                processes.
        """
        sampler = self.sampler
        if not state_dict or not isinstance(sampler, _RESUMABLE_SAMPLERS):
            return
        saved_world_size = state_dict.get('world_size', 1)
        world_size = _world_size(sampler)
        batches = state_dict['batches']
        # The batches of an epoch on each process of the run that saved the state.
        epoch_batches = (
            len(self)
            if saved_world_size == world_size
            else self._epoch_batches(saved_world_size)
        )
        if 0 < batches < epoch_batches and saved_world_size != world_size:
            raise ResumeError(
                f'the training loader state was saved mid-epoch (batch {batches} of '
                f'{epoch_batches}) by {saved_world_size} process(es), and this run '
                f'has {world_size}: resume on {saved_world_size} (devices x nodes), '
                'or from a checkpoint saved at the end of an epoch'
            )
        sampler.seed = state_dict['seed']
        if self.generator is not None:
            self.generator.manual_seed(_worker_seed(sampler))
        if batches >= epoch_batches:
            # Saved at the end of the epoch: the next iteration is the next epoch,
            # which Lightning announces (set_epoch) only after it iterates again.
            sampler.epoch, self._start = state_dict['epoch'] + 1, 0
        else:
            sampler.epoch, self._start = state_dict['epoch'], batches

    def _epoch_batches(self, world_size: int) -> int:
        """The batches of an epoch on each of *world_size* processes."""
        sampler = self.sampler
        drop_last = isinstance(sampler, DistributedSampler) and sampler.drop_last
        samples = len(
            DistributedSampler(
                self.dataset, num_replicas=world_size, rank=0, drop_last=drop_last
            )
        )
        assert self.batch_size is not None
        if self.drop_last:
            return samples // self.batch_size
        return math.ceil(samples / self.batch_size)


def _world_size(sampler: _ResumableSampler) -> int:
    """The number of processes that share the epochs' orders."""
    if isinstance(sampler, ResumableDistributedSampler):
        return sampler.num_replicas
    return 1


def _worker_seed(sampler: _ResumableSampler) -> int:
    """The seed of a loader's workers: the sampler's, plus the rank."""
    if isinstance(sampler, ResumableDistributedSampler):
        return sampler.seed + sampler.rank
    return sampler.seed


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
