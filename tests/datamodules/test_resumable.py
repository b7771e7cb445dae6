"""The training loader resumes mid-epoch in the order of an uninterrupted run."""

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import Dataset

from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.datamodules.resumable import (
    ResumableDataLoader,
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
