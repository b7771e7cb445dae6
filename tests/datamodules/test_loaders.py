import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.utilities.data import _update_dataloader
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torch.utils.data._utils.pin_memory import pin_memory

from torchgeo_mmearth.datamodules import loaders as loaders_module
from torchgeo_mmearth.datamodules.loaders import (
    PackedBatch,
    PackedDataLoader,
    pack_collate,
)
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import MODALITIES


def same(a: Any, b: Any) -> bool:
    """Same structure, key order, types, dtypes, shapes and bits (NaN included)."""
    if isinstance(a, Tensor):
        return (
            isinstance(b, Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.numpy().tobytes() == b.numpy().tobytes()
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and bool(a == b)


def sample(i: int) -> dict[str, Any]:
    """A sample with every kind of entry default_collate handles."""
    generator = torch.Generator().manual_seed(i)
    image = torch.randint(0, 2**16, (3, 5, 7), generator=generator, dtype=torch.int32)
    s1 = torch.randn(2, 5, 7, generator=generator)
    s1[0, 0, i % 7] = float('nan')
    return {
        'image_sentinel2': image.to(torch.uint16),
        'image_canopy_height_eth': (image % 200 - 100).to(torch.int8),
        'image_sentinel1': s1,
        'valid': s1 > 0,
        'biome': torch.tensor(i % 3),
        'era5': s1[1, 0].double(),
        'tile_id': f'tile_{i}',
        'index': i,
        'weight': 0.5 * i,
        'nested': {'a': torch.full((2,), i)},
    }


class Samples(Dataset[dict[str, Any]]):
    """Ten samples made by :func:`sample`."""

    def __len__(self) -> int:
        """Number of samples."""
        return 10

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample *index*."""
        return sample(index)


class Failing(Samples):
    """Samples of which one cannot be read."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample *index*, or an error for index 7."""
        if index == 7:
            raise ValueError('tile 7 is broken')
        return sample(index)


class TestPackCollate:
    def test_unpacks_to_default_collate(self) -> None:
        samples = [sample(i) for i in range(4)]
        packed = pack_collate(samples)
        assert isinstance(packed, PackedBatch)
        assert same(packed.unpack(), default_collate(samples))

    def test_tensors_share_one_aligned_buffer(self) -> None:
        packed = pack_collate([sample(i) for i in range(3)])
        batch = packed.unpack()
        packed_keys = [
            k for k, v in packed.entries if isinstance(v, loaders_module._Slot)
        ]
        assert packed_keys == [
            'image_sentinel2',
            'image_canopy_height_eth',
            'image_sentinel1',
            'valid',
            'biome',
            'era5',
        ]
        base = packed.buffer.untyped_storage().data_ptr()
        for key in packed_keys:
            assert batch[key].untyped_storage().data_ptr() == base
            assert (batch[key].data_ptr() - base) % 64 == 0
            assert batch[key].is_contiguous()
        # Entries that are not equally shaped tensors: collated by default_collate.
        assert batch['tile_id'] == ['tile_0', 'tile_1', 'tile_2']
        assert batch['index'].dtype == torch.long
        assert torch.equal(batch['nested']['a'], torch.tensor([[0, 0], [1, 1], [2, 2]]))

    def test_shared_memory_in_workers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        samples = [sample(i) for i in range(2)]
        assert not pack_collate(samples).buffer.is_shared()
        monkeypatch.setattr(loaders_module, 'get_worker_info', lambda: object())
        packed = pack_collate(samples)
        assert packed.buffer.is_shared()
        assert same(packed.unpack(), default_collate(samples))

    def test_pickles(self) -> None:
        packed = pack_collate([sample(i) for i in range(3)])
        clone = pickle.loads(pickle.dumps(packed))
        assert same(clone.unpack(), packed.unpack())

    def test_nothing_to_pack(self) -> None:
        tuples = [(torch.ones(2), 1), (torch.zeros(2), 2)]
        assert same(pack_collate(tuples), default_collate(tuples))
        names = [{'tile_id': 'a'}, {'tile_id': 'b'}]
        assert pack_collate(names) == {'tile_id': ['a', 'b']}
        empty = [{'x': torch.ones(0, 3)}, {'x': torch.ones(0, 3)}]
        assert same(pack_collate(empty), default_collate(empty))

    def test_unequal_shapes_fail_as_default_collate(self) -> None:
        samples = [{'x': torch.ones(2)}, {'x': torch.ones(3)}]
        with pytest.raises(RuntimeError, match='equal size'):
            default_collate(samples)
        with pytest.raises(RuntimeError, match='equal size'):
            pack_collate(samples)

    def test_pin_memory_pins_the_buffer_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What the DataLoader's pin-memory thread does with a packed batch."""
        pinned: list[torch.Size] = []

        def fake_pin(tensor: Tensor, *args: Any) -> Tensor:
            pinned.append(tensor.shape)
            return tensor.clone()

        packed = pack_collate([sample(i) for i in range(3)])
        monkeypatch.setattr(Tensor, 'pin_memory', fake_pin)
        out = pin_memory(packed)
        assert isinstance(out, PackedBatch)
        # The buffer, and the tensors collated outside it: index, weight, nested a.
        assert sorted(map(tuple, pinned)) == sorted(
            [(packed.buffer.numel(),), (3,), (3,), (3, 2)]
        )
        assert out.buffer.data_ptr() != packed.buffer.data_ptr()
        assert same(out.unpack(), packed.unpack())

    @pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
    def test_pin_memory_cuda(self) -> None:
        packed = pack_collate([sample(i) for i in range(3)]).pin_memory()
        batch = packed.unpack()
        assert batch['image_sentinel2'].is_pinned()
        assert batch['index'].is_pinned()


def loaders(
    dataset: Dataset[Any], workers: int, batch_size: int = 3, **kwargs: Any
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """A plain DataLoader without workers and a PackedDataLoader, same batches."""
    plain = DataLoader(
        dataset, batch_size, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    packed = PackedDataLoader(
        dataset,
        batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
        num_workers=workers,
        **kwargs,
    )
    return plain, packed


class TestPackedDataLoader:
    def test_collate_choice(self) -> None:
        assert PackedDataLoader(Samples(), num_workers=2).collate_fn is pack_collate
        assert PackedDataLoader(Samples()).collate_fn is default_collate
        custom = PackedDataLoader(Samples(), num_workers=2, collate_fn=list)
        assert custom.collate_fn is list
        unbatched = PackedDataLoader(Samples(), num_workers=2, batch_size=None)
        assert unbatched.collate_fn is not pack_collate

    def test_same_batches_with_workers(self) -> None:
        plain, packed = loaders(Samples(), workers=2)
        expected = list(plain)
        batches = list(packed)
        assert len(batches) == 4
        assert all(isinstance(b, dict) for b in batches)
        assert same(batches, expected)

    def test_same_batches_without_workers(self) -> None:
        plain, packed = loaders(Samples(), workers=0)
        assert same(list(packed), list(plain))

    def test_persistent_workers(self) -> None:
        kwargs = {'batch_size': 3, 'shuffle': True, 'num_workers': 2}
        plain = DataLoader(
            Samples(),
            generator=torch.Generator().manual_seed(1),
            persistent_workers=True,
            **kwargs,
        )
        packed = PackedDataLoader(
            Samples(),
            generator=torch.Generator().manual_seed(1),
            persistent_workers=True,
            **kwargs,
        )
        for _ in range(2):  # the same workers serve both epochs
            assert same(list(packed), list(plain))
        assert len(packed) == 4

    def test_mmearth_batches(self, mmearth_root: Path) -> None:
        dataset = MMEarth(mmearth_root, 'MMEarth64', modalities=list(MODALITIES))
        plain, packed = loaders(dataset, workers=2, batch_size=4)
        assert same(list(packed), list(plain))

    def test_worker_errors_reach_the_main_process(self) -> None:
        loader = PackedDataLoader(Failing(), batch_size=4, num_workers=2)
        with pytest.raises(ValueError, match='tile 7 is broken'):
            list(loader)

    def test_recreated_for_a_distributed_sampler(self) -> None:
        """Lightning re-creates loaders from their attributes to add the sampler."""
        for workers in (2, 0):
            loader = PackedDataLoader(Samples(), batch_size=2, num_workers=workers)
            sampler = DistributedSampler(
                Samples(), num_replicas=2, rank=1, shuffle=False
            )
            ranked = _update_dataloader(loader, sampler)
            assert type(ranked) is PackedDataLoader
            assert ranked.sampler is sampler
            assert ranked.collate_fn is loader.collate_fn
            ids = [i for batch in ranked for i in batch['tile_id']]
            assert ids == [f'tile_{i}' for i in range(1, 10, 2)]

    def test_lightning_can_pickle_a_running_loader(self) -> None:
        combined = CombinedLoader(PackedDataLoader(Samples(), num_workers=1))
        iterator = iter(combined)
        next(iterator)
        state = pickle.loads(pickle.dumps(combined._iterator))
        assert list(state.iterators[0]) == []

    @pytest.mark.slow
    def test_spawn(self) -> None:
        plain, packed = loaders(
            Samples(), workers=1, multiprocessing_context='spawn', batch_size=5
        )
        assert same(list(packed), list(plain))


class Counted(Dataset[dict[str, Any]]):
    """Forty samples that carry the number of buffers their worker has allocated."""

    def __len__(self) -> int:
        """Number of samples."""
        return 40

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample *index*, with the allocations of this worker so far."""
        pool = loaders_module._worker_buffer_pool
        allocated = 0 if pool is None else pool.allocated
        return {**sample(index), 'allocated': allocated}


def without_counts(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != 'allocated'}


class TestBufferReuse:
    """Workers fill their shared buffers again once the main process is done."""

    def test_workers_reuse_their_buffers(self) -> None:
        plain = DataLoader(Counted(), batch_size=2)
        loader = PackedDataLoader(Counted(), batch_size=2, num_workers=1)
        counts = []
        for batch, expected in zip(loader, plain, strict=True):
            assert same(without_counts(batch), without_counts(expected))
            counts.append(int(batch['allocated'].max()))
            del batch  # as a training loop drops each batch
        # 20 batches from the few buffers in use at once (without reuse: 20;
        # how many are in use at once depends on timing, at most the pool's limit).
        assert len(counts) == 20
        assert max(counts) <= loaders_module._POOL_LIMIT

    def test_batches_kept_are_never_overwritten(self) -> None:
        plain = list(DataLoader(Samples(), batch_size=1))
        loader = PackedDataLoader(Samples(), batch_size=1, num_workers=1)
        kept = list(loader)  # all ten batches held at once
        assert same(kept, plain)

    def test_tensors_kept_past_their_batch_are_never_overwritten(self) -> None:
        plain = [b['image_sentinel1'] for b in DataLoader(Counted(), batch_size=2)]
        loader = PackedDataLoader(Counted(), batch_size=2, num_workers=1)
        detached, arrays, storages = [], [], []
        for i, batch in enumerate(loader):
            # References that are not views of the batch's buffer tensor.
            if i % 3 == 0:
                detached.append((i, batch['image_sentinel1'].detach()))
            elif i % 3 == 1:
                arrays.append((i, batch['image_sentinel1'].numpy()))
            else:
                tensor = batch['image_sentinel1']
                offset, shape = tensor.storage_offset(), tensor.shape
                storage = tensor.untyped_storage()
                storages.append((i, storage, offset, shape))
            del batch
        for i, tensor in detached:
            assert same(tensor, plain[i])
        for i, array in arrays:
            assert same(torch.from_numpy(array), plain[i])
        for i, storage, offset, shape in storages:
            tensor = torch.empty(0).set_(storage, offset, shape)
            assert same(tensor, plain[i])

    def test_persistent_workers_keep_a_batch_across_epochs(self) -> None:
        kwargs: dict[str, Any] = {'batch_size': 2, 'shuffle': False}
        plain = list(DataLoader(Counted(), **kwargs))
        loader = PackedDataLoader(
            Counted(), num_workers=1, persistent_workers=True, **kwargs
        )
        last = None
        for _ in range(3):
            for i, batch in enumerate(loader):
                assert same(without_counts(batch), without_counts(plain[i]))
                if last is not None:
                    assert same(without_counts(last), without_counts(plain[-1]))
                if i == len(plain) - 1:
                    last = batch
                del batch

    def test_returns_wait_for_the_last_reference(self) -> None:
        storage = torch.UntypedStorage(128)
        storage[0] = loaders_module._IN_USE
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
        slot = loaders_module._Slot(64, torch.float32, (2, 4))
        slot.view(buffer).copy_(torch.arange(8.0).view(2, 4))
        packed = PackedBatch(buffer, [('x', slot)], origin=(1, 0))
        del buffer
        returns = loaders_module.BufferReturns()
        x = returns.unpack(packed)['x']
        del packed
        returns.return_unused()
        assert storage[0] == loaders_module._IN_USE  # x still uses it
        del x
        returns.return_unused()
        assert storage[0] == loaders_module._IN_USE  # `storage` here still does
        kept = returns.held[(1, 0)][0]
        del storage
        returns.return_unused()
        assert kept[0] == loaders_module._RETURNED
        assert returns.held[(1, 0)][1]

    def test_pinned_copies_return_the_worker_buffer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The pin-memory thread copies a batch: its worker buffer goes back."""
        monkeypatch.setattr(Tensor, 'pin_memory', lambda t, *args: t.clone())
        storage = torch.UntypedStorage(128)
        storage[0] = loaders_module._IN_USE
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
        worker_batch = PackedBatch(
            buffer, [('x', loaders_module._Slot(64, torch.uint8, (3,)))], (1, 0)
        )
        pinned = pin_memory(worker_batch)
        assert isinstance(pinned, PackedBatch)
        assert pinned.origin == (1, 0)
        del worker_batch, buffer
        returns = loaders_module.BufferReturns()
        batch = returns.unpack(pinned)
        del pinned
        assert batch['x'].untyped_storage().data_ptr() != storage.data_ptr()
        held = returns.held[(1, 0)][0]
        assert held.untyped_storage().data_ptr() == storage.data_ptr()
        del storage
        returns.return_unused()
        assert held[0] == loaders_module._RETURNED
        returns.start_iteration(persistent_workers=True)
        assert list(returns.held) == [(1, 0)]
        returns.start_iteration(persistent_workers=False)
        assert returns.held == {}
