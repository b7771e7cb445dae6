import pytest
import torch

from torchgeo_mmearth.losses import (
    PretextTask,
    default_pretext_tasks,
    patchify,
    unpatchify,
)
from torchgeo_mmearth.modalities import Kind, Level

EXTRA = PretextTask('ndvi', Level.PIXEL, Kind.CONTINUOUS, 1)


class TestPatchify:
    def test_matches_elementwise_definition(self) -> None:
        batch, channels, size, rows, cols = 2, 3, 2, 2, 3
        images = torch.randn(batch, channels, rows * size, cols * size)
        patches = patchify(images, size)
        assert patches.shape == (batch, rows * cols, size * size * channels)
        for b in range(batch):
            for i in range(rows):
                for j in range(cols):
                    for p in range(size):
                        for q in range(size):
                            for c in range(channels):
                                index = (p * size + q) * channels + c
                                expected = images[b, c, i * size + p, j * size + q]
                                assert patches[b, i * cols + j, index] == expected

    @pytest.mark.parametrize('patch_size', [8, 16])
    @pytest.mark.parametrize('grid', [(2, 2), (7, 7), (2, 3)])
    def test_round_trip(self, patch_size: int, grid: tuple[int, int]) -> None:
        rows, cols = grid
        images = torch.randn(2, 3, rows * patch_size, cols * patch_size)
        patches = patchify(images, patch_size)
        restored = unpatchify(patches, patch_size, grid if rows != cols else None)
        assert torch.equal(restored, images)
        assert torch.equal(patchify(restored, patch_size), patches)

    def test_integer_maps(self) -> None:
        labels = torch.randint(-1, 9, (2, 1, 16, 16))
        assert torch.equal(unpatchify(patchify(labels, 8), 8), labels)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match='patch_size=8'):
            patchify(torch.zeros(1, 1, 12, 16), 8)
        with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
            patchify(torch.zeros(1, 16, 16), 8)
        with pytest.raises(ValueError, match='patch_size=8'):
            unpatchify(torch.zeros(1, 4, 65), 8)
        with pytest.raises(ValueError, match='grid_size'):
            unpatchify(torch.zeros(1, 6, 64), 8)
        with pytest.raises(ValueError, match='grid_size'):
            unpatchify(torch.zeros(1, 6, 64), 8, (2, 2))


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
