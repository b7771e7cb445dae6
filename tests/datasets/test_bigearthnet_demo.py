from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from torchgeo.datasets import RGBBandsMissingError

from torchgeo_mmearth.corpus.demo import BIGEARTHNET_CLASSES
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.datasets.bigearthnet_demo import BigEarthNetDemo


class TestBigEarthNetDemo:
    def test_splits_and_samples(self, tmp_path: Path) -> None:
        lengths = {}
        for split in BigEarthNetDemo.splits:
            ds = BigEarthNetDemo(tmp_path, split)
            lengths[split] = len(ds)
            sample = ds[0]
            assert sample['image'].shape == (12, 64, 64)
            assert sample['image'].dtype == torch.float32
            assert sample['label'].shape == (43,)
            assert sample['label'].dtype == torch.long
            assert ds.labels.sum(dim=1).min() >= 1
        assert lengths == {'train': 40, 'val': 8, 'test': 8}

    def test_labels_follow_the_patch(self, tmp_path: Path) -> None:
        ds = BigEarthNetDemo(tmp_path, 'train')
        # tile 000000 comes from BigEarthNet patch S2A_MSIL2A_20170613T101031_87_48
        assert ds.tiles.indices[0] == 0
        names = {BIGEARTHNET_CLASSES[i] for i in ds[0]['label'].nonzero().flatten()}
        assert names == {
            'Non-irrigated arable land',
            (
                'Land principally occupied by agriculture, with significant areas '
                'of natural vegetation'
            ),
        }

    def test_image_is_raw_digital_numbers(self, tmp_path: Path) -> None:
        ds = BigEarthNetDemo(tmp_path, 'val', bands=['B4', 'B8'])
        raw = MMEarth(
            tmp_path,
            'MMEarthDemo',
            'val',
            modalities=['sentinel2'],
            modality_bands={'sentinel2': ['B4', 'B8']},
        )[3]['image_sentinel2']
        torch.testing.assert_close(ds[3]['image'], raw.float())

    def test_band_statistics(self, tmp_path: Path) -> None:
        ds = BigEarthNetDemo(tmp_path, bands=['B8A', 'B2'])
        mean, std = ds.band_statistics()
        stats = ds.tiles.band_stats['sentinel2_l2a']
        # stored order: B1-B7, B8A (7), B8 (8), ...
        assert mean.tolist() == pytest.approx([stats['mean'][7], stats['mean'][1]])
        assert std.tolist() == pytest.approx([stats['std'][7], stats['std'][1]])

    def test_transforms(self, tmp_path: Path) -> None:
        ds = BigEarthNetDemo(
            tmp_path, transforms=lambda s: {**s, 'image': s['image'] * 0}
        )
        assert (ds[0]['image'] == 0).all()

    def test_plot(self, tmp_path: Path) -> None:
        ds = BigEarthNetDemo(tmp_path, 'test')
        sample = ds[0]
        sample['prediction'] = sample['label']
        ds.plot(sample, suptitle='demo')
        plt.close()
        with pytest.raises(RGBBandsMissingError):
            BigEarthNetDemo(tmp_path, bands=['B8']).plot(ds[0])

    def test_unknown_split(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match='split'):
            BigEarthNetDemo(tmp_path, 'everything')

    def test_missing_labels(self, tmp_path: Path) -> None:
        source = BigEarthNetDemo(tmp_path).tiles.directory
        copy = tmp_path / 'data_bigearthnet_demo'
        copy.mkdir()
        for path in source.iterdir():
            if not path.name.endswith('_labels.json'):
                (copy / path.name).write_bytes(path.read_bytes())
        with pytest.raises(FileNotFoundError, match=r'labels\.json is missing'):
            BigEarthNetDemo(tmp_path)
