"""litdata's StreamingDataLoader with packed batches (imported with litdata, on use)."""

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader

from .loaders import PackedBatch

__all__ = ['PackedStreamingDataLoader']


class PackedStreamingDataLoader(StreamingDataLoader):  # type: ignore[misc]
    """A :class:`litdata.StreamingDataLoader` whose workers send each batch as one buffer.

    With ``collate_fn=pack_collate`` the workers collate with
    :func:`~torchgeo_mmearth.datamodules.loaders.pack_collate` and iterating
    unpacks each :class:`~torchgeo_mmearth.datamodules.loaders.PackedBatch`, as
    :class:`~torchgeo_mmearth.datamodules.loaders.PackedDataLoader` does; the
    loader's state (``state_dict``, ``load_state_dict``) is litdata's.
    """

    def __iter__(self) -> Iterator[Any]:
        """Iterate over batches, unpacked.

        Yields:
            The batches.
        """
        for batch in super().__iter__():
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch
