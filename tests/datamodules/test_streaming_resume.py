"""A run resumed mid-epoch from shards goes on exactly as an uninterrupted run."""

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from torchgeo_mmearth.datamodules import MMEarthStreamingDataModule
from torchgeo_mmearth.trainers import CheckpointOnInterrupt, RandomStateCheckpoint

#: 6 training tiles in batches of 1: 6 steps an epoch.
STEPS_PER_EPOCH = 6
EPOCHS = 4


class Learner(LightningModule):
    """Learns from each batch (so the weights depend on the order of the tiles).

    Records the tiles of every step; sends itself Ctrl-C after *interrupt_at* steps.
    """

    def __init__(self, interrupt_at: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.interrupt_at = interrupt_at
        self.seen: list[list[str]] = []
        self.final_step = 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.seen.append(list(batch['tile_id']))
        image = batch['image_sentinel2'].nan_to_num()
        features = torch.stack([image.mean((1, 2, 3)), image.std((1, 2, 3))], 1)
        loss: Tensor = (self.layer(features) - 1).square().mean()
        if self.global_step + 1 == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, during the step
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # As MPMAETask: the training loader is made before Lightning restores
        # the loops' state from a checkpoint.
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def on_train_end(self) -> None:
        self.final_step = self.global_step


def fit(
    input_dir: str,
    out: Path,
    num_workers: int,
    ckpt_path: Path | None = None,
    interrupt_at: int | None = None,
    callbacks: list[Callback] | None = None,
    **kwargs: Any,
) -> Learner:
    """Train for EPOCHS epochs (or until Ctrl-C), from *ckpt_path* if given."""
    seed_everything(0 if ckpt_path is None else 1)  # the checkpoint must decide
    model = Learner(interrupt_at)
    trainer = Trainer(
        accelerator='cpu',
        max_epochs=EPOCHS,
        default_root_dir=out,
        logger=False,
        enable_checkpointing=any(
            isinstance(c, ModelCheckpoint) for c in callbacks or []
        ),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[
            CheckpointOnInterrupt(),
            RandomStateCheckpoint(),
            *(callbacks or []),
        ],
    )
    kwargs.setdefault('batch_size', 1)
    datamodule = MMEarthStreamingDataModule(
        input_dir,
        modalities=['sentinel2'],
        num_workers=num_workers,
        input_size=32,
        cache_dir=str(out / 'cache'),
        **kwargs,
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(model, datamodule, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's exit after Ctrl-C
        assert interrupt_at is not None
    finally:
        signal.signal(signal.SIGINT, handler)
    return model


def assert_same_run(resumed: Learner, uninterrupted: Learner, step: int) -> None:
    """The resumed run took the rest of the uninterrupted run's batches and weights."""
    assert resumed.seen == uninterrupted.seen[step:]
    assert resumed.final_step == uninterrupted.final_step == STEPS_PER_EPOCH * EPOCHS
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


@pytest.mark.parametrize('num_workers', [0, 1])
def test_resume_mid_epoch_as_an_uninterrupted_run(
    mmearth_shards: Path, tmp_path: Path, num_workers: int
) -> None:
    # A checkpoint every step (ModelCheckpoint), resumed from mid-epoch 0; Ctrl-C
    # in mid-epoch 1, resumed: both go on for at least two more epochs.
    every_step = ModelCheckpoint(
        dirpath=tmp_path / 'steps', every_n_train_steps=1, save_top_k=-1
    )
    uninterrupted = fit(
        str(mmearth_shards), tmp_path / 'a', num_workers, callbacks=[every_step]
    )
    seen = uninterrupted.seen
    assert len(seen) == STEPS_PER_EPOCH * EPOCHS
    epochs = [
        seen[i : i + STEPS_PER_EPOCH] for i in range(0, len(seen), STEPS_PER_EPOCH)
    ]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # each tile once
    assert len({tuple(map(tuple, e)) for e in epochs}) == EPOCHS  # new orders

    (saved,) = (tmp_path / 'steps').glob('*step=4.ckpt')
    resumed = fit(str(mmearth_shards), tmp_path / 'b', num_workers, ckpt_path=saved)
    assert_same_run(resumed, uninterrupted, 4)

    interrupted = fit(str(mmearth_shards), tmp_path / 'c', num_workers, interrupt_at=9)
    assert interrupted.seen == seen[:9]
    saved = tmp_path / 'c' / 'checkpoints' / 'interrupted.ckpt'
    resumed = fit(str(mmearth_shards), tmp_path / 'd', num_workers, ckpt_path=saved)
    assert_same_run(resumed, uninterrupted, 9)


def test_resume_with_other_workers(mmearth_shards: Path, tmp_path: Path) -> None:
    # Saved with 1 worker: 0 workers (litdata counts them as 1) resume exactly;
    # 2 workers are refused (litdata would repeat and skip tiles).
    every_step = ModelCheckpoint(
        dirpath=tmp_path / 'steps', every_n_train_steps=1, save_top_k=-1
    )
    uninterrupted = fit(str(mmearth_shards), tmp_path / 'a', 1, callbacks=[every_step])
    (saved,) = (tmp_path / 'steps').glob('*step=4.ckpt')
    resumed = fit(str(mmearth_shards), tmp_path / 'b', 0, ckpt_path=saved)
    assert_same_run(resumed, uninterrupted, 4)
    message = (
        r'saved by 1 process\(es\) with 1 DataLoader worker\(s\) each and '
        r'batch_size 1, this run has 1 process\(es\) with 2 worker\(s\) each and '
        r'batch_size 1'
    )
    with pytest.raises(ValueError, match=message):
        fit(str(mmearth_shards), tmp_path / 'c', 2, ckpt_path=saved)
    # At the end of an epoch there is no position: any number of workers.
    (saved,) = (tmp_path / 'steps').glob(f'*step={STEPS_PER_EPOCH}.ckpt')
    resumed = fit(str(mmearth_shards), tmp_path / 'd', 2, ckpt_path=saved)
    assert resumed.final_step == STEPS_PER_EPOCH * EPOCHS
    epochs = [
        resumed.seen[i : i + STEPS_PER_EPOCH]
        for i in range(0, len(resumed.seen), STEPS_PER_EPOCH)
    ]
    assert all(
        sorted(e) == sorted(uninterrupted.seen[:STEPS_PER_EPOCH]) for e in epochs
    )


def test_resume_with_other_processes_is_refused(
    mmearth_shards: Path, tmp_path: Path
) -> None:
    dm = MMEarthStreamingDataModule(
        str(mmearth_shards),
        modalities=['sentinel2'],
        batch_size=2,
        cache_dir=str(tmp_path),
    )
    dm.setup('fit')
    loader = dm.train_dataloader()
    next(iter(loader))
    state = loader.state_dict()
    state['dataset']['world_size'] = 2  # as one of 2 processes
    with pytest.raises(
        ValueError, match=r'saved by 2 process\(es\).* this run has 1 process'
    ):
        dm.train_dataloader().load_state_dict(state)
