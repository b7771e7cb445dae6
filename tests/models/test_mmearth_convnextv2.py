import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.grn import GlobalResponseNorm
from timm.layers.norm import LayerNorm, LayerNorm2d
from timm.models import get_pretrained_cfg, is_model, list_models
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

import torchgeo_mmearth
from torchgeo_mmearth.models import (
    MMEARTH_CONVNEXTV2_SIZES,
    MMEarthConvNeXtV2,
    checkpoint_filter_fn,
)

#: The atto entry point of each patch size.
ATTO = {8: 'mmearth_convnextv2_atto', 16: 'mmearth_convnextv2_atto_p16'}

OfficialCheckpoint = Callable[..., dict[str, Any]]

pytestmark = pytest.mark.usefixtures('single_thread')

SIZES = tuple(MMEARTH_CONVNEXTV2_SIZES)

# Encoder parameters (no norm, no head) with 12 input bands, MMEarth reference 2.1.
ENCODER_PARAMS = {
    ('atto', 8): 3_389_320,
    ('atto', 16): 3_389_440,
    ('femto', 8): 4_850_544,
    ('femto', 16): 4_850_688,
    ('nano', 8): 14_986_640,
    ('nano', 16): 14_986_880,
    ('tiny', 8): 27_871_104,
    ('tiny', 16): 27_871_392,
    ('base', 8): 87_698_944,
    ('base', 16): 87_699_328,
}


def encoder_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if not k.startswith(('norm.', 'head.'))}


