from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
from timm.layers.norm import LayerNorm2d
from torch import nn

from torchgeo_mmearth.models import MMEarthUNet, checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures('single_thread')

OfficialCheckpoint = Callable[..., dict[str, Any]]


@pytest.mark.parametrize('patch_size', [8, 16])
@pytest.mark.parametrize('size', [64, 128, 256])
def test_output_size(patch_size: int, size: int) -> None:
    model = MMEarthUNet(7, patch_size=patch_size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 12, size, size)).shape == (1, 7, size, size)


@pytest.mark.parametrize(('patch_size', 'expected'), [(8, 4_182_487), (16, 4_182_607)])
def test_parameter_count(patch_size: int, expected: int) -> None:
    # atto, 12 bands, 7 classes. Encoder without norm/head: 3 389 320 (P=8) or
    # 3 389 440 (P=16). Decoder, from the widths of MMEarth's ConvNeXtV2_unet:
    #   up0  Conv3x3 320->160 + LN(160)    460 800 + 160 + 320 = 461 280
    #   up1  Conv3x3 320->80  + LN(80)     230 400 +  80 + 160 = 230 640
    #   up2  Conv3x3 160->40  + LN(40)      57 600 +  40 +  80 =  57 720
    #   up3  Conv3x3 80->40   + LN(40)      28 800 +  40 +  80 =  28 920
    #   initial_conv_upsample 80->20 + LN   14 400 +  20 +  40 =  14 460
    #   head Conv1x1 20->7                     140 +   7       =     147
    # = 793 167. MMEarth's model also carries its classifier's unused final
    # LayerNorm (640), hence its "about 4.18 M" = 4 183 127 for P=8.
    model = MMEarthUNet(7, patch_size=patch_size)
    assert sum(p.numel() for p in model.parameters()) == expected
    decoder = sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith('encoder.')
    )
    assert decoder == 793_167


def test_layout() -> None:
    model = MMEarthUNet(7, patch_size=16)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes['upsample_layers.0.conv.weight'] == (160, 320, 3, 3)
    assert shapes['upsample_layers.1.conv.weight'] == (80, 320, 3, 3)
    assert shapes['upsample_layers.2.conv.weight'] == (40, 160, 3, 3)
    assert shapes['upsample_layers.3.conv.weight'] == (40, 80, 3, 3)
    assert shapes['initial_conv_upsample.0.weight'] == (20, 80, 3, 3)
    assert shapes['head.weight'] == (7, 20, 1, 1)
    block = model.upsample_layers[3]
    assert isinstance(block.upsample, nn.Upsample)
    assert block.upsample.scale_factor == 2 and block.upsample.mode == 'nearest'
    assert isinstance(block.norm, LayerNorm2d) and block.norm.eps == 1e-6
    assert isinstance(block.act, nn.GELU)
    assert MMEarthUNet(7, patch_size=8).upsample_layers[3].upsample.scale_factor == 1
    timm_keys = timm.create_model('mmearth_convnextv2_atto_p16').state_dict()
    encoder_keys = {
        k.removeprefix('encoder.') for k in shapes if k.startswith('encoder.')
    }
    assert encoder_keys == {
        k for k in timm_keys if not k.startswith(('norm.', 'head.'))
    }


def test_official_checkpoint(make_official_checkpoint: OfficialCheckpoint) -> None:
    checkpoint = make_official_checkpoint(patch_size=8)
    model = MMEarthUNet(5, patch_size=8).eval()
    model.encoder.load_state_dict(checkpoint)
    reference = timm.create_model('mmearth_convnextv2_atto')
    reference.load_state_dict(checkpoint_filter_fn(checkpoint, reference), strict=False)
    x = torch.randn(1, 12, 32, 32)
    with torch.no_grad():
        features = model.encoder(x)
        stages = reference.eval().forward_intermediates(x, intermediates_only=True)
        assert model(x).shape == (1, 5, 32, 32)
    torch.testing.assert_close(features[2], reference.stem(x))
    for level, stage in zip(features[3:], stages[1:], strict=True):
        torch.testing.assert_close(level, stage)


def test_gradients_reach_every_parameter() -> None:
    model = MMEarthUNet(3, patch_size=16)
    model(torch.randn(1, 12, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"size must be one of .*got 'small'"):
        MMEarthUNet(7, size='small')
    with pytest.raises(ValueError, match='patch_size must be one of'):
        MMEarthUNet(7, patch_size=32)
    with pytest.raises(ValueError, match='num_classes must be >= 1'):
        MMEarthUNet(0)
    with pytest.raises(ValueError, match='multiples of the patch size 16, got 40 x 48'):
        MMEarthUNet(7, patch_size=16)(torch.randn(1, 12, 40, 48))
