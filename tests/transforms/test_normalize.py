import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import default_collate

from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import MODALITIES, data_version
from torchgeo_mmearth.transforms import MMEarthNormalize


def stats(**overrides: Any) -> dict[str, Any]:
    entries: dict[str, Any] = {
        'sentinel2_l1c': {'mean': [1000.0] * 13, 'std': [100.0] * 13},
        'sentinel2_l2a': {'mean': [500.0] * 13, 'std': [50.0] * 13},
        'aster': {'mean': [100.0, 10.0], 'std': [10.0, 5.0]},
    }
    entries.update(overrides)
    return entries


def test_sample_and_batch_agree(mmearth_root: Path) -> None:
    ds = MMEarth(mmearth_root, 'MMEarth64', modalities=list(MODALITIES))
    normalize = MMEarthNormalize(ds.band_stats, ds.modality_bands)
    samples = [ds[i] for i in range(4)]
    batch = normalize(default_collate(samples))
    for i, sample in enumerate(samples):
        one = normalize(sample)
        for key, value in one.items():
            if isinstance(value, torch.Tensor):
                expected = batch[key][i]
                assert torch.equal(value.isnan(), expected.isnan()), key
                assert torch.equal(value.nan_to_num(), expected.nan_to_num()), key


def test_per_tile_sentinel2_statistics() -> None:
    normalize = MMEarthNormalize(stats(), {'sentinel2': ['B2', 'B3']})
    x = torch.tensor([[[[1100]], [[0]]], [[[600]], [[550]]]], dtype=torch.uint16)
    out = normalize({'image_sentinel2': x, 's2_type': torch.tensor([0, 1])})
    expected = torch.tensor([[[[1.0]], [[math.nan]]], [[[2.0]], [[1.0]]]])
    torch.testing.assert_close(out['image_sentinel2'], expected, equal_nan=True)


def test_sentinel2_needs_the_tile_type() -> None:
    normalize = MMEarthNormalize(stats(), {'sentinel2': ['B2']})
    with pytest.raises(KeyError, match='s2_type'):
        normalize({'image_sentinel2': torch.ones(1, 1, 1, dtype=torch.uint16)})


def test_band_without_statistics_is_nodata() -> None:
    nan_b10 = stats()
    nan_b10['sentinel2_l2a'] = {
        'mean': [500.0] * 10 + [math.nan] + [500.0] * 2,
        'std': [50.0] * 10 + [math.nan] + [50.0] * 2,
    }
    normalize = MMEarthNormalize(nan_b10, {'sentinel2': ['B10']})
    x = torch.full((2, 1, 1, 1), 20, dtype=torch.uint16)
    out = normalize({'image_sentinel2': x, 's2_type': torch.tensor([0, 1])})[
        'image_sentinel2'
    ]
    assert out[0].isfinite().all() and out[1].isnan().all()


def test_class_maps_and_passthrough() -> None:
    normalize = MMEarthNormalize({}, {'esa_worldcover': ['map'], 'biome': ['biome']})
    esa = torch.tensor([[[10, 100, 0, 255, 15]]], dtype=torch.uint8)
    out = normalize(
        {'mask_esa_worldcover': esa, 'biome': torch.tensor(3), 'other': 'x'}
    )
    assert out['mask_esa_worldcover'].tolist() == [[[0, 10, -1, -1, -1]]]
    assert out['biome'] == 3 and out['other'] == 'x'


