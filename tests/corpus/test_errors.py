from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.corpus.conftest import build, scene_point
from torchgeo_mmearth.corpus import (
    CorpusBuilder,
    GeoTiffSource,
    Location,
    as_source,
    build_corpus,
)


def write(
    path: Path, crs: str | None, x0: float = 500000, y0: float = 5000000, count: int = 1
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        'driver': 'GTiff',
        'width': 8,
        'height': 8,
        'count': count,
        'dtype': 'float32',
        'transform': Affine(10, 0, x0, 0, -10, y0),
    }
    if crs is not None:
        profile['crs'] = crs
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(np.ones((count, 8, 8), np.float32))
    return path


class TestInputErrors:
    def test_source_without_overlap(self, rasters: Path, tmp_path: Path) -> None:
        dem = write(tmp_path / 'far' / 'dem.tif', 'EPSG:32633', 300000, 6000000)
        with pytest.raises(
            ValueError,
            match=r'aster source \(1 files in .*far\) does not overlap the Sentinel-2',
        ):
            CorpusBuilder(rasters / 's2', {'aster': dem})

    def test_locations_without_overlap(self, rasters: Path, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError, match='None of the 2 locations lies inside the Sentinel-2'
        ):
            build_corpus(
                tmp_path,
                'x',
                rasters / 's2',
                [(0.0, 0.0), (10.0, 10.0)],
                progress=False,
            )
        assert not (tmp_path / 'data_x').exists()

    def test_raster_without_crs(self, rasters: Path, tmp_path: Path) -> None:
        path = write(tmp_path / 'nocrs' / 'dem.tif', None)
        with pytest.raises(ValueError, match=r'dem\.tif has no CRS'):
            CorpusBuilder(rasters / 's2', {'aster': path})

    def test_unknown_modality(self, rasters: Path) -> None:
        with pytest.raises(
            ValueError,
            match=r"Unknown modality 'sentinel3' in sources; modalities with a source are \['sentinel1'",
        ):
            CorpusBuilder(rasters / 's2', {'sentinel3': rasters / 's1'})
        with pytest.raises(ValueError, match="Unknown modality 'lat' for a source"):
            GeoTiffSource.from_paths(rasters / 's1', 'lat')

    def test_unwritable_output(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        blocker = tmp_path / 'file'
        blocker.write_text('not a folder')
        with pytest.raises(
            OSError, match=r'output folder .*file/data_test is not writable'
        ):
            build(rasters, corpus_data, blocker)

    def test_geographic_sentinel2(self, tmp_path: Path) -> None:
        path = write(tmp_path / 's2' / 'L2A_20200101_B02.tif', 'EPSG:4326', 9, 45)
        with pytest.raises(ValueError, match='in the geographic CRS EPSG:4326'):
            CorpusBuilder(path)

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match='nowhere does not exist'):
            GeoTiffSource.from_paths(tmp_path / 'nowhere', 'aster')

    def test_no_matching_file(self, rasters: Path) -> None:
        with pytest.raises(FileNotFoundError, match="No 'aster' raster matches"):
            GeoTiffSource.from_paths(rasters / 'dem', 'aster', filename_regex='nothing')

    def test_unknown_level(self, rasters: Path, tmp_path: Path) -> None:
        path = write(tmp_path / 's2' / 'scene_20200101_B02.tif', 'EPSG:32632')
        with pytest.raises(ValueError, match=r'processing level of .*B02\.tif.*level='):
            GeoTiffSource.from_paths(path, 'sentinel2')
        source = GeoTiffSource.from_paths(path, 'sentinel2', level='l2a')
        assert source.acquisitions[0].level == 'l2a'

    def test_sentinel2_without_date(self, tmp_path: Path) -> None:
        path = write(tmp_path / 's2' / 'L2A_B02.tif', 'EPSG:32632')
        with pytest.raises(ValueError, match='has no acquisition date'):
            GeoTiffSource.from_paths(path, 'sentinel2')

    def test_unknown_orbit(self, tmp_path: Path) -> None:
        path = write(tmp_path / 's1' / 's1_20200101_dual.tif', 'EPSG:32632', count=2)
        with pytest.raises(ValueError, match=r'orbit direction of .*dual\.tif'):
            GeoTiffSource.from_paths(path, 'sentinel1', bands=['VV', 'VH'])

    def test_multiband_needs_band_names(self, rasters: Path) -> None:
        with pytest.raises(
            ValueError, match=r'holds 2 bands but their names are unknown: pass bands='
        ):
            GeoTiffSource.from_paths(rasters / 's1', 'sentinel1')
        with pytest.raises(
            ValueError, match='holds 2 bands, but 3 band names were given'
        ):
            GeoTiffSource.from_paths(
                rasters / 's1', 'sentinel1', bands=['VV', 'VH', 'HH']
            )

    def test_unknown_band(self, rasters: Path) -> None:
        with pytest.raises(
            ValueError, match="Unknown band 'B13' for a 'sentinel2' source"
        ):
            GeoTiffSource.from_paths(
                rasters / 's1', 'sentinel2', bands=['B13'], level='l1c'
            )

    def test_bad_options(self, rasters: Path, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match='min_valid must be in'):
            CorpusBuilder(rasters / 's2', min_valid=2)
        with pytest.raises(ValueError, match="split_by must be 'tile' or 'scene'"):
            CorpusBuilder(rasters / 's2', split_by='patch')
        with pytest.raises(ValueError, match='tile_size must be an integer'):
            CorpusBuilder(rasters / 's2', tile_size=0)
        builder = CorpusBuilder(rasters / 's2')
        with pytest.raises(
            ValueError, match='splits must be three non-negative fractions'
        ):
            builder.build(tmp_path, 'x', [(9.0, 45.0)], splits=(0.5, 0.5, 0.5))
        with pytest.raises(ValueError, match='Invalid corpus name'):
            builder.build(tmp_path, '../x', [Location(500305, 4999695, 'EPSG:32632')])

    def test_bad_source_values(self, rasters: Path) -> None:
        with pytest.raises(
            TypeError, match="The 'aster' source must be a ModalitySource"
        ):
            as_source(42, 'aster')
        dem = GeoTiffSource.from_paths(rasters / 'dem', 'aster')
        with pytest.raises(
            ValueError, match="given for 'canopy_height_eth' is a 'aster' source"
        ):
            as_source(dem, 'canopy_height_eth')

    def test_bad_locations(self, rasters: Path, tmp_path: Path) -> None:
        builder = CorpusBuilder(rasters / 's2')
        with pytest.raises(ValueError, match='No locations were given'):
            builder.build(tmp_path, 'x', [])
        with pytest.raises(ValueError, match='two finite numbers'):
            builder.build(tmp_path, 'x', [(1.0, 2.0, 3.0)])
        with pytest.raises(ValueError, match="Two locations have the tile id 'a'"):
            builder.build(
                tmp_path, 'x', [Location(9, 45, id='a'), Location(9, 45, id='a')]
            )

    def test_every_location_dropped(
        self, rasters: Path, corpus_data: ModuleType, tmp_path: Path
    ) -> None:
        with pytest.raises(
            ValueError, match=r'No tile was written .*too_little_valid_sentinel2'
        ):
            build(
                rasters,
                corpus_data,
                tmp_path,
                locations=[scene_point(corpus_data, 88, 40)],
            )
