import json
import math
import pickle
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from torchgeo.datasets import DatasetNotFoundError

from tests.conftest import figure_panels
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.datasets.utils import percentile_stretch
from torchgeo_mmearth.modalities import (
    IGNORE_INDEX,
    MODALITIES,
    PRETEXT_MODALITIES,
    Kind,
    Level,
)
from torchgeo_mmearth.transforms import MMEarthNormalize

SUBSETS = {'MMEarth': 128, 'MMEarth64': 64, 'MMEarth100k': 128}
ALL_MODALITIES = list(MODALITIES)


def folder_name(root: Path, subset: str) -> str:
    """The subset's folder under *root*: its v001 name, else its v1.0 name."""
    stem = MMEarth.subsets[subset]
    return stem if (root / stem).is_dir() else stem.replace('v001', 'v1.0')


def h5_path(root: Path, subset: str) -> Path:
    stem = folder_name(root, subset)
    return root / stem / f'{stem}.h5'


def raw(root: Path, subset: str, name: str, row: int) -> np.ndarray:
    """A tile read with plain h5py, independently of the reader under test."""
    with h5py.File(h5_path(root, subset), 'r') as f:
        return np.asarray(f[name][row])


def band_stats(root: Path, subset: str) -> dict[str, Any]:
    stem = folder_name(root, subset)
    return json.loads((root / stem / f'{stem}_band_stats.json').read_text())


def normalizer(ds: MMEarth) -> MMEarthNormalize:
    """The normalisation that makes the dataset's raw samples model-ready."""
    return MMEarthNormalize(ds.band_stats, ds.modality_bands, version=ds.version)


def copy_subset(root: Path, subset: str, destination: Path) -> Path:
    stem = folder_name(root, subset)
    shutil.copytree(root / stem, destination / stem)
    return destination / stem


@pytest.mark.parametrize('subset', list(SUBSETS))
class TestSubsets:
    def test_default_sample(self, mmearth_root: Path, subset: str) -> None:
        ds = MMEarth(mmearth_root, subset=subset)
        size = SUBSETS[subset]
        sample = ds[0]
        normalized = normalizer(ds)(sample)
        assert (
            set(sample)
            == set(normalized)
            == {
                *(MODALITIES[name].key for name in PRETEXT_MODALITIES),
                's2_type',
                'tile_id',
            }
        )
        for key, channels in (
            ('image_sentinel2', 12),
            ('image_sentinel1', 8),
            ('image_aster', 2),
            ('image_canopy_height_eth', 2),
        ):
            assert sample[key].shape == normalized[key].shape == (channels, size, size)
            assert normalized[key].dtype == torch.float32
        for key in ('mask_dynamic_world', 'mask_esa_worldcover'):
            assert sample[key].shape == normalized[key].shape == (1, size, size)
            assert sample[key].dtype == torch.uint8  # the stored class codes
            assert normalized[key].dtype == torch.long  # class indices
        assert sample['era5'].shape == (12,)
        for key in ('lat', 'lon', 'month'):
            assert sample[key].shape == (2,)
            assert sample[key].dtype == normalized[key].dtype == torch.float32
        for key in ('biome', 'eco_region'):
            assert sample[key].shape == ()
            assert sample[key].dtype == normalized[key].dtype == torch.long
        assert isinstance(sample['tile_id'], str)
        assert ds.tile_size == size

    def test_splits(self, mmearth_root: Path, subset: str) -> None:
        lengths = {
            split: len(MMEarth(mmearth_root, subset, split)) for split in MMEarth.splits
        }
        assert lengths == {'train': 6, 'val': 2, 'test': 2}
        datasets = {
            split: MMEarth(mmearth_root, subset, split, modalities=['lat'])
            for split in lengths
        }
        ids = {
            split: {ds[i]['tile_id'] for i in range(len(ds))}
            for split, ds in datasets.items()
        }
        assert not ids['train'] & ids['val'] and not ids['train'] & ids['test']

    def test_raw_dtypes(self, mmearth_root: Path, subset: str) -> None:
        ds = MMEarth(mmearth_root, subset, modalities=ALL_MODALITIES)
        sample = ds[1]
        assert sample['image_sentinel2'].dtype == torch.uint16
        assert sample['image_sentinel2'].shape[0] == 12
        assert sample['image_aster'].dtype == torch.int16
        assert sample['image_canopy_height_eth'].dtype == torch.int8
        assert sample['mask_dynamic_world'].dtype == torch.uint8
        assert sample['mask_sentinel2_cloudmask'].dtype == torch.uint16
        assert sample['image_sentinel1'].dtype == torch.float32
        row = int(ds.indices[1])
        for name in (
            'sentinel1',
            'aster',
            'canopy_height_eth',
            'dynamic_world',
            'era5',
        ):
            expected = raw(mmearth_root, subset, name, row)
            np.testing.assert_array_equal(
                sample[MODALITIES[name].key].numpy(), expected
            )

    def test_direct_reads_match_h5py(self, mmearth_root: Path, subset: str) -> None:
        ds = MMEarth(mmearth_root, subset, modalities=ALL_MODALITIES)
        with h5py.File(h5_path(mmearth_root, subset), 'r') as f:
            for name in [*ALL_MODALITIES, 'metadata']:
                reader = ds._reader(name)
                assert reader.direct
                for row in range(ds.num_tiles):
                    assert reader(row).tobytes() == np.asarray(f[name][row]).tobytes()