class TestArchitecture:
    @pytest.mark.parametrize(('size', 'patch_size'), list(ENCODER_PARAMS))
    def test_encoder_parameter_count(self, size: str, patch_size: int) -> None:
        with torch.device('meta'):
            model = timm.create_model(
                f'mmearth_convnextv2_{size}' + ('' if patch_size == 8 else '_p16')
            )
        count = sum(
            p.numel()
            for name, p in model.named_parameters()
            if not name.startswith(('norm.', 'head.'))
        )
        assert count == ENCODER_PARAMS[size, patch_size]

    @pytest.mark.parametrize('size', SIZES)
    @pytest.mark.parametrize('patch_size', [8, 16])
    def test_shapes_every_size(self, size: str, patch_size: int) -> None:
        # On the meta device: shapes only, no memory, no compute.
        with torch.device('meta'):
            model = timm.create_model(
                f'mmearth_convnextv2_{size}', patch_size=patch_size, num_classes=10
            )
            x = torch.empty(2, 12, 7 * patch_size, 7 * patch_size)
            features = model.forward_features(x)
            logits = model(x)
        dims = MMEARTH_CONVNEXTV2_SIZES[size][1]
        assert features.shape == (2, dims[-1], 7, 7)
        assert logits.shape == (2, 10)
        assert model.num_features == dims[-1]

    @pytest.mark.parametrize(('patch_size', 'size'), [(8, 24), (16, 48), (16, 80)])
    def test_forward(self, patch_size: int, size: int) -> None:
        model = timm.create_model(
            'mmearth_convnextv2_atto', patch_size=patch_size, num_classes=10
        )
        x = torch.randn(2, 12, size, size)
        assert model.forward_features(x).shape == (
            2,
            320,
            size // patch_size,
            size // patch_size,
        )
        assert model(x).shape == (2, 10)

    @pytest.mark.parametrize('patch_size', [8, 16])
    def test_module_layout(self, patch_size: int) -> None:
        model = MMEarthConvNeXtV2(in_chans=5, num_classes=3, patch_size=patch_size)
        assert [name for name, _ in model.named_children()] == [
            'stem',
            'stages',
            'norm',
            'head',
        ]
        stem = model.stem
        assert isinstance(stem[0], nn.Conv2d)
        assert (stem[0].in_channels, stem[0].kernel_size, stem[0].padding) == (
            5,
            (3, 3),
            (1, 1),
        )
        assert isinstance(stem[1], LayerNorm2d) and stem[1].eps == 1e-6
        assert isinstance(stem[2], nn.GELU)
        k = patch_size // 8
        assert isinstance(stem[3], nn.Conv2d)
        assert (stem[3].kernel_size, stem[3].stride, stem[3].padding) == (
            (k, k),
            (k, k),
            (0, 0),
        )
        assert stem[3].groups == 40
        assert isinstance(stem[4], LayerNorm2d) and stem[4].eps == 1e-6
        assert isinstance(model.stages[0].downsample, nn.Identity)
        for i in (1, 2, 3):
            norm, conv = model.stages[i].downsample
            assert isinstance(norm, LayerNorm2d) and norm.eps == 1e-6
            assert isinstance(conv, nn.Conv2d)
            assert (conv.kernel_size, conv.stride, conv.padding) == (
                (2, 2),
                (2, 2),
                (0, 0),
            )
        block = model.stages[2].blocks[0]
        assert block.conv_dw.kernel_size == (7, 7) and block.conv_dw.padding == (3, 3)
        assert isinstance(block.norm, LayerNorm) and block.norm.eps == 1e-6
        assert block.gamma is None  # no layer scale in ConvNeXt V2
        assert isinstance(block.mlp.grn, GlobalResponseNorm)
        assert block.mlp.grn.eps == 1e-6  # the sparse (pretraining) GRN's eps
        assert isinstance(model.norm, nn.LayerNorm) and model.norm.eps == 1e-6
        assert (
            isinstance(model.head, nn.Linear) and model.get_classifier() is model.head
        )
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes['stem.0.weight'] == (40, 5, 3, 3)
        assert shapes['stem.3.weight'] == (40, 1, k, k)
        assert shapes['stages.0.blocks.0.conv_dw.weight'] == (40, 1, 7, 7)
        assert shapes['stages.0.blocks.0.mlp.fc1.weight'] == (160, 40)
        assert shapes['stages.0.blocks.0.mlp.grn.weight'] == (160,)
        assert shapes['stages.1.downsample.1.weight'] == (80, 40, 2, 2)
        assert shapes['norm.weight'] == (320,)
        assert shapes['head.weight'] == (3, 320)

    def test_no_classifier(self) -> None:
        model = MMEarthConvNeXtV2()
        assert isinstance(model.head, nn.Identity)
        assert list(model.named_children())[-1][0] == 'head'
        assert model(torch.randn(1, 12, 16, 16)).shape == (1, 320)

    def test_init(self) -> None:
        torch.manual_seed(0)
        model = MMEarthConvNeXtV2(
            num_classes=1000, dims=(64, 128, 256, 512), head_init_scale=0.01
        )
        fc1 = model.stages[0].blocks[0].mlp.fc1
        assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert fc1.bias.abs().max().item() == 0
        assert model.head.weight.std().item() == pytest.approx(2e-4, rel=0.1)
        grn = model.stages[0].blocks[0].mlp.grn
        assert grn.weight.abs().max().item() == 0  # GRN starts as the identity

    def test_drop_path_and_drop_rate(self) -> None:
        model = MMEarthConvNeXtV2(num_classes=2, drop_path_rate=0.2, drop_rate=0.5)
        rates = [
            block.drop_path.drop_prob
            for stage in model.stages
            for block in stage.blocks
            if not isinstance(block.drop_path, nn.Identity)
        ]
        assert len(rates) == 11  # all 12 blocks but the first (rate 0)
        assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2)
        model.eval()
        x = torch.randn(1, 12, 16, 16)
        torch.testing.assert_close(model(x), model(x))

    def test_grad_checkpointing(self) -> None:
        model = MMEarthConvNeXtV2(num_classes=2)
        x = torch.randn(1, 12, 16, 16, requires_grad=True)
        model(x).sum().backward()
        expected = x.grad.clone()
        x.grad = None
        model.set_grad_checkpointing()
        assert all(stage.grad_checkpointing for stage in model.stages)
        model(x).sum().backward()
        torch.testing.assert_close(x.grad, expected)

    def test_group_matcher_layer_decay(self) -> None:
        model = MMEarthConvNeXtV2(num_classes=2)
        groups = param_groups_layer_decay(model, layer_decay=0.5)
        names = {id(p): name for name, p in model.named_parameters()}
        scales = {
            names[id(p)]: group['lr_scale'] for group in groups for p in group['params']
        }
        # The stem is the first layer, the classifier the last (scale 1).
        assert scales['stem.0.weight'] < scales['stages.3.blocks.1.conv_dw.weight']
        assert scales['head.weight'] == 1.0
        coarse = model.group_matcher(coarse=True)
        assert coarse == {'stem': r'^stem', 'blocks': r'^stages\.(\d+)'}

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match=r'patch_size must be one of \(8, 16\)'):
            MMEarthConvNeXtV2(patch_size=32)
        with pytest.raises(ValueError, match='global_pool'):
            MMEarthConvNeXtV2(global_pool='max')
        with pytest.raises(ValueError, match='depths and dims'):
            MMEarthConvNeXtV2(depths=(2, 2, 2))
        with pytest.raises(ValueError, match='in_chans'):
            MMEarthConvNeXtV2(in_chans=0)
        with pytest.raises(ValueError, match='num_classes'):
            MMEarthConvNeXtV2(num_classes=-1)
        with pytest.raises(ValueError, match='drop_path_rate'):
            MMEarthConvNeXtV2(drop_path_rate=1.0)


