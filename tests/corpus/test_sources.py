import json
from datetime import datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from rasterio.crs import CRS
from torchgeo import samplers
from torchgeo.datasets import RasterDataset, Sentinel2

from tests.corpus.conftest import scene_point
from torchgeo_mmearth._compat import TORCHGEO_TASKS
from torchgeo_mmearth.corpus import (
    CorpusBuilder,
    GeoTiffSource,
    TileGrid,
    TorchGeoSource,
    grid_locations,
    locations_from_geojson,
    locations_from_sampler,
    orbit_from_time,
    resolve_locations,
)
from torchgeo_mmearth.corpus.sources import normalize_band
from torchgeo_mmearth.modalities import MODALITIES


class Canopy(RasterDataset):
    filename_glob = 'canopy*.tif'
    all_bands = ('height', 'std')


class DynamicWorld(RasterDataset):
    filename_glob = 'dynamic_world*.tif'
    is_image = False


def grid(data: ModuleType, col: int, row: int, size: int = 16) -> TileGrid:
    from affine import Affine

    transform = Affine(10, 0, data.X0 + 10 * col, 0, -10, data.Y0 - 10 * row)
    return TileGrid(CRS.from_string(data.CRS_UTM), transform, size)


@pytest.mark.parametrize(
    ('modality', 'band', 'name'),
    [
        ('sentinel2', 'B02', 'B2'),
        ('sentinel2', 'b8a', 'B8A'),
        ('sentinel2', 'B10', 'B10'),
        ('sentinel2', 'scl', 'SCL'),
        ('sentinel1', 'vv', 'VV'),
        ('sentinel1', 'ASC_vh', 'asc_VH'),
        ('canopy_height_eth', 'Height', 'height'),
        ('esa_worldcover', 'Map', 'map'),
    ],
)
def test_normalize_band(modality: str, band: str, name: str) -> None:
    assert normalize_band(modality, band) == name


def test_orbit_from_time() -> None:
    # BigEarthNet's Austrian S1 patch (16:50 UTC at 13.7 E) and Portuguese one.
    assert orbit_from_time(datetime(2017, 6, 13, 16, 50, 43), 13.7) == 'asc'
    assert orbit_from_time(datetime(2017, 12, 21, 6, 42, 38), -8.2) == 'desc'
    assert orbit_from_time(datetime(2020, 1, 1, 23, 0), 30.0) == 'desc'  # 01:00 local


class TestGeoTiffSource:
    def test_scenes_from_file_names(self, rasters: Path) -> None:
        source = GeoTiffSource.from_paths(rasters / 's2', 'sentinel2')
        assert sorted(source.scenes) == [
            'S2A_MSIL1C_20200615T103021_T32TMR',
            'S2B_MSIL2A_20200701T103031_T32TMR',
        ]
        a, b = source.acquisitions
        assert (a.level, a.date) == ('l1c', datetime(2020, 6, 15, 10, 30, 21))
        assert b.level == 'l2a'
        assert len(source.scenes[a.scenes[0]].bands) == 13
        assert set(source.scenes[b.scenes[0]].bands) == (
            set(MODALITIES['sentinel2'].bands) - {'B10'}
        ) | {'SCL'}
        assert a.lattice.a == 10  # the finest band's grid

    def test_orbits_from_time(self, rasters: Path) -> None:
        source = GeoTiffSource.from_paths(
            rasters / 's1', 'sentinel1', bands=['VV', 'VH']
        )
        assert [(a.date.day, a.orbit) for a in source.acquisitions] == [  # type: ignore[union-attr]
            (10, 'asc'),
            (14, 'desc'),
            (25, 'asc'),
        ]

    def test_orbit_group(self, rasters: Path, tmp_path: Path) -> None:
        orbits = {'20200610': 'ascending', '20200614': 'DESC', '20200625': 'asc'}
        for path in (rasters / 's1').iterdir():
            date = path.name[12:27]
            (tmp_path / f'S1_{orbits[date[:8]]}_{date}.tif').write_bytes(
                path.read_bytes()
            )
        source = GeoTiffSource.from_paths(
            tmp_path,
            'sentinel1',
            filename_regex=r'S1_(?P<orbit>[a-zA-Z]+)_(?P<date>\d{8})T',
            bands=['VV', 'VH'],
        )
        # Dates without time; the orbit group decides.
        assert [(a.date, a.orbit) for a in source.acquisitions] == [
            (datetime(2020, 6, 10), 'asc'),
            (datetime(2020, 6, 14), 'desc'),
            (datetime(2020, 6, 25), 'asc'),
        ]
        with pytest.raises(ValueError, match="unknown orbit direction 'B'"):
            GeoTiffSource.from_paths(
                rasters / 's1',
                'sentinel1',
                filename_regex=r'S1(?P<orbit>[AB])_.*_(?P<date>\d{8})T',
                bands=['VV', 'VH'],
            )

    def test_static_mosaic(self, rasters: Path) -> None:
        source = GeoTiffSource.from_paths(rasters / 'dem', 'aster')
        (acquisition,) = source.acquisitions
        assert acquisition.date is None


