import math
from collections.abc import Callable

import pytest
import timm
import torch
from timm.models.convnext import ConvNeXt
from torch import Tensor, nn

import torchgeo_mmearth.models  # noqa: F401  (registers the timm models)
from torchgeo_mmearth.models import MMEarthConvNeXtV2
from torchgeo_mmearth.models import masked_encoder as me
from torchgeo_mmearth.models.masked_encoder import (
    PACKED_MAX_ACTIVE_FRACTION,
    masked_forward,
    masked_forward_intermediates,
    random_patch_mask,
    upsample_mask,
)

from . import sparse_reference

pytestmark = pytest.mark.usefixtures('single_thread')

PATHS = ('dense', 'packed')
POOLINGS = ('batch', 'sample')
SMALL = {'depths': (1, 1, 2, 1), 'dims': (8, 16, 24, 32)}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights far from identity: GRN, LayerNorm affines and biases too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            if param.dim() > 1:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif 'norm' in name and name.endswith('weight'):
                param.copy_(1 + 0.3 * noise)
            else:
                param.copy_(0.5 * noise)
    return model


def small_model(patch_size: int = 8, in_chans: int = 5, **kwargs: float) -> nn.Module:
    model = MMEarthConvNeXtV2(
        in_chans=in_chans, patch_size=patch_size, **SMALL, **kwargs
    )
    return randomize(model).double().eval()


def inputs(
    batch: int,
    in_chans: int,
    height: int,
    width: int,
    patch_size: int,
    *,
    mask_ratio: float = 0.6,
    nodata: float = 0.15,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Random input and active mask: visible patches minus random no-data pixels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_chans, height, width, generator=gen, dtype=torch.float64)
    grid = (height // patch_size, width // patch_size)
    patches = random_patch_mask(batch, grid, mask_ratio, generator=gen)
    valid = torch.rand(batch, 1, height, width, generator=gen) >= nodata
    active = ~upsample_mask(patches, patch_size)[:, None] & valid
    # Inactive pixels hold garbage, non-finite values included: they must be ignored.
    x[:, :, 0, 0] = torch.where(active[:, 0, 0, 0, None], x[:, :, 0, 0], math.nan)
    return x, active


def assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * scale)


def assert_matches_reference(
    model: nn.Module,
    x: Tensor,
    active: Tensor,
    paths: tuple[str, ...] = PATHS,
    poolings: tuple[str, ...] = POOLINGS,
) -> None:
    for pooling in poolings:
        expected = sparse_reference.encoder(model, x, active, pooling)
        for path in paths:
            actual = masked_forward_intermediates(
                model, x, active, grn_pooling=pooling, path=path
            )
            assert len(actual) == len(expected)
            for (feats, mask), (ref_feats, ref_mask) in zip(
                actual, expected, strict=True
            ):
                assert mask.dtype == torch.bool
                assert torch.equal(mask, ref_mask), (pooling, path)
                assert torch.isfinite(feats).all()
                assert_close(feats, ref_feats)


class TestRandomPatchMask:
    @pytest.mark.parametrize(
        ('ratio', 'masked'), [(0.0, 0), (0.5, 25), (0.6, 30), (0.75, 37), (0.9, 45)]
    )
    def test_counts(self, ratio: float, masked: int) -> None:
        mask = random_patch_mask(16, 7, ratio, generator=torch.Generator())
        assert mask.shape == (16, 7, 7)
        assert mask.dtype == torch.bool
        # The reference keeps int(49 * (1 - ratio)) patches: 19 at 0.6.
        assert masked == 49 - int(49 * (1 - ratio))
        assert (mask.flatten(1).sum(1) == masked).all()

    def test_rectangular(self) -> None:
        mask = random_patch_mask(3, (2, 5), 0.6)
        assert mask.shape == (3, 2, 5)
        assert (mask.flatten(1).sum(1) == 10 - 4).all()

    def test_reproducible(self) -> None:
        def draw(seed: int) -> Tensor:
            return random_patch_mask(
                8, 7, generator=torch.Generator().manual_seed(seed)
            )

        assert torch.equal(draw(0), draw(0))
        assert not torch.equal(draw(0), draw(1))
        mask = draw(0)
        assert len({tuple(m.flatten().tolist()) for m in mask}) == 8
        # Without a generator: the global RNG.
        torch.manual_seed(0)
        first = random_patch_mask(8, 7, device='cpu')
        torch.manual_seed(0)
        assert torch.equal(random_patch_mask(8, 7), first)

    def test_uniform(self) -> None:
        mask = random_patch_mask(4000, 7, generator=torch.Generator().manual_seed(0))
        frequency = mask.float().mean(0)
        assert (frequency - 30 / 49).abs().max() < 0.04

    @pytest.mark.parametrize(
        ('kwargs', 'match'),
        [
            ({'mask_ratio': 1.0}, 'mask_ratio must be in'),
            ({'mask_ratio': -0.1}, 'mask_ratio must be in'),
            ({'mask_ratio': 0.99}, 'masks all 49 patches'),
            ({'grid_size': 0}, 'grid_size must be positive'),
            ({'grid_size': (3, 0)}, 'grid_size must be positive'),
            ({'batch_size': -1}, 'batch_size must be non-negative'),
        ],
    )
    def test_invalid(self, kwargs: dict[str, float], match: str) -> None:
        args: dict[str, object] = {'batch_size': 2, 'grid_size': 7, **kwargs}
        with pytest.raises(ValueError, match=match):
            random_patch_mask(**args)  # type: ignore[arg-type]


