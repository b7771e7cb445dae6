"""Batches that cross from DataLoader workers to the main process as one buffer.

A DataLoader worker hands every tensor of a batch to the main process separately:
one shared-memory segment, one file descriptor sent over a socket (with an
authentication round trip) and one rebuild in the main process per tensor. For
MMEarth batches, with a dozen modalities, this fixed cost per tensor is a large part
of what the main process spends per batch. :func:`pack_collate` collates exactly as
:func:`~torch.utils.data.default_collate` but writes every tensor of a batch into one
shared buffer, and :class:`PackedDataLoader` turns that buffer back into ordinary
tensors (views) in the main process, so a batch costs one transfer.

A fresh shared buffer per batch costs more than the reading itself: the kernel
hands out and zeroes every page of it in the worker and frees them again in the
main process (about 0.2 CPU ms per 64 px MMEarth tile, measured). So each worker
keeps a few buffers and fills them again once the main process has returned them:
the main process returns a buffer when no tensor of it is left (its storage's
only reference is the loader's), which it checks whenever a batch arrives. A
worker that finds no returned buffer takes a fresh one, so a consumer that keeps
batches costs memory, never correctness. Tensors of a batch sent on to yet another
process must be cloned first: this process cannot see that process's references.
"""

import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate, get_worker_info
from torch.utils.data._utils.pin_memory import pin_memory as _pin_memory

__all__ = ['BufferReturns', 'PackedBatch', 'PackedDataLoader', 'pack_collate']

T_co = TypeVar('T_co', covariant=True)

#: Byte alignment of each tensor in the buffer (a cache line; a multiple of every
#: element size).
_ALIGNMENT = 64
#: The most buffers a worker keeps for reuse. A worker adds one whenever none has
#: come back, so it keeps as many as are in use at once: those in flight (two per
#: worker, PyTorch's default prefetch), the one it fills, and those the training
#: loop holds (Lightning fetches one batch ahead).
_POOL_LIMIT = 8
# Byte 0 of a buffer (the tensors start at _ALIGNMENT): whether the main process
# still uses it (_IN_USE) or has returned it to its worker (_RETURNED).
_IN_USE, _RETURNED = 0, 1


class _Slot(NamedTuple):
    """Where one batched tensor lies in a :class:`PackedBatch` buffer."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def end(self) -> int:
        """Offset of the byte after the tensor."""
        return self.offset + self.dtype.itemsize * math.prod(self.shape)

    def view(self, buffer: Tensor) -> Tensor:
        """The tensor, as a view of *buffer*."""
        chunk = buffer[self.offset : self.end]
        return chunk.view(self.dtype).view(self.shape)


class PackedBatch:
    """A collated batch of dictionaries whose tensors share one byte buffer.

    Made by :func:`pack_collate` in a DataLoader worker; :meth:`unpack` returns the
    batch that :func:`~torch.utils.data.default_collate` would have returned, with
    its tensors as views of the buffer. The DataLoader's pin-memory thread pins the
    whole buffer at once (:meth:`pin_memory`).
    """

    __slots__ = ('buffer', 'entries', 'origin', 'pooled')

    def __init__(
        self,
        buffer: Tensor,
        entries: Sequence[tuple[str, Any]],
        origin: tuple[int, int] | None = None,
        pooled: Tensor | None = None,
    ) -> None:
        """Initialize a new PackedBatch instance.

        Args:
            buffer: 1-D uint8 tensor that holds the batched tensors.
            entries: the batch's keys in order, each with its place in *buffer* or,
                for entries not packed, the collated value itself.
            origin: the worker process and pool slot of a buffer to return to its
                worker once unused; None for a buffer of its own.
            pooled: that worker buffer, where *buffer* is a copy of it (pinned);
                None where *buffer* is the worker's buffer itself.
        """
        self.buffer = buffer
        self.entries = tuple(entries)
        self.origin = origin
        self.pooled = pooled

    def unpack(self) -> dict[str, Any]:
        """Return the batch as a dictionary.

        Returns:
            The collated batch; its tensors are views of :attr:`buffer`.
        """
        batch = {}
        for key, entry in self.entries:
            batch[key] = entry.view(self.buffer) if isinstance(entry, _Slot) else entry
        return batch

    def pin_memory(self) -> 'PackedBatch':
        """Return a copy in page-locked memory (called by the pin-memory thread).

        Returns:
            The batch with its buffer, and any tensor outside it, pinned.
        """
        entries = [
            (key, entry if isinstance(entry, _Slot) else _pin_memory(entry))  # type: ignore[no-untyped-call]
            for key, entry in self.entries
        ]
        pooled = self.buffer if self.origin is not None else None
        return PackedBatch(self.buffer.pin_memory(), entries, self.origin, pooled)


def pack_collate(samples: list[Any]) -> Any:
    """Collate like :func:`~torch.utils.data.default_collate`, into one buffer.

    For samples that are plain dictionaries, each key whose values are CPU tensors
    (or NumPy arrays of numbers) of one shape and dtype is stacked straight into a
    slice of a single buffer (in shared memory inside a DataLoader worker, as
    default_collate does, and reused once returned); every other key is collated
    by default_collate. Other samples are collated by default_collate alone.

    Args:
        samples: the samples of one batch.

    Returns:
        A :class:`PackedBatch` whose :meth:`~PackedBatch.unpack` equals
        ``default_collate(samples)``, or ``default_collate(samples)`` itself when
        there is nothing to pack.
    """
    if not samples or type(samples[0]) is not dict:
        return default_collate(samples)
    entries: list[tuple[str, Any]] = []
    columns: list[tuple[_Slot, list[Any]]] = []
    size = 1  # byte 0: whether a pooled buffer is in use
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        dtype = _stackable_dtype(values)
        if dtype is None:
            entries.append((key, default_collate(values)))
            continue
        offset = (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT
        slot = _Slot(offset, dtype, (len(values), *values[0].shape))
        entries.append((key, slot))
        columns.append((slot, values))
        size = slot.end
    if not columns:
        return dict(entries)
    if size == _ALIGNMENT:  # only empty tensors: nothing to share
        return default_collate(samples)

    origin = None
    if get_worker_info() is not None:
        # As default_collate: write straight into shared memory, which the worker
        # would otherwise copy the batch into when sending it.
        origin, buffer = _worker_buffers().take(size)
    else:
        buffer = torch.empty(size, dtype=torch.uint8)
    batch = PackedBatch(buffer, entries, origin)
    for slot, values in columns:
        if type(values[0]) is Tensor:
            torch.stack(values, out=slot.view(buffer))
        else:
            np.stack(values, out=slot.view(buffer).numpy())
    return batch


class _WorkerBuffers:
    """The shared buffers of one DataLoader worker, filled again once returned."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.buffers: list[Tensor] = []
        self.next_replaced = 0
        #: Buffers allocated so far (reuse shows as a count that stops growing).
        self.allocated = 0

    def take(self, size: int) -> tuple[tuple[int, int], Tensor]:
        """A buffer of *size* bytes, marked in use, and its origin.

        Args:
            size: bytes needed.

        Returns:
            The worker's process id and the buffer's slot, and the buffer.
        """
        for slot, buffer in enumerate(self.buffers):
            if buffer.numel() >= size and int(buffer[0]) == _RETURNED:
                buffer[0] = _IN_USE
                return (self.pid, slot), buffer[:size]
        storage = torch.UntypedStorage._new_shared(size)  # type: ignore[no-untyped-call]
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
        buffer[0] = _IN_USE
        self.allocated += 1
        if len(self.buffers) < _POOL_LIMIT:
            self.buffers.append(buffer)
            slot = len(self.buffers) - 1
        else:
            # All in use: a consumer keeps batches. Replace the longest kept.
            slot = self.next_replaced
            self.buffers[slot] = buffer
            self.next_replaced = (slot + 1) % _POOL_LIMIT
        return (self.pid, slot), buffer


_worker_buffer_pool: _WorkerBuffers | None = None


def _worker_buffers() -> _WorkerBuffers:
    """The buffers of this worker process (not those of a parent it forked from)."""
    global _worker_buffer_pool
    if _worker_buffer_pool is None or _worker_buffer_pool.pid != os.getpid():
        _worker_buffer_pool = _WorkerBuffers()
    return _worker_buffer_pool


# PyTorch's count of the references to a storage (private; None where it is gone).
_storage_use_count = getattr(torch._C, '_storage_Use_Count', None)


def _references(buffer: Tensor) -> tuple[int, int] | None:
    """What references the storage of *buffer*: PyTorch's count and Python's.

    PyTorch's count covers tensors (views, detached tensors, NumPy arrays over
    them); a Python object for the storage itself counts once however many hold
    it, so Python's count of that object is taken too. None where PyTorch does
    not count.
    """
    if _storage_use_count is None:
        return None
    storage = buffer.untyped_storage()
    return int(_storage_use_count(storage._cdata)), sys.getrefcount(storage)


# The references of a buffer that nothing but its one tensor holds.
_UNUSED = _references(torch.empty(1, dtype=torch.uint8))


def _unused(buffer: Tensor) -> bool:
    """Whether nothing but *buffer* itself references its storage."""
    # Without PyTorch's count nothing is returned: workers take fresh buffers.
    return _UNUSED is not None and _references(buffer) == _UNUSED


