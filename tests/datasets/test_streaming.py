import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from torchgeo_mmearth.corpus import shard_corpus
from torchgeo_mmearth.corpus.shards import folder_bytes
from torchgeo_mmearth.datasets import MMEarth, StreamingMMEarth
from torchgeo_mmearth.datasets import streaming as streaming_module
from torchgeo_mmearth.modalities import MODALITIES
from torchgeo_mmearth.transforms import MMEarthNormalize


def same(a: object, b: object) -> bool:
    """Exact equality of sample entries: dtype, shape and values (NaN included)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a.isnan(), b.isnan()))
            and bool(torch.equal(a[~a.isnan()], b[~b.isnan()]))
        )
    return type(a) is type(b) and a == b


@pytest.fixture(scope='module')
def zstd_shards(mmearth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MMEarth64 test corpus as zstd-compressed shards."""
    out = tmp_path_factory.mktemp('zstd') / 'mmearth64'
    shard_corpus(mmearth_root, 'MMEarth64', out, compression='zstd:3', progress=False)
    return out


@pytest.mark.parametrize('compressed', [False, True], ids=['none', 'zstd'])
@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_samples_equal_the_hdf5_reader(
    mmearth_root: Path,
    mmearth_shards: Path,
    zstd_shards: Path,
    tmp_path: Path,
    split: str,
    compressed: bool,
) -> None:
    shards = zstd_shards if compressed else mmearth_shards
    modalities = list(MODALITIES)
    hdf5 = MMEarth(mmearth_root, 'MMEarth64', split, modalities=modalities)
    expected = {
        sample['tile_id']: sample for sample in (hdf5[i] for i in range(len(hdf5)))
    }
    streamed = StreamingMMEarth(
        shards, split, modalities=modalities, cache_dir=str(tmp_path)
    )
    assert len(streamed) == len(hdf5) > 0
    samples = [streamed[i] for i in range(len(streamed))]
    # The same split membership: every tile of the split, once.
    assert sorted(s['tile_id'] for s in samples) == sorted(expected)
    for sample in samples:
        reference = expected[sample['tile_id']]
        assert list(sample) == list(reference)
        different = [key for key in sample if not same(sample[key], reference[key])]
        assert different == [], sample['tile_id']
    # Iterating (litdata's path) yields the same samples as indexing.
    assert sorted(s['tile_id'] for s in streamed) == sorted(expected)


def test_zstd_chunks_are_compressed_and_stay_so(
    mmearth_shards: Path, zstd_shards: Path, tmp_path: Path
) -> None:
    assert folder_bytes(zstd_shards) < 0.8 * folder_bytes(mmearth_shards)
    files = {p: p.stat().st_size for p in zstd_shards.rglob('*') if p.is_file()}
    streamed = StreamingMMEarth(zstd_shards, cache_dir=str(tmp_path))
    assert len(list(streamed)) == len(streamed)
    # Reading leaves the shards as written (no chunk decompressed in place).
    assert {p: p.stat().st_size for p in zstd_shards.rglob('*') if p.is_file()} == files


