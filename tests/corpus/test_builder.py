import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from rasterio.warp import transform

from tests.corpus.conftest import build, scene_point, sources
from torchgeo_mmearth.corpus import BuildReport, CorpusBuilder, GeoTiffSource
from torchgeo_mmearth.corpus.writer import METADATA_DTYPE, make_splits
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.modalities import MODALITIES
from torchgeo_mmearth.transforms import MMEarthNormalize

NAME = 'data_test'


def tiles(root: Path, name: str = NAME) -> dict[str, dict[str, np.ndarray]]:
    """Every tile of a corpus, by tile id, read with plain h5py."""
    with h5py.File(root / name / f'{name}.h5', 'r') as f:
        ids = [bytes(r['tile_id']).decode() for r in f['metadata'][:]]
        return {
            tile_id: {key: f[key][row] for key in f} for row, tile_id in enumerate(ids)
        }


def load(root: Path, suffix: str, name: str = NAME) -> Any:
    return json.loads((root / name / f'{name}{suffix}').read_text())


def pixel_lonlat(
    info: dict[str, Any], col: int, row: int, size: int = 16
) -> tuple[float, float]:
    """Lon/lat of pixel (row, col) of a tile, from its centre in tile_info."""
    x, y = transform('EPSG:4326', info['CRS'], [info['lon']], [info['lat']])
    left, top = x[0] - 10 * size / 2, y[0] + 10 * size / 2
    lon, lat = transform(
        info['CRS'], 'EPSG:4326', [left + 10 * col + 5], [top - 10 * row - 5]
    )
    return lon[0], lat[0]


def tile_origin(
    info: dict[str, Any], corpus_data: ModuleType, size: int = 16
) -> tuple[int, int]:
    """(col, row) of a tile's top-left pixel in its scene's 10 m grid."""
    x, y = transform('EPSG:4326', info['CRS'], [info['lon']], [info['lat']])
    x0 = corpus_data.X0 if info['S2_type'] == 'l1c' else corpus_data.SCENE_B_X0
    return round((x[0] - 80 - x0) / 10), round((corpus_data.Y0 - y[0] - 80) / 10)


