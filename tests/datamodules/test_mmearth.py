import itertools
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.datamodules.loaders import PackedDataLoader, pack_collate
from torchgeo_mmearth.modalities import MODALITIES

PIXEL_KEYS = [m.key for m in MODALITIES.values() if m.level == 'pixel']


class FakeTrainer:
    """Just enough of a Trainer for on_after_batch_transfer."""

    def __init__(self, stage: str) -> None:
        self.training = stage == 'train'
        self.validating = stage == 'val'
        self.sanity_checking = False
        self.testing = stage == 'test'
        self.predicting = stage == 'predict'


def transfer(
    dm: MMEarthDataModule, batch: dict[str, Any], stage: str
) -> dict[str, Any]:
    dm.trainer = FakeTrainer(stage)  # type: ignore[assignment]
    return dm.on_after_batch_transfer(batch, 0)


def same(a: Tensor, b: Tensor) -> bool:
    """Exact equality, NaN included."""
    return (
        a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(), b.nan_to_num())
    )


def datamodule(root: Path, **kwargs: Any) -> MMEarthDataModule:
    kwargs = {
        'subset': 'MMEarth64',
        'batch_size': 4,
        'modalities': list(MODALITIES),
        **kwargs,
    }
    return MMEarthDataModule(root=str(root), **kwargs)


def find_view(full: Tensor, crop: Tensor, flips: bool) -> tuple[int, int, bool, bool]:
    """The offset and flips that turn one uncropped sample into its crop."""
    size = crop.shape[-1]
    for y, x in itertools.product(
        range(full.shape[-2] - size + 1), range(full.shape[-1] - size + 1)
    ):
        view = full[..., y : y + size, x : x + size]
        for h, v in itertools.product([False, True] if flips else [False], repeat=2):
            flipped = view.flip(-1) if h else view
            flipped = flipped.flip(-2) if v else flipped
            if same(flipped, crop):
                return y, x, h, v
    raise AssertionError('the crop is not a slice of the tile')


@pytest.mark.parametrize('flips', [False, True])
def test_crop_is_aligned_across_modalities(mmearth_root: Path, flips: bool) -> None:
    dm = datamodule(mmearth_root, flips=flips)
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch['image_sentinel2'].dtype == torch.uint16
    )  # raw values leave the workers
    assert dm.normalizer is not None
    full = dm.normalizer(batch)
    torch.manual_seed(0)
    out = transfer(dm, batch, 'train')
    assert out['image_sentinel2'].shape == (4, 12, 56, 56)
    offsets = set()
    for i in range(4):
        y, x, h, v = find_view(
            full['image_sentinel2'][i], out['image_sentinel2'][i], flips
        )
        offsets.add((y, x))
        for key in PIXEL_KEYS:
            view = full[key][i, ..., y : y + 56, x : x + 56]
            view = view.flip(-1) if h else view
            view = view.flip(-2) if v else view
            crop = out[key][i]
            assert crop.dtype == full[key].dtype
            assert same(view.float(), crop.float()), key
    assert len(offsets) > 1  # offsets differ per sample
    for key in ('era5', 'lat', 'lon', 'month', 'biome', 'eco_region', 's2_type'):
        assert same(out[key].float(), full[key].float())
    assert out['tile_id'] == batch['tile_id']


def test_evaluation_uses_the_center_crop(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root)
    dm.setup('test')
    batch = next(iter(dm.test_dataloader()))
    assert dm.normalizer is not None
    full = dm.normalizer(batch)
    for stage in ('test', 'val', 'predict'):
        out = transfer(dm, batch, stage)
        for key in PIXEL_KEYS:
            assert same(out[key].float(), full[key][..., 4:60, 4:60].float())


def test_values_are_z_scores_not_divided_by_255(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root, modalities=['sentinel2'], batch_size=6)
    dm.setup('fit')
    out = transfer(dm, next(iter(dm.train_dataloader())), 'train')
    s2 = out['image_sentinel2']
    assert s2.dtype == torch.float32
    valid = s2[~s2.isnan()]
    assert -0.3 < valid.mean() < 0.3 and 0.5 < valid.std() < 2


@pytest.mark.parametrize(
    ('subset', 'size'), [('MMEarth', 112), ('MMEarth100k', 112), ('MMEarth64', 56)]
)
def test_default_input_size(mmearth_root: Path, subset: str, size: int) -> None:
    dm = datamodule(
        mmearth_root, subset=subset, modalities=['sentinel2', 'dynamic_world']
    )
    dm.setup('fit')
    out = transfer(dm, next(iter(dm.train_dataloader())), 'train')
    assert out['image_sentinel2'].shape[-2:] == (size, size)
    assert out['mask_dynamic_world'].shape[-2:] == (size, size)


def test_full_tile_input_size_skips_the_crop(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root, input_size=64, modalities=['aster'])
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert dm.normalizer is not None
    assert same(
        transfer(dm, batch, 'train')['image_aster'], dm.normalizer(batch)['image_aster']
    )


def test_input_size_errors(mmearth_root: Path) -> None:
    with pytest.raises(ValueError, match='input_size must be positive'):
        datamodule(mmearth_root, input_size=0)
    dm = datamodule(mmearth_root, input_size=72)
    with pytest.raises(ValueError, match='input_size 72 exceeds the 64 px tiles'):
        dm.setup('fit')


