import json
import math
import shutil
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from torchgeo.datasets import RasterDataset

from tests.corpus.conftest import scene_point
from torchgeo_mmearth.corpus import (
    ERA5_VARIABLES,
    BuildReport,
    CorpusBuilder,
    GeoTiffSource,
    Location,
    TileGrid,
    TorchGeoSource,
    build_corpus,
)
from torchgeo_mmearth.corpus.cli import main
from torchgeo_mmearth.corpus.era5 import (
    Era5Window,
    era5_band_names,
    read_era5,
    tile_mean,
)
from torchgeo_mmearth.corpus.sources import normalize_band, parse_date
from torchgeo_mmearth.datasets import MMEarth
from torchgeo_mmearth.transforms import MMEarthNormalize

# Tiles: scene A (L1C, 2020-06-15) and two in scene B (L2A, 2020-07-01), about
# 0.03 degrees apart along the ERA5 temperature gradient.
POINTS = (('A', 30, 30), ('B', 40, 40), ('B', 70, 70))


class Era5Monthly(RasterDataset):
    filename_glob = 'era5_*.tif'
    filename_regex = r'era5_(?P<date>\d{4}-\d{2})\.tif'
    date_format = '%Y-%m'
    all_bands = ERA5_VARIABLES


class Undated(RasterDataset):
    filename_glob = 'era5_*.tif'
    all_bands = ERA5_VARIABLES


def locations(data: ModuleType) -> list[Location]:
    return [scene_point(data, col, row, scene) for scene, col, row in POINTS]


def build(
    rasters: Path, data: ModuleType, root: Path, era5: Any, **kwargs: Any
) -> BuildReport:
    """A corpus of the three tiles with an ERA5 source only."""
    return build_corpus(
        root,
        'era5',
        rasters / 's2',
        locations(data),
        {'era5': era5},
        tile_size=16,
        min_valid=0.5,
        splits=(1, 0, 0),
        progress=False,
        **kwargs,
    )


