import pytest

from torchgeo_mmearth.modalities import Kind, Level, PretextTask, default_pretext_tasks

EXTRA = PretextTask('ndvi', Level.PIXEL, Kind.CONTINUOUS, 1)


class TestPretextTask:
    def test_defaults(self) -> None:
        tasks = default_pretext_tasks()
        # OUT_MODALITIES of vishalned/MMEarth-train: indexes the released log_vars
        assert [task.name for task in tasks] == [
            'sentinel2',
            'sentinel1',
            'aster',
            'era5',
            'dynamic_world',
            'canopy_height_eth',
            'lat',
            'lon',
            'biome',
            'eco_region',
            'month',
            'esa_worldcover',
        ]
        summary = {task.name: (task.level, task.kind, task.channels) for task in tasks}
        assert summary == {
            'sentinel2': (Level.PIXEL, Kind.CONTINUOUS, 12),
            'sentinel1': (Level.PIXEL, Kind.CONTINUOUS, 8),
            'aster': (Level.PIXEL, Kind.CONTINUOUS, 2),
            'era5': (Level.IMAGE, Kind.CONTINUOUS, 12),
            'dynamic_world': (Level.PIXEL, Kind.CATEGORICAL, 9),
            'canopy_height_eth': (Level.PIXEL, Kind.CONTINUOUS, 2),
            'lat': (Level.IMAGE, Kind.CONTINUOUS, 2),
            'lon': (Level.IMAGE, Kind.CONTINUOUS, 2),
            'biome': (Level.IMAGE, Kind.CATEGORICAL, 14),
            'eco_region': (Level.IMAGE, Kind.CATEGORICAL, 846),
            'month': (Level.IMAGE, Kind.CONTINUOUS, 2),
            'esa_worldcover': (Level.PIXEL, Kind.CATEGORICAL, 11),
        }

    def test_keys_match_dataset(self) -> None:
        keys = {task.name: task.key for task in default_pretext_tasks()}
        assert keys['sentinel2'] == 'image_sentinel2'
        assert keys['dynamic_world'] == 'mask_dynamic_world'
        assert keys['esa_worldcover'] == 'mask_esa_worldcover'
        assert keys['era5'] == 'era5'
        assert keys['biome'] == 'biome'
        assert EXTRA.key == 'image_ndvi'

    def test_from_modality_bands(self) -> None:
        assert PretextTask.from_modality('sentinel2', ['B2', 'B3', 'B4']).channels == 3
        assert PretextTask.from_modality('sentinel1', ['asc_VV']).channels == 1
        scl = PretextTask.from_modality('sentinel2_scl')
        assert (scl.level, scl.kind, scl.channels) == (
            Level.PIXEL,
            Kind.CATEGORICAL,
            12,
        )

    def test_strings_are_coerced(self) -> None:
        task = PretextTask('x', 'image', 'categorical', 3)  # type: ignore[arg-type]
        assert task.level is Level.IMAGE and task.kind is Kind.CATEGORICAL
        assert task.key == 'x'

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match='Unknown modality'):
            PretextTask.from_modality('sentinel3')
        with pytest.raises(ValueError, match='Unknown band'):
            PretextTask.from_modality('sentinel2', ['B13'])
        with pytest.raises(ValueError, match='categorical'):
            PretextTask.from_modality('biome', ['biome'])
        with pytest.raises(ValueError, match='channels'):
            PretextTask('x', Level.PIXEL, Kind.CONTINUOUS, 0)
        with pytest.raises(ValueError, match='name'):
            PretextTask('a.b', Level.PIXEL, Kind.CONTINUOUS, 1)
        with pytest.raises(ValueError, match='level or kind'):
            PretextTask('x', 'voxel', Kind.CONTINUOUS, 1)  # type: ignore[arg-type]
