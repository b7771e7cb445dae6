"""litdata's StreamingDataLoader with packed batches (imported with litdata, on use)."""

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader
from litdata.streaming.elastic import topology_changed

from .._errors import ResumeError
from .loaders import BufferReturns, PackedBatch

__all__ = ['PackedStreamingDataLoader']


class PackedStreamingDataLoader(StreamingDataLoader):  # type: ignore[misc]
    """A :class:`litdata.StreamingDataLoader` whose workers send each batch as one buffer.

    With ``collate_fn=pack_collate`` the workers collate with
    :func:`~torchgeo_mmearth.datamodules.loaders.pack_collate` and iterating
    unpacks each :class:`~torchgeo_mmearth.datamodules.loaders.PackedBatch`, as
    :class:`~torchgeo_mmearth.datamodules.loaders.PackedDataLoader` does (and
    returns the workers' buffers for reuse); the loader's state (``state_dict``,
    ``load_state_dict``) is litdata's, and a position loaded mid-epoch applies to
    the next iteration only, also when that iteration is not run to its end. A
    position mid-epoch loads only into a loader with the saved numbers of
    processes, DataLoader workers (0 and 1 are the same) and batch size.
    """

    #: litdata's: the next iteration continues from a loaded position.
    restore: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize a new PackedStreamingDataLoader instance.

        Args:
            *args: positional arguments of :class:`litdata.StreamingDataLoader`.
            **kwargs: keyword arguments of :class:`litdata.StreamingDataLoader`.
        """
        super().__init__(*args, **kwargs)
        self.buffer_returns = BufferReturns()
        # Whether a batch was handed out since the last load_state_dict: the
        # loaded position has then been used.
        self._resumed = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Continue from a position of :meth:`state_dict` at the next iteration.

        Args:
            obj: a state returned by :meth:`state_dict`.

        Raises:
            ValueError: if *obj* is a position mid-epoch of a run with other
                numbers of processes, workers or batch size.
        """
        saved = obj['dataset']
        self._check_same_layout(saved)
        if saved.get('input_dir_url'):
            # litdata 0.2.76 requires a remote dataset's chunk cache where it was
            # when the state was saved; the data is the URL (which it checks),
            # and a resumed job may cache elsewhere (another node's scratch).
            dataset = self.dataset
            saved = saved | {
                'input_dir_path': dataset.input_dir.path,
                'cache_dir_path': dataset.cache_dir.path,
            }
            obj = obj | {'dataset': saved}
        super().load_state_dict(obj)
        self._resumed = False

    def _check_same_layout(self, saved: dict[str, Any]) -> None:
        """Refuse a position mid-epoch saved by another layout of the loaders.

        litdata 0.2.76 resumes it by "elastic" restriping, which repeats and
        skips tiles in the resumed epoch (and changes its number of steps).
        """
        world_size = self.dataset.distributed_env.world_size
        workers = max(self.num_workers, 1)
        if saved['num_samples_yielded'] == 0 or not topology_changed(
            saved,
            world_size=world_size,
            num_workers=workers,
            batch_size=self.batch_size,
        ):
            return
        raise ResumeError(
            'cannot resume the shards mid-epoch: the checkpoint was saved by '
            f'{saved["world_size"]} process(es) with {saved["num_workers"]} '
            f'DataLoader worker(s) each and batch_size {saved["batch_size"]}, '
            f'this run has {world_size} process(es) with {workers} worker(s) '
            f'each and batch_size {self.batch_size} (0 workers count as 1); '
            'resume with the saved numbers (trainer devices x num_nodes, data '
            'num_workers and batch_size) or from a checkpoint saved at the end '
            'of an epoch'
        )

    def __iter__(self) -> Iterator[Any]:
        """Iterate over batches, unpacked.

        Yields:
            The batches.
        """
        if self.restore and self._resumed:
            # litdata 0.2.76 clears ``restore`` (set by a mid-epoch
            # load_state_dict) only when an iteration runs to StopIteration.
            # Lightning stops after len(loader) batches without asking for
            # more, so the next epoch would replay the loaded position: the
            # rest of the resumed epoch again, then the run ends early.
            self.restore = False
        returns = self.buffer_returns
        returns.start_iteration(self.persistent_workers)
        try:
            for batch in super().__iter__():
                self._resumed = True
                yield returns.unpack(batch) if isinstance(batch, PackedBatch) else batch
        finally:
            returns.return_unused()
