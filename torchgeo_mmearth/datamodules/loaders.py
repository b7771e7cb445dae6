"""Batches that cross from DataLoader workers to the main process as one buffer.

A DataLoader worker hands every tensor of a batch to the main process separately:
one shared-memory segment, one file descriptor sent over a socket (with an
authentication round trip) and one rebuild in the main process per tensor. For
MMEarth batches, with a dozen modalities, this fixed cost per tensor is a large part
of what the main process spends per batch. :func:`pack_collate` collates exactly as
:func:`~torch.utils.data.default_collate` but writes every tensor of a batch into one
shared buffer, and :class:`PackedDataLoader` turns that buffer back into ordinary
tensors (views) in the main process, so a batch costs one transfer.
"""

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate, get_worker_info
from torch.utils.data._utils.pin_memory import pin_memory as _pin_memory

__all__ = ['PackedBatch', 'PackedDataLoader', 'pack_collate']

T_co = TypeVar('T_co', covariant=True)

#: Byte alignment of each tensor in the buffer (a cache line; a multiple of every
#: element size).
_ALIGNMENT = 64


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

    __slots__ = ('buffer', 'entries')

    def __init__(self, buffer: Tensor, entries: Sequence[tuple[str, Any]]) -> None:
        """Initialize a new PackedBatch instance.

        Args:
            buffer: 1-D uint8 tensor that holds the batched tensors.
            entries: the batch's keys in order, each with its place in *buffer* or,
                for entries not packed, the collated value itself.
        """
        self.buffer = buffer
        self.entries = tuple(entries)

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
        return PackedBatch(self.buffer.pin_memory(), entries)


def pack_collate(samples: list[Any]) -> Any:
    """Collate like :func:`~torch.utils.data.default_collate`, into one buffer.

    For samples that are plain dictionaries, each key whose values are CPU tensors
    of one shape and dtype is stacked straight into a slice of a single buffer
    (allocated in shared memory inside a DataLoader worker, as default_collate
    does); every other key is collated by default_collate. Other samples are
    collated by default_collate alone.

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
    columns: list[tuple[_Slot, list[Tensor]]] = []
    size = 0
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if not _stackable(values):
            entries.append((key, default_collate(values)))
            continue
        offset = (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT
        slot = _Slot(offset, values[0].dtype, (len(values), *values[0].shape))
        entries.append((key, slot))
        columns.append((slot, values))
        size = slot.end
    if not columns:
        return dict(entries)
    if size == 0:  # only empty tensors: nothing to share
        return default_collate(samples)

    if get_worker_info() is not None:
        # As default_collate: write straight into shared memory, which the worker
        # would otherwise copy the batch into when sending it.
        storage = torch.UntypedStorage._new_shared(size)  # type: ignore[no-untyped-call]
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    else:
        buffer = torch.empty(size, dtype=torch.uint8)
    batch = PackedBatch(buffer, entries)
    for slot, values in columns:
        torch.stack(values, out=slot.view(buffer))
    return batch


def _stackable(values: Sequence[Any]) -> bool:
    """Whether *values* are plain CPU tensors that default_collate would stack."""
    first = values[0]
    if type(first) is not Tensor:
        return False
    shape, dtype = first.shape, first.dtype
    return all(
        type(value) is Tensor
        and value.shape == shape
        and value.dtype == dtype
        and value.layout is torch.strided
        and value.device.type == 'cpu'
        and not value.requires_grad
        for value in values
    )


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

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate over batches, unpacked.

        Returns:
            An iterator over the batches.
        """
        iterator = super().__iter__()
        if self.collate_fn is not pack_collate:
            return iterator
        return _UnpackingIterator(iterator)


class _UnpackingIterator(Iterator[Any]):
    """Unpacks the :class:`PackedBatch` objects of a DataLoader iterator."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator: Iterator[Any] | None = iterator

    def __next__(self) -> Any:
        if self.iterator is None:
            raise StopIteration
        batch = next(self.iterator)
        return batch.unpack() if isinstance(batch, PackedBatch) else batch

    def __len__(self) -> int:
        return 0 if self.iterator is None else len(self.iterator)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader iterator (worker processes, queues) cannot be pickled;
        # Lightning drops those when it pickles its loaders, so drop it too.
        return {'iterator': None}