@pytest.mark.parametrize(
    ('band_stats', 'message'),
    [
        ({}, r"no entry 'aster' for modality 'aster'; entries present: \[\]"),
        (
            {'aster': {'mean': [1.0], 'std': [1.0, 1.0]}},
            "'aster' must list 2 'mean' values",
        ),
        (
            {'aster': {'mean': [1.0, 1.0]}},
            "'aster' must list 2 'std' values .* found no",
        ),
    ],
)
def test_statistics_errors(band_stats: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MMEarthNormalize(band_stats, {'aster': ['elevation']})


def test_sentinel2_of_other_datasets_is_the_same_transform() -> None:
    # MMEarthS2Normalize is MMEarthNormalize set up for one entry of any dataset:
    # bands by any spelling, a default level, no-data z-scored like any value.
    from torchgeo_mmearth.transforms import MMEarthS2Normalize

    x = torch.randint(0, 3000, (2, 3, 2, 2), dtype=torch.int16)
    general = MMEarthNormalize(
        stats(),
        {'sentinel2': ['B02', 'S2_B3', 'b8a']},
        keys={'sentinel2': 'image'},
        level='l1c',
        mask_nodata=False,
    )
    s2 = MMEarthS2Normalize(['B2', 'B3', 'B8A'], band_stats=stats(), level='l1c')
    assert isinstance(s2, MMEarthNormalize)
    assert general.modality_bands == {'sentinel2': ('B2', 'B3', 'B8A')}
    out = general({'image': x})['image']
    torch.testing.assert_close(out, s2({'image': x})['image'])
    torch.testing.assert_close(out, (x.float() - 1000) / 100)
    assert not out.isnan().any()  # 0 is a value here, not no-data


def test_time_series_and_channel_errors() -> None:
    normalize = MMEarthNormalize(stats(), {'sentinel2': ['B2']})
    series = torch.tensor([1100, 600], dtype=torch.uint16).reshape(2, 1, 1, 1, 1)
    series = series.expand(2, 3, 1, 1, 1)  # (B, T, C, H, W)
    out = normalize({'image_sentinel2': series, 's2_type': torch.tensor([0, 1])})
    expected = torch.tensor([[1.0] * 3, [2.0] * 3])
    torch.testing.assert_close(out['image_sentinel2'][:, :, 0, 0, 0], expected)
    with pytest.raises(ValueError, match=r"'image_sentinel2' must have 1 channels"):
        normalize({'image_sentinel2': torch.ones(2, 1, 1), 's2_type': 0})


def test_missing_level_statistics() -> None:
    only_l2a = {'sentinel2_l2a': stats()['sentinel2_l2a']}
    normalize = MMEarthNormalize(only_l2a, {'sentinel2': ['B2']})
    x = torch.full((2, 1, 1, 1), 550, dtype=torch.uint16)
    out = normalize({'image_sentinel2': x, 's2_type': torch.tensor([1, 1])})
    torch.testing.assert_close(out['image_sentinel2'].flatten(), torch.ones(2))
    with pytest.raises(ValueError, match=r"statistics have \['l2a'\] only"):
        normalize({'image_sentinel2': x, 's2_type': torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="none of \\['sentinel2_l1c'"):
        MMEarthNormalize({'aster': stats()['aster']}, {'sentinel2': ['B2']})


@pytest.mark.parametrize('version', [None, 'v001', 'v1.0', 'v1_0'])
def test_every_release_placeholder_is_nodata(version: str | None) -> None:
    era5_stats = {'mean': [280.0] * 12, 'std': [10.0] * 12}
    normalize = MMEarthNormalize(
        {'era5': era5_stats},
        {'era5': MODALITIES['era5'].bands, 'esa_worldcover': ['map']},
        version=version,
    )
    assert normalize.version == (None if version is None else data_version(version))
    era5 = torch.full((12,), 290.0)
    era5[:3] = torch.tensor([math.inf, math.nan, -math.inf])  # v001, v1.0, other
    # Tree cover (10), v1.0 no-data (0), v001 no-data (255), no code (15), moss (100).
    esa = torch.tensor([[[10, 0, 255, 15, 100]]], dtype=torch.uint8)
    out = normalize({'era5': era5, 'mask_esa_worldcover': esa})
    assert out['era5'][:3].isnan().all()
    torch.testing.assert_close(out['era5'][3:], torch.ones(9))
    assert out['mask_esa_worldcover'].tolist() == [[[0, -1, -1, -1, 10]]]


def test_unknown_version() -> None:
    with pytest.raises(
        ValueError, match=r"version must be one of \['v001', 'v1\.0'\].*got 'v2'"
    ):
        MMEarthNormalize({}, {'esa_worldcover': ['map']}, version='v2')


def test_both_fixture_releases(mmearth_root: Path, mmearth_v1_root: Path) -> None:
    """ERA5 and ESA WorldCover of both releases, sample by sample."""
    codes = MODALITIES['esa_worldcover'].class_values
    seen = set()
    for root, split in itertools.product(
        (mmearth_root, mmearth_v1_root), MMEarth.splits
    ):
        ds = MMEarth(root, 'MMEarth64', split, modalities=['era5', 'esa_worldcover'])
        normalize = MMEarthNormalize(
            ds.band_stats, ds.modality_bands, version=ds.version
        )
        mean = torch.tensor(ds.band_stats['era5']['mean'], dtype=torch.float32)
        std = torch.tensor(ds.band_stats['era5']['std'], dtype=torch.float32)
        for index in range(len(ds)):
            sample = ds[index]
            out = normalize(sample)
            era5 = sample['era5']
            nodata = ~era5.isfinite()
            assert torch.equal(out['era5'].isnan(), nodata)
            torch.testing.assert_close(
                out['era5'][~nodata], ((era5 - mean) / std)[~nodata]
            )
            stored = sample['mask_esa_worldcover'].long()
            expected = torch.full_like(stored, -1)
            for cls, code in enumerate(codes):
                expected[stored == code] = cls
            assert torch.equal(out['mask_esa_worldcover'], expected)
            assert (out['mask_esa_worldcover'][stored == 10] == 0).all()
            seen.add((ds.version, int(stored[..., -1].max()), int(nodata.sum())))
    # Each release's placeholders: ESA 255 / 0 in the last column; ERA5 +inf / NaN.
    assert {(version, esa) for version, esa, _ in seen} == {('v001', 255), ('v1.0', 0)}
    assert {version for version, _, era5 in seen if era5} == {'v001', 'v1.0'}