class TestUpsampleMask:
    def test_values(self) -> None:
        mask = random_patch_mask(2, (3, 4), 0.5, generator=torch.Generator())
        pixels = upsample_mask(mask, 8)
        assert pixels.shape == (2, 24, 32)
        assert pixels.dtype == torch.bool
        for i in range(3):
            for j in range(4):
                cell = pixels[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                assert (cell == mask[:, i, j, None, None]).all()

    def test_invalid(self) -> None:
        with pytest.raises(ValueError, match='patch_size must be positive'):
            upsample_mask(torch.zeros(1, 7, 7, dtype=torch.bool), 0)
        with pytest.raises(ValueError, match='at least 2 dimensions'):
            upsample_mask(torch.zeros(7, dtype=torch.bool), 8)


class TestAgainstSparseReference:
    @pytest.mark.parametrize(
        ('patch_size', 'height', 'width', 'batch'),
        [(8, 56, 56, 3), (16, 112, 112, 2), (8, 32, 32, 3), (8, 40, 24, 2)],
    )
    def test_small(self, patch_size: int, height: int, width: int, batch: int) -> None:
        model = small_model(patch_size)
        x, active = inputs(batch, 5, height, width, patch_size, seed=patch_size)
        assert_matches_reference(model, x, active)

    def test_atto(self) -> None:
        model = timm.create_model('mmearth_convnextv2_atto', in_chans=12)
        model = randomize(model).double().eval()
        x, active = inputs(2, 12, 56, 56, 8, seed=1)
        assert_matches_reference(model, x, active)

    def test_timm_convnextv2_stem(self) -> None:
        # The masked forward is generic: timm's own ConvNeXt V2 (4x4 patch stem).
        model = ConvNeXt(
            in_chans=3, use_grn=True, ls_init_value=None, num_classes=0, **SMALL
        )
        model = randomize(model).double().eval()
        x, active = inputs(3, 3, 64, 96, 32, mask_ratio=0.5, seed=2)
        assert_matches_reference(model, x, active)

    @pytest.mark.parametrize('pooling', POOLINGS)
    def test_gradients(self, pooling: str) -> None:
        model = small_model(8)
        x, active = inputs(3, 5, 32, 32, 8, seed=3)
        x = torch.where(active, x, 0)
        weights = torch.randn(3, 32, 4, 4, dtype=torch.float64)

        def grads(forward: Callable[[Tensor], Tensor]) -> list[Tensor]:
            model.zero_grad(set_to_none=True)
            x_ = x.clone().requires_grad_()
            (forward(x_) * weights).sum().backward()
            assert x_.grad is not None
            return [x_.grad] + [
                p.grad for p in model.parameters() if p.grad is not None
            ]

        expected = grads(
            lambda x_: sparse_reference.encoder(model, x_, active, pooling)[-1][0]
        )
        for path in PATHS:
            actual = grads(
                lambda x_, path=path: masked_forward(
                    model, x_, active, grn_pooling=pooling, path=path
                )[0]
            )
            assert len(actual) == len(expected)
            for a, e in zip(actual, expected, strict=True):
                assert_close(a, e)


class TestMasking:
    @pytest.mark.parametrize('path', PATHS)
    def test_inactive_cells_are_zero_at_every_stage(self, path: str) -> None:
        model = small_model(16)
        x, active = inputs(2, 5, 112, 112, 16, nodata=0.0)
        patches = active[:, :, ::16, ::16]
        outputs = masked_forward_intermediates(model, x, active, path=path)
        for stage, (feats, mask) in enumerate(outputs):
            # Patch-aligned masks stay patch-aligned at every resolution.
            assert torch.equal(mask, upsample_mask(patches, 2 ** (3 - stage)))
            assert (feats.masked_select(~mask) == 0).all()
            assert (feats.abs().sum(1, keepdim=True)[mask] > 0).all()

    @pytest.mark.parametrize('path', PATHS)
    def test_inactive_input_has_no_influence(self, path: str) -> None:
        model = small_model(8)
        x, active = inputs(2, 5, 56, 56, 8)
        other = torch.where(active, x, torch.randn_like(x) * 1e6)
        other[:, 1:3].masked_fill_(~active, math.inf)
        out = masked_forward(model, x, active, path=path)[0]
        assert torch.equal(masked_forward(model, other, active, path=path)[0], out)

        x_ = torch.where(active, x, 0).requires_grad_()
        masked_forward(model, x_, active, path=path)[0].square().sum().backward()
        assert x_.grad is not None
        assert (x_.grad.masked_select(~active) == 0).all()
        assert (x_.grad.abs().sum(1, keepdim=True)[active] > 0).float().mean() > 0.99

    @pytest.mark.parametrize('pooling', POOLINGS)
    @pytest.mark.parametrize('path', PATHS)
    def test_untouched_parameters_get_no_gradient(
        self, pooling: str, path: str
    ) -> None:
        # With no active site at all, no weight takes part in any output.
        model = small_model(8)
        x = torch.randn(2, 5, 32, 32, dtype=torch.float64)
        active = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
        out, mask = masked_forward(model, x, active, grn_pooling=pooling, path=path)
        assert not mask.any()
        assert (out == 0).all()
        out.sum().backward()
        for param in model.parameters():
            assert param.grad is None or (param.grad == 0).all()

    @pytest.mark.parametrize('pooling', POOLINGS)
    def test_almost_empty(self, pooling: str) -> None:
        # One active patch in the whole batch; samples 1 and 2 are empty.
        model = small_model(8)
        x, _ = inputs(3, 5, 56, 56, 8)
        active = torch.zeros(3, 1, 56, 56, dtype=torch.bool)
        active[0, :, 16:24, 40:48] = True
        active[0, :, 18, 41] = False  # a no-data pixel inside the patch
        assert_matches_reference(model, x, active, poolings=(pooling,))
        for path in PATHS:
            x_ = x.clone().requires_grad_()
            model.zero_grad(set_to_none=True)
            out, mask = masked_forward(
                model, x_, active, grn_pooling=pooling, path=path
            )
            assert mask.sum() == 1 and mask[0, 0, 2, 5]
            assert (out[1:] == 0).all()
            assert (out[0, :, 2, 5] != 0).all()
            out.square().sum().backward()
            assert x_.grad is not None and torch.isfinite(x_.grad).all()
            assert all(
                torch.isfinite(p.grad).all()
                for p in model.parameters()
                if p.grad is not None
            )

    @pytest.mark.parametrize('pooling', POOLINGS)
    @pytest.mark.parametrize('path', PATHS)
    def test_dead_channel_has_finite_gradients(self, pooling: str, path: str) -> None:
        # GRN's norm of an all-zero hidden channel is 0: its subgradient must be 0.
        model = small_model(8)
        with torch.no_grad():
            model.stages[0].blocks[0].mlp.fc1.bias[3] = -1e4  # GELU(-1e4) == 0
        x, active = inputs(2, 5, 32, 32, 8)
        x = torch.where(active, x, 0).requires_grad_()
        out = masked_forward(model, x, active, grn_pooling=pooling, path=path)[0]
        out.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for param in [*model.stem.parameters(), *model.stages.parameters()]:
            assert param.grad is not None and torch.isfinite(param.grad).all()

    @pytest.mark.parametrize('patch_size', [8, 16])
    def test_all_active_equals_dense_model(self, patch_size: int) -> None:
        # Every pixel active: masking is void, zero padding = no neighbour, and
        # per-sample GRN pooling is the dense model's GRN.
        model = small_model(patch_size)
        size = 4 * patch_size
        x = torch.randn(3, 5, size, size, dtype=torch.float64)
        active = torch.ones(3, 1, size, size, dtype=torch.bool)
        dense = model.forward_features(x)
        for path in PATHS:
            out, mask = masked_forward(
                model, x, active, grn_pooling='sample', path=path
            )
            assert mask.all()
            assert_close(out, dense)
            # Batch pooling mixes the samples' statistics: it is another function...
            out = masked_forward(model, x, active, grn_pooling='batch', path=path)[0]
            assert (out - dense).abs().max() > 1e-3
            # ...except for a batch of one.
            single = masked_forward(model, x[:1], active[:1], path=path)[0]
            assert_close(single, dense[:1])


class TestPaths:
    def test_auto_plan(self) -> None:
        masks = [torch.ones(2, 1, 4, 4, dtype=torch.bool) for _ in range(2)]
        masks[1][0, 0, 0, 0] = False  # 31/32 active
        masks.append(torch.zeros(2, 1, 2, 2, dtype=torch.bool))
        assert 31 / 32 > PACKED_MAX_ACTIVE_FRACTION
        sites = me._plan_sites(masks, 'auto')
        assert sites[0] is None and sites[1] is None
        assert sites[2] is not None and len(sites[2].positions) == 0
        packed = me._plan_sites(masks, 'packed')
        assert packed[1] is not None
        assert packed[1].positions.tolist() == list(range(1, 32))
        assert packed[1].samples.tolist() == [0] * 15 + [1] * 16
        assert me._plan_sites(masks, 'dense') == [None] * 3

    def test_float32_paths_agree(self) -> None:
        model = timm.create_model('mmearth_convnextv2_atto', in_chans=12)
        model = randomize(model).eval()
        x, active = inputs(4, 12, 56, 56, 8)
        x = x.float()
        expected = masked_forward(model, x, active, path='dense')[0]
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for path in ('packed', 'auto'):
            for inp in (x, x_cl):
                out = masked_forward(model, inp, active, path=path)[0]
                assert_close(out, expected, rtol=1e-4)

    @pytest.mark.parametrize('path', PATHS)
    def test_autocast_bfloat16_channels_last(self, path: str) -> None:
        model = timm.create_model('mmearth_convnextv2_atto', in_chans=12)
        model = randomize(model)
        x, active = inputs(2, 12, 56, 56, 8)
        x = torch.where(active, x, 0).float()
        expected = masked_forward(model, x, active, path=path)[0]
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out, mask = masked_forward(model, x, active, path=path)
        assert out.dtype == torch.bfloat16
        assert (out.masked_select(~mask) == 0).all()
        assert_close(out.float(), expected, rtol=5e-2)
        out.float().square().mean().backward()
        assert all(
            torch.isfinite(p.grad).all()
            for p in model.parameters()
            if p.grad is not None
        )

    def test_drop_path(self) -> None:
        model = small_model(8, drop_path_rate=0.5).train()
        x, active = inputs(4, 5, 32, 32, 8)
        outputs = []
        for path in PATHS:
            torch.manual_seed(0)
            out, mask = masked_forward(model, x, active, path=path)
            assert (out.masked_select(~mask) == 0).all()
            outputs.append(out)
        assert_close(outputs[1], outputs[0])
        # Some samples lost blocks: drop path is active.
        model.eval()
        assert not torch.allclose(masked_forward(model, x, active)[0], outputs[0])

    @pytest.mark.parametrize('path', PATHS)
    def test_grad_checkpointing(self, path: str) -> None:
        model = small_model(8)
        x, active = inputs(2, 5, 32, 32, 8)

        def grads() -> list[Tensor]:
            model.zero_grad(set_to_none=True)
            masked_forward(model, x, active, path=path)[0].square().sum().backward()
            return [p.grad for p in model.parameters() if p.grad is not None]

        expected = grads()
        model.set_grad_checkpointing(True)
        actual = grads()
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e)

    def test_no_state(self) -> None:
        model = small_model(8)
        keys = list(model.state_dict())
        x, active = inputs(2, 5, 32, 32, 8)
        masked_forward(model, x, active)
        assert list(model.state_dict()) == keys


