import pytest
import torch
from timm.models.convnext import ConvNeXtBlock
from torch import Tensor, nn

from torchgeo_mmearth.losses import MultiPretextLoss, unpatchify
from torchgeo_mmearth.modalities import Kind, Level, PretextTask, default_pretext_tasks
from torchgeo_mmearth.models.mpmae_decoder import MultiPretextDecoder

ENCODER_DIM = 16
DECODER_DIM = 24
EXTRA = PretextTask('ndvi', Level.PIXEL, Kind.CONTINUOUS, 1)


def make_decoder(
    tasks: tuple[PretextTask, ...] | None = None, patch_size: int = 8, **kwargs: object
) -> MultiPretextDecoder:
    tasks = default_pretext_tasks() if tasks is None else tasks
    return MultiPretextDecoder(
        ENCODER_DIM, patch_size, tasks, decoder_dim=DECODER_DIM, **kwargs
    )


def random_mask(batch: int, rows: int, cols: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, rows, cols, generator=generator) < 0.6
    mask[:, 0, 0] = True  # at least one masked and one visible cell
    mask[:, -1, -1] = False
    return mask


class TestMultiPretextDecoder:
    @pytest.mark.parametrize('patch_size', [8, 16])
    @pytest.mark.parametrize('grid', [2, 7])
    @pytest.mark.parametrize('shared', [True, False])
    def test_output_shapes(self, patch_size: int, grid: int, shared: bool) -> None:
        tasks = (*default_pretext_tasks()[::3], EXTRA)
        decoder = make_decoder(tasks, patch_size, shared_decoder=shared)
        features = torch.randn(2, ENCODER_DIM, grid, grid)
        outputs = decoder(features, random_mask(2, grid, grid))
        assert list(outputs) == [task.name for task in tasks]
        for task in tasks:
            if task.level is Level.PIXEL:
                shape: tuple[int, ...] = (2, grid * grid, patch_size**2 * task.channels)
            else:
                shape = (2, task.channels)
            assert outputs[task.name].shape == shape

    def test_all_tasks_non_square_grid(self) -> None:
        decoder = make_decoder()
        outputs = decoder(torch.randn(1, ENCODER_DIM, 2, 3), random_mask(1, 2, 3))
        assert outputs['sentinel2'].shape == (1, 6, 64 * 12)
        assert outputs['eco_region'].shape == (1, 846)
        maps = unpatchify(outputs['dynamic_world'], 8, (2, 3))
        assert maps.shape == (1, 9, 16, 24)

    def test_flat_mask(self) -> None:
        decoder = make_decoder((EXTRA,)).eval()
        features = torch.randn(2, ENCODER_DIM, 3, 3)
        mask = random_mask(2, 3, 3)
        expected = decoder(features, mask)['ndvi']
        assert torch.equal(decoder(features, mask.flatten(1).float())['ndvi'], expected)

    def test_shared_decoder_runs_once(self) -> None:
        decoder = make_decoder(decoder_depth=2)
        assert decoder.decoder is not None
        calls = []
        for block in decoder.decoder:
            block.register_forward_hook(lambda *_: calls.append(1))
        decoder(torch.randn(2, ENCODER_DIM, 2, 2), random_mask(2, 2, 2))
        assert len(calls) == 2  # once per block, not once per task
        assert len(decoder.decoders) == 0 and len(decoder.image_norms) == 0
        # One LayerNorm for all six image-level heads.
        assert decoder.image_norm is not None

    def test_per_task_decoders(self) -> None:
        tasks = default_pretext_tasks()
        decoder = make_decoder(shared_decoder=False)
        calls: dict[str, int] = {}
        for name, module in decoder.decoders.items():
            module.register_forward_hook(
                lambda *_, name=name: calls.update({name: calls.get(name, 0) + 1})
            )
        decoder(torch.randn(2, ENCODER_DIM, 2, 2), random_mask(2, 2, 2))
        assert calls == {task.name: 1 for task in tasks}
        image = {task.name for task in tasks if task.level is Level.IMAGE}
        assert set(decoder.image_norms) == image
        assert decoder.decoder is None and decoder.image_norm is None

    def test_parameter_count(self) -> None:
        tasks = default_pretext_tasks()
        shared = make_decoder()
        separate = make_decoder(shared_decoder=False)
        assert shared.decoder is not None
        block = sum(p.numel() for p in shared.decoder.parameters())
        num_image = sum(task.level is Level.IMAGE for task in tasks)
        extra = (len(tasks) - 1) * block + (num_image - 1) * 2 * DECODER_DIM

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        assert count(separate) - count(shared) == extra

    def test_reference_block_size(self) -> None:
        # The reference decoder block of width 512 has 2 130 432 parameters.
        block = ConvNeXtBlock(512, conv_mlp=False, use_grn=True, ls_init_value=None)
        assert sum(p.numel() for p in block.parameters()) == 2_130_432

    def test_grn_eps(self) -> None:
        decoder = make_decoder((EXTRA,), grn_eps=1e-5)
        assert decoder.decoder is not None
        assert decoder.decoder[0].mlp.grn.eps == 1e-5
        default = make_decoder((EXTRA,)).decoder
        assert default is not None and default[0].mlp.grn.eps == 1e-4

    def test_mask_token_placement(self) -> None:
        decoder = make_decoder((EXTRA, default_pretext_tasks()[3]))
        assert decoder.decoder is not None
        seen: list[Tensor] = []
        decoder.decoder.register_forward_hook(lambda _, args, __: seen.append(args[0]))
        features = torch.randn(3, ENCODER_DIM, 4, 4)
        mask = random_mask(3, 4, 4)
        decoder(features, mask)
        projected = decoder.proj(features)
        token = decoder.mask_token.expand_as(projected)
        cells = mask.unsqueeze(1).expand_as(projected)
        assert torch.equal(seen[0][cells], token[cells])
        assert torch.equal(seen[0][~cells], projected[~cells])
        assert torch.equal(seen[0], decoder.embed(features, mask))

    def test_masked_features_are_ignored(self) -> None:
        decoder = make_decoder((EXTRA,)).eval()
        features = torch.randn(2, ENCODER_DIM, 3, 3)
        mask = random_mask(2, 3, 3)
        changed = features.clone()
        changed[mask.unsqueeze(1).expand_as(features)] = float('nan')
        expected = decoder(features, mask)['ndvi']
        assert torch.equal(decoder(changed, mask)['ndvi'], expected)

    def test_gradients_reach_every_parameter(self) -> None:
        decoder = make_decoder(shared_decoder=False)
        outputs = decoder(torch.randn(2, ENCODER_DIM, 2, 2), random_mask(2, 2, 2))
        torch.stack(
            [output.square().mean() for output in outputs.values()]
        ).sum().backward()
        for name, parameter in decoder.named_parameters():
            # GRN starts at zero, so the first MLP layer gets no gradient yet.
            if 'mlp.fc1' not in name:
                assert parameter.grad is not None, name
                assert parameter.grad.abs().sum() > 0, name

    def test_reference_init(self) -> None:
        torch.manual_seed(0)
        decoder = MultiPretextDecoder(64, 8, default_pretext_tasks(), decoder_dim=128)
        assert decoder.decoder is not None
        block = decoder.decoder[0]
        # Conv2d: truncated N(0, 1) on [-2, 2], std 0.88.
        for weight in (decoder.proj.weight, decoder.heads['sentinel2'].weight):
            assert 0.83 < weight.std() < 0.93
            assert weight.abs().max() <= 2
        assert 0.75 < block.conv_dw.weight.std() < 1.0
        for weight in (block.mlp.fc1.weight, decoder.heads['era5'].weight):
            assert 0.017 < weight.std() < 0.023
        for bias in (decoder.proj.bias, block.mlp.fc1.bias, decoder.heads['era5'].bias):
            assert not bias.any()
        assert not block.mlp.grn.weight.any() and not block.mlp.grn.bias.any()
        assert decoder.image_norm is not None
        assert (decoder.image_norm.weight == 1).all()
        assert 0.015 < decoder.mask_token.std() < 0.025

    def test_timm_init(self) -> None:
        torch.manual_seed(0)
        decoder = MultiPretextDecoder(
            64, 8, default_pretext_tasks(), decoder_dim=128, init='timm'
        )
        assert decoder.decoder is not None
        for weight in (
            decoder.proj.weight,
            decoder.heads['sentinel2'].weight,
            decoder.decoder[0].mlp.fc2.weight,
        ):
            assert 0.018 < weight.std() < 0.022

    def test_bad_input(self) -> None:
        tasks = default_pretext_tasks()
        with pytest.raises(ValueError, match='init'):
            make_decoder(init='xavier')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match='duplicate'):
            make_decoder((EXTRA, EXTRA))
        with pytest.raises(ValueError, match='at least one'):
            make_decoder(())
        with pytest.raises(ValueError, match='patch_size'):
            make_decoder(tasks, 0)
        with pytest.raises(ValueError, match='decoder_depth'):
            make_decoder(decoder_depth=-1)
        decoder = make_decoder((EXTRA,))
        with pytest.raises(ValueError, match='encoder_dim=16'):
            decoder(torch.randn(1, 8, 2, 2), random_mask(1, 2, 2))
        with pytest.raises(ValueError, match='mask'):
            decoder(torch.randn(1, ENCODER_DIM, 2, 2), random_mask(1, 3, 3))