def test_validation_split_choices(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root)
    dm.setup('validate')
    assert len(dm.val_dataloader()) == 1  # 2 tiles, batch size 4
    dm = datamodule(mmearth_root, val_split=None)
    dm.setup('fit')
    assert dm.val_dataloader() == []
    dm = datamodule(
        mmearth_root, train_split='test', val_split='train', test_split='val'
    )
    dm.setup('fit')
    dm.setup('test')
    assert (
        dm.train_dataset is not None
        and dm.val_dataset is not None
        and dm.test_dataset is not None
    )
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (
        2,
        6,
        2,
    )  # type: ignore[arg-type]


def test_workers_send_the_batches_of_the_default_path(mmearth_root: Path) -> None:
    """Packed batches from two workers equal TorchGeo's default loader's, bit for bit."""
    dm = datamodule(mmearth_root, num_workers=2, train_split='train', batch_size=4)
    dm.setup('fit')
    dm.setup('test')
    train = dm.train_dataloader()
    assert isinstance(train, PackedDataLoader)
    assert train.collate_fn is pack_collate and train.drop_last
    assert train.persistent_workers
    assert len(next(iter(train))['tile_id']) == 4
    packed = list(dm.test_dataloader())
    plain = list(DataLoader(dm.test_dataset, batch_size=4))  # type: ignore[arg-type]
    assert len(packed) == len(plain) == 1
    assert list(packed[0]) == list(plain[0])  # key order
    for key, expected in plain[0].items():
        got = packed[0][key]
        if isinstance(expected, Tensor):
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert got.numpy().tobytes() == expected.numpy().tobytes(), key
        else:
            assert got == expected
    assert packed[0]['image_sentinel2'].dtype == torch.uint16


def test_without_workers_the_loader_is_plain(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root, modalities=['sentinel2'])
    dm.setup('fit')
    loader = dm.train_dataloader()
    assert loader.collate_fn is dm.collate_fn
    assert isinstance(next(iter(loader)), dict)


@pytest.mark.parametrize(
    ('pin_memory', 'cuda', 'pinned'),
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_pin_memory(
    mmearth_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    pin_memory: bool,
    cuda: bool,
    pinned: bool,
) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    dm = datamodule(mmearth_root, num_workers=1, pin_memory=pin_memory)
    dm.setup('fit')
    assert dm.train_dataloader().pin_memory is pinned


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_pinned_batches(mmearth_root: Path) -> None:
    dm = datamodule(mmearth_root, num_workers=1)
    dm.setup('fit')
    batch = next(iter(dm.train_dataloader()))
    assert all(v.is_pinned() for v in batch.values() if isinstance(v, Tensor))


class BatchCheck(LightningModule):
    """Records what the training and validation steps receive."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[str] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        assert batch['image_sentinel2'].shape[-2:] == (56, 56)
        assert batch['image_sentinel2'].dtype == torch.float32
        assert batch['mask_esa_worldcover'].dtype == torch.long
        self.seen += batch['tile_id']
        return self.layer(torch.ones(1, 1)).sum()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        assert batch['image_sentinel2'].shape[-2:] == (56, 56)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit(mmearth_root: Path, tmp_path: Path) -> None:
    dm = datamodule(mmearth_root, batch_size=2, num_workers=1, flips=True)
    model = BatchCheck()
    trainer = Trainer(
        accelerator='cpu',
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, dm)
    assert len(model.seen) == 6


class RankRecorder(BatchCheck):
    """Writes the tile ids each rank trained on."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def on_train_epoch_end(self) -> None:
        loader = self.trainer.train_dataloader
        assert loader is not None
        Path(self.directory, f'rank{self.global_rank}.txt').write_text(
            '\n'.join(self.seen)
        )
        names = (type(loader), type(loader.sampler), loader.collate_fn)
        Path(self.directory, f'loader{self.global_rank}.txt').write_text(
            ' '.join(name.__name__ for name in names)
        )


@pytest.mark.slow
def test_distributed_ranks_read_their_own_share(
    mmearth_root: Path, tmp_path: Path
) -> None:
    dm = datamodule(
        mmearth_root,
        batch_size=1,
        num_workers=1,
        modalities=['sentinel2', 'esa_worldcover'],
    )
    model = RankRecorder(str(tmp_path))
    trainer = Trainer(
        accelerator='cpu',
        devices=2,
        strategy=lightning.pytorch.strategies.DDPStrategy(
            start_method='spawn', process_group_backend='gloo'
        ),
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, dm)
    shares = [
        set(Path(tmp_path, f'rank{rank}.txt').read_text().split()) for rank in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 3
    assert not shares[0] & shares[1]
    for rank in (0, 1):  # Lightning kept the packed loader and its sampler
        assert Path(tmp_path, f'loader{rank}.txt').read_text() == (
            'ResumableDataLoader ResumableDistributedSampler pack_collate'
        )


def test_normalizer_takes_the_release(
    mmearth_root: Path, mmearth_v1_root: Path
) -> None:
    batches = []
    for root, kwargs, release in (
        (mmearth_root, {}, 'v001'),
        (mmearth_v1_root, {}, 'v1.0'),
        (mmearth_root, {'version': 'v1.0'}, 'v1.0'),
    ):
        dm = datamodule(root, **kwargs)
        dm.setup('test')
        assert dm.normalizer is not None and dm.normalizer.version == release
        batches.append(transfer(dm, next(iter(dm.test_dataloader())), 'test'))
    # The same tiles with either release's placeholders: the same batches.
    for batch in batches[1:]:
        assert batch['tile_id'] == batches[0]['tile_id']
        for key in (*PIXEL_KEYS, 'era5'):
            assert same(batch[key].float(), batches[0][key].float()), key