class TestInvalid:
    def test_inputs(self) -> None:
        model = small_model(8)
        x, active = inputs(2, 5, 32, 32, 8)
        with pytest.raises(TypeError, match='boolean'):
            masked_forward(model, x, active.double())
        with pytest.raises(ValueError, match='active must have shape'):
            masked_forward(model, x, active[:1])
        with pytest.raises(ValueError, match=r'x must be \(B, C, H, W\)'):
            masked_forward(model, x[0], active[0])
        with pytest.raises(ValueError, match='grn_pooling'):
            masked_forward(model, x, active, grn_pooling='pixel')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match='path'):
            masked_forward(model, x, active, path='sparse')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match='not divisible by the stride'):
            masked_forward(model, x[..., :28, :28], active[..., :28, :28])

    def test_model(self) -> None:
        x, active = inputs(1, 5, 32, 32, 8)
        with pytest.raises(TypeError, match='stem'):
            masked_forward(nn.Linear(2, 2), x, active)
        model = small_model(8)
        model.stem[0].padding = (0, 0)
        with pytest.raises(TypeError, match='odd kernel'):
            masked_forward(model, x, active)
        model = small_model(8)
        model.stem[1] = nn.BatchNorm2d(8)
        with pytest.raises(TypeError, match='unsupported layer BatchNorm2d'):
            masked_forward(model, x, active)
