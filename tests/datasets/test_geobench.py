import ast
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from torchgeo.datasets import DatasetNotFoundError

from tests.conftest import load_data_script
from torchgeo_mmearth.datasets import GeoBench
from torchgeo_mmearth.datasets.geobench import BRICK_KILN_FILL
from torchgeo_mmearth.datasets.geobench_metadata import load_metadata
from torchgeo_mmearth.modalities import SENTINEL2_INPUT_BANDS
from torchgeo_mmearth.models import MMEarthWeights
from torchgeo_mmearth.transforms import SO2SAT_FILL

TASKS = (
    'm-bigearthnet',
    'm-so2sat',
    'm-eurosat',
    'm-brick-kiln',
    'm-cashew-plantation',
    'm-SA-crop-type',
)
N = 3  # samples per split

# GEO-Bench band names, written out here independently of the reader.
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
    'B10': '10 - SWIR - Cirrus',
    'B11': '11 - SWIR',
    'B12': '12 - SWIR',
}
# Where each band really is in the published m-eurosat / m-brick-kiln files
# (GEO-Bench README, "Known issues"): band -> stored dataset name.
PUBLISHED_EUROSAT = {**{b: NAME[b] for b in NAME if b not in ('B8A', 'B9', 'B10', 'B11', 'B12')},
    'B9': NAME['B8A'],
    'B10': NAME['B9'],
    'B11': NAME['B10'],
    'B12': NAME['B11'],
    'B8A': NAME['B12'],
}  # fmt: skip
PUBLISHED_BRICK_KILN = {
    'B1': NAME['B1'],
    'B2': NAME['B2'],
    'B3': NAME['B3'],
    'B4': NAME['B4'],
    'B5': NAME['B5'],
    'B7': NAME['B6'],
    'B8A': NAME['B7'],
    'B8': NAME['B8'],
    'B11': NAME['B8A'],
    'B12': NAME['B9'],
}


@pytest.fixture(scope='module')
def data() -> ModuleType:
    return load_data_script('geobench')