def read(root: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(era5 vector by tile id, tile_info, band_stats) of the built corpus."""
    folder = root / 'data_era5'
    with h5py.File(folder / 'data_era5.h5', 'r') as f:
        ids = [bytes(r['tile_id']).decode() for r in f['metadata'][:]]
        era5 = dict(zip(ids, f['era5'][...], strict=True))
    info = json.loads((folder / 'data_era5_tile_info.json').read_text())
    stats = json.loads((folder / 'data_era5_band_stats.json').read_text())
    return era5, info, stats


def month_values(data: ModuleType, year: int, month: int, lon: float) -> list[float]:
    return [data.era5_expected(v, year, month, lon) for v in ERA5_VARIABLES]


def expected(data: ModuleType, date: str, lon: float, year_months: int) -> np.ndarray:
    """The 12 values of a tile from the generator's closed form."""
    day = datetime.strptime(date, '%Y-%m-%d')
    window = Era5Window.of(day, year_months)
    year = np.array([month_values(data, *m, lon) for m in window.year])
    return np.array(
        month_values(data, *window.previous, lon)
        + month_values(data, *window.current, lon)
        + [year[:, 0].mean(), year[:, 1].min(), year[:, 2].max(), year[:, 3].sum()]
    )


def check_tiles(
    data: ModuleType,
    era5: dict[str, np.ndarray],
    info: dict[str, Any],
    year_months: int,
    nan: dict[str, list[int]] | None = None,
) -> None:
    """Every tile holds the closed form, NaN exactly at the listed elements."""
    for tile_id, values in era5.items():
        record = info[tile_id]
        want = expected(data, record['S2_DATE'], record['lon'], year_months)
        for index in (nan or {}).get(tile_id, []):
            want[index] = np.nan
        np.testing.assert_allclose(values, want, rtol=1e-6, atol=1e-4)
        # The published tile_info record holds the same raw values.
        raw = record['era5']['month1'] + record['era5']['month2']
        raw += record['era5']['year']
        np.testing.assert_array_equal(np.array(raw, np.float32), values)


@pytest.fixture(scope='module')
def built(
    rasters: Path, corpus_data: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildReport]:
    """The three tiles with the per-variable files, default (12-month) window."""
    root = tmp_path_factory.mktemp('era5')
    return root, build(rasters, corpus_data, root, rasters / 'era5')


def test_window_and_band_names() -> None:
    window = Era5Window.of(datetime(2020, 1, 15))
    assert (window.previous, window.current) == ((2019, 12), (2020, 1))
    assert window.year == ((2019, 2), *[(2019, m) for m in range(3, 13)], (2020, 1))
    published = Era5Window.of(datetime(2020, 1, 15), 13)
    assert published.year[0] == (2019, 1) and len(published.year) == 13
    assert era5_band_names(datetime(2020, 1, 15)) == [
        '201912_temperature_2m',
        '201912_temperature_2m_min',
        '201912_temperature_2m_max',
        '201912_total_precipitation_sum',
        '202001_temperature_2m',
        '202001_temperature_2m_min',
        '202001_temperature_2m_max',
        '202001_total_precipitation_sum',
        '0_temperature_2m_mean',
        '1_temperature_2m_min_min',
        '2_temperature_2m_max_max',
        '3_total_precipitation_sum_sum',
    ]
    assert normalize_band('era5', 'avg_temp') == 'temperature_2m'  # MMEarth's name
    assert normalize_band('era5', 'Total_Precip') == 'total_precipitation_sum'
    # A month alone is the first day of the month (not 2019-01-02).
    assert parse_date('201912', None, 'x') == datetime(2019, 12, 1)
    assert parse_date('2019-12', None, 'x') == datetime(2019, 12, 1)


def test_tile_mean_over_valid_pixels() -> None:
    assert tile_mean(np.array([[1.0, np.nan], [3.0, np.inf]])) == 2.0
    assert math.isnan(tile_mean(np.full((2, 2), np.nan)))
    assert math.isnan(tile_mean(None))


class TestValues:
    def test_twelve_values(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        era5, info, _ = read(built[0])
        assert len(era5) == 3
        check_tiles(corpus_data, era5, info, 12)
        a = era5['000000']  # 2020-06-15: month index 18
        np.testing.assert_allclose(a[[1, 2, 3]], [277, 297, 0.17], rtol=1e-6)
        np.testing.assert_allclose(a[[5, 6, 7]], [278, 298, 0.18], rtol=1e-6)
        # 2019-07 .. 2020-06: min of 260 + k from 7, max 280 + 18, sum 0.01 * 150.
        np.testing.assert_allclose(a[[9, 10, 11]], [267, 298, 1.5], rtol=1e-6)

    def test_tile_info(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        _, info, _ = read(built[0])
        a, b = info['000000'], info['000001']
        assert a['BANDS']['era5'] == era5_band_names(datetime(2020, 6, 15))
        assert b['BANDS']['era5'][0] == '202006_temperature_2m'
        assert list(a['era5']) == ['month1', 'month2', 'year']
        assert a['ERA5_MONTHS'] == {
            'month1': '2020-05',
            'month2': '2020-06',
            'year': ['2019-07', '2020-06'],
            'missing': {},
        }
        used = [entry['acquisition'] for entry in a['SOURCES']['era5']]
        assert used == [f'ERA5_LAND_2019{m:02d}' for m in range(7, 13)] + [
            f'ERA5_LAND_2020{m:02d}' for m in range(1, 7)
        ]
        # Keys in the published order: era5 follows BANDS.
        keys = list(a)
        assert keys.index('era5') == keys.index('BANDS') + 1

    def test_gradient_is_interpolated(
        self, built: tuple[Path, BuildReport], corpus_data: ModuleType
    ) -> None:
        # The tiles (160 m) are far smaller than an ERA5 cell (0.1 degrees): each
        # gets the temperature interpolated at its location, not its cell's.
        era5, info, _ = read(built[0])
        for tile_id in ('000001', '000002'):
            lon = info[tile_id]['lon']
            offset = era5[tile_id][4] - (270 + 19)
            assert offset == pytest.approx(
                corpus_data.ERA5_GRADIENT * (lon - 9), abs=1e-4
            )
            assert offset > 0.5  # the nearest cell centre (9.0) would give 0
        assert era5['000002'][4] - era5['000001'][4] == pytest.approx(
            corpus_data.ERA5_GRADIENT * (info['000002']['lon'] - info['000001']['lon']),
            abs=1e-4,
        )

    def test_statistics_and_coverage(self, built: tuple[Path, BuildReport]) -> None:
        root, report = built
        era5, _, stats = read(root)
        values = np.stack(list(era5.values())).astype(np.float64)
        np.testing.assert_allclose(stats['era5']['mean'], values.mean(0), rtol=1e-6)
        np.testing.assert_allclose(stats['era5']['std'], values.std(0), atol=1e-6)
        np.testing.assert_allclose(stats['era5']['min'], values.min(0), rtol=1e-6)
        np.testing.assert_allclose(stats['era5']['max'], values.max(0), rtol=1e-6)
        assert report.coverage['era5'].tiles_with_data == 3
        assert report.coverage['era5'].valid_fraction == 1.0

    def test_reads_with_the_datasets(self, built: tuple[Path, BuildReport]) -> None:
        root, _ = built
        ds = MMEarth(root, 'data_era5', 'train', modalities=['sentinel2', 'era5'])
        sample = MMEarthNormalize(ds.band_stats, ds.modality_bands)(ds[0])
        assert sample['era5'].shape == (12,)
        assert np.isfinite(sample['era5'].numpy()).all()  # usable statistics


def test_published_year_window(
    rasters: Path, corpus_data: ModuleType, tmp_path: Path
) -> None:
    build(rasters, corpus_data, tmp_path, rasters / 'era5', era5_year_months=13)
    era5, info, _ = read(tmp_path)
    check_tiles(corpus_data, era5, info, 13)
    # 2019-06 .. 2020-06 for scene A: 13 months, June twice.
    np.testing.assert_allclose(era5['000000'][[9, 10, 11]], [266, 298, 1.56], rtol=1e-6)
    assert info['000000']['ERA5_MONTHS']['year'] == ['2019-06', '2020-06']


class TestMissingMonths:
    def copy(self, rasters: Path, tmp_path: Path, *skip: str) -> Path:
        folder = tmp_path / 'era5'
        folder.mkdir()
        for path in (rasters / 'era5').iterdir():
            if not any(part in path.name for part in skip):
                shutil.copy(path, folder)
        return folder

    def test_missing_variable(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        # No precipitation in 2019-07: only scene A's 12-month window holds it.
        era5 = self.copy(rasters, tmp_path, '201907_total_precipitation_sum')
        report = build(rasters, corpus_data, tmp_path, era5)
        values, info, stats = read(tmp_path)
        check_tiles(corpus_data, values, info, 12, nan={'000000': [11]})
        assert info['000000']['ERA5_MONTHS']['missing'] == {
            '2019-07': ['total_precipitation_sum']
        }
        assert info['000001']['ERA5_MONTHS']['missing'] == {}
        # Statistics over finite values only: year precipitation from scene B.
        assert stats['era5']['mean'][11] == pytest.approx(1.62, rel=1e-6)
        assert stats['era5']['std'][11] == pytest.approx(0, abs=1e-6)
        assert report.coverage['era5'].tiles_with_data == 3
        assert report.coverage['era5'].valid_fraction == pytest.approx(
            (11 / 12 + 1 + 1) / 3
        )

    def test_missing_month(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        # No 2020-05 at all: scene A's previous month, in both tiles' windows.
        era5 = self.copy(rasters, tmp_path, '202005')
        report = build(rasters, corpus_data, tmp_path, era5)
        values, info, stats = read(tmp_path)
        year = [8, 9, 10, 11]
        check_tiles(
            corpus_data,
            values,
            info,
            12,
            nan={'000000': [0, 1, 2, 3, *year], '000001': year, '000002': year},
        )
        assert info['000000']['ERA5_MONTHS']['missing'] == {
            '2020-05': list(ERA5_VARIABLES)
        }
        assert all(math.isnan(v) for v in stats['era5']['mean'][8:])
        assert stats['era5']['mean'][0] == pytest.approx(
            np.mean([values[t][0] for t in ('000001', '000002')]), rel=1e-6
        )
        assert report.coverage['era5'].valid_fraction == pytest.approx(
            (4 / 12 + 8 / 12 + 8 / 12) / 3
        )

    def test_outside_the_raster(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        # A raster covering scene A only: scene B's tiles have no ERA5.
        folder = tmp_path / 'small'
        folder.mkdir()
        lon, lat = corpus_data.utm_to_lonlat(corpus_data.X0, corpus_data.Y0)
        for year, month in corpus_data.ERA5_MONTHS:
            with rasterio.open(
                folder / f'era5_{year}{month:02d}.tif',
                'w',
                driver='GTiff',
                width=2,
                height=2,
                count=4,
                dtype='float32',
                crs='EPSG:4326',
                transform=Affine(0.01, 0, lon - 0.01, 0, -0.01, lat + 0.01),
            ) as dst:
                dst.write(
                    np.stack(
                        [
                            np.full((2, 2), corpus_data.era5_expected(v, year, month))
                            for v in ERA5_VARIABLES
                        ]
                    ).astype(np.float32)
                )
        source = GeoTiffSource.from_paths(folder, 'era5', bands=list(ERA5_VARIABLES))
        report = build(rasters, corpus_data, tmp_path, source)
        values, info, _ = read(tmp_path)
        assert np.isfinite(values['000000']).all()
        assert values['000000'][4] == 288  # no gradient in this raster
        assert np.isnan(values['000001']).all() and np.isnan(values['000002']).all()
        assert info['000001']['BANDS']['era5'] is None
        assert info['000001']['SOURCES']['era5'] == []
        assert report.coverage['era5'].tiles_with_data == 1


class TestSources:
    def test_multiband_files(self, rasters: Path, corpus_data: ModuleType) -> None:
        per_variable = GeoTiffSource.from_paths(rasters / 'era5', 'era5')
        multiband = GeoTiffSource.from_paths(rasters / 'era5_multiband', 'era5')
        assert multiband.bands == per_variable.bands == ERA5_VARIABLES  # described
        grid = scene_b_grid(corpus_data)
        a = read_era5(per_variable, grid, datetime(2020, 7, 1))
        b = read_era5(multiband, grid, datetime(2020, 7, 1))
        np.testing.assert_array_equal(a.raw, b.raw)
        assert np.isfinite(a.raw).all() and a.missing == {}

    def test_bands_argument(self, rasters: Path, tmp_path: Path) -> None:
        path = tmp_path / 'era5_202006.tif'
        shutil.copy(rasters / 'era5_multiband' / 'era5_2020-06.tif', path)
        with rasterio.open(path, 'r+') as dst:
            for i in range(1, 5):
                dst.set_band_description(i, '')
        with pytest.raises(
            ValueError,
            match=r'era5_202006\.tif holds 4 bands but their names are unknown: pass '
            r'bands=.*or band descriptions naming them',
        ):
            GeoTiffSource.from_paths(path, 'era5')
        source = GeoTiffSource.from_paths(
            path, 'era5', bands=['avg_temp', 'min_temp', 'max_temp', 'total_precip']
        )
        assert source.bands == ERA5_VARIABLES
        assert source.acquisitions[0].date == datetime(2020, 6, 1)

    def test_torchgeo_dataset(self, rasters: Path, corpus_data: ModuleType) -> None:
        dataset = Era5Monthly(rasters / 'era5_multiband')
        files = CorpusBuilder(rasters / 's2', {'era5': rasters / 'era5'}, 16)
        torchgeo = CorpusBuilder(rasters / 's2', {'era5': dataset}, 16)
        assert isinstance(torchgeo.sources['era5'], TorchGeoSource)
        for index, location in enumerate(locations(corpus_data)):
            a = files.make_tile(index, location)
            b = torchgeo.make_tile(index, location)
            np.testing.assert_allclose(
                b.arrays['era5'],  # type: ignore[union-attr]
                a.arrays['era5'],  # type: ignore[union-attr]
                rtol=1e-6,
            )


def scene_b_grid(data: ModuleType) -> TileGrid:
    """A 16 px tile grid of scene B."""
    transform = Affine(10, 0, data.SCENE_B_X0 + 400, 0, -10, data.Y0 - 400)
    return TileGrid(CRS.from_string(data.CRS_UTM), transform, 16)


def test_cli(
    rasters: Path,
    corpus_data: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    location = locations(corpus_data)[0]
    args = [
        '--root',
        str(tmp_path),
        '--name',
        'era5',
        '--sentinel2',
        str(rasters / 's2'),
        '--source',
        f'era5={rasters / "era5_multiband"}',
        '--era5-year-months',
        '13',
        '--point',
        str(location.x),
        str(location.y),
        '--tile-size',
        '16',
        '--splits',
        '1',
        '0',
        '0',
        '--no-progress',
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'era5' in out and '1/1' in out
    era5, info, _ = read(tmp_path)
    check_tiles(corpus_data, era5, info, 13)
    assert main([*args, '--era5-year-months', '0']) == 2
    assert 'era5_year_months must be an integer >= 1' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['--help'])
    assert '--era5-year-months' in capsys.readouterr().out


class TestErrors:
    def write(self, path: Path, count: int = 1, west: float = 8.75) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(
            path,
            'w',
            driver='GTiff',
            width=6,
            height=5,
            count=count,
            dtype='float32',
            crs='EPSG:4326',
            transform=Affine(0.1, 0, west, 0, -0.1, 45.35),
        ) as dst:
            dst.write(np.full((count, 5, 6), 280, np.float32))
        return path

    def test_band_count_and_names(self, rasters: Path) -> None:
        path = rasters / 'era5_multiband' / 'era5_2020-06.tif'
        with pytest.raises(
            ValueError, match=r'holds 4 bands, but 3 band names were given'
        ):
            GeoTiffSource.from_paths(path, 'era5', bands=list(ERA5_VARIABLES[:3]))
        with pytest.raises(
            ValueError,
            match=r"Unknown band 't2m' for a 'era5' source; valid bands are "
            r"\['temperature_2m'",
        ):
            GeoTiffSource.from_paths(path, 'era5', bands=['t2m', 'a', 'b', 'c'])

    def test_descriptions_that_are_not_variables(self, tmp_path: Path) -> None:
        path = self.write(tmp_path / 'era5_202006.tif', count=2)
        with rasterio.open(path, 'r+') as dst:
            dst.set_band_description(1, 't2m')
            dst.set_band_description(2, 'tp')
        with pytest.raises(
            ValueError, match=r"its descriptions \['t2m', 'tp'\] are not all ERA5"
        ):
            GeoTiffSource.from_paths(path, 'era5')

    def test_undated(self, tmp_path: Path) -> None:
        path = self.write(tmp_path / 'era5_temperature_2m.tif')
        with pytest.raises(
            ValueError, match=r"ERA5 scene 'era5' \(.*era5_temperature_2m\.tif\) has "
        ):
            GeoTiffSource.from_paths(path, 'era5')

    def test_two_dates_in_a_month(self, tmp_path: Path) -> None:
        self.write(tmp_path / 'era5_20200601_temperature_2m.tif')
        self.write(tmp_path / 'era5_20200615_temperature_2m.tif')
        with pytest.raises(ValueError, match='has two dates in 2020-06'):
            GeoTiffSource.from_paths(tmp_path, 'era5')

    def test_longitudes_0_to_360(self, tmp_path: Path) -> None:
        path = self.write(tmp_path / 'era5_202006_temperature_2m.tif', west=359.5)
        with pytest.raises(ValueError, match=r'beyond 180 degrees \(a 0-360 grid\)'):
            GeoTiffSource.from_paths(path, 'era5')

    def test_options(self, rasters: Path) -> None:
        with pytest.raises(ValueError, match='max_days=5 does not apply'):
            GeoTiffSource.from_paths(rasters / 'era5', 'era5', max_days=5)
        with pytest.raises(ValueError, match='era5_year_months must be an integer'):
            CorpusBuilder(
                rasters / 's2', {'era5': rasters / 'era5'}, era5_year_months=0
            )
        undated = Undated(rasters / 'era5_multiband')
        with pytest.raises(ValueError, match='has no date: the ERA5 dataset needs'):
            TorchGeoSource(undated, 'era5')
