"""litdata's StreamingDataLoader with packed batches (imported with litdata, on use)."""

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader

from .loaders import BufferReturns, PackedBatch

__all__ = ['PackedStreamingDataLoader']


class PackedStreamingDataLoader(StreamingDataLoader):  # type: ignore[misc]
    """A :class:`litdata.StreamingDataLoader` whose workers send each batch as one buffer.

    With ``collate_fn=pack_collate`` the workers collate with
    :func:`~torchgeo_mmearth.datamodules.loaders.pack_collate` and iterating
    unpacks each :class:`~torchgeo_mmearth.datamodules.loaders.PackedBatch`, as
    :class:`~torchgeo_mmearth.datamodules.loaders.PackedDataLoader` does (and
    returns the workers' buffers for reuse); the loader's state (``state_dict``,
    ``load_state_dict``) is litdata's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize a new PackedStreamingDataLoader instance.

        Args:
            *args: positional arguments of :class:`litdata.StreamingDataLoader`.
            **kwargs: keyword arguments of :class:`litdata.StreamingDataLoader`.
        """
        super().__init__(*args, **kwargs)
        self.buffer_returns = BufferReturns()

    def __iter__(self) -> Iterator[Any]:
        """Iterate over batches, unpacked.

        Yields:
            The batches.
        """
        returns = self.buffer_returns
        returns.start_iteration(self.persistent_workers)
        try:
            for batch in super().__iter__():
                yield returns.unpack(batch) if isinstance(batch, PackedBatch) else batch
        finally:
            returns.return_unused()
