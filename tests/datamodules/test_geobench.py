import json
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer

from tests.conftest import load_data_script
from torchgeo_mmearth._compat import ClassificationTask, SemanticSegmentationTask
from torchgeo_mmearth.datamodules import GeoBenchDataModule
from torchgeo_mmearth.modalities import SENTINEL2_INPUT_BANDS
from torchgeo_mmearth.models import MMEarthWeights

N = 3
NAME = {
    'B1': '01 - Coastal aerosol',
    'B2': '02 - Blue',
    'B3': '03 - Green',
    'B4': '04 - Red',
    'B5': '05 - Vegetation Red Edge',
    'B6': '06 - Vegetation Red Edge',
    'B7': '07 - Vegetation Red Edge',
    'B8': '08 - NIR',
    'B8A': '08A - Vegetation Red Edge',
    'B9': '09 - Water vapour',
    'B11': '11 - SWIR',
    'B12': '12 - SWIR',
}
# The published m-eurosat file holds B8A under '12 - SWIR', B9 under
# '08A - Vegetation Red Edge', B11 under '10 - SWIR - Cirrus', B12 under '11 - SWIR'.
EUROSAT = {
    **NAME,
    'B8A': '12 - SWIR',
    'B9': '08A - Vegetation Red Edge',
    'B11': '10 - SWIR - Cirrus',
    'B12': '11 - SWIR',
}


@pytest.fixture(scope='module')
def data() -> ModuleType:
    return load_data_script('geobench')


