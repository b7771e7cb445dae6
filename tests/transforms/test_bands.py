import pytest
import torch

from torchgeo_mmearth.modalities import SENTINEL2_INPUT_BANDS, canonical_band_name
from torchgeo_mmearth.models import MMEarthWeights
from torchgeo_mmearth.transforms import SO2SAT_FILL, BandRemap, remap_bands

from .sentinel2 import raw_s2, zscore

HEADLINE = MMEarthWeights.S2_MP_MAE
RGB = MMEarthWeights.RGB_MAE

#: TorchGeo's EuroSAT band order (B8A last, with B10).
EUROSAT_BANDS = ('B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B09')
EUROSAT_BANDS += ('B10', 'B11', 'B12', 'B8A')
#: GEO-Bench / BigEarthNet order (B8 before B8A).
GEOBENCH_BANDS = ('B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A')
GEOBENCH_BANDS += ('B09', 'B11', 'B12')
#: TorchGeo's So2Sat Sentinel-2 bands (no B1, B9).
SO2SAT_BANDS = ('S2_B02', 'S2_B03', 'S2_B04', 'S2_B05', 'S2_B06', 'S2_B07')
SO2SAT_BANDS += ('S2_B08', 'S2_B8A', 'S2_B11', 'S2_B12')


class TestBandRemap:
    @pytest.mark.parametrize(
        ('name', 'band'),
        [
            ('B1', 'B1'),
            ('B01', 'B1'),
            ('b08', 'B8'),
            ('B8a', 'B8A'),
            ('B08A', 'B8A'),
            ('S2_B8A', 'B8A'),
            ('S2B12', 'B12'),
            ('sentinel2_b8a', 'B8A'),
            ('band_8a', 'B8A'),
        ],
    )
    def test_canonical_band_name(self, name: str, band: str) -> None:
        assert canonical_band_name(name) == band

    @pytest.mark.parametrize('name', ['B13', 'B9A', 'VV', 'red', ''])
    def test_not_a_band(self, name: str) -> None:
        with pytest.raises(ValueError, match='not a Sentinel-2 band name'):
            canonical_band_name(name)

    def test_b8_b8a_swapped(self) -> None:
        index = remap_bands(GEOBENCH_BANDS, HEADLINE)
        assert index == [0, 1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11]
        assert remap_bands(SENTINEL2_INPUT_BANDS, HEADLINE) == list(range(12))
        eurosat = remap_bands(EUROSAT_BANDS, HEADLINE)
        assert [EUROSAT_BANDS[i] for i in eurosat] == [
            'B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B8A', 'B08', 'B09', 'B11', 'B12'
        ]  # fmt: skip

    def test_other_sensors_are_skipped(self) -> None:
        bands = ('VV', 'VH', *GEOBENCH_BANDS)
        assert remap_bands(bands, HEADLINE)[7:9] == [10, 9]

    def test_fewer_bands(self) -> None:
        with pytest.raises(ValueError, match=r"lacks \['B1', 'B9'\].*SO2SAT_FILL"):
            remap_bands(SO2SAT_BANDS, HEADLINE)
        index = remap_bands(SO2SAT_BANDS, HEADLINE, fill=SO2SAT_FILL)
        assert [SO2SAT_BANDS[i] for i in index] == [
            'S2_B02', 'S2_B02', 'S2_B03', 'S2_B04', 'S2_B05', 'S2_B06', 'S2_B07',
            'S2_B8A', 'S2_B08', 'S2_B8A', 'S2_B11', 'S2_B12',
        ]  # fmt: skip

    def test_rgb(self) -> None:
        with pytest.raises(ValueError, match=r'MMEarthWeights\.RGB_MAE for B2, B3, B4'):
            remap_bands(('B04', 'B03', 'B02'), HEADLINE)
        assert remap_bands(('B04', 'B03', 'B02'), RGB) == [2, 1, 0]  # RGB -> BGR
        assert remap_bands(GEOBENCH_BANDS, RGB) == [1, 2, 3]

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match='has B8 twice'):
            remap_bands(('B8', 'B08', *SENTINEL2_INPUT_BANDS), HEADLINE)
        with pytest.raises(TypeError, match='sequence of band names'):
            remap_bands('B1', HEADLINE)
        with pytest.raises(ValueError, match='not a Sentinel-2 band name'):
            remap_bands(GEOBENCH_BANDS, ['B1', 'NIR'])

    def test_band_remap_module(self) -> None:
        remap = BandRemap(GEOBENCH_BANDS, HEADLINE)
        assert remap.bands == SENTINEL2_INPUT_BANDS
        x = raw_s2(2, 12, 3, 3)
        out = remap({'image': x, 'mask': 1})
        torch.testing.assert_close(out['image'][:, 7], x[:, 8])
        torch.testing.assert_close(out['image'][:, 8], x[:, 7])
        assert out['mask'] == 1
        torch.testing.assert_close(remap({'image': x[0]})['image'], out['image'][0])
        with pytest.raises(ValueError, match='must have 12 channels'):
            remap({'image': x[:, :3]})

    def test_transforms_for(self) -> None:
        x = raw_s2(13, 4, 4)
        out = HEADLINE.transforms_for(EUROSAT_BANDS, level='l1c')({'image': x})['image']
        index = remap_bands(EUROSAT_BANDS, HEADLINE)
        torch.testing.assert_close(out, zscore(x[index], 'l1c'))
        # So2Sat: reflectances in [0, 1]; each filled channel is z-scored with
        # the statistics of the band it holds (B2 in the B1 slot).
        y = raw_s2(10, 4, 4)
        transform = HEADLINE.transforms_for(
            SO2SAT_BANDS, fill=SO2SAT_FILL, scale=10_000
        )
        out = transform({'image': y.float() / 10_000})['image']
        assert transform[1].bands[:2] == ('B2', 'B2')
        torch.testing.assert_close(out[0], out[1])
        torch.testing.assert_close(
            out[1], zscore(y[:1], 'l2a', ['B2'])[0], atol=1e-4, rtol=0
        )