class TestLayout:
    def test_files(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        folder = root / NAME
        assert sorted(p.name for p in folder.iterdir()) == [
            f'{NAME}{s}'
            for s in (
                '.h5',
                '_band_stats.json',
                '_build_report.json',
                '_splits.json',
                '_tile_info.json',
            )
        ]

    def test_published_layout(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        with h5py.File(root / NAME / f'{NAME}.h5', 'r') as f:
            assert list(f) == sorted([*MODALITIES, 'metadata'])
            for name, modality in MODALITIES.items():
                dataset = f[name]
                assert dataset.dtype == np.dtype(modality.dtype), name
                channels = (
                    modality.num_classes if modality.one_hot else len(modality.bands)
                )
                assert dataset.shape[:2] == (5, channels)
                assert dataset.chunks == (1, *dataset.shape[1:])
                assert dataset.compression == 'gzip'
                assert dataset.maxshape == dataset.shape
            assert f['metadata'].dtype == METADATA_DTYPE
            assert f['metadata'].chunks == (1,)
            # The release whose no-data placeholders the builder writes.
            assert dict(f.attrs) == {'version': 'v1.0'}
            assert f['sentinel2'].shape == (5, 13, 16, 16)

    def test_tile_ids_and_info(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        info = load(root, '_tile_info.json')
        assert (
            list(tiles(root))
            == list(info)
            == ['000000', '000001', '000002', '000005', '000007']
        )
        record = info['000000']
        assert record['S2_DATE'] == '2020-06-15'
        assert record['S2_type'] == 'l1c'
        assert record['CRS'] == 'EPSG:32632'
        assert record['BANDS']['sentinel1_asc'] == ['VV', 'VH']
        assert record['BANDS']['esa_worldcover'] is None
        assert info['000005']['S2_type'] == 'l2a'
        assert 'B10' not in info['000005']['BANDS']['sentinel2']


class TestSentinel2:
    def test_values_on_the_grid(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        root, _ = built
        info = load(root, '_tile_info.json')['000000']
        col0, row0 = tile_origin(info, corpus_data)
        assert (col0, row0) == (22, 22)  # centred on pixel (30, 30)
        s2 = tiles(root)['000000']['sentinel2']
        cols = np.arange(col0, col0 + 16)
        for k, band in enumerate(MODALITIES['sentinel2'].bands):
            # 10 m bands are copied; 20 m and 60 m ramps are resampled bilinearly.
            expected = np.tile(corpus_data.s2_expected(band, cols), (16, 1))
            np.testing.assert_array_equal(s2[k], expected, err_msg=band)

    def test_nodata_is_kept(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        root, _ = built
        s2 = tiles(root)['000002']['sentinel2']  # columns 70..85, no-data from 80
        ten_m = [
            MODALITIES['sentinel2'].bands.index(b) for b in ('B2', 'B3', 'B4', 'B8')
        ]
        assert (s2[ten_m][:, :, 10:] == 0).all()
        assert (s2[ten_m][:, :, :10] > 0).all()
        assert (s2[MODALITIES['sentinel2'].bands.index('B5')] > 0).all()

    def test_l2a_scene(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        tile = tiles(root)['000005']
        assert bytes(tile['metadata']['S2_type']) == b'l2a'
        for k, band in enumerate(MODALITIES['sentinel2'].bands):
            expected = 0 if band == 'B10' else 500 + 10 * k
            assert (tile['sentinel2'][k] == expected).all(), band
        assert set(np.unique(tile['sentinel2_scl'])) == {4, 5}  # nearest: no new class
        assert (tile['sentinel2_cloudmask'] == 65535).all()
        assert (tile['sentinel2_cloudprod'] == 65535).all()


class TestPairing:
    def test_sentinel1_reprojected_from_degrees(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        root, _ = built
        info = load(root, '_tile_info.json')['000000']
        s1 = tiles(root)['000000']['sentinel1']
        for col, row in ((0, 0), (8, 8), (15, 3)):
            lon, lat = pixel_lonlat(info, col, row)
            # The ascending acquisition 5 days before (not the one 10 days after).
            assert s1[0, row, col] == pytest.approx(
                -10 + 100 * (lon - corpus_data.LON0), abs=0.01
            )
            assert s1[1, row, col] == pytest.approx(
                -20 + 100 * (lat - corpus_data.LAT0), abs=0.01
            )
        # The descending acquisition, 1 day before; no HH/HV.
        assert (s1[4] == -7).all() and (s1[5] == -8).all()
        assert np.isneginf(s1[[2, 3, 6, 7]]).all()
        dates = {p['orbit']: p['date'] for p in info['SOURCES']['sentinel1']}
        assert dates == {'asc': '2020-06-10T17:30:00', 'desc': '2020-06-14T05:30:00'}

    def test_outside_coverage_is_nodata(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        assert np.isneginf(tiles(root)['000005']['sentinel1']).all()

    @pytest.mark.parametrize(
        ('max_days', 'asc', 'desc'),
        [(30, -10, -7), (11, -10, -7), (4, None, -7), (0.5, None, None)],
    )
    def test_window(
        self,
        rasters: Path,
        corpus_data: ModuleType,
        max_days: float,
        asc: float | None,
        desc: float | None,
    ) -> None:
        s1 = GeoTiffSource.from_paths(rasters / 's1', 'sentinel1', bands=['VV', 'VH'])
        builder = CorpusBuilder(
            rasters / 's2', {'sentinel1': s1}, tile_size=4, max_days=max_days
        )
        tile = builder.make_tile(0, scene_point(corpus_data, 30, 30))
        stored = tile.arrays['sentinel1']  # type: ignore[union-attr]
        for channel, value in ((0, asc), (4, desc)):
            if value is None:
                assert np.isneginf(stored[channel]).all()
            else:
                assert abs(stored[channel].mean() - value) < 0.5

    def test_nearest_date(self, rasters: Path, corpus_data: ModuleType) -> None:
        # With the early ascending file gone, the one 10 days after is paired.
        files = [p for p in (rasters / 's1').iterdir() if '20200610' not in p.name]
        s1 = GeoTiffSource.from_paths(files, 'sentinel1', bands=['VV', 'VH'])
        builder = CorpusBuilder(rasters / 's2', {'sentinel1': s1}, tile_size=4)
        tile = builder.make_tile(0, scene_point(corpus_data, 30, 30))
        assert (tile.arrays['sentinel1'][0] == -5).all()  # type: ignore[union-attr]


class TestOtherModalities:
    def test_dem_elevation_and_slope(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        root, _ = built
        for tile_id, tile in tiles(root).items():
            info = load(root, '_tile_info.json')[tile_id]
            col0, _ = tile_origin(info, corpus_data)
            x0 = corpus_data.X0 if info['S2_type'] == 'l1c' else corpus_data.SCENE_B_X0
            x = x0 + 10 * (col0 + np.arange(16)) + 5
            np.testing.assert_array_equal(
                tile['aster'][0], np.tile(np.rint(corpus_data.dem_expected(x)), (16, 1))
            )
            # A plane rising 0.2 m per m: atan(0.2) = 11.3 degrees, border pixels too.
            assert (tile['aster'][1] == round(math.degrees(math.atan(0.2)))).all()

    def test_canopy_height(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        data = tiles(root)
        assert (
            data['000000']['canopy_height_eth'] == np.array([20, 5])[:, None, None]
        ).all()
        # No-data (255 in the source, or no source) is the int8 placeholder 127.
        assert (data['000001']['canopy_height_eth'] == 127).all()
        assert (data['000005']['canopy_height_eth'] == 127).all()

    def test_dynamic_world_nearest(
        self, built: tuple[Path, BuildReport], rasters: Path
    ) -> None:
        root, _ = built
        import rasterio

        with rasterio.open(rasters / 'dynamic_world' / 'dynamic_world.tif') as src:
            labels = src.read(1)
            inverse = ~src.transform
        info = load(root, '_tile_info.json')
        matches = total = 0
        for tile_id, tile in tiles(root).items():
            codes = tile['dynamic_world'][0]
            assert set(np.unique(codes)) <= set(
                range(1, 10)
            )  # raw labels + 1, no blends
            assert len(np.unique(codes)) >= 5
            for row in range(0, 16, 3):
                for col in range(0, 16, 3):
                    lon, lat = pixel_lonlat(info[tile_id], col, row)
                    x, y = transform('EPSG:4326', 'EPSG:3857', [lon], [lat])
                    j, i = (int(v) for v in inverse @ (x[0], y[0]))
                    matches += codes[row, col] == labels[i, j] + 1
                    total += 1
        assert matches / total > 0.95

    def test_missing_modalities_are_nodata(
        self, built: tuple[Path, BuildReport]
    ) -> None:
        root, report = built
        for tile in tiles(root).values():
            assert (tile['esa_worldcover'] == 0).all()
            assert (tile['eco_region'] == 0).all()
            assert np.isnan(tile['era5']).all()
        assert (tiles(root)['000000']['sentinel2_cloudmask'] == 65535).all()
        assert report.coverage['esa_worldcover'].tiles_with_data == 0

    def test_biome_one_hot(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        for tile in tiles(root).values():
            assert tile['biome'].tolist() == [int(i == 4) for i in range(14)]
        assert load(root, '_tile_info.json')['000000']['biome'] == 4

    def test_lat_lon_month(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        info = load(root, '_tile_info.json')
        for tile_id, tile in tiles(root).items():
            lat, lon = (math.radians(info[tile_id][k]) for k in ('lat', 'lon'))
            np.testing.assert_allclose(
                tile['lat'], [math.sin(lat), math.cos(lat)], rtol=1e-6
            )
            np.testing.assert_allclose(
                tile['lon'], [math.sin(lon), math.cos(lon)], rtol=1e-6
            )
            month = 6 if info[tile_id]['S2_type'] == 'l1c' else 7
            angle = 2 * math.pi * month / 12
            np.testing.assert_allclose(
                tile['month'], [math.sin(angle), math.cos(angle)], atol=1e-7
            )


class TestStatistics:
    def test_keys(self, built: tuple[Path, BuildReport]) -> None:
        stats = load(built[0], '_band_stats.json')
        assert list(stats) == [
            'sentinel2_l1c',
            'sentinel2_l2a',
            'sentinel2_cloudprod',
            'sentinel1',
            'aster',
            'era5',
            'canopy_height_eth',
            'lat',
            'lon',
            'month',
        ]
        for key, entry in stats.items():
            assert set(entry) == {'mean', 'std', 'min', 'max'}, key

    def test_valid_pixels_only(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        stats = load(root, '_band_stats.json')
        data = tiles(root)
        l1c = np.stack(
            [data[t]['sentinel2'] for t in ('000000', '000001', '000002')]
        ).astype(float)
        for k in range(13):
            values = l1c[:, k][l1c[:, k] > 0]  # zeros (no-data) excluded
            assert stats['sentinel2_l1c']['mean'][k] == pytest.approx(values.mean())
            assert stats['sentinel2_l1c']['std'][k] == pytest.approx(values.std())
            assert stats['sentinel2_l1c']['min'][k] == values.min()
        # L2A apart: constant bands, and B10 (all no-data) NaN.
        l2a = stats['sentinel2_l2a']
        assert l2a['mean'][0] == 500 and l2a['std'][0] == 0
        assert math.isnan(l2a['mean'][10]) and math.isnan(l2a['std'][10])
        s1 = np.stack([t['sentinel1'] for t in data.values()])
        assert stats['sentinel1']['mean'][4] == pytest.approx(-7)
        assert math.isnan(stats['sentinel1']['mean'][2])  # HH never valid
        assert stats['sentinel1']['max'][0] == pytest.approx(
            s1[:, 0][np.isfinite(s1[:, 0])].max()
        )
        assert stats['canopy_height_eth']['mean'] == [20, 5]  # 127 excluded
        assert all(math.isnan(v) for v in stats['era5']['mean'])
        assert stats['aster']['mean'][1] == 11

    def test_normalised_reads(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        ds = MMEarth(root, NAME, 'train', modalities=list(MODALITIES))
        normalize = MMEarthNormalize(ds.band_stats, ds.modality_bands)
        for index in range(len(ds)):
            sample = normalize(ds[index])
            if sample['s2_type'] == 1:
                continue  # the L2A test bands are constant: std 0, unusable
            s2 = sample['image_sentinel2']
            raw = torch.from_numpy(
                tiles(root)[sample['tile_id']]['sentinel2'].astype(np.float32)
            )
            keep = [
                i for i, b in enumerate(MODALITIES['sentinel2'].bands) if b != 'B10'
            ]
            assert torch.equal(torch.isnan(s2), raw[keep] == 0)


class TestSplitsAndReport:
    def test_splits(self, built: tuple[Path, BuildReport]) -> None:
        root, report = built
        splits = load(root, '_splits.json')
        rows = splits['train'] + splits['val'] + splits['test']
        assert sorted(rows) == list(range(5))
        assert [len(splits[s]) for s in ('train', 'val', 'test')] == [3, 1, 1]
        assert report.splits == {'train': 3, 'val': 1, 'test': 1}

    def test_make_splits_seeded(self) -> None:
        groups = [f'g{i // 2}' for i in range(40)]
        a = make_splits(groups, (0.7, 0.15, 0.15), seed=1)
        assert a == make_splits(groups, (0.7, 0.15, 0.15), seed=1)
        assert a != make_splits(groups, (0.7, 0.15, 0.15), seed=2)
        assert [len(a[s]) for s in a] == [28, 6, 6]
        # Groups never straddle splits.
        for split, rows in a.items():
            for other, other_rows in a.items():
                if split != other:
                    assert not {groups[r] for r in rows} & {
                        groups[r] for r in other_rows
                    }

    def test_small_splits_are_not_empty(self) -> None:
        splits = make_splits(['a', 'b', 'c'], (0.9, 0.05, 0.05), seed=0)
        assert all(len(rows) == 1 for rows in splits.values())

    def test_report(self, built: tuple[Path, BuildReport]) -> None:
        root, report = built
        assert report.tiles_written == 5 and report.locations == 8
        assert report.dropped == {
            'duplicate': 1,
            'outside_sentinel2': 1,
            'too_little_valid_sentinel2': 1,
        }
        assert [d[:2] for d in report.dropped_locations] == [
            (3, 'too_little_valid_sentinel2'),
            (4, 'outside_sentinel2'),
            (6, 'duplicate'),
        ]
        assert report.coverage['sentinel1'].tiles_with_data == 3
        assert report.coverage['aster'].valid_fraction == 1.0
        assert load(root, '_build_report.json') == json.loads(
            json.dumps(report.to_json())
        )
        summary = report.summary()
        assert '5 tiles written' in summary and 'too little valid Sentinel-2' in summary


class TestReaders:
    def test_our_reader(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        lengths = {}
        for split in MMEarth.splits:
            ds = MMEarth(root, NAME, split, modalities=list(MODALITIES))
            lengths[split] = len(ds)
            assert ds.version == 'v1.0'  # from the file: the name states none
            normalize = MMEarthNormalize(
                ds.band_stats, ds.modality_bands, version=ds.version
            )
            sample = normalize(ds[0])
            assert ds.tile_size == 16
            assert sample['image_sentinel2'].shape == (12, 16, 16)
            assert sample['mask_dynamic_world'].min() >= 0
            assert (sample['mask_esa_worldcover'] == -1).all()
            assert sample['biome'] == 4 and sample['eco_region'] == -1
        assert lengths == {'train': 3, 'val': 1, 'test': 1}

    # The test's L2A bands are constant (std 0): TorchGeo divides by it.
    @pytest.mark.filterwarnings('ignore:.*encountered in divide:RuntimeWarning')
    def test_torchgeo_reader(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        from torchgeo.datasets import MMEarth as TorchGeoMMEarth

        locations = [
            scene_point(corpus_data, 48, 48),
            scene_point(corpus_data, 48, 48, 'B'),
        ]
        build(
            rasters,
            corpus_data,
            tmp_path,
            '1M_v001_64',
            tile_size=64,
            locations=locations,
            splits=(1, 0, 0),
        )
        ds = TorchGeoMMEarth(tmp_path, subset='MMEarth64')
        assert len(ds) == 2
        for index in range(2):
            sample = ds[index]
            assert sample['image_sentinel2'].shape == (13, 64, 64)
            assert sample['image_sentinel1_asc'].shape == (4, 64, 64)
            assert sample['image_aster'].shape == (2, 64, 64)
            date = sample['date']
            if isinstance(date, torch.Tensor):  # TorchGeo 0.10: POSIX seconds
                date = pd.Timestamp(round(date.item()), unit='s').strftime('%Y-%m-%d')
            assert date in ('2020-06-15', '2020-07-01')
        ours = MMEarth(tmp_path, 'MMEarth64', modalities=['sentinel2', 'sentinel1'])
        assert len(ours) == 2 and ours.tile_size == 64
        normalize = MMEarthNormalize(ours.band_stats, ours.modality_bands)
        assert torch.isfinite(normalize(ours[0])['image_sentinel2']).all()


def test_progress_bar(
    rasters: Path,
    corpus_data: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build(
        rasters,
        corpus_data,
        tmp_path,
        progress=True,
        locations=[scene_point(corpus_data, 30, 30)],
        splits=(1, 0, 0),
    )
    assert 'data_test' in capsys.readouterr().err


def test_sources_as_paths(rasters: Path, corpus_data: ModuleType) -> None:
    inputs = sources(rasters)
    inputs['sentinel1'] = GeoTiffSource.from_paths(
        **inputs['sentinel1'], modality='sentinel1'
    )
    builder = CorpusBuilder(rasters / 's2', inputs, tile_size=8)
    assert set(builder.sources) == {
        'sentinel1',
        'aster',
        'canopy_height_eth',
        'dynamic_world',
        'biome',
    }