def test_end_to_end_with_loss() -> None:
    torch.manual_seed(0)
    tasks = (*default_pretext_tasks(), EXTRA)
    decoder = make_decoder(tasks)
    loss = MultiPretextLoss(tasks, 8)
    mask = random_mask(2, 2, 2)
    batch = {
        'image_sentinel2': torch.randn(2, 12, 16, 16),
        'image_sentinel1': torch.full((2, 8, 16, 16), float('nan')),
        'image_aster': torch.randn(2, 2, 16, 16),
        'image_canopy_height_eth': torch.randn(2, 2, 16, 16),
        'image_ndvi': torch.randn(2, 1, 16, 16),
        'mask_dynamic_world': torch.randint(-1, 9, (2, 1, 16, 16)),
        'mask_esa_worldcover': torch.randint(-1, 11, (2, 1, 16, 16)),
        'era5': torch.randn(2, 12),
        'lat': torch.randn(2, 2),
        'lon': torch.randn(2, 2),
        'month': torch.randn(2, 2),
        'biome': torch.tensor([3, -1]),
        'eco_region': torch.tensor([845, 0]),
    }
    total, task_losses, valid = loss(
        decoder(torch.randn(2, 16, 2, 2), mask), batch, mask
    )
    assert set(task_losses) == set(valid) == {task.name for task in tasks}
    assert task_losses['sentinel1'].item() == 0 and valid['sentinel1'].item() == 0
    total.backward()
    assert torch.isfinite(total)
    for name, parameter in [*decoder.named_parameters(), *loss.named_parameters()]:
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