@pytest.fixture(scope='module')
def root(data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('geobench')
    for task in data.TASKS:
        data.write_task(path, task, samples_per_split=N, seed=2)
    return path


def stats(folder: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads((folder / 'band_stats.json').read_text())
    return content


def stage(dm: GeoBenchDataModule, name: str) -> None:
    """Pretend a Trainer is in *name* so on_after_batch_transfer picks its aug."""
    flags = dict.fromkeys(
        ('training', 'validating', 'sanity_checking', 'testing', 'predicting'), False
    )
    flags[name] = True
    dm.trainer = SimpleNamespace(**flags)  # type: ignore[assignment]


def raw(folder: Path, sample: str, band: str) -> np.ndarray:
    with h5py.File(folder / f'{sample}.hdf5', 'r') as f:
        key = next(k for k in f if k == band or k.startswith(f'{band}_20'))
        return np.asarray(f[key], dtype=np.float64)


def names(folder: Path, split: str, partition: str = 'default') -> list[str]:
    content: list[str] = json.loads(
        (folder / f'{partition}_partition.json').read_text()
    )[split]
    return content


class TestNormalisation:
    def test_z_scores_by_hand(self, root: Path) -> None:
        folder = root / 'classification_v1.0' / 'm-eurosat'
        dm = GeoBenchDataModule('m-eurosat', root=str(root), batch_size=N)
        dm.setup('fit')
        batch = next(iter(dm.val_dataloader()))
        stage(dm, 'validating')
        out = dm.on_after_batch_transfer(batch, 0)
        table = stats(folder)
        for i, name in enumerate(names(folder, 'valid')):
            for c, band in enumerate(SENTINEL2_INPUT_BANDS):
                key = EUROSAT[band]
                z = (raw(folder, name, key) - table[key]['mean']) / table[key]['std']
                np.testing.assert_allclose(
                    out['image'][i, c].numpy(), z, rtol=1e-5, atol=1e-5
                )
        assert out['image'].dtype == torch.float32
        torch.testing.assert_close(out['label'], batch['label'])

    def test_no_division_by_255(self, root: Path) -> None:
        dm = GeoBenchDataModule('m-bigearthnet', root=str(root), batch_size=N)
        dm.setup('fit')
        stage(dm, 'training')
        batch = next(iter(dm.train_dataloader()))
        out = dm.on_after_batch_transfer(batch, 0)
        # Digital numbers of about 1000-3000 become z-scores of order 1, not /255.
        assert batch['image'].mean() > 500
        assert out['image'].abs().mean() < 3
        assert out['image'].mean().abs() < 1
        assert dm.train_aug is None and dm.aug is not None

    @pytest.mark.parametrize('scale', [10_000.0, 1.0])
    def test_so2sat(self, data: ModuleType, tmp_path: Path, scale: float) -> None:
        folder = data.write_task(
            tmp_path, 'm-so2sat', samples_per_split=N, so2sat_stats_scale=scale
        )
        dm = GeoBenchDataModule('m-so2sat', root=str(tmp_path), batch_size=N)
        dm.setup('test')
        stage(dm, 'testing')
        batch = next(iter(dm.test_dataloader()))
        out = dm.on_after_batch_transfer(batch, 0)
        table = stats(folder)
        # m-so2sat pixels are reflectances; with statistics in digital numbers
        # the z-score is that of the digital numbers (pixels x 10 000).
        source = {**NAME, 'B1': NAME['B2'], 'B9': NAME['B8A']}
        for i, name in enumerate(names(folder, 'test')):
            for c, band in enumerate(SENTINEL2_INPUT_BANDS):
                key = source[band]
                x = raw(folder, name, key) * (10_000 if scale != 1 else 1)
                z = (x - table[key]['mean']) / table[key]['std']
                np.testing.assert_allclose(
                    out['image'][i, c].numpy(), z, rtol=1e-4, atol=1e-4
                )
        assert out['image'].abs().mean() < 3

    def test_segmentation_mask_exact(self, root: Path) -> None:
        folder = root / 'segmentation_v1.0' / 'm-cashew-plant'
        dm = GeoBenchDataModule('m-cashew-plantation', root=str(root), batch_size=2)
        dm.setup('fit')
        stage(dm, 'training')
        batch = next(iter(dm.train_dataloader()))
        out = dm.on_after_batch_transfer(batch, 0)
        assert out['mask'].dtype == torch.int64
        torch.testing.assert_close(out['mask'], batch['mask'])
        train = names(folder, 'train')
        masks = {tuple(raw(folder, n, 'label').ravel()): n for n in train}
        for mask in out['mask']:
            assert tuple(mask.numpy().astype(np.float64).ravel()) in masks
        assert out['image'].shape == (2, 12, 32, 32)  # native size, no crop


class TestBands:
    def test_weights_by_name(self, root: Path) -> None:
        dm = GeoBenchDataModule(
            'm-bigearthnet', root=str(root), weights='MMEarthWeights.S2_MP_MAE'
        )
        assert dm.kwargs['bands'] == list(MMEarthWeights.S2_MP_MAE.meta['bands'])
        dm.setup('fit')
        assert dm.train_dataset.bands == SENTINEL2_INPUT_BANDS  # type: ignore[union-attr]

    def test_rgb_weights(self, root: Path) -> None:
        folder = root / 'classification_v1.0' / 'm-brick-kiln'
        dm = GeoBenchDataModule(
            'm-brick-kiln', root=str(root), weights=MMEarthWeights.RGB_MAE, batch_size=N
        )
        dm.setup('test')
        stage(dm, 'testing')
        out = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
        assert out['image'].shape == (N, 3, 16, 16)
        table = stats(folder)
        for c, band in enumerate(('B2', 'B3', 'B4')):
            key = NAME[band]
            z = (raw(folder, names(folder, 'test')[0], key) - table[key]['mean']) / (
                table[key]['std']
            )
            np.testing.assert_allclose(
                out['image'][0, c].numpy(), z, rtol=1e-5, atol=1e-5
            )

    def test_bands_must_match_weights(self) -> None:
        GeoBenchDataModule(
            bands=['B02', 'B03', 'B04'], weights=MMEarthWeights.RGB_MAE
        )  # same bands, other spelling
        with pytest.raises(ValueError, match='differ from the bands of'):
            GeoBenchDataModule(bands=['B4', 'B3', 'B2'], weights=MMEarthWeights.RGB_MAE)

    def test_unknown_weights(self) -> None:
        with pytest.raises(
            ValueError, match=re.escape("weights='Nope.X' is not a WeightsEnum")
        ):
            GeoBenchDataModule(weights='Nope.X')

    def test_explicit_bands_and_fill(self, root: Path) -> None:
        dm = GeoBenchDataModule(
            'm-so2sat', root=str(root), bands=['B2', 'B9'], fill={'B9': 'B12'}
        )
        dm.setup('fit')
        assert dm.train_dataset.channel_bands == ('B2', 'B12')  # type: ignore[union-attr]


class TestDataModule:
    @pytest.mark.parametrize(
        ('task', 'num_classes', 'task_type'),
        [
            ('m-bigearthnet', 43, 'multilabel'),
            ('m-so2sat', 17, 'multiclass'),
            ('m-eurosat', 10, 'multiclass'),
            ('m-brick-kiln', 2, 'multiclass'),
            ('m-cashew-plantation', 7, 'segmentation'),
            ('m-cashew-plant', 7, 'segmentation'),
            ('m-SA-crop-type', 10, 'segmentation'),
        ],
    )
    def test_properties_without_data(
        self, task: str, num_classes: int, task_type: str
    ) -> None:
        dm = GeoBenchDataModule(task, root='/nonexistent')
        assert dm.num_classes == num_classes
        assert dm.task_type == task_type

    def test_unknown_task(self) -> None:
        with pytest.raises(ValueError, match="Unknown task 'm-pv4ger'"):
            GeoBenchDataModule('m-pv4ger')

    def test_whole_test_split(self, root: Path) -> None:
        dm = GeoBenchDataModule('m-SA-crop-type', root=str(root), batch_size=2)
        dm.setup('test')
        seen = sum(len(b['mask']) for b in dm.test_dataloader())
        assert seen == N == len(dm.test_dataset)  # type: ignore[arg-type]

    def test_partition(self, root: Path) -> None:
        folder = root / 'classification_v1.0' / 'm-eurosat'
        dm = GeoBenchDataModule('m-eurosat', root=str(root), partition='0.50x_train')
        dm.setup('fit')
        assert dm.train_dataset.sample_names == names(  # type: ignore[union-attr]
            folder, 'train', '0.50x_train'
        )
        assert dm.val_dataset.sample_names == names(folder, 'valid')  # type: ignore[union-attr]

    def test_predict_uses_test_split(self, root: Path) -> None:
        dm = GeoBenchDataModule('m-eurosat', root=str(root))
        dm.setup('predict')
        folder = root / 'classification_v1.0' / 'm-eurosat'
        assert dm.predict_dataset.sample_names == names(folder, 'test')  # type: ignore[union-attr]

    def test_yaml_arguments(self, root: Path) -> None:
        parser = ArgumentParser()
        parser.add_class_arguments(GeoBenchDataModule, 'data')
        config = parser.parse_args(
            [
                '--data.task=m-so2sat',
                f'--data.root={root}',
                '--data.weights=MMEarthWeights.RGB_MAE',
                '--data.partition=0.01x_train',
                '--data.fill={"B1": "B2"}',
                '--data.batch_size=2',
            ]
        )
        dm = parser.instantiate(config).data
        assert isinstance(dm, GeoBenchDataModule)
        assert dm.kwargs['bands'] == ['B2', 'B3', 'B4']
        assert dm.kwargs['partition'] == '0.01x_train'
        assert dm.kwargs['fill'] == {'B1': 'B2'}
        config = parser.parse_args(['--data.bands=[B8A, B8]', f'--data.root={root}'])
        dm = parser.instantiate(config).data
        assert dm.kwargs['bands'] == ['B8A', 'B8']


class TestWithTorchGeoTasks:
    """One step of TorchGeo's own tasks through the datamodule (synthetic data)."""

    def test_multilabel_classification(self, root: Path) -> None:
        dm = GeoBenchDataModule('m-bigearthnet', root=str(root), batch_size=2)
        task = ClassificationTask(
            model='resnet18',
            in_channels=12,
            num_classes=dm.num_classes,
            num_labels=dm.num_classes,
            task=dm.task_type,
            loss='bce',
        )
        trainer = Trainer(
            fast_dev_run=True,
            accelerator='cpu',
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, dm)
        assert dm.aug is not None and trainer.state.finished

    def test_segmentation(self, root: Path) -> None:
        dm = GeoBenchDataModule('m-SA-crop-type', root=str(root), batch_size=2)
        task = SemanticSegmentationTask(
            model='unet',
            backbone='resnet18',
            weights=None,
            in_channels=12,
            num_classes=dm.num_classes,
        )
        trainer = Trainer(
            fast_dev_run=True,
            accelerator='cpu',
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, dm)
        metrics = trainer.test(task, dm, verbose=False)[0]
        assert 'test_loss' in metrics and np.isfinite(metrics['test_loss'])
