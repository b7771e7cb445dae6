import json
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from torchgeo_mmearth.datamodules import MMEarthDataModule, MMEarthStreamingDataModule
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import MODALITIES


def streaming(
    shards: Path, tmp_path: Path, **kwargs: Any
) -> MMEarthStreamingDataModule:
    kwargs = {'batch_size': 2, 'modalities': list(MODALITIES), **kwargs}
    return MMEarthStreamingDataModule(
        str(shards), cache_dir=str(tmp_path / 'cache'), **kwargs
    )


class Recorder(LightningModule):
    """Records the tile ids of every training batch (per rank, into a file)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[str] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        assert batch['image_sentinel2'].dtype == torch.float32  # normalised
        self.seen += list(batch['tile_id'])
        path = Path(self.out) / f'rank{self.global_rank}.json'
        path.write_text(json.dumps(self.seen))
        return (self.weight * batch['image_sentinel2'].nan_to_num().mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # As MPMAETask: the training loader is made before Lightning restores
        # the loops' state (and the loader state it keeps) from a checkpoint.
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.0)


def trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    kwargs = {
        'accelerator': 'cpu',
        'max_epochs': 1,
        'default_root_dir': tmp_path,
        'logger': False,
        'enable_progress_bar': False,
        'enable_model_summary': False,
        'limit_val_batches': 0,
        **kwargs,
    }
    return Trainer(**kwargs)


def test_same_batches_as_the_hdf5_datamodule(
    mmearth_root: Path, mmearth_shards: Path, tmp_path: Path
) -> None:
    # The same tiles give the same normalised values; crops and flips are the
    # shared on-device code of MMEarthDataModule.
    dm = streaming(mmearth_shards, tmp_path, input_size=48, flips=True, num_workers=2)
    dm.setup('fit')
    hdf5 = MMEarthDataModule(
        root=str(mmearth_root), subset='MMEarth64', modalities=list(MODALITIES)
    )
    hdf5.setup('fit')
    reader = MMEarth(mmearth_root, 'MMEarth64', modalities=list(MODALITIES))
    rows = {reader[i]['tile_id']: i for i in range(len(reader))}
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert sorted(t for b in batches for t in b['tile_id']) == sorted(rows)
    batch = batches[0]
    assert batch['image_sentinel2'].dtype == torch.uint16  # raw leaves the workers
    assert dm.normalizer is not None and hdf5.normalizer is not None
    ours = dm.normalizer(dict(batch))
    theirs = hdf5.normalizer(
        torch.utils.data.default_collate([reader[rows[t]] for t in batch['tile_id']])
    )
    for key, value in theirs.items():
        if isinstance(value, Tensor):
            assert torch.equal(value.nan_to_num(), ours[key].nan_to_num()), key

    class Training:
        training, validating, sanity_checking, testing, predicting = (
            True,
            False,
            False,
            False,
            False,
        )

    dm.trainer = Training()  # type: ignore[assignment]
    out = dm.on_after_batch_transfer(batch, 0)
    assert out['image_sentinel2'].shape[-2:] == (48, 48)
    assert out['mask_dynamic_world'].shape[-2:] == (48, 48)
    assert out['mask_dynamic_world'].dtype == torch.int64
    # Validation and test splits, unshuffled and complete.
    assert len(list(dm.val_dataloader())) == 1
    dm.setup('test')
    assert sum(len(b['tile_id']) for b in dm.test_dataloader()) == 2


def test_worker_batches_equal_the_hdf5_samples(
    mmearth_root: Path, mmearth_shards: Path, tmp_path: Path
) -> None:
    """Raw batches from workers (tiles copied once, from the mapped chunks)."""
    bands = {
        'sentinel2': ['B4', 'B3', 'B2', 'B8'],  # a selection: a new array per tile
        'sentinel1': list(MODALITIES['sentinel1'].bands),
        'dynamic_world': list(MODALITIES['dynamic_world'].bands),
        'biome': list(MODALITIES['biome'].bands),  # one-hot: a class index
        'era5': list(MODALITIES['era5'].bands),
    }
    dm = streaming(
        mmearth_shards,
        tmp_path,
        modalities=list(bands),
        modality_bands=bands,
        batch_size=3,
        num_workers=2,
    )
    dm.setup('fit')
    reader = MMEarth(mmearth_root, 'MMEarth64', modality_bands=bands)
    samples = {s['tile_id']: s for s in (reader[i] for i in range(len(reader)))}
    batches = list(dm.train_dataloader())
    assert sum(len(b['tile_id']) for b in batches) == 6
    for batch in batches:
        expected = torch.utils.data.default_collate(
            [samples[t] for t in batch['tile_id']]
        )
        assert list(batch) == list(expected)
        for key, value in expected.items():
            if isinstance(value, Tensor):
                assert batch[key].dtype == value.dtype, key
                assert torch.equal(batch[key].nan_to_num(), value.nan_to_num()), key
    # The datamodule's datasets still give writable tensors in this process.
    sample = dm.train_dataset[0]
    assert isinstance(sample['image_sentinel1'], Tensor)
    sample['image_sentinel1'] += 1


def test_resume_mid_epoch_repeats_and_skips_nothing(
    mmearth_shards: Path, tmp_path: Path
) -> None:
    # 6 training tiles, batches of 1, 2 workers: stopped after 2 of the 6 steps
    # (a checkpoint every step), resumed from the last checkpoint.
    def fit(
        out: Path, max_steps: int, ckpt_path: str | None = None, **kwargs: Any
    ) -> list[str]:
        out.mkdir()
        callback = ModelCheckpoint(
            dirpath=out / 'ckpt', save_last=True, every_n_train_steps=1
        )
        run = trainer(tmp_path, max_steps=max_steps, callbacks=[callback], **kwargs)
        model = Recorder(str(out))
        dm = streaming(mmearth_shards, tmp_path, batch_size=1, num_workers=2)
        run.fit(model, dm, ckpt_path=ckpt_path)
        return model.seen

    first = fit(tmp_path / 'first', max_steps=2)
    assert len(first) == 2
    saved = torch.load(tmp_path / 'first' / 'ckpt' / 'last.ckpt', weights_only=False)
    assert saved['global_step'] == 2
    first_ckpt = tmp_path / 'first' / 'ckpt' / 'last.ckpt'
    rest = fit(tmp_path / 'rest', max_steps=6, ckpt_path=str(first_ckpt))
    # No tile repeated, none skipped: the epoch is the split, once, in the order
    # of an uninterrupted run with the same seed.
    assert len(first) + len(rest) == 6
    assert len(set(first + rest)) == 6
    assert any('train_loader' in str(v) for v in saved.values())
    uninterrupted = fit(tmp_path / 'uninterrupted', max_steps=6)
    assert first + rest == uninterrupted

    # An epoch cut short by limit_train_batches has ended: the resumed run
    # starts the next epoch, in that epoch's order.
    short = {'limit_train_batches': 2, 'max_epochs': 2}
    reference = fit(tmp_path / 'two_short_epochs', max_steps=-1, **short)
    assert len(reference) == 4 and reference[:2] != reference[2:]
    fit(tmp_path / 'one_short_epoch', max_steps=-1, **{**short, 'max_epochs': 1})
    resumed = fit(
        tmp_path / 'resumed_short',
        max_steps=-1,
        ckpt_path=str(tmp_path / 'one_short_epoch' / 'ckpt' / 'last.ckpt'),
        **short,
    )
    assert resumed == reference[2:]


@pytest.mark.slow
def test_two_processes_read_disjoint_parts_of_the_split(
    mmearth_root: Path, mmearth_shards: Path, tmp_path: Path
) -> None:
    """Two DDP processes (gloo, CPU), each with a worker, over one shard folder."""
    run = trainer(
        tmp_path,
        devices=2,
        strategy=lightning.pytorch.strategies.DDPStrategy(
            start_method='spawn', process_group_backend='gloo'
        ),
        enable_checkpointing=False,
    )
    out = tmp_path / 'seen'
    out.mkdir()
    run.fit(
        Recorder(str(out)),
        streaming(mmearth_shards, tmp_path, batch_size=1, num_workers=1),
    )
    ranks = [json.loads((out / f'rank{r}.json').read_text()) for r in range(2)]
    split = MMEarth(mmearth_root, 'MMEarth64', 'train')
    tiles = sorted(split[i]['tile_id'] for i in range(len(split)))
    assert all(len(seen) == 3 for seen in ranks)
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == tiles


@pytest.mark.slow
def test_two_processes_resume_mid_epoch(mmearth_shards: Path, tmp_path: Path) -> None:
    # DDP (gloo, 2 CPU processes) stopped after 1 of 3 steps, resumed: each rank
    # reads the rest of its part of the epoch, as an uninterrupted run does.

    def fit(
        name: str, max_steps: int, ckpt_path: Path | None = None
    ) -> list[list[str]]:
        out = tmp_path / name
        out.mkdir()
        run = trainer(
            tmp_path,
            max_steps=max_steps,
            devices=2,
            strategy=lightning.pytorch.strategies.DDPStrategy(
                start_method='spawn', process_group_backend='gloo'
            ),
            callbacks=[
                ModelCheckpoint(
                    dirpath=out / 'ckpt', save_last=True, every_n_train_steps=1
                )
            ],
        )
        run.fit(
            Recorder(str(out)),
            streaming(mmearth_shards, tmp_path, batch_size=1, num_workers=1),
            ckpt_path=ckpt_path,
        )
        return [json.loads((out / f'rank{r}.json').read_text()) for r in range(2)]

    first = fit('first', max_steps=1)
    rest = fit('rest', max_steps=3, ckpt_path=tmp_path / 'first' / 'ckpt' / 'last.ckpt')
    uninterrupted = fit('uninterrupted', max_steps=3)
    assert [len(seen) for seen in first] == [1, 1]
    assert [len(seen) for seen in rest] == [2, 2]
    assert [a + b for a, b in zip(first, rest, strict=True)] == uninterrupted
    assert not set(uninterrupted[0]) & set(uninterrupted[1])


def test_normalizer_takes_the_release_of_the_shards(
    mmearth_shards: Path, tmp_path: Path
) -> None:
    dm = streaming(mmearth_shards, tmp_path)
    dm.setup('fit')
    assert dm.normalizer is not None and dm.normalizer.version == 'v001'


@pytest.mark.parametrize('verify_chunks', [True, False])
def test_chunk_verification_is_a_datamodule_option(
    mmearth_shards: Path, verify_chunks: bool
) -> None:
    from torchgeo_mmearth.datasets.streaming import _VerifiedChunks

    datamodule = MMEarthStreamingDataModule(
        input_dir=str(mmearth_shards), batch_size=2, verify_chunks=verify_chunks
    )
    datamodule.setup('fit')
    loader = datamodule.train_dataset.item_loader
    assert isinstance(loader, _VerifiedChunks) is verify_chunks