class TestTimmApi:
    def test_create_model_after_package_import(self) -> None:
        assert torchgeo_mmearth.models is not None
        model = timm.create_model(
            'mmearth_convnextv2_atto', in_chans=12, num_classes=10
        )
        assert isinstance(model, MMEarthConvNeXtV2)
        assert (model.in_chans, model.num_classes, model.patch_size) == (12, 10, 8)

    def test_registered_names(self) -> None:
        names = set(list_models('mmearth_convnextv2_*'))
        assert names == {
            f'mmearth_convnextv2_{size}{suffix}'
            for size in SIZES
            for suffix in ('', '_p16')
        }

    def test_patch_size_entry_points(self) -> None:
        with torch.device('meta'):
            plain = timm.create_model('mmearth_convnextv2_atto')
            p16 = timm.create_model('mmearth_convnextv2_atto_p16')
            kwarg = timm.create_model('mmearth_convnextv2_atto', patch_size=16)
        assert plain.patch_size == 8
        assert plain.pretrained_cfg['input_size'] == (12, 56, 56)
        assert p16.patch_size == kwarg.patch_size == 16
        assert kwarg.pretrained_cfg['input_size'] == (12, 112, 112)
        assert kwarg.pretrained_cfg['architecture'] == 'mmearth_convnextv2_atto_p16'
        with pytest.raises(ValueError, match='use mmearth_convnextv2_atto instead'):
            timm.create_model('mmearth_convnextv2_atto_p16', patch_size=8)
        with pytest.raises(ValueError, match='patch_size must be one of'):
            timm.create_model('mmearth_convnextv2_atto', patch_size=4)

    @pytest.mark.parametrize('size', SIZES)
    @pytest.mark.parametrize(('suffix', 'patch_size'), [('', 8), ('_p16', 16)])
    def test_default_cfg(self, size: str, suffix: str, patch_size: int) -> None:
        name = f'mmearth_convnextv2_{size}{suffix}'
        assert is_model(name)
        cfg = get_pretrained_cfg(name)
        assert cfg is not None
        assert cfg.input_size == (12, 7 * patch_size, 7 * patch_size)
        assert cfg.first_conv == 'stem.0' and cfg.classifier == 'head'
        assert cfg.num_classes == 0
        assert cfg.mean == (0.0,) * 12 and cfg.std == (1.0,) * 12
        assert cfg.paper_ids == 'arXiv:2405.02771'

    def test_no_pretrained_cfg_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger='timm'):
            timm.create_model('mmearth_convnextv2_atto_p16', num_classes=3)
        assert 'No pretrained configuration' not in caplog.text

    @pytest.mark.parametrize('patch_size', [8, 16])
    def test_features_only(self, patch_size: int) -> None:
        model = timm.create_model(
            'mmearth_convnextv2_atto', patch_size=patch_size, features_only=True
        )
        stem = patch_size // 8
        assert model.feature_info.reduction() == [stem, 2 * stem, 4 * stem, 8 * stem]
        assert model.feature_info.channels() == [40, 80, 160, 320]
        features = model(torch.randn(1, 12, 32, 32))
        assert [f.shape[1:] for f in features] == [
            (c, 32 // r, 32 // r)
            for c, r in zip(
                model.feature_info.channels(),
                model.feature_info.reduction(),
                strict=True,
            )
        ]
        getter = timm.create_model(
            'mmearth_convnextv2_atto', features_only=True, feature_cls='getter'
        )
        sizes = [f.shape[-1] for f in getter(torch.randn(1, 12, 16, 16))]
        assert sizes == [16, 8, 4, 2]

    def test_forward_intermediates(self) -> None:
        torch.manual_seed(0)
        model = MMEarthConvNeXtV2(num_classes=4).eval()
        x = torch.randn(2, 12, 32, 32)
        final, intermediates = model.forward_intermediates(x)
        assert [t.shape[-1] for t in intermediates] == [32, 16, 8, 4]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(intermediates[-1], final)
        only = model.forward_intermediates(
            x, indices=[0, 2], stop_early=True, intermediates_only=True
        )
        assert isinstance(only, list)
        torch.testing.assert_close(only[1], intermediates[2])
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        torch.testing.assert_close(last[0], final)
        with pytest.raises(ValueError, match='output_fmt'):
            model.forward_intermediates(x, output_fmt='NHWC')

    def test_prune_intermediate_layers(self) -> None:
        model = MMEarthConvNeXtV2(num_classes=4)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.stages) == 2 and model.num_features == 80
        assert isinstance(model.head, nn.Identity) and isinstance(
            model.norm, nn.Identity
        )
        assert model(torch.randn(1, 12, 16, 16)).shape == (1, 80, 8, 8)

    def test_head(self) -> None:
        model = MMEarthConvNeXtV2(num_classes=4).eval()
        features = model.forward_features(torch.randn(2, 12, 16, 16))
        assert model.forward_head(features).shape == (2, 4)
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pre_logits, model.norm(features.mean((2, 3))))
        model.reset_classifier(7, global_pool='')
        assert model.get_classifier() is model.head and model.head.out_features == 7
        assert list(model.named_children())[-1][0] == 'head'
        assert model.forward_head(features).shape == (2, 7, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (2, 320, 2, 2)
        model.reset_classifier(0)
        assert isinstance(model.head, nn.Identity) and model.num_classes == 0
        with pytest.raises(ValueError, match='global_pool'):
            model.reset_classifier(2, global_pool='token')
        with pytest.raises(ValueError, match='num_classes'):
            model.reset_classifier(-3)


def kernel_to_weight(kernel: Tensor) -> Tensor:
    """Test-side conversion: MinkowskiEngine stores offset (dh, dw) at dh + k * dw."""
    k = math.isqrt(kernel.shape[0])
    if kernel.ndim == 3:
        weight = torch.empty(kernel.shape[2], kernel.shape[1], k, k)
        for h in range(k):
            for w in range(k):
                weight[:, :, h, w] = kernel[h + k * w].T
    else:
        weight = torch.empty(kernel.shape[1], 1, k, k)
        for h in range(k):
            for w in range(k):
                weight[:, 0, h, w] = kernel[h + k * w]
    return weight


def dense_mmearth(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """The dense MMEarth key format (MMEarth's remap_checkpoint_keys output)."""
    dense = {}
    for key, value in official.items():
        if not key.startswith('encoder.'):
            continue
        key = key.removeprefix('encoder.').replace('.ln.', '.').replace('.linear.', '.')
        if key.endswith('.kernel'):
            key, value = key.removesuffix('kernel') + 'weight', kernel_to_weight(value)
        elif key.endswith('.bias'):
            value = value.reshape(-1)
        if '.grn.' in key:
            value = value.reshape(1, 1, 1, -1)
        dense[key] = value
    return dense


class TestCheckpointFilter:
    @pytest.mark.parametrize('patch_size', [8, 16])
    def test_official_sparse_checkpoint(
        self, make_official_checkpoint: OfficialCheckpoint, patch_size: int
    ) -> None:
        checkpoint = make_official_checkpoint(patch_size=patch_size)
        model = MMEarthConvNeXtV2(num_classes=3, patch_size=patch_size)
        converted = checkpoint_filter_fn(checkpoint, model)
        assert set(converted) == encoder_keys(model)
        bare = checkpoint_filter_fn(checkpoint['model'], model)
        assert all(torch.equal(bare[k], v) for k, v in converted.items())
        result = model.load_state_dict(converted, strict=False)
        assert set(result.missing_keys) == {'norm.weight', 'norm.bias'} | {
            'head.weight',
            'head.bias',
        }
        official = checkpoint['model']
        state = model.state_dict()
        torch.testing.assert_close(
            state['stem.0.weight'],
            kernel_to_weight(official['encoder.initial_conv.0.kernel']),
        )
        torch.testing.assert_close(
            state['stem.3.weight'], kernel_to_weight(official['encoder.stem.0.kernel'])
        )
        torch.testing.assert_close(
            state['stages.2.downsample.1.weight'],
            kernel_to_weight(official['encoder.downsample_layers.1.1.kernel']),
        )
        torch.testing.assert_close(
            state['stages.1.blocks.1.conv_dw.weight'],
            kernel_to_weight(official['encoder.stages.1.1.dwconv.kernel']),
        )
        torch.testing.assert_close(
            state['stages.1.blocks.1.mlp.grn.weight'],
            official['encoder.stages.1.1.grn.gamma'][0],
        )
        torch.testing.assert_close(
            state['stages.3.downsample.0.bias'],
            official['encoder.downsample_layers.2.0.ln.bias'],
        )
        torch.testing.assert_close(
            state['stages.3.blocks.0.mlp.fc2.weight'],
            official['encoder.stages.3.0.pwconv2.linear.weight'],
        )

    def test_dense_checkpoint(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        official = make_official_checkpoint(patch_size=16)
        model = MMEarthConvNeXtV2(patch_size=16)
        from_sparse = checkpoint_filter_fn(official, model)
        dense = dense_mmearth(official['model'])
        assert 'initial_conv.0.weight' in dense and 'stem.0.weight' in dense
        from_dense = checkpoint_filter_fn(dense, model)
        assert from_dense.keys() == from_sparse.keys()
        for key, value in from_sparse.items():
            torch.testing.assert_close(from_dense[key], value, rtol=0, atol=0)

    def test_dense_classifier_checkpoint(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        dense = dense_mmearth(make_official_checkpoint()['model'])
        dense |= {
            'norm.weight': torch.rand(320),
            'norm.bias': torch.rand(320),
            'head.weight': torch.rand(10, 320),
            'head.bias': torch.rand(10),
        }
        model = MMEarthConvNeXtV2(num_classes=10)
        model.load_state_dict(checkpoint_filter_fn(dense, model))
        torch.testing.assert_close(model.head.weight, dense['head.weight'])

    def test_timm_format_round_trip(self) -> None:
        source = MMEarthConvNeXtV2(num_classes=5)
        target = MMEarthConvNeXtV2(num_classes=5)
        converted = checkpoint_filter_fn(source.state_dict(), target)
        assert converted.keys() == source.state_dict().keys()
        # Under 'encoder.', as in MMEarthUNet or smp.Unet state dicts.
        prefixed = {f'encoder.{k}': v for k, v in source.state_dict().items()}
        prefixed['decoder.blocks.0.conv1.0.weight'] = torch.zeros(1)
        assert checkpoint_filter_fn(prefixed, target).keys() == converted.keys()

    def test_classifier_entries(self) -> None:
        state = MMEarthConvNeXtV2(num_classes=10).state_dict()
        with pytest.warns(
            UserWarning, match=r"dropping \['head\.weight', 'head\.bias'\]"
        ):
            converted = checkpoint_filter_fn(state, MMEarthConvNeXtV2(num_classes=5))
        assert 'head.weight' not in converted and 'norm.weight' in converted
        backbone = MMEarthConvNeXtV2(num_classes=0)
        assert encoder_keys(backbone) | {'norm.weight', 'norm.bias'} == set(
            checkpoint_filter_fn(state, backbone)
        )

    def test_wrong_architecture(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        with pytest.raises(
            ValueError,
            match=r'another architecture: depths=\[3, 3, 9, 3\], dims=\[96, 192, 384, '
            r'768\], but the model has depths=\[2, 2, 6, 2\]',
        ):
            checkpoint_filter_fn(make_official_checkpoint('tiny'), MMEarthConvNeXtV2())
        with pytest.raises(ValueError, match=r'dims=\[48, 96, 192, 384\]'):
            checkpoint_filter_fn(make_official_checkpoint('femto'), MMEarthConvNeXtV2())

    def test_wrong_patch_size(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        with pytest.raises(
            ValueError,
            match=r"'stem.3.weight' has shape \(40, 1, 2, 2\) in the checkpoint but "
            r'\(40, 1, 1, 1\) in the model: the checkpoint has patch size 16',
        ):
            checkpoint_filter_fn(
                make_official_checkpoint(patch_size=16), MMEarthConvNeXtV2(patch_size=8)
            )

    def test_wrong_in_chans(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        with pytest.raises(
            ValueError,
            match=r"'stem.0.weight' has shape \(40, 3, 3, 3\) in the checkpoint .*"
            r'pretrained on 3 input bands, the model has in_chans=12',
        ):
            checkpoint_filter_fn(
                make_official_checkpoint(in_chans=3), MMEarthConvNeXtV2()
            )

    def test_incomplete_or_foreign(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        model = MMEarthConvNeXtV2()
        checkpoint = make_official_checkpoint()
        del checkpoint['model']['encoder.stages.2.3.grn.beta']
        with pytest.raises(ValueError, match=r'lacks 1 encoder entries.*grn\.bias'):
            checkpoint_filter_fn(checkpoint, model)
        assert 'stages.2.blocks.3.mlp.grn.bias' not in checkpoint_filter_fn(
            checkpoint, model, strict=False
        )
        with pytest.raises(ValueError, match='holds no MMEarth ConvNeXt V2 encoder'):
            checkpoint_filter_fn(timm.create_model('resnet18').state_dict(), model)
        with pytest.raises(ValueError, match='use_orig_stem'):
            checkpoint_filter_fn({'stem_orig.0.weight': torch.zeros(1)}, model)
        extra = dict(model.state_dict(), **{'stages.0.blocks.0.extra': torch.zeros(1)})
        with pytest.raises(ValueError, match=r"'stages\.0\.blocks\.0\.extra'"):
            checkpoint_filter_fn(extra, model)

    def test_timm_pretrained_loading(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint(patch_size=16)
        model = timm.create_model(
            'mmearth_convnextv2_atto_p16',
            pretrained=True,
            pretrained_cfg_overlay={'state_dict': checkpoint},
            num_classes=4,
        )
        torch.testing.assert_close(
            model.stem[0].weight,
            kernel_to_weight(checkpoint['model']['encoder.initial_conv.0.kernel']),
        )


# ---------------------------------------------------------------------------
# Independent reference of the dense MMEarth UNet encoder (reference 5.5), written
# directly on the official Minkowski keys: a convolution is a sum over kernel
# offsets of shifted inputs times the offset's (in, out) matrix; MinkowskiEngine
# stores offset (dh, dw) at index dh + k * dw, odd kernels centred, even kernels
# starting at the output position.


def ref_conv(x: Tensor, kernel: Tensor, bias: Tensor, k: int, pad: int) -> Tensor:
    """Conv with stride 1 (pad k//2) or kernel = stride (pad 0)."""
    stride = 1 if pad else k
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (xp.shape[2] - k) // stride + 1
    cols = (xp.shape[3] - k) // stride + 1
    out = torch.zeros(x.shape[0], kernel.shape[-1], rows, cols, dtype=x.dtype)
    for dw in range(k):
        for dh in range(k):
            window = xp[
                :,
                :,
                dh : dh + stride * (rows - 1) + 1 : stride,
                dw : dw + stride * (cols - 1) + 1 : stride,
            ]
            matrix = kernel[dh + k * dw]
            if kernel.ndim == 2:  # depthwise: one weight per channel
                out += window * matrix.reshape(1, -1, 1, 1)
            else:
                out += torch.einsum('bihw,io->bohw', window, matrix)
    return out + bias.reshape(1, -1, 1, 1)


def ref_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, dim: int) -> Tensor:
    mean = x.mean(dim, keepdim=True)
    var = ((x - mean) ** 2).mean(dim, keepdim=True)
    shape = [1] * x.ndim
    shape[dim] = -1
    return (x - mean) / torch.sqrt(var + 1e-6) * weight.reshape(shape) + bias.reshape(
        shape
    )


def ref_gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_encoder(sd: dict[str, Tensor], x: Tensor, patch_size: int) -> list[Tensor]:
    """Stage outputs of the dense UNet encoder, GRN eps 1e-6 like the sparse GRN."""

    def p(name: str) -> Tensor:
        return sd[f'encoder.{name}'].double()

    x = ref_conv(x, p('initial_conv.0.kernel'), p('initial_conv.0.bias'), 3, 1)
    x = ref_gelu(
        ref_layer_norm(x, p('initial_conv.1.ln.weight'), p('initial_conv.1.ln.bias'), 1)
    )
    x = ref_conv(x, p('stem.0.kernel'), p('stem.0.bias'), patch_size // 8, 0)
    x = ref_layer_norm(x, p('stem.1.ln.weight'), p('stem.1.ln.bias'), 1)
    outputs = []
    for s, depth in enumerate(MMEARTH_CONVNEXTV2_SIZES['atto'][0]):
        if s > 0:
            down = f'downsample_layers.{s - 1}'
            x = ref_layer_norm(x, p(f'{down}.0.ln.weight'), p(f'{down}.0.ln.bias'), 1)
            x = ref_conv(x, p(f'{down}.1.kernel'), p(f'{down}.1.bias'), 2, 0)
        for b in range(depth):
            block = f'stages.{s}.{b}'
            y = ref_conv(
                x, p(f'{block}.dwconv.kernel'), p(f'{block}.dwconv.bias'), 7, 3
            )
            y = y.permute(0, 2, 3, 1)
            y = ref_layer_norm(
                y, p(f'{block}.norm.ln.weight'), p(f'{block}.norm.ln.bias'), 3
            )
            y = y @ p(f'{block}.pwconv1.linear.weight').T + p(
                f'{block}.pwconv1.linear.bias'
            )
            y = ref_gelu(y)
            # GRN: per-sample L2 norm over H, W; divided by its channel mean.
            gx = torch.sqrt((y**2).sum(dim=(1, 2), keepdim=True))
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
            y = (
                p(f'{block}.grn.gamma').reshape(-1) * (y * nx)
                + p(f'{block}.grn.beta').reshape(-1)
                + y
            )
            y = y @ p(f'{block}.pwconv2.linear.weight').T + p(
                f'{block}.pwconv2.linear.bias'
            )
            x = x + y.permute(0, 3, 1, 2)
        outputs.append(x)
    return outputs


# Non-square inputs, so that rows and columns cannot be confused.
@pytest.mark.parametrize(('patch_size', 'size'), [(8, (24, 32)), (16, (48, 32))])
def test_pretraining_geometry(
    make_official_checkpoint: OfficialCheckpoint, patch_size: int, size: tuple[int, int]
) -> None:
    checkpoint = make_official_checkpoint(patch_size=patch_size, seed=1)
    x = torch.randn(2, 12, *size, generator=torch.Generator().manual_seed(2)).double()
    expected = ref_encoder(checkpoint['model'], x, patch_size)
    assert expected[-1].shape[-2:] == (size[0] // patch_size, size[1] // patch_size)

    name = ATTO[patch_size]
    model = timm.create_model(name)
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=False)
    model = model.double().eval()
    features = timm.create_model(
        name,
        features_only=True,
        pretrained=True,
        pretrained_cfg_overlay={'state_dict': checkpoint},
    )
    features = features.double().eval()
    with torch.no_grad():
        intermediates = model.forward_intermediates(x, intermediates_only=True)
        feature_maps = features(x)
        # Negative control: a kernel with rows and columns swapped is caught.
        model.stem[0].weight.copy_(model.stem[0].weight.transpose(2, 3).clone())
        swapped = model.forward_intermediates(x, intermediates_only=True)
    for actual in (intermediates, feature_maps):
        assert len(actual) == 4
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(swapped[0], expected[0], rtol=1e-3, atol=1e-3)