@pytest.fixture(scope='module')
def root(data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('geobench')
    for task in TASKS:
        data.write_task(path, task, samples_per_split=N, seed=1)
    return path


@pytest.fixture
def own(data: ModuleType, tmp_path: Path) -> Iterator[Any]:
    """Write tasks into a fresh root that the test may damage."""

    def write(task: str, **kwargs: Any) -> Path:
        return data.write_task(tmp_path, task, samples_per_split=N, **kwargs)  # type: ignore[no-any-return]

    yield write


def folder(root: Path, task: str) -> Path:
    benchmark = 'segmentation_v1.0' if task in TASKS[4:] else 'classification_v1.0'
    name = 'm-cashew-plant' if task == 'm-cashew-plantation' else task
    return root / benchmark / name


def partition(root: Path, task: str, name: str = 'default') -> dict[str, list[str]]:
    content: dict[str, list[str]] = json.loads(
        (folder(root, task) / f'{name}_partition.json').read_text()
    )
    return content


def raw(root: Path, task: str, sample: str, band: str) -> np.ndarray:
    """A stored band read with plain h5py (date suffixes stripped by prefix)."""
    with h5py.File(folder(root, task) / f'{sample}.hdf5', 'r') as f:
        keys = [k for k in f if k == band or k.startswith(f'{band}_20')]
        assert len(keys) == 1, (band, list(f))
        return np.asarray(f[keys[0]])


def pickled(data: ModuleType, root: Path, task: str, sample: str) -> dict[str, Any]:
    """The sample metadata, unpickled with GEO-Bench's class names (trusted here)."""
    with h5py.File(folder(root, task) / f'{sample}.hdf5', 'r') as f:
        text = f.attrs['pickle']
    with data._geobench_modules():
        return pickle.loads(ast.literal_eval(text))  # type: ignore[no-any-return]


def expected_image(
    root: Path, task: str, sample: str, bands: list[str], where: dict[str, str]
) -> np.ndarray:
    return np.stack([raw(root, task, sample, where[b]) for b in bands]).astype(
        np.float32
    )


class TestSamples:
    @pytest.mark.parametrize('task', TASKS)
    @pytest.mark.parametrize('split', ['train', 'val', 'test'])
    def test_shapes_and_types(self, root: Path, task: str, split: str) -> None:
        ds = GeoBench(root, task, split)
        assert len(ds) == N
        sample = ds[N - 1]
        size = {'m-bigearthnet': 24, 'm-cashew-plantation': 32, 'm-SA-crop-type': 32}
        side = size.get(task, 16)
        assert sample['image'].shape == (12, side, side)
        assert sample['image'].dtype == torch.float32
        assert ds.bands == SENTINEL2_INPUT_BANDS
        if task in ('m-cashew-plantation', 'm-SA-crop-type'):
            assert set(sample) == {'image', 'mask'}
            assert sample['mask'].shape == (side, side)
            assert sample['mask'].dtype == torch.int64
        elif task == 'm-bigearthnet':
            assert set(sample) == {'image', 'label'}
            assert sample['label'].shape == (43,)
            assert sample['label'].dtype == torch.int64
        else:
            assert set(sample) == {'image', 'label'}
            assert sample['label'].shape == ()
            assert sample['label'].dtype == torch.int64

    @pytest.mark.parametrize(
        'task', ['m-bigearthnet', 'm-cashew-plantation', 'm-SA-crop-type']
    )
    def test_b8a_before_b8_by_name(self, root: Path, task: str) -> None:
        """GEO-Bench stores B8 then B8A; the MP-MAE order is B8A then B8."""
        ds = GeoBench(root, task, 'test')
        name = partition(root, task)['test'][0]
        image = ds[0]['image'].numpy()
        assert SENTINEL2_INPUT_BANDS[7:9] == ('B8A', 'B8')
        np.testing.assert_array_equal(image[7], raw(root, task, name, NAME['B8A']))
        np.testing.assert_array_equal(image[8], raw(root, task, name, NAME['B8']))
        full = expected_image(root, task, name, list(SENTINEL2_INPUT_BANDS), NAME)
        np.testing.assert_array_equal(image, full)

    def test_any_band_order_and_spelling(self, root: Path) -> None:
        bands = ['B08', 'B8a', '04 - Red', 'S2_B11', 'B1']
        ds = GeoBench(root, 'm-bigearthnet', 'train', bands=bands)
        assert ds.bands == ('B8', 'B8A', 'B4', 'B11', 'B1')
        name = partition(root, 'm-bigearthnet')['train'][1]
        np.testing.assert_array_equal(
            ds[1]['image'].numpy(),
            expected_image(root, 'm-bigearthnet', name, list(ds.bands), NAME),
        )

    def test_eurosat_published_names_are_corrected(self, root: Path) -> None:
        ds = GeoBench(root, 'm-eurosat', 'val')
        assert ds.relabelled
        assert ds.source_bands[8:] == ('B9', 'B10', 'B11', 'B12', 'B8A')
        name = partition(root, 'm-eurosat')['valid'][2]
        image = ds[2]['image'].numpy()
        bands = list(SENTINEL2_INPUT_BANDS)
        np.testing.assert_array_equal(
            image, expected_image(root, 'm-eurosat', name, bands, PUBLISHED_EUROSAT)
        )
        # B8A is the last stored channel, '12 - SWIR' in the published names.
        np.testing.assert_array_equal(
            image[bands.index('B8A')], raw(root, 'm-eurosat', name, '12 - SWIR')
        )
        assert ds.channel_sources[bands.index('B8A')] == '12 - SWIR'

    def test_eurosat_corrected_metadata_read_by_name(self, own: Any) -> None:
        path = own('m-eurosat', published=False)
        ds = GeoBench(path.parents[1], 'm-eurosat', 'train')
        assert not ds.relabelled
        name = partition(path.parents[1], 'm-eurosat')['train'][0]
        np.testing.assert_array_equal(
            ds[0]['image'].numpy(),
            expected_image(
                path.parents[1], 'm-eurosat', name, list(SENTINEL2_INPUT_BANDS), NAME
            ),
        )

    def test_brick_kiln_published(self, root: Path) -> None:
        ds = GeoBench(root, 'm-brick-kiln', 'train')
        assert ds.relabelled
        assert ds.fill == dict(BRICK_KILN_FILL) == {'B6': 'B7', 'B9': 'B8A'}
        name = partition(root, 'm-brick-kiln')['train'][0]
        where = {**PUBLISHED_BRICK_KILN, 'B6': PUBLISHED_BRICK_KILN['B7']}
        where['B9'] = PUBLISHED_BRICK_KILN['B8A']
        np.testing.assert_array_equal(
            ds[0]['image'].numpy(),
            expected_image(
                root, 'm-brick-kiln', name, list(SENTINEL2_INPUT_BANDS), where
            ),
        )
        # The true-colour channels are never read as reflectances.
        assert not {'10 - SWIR - Cirrus', '11 - SWIR', '12 - SWIR'} & set(
            ds.channel_sources
        )

    def test_brick_kiln_without_fill_refuses(self, root: Path) -> None:
        with pytest.raises(ValueError, match=r"lacks \['B6', 'B9'\]") as info:
            GeoBench(root, 'm-brick-kiln', fill={})
        assert 'relabelled by position' in str(info.value)

    def test_brick_kiln_corrected_metadata(self, own: Any) -> None:
        path = own('m-brick-kiln', published=False)
        ds = GeoBench(path.parents[1], 'm-brick-kiln', 'test')
        assert not ds.relabelled
        assert ds.source_bands[10:] == ('Red', 'Green', 'Blue')
        name = partition(path.parents[1], 'm-brick-kiln')['test'][0]
        image = ds[0]['image'].numpy()
        np.testing.assert_array_equal(
            image[list(ds.bands).index('B4')],
            raw(path.parents[1], 'm-brick-kiln', name, NAME['B4']),
        )
        assert 'Red' not in ds.channel_sources

    def test_so2sat_fill(self, root: Path) -> None:
        ds = GeoBench(root, 'm-so2sat', 'test')
        assert ds.fill == dict(SO2SAT_FILL)
        assert ds.channel_bands[0] == 'B2' and ds.channel_bands[9] == 'B8A'
        name = partition(root, 'm-so2sat')['test'][1]
        where = {**NAME, 'B1': NAME['B2'], 'B9': NAME['B8A']}
        image = ds[1]['image'].numpy()
        np.testing.assert_array_equal(
            image,
            expected_image(root, 'm-so2sat', name, list(SENTINEL2_INPUT_BANDS), where),
        )
        assert image.max() < 3  # reflectances, returned as stored
        assert not any('VH' in s or 'VV' in s for s in ds.channel_sources)  # S1

    def test_so2sat_without_fill_refuses(self, root: Path) -> None:
        with pytest.raises(ValueError, match=r"lacks \['B1', 'B9'\]"):
            GeoBench(root, 'm-so2sat', fill={})

    @pytest.mark.parametrize('task', TASKS)
    def test_rgb_weights(self, root: Path, task: str) -> None:
        bands = MMEarthWeights.RGB_MAE.meta['bands']
        ds = GeoBench(root, task, 'train', bands=bands)
        assert ds.bands == ('B2', 'B3', 'B4')
        assert ds.fill == {}
        name = partition(root, task)['train'][2]
        np.testing.assert_array_equal(
            ds[2]['image'].numpy(),
            expected_image(root, task, name, ['B2', 'B3', 'B4'], NAME),
        )


class TestLabels:
    @pytest.mark.parametrize('task', ['m-so2sat', 'm-eurosat', 'm-brick-kiln'])
    def test_multiclass(self, data: ModuleType, root: Path, task: str) -> None:
        ds = GeoBench(root, task, 'train')
        names = partition(root, task)['train']
        for i, name in enumerate(names):
            expected = pickled(data, root, task, name)['label']
            assert isinstance(expected, int)
            assert ds[i]['label'].item() == expected

    def test_multilabel(self, data: ModuleType, root: Path) -> None:
        ds = GeoBench(root, 'm-bigearthnet', 'val')
        for i, name in enumerate(partition(root, 'm-bigearthnet')['valid']):
            expected = pickled(data, root, 'm-bigearthnet', name)['label']
            assert expected.dtype == np.int64 and expected.shape == (43,)
            np.testing.assert_array_equal(ds[i]['label'].numpy(), expected)
            assert ds[i]['label'].sum() >= 1

    @pytest.mark.parametrize('task', ['m-cashew-plantation', 'm-SA-crop-type'])
    def test_mask(self, root: Path, task: str) -> None:
        ds = GeoBench(root, task, 'test')
        for i, name in enumerate(partition(root, task)['test']):
            expected = raw(root, task, name, 'label')
            np.testing.assert_array_equal(ds[i]['mask'].numpy(), expected)

    def test_task_table(self) -> None:
        assert set(GeoBench.tasks) == set(TASKS)
        table = {
            name: (t.task_type, t.num_classes, t.size)
            for name, t in GeoBench.tasks.items()
        }
        assert table == {
            'm-bigearthnet': ('multilabel', 43, 120),
            'm-so2sat': ('multiclass', 17, 32),
            'm-eurosat': ('multiclass', 10, 64),
            'm-brick-kiln': ('multiclass', 2, 64),
            'm-cashew-plantation': ('segmentation', 7, 256),
            'm-SA-crop-type': ('segmentation', 10, 256),
        }
        for t in GeoBench.tasks.values():
            assert len(t.class_names) == t.num_classes


class TestPartitions:
    def test_label_efficiency_partition(self, root: Path) -> None:
        for name in GeoBench.partitions[1:]:
            expected = partition(root, 'm-eurosat', name)
            ds = GeoBench(root, 'm-eurosat', 'train', partition=name)
            assert ds.sample_names == expected['train']
            assert len(ds) == max(1, int(N * float(name.split('x')[0])))
            val = GeoBench(root, 'm-eurosat', 'val', partition=name)
            assert val.sample_names == partition(root, 'm-eurosat')['valid']

    def test_val_is_valid(self, root: Path) -> None:
        names = partition(root, 'm-SA-crop-type')['valid']
        assert GeoBench(root, 'm-SA-crop-type', 'val').sample_names == names
        assert GeoBench(root, 'm-SA-crop-type', 'valid').split == 'val'

    def test_unknown_partition_lists_present(self, root: Path) -> None:
        with pytest.raises(
            ValueError, match=r"Unknown partition '0.3x_train'.*1\.00x_train.*default"
        ):
            GeoBench(root, 'm-eurosat', partition='0.3x_train')

    def test_cashew_folder_names(self, root: Path, tmp_path: Path) -> None:
        assert GeoBench(root, 'm-cashew-plant').task == 'm-cashew-plantation'
        target = tmp_path / 'segmentation_v1.0' / 'm-cashew-plantation'
        shutil.copytree(folder(root, 'm-cashew-plantation'), target)
        assert GeoBench(tmp_path, 'm-cashew-plantation').directory == target


class TestStatistics:
    def test_stats_of_the_stored_band(self, root: Path) -> None:
        stats = json.loads((folder(root, 'm-eurosat') / 'band_stats.json').read_text())
        ds = GeoBench(root, 'm-eurosat', bands=['B8A', 'B2', 'B12'])
        means, stds = ds.normalization_stats()
        keys = [PUBLISHED_EUROSAT[b] for b in ('B8A', 'B2', 'B12')]
        assert means == [stats[k]['mean'] for k in keys]
        assert stds == [stats[k]['std'] for k in keys]
        assert ds.stats_scale == 1.0

    def test_so2sat_statistics_in_digital_numbers(self, root: Path) -> None:
        stats = json.loads((folder(root, 'm-so2sat') / 'band_stats.json').read_text())
        assert stats[NAME['B2']]['mean'] > 100  # written x 10 000, as published
        ds = GeoBench(root, 'm-so2sat')
        assert ds.stats_scale == 1e-4
        means, stds = ds.normalization_stats()
        assert means[0] == pytest.approx(stats[NAME['B2']]['mean'] / 10_000)
        assert stds[3] == pytest.approx(stats[NAME['B4']]['std'] / 10_000)
        # In pixel units: the statistics describe the reflectances of the file.
        pixels = torch.stack([ds[i]['image'] for i in range(len(ds))])
        assert pixels[:, 3].mean().item() == pytest.approx(means[3], rel=0.05)

    def test_so2sat_statistics_in_reflectance(self, own: Any) -> None:
        path = own('m-so2sat', so2sat_stats_scale=1.0)
        stats = json.loads((path / 'band_stats.json').read_text())
        ds = GeoBench(path.parents[1], 'm-so2sat')
        assert ds.stats_scale == 1.0
        assert ds.normalization_stats()[0][2] == stats[NAME['B3']]['mean']

    def test_missing_band_stats(self, own: Any) -> None:
        path = own('m-eurosat')
        (path / 'band_stats.json').unlink()
        ds = GeoBench(path.parents[1], 'm-eurosat')
        ds[0]  # reading does not need the statistics
        with pytest.raises(DatasetNotFoundError, match=r'band_stats\.json'):
            ds.normalization_stats()

    def test_band_missing_from_stats(self, own: Any) -> None:
        path = own('m-eurosat')
        stats = json.loads((path / 'band_stats.json').read_text())
        del stats[NAME['B3']]
        (path / 'band_stats.json').write_text(json.dumps(stats))
        with pytest.raises(ValueError, match="no mean and std for '03 - Green'"):
            GeoBench(path.parents[1], 'm-eurosat').normalization_stats()


class TestErrors:
    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match='geobench-download') as info:
            GeoBench(tmp_path, 'm-eurosat')
        assert 'classification_v1.0/m-eurosat' in str(info.value)

    def test_root_from_environment(
        self, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv('GEO_BENCH_DIR', str(root))
        assert GeoBench(task='m-eurosat').root == str(root)
        monkeypatch.delenv('GEO_BENCH_DIR')
        monkeypatch.chdir(tmp_path)
        with pytest.raises(DatasetNotFoundError, match='data/geobench'):
            GeoBench(task='m-eurosat')

    def test_unknown_task(self, root: Path) -> None:
        with pytest.raises(ValueError, match="Unknown task 'm-forestnet'") as info:
            GeoBench(root, 'm-forestnet')
        for task in TASKS:
            assert task in str(info.value)

    def test_unknown_split(self, root: Path) -> None:
        with pytest.raises(ValueError, match="Unknown split 'validation'"):
            GeoBench(root, 'm-eurosat', 'validation')

    def test_band_the_task_lacks(self, root: Path) -> None:
        with pytest.raises(ValueError, match=r"lacks \['B10'\]") as info:
            GeoBench(root, 'm-bigearthnet', bands=['B2', 'B10'])
        assert "'08A - Vegetation Red Edge'" in str(info.value)  # what the files hold

    def test_not_a_band(self, root: Path) -> None:
        with pytest.raises(ValueError, match="bands: 'VV' is not a Sentinel-2"):
            GeoBench(root, 'm-so2sat', bands=['VV'])
        with pytest.raises(TypeError, match='sequence of band names'):
            GeoBench(root, 'm-so2sat', bands='B2')

    def test_missing_partition_file(self, own: Any) -> None:
        path = own('m-eurosat')
        for file in path.glob('*_partition.json'):
            file.unlink()
        with pytest.raises(
            DatasetNotFoundError, match=r'no <partition>_partition\.json'
        ):
            GeoBench(path.parents[1], 'm-eurosat')

    def test_malformed_partition(self, own: Any) -> None:
        path = own('m-eurosat')
        (path / 'default_partition.json').write_text('{"train": 3}')
        with pytest.raises(ValueError, match="must map 'train' to a list"):
            GeoBench(path.parents[1], 'm-eurosat')
        (path / 'default_partition.json').write_text('{"train": [')
        with pytest.raises(
            ValueError, match=r'default_partition\.json is not valid JSON'
        ):
            GeoBench(path.parents[1], 'm-eurosat')

    def test_missing_sample_file(self, own: Any) -> None:
        path = own('m-so2sat')
        name = partition(path.parents[1], 'm-so2sat')['test'][1]
        (path / f'{name}.hdf5').unlink()
        with pytest.raises(DatasetNotFoundError, match=f'{name}.hdf5'):
            GeoBench(path.parents[1], 'm-so2sat', 'test')
        GeoBench(path.parents[1], 'm-so2sat', 'train')  # other splits are complete

    def test_corrupt_sample_file(self, own: Any) -> None:
        path = own('m-eurosat')
        name = partition(path.parents[1], 'm-eurosat')['train'][1]
        file = path / f'{name}.hdf5'
        file.write_bytes(file.read_bytes()[:300])
        ds = GeoBench(path.parents[1], 'm-eurosat', 'train')
        with pytest.raises(OSError, match=f'{name}.hdf5 is not a readable GEO-Bench'):
            ds[1]

    def test_band_missing_from_one_file(self, own: Any) -> None:
        path = own('m-cashew-plantation')
        name = partition(path.parents[1], 'm-cashew-plantation')['valid'][0]
        with h5py.File(path / f'{name}.hdf5', 'a') as f:
            key = next(k for k in f if k.startswith(NAME['B8A']))
            del f[key]
        ds = GeoBench(path.parents[1], 'm-cashew-plantation', 'val')
        with pytest.raises(
            ValueError, match=f"{name}.hdf5 has no band '08A - Vege"
        ) as info:
            ds[0]
        assert "['B8A']" in str(info.value) and "'Cloud Probability'" in str(info.value)

    @pytest.mark.parametrize('label', [17, -1, 2.5])
    def test_invalid_label(self, own: Any, data: ModuleType, label: Any) -> None:
        path = own('m-so2sat')
        name = partition(path.parents[1], 'm-so2sat')['train'][0]
        with h5py.File(path / f'{name}.hdf5', 'a') as f:
            attrs = pickled(data, path.parents[1], 'm-so2sat', name)
            attrs['label'] = label
            with data._geobench_modules():
                f.attrs['pickle'] = str(pickle.dumps(attrs, protocol=4))
        ds = GeoBench(path.parents[1], 'm-so2sat')
        with pytest.raises(
            ValueError, match=f'{name}.hdf5: label .* not a class index'
        ):
            ds[0]

    def test_mask_out_of_range(self, own: Any) -> None:
        path = own('m-SA-crop-type')
        name = partition(path.parents[1], 'm-SA-crop-type')['train'][0]
        with h5py.File(path / f'{name}.hdf5', 'a') as f:
            f['label'][0, 0] = 10
        with pytest.raises(ValueError, match=r'mask values span \[\d+, 10\]'):
            GeoBench(path.parents[1], 'm-SA-crop-type')[0]

    def test_code_in_sample_metadata_is_refused(self, own: Any, tmp_path: Path) -> None:
        path = own('m-eurosat')
        name = partition(path.parents[1], 'm-eurosat')['train'][2]
        marker = tmp_path / 'executed'

        class Exploit:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, (f'touch {marker}',))

        with h5py.File(path / f'{name}.hdf5', 'a') as f:
            f.attrs['pickle'] = str(pickle.dumps({'label': Exploit()}))
        ds = GeoBench(path.parents[1], 'm-eurosat')
        with pytest.raises(
            OSError,
            match=f'{name}.hdf5: unreadable sample metadata.*refusing to unpickle',
        ):
            ds[2]
        assert not marker.exists()

    def test_task_specs_pickle_is_never_loaded(self, own: Any, tmp_path: Path) -> None:
        path = own('m-bigearthnet')
        marker = tmp_path / 'executed'

        class Exploit:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, (f'touch {marker}',))

        (path / 'task_specs.pkl').write_bytes(pickle.dumps(Exploit()))
        ds = GeoBench(path.parents[1], 'm-bigearthnet')
        ds[0]
        ds.normalization_stats()
        assert not marker.exists()

    def test_load_metadata_rejects_non_bytes(self) -> None:
        with pytest.raises(pickle.UnpicklingError, match='not bytes'):
            load_metadata("'text'")
        with pytest.raises(pickle.UnpicklingError, match='not a bytes literal'):
            load_metadata('os.system("x")')


