from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import load_data_script
from torchgeo_mmearth.corpus import BuildReport, Location, build_corpus


@pytest.fixture(scope='session')
def corpus_data() -> ModuleType:
    """The generator of the corpus test rasters."""
    return load_data_script('corpus')


@pytest.fixture(scope='session')
def rasters(corpus_data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small rasters with known values (see tests/data/corpus/data.py)."""
    return corpus_data.write_rasters(tmp_path_factory.mktemp('rasters'))


def scene_point(data: ModuleType, col: int, row: int, scene: str = 'A') -> Location:
    """The lon/lat location of the centre of a 10 m pixel of a scene."""
    x0 = data.X0 if scene == 'A' else data.SCENE_B_X0
    lon, lat = data.utm_to_lonlat(x0 + 10 * col + 5, data.Y0 - 10 * row - 5)
    return Location(lon, lat)


def sample_locations(data: ModuleType) -> list[Location]:
    """Eight locations: 5 tiles, one duplicate, one mostly no-data, one outside."""
    return [
        scene_point(data, 30, 30),  # 0: scene A, fully valid
        scene_point(data, 50, 60),  # 1: scene A
        scene_point(data, 78, 40),  # 2: scene A, 6 of 16 columns no-data
        scene_point(data, 88, 40),  # 3: scene A, all no-data: dropped
        scene_point(data, 150, 40),  # 4: between the scenes: dropped
        scene_point(data, 40, 40, 'B'),  # 5: scene B (L2A)
        scene_point(data, 30, 30),  # 6: same pixels as 0: dropped
        scene_point(data, 70, 70, 'B'),  # 7: scene B
    ]


def sources(rasters: Path) -> dict[str, Any]:
    return {
        'sentinel1': {'paths': rasters / 's1', 'bands': ['VV', 'VH']},
        'aster': rasters / 'dem',
        'canopy_height_eth': rasters / 'canopy',
        'dynamic_world': rasters / 'dynamic_world',
        'biome': rasters / 'biome',
    }


def build(
    rasters: Path, data: ModuleType, root: Path, name: str = 'test', **kwargs: Any
) -> BuildReport:
    """Build the test corpus from the generated rasters."""
    from torchgeo_mmearth.corpus import GeoTiffSource

    inputs = sources(rasters)
    s1 = inputs.pop('sentinel1')
    inputs['sentinel1'] = GeoTiffSource.from_paths(
        s1['paths'], 'sentinel1', bands=s1['bands']
    )
    options: dict[str, Any] = {
        'tile_size': 16,
        'min_valid': 0.5,
        'splits': (0.6, 0.2, 0.2),
        'progress': False,
        'segment_size': 3,
    }
    options.update(kwargs)
    return build_corpus(
        root,
        name,
        rasters / 's2',
        options.pop('locations', None) or sample_locations(data),
        inputs,
        **options,
    )


@pytest.fixture(scope='session')
def built(
    rasters: Path, corpus_data: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildReport]:
    """The test corpus, built once: (root, report)."""
    root = tmp_path_factory.mktemp('built')
    return root, build(rasters, corpus_data, root)