class TestTorchGeoSource:
    def test_same_grid_reads_directly(
        self, rasters: Path, corpus_data: ModuleType
    ) -> None:
        dataset = Canopy(rasters / 'canopy', res=10)
        torchgeo = TorchGeoSource(dataset, 'canopy_height_eth')
        files = GeoTiffSource.from_paths(rasters / 'canopy', 'canopy_height_eth')
        assert torchgeo.nodata == 255 and torchgeo.bands == ('height', 'std')
        tile = grid(corpus_data, 32, 10)  # straddles the no-data columns from 40
        a = torchgeo.read(torchgeo.acquisitions[0], tile)
        b = files.read(files.acquisitions[0], tile)
        for band in ('height', 'std'):
            np.testing.assert_array_equal(a[band], b[band])
        assert np.isnan(a['height'][:, 8:]).all() and (a['height'][:, :8] == 20).all()

    def test_other_crs_is_warped(self, rasters: Path, corpus_data: ModuleType) -> None:
        dataset = DynamicWorld(rasters / 'dynamic_world')
        torchgeo = TorchGeoSource(dataset, 'dynamic_world', bands=['landcover'])
        files = GeoTiffSource.from_paths(rasters / 'dynamic_world', 'dynamic_world')
        tile = grid(corpus_data, 20, 20)
        a = torchgeo.read(torchgeo.acquisitions[0], tile)['landcover']
        b = files.read(files.acquisitions[0], tile)['landcover']
        assert set(np.unique(a)) <= set(range(9))  # nearest: no new classes
        assert (a == b).mean() > 0.95

    def test_sentinel2_anchor(self, rasters: Path, corpus_data: ModuleType) -> None:
        bands = [
            'B01',
            'B02',
            'B03',
            'B04',
            'B05',
            'B06',
            'B07',
            'B08',
            'B8A',
            'B09',
            'B10',
            'B11',
            'B12',
        ]
        dataset = Sentinel2(rasters / 's2_torchgeo', bands=bands, res=10)
        anchor = TorchGeoSource(dataset, 'sentinel2', level='l1c')
        assert anchor.acquisitions[0].date == datetime(2020, 6, 15, 10, 30, 21)
        builder = CorpusBuilder(anchor, tile_size=16, min_valid=0.5)
        tile = builder.make_tile(0, scene_point(corpus_data, 30, 30))
        reference = CorpusBuilder(rasters / 's2', tile_size=16).make_tile(
            0, scene_point(corpus_data, 30, 30)
        )
        s2, expected = tile.arrays['sentinel2'], reference.arrays['sentinel2']  # type: ignore[union-attr]
        ten_m = [
            MODALITIES['sentinel2'].bands.index(b) for b in ('B2', 'B3', 'B4', 'B8')
        ]
        np.testing.assert_array_equal(s2[ten_m], expected[ten_m])
        # 20 m and 60 m bands: TorchGeo's merge resamples, close to the warp.
        assert np.abs(s2.astype(int) - expected).max() <= 8
        assert tile.s2_type == 'l1c'  # type: ignore[union-attr]

    def test_sampler_locations(self, rasters: Path) -> None:
        dataset = Sentinel2(rasters / 's2_torchgeo', bands=['B02'], res=10)
        if TORCHGEO_TASKS:  # TorchGeo 0.10: spatial samplers, no CRS, no dates
            sampler = samplers.GriddedPatchSampler(dataset, size=32, stride=32)
            with pytest.raises(ValueError, match=r'pass it, locations_from_sampler'):
                locations_from_sampler(sampler)
            with pytest.raises(ValueError, match='does not record the CRS'):
                resolve_locations(sampler)
            locations = locations_from_sampler(sampler, crs=dataset.crs)
        else:
            sampler = samplers.GridGeoSampler(dataset, size=32, stride=32)
            locations = locations_from_sampler(sampler)
            assert locations[0].date is not None
            assert resolve_locations(sampler) == locations
        assert len(locations) == 9
        assert locations[0].crs == 'EPSG:32632'


class TestLocations:
    def test_geojson(self, tmp_path: Path) -> None:
        path = tmp_path / 'points.geojson'
        path.write_text(
            json.dumps(
                {
                    'type': 'FeatureCollection',
                    'features': [
                        {
                            'type': 'Feature',
                            'id': 'a',
                            'geometry': {'type': 'Point', 'coordinates': [9.0, 45.1]},
                            'properties': {'date': '2020-06-15'},
                        },
                        {
                            'type': 'Feature',
                            'geometry': {
                                'type': 'Polygon',
                                'coordinates': [
                                    [[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]
                                ],
                            },
                            'properties': {},
                        },
                        {
                            'type': 'Feature',
                            'geometry': {
                                'type': 'MultiPoint',
                                'coordinates': [[1, 1], [3, 3]],
                            },
                            'properties': {'id': 'm'},
                        },
                    ],
                }
            )
        )
        a, polygon, m0, m1 = locations_from_geojson(path)
        assert (a.x, a.y, a.id, a.date) == (9.0, 45.1, 'a', datetime(2020, 6, 15))
        assert (polygon.x, polygon.y, polygon.id) == (1.0, 1.0, None)
        assert (m0.id, m1.id, m1.x) == ('m_0', 'm_1', 3.0)

    def test_bad_geojson(self, tmp_path: Path) -> None:
        path = tmp_path / 'bad.geojson'
        path.write_text('{"type": "Topology"}')
        with pytest.raises(ValueError, match='is not a GeoJSON FeatureCollection'):
            locations_from_geojson(path)

    def test_grid_locations(self, rasters: Path, corpus_data: ModuleType) -> None:
        source = GeoTiffSource.from_paths(rasters / 's2', 'sentinel2')
        locations = grid_locations(source, tile_size=32, stride=32)
        assert len(locations) == 18  # 3 x 3 tiles in each 96 px scene
        first = locations[0]
        # Centre of pixel (16, 16) of the first tile of scene A.
        assert (first.x, first.y) == (corpus_data.X0 + 165, corpus_data.Y0 - 165)
        assert len(grid_locations(source, tile_size=64, stride=32)) == 8