class TestMultiTemporal:
    def test_earliest_date(self, own: Any) -> None:
        path = own('m-cashew-plantation')
        name = partition(path.parents[1], 'm-cashew-plantation')['train'][0]
        with h5py.File(path / f'{name}.hdf5', 'a') as f:
            key = next(k for k in f if k.startswith(NAME['B2']))
            f[f'{NAME["B2"]}_2000-01-01'] = np.full(f[key].shape, 7, np.float32)
            f[f'{NAME["B2"]}_2099-01-01'] = np.full(f[key].shape, 9, np.float32)
        image = GeoBench(path.parents[1], 'm-cashew-plantation')[0]['image']
        assert (image[1] == 7).all()


class TestUsage:
    def test_transforms(self, root: Path) -> None:
        def double(sample: dict[str, Any]) -> dict[str, Any]:
            return {**sample, 'image': sample['image'] * 2}

        plain = GeoBench(root, 'm-eurosat')[0]['image']
        doubled = GeoBench(root, 'm-eurosat', transforms=double)[0]['image']
        torch.testing.assert_close(doubled, plain * 2)

    def test_dataloader_two_workers(self, root: Path) -> None:
        ds = GeoBench(root, 'm-bigearthnet', 'train')
        loader = DataLoader(ds, batch_size=2, num_workers=2)
        batches = list(loader)
        images = torch.cat([b['image'] for b in batches])
        labels = torch.cat([b['label'] for b in batches])
        torch.testing.assert_close(
            images, torch.stack([ds[i]['image'] for i in range(N)])
        )
        torch.testing.assert_close(
            labels, torch.stack([ds[i]['label'] for i in range(N)])
        )

    @pytest.mark.parametrize('task', ['m-bigearthnet', 'm-eurosat', 'm-SA-crop-type'])
    def test_plot(self, root: Path, task: str) -> None:
        ds = GeoBench(root, task, 'test')
        sample = ds[0]
        fig = ds.plot(sample, suptitle='test')
        assert isinstance(fig, Figure)
        plt.close(fig)
        if 'mask' in sample:
            sample['prediction'] = sample['mask'].clone()
            fig = ds.plot(sample, show_titles=False)
            assert len(fig.axes) == 3
        else:
            sample['prediction'] = sample['label'].clone()
            fig = ds.plot(sample)
            assert 'prediction' in fig.axes[0].get_xlabel()
        plt.close(fig)

    def test_plot_without_rgb(self, root: Path) -> None:
        ds = GeoBench(root, 'm-so2sat', bands=['B11'])
        fig = ds.plot(ds[0])
        assert fig.axes[0].get_title() == 'B11'
        plt.close(fig)