class TestNoData:
    """Every no-data rule of both releases of the data, checked against raw values."""

    subset = 'MMEarth64'

    @pytest.fixture(params=['v001', 'v1.0'])
    def root(
        self, request: pytest.FixtureRequest, mmearth_root: Path, mmearth_v1_root: Path
    ) -> Path:
        """The MMEarth64 test corpus of each release."""
        return mmearth_root if request.param == 'v001' else mmearth_v1_root

    def test_release_is_detected_from_the_name(self, root: Path) -> None:
        ds = MMEarth(root, self.subset)
        expected = 'v001' if ds.directory.name == 'data_1M_v001_64' else 'v1.0'
        assert ds.directory.name == f'data_1M_{expected}_64'
        assert ds.version == expected

    def samples(
        self, root: Path, normalize: bool = True
    ) -> list[tuple[dict[str, Any], int]]:
        """Every tile of every split, with its row in the HDF5 file.

        The samples are those of the dataset (raw) passed through MMEarthNormalize
        unless *normalize* is False.
        """
        samples = []
        for split in MMEarth.splits:
            ds = MMEarth(root, self.subset, split, modalities=ALL_MODALITIES)
            transform = normalizer(ds) if normalize else None
            for index, row in enumerate(ds.indices):
                sample = ds[index]
                if transform is not None:
                    sample = transform(sample)
                samples.append((sample, int(row)))
        assert sorted(row for _, row in samples) == list(range(10))
        return samples

    def test_sentinel2_zero_is_nodata_before_normalisation(self, root: Path) -> None:
        stats = band_stats(root, self.subset)
        seen_nodata = False
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'sentinel2', row)
            stored = stored[[i for i in range(13) if i != 10]].astype(np.float64)
            level = 'l2a' if sample['s2_type'] == 1 else 'l1c'
            mean = np.delete(np.array(stats[f'sentinel2_{level}']['mean']), 10)
            std = np.delete(np.array(stats[f'sentinel2_{level}']['std']), 10)
            expected = np.where(
                stored == 0, np.nan, (stored - mean[:, None, None]) / std[:, None, None]
            )
            np.testing.assert_allclose(
                sample['image_sentinel2'].numpy(), expected, rtol=1e-5, atol=1e-5
            )
            seen_nodata |= bool((stored == 0).any())
        assert seen_nodata

    def test_sentinel2_l1c_and_l2a_statistics(self, root: Path) -> None:
        samples = self.samples(root, normalize=False)
        assert {int(sample['s2_type']) for sample, _ in samples} == {0, 1}
        with h5py.File(h5_path(root, self.subset)) as f:
            levels = [m[1].decode() for m in f['metadata'][:]]
        for sample, row in samples:
            assert sample['s2_type'] == ('l1c', 'l2a').index(levels[row])

    def test_l2a_b10_is_nodata(self, root: Path) -> None:
        bands = {'sentinel2': list(MODALITIES['sentinel2'].bands)}
        ds = MMEarth(root, self.subset, modalities=['sentinel2'], modality_bands=bands)
        normalize = normalizer(ds)
        for index in range(len(ds)):
            sample = normalize(ds[index])
            b10 = sample['image_sentinel2'][10]
            assert b10.isnan().all() == (sample['s2_type'] == 1)

    def test_sentinel1_missing_orbits(self, root: Path) -> None:
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'sentinel1', row)
            got = sample['image_sentinel1']
            assert torch.equal(got.isnan(), torch.from_numpy(~np.isfinite(stored)))

    def test_aster_clamped_placeholder(self, root: Path) -> None:
        found = False
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'aster', row)
            got = sample['image_aster']
            assert torch.equal(got.isnan(), torch.from_numpy(stored == -32768))
            found |= bool((stored == -32768).any())
        assert found

    def test_canopy_height_int8_placeholders(self, root: Path) -> None:
        clamped = wrapped = False
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'canopy_height_eth', row)
            got = sample['image_canopy_height_eth']
            nodata = (stored == 127) | (stored < 0)
            assert torch.equal(got.isnan(), torch.from_numpy(nodata))
            clamped |= bool((stored == 127).all())
            wrapped |= bool((stored == -1).any())
        assert clamped and wrapped

    def test_dynamic_world(self, root: Path) -> None:
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'dynamic_world', row).astype(np.int64)
            expected = np.where((stored >= 1) & (stored <= 9), stored - 1, -1)
            np.testing.assert_array_equal(
                sample['mask_dynamic_world'].numpy(), expected
            )

    def test_esa_worldcover_keeps_tree_cover(self, root: Path) -> None:
        codes = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
        # The release's placeholder: 255 in v001, 0 in v1.0.
        placeholder = {'v001': 255, 'v1.0': 0}[MMEarth(root, self.subset).version]
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'esa_worldcover', row)
            got = sample['mask_esa_worldcover'].numpy()
            expected = np.full(stored.shape, -1)
            for cls, code in enumerate(codes):
                expected[stored == code] = cls
            np.testing.assert_array_equal(got, expected)
            assert (got[stored == 10] == 0).all() and (got == 0).any()  # tree cover
            assert (stored[..., -1] == placeholder).all()
            assert (got[stored == 0] == -1).all() and (got[stored == 255] == -1).all()

    def test_sentinel2_masks(self, root: Path) -> None:
        for sample, row in self.samples(root):
            qa60 = raw(root, self.subset, 'sentinel2_cloudmask', row)
            expected = np.select([qa60 == 0, qa60 == 1024, qa60 == 2048], [0, 1, 2], -1)
            np.testing.assert_array_equal(
                sample['mask_sentinel2_cloudmask'].numpy(), expected
            )
            scl = raw(root, self.subset, 'sentinel2_scl', row)
            np.testing.assert_array_equal(
                sample['mask_sentinel2_scl'].numpy(),
                np.where(scl == 255, -1, scl.astype(np.int64)),
            )
            prob = raw(root, self.subset, 'sentinel2_cloudprod', row)
            assert torch.equal(
                sample['image_sentinel2_cloudprod'].isnan(),
                torch.from_numpy(prob == 65535),
            )

    def test_era5_nodata(self, root: Path) -> None:
        stats = band_stats(root, self.subset)['era5']
        # The release's placeholder: +inf in v001, NaN in v1.0.
        placeholder = {'v001': np.isposinf, 'v1.0': np.isnan}[
            MMEarth(root, self.subset).version
        ]
        missing = 0
        for sample, row in self.samples(root):
            stored = raw(root, self.subset, 'era5', row).astype(np.float64)
            zscores = (stored - np.array(stats['mean'])) / np.array(stats['std'])
            expected = np.where(np.isfinite(stored), zscores, np.nan)
            np.testing.assert_allclose(
                sample['era5'].numpy(), expected, rtol=1e-5, atol=1e-5
            )
            assert (placeholder(stored) == ~np.isfinite(stored)).all()
            missing += int(placeholder(stored).sum())
        assert missing == 4  # the year window of one tile

    def test_image_level_classes_are_indices(self, root: Path) -> None:
        for sample, row in self.samples(root):
            assert sample['biome'] == raw(root, self.subset, 'biome', row).argmax()
            assert (
                sample['eco_region']
                == raw(root, self.subset, 'eco_region', row).argmax()
            )

    def test_broken_one_hot_is_ignored(self, root: Path, tmp_path: Path) -> None:
        copy_subset(root, self.subset, tmp_path)
        with h5py.File(h5_path(tmp_path, self.subset), 'r+') as f:
            f['biome'][:] = 0  # no class set
            f['eco_region'][:, :2] = 1  # two classes set
        for sample, _ in self.samples(tmp_path):
            assert sample['biome'] == -1 and sample['eco_region'] == -1


