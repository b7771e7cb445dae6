"""The training loader resumes mid-epoch in the order of an uninterrupted run."""

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from tests.conftest import launch_spawned
from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.datamodules.resumable import (
    ResumableDataLoader,
    ResumableDistributedSampler,
    ResumableRandomSampler,
)


class Ids(Dataset[dict[str, Tensor]]):
    """Samples that carry their index."""

    def __len__(self) -> int:  # noqa: D105
        return 20

    def __getitem__(self, index: int) -> dict[str, Tensor]:  # noqa: D105
        return {'id': torch.tensor(index), 'x': torch.full((1,), float(index))}


class Recorder(LightningModule):
    """Records the sample ids of every training batch, and draws from the RNG."""

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers
        self.layer = nn.Linear(1, 1)
        self.seen: list[list[int]] = []
        self.draws: list[float] = []

    def train_dataloader(self) -> ResumableDataLoader[Any]:
        dataset = Ids()
        return ResumableDataLoader(
            dataset,
            batch_size=3,
            sampler=ResumableRandomSampler(dataset),
            num_workers=self.workers,
            drop_last=True,
            persistent_workers=self.workers > 0,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.seen.append(batch['id'].tolist())
        self.draws.append(torch.rand(()).item())  # as MP-MAE's masks
        loss: Tensor = self.layer(batch['x']).square().mean()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def configure_callbacks(self) -> list[Callback]:
        from torchgeo_mmearth.trainers import RandomStateCheckpoint

        return [RandomStateCheckpoint()]


class SaveAt(Callback):
    """Saves a checkpoint at the end of a training step, as Ctrl-C does."""

    def __init__(self, step: int, path: Path) -> None:
        self.step = step
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def fit(model: Recorder, seed: int, **kwargs: Any) -> None:
    callbacks = kwargs.pop('callbacks', [])
    seed_everything(seed)
    trainer = Trainer(
        max_epochs=2,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, **kwargs)


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('step', [4, 6])  # mid-epoch, and at its end
def test_resumed_run_sees_the_rest_of_the_epoch(
    tmp_path: Path, workers: int, step: int
) -> None:
    # 20 samples in batches of 3: 6 batches an epoch (two samples dropped).
    saved = tmp_path / 'saved.ckpt'
    uninterrupted = Recorder(workers)
    fit(uninterrupted, seed=0, callbacks=[SaveAt(step, saved)])
    assert len(uninterrupted.seen) == 12
    for epoch in (uninterrupted.seen[:6], uninterrupted.seen[6:]):
        ids = [i for batch in epoch for i in batch]
        assert len(set(ids)) == 18  # no sample twice in an epoch
    assert uninterrupted.seen[:6] != uninterrupted.seen[6:]  # a new order each epoch

    state = torch.load(saved, weights_only=True)
    assert state['loops']['fit_loop']['state_dict']['combined_loader'] == [
        {
            'seed': state['loops']['fit_loop']['state_dict']['combined_loader'][0][
                'seed'
            ],
            'epoch': 0,
            'batches': step,
        }
    ]

    # Another seed: the order and the draws must come from the checkpoint.
    resumed = Recorder(workers)
    fit(resumed, seed=1, ckpt_path=saved)
    assert resumed.seen == uninterrupted.seen[step:]
    assert resumed.draws == uninterrupted.draws[step:]


def test_sampler_order_depends_on_seed_and_epoch() -> None:
    sampler = ResumableRandomSampler(range(10), seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    sampler.start = 4
    assert list(sampler) == first[4:]
    assert list(sampler) == first  # the skip applies once
    assert list(ResumableRandomSampler(range(10), seed=4)) != first


def test_seed_comes_from_the_global_generator() -> None:
    torch.manual_seed(0)
    seed = ResumableRandomSampler(range(10)).seed
    torch.manual_seed(0)
    assert ResumableRandomSampler(range(10)).seed == seed


def test_state_of_a_loader_without_a_resumable_sampler_is_empty() -> None:
    loader = ResumableDataLoader(Ids(), batch_size=4)
    assert loader.state_dict() == {}
    loader.load_state_dict({})
    assert len(list(loader)) == 5


class TileRecorder(LightningModule):
    """Records the tiles of each training batch; sizes its schedule as MPMAETask."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: list[list[str]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.seen.append(list(batch['tile_id']))
        loss: Tensor = (
            self.layer(batch['lat'].float().flatten(1)[:, :1]).square().mean()
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Makes the training loader before Lightning restores the loops' state.
        assert self.trainer.estimated_stepping_batches == 20
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_datamodule_resumes_with_workers(tmp_path: Path) -> None:
    # The demo corpus: 40 training tiles in batches of 4, two worker processes.
    def datamodule() -> MMEarthDataModule:
        return MMEarthDataModule(
            subset='MMEarthDemo',
            modalities=['sentinel2', 'lat'],
            batch_size=4,
            num_workers=2,
            val_split=None,
        )

    saved = tmp_path / 'saved.ckpt'
    uninterrupted = TileRecorder()
    fit(uninterrupted, seed=0, callbacks=[SaveAt(3, saved)], datamodule=datamodule())
    tiles = [tile for batch in uninterrupted.seen[:10] for tile in batch]
    assert len(tiles) == len(set(tiles)) == 40

    resumed = TileRecorder()
    fit(resumed, seed=1, ckpt_path=saved, datamodule=datamodule())
    # The rest of the first epoch (nothing repeated or skipped), then the second.
    assert resumed.seen == uninterrupted.seen[3:]


def test_distributed_sampler_order_is_distributed_samplers() -> None:
    for rank in range(3):
        sampler = ResumableDistributedSampler(Ids(), num_replicas=3, rank=rank, seed=5)
        reference = DistributedSampler(Ids(), num_replicas=3, rank=rank, seed=5)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            reference.set_epoch(epoch)
            assert list(sampler) == list(reference)
        sampler.start = 4
        assert list(sampler) == list(reference)[4:]
        assert list(sampler) == list(reference)  # the skip applies once
    # One process: the order of the single-process sampler.
    one = ResumableDistributedSampler(Ids(), num_replicas=1, rank=0, seed=5)
    assert list(one) == list(ResumableRandomSampler(Ids(), seed=5))


def distributed_loader(world_size: int, rank: int = 0) -> ResumableDataLoader[Any]:
    """Batches of 3 of :class:`Ids`, one order for *world_size* processes."""
    dataset = Ids()
    sampler = (
        ResumableDistributedSampler(dataset, world_size, rank)
        if world_size > 1
        else ResumableRandomSampler(dataset)
    )
    return ResumableDataLoader(dataset, batch_size=3, sampler=sampler, drop_last=True)


def ids(batches: list[dict[str, Tensor]]) -> list[list[int]]:
    return [batch['id'].tolist() for batch in batches]


def test_distributed_loader_resumes_on_as_many_processes() -> None:
    # 20 samples on 2 processes, 10 each: 3 batches of 3 per process and epoch.
    saved = distributed_loader(2, rank=1)
    batches = iter(saved)
    next(batches)
    state = saved.state_dict()
    assert state == {'seed': state['seed'], 'epoch': 0, 'batches': 1, 'world_size': 2}
    resumed = distributed_loader(2, rank=1)
    resumed.load_state_dict(state)
    assert ids(list(resumed)) == ids(list(batches))

    for world_size in (1, 3):
        with pytest.raises(ValueError, match=r'mid-epoch \(batch 1 of 3\) by 2'):
            distributed_loader(world_size).load_state_dict(state)
    single = distributed_loader(1)
    next(iter(single))
    with pytest.raises(ValueError, match=r'mid-epoch \(batch 1 of 6\) by 1 .* has 2'):
        distributed_loader(2).load_state_dict(single.state_dict())


def test_end_of_epoch_resumes_on_any_number_of_processes() -> None:
    saved = distributed_loader(2)
    list(saved)
    state = saved.state_dict()
    assert state['batches'] == 3
    # On one process: its order of the next epoch.
    resumed = distributed_loader(1)
    resumed.load_state_dict(state)
    reference = ResumableRandomSampler(Ids(), seed=state['seed'])
    reference.set_epoch(1)
    order = list(reference)
    assert ids(list(resumed)) == [order[i : i + 3] for i in range(0, 18, 3)]
    # And back on three.
    resumed_state = resumed.state_dict()
    on_three = distributed_loader(3, rank=2)
    on_three.load_state_dict(resumed_state)
    reference_sampler = DistributedSampler(Ids(), 3, 2, seed=state['seed'])
    reference_sampler.set_epoch(2)
    order = list(reference_sampler)
    assert ids(list(on_three)) == [order[0:3], order[3:6]]


class RankRecorder(LightningModule):
    """Saves the tiles that its process trained on, and the final weights."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out
        self.layer = nn.Linear(1, 1)
        self.seen: list[list[str]] = []

    def setup(self, stage: str) -> None:
        # Different global generators on the ranks: the sampler's seed must still
        # be the same on both.
        torch.manual_seed(int(os.environ['PL_GLOBAL_SEED']) + self.global_rank)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.seen.append(list(batch['tile_id']))
        loss: Tensor = (
            self.layer(batch['lat'].float().flatten(1)[:, :1]).square().mean()
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        self.out.mkdir(exist_ok=True)
        record = {'seen': self.seen, 'weights': self.layer.state_dict()}
        torch.save(record, self.out / f'rank{self.global_rank}.pt')


def fit_ddp(out: Path, seed: int, **kwargs: Any) -> list[dict[str, Any]]:
    """Train on two gloo processes for 3 epochs; each rank's record."""

    def launch() -> None:
        seed_everything(seed)
        trainer = Trainer(
            max_epochs=3,
            accelerator='cpu',
            devices=2,
            strategy=DDPStrategy(start_method='spawn', process_group_backend='gloo'),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                ModelCheckpoint(
                    out / 'ckpt', '{step}', every_n_train_steps=3, save_top_k=-1
                )
            ],
        )
        datamodule = MMEarthDataModule(
            subset='MMEarthDemo',
            modalities=['sentinel2', 'lat'],
            batch_size=4,
            val_split=None,
        )
        trainer.fit(RankRecorder(out), datamodule=datamodule, **kwargs)

    launch_spawned(launch)
    return [torch.load(out / f'rank{rank}.pt', weights_only=True) for rank in (0, 1)]


@pytest.mark.slow
def test_distributed_run_resumes_mid_epoch(tmp_path: Path) -> None:
    # The demo corpus: 40 training tiles, 20 per process in batches of 4, so
    # 5 steps an epoch; a checkpoint every 3 steps.
    uninterrupted = fit_ddp(tmp_path / 'uninterrupted', seed=0)
    for epoch in range(3):
        tiles = [
            tile
            for record in uninterrupted
            for batch in record['seen'][5 * epoch : 5 * epoch + 5]
            for tile in batch
        ]
        assert len(tiles) == len(set(tiles)) == 40

    saved = tmp_path / 'uninterrupted' / 'ckpt' / 'step=3.ckpt'
    state = torch.load(saved, weights_only=True)
    loader_state = state['loops']['fit_loop']['state_dict']['combined_loader']
    assert loader_state[0] | {'seed': 0} == {
        'seed': 0,
        'epoch': 0,
        'batches': 3,
        'world_size': 2,
    }

    # Another seed: the order must come from the checkpoint.
    resumed = fit_ddp(tmp_path / 'resumed', seed=1, ckpt_path=saved)
    for rank in (0, 1):
        assert resumed[rank]['seen'] == uninterrupted[rank]['seen'][3:]
        for name, weight in resumed[rank]['weights'].items():
            assert torch.equal(weight, uninterrupted[rank]['weights'][name])


@pytest.mark.parametrize('use_distributed_sampler', [True, False])
def test_training_sampler_follows_use_distributed_sampler(
    use_distributed_sampler: bool,
) -> None:
    # Two processes as the datamodule sees them; broadcast keeps this one's seed.
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        world_size=2,
        distributed_sampler_kwargs={'num_replicas': 2, 'rank': 1},
        strategy=SimpleNamespace(broadcast=lambda seed: seed),
        _accelerator_connector=SimpleNamespace(
            use_distributed_sampler=use_distributed_sampler
        ),
    )
    datamodule = MMEarthDataModule(
        subset='MMEarthDemo', modalities=['sentinel2'], batch_size=4, val_split=None
    )
    datamodule.trainer = trainer  # type: ignore[assignment]
    datamodule.setup('fit')
    sampler = datamodule.train_dataloader().sampler
    if use_distributed_sampler:
        assert isinstance(sampler, ResumableDistributedSampler)
        assert (sampler.num_replicas, sampler.rank) == (2, 1)
    else:
        assert type(sampler) is ResumableRandomSampler
