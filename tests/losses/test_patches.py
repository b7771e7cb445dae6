import pytest
import torch

from torchgeo_mmearth.losses import patchify, unpatchify


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