class BufferReturns:
    """The main process's side of the worker buffers: returns those no longer used.

    One per loader: :meth:`unpack` unpacks each :class:`PackedBatch` and keeps a
    tensor over its worker buffer (which keeps the buffer mapped into this
    process for the next time it comes); a buffer that nothing else references is
    returned to its worker when the next batch arrives, or at the end of an
    iteration (:meth:`return_unused`).
    """

    def __init__(self) -> None:
        """Initialize a new BufferReturns instance."""
        # Per origin: a tensor over the buffer (this loader's one reference to
        # it) and whether it has been returned.
        self.held: dict[tuple[int, int], tuple[Tensor, bool]] = {}

    def unpack(self, batch: PackedBatch) -> dict[str, Any]:
        """Unpack *batch*, after returning the buffers no longer used.

        Args:
            batch: a batch made by :func:`pack_collate`.

        Returns:
            The batch as a dictionary (see :meth:`PackedBatch.unpack`).
        """
        self.return_unused()
        if batch.origin is not None:
            pooled = batch.pooled if batch.pooled is not None else batch.buffer
            whole = torch.empty(0, dtype=torch.uint8).set_(pooled.untyped_storage())
            self.held[batch.origin] = (whole, False)
            batch.pooled = None
        return batch.unpack()

    def return_unused(self) -> None:
        """Return to their workers the buffers that nothing references any more."""
        for origin, (whole, returned) in self.held.items():
            if not returned and _unused(whole):
                whole[0] = _RETURNED
                self.held[origin] = (whole, True)

    def start_iteration(self, persistent_workers: bool) -> None:
        """Let go of every buffer unless the workers of the last iteration go on.

        Args:
            persistent_workers: whether the loader keeps its workers between
                iterations.
        """
        if not persistent_workers:
            self.held.clear()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the buffers, which belong to this process's workers.

        Returns:
            The state of a new instance.
        """
        return {'held': {}}


def _stackable_dtype(values: Sequence[Any]) -> torch.dtype | None:
    """The dtype of the stack of *values*, None unless default_collate would stack them.

    *values* stack when they are all plain CPU tensors, or all NumPy arrays of a
    number dtype in native byte order (read-only ones too), of one shape and dtype.
    """
    first = values[0]
    if type(first) is Tensor:
        shape, dtype = first.shape, first.dtype
        stackable = all(
            type(value) is Tensor
            and value.shape == shape
            and value.dtype == dtype
            and value.layout is torch.strided
            and value.device.type == 'cpu'
            and not value.requires_grad
            for value in values
        )
        return dtype if stackable else None
    if type(first) is not np.ndarray:
        return None
    shape, array_dtype = first.shape, first.dtype
    if array_dtype.kind not in 'biufc' or not array_dtype.isnative:
        return None
    if not all(
        type(value) is np.ndarray
        and value.shape == shape
        and value.dtype == array_dtype
        for value in values
    ):
        return None
    try:
        return torch.from_numpy(np.empty(0, array_dtype)).dtype
    except TypeError:  # a NumPy dtype that PyTorch lacks
        return None


class PackedDataLoader(DataLoader[T_co]):
    """A DataLoader whose workers send each batch to the main process as one buffer.

    Takes the arguments of :class:`~torch.utils.data.DataLoader`. With worker
    processes and the default collate function, the workers collate with
    :func:`pack_collate`, and iterating unpacks each :class:`PackedBatch`, so the
    batches are those of a plain DataLoader (same keys, order, dtypes and values;
    the tensors of a batch are views of one buffer). With ``pin_memory=True`` the
    buffer is pinned once per batch. Anything else (no workers, another collate
    function) behaves exactly as a plain DataLoader.

    Lightning can re-create the loader (for instance to add a DistributedSampler)
    from its arguments or attributes; both give a PackedDataLoader again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize a new PackedDataLoader instance.

        Args:
            *args: positional arguments of :class:`~torch.utils.data.DataLoader`.
            **kwargs: keyword arguments of :class:`~torch.utils.data.DataLoader`.
        """
        super().__init__(*args, **kwargs)
        if self.num_workers > 0 and self.collate_fn is default_collate:
            self.collate_fn = pack_collate
        elif self.num_workers == 0 and self.collate_fn is pack_collate:
            # Re-created from the attributes of a loader with workers.
            self.collate_fn = default_collate
        self.buffer_returns = BufferReturns()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate over batches, unpacked.

        Returns:
            An iterator over the batches.
        """
        self.buffer_returns.start_iteration(self.persistent_workers)
        iterator = super().__iter__()
        if self.collate_fn is not pack_collate:
            return iterator
        return _UnpackingIterator(iterator, self.buffer_returns)


class _UnpackingIterator(Iterator[Any]):
    """Unpacks the :class:`PackedBatch` objects of a DataLoader iterator."""

    def __init__(self, iterator: Iterator[Any], returns: BufferReturns) -> None:
        self.iterator: Iterator[Any] | None = iterator
        self.returns = returns

    def __next__(self) -> Any:
        if self.iterator is None:
            raise StopIteration
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.returns.return_unused()
            raise
        return self.returns.unpack(batch) if isinstance(batch, PackedBatch) else batch

    def __len__(self) -> int:
        return 0 if self.iterator is None else len(self.iterator)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader iterator (worker processes, queues) cannot be pickled;
        # Lightning drops those when it pickles its loaders, so drop it too.
        return {'iterator': None, 'returns': BufferReturns()}