class TestSelection:
    def test_band_order_is_the_requested_order(self, mmearth_root: Path) -> None:
        bands = {'sentinel2': ['B4', 'B3', 'B2'], 'sentinel1': ['desc_VV', 'asc_VV']}
        ds = MMEarth(mmearth_root, 'MMEarth64', modality_bands=bands)
        assert ds.modalities == ('sentinel2', 'sentinel1')
        sample, row = ds[0], int(ds.indices[0])
        s2 = raw(mmearth_root, 'MMEarth64', 'sentinel2', row)
        s1 = raw(mmearth_root, 'MMEarth64', 'sentinel1', row)
        np.testing.assert_array_equal(sample['image_sentinel2'].numpy(), s2[[3, 2, 1]])
        np.testing.assert_array_equal(sample['image_sentinel1'].numpy(), s1[[4, 0]])

    def test_subset_of_modalities(self, mmearth_root: Path) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['biome', 'lat'])
        assert set(ds[0]) == {'biome', 'lat', 's2_type', 'tile_id'}

    def test_transforms(self, mmearth_root: Path) -> None:
        def transform(sample: dict[str, Any]) -> dict[str, Any]:
            sample['seen'] = sample['image_sentinel2'].dtype
            return sample

        ds = MMEarth(
            mmearth_root, 'MMEarth64', modalities=['sentinel2'], transforms=transform
        )
        assert ds[0]['seen'] == torch.uint16  # transforms get the raw sample

    @pytest.mark.parametrize('stats_from', ['file', 'dataset'])
    def test_normalize_as_transforms(self, mmearth_root: Path, stats_from: str) -> None:
        bands = {'sentinel2': ['B4', 'B3', 'B2'], 'sentinel1': ['desc_VV']}
        raw_ds = MMEarth(
            mmearth_root, 'MMEarth64', modalities=ALL_MODALITIES, modality_bands=bands
        )
        stats = raw_ds.stats_path if stats_from == 'file' else raw_ds.band_stats
        ds = MMEarth(
            mmearth_root,
            'MMEarth64',
            modalities=ALL_MODALITIES,
            modality_bands=bands,
            transforms=MMEarthNormalize(stats, raw_ds.modality_bands),
        )
        normalize = normalizer(raw_ds)
        for index in range(len(ds)):
            expected = normalize(raw_ds[index])
            assert expected['image_sentinel2'].dtype == torch.float32
            assert same_samples(ds[index], expected)
        batch = ds.__getitems__([2, 0])
        assert same_samples(batch[0], normalize(raw_ds[2]))
        assert same_samples(batch[1], normalize(raw_ds[0]))