def test_views_in_datamodule_workers(
    mmearth_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the datamodule's workers collate, pixel tiles are views of the chunk."""
    modalities = list(MODALITIES)
    plain = StreamingMMEarth(
        mmearth_shards, modalities=modalities, cache_dir=str(tmp_path / 'plain')
    )
    views = StreamingMMEarth(
        mmearth_shards,
        modalities=modalities,
        cache_dir=str(tmp_path / 'views'),
        worker_views=True,
    )
    monkeypatch.setattr(streaming_module, 'get_worker_info', lambda: object())
    for i in range(len(plain)):
        expected, sample = plain[i], views[i]
        assert list(sample) == list(expected)
        s1 = sample['image_sentinel1']
        assert isinstance(s1, np.ndarray) and not s1.flags.writeable
        for key, value in expected.items():
            if isinstance(value, Tensor):
                assert isinstance(sample[key], np.ndarray), key
                assert same(torch.as_tensor(sample[key].copy()), value), key
            else:
                assert sample[key] == value


def test_band_selection_and_default_modalities(
    mmearth_root: Path, mmearth_shards: Path, tmp_path: Path
) -> None:
    bands = {'sentinel2': ['B4', 'B3', 'B2'], 'sentinel1': ['desc_VH']}
    hdf5 = MMEarth(mmearth_root, 'MMEarth64', modality_bands=bands)
    streamed = StreamingMMEarth(
        mmearth_shards, modality_bands=bands, cache_dir=str(tmp_path)
    )
    by_id = {hdf5[i]['tile_id']: hdf5[i] for i in range(len(hdf5))}
    for i in range(len(streamed)):
        sample = streamed[i]
        assert sample['image_sentinel2'].shape[0] == 3
        reference = by_id[sample['tile_id']]
        assert all(same(sample[k], reference[k]) for k in reference)
    default = StreamingMMEarth(mmearth_shards, cache_dir=str(tmp_path))
    assert default.modalities == MMEarth(mmearth_root, 'MMEarth64').modalities
    assert default.tile_size == 64
    assert default.band_stats == hdf5.band_stats
    normalize = MMEarthNormalize(default.band_stats, default.modality_bands)
    assert default[0]['image_sentinel2'].dtype == torch.uint16
    assert normalize(default[0])['image_sentinel2'].dtype == torch.float32
    normalized = StreamingMMEarth(
        mmearth_shards, cache_dir=str(tmp_path), transforms=normalize
    )
    expected = normalize(default[1])
    assert all(same(normalized[1][k], expected[k]) for k in expected)


def test_errors(mmearth_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'mmearth_shards\.json is missing'):
        StreamingMMEarth(tmp_path)
    with pytest.raises(ValueError, match="no split 'holdout'"):
        StreamingMMEarth(mmearth_shards, 'holdout')
    with pytest.raises(ValueError, match="Unknown modality 'sentinel3'"):
        StreamingMMEarth(mmearth_shards, modalities=['sentinel3'])


def test_release_survives_sharding(
    mmearth_root: Path, mmearth_v1_root: Path, mmearth_shards: Path, tmp_path: Path
) -> None:
    assert StreamingMMEarth(mmearth_shards, cache_dir=str(tmp_path)).version == 'v001'
    # Both releases of MMEarth64 under one root: the version chooses.
    root = tmp_path / 'both'
    for source in (mmearth_root, mmearth_v1_root):
        folder = next(source.glob('data_1M_v*_64'))
        shutil.copytree(folder, root / folder.name)
    out = tmp_path / 'v1'
    with pytest.raises(ValueError, match='holds MMEarth64 in several folders'):
        shard_corpus(root, 'MMEarth64', out, splits=['val'], progress=False)
    shard_corpus(
        root,
        'MMEarth64',
        out,
        splits=['val'],
        num_workers=1,
        progress=False,
        version='v1.0',
    )
    manifest = json.loads((out / 'mmearth_shards.json').read_text())
    assert manifest['folder'] == 'data_1M_v1.0_64'
    assert manifest['data_version'] == 'v1.0'
    modalities = ['era5', 'esa_worldcover']
    streamed = StreamingMMEarth(
        out, 'val', modalities=modalities, cache_dir=str(tmp_path / 'cache')
    )
    hdf5 = MMEarth(mmearth_v1_root, 'MMEarth64', 'val', modalities=modalities)
    assert streamed.version == hdf5.version == 'v1.0'
    normalize = MMEarthNormalize(
        streamed.band_stats, streamed.modality_bands, version=streamed.version
    )
    by_id = {hdf5[i]['tile_id']: hdf5[i] for i in range(len(hdf5))}
    for i in range(len(streamed)):
        sample = streamed[i]
        assert (sample['mask_esa_worldcover'][..., -1] == 0).all()
        expected = normalize(by_id[sample['tile_id']])
        got = normalize(sample)
        assert all(same(got[key], expected[key]) for key in expected)
    # Shards written before the release was recorded: unknown.
    del manifest['data_version']
    (out / 'mmearth_shards.json').write_text(json.dumps(manifest))
    assert StreamingMMEarth(out, 'val', cache_dir=str(tmp_path / 'c2')).version is None