class TestErrors:
    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match=r'data_1M_v001_64\.h5'):
            MMEarth(tmp_path, 'MMEarth64')

    def test_missing_file(self, mmearth_root: Path, tmp_path: Path) -> None:
        folder = copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        (folder / 'data_1M_v001_64_band_stats.json').unlink()
        with pytest.raises(DatasetNotFoundError, match=r'_band_stats\.json'):
            MMEarth(tmp_path, 'MMEarth64')

    @pytest.mark.parametrize(
        ('kwargs', 'message'),
        [
            ({'subset': 'MMEarth1k'}, "Unknown subset 'MMEarth1k'; valid subsets are"),
            ({'split': 'training'}, "Unknown split 'training'"),
            (
                {'modalities': ['sentinel3']},
                "Unknown modality 'sentinel3'; valid modalities are .*'sentinel2'",
            ),
            (
                {'modality_bands': {'sentinel2': ['B13']}},
                "Unknown band 'B13' for modality 'sentinel2'; valid bands are .*'B8A'",
            ),
            (
                {'modalities': ['aster'], 'modality_bands': {'sentinel2': ['B2']}},
                "modality_bands names 'sentinel2', which is not in modalities",
            ),
            (
                {'modality_bands': {'sentinel2': []}},
                "No bands selected for modality 'sentinel2'",
            ),
            ({'modality_bands': {'sentinel2': ['B2', 'B2']}}, 'duplicates'),
        ],
    )
    def test_bad_arguments(
        self, mmearth_root: Path, kwargs: dict[str, Any], message: str
    ) -> None:
        kwargs = {'subset': 'MMEarth64', **kwargs}
        with pytest.raises(ValueError, match=message):
            MMEarth(mmearth_root, **kwargs)

    def test_string_instead_of_sequence(self, mmearth_root: Path) -> None:
        with pytest.raises(TypeError, match='sequence'):
            MMEarth(mmearth_root, 'MMEarth64', modalities='sentinel2')

    def test_split_missing_from_splits_file(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        folder = copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        path = folder / 'data_1M_v001_64_splits.json'
        path.write_text(json.dumps({'train': list(range(10))}))
        with pytest.raises(
            ValueError, match=r"_splits.json has no split 'val'; it has \['train'\]"
        ):
            MMEarth(tmp_path, 'MMEarth64', split='val')

    def test_split_index_out_of_range(self, mmearth_root: Path, tmp_path: Path) -> None:
        folder = copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        (folder / 'data_1M_v001_64_splits.json').write_text(
            json.dumps({'train': [0, 10]})
        )
        with pytest.raises(ValueError, match=r'row indices in \[0, 10\)'):
            MMEarth(tmp_path, 'MMEarth64')

    def test_truncated_h5(self, mmearth_root: Path, tmp_path: Path) -> None:
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        path = h5_path(tmp_path, 'MMEarth64')
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(
            OSError, match=r'data_1M_v001_64\.h5 is not a readable HDF5 file'
        ):
            MMEarth(tmp_path, 'MMEarth64')

    def test_corrupt_chunk(self, mmearth_root: Path, tmp_path: Path) -> None:
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        ds = MMEarth(tmp_path, 'MMEarth64', modalities=['sentinel2'])
        row = int(ds.indices[0])
        path = h5_path(tmp_path, 'MMEarth64')
        with h5py.File(path) as f:
            offset = (
                f['sentinel2'].id.get_chunk_info_by_coord((row, 0, 0, 0)).byte_offset
            )
        with open(path, 'r+b') as f:
            f.seek(offset + 16)
            f.write(b'\xff' * 64)
        with pytest.raises(
            OSError, match=f"cannot read row {row} of dataset 'sentinel2'"
        ):
            ds[0]
        with pytest.raises(
            OSError, match=f"cannot read row {row} of dataset 'sentinel2'"
        ):
            ds.__getitems__([1, 0, 2])

    def test_stats_do_not_match(self, mmearth_root: Path, tmp_path: Path) -> None:
        folder = copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        path = folder / 'data_1M_v001_64_band_stats.json'
        stats = json.loads(path.read_text())
        stats['sentinel1']['std'] = stats['sentinel1']['std'][:4]
        path.write_text(json.dumps(stats))
        with pytest.raises(ValueError, match="'sentinel1' must list 8 'std' values"):
            MMEarth(tmp_path, 'MMEarth64')
        del stats['aster']
        path.write_text(json.dumps(stats))
        with pytest.raises(ValueError, match="no entry 'aster' for modality 'aster'"):
            MMEarth(tmp_path, 'MMEarth64', modalities=['aster'])

    def test_missing_dataset_and_wrong_dtype(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        with h5py.File(h5_path(tmp_path, 'MMEarth64'), 'r+') as f:
            del f['aster']
            month = f['month'][:]
            del f['month']
            f['month'] = month.astype(np.int32)
        with pytest.raises(ValueError, match=r"has no dataset 'aster'; it holds \["):
            MMEarth(tmp_path, 'MMEarth64', modalities=['aster'])
        with pytest.raises(
            ValueError, match="dataset 'month' is int32, expected float32"
        ):
            MMEarth(tmp_path, 'MMEarth64', modalities=['month'])


def same_samples(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same keys in the same order, same dtypes and shapes, bitwise equal values."""
    if list(a) != list(b):
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            if not (
                isinstance(other, torch.Tensor)
                and value.dtype == other.dtype
                and value.shape == other.shape
                and value.numpy().tobytes() == other.numpy().tobytes()
            ):
                return False
        elif value != other:
            return False
    return True


class TestBatchedReads:
    """``__getitems__``, which the DataLoader calls with the indices of a batch."""

    @pytest.mark.parametrize('normalize', [False, True])
    def test_same_as_one_at_a_time(self, mmearth_root: Path, normalize: bool) -> None:
        ds = MMEarth(
            mmearth_root,
            'MMEarth64',
            modalities=ALL_MODALITIES,
            modality_bands={'sentinel2': ['B4', 'B3', 'B2'], 'sentinel1': ['desc_VV']},
        )
        if normalize:
            ds.transforms = normalizer(ds)
        indices = [3, 0, 5, 0, -1]
        batch = ds.__getitems__(indices)
        assert len(batch) == len(indices)
        for sample, index in zip(batch, indices, strict=True):
            assert same_samples(sample, ds[index])
        assert batch[1]['image_sentinel2'] is not batch[3]['image_sentinel2']
        assert ds.__getitems__([]) == []

    def test_transforms_see_each_sample(self, mmearth_root: Path) -> None:
        seen: list[str] = []

        def transform(sample: dict[str, Any]) -> dict[str, Any]:
            seen.append(sample['tile_id'])
            return {**sample, 'mean': sample['image_sentinel2'].float().mean()}

        ds = MMEarth(
            mmearth_root, 'MMEarth64', modalities=['sentinel2'], transforms=transform
        )
        batch = ds.__getitems__([2, 1])
        assert seen == [batch[0]['tile_id'], batch[1]['tile_id']]
        assert torch.equal(batch[0]['mean'], ds[2]['mean'])

    def test_bad_indices(self, mmearth_root: Path) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['lat'])
        with pytest.raises(IndexError):
            ds.__getitems__([0, len(ds)])
        with pytest.raises(IndexError):
            ds[len(ds)]
        with pytest.raises(TypeError):
            ds[1.5]  # type: ignore[index]

    def test_dataloader_uses_batched_reads(
        self, mmearth_root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['sentinel2', 'biome'])
        calls: list[list[int]] = []
        original = MMEarth.__getitems__

        def record(self: MMEarth, indices: list[int]) -> list[dict[str, Any]]:
            calls.append(list(indices))
            return original(self, indices)

        monkeypatch.setattr(MMEarth, '__getitems__', record)
        batches = list(DataLoader(ds, batch_size=4))
        assert calls == [[0, 1, 2, 3], [4, 5]]
        assert batches[1]['tile_id'] == [ds[4]['tile_id'], ds[5]['tile_id']]

    def test_chunk_stored_without_compression(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        """A chunk for which HDF5 skipped the deflate filter is read as stored."""
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        ds = MMEarth(tmp_path, 'MMEarth64', modalities=['aster'])
        row = int(ds.indices[0])
        tile = np.arange(2 * 64 * 64, dtype=np.int16).reshape(1, 2, 64, 64)
        with h5py.File(h5_path(tmp_path, 'MMEarth64'), 'r+') as f:
            f['aster'].id.write_direct_chunk((row, 0, 0, 0), tile.tobytes(), 1)
            assert f['aster'].id.read_direct_chunk((row, 0, 0, 0))[0] == 1
        assert np.array_equal(raw(tmp_path, 'MMEarth64', 'aster', row), tile[0])
        aster = ds[0]['image_aster']
        assert np.array_equal(aster.numpy(), tile[0])
        aster += 1  # a writable tensor of its own


class TestLayouts:
    def test_contiguous_file_reads_the_same(
        self, mmearth_data: ModuleType, tmp_path: Path
    ) -> None:
        gzip_root, flat_root = tmp_path / 'gzip', tmp_path / 'flat'
        mmearth_data.write_corpus(gzip_root, 'MMEarth64', num_tiles=4, seed=3)
        mmearth_data.write_corpus(
            flat_root, 'MMEarth64', num_tiles=4, seed=3, compression=None
        )
        gzip_ds = MMEarth(gzip_root, 'MMEarth64', modalities=ALL_MODALITIES)
        flat_ds = MMEarth(flat_root, 'MMEarth64', modalities=ALL_MODALITIES)
        assert not flat_ds._reader('sentinel2').direct
        for index in range(len(gzip_ds)):
            assert same_samples(gzip_ds[index], flat_ds[index])

    def test_metadata_without_s2_type_uses_tile_info(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        with h5py.File(h5_path(tmp_path, 'MMEarth64'), 'r+') as f:
            ids = f['metadata'][:]['tile_id']
            del f['metadata']
            f['metadata'] = np.array([(i,) for i in ids], dtype=[('tile_id', 'S100')])
        merged = MMEarth(tmp_path, 'MMEarth64', modalities=['sentinel2'])
        original = MMEarth(mmearth_root, 'MMEarth64', modalities=['sentinel2'])
        for index in range(len(original)):
            assert merged[index]['s2_type'] == original[index]['s2_type']
            assert merged[index]['tile_id'] == original[index]['tile_id']
        (tmp_path / 'data_1M_v001_64' / 'data_1M_v001_64_tile_info.json').unlink()
        with pytest.raises(
            ValueError, match=r'no S2_type field.*_tile_info\.json, which is missing'
        ):
            MMEarth(tmp_path, 'MMEarth64', modalities=['sentinel2'])

    def test_tile_info_is_not_needed(self, mmearth_root: Path, tmp_path: Path) -> None:
        folder = copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        (folder / 'data_1M_v001_64_tile_info.json').unlink()
        assert MMEarth(tmp_path, 'MMEarth64')[0]['s2_type'] in (0, 1)


class TestHandles:
    def test_pickle_drops_the_handle(self, mmearth_root: Path) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64')
        first = ds[0]
        assert ds._h5 is not None
        clone = pickle.loads(pickle.dumps(ds))
        assert clone._h5 is None
        assert clone[0]['tile_id'] == first['tile_id']

    def test_fork_workers(self, mmearth_root: Path) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64', split='train')
        expected = [ds[i] for i in range(len(ds))]  # the parent holds an open handle
        loader = DataLoader(
            ds, batch_size=2, num_workers=2, multiprocessing_context='fork'
        )
        batches = list(loader)
        got = [
            b['image_sentinel2'][j] for b in batches for j in range(len(b['tile_id']))
        ]
        assert all(
            torch.equal(g, e['image_sentinel2'])
            for g, e in zip(got, expected, strict=True)
        )
        assert (
            ds[0]['tile_id'] == expected[0]['tile_id']
        )  # the parent reopens after the fork

    @pytest.mark.slow
    def test_spawn_workers(self, mmearth_root: Path) -> None:
        ds = MMEarth(
            mmearth_root, 'MMEarth64', split='val', modalities=['sentinel2', 'biome']
        )
        ds[0]
        loader = DataLoader(
            ds, batch_size=1, num_workers=2, multiprocessing_context='spawn'
        )
        ids = [b['tile_id'][0] for b in loader]
        assert ids == [ds[i]['tile_id'] for i in range(len(ds))]

    def test_close_and_reopen(self, mmearth_root: Path) -> None:
        ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['lat'])
        value = ds[0]['lat']
        ds.close()
        assert ds._h5 is None
        assert torch.equal(ds[0]['lat'], value)


class TestPlot:
    @pytest.fixture
    def dataset(self, mmearth_root: Path) -> MMEarth:
        return MMEarth(mmearth_root, 'MMEarth64', modalities=ALL_MODALITIES)

    @pytest.fixture
    def sample(self, dataset: MMEarth) -> dict[str, Any]:
        """A tile with data in every band of every pixel-level modality."""
        sample = dataset[0]
        for modality in MODALITIES.values():
            if modality.level is not Level.PIXEL:
                continue
            shape = sample[modality.key].shape
            if modality.kind is Kind.CATEGORICAL:
                sample[modality.key] = torch.randint(0, modality.num_classes, shape)
            else:
                sample[modality.key] = torch.randn(shape)
        return sample

    def test_every_modality_and_both_sentinel1_passes(
        self, dataset: MMEarth, sample: dict[str, Any]
    ) -> None:
        assert figure_panels(dataset.plot(sample, suptitle='test')) == [
            ('sentinel2 RGB', False),
            ('sentinel2 cloudmask', False),
            ('sentinel2 cloudprod MSK_CLDPRB', False),
            ('sentinel2 scl', False),
            ('sentinel1 asc VV', False),
            ('sentinel1 desc VV', False),
            ('aster elevation', False),
            ('dynamic world', False),
            ('canopy height eth height', False),
            ('esa worldcover', False),
        ]

    def test_absent_modalities_say_no_data(
        self, dataset: MMEarth, sample: dict[str, Any]
    ) -> None:
        for key in ('image_sentinel2_cloudprod', 'image_aster'):
            sample[key][:] = math.nan
        for key in ('mask_sentinel2_scl', 'mask_esa_worldcover'):
            sample[key][:] = IGNORE_INDEX
        # Only the descending pass, without VV: its first band with data is drawn.
        sample['image_sentinel1'][:5] = math.nan
        # Canopy height without height: its std is drawn.
        sample['image_canopy_height_eth'][0] = math.nan
        # One last panel lists every absent modality.
        assert figure_panels(dataset.plot(sample)) == [
            ('sentinel2 RGB', False),
            ('sentinel2 cloudmask', False),
            ('sentinel1 desc VH', False),
            ('dynamic world', False),
            ('canopy height eth std', False),
            (
                'no data in this tile:\n'
                + 'sentinel2 cloudprod, sentinel2 scl, aster, esa worldcover',
                True,
            ),
        ]

    def test_sentinel1_without_either_pass(
        self, dataset: MMEarth, sample: dict[str, Any]
    ) -> None:
        sample['image_sentinel1'][:] = math.nan
        sentinel1 = [
            panel
            for panel in figure_panels(dataset.plot(sample))
            if panel[0].startswith('sentinel1')
        ]
        assert sentinel1 == []
        assert figure_panels(dataset.plot(sample))[-1] == (
            'no data in this tile:\nsentinel1',
            True,
        )

    @pytest.mark.parametrize(
        ('index', 'sentinel1'),
        [
            (0, ('sentinel1 asc VV', False)),
            (4, ('sentinel1 desc VV', False)),
            (8, ('no data in this tile:\nsentinel1', True)),
        ],
        ids=['ascending', 'descending', 'none'],
    )
    def test_demo_tiles(self, index: int, sentinel1: tuple[str, bool]) -> None:
        """Real tiles with one pass, the other, or no Sentinel-1 at all."""
        ds = MMEarth(subset='MMEarthDemo', modalities=['sentinel2', 'sentinel1'])
        assert figure_panels(ds.plot(ds[index])) == [
            ('sentinel2 RGB', False),
            sentinel1,
        ]

    def test_demo_corpus_with_the_default_modalities(self) -> None:
        # The demo corpus holds Sentinel-2, Sentinel-1 and image-level modalities:
        # the maps it lacks are one panel, not one "no data" panel each.
        ds = MMEarth(subset='MMEarthDemo')
        assert figure_panels(ds.plot(ds[0])) == [
            ('sentinel2 RGB', False),
            ('sentinel1 asc VV', False),
            (
                'no data in this tile:\n'
                + 'aster, dynamic world, canopy height eth, esa worldcover',
                True,
            ),
        ]

    def test_raw_samples_and_no_titles(self, mmearth_root: Path) -> None:
        raw_ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['sentinel2'])
        figure = raw_ds.plot(raw_ds[0], show_titles=False)
        assert figure_panels(figure) == [('', False)]
        assert figure.axes[0].images[0].get_array().shape == (64, 64, 3)

    def test_raw_and_normalized_samples_look_the_same(self, dataset: MMEarth) -> None:
        """A raw sample is normalised for display; a normalised one is drawn as is."""
        normalize = normalizer(dataset)
        for index in range(len(dataset)):
            sample = dataset[index]
            assert sample['image_sentinel2'].dtype == torch.uint16
            raw_figure = dataset.plot(sample)
            normalized_figure = dataset.plot(normalize(sample))
            assert figure_panels(raw_figure) == figure_panels(normalized_figure)
            assert panel_images(raw_figure) == panel_images(normalized_figure)
            plt.close(raw_figure)
            plt.close(normalized_figure)

    def test_normalize_transforms(self, mmearth_root: Path, dataset: MMEarth) -> None:
        normalized_ds = MMEarth(
            mmearth_root,
            'MMEarth64',
            modalities=ALL_MODALITIES,
            transforms=MMEarthNormalize(dataset.stats_path, dataset.modality_bands),
        )
        assert normalized_ds[0]['image_sentinel2'].dtype == torch.float32
        assert panel_images(normalized_ds.plot(normalized_ds[0])) == panel_images(
            dataset.plot(dataset[0])
        )

    def test_float_maps_count_as_normalized(self, mmearth_root: Path) -> None:
        """Sentinel-2 no longer uint16 is drawn without normalising it again."""
        ds = MMEarth(mmearth_root, 'MMEarth64', modalities=['sentinel2'])
        raw_s2 = ds[0]['image_sentinel2']
        rgb = raw_s2[
            [ds.modality_bands['sentinel2'].index(b) for b in ['B4', 'B3', 'B2']]
        ]
        figure = ds.plot({**ds[0], 'image_sentinel2': raw_s2.float()})
        np.testing.assert_array_equal(
            figure.axes[0].images[0].get_array(),
            percentile_stretch(rgb.float().numpy().transpose(1, 2, 0)),
        )
        # The uint16 sample itself is normalised first: per-band z-scores, another image.
        assert panel_images(ds.plot(ds[0])) != panel_images(figure)


def panel_images(figure: Figure) -> list[bytes]:
    """The pixels (and masks) of the image in every panel of a figure."""
    images = []
    for axis in figure.axes:
        array = axis.images[0].get_array()
        images.append(
            np.ma.getdata(array).tobytes() + np.ma.getmaskarray(array).tobytes()
        )
    return images


def test_torchgeo_reads_the_test_data(mmearth_root: Path) -> None:
    """The generated files follow the published format closely enough for TorchGeo."""
    from torchgeo.datasets import MMEarth as TorchGeoMMEarth

    for subset, size in SUBSETS.items():
        sample = TorchGeoMMEarth(mmearth_root, subset=subset)[0]
        assert sample['image_sentinel2'].shape == (13, size, size)


class TestCorpusFolders:
    def test_any_corpus_folder(self, mmearth_root: Path, tmp_path: Path) -> None:
        source = mmearth_root / 'data_1M_v001_64'
        folder = tmp_path / 'data_my.corpus-1'
        folder.mkdir()
        for path in source.iterdir():
            name = path.name.replace('data_1M_v001_64', 'data_my.corpus-1')
            (folder / name).write_bytes(path.read_bytes())
        ds = MMEarth(tmp_path, 'data_my.corpus-1', modalities=['sentinel2'])
        reference = MMEarth(mmearth_root, 'MMEarth64', modalities=['sentinel2'])
        assert ds.tile_size == 64 and len(ds) == len(reference)
        assert same_samples(ds[0], reference[0])

    def test_missing_corpus_folder(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetNotFoundError, match=r'data_mine\.h5'):
            MMEarth(tmp_path, 'data_mine')

    @pytest.mark.parametrize('subset', ['mine', 'data_', 'data_../x', '../data_x'])
    def test_invalid_folder_names(self, tmp_path: Path, subset: str) -> None:
        with pytest.raises(
            ValueError, match=r"or the name of a corpus folder 'data_<name>'"
        ):
            MMEarth(tmp_path, subset)

    def test_demo_subset(self, tmp_path: Path) -> None:
        from torchgeo_mmearth.datasets import DEMO_ROOT

        assert MMEarth.subsets['MMEarthDemo'] == 'data_bigearthnet_demo'
        assert (
            DEMO_ROOT / 'data_bigearthnet_demo' / 'data_bigearthnet_demo.h5'
        ).is_file()
        ds = MMEarth(
            tmp_path, 'MMEarthDemo', 'val', modalities=['sentinel2', 'sentinel1']
        )
        assert ds.root == DEMO_ROOT and len(ds) == 8


class TestReleases:
    """v001 and v1.0: which folder, which release, and the same samples."""

    def test_both_releases_give_the_same_samples(
        self, mmearth_root: Path, mmearth_v1_root: Path
    ) -> None:
        """The same tiles with either release's placeholders normalise the same."""
        for split in MMEarth.splits:
            v001 = MMEarth(mmearth_root, 'MMEarth64', split, modalities=ALL_MODALITIES)
            v1 = MMEarth(mmearth_v1_root, 'MMEarth64', split, modalities=ALL_MODALITIES)
            assert (v001.version, v1.version) == ('v001', 'v1.0')
            normalizers = [
                MMEarthNormalize(v001.band_stats, v001.modality_bands, version=version)
                for version in (None, 'v001', 'v1.0')
            ]
            for index in range(len(v001)):
                old, new = v001[index], v1[index]
                assert (old['mask_esa_worldcover'][..., -1] == 255).all()
                assert (new['mask_esa_worldcover'][..., -1] == 0).all()
                expected = normalizer(v001)(old)
                assert same_samples(normalizer(v1)(new), expected)
                for normalize in normalizers:
                    assert same_samples(normalize(old), expected)
                    assert same_samples(normalize(new), expected)

    @pytest.mark.parametrize(
        ('subset', 'folder'),
        [
            ('MMEarth', 'data_1M_v1.0'),
            ('MMEarth64', 'data_1M_v1_0_64'),
            ('MMEarth100k', 'data_100k_v100'),
        ],
    )
    def test_named_subsets_find_the_v1_folder(
        self, mmearth_data: ModuleType, tmp_path: Path, subset: str, folder: str
    ) -> None:
        mmearth_data.write_corpus(
            tmp_path, subset, num_tiles=5, version='v1.0', folder=folder
        )
        ds = MMEarth(tmp_path, subset, modalities=['esa_worldcover'])
        assert ds.directory.name == folder and ds.version == 'v1.0'
        assert len(ds) == 3 and ds.tile_size == SUBSETS[subset]
        assert (ds[0]['mask_esa_worldcover'][..., -1] == 0).all()

    @pytest.mark.parametrize(
        ('folder', 'attribute', 'expected'),
        [
            ('data_mine', 'v1.0', 'v1.0'),
            ('data_mine', '1.0', 'v1.0'),
            ('data_mine', b'v1.0', 'v1.0'),
            ('data_mine', 'v001', 'v001'),
            ('data_mine', None, None),
            ('data_mine_v1.0', None, 'v1.0'),
            ('data_1M_v001_64', 'v1.0', 'v1.0'),  # the file over its name
        ],
    )
    def test_release_from_the_file_then_the_name(
        self,
        mmearth_data: ModuleType,
        tmp_path: Path,
        folder: str,
        attribute: str | bytes | None,
        expected: str | None,
    ) -> None:
        mmearth_data.write_corpus(
            tmp_path,
            num_tiles=2,
            version=expected or 'v1.0',
            folder=folder,
            attribute=attribute,
        )
        ds = MMEarth(tmp_path, folder, modalities=['era5'])
        assert ds.version == expected
        assert normalizer(ds).version == expected

    def test_explicit_version_overrides(
        self, mmearth_root: Path, mmearth_data: ModuleType, tmp_path: Path
    ) -> None:
        # The only MMEarth64 folder under root, read as the release asked for.
        ds = MMEarth(mmearth_root, 'MMEarth64', version='v1_0')
        assert ds.directory.name == 'data_1M_v001_64' and ds.version == 'v1.0'
        mmearth_data.write_corpus(
            tmp_path, num_tiles=2, folder='data_mine', attribute='v1.0'
        )
        assert MMEarth(tmp_path, 'data_mine', version='v001').version == 'v001'

    def test_both_releases_under_root(
        self, mmearth_root: Path, mmearth_v1_root: Path, tmp_path: Path
    ) -> None:
        copy_subset(mmearth_root, 'MMEarth64', tmp_path)
        copy_subset(mmearth_v1_root, 'MMEarth64', tmp_path)
        with pytest.raises(
            ValueError,
            match=r'holds MMEarth64 in several folders: data_1M_v001_64 \(v001\), '
            r"data_1M_v1\.0_64 \(v1\.0\); pass version= \(one of \['v001', 'v1\.0'\]",
        ):
            MMEarth(tmp_path, 'MMEarth64')
        for version in ('v001', 'v1.0'):
            ds = MMEarth(tmp_path, 'MMEarth64', version=version)
            assert ds.directory.name == f'data_1M_{version}_64'
            assert ds.version == version

    @pytest.mark.parametrize('version', ['v2', '1', 'latest', ''])
    def test_unknown_version(self, mmearth_root: Path, version: str) -> None:
        with pytest.raises(
            ValueError,
            match=r"version must be one of \['v001', 'v1\.0'\] \(the MMEarth data "
            rf'release\), got {version!r}',
        ):
            MMEarth(mmearth_root, 'MMEarth64', version=version)

    def test_unknown_recorded_version(
        self, mmearth_data: ModuleType, tmp_path: Path
    ) -> None:
        mmearth_data.write_corpus(
            tmp_path, num_tiles=2, folder='data_mine', attribute='2.0'
        )
        with pytest.raises(
            ValueError,
            match=r"data_mine\.h5: the root attribute 'version' is '2\.0', which is "
            r"not an MMEarth data release \(\['v001', 'v1\.0'\]\); pass version=",
        ):
            MMEarth(tmp_path, 'data_mine')
        assert MMEarth(tmp_path, 'data_mine', version='v1.0').version == 'v1.0'
