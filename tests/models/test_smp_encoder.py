from collections.abc import Callable
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from torchgeo_mmearth.models import (
    MMEARTH_CONVNEXTV2_SIZES,
    MMEarthConvNeXtV2Encoder,
    checkpoint_filter_fn,
)

#: The atto entry point of each patch size.
ATTO = {8: 'mmearth_convnextv2_atto', 16: 'mmearth_convnextv2_atto_p16'}

pytestmark = pytest.mark.usefixtures('single_thread')

OfficialCheckpoint = Callable[..., dict[str, Any]]


def unet(name: str = 'mmearth_convnextv2_atto', **kwargs: Any) -> smp.Unet:
    kwargs = {'in_channels': 12, 'classes': 7, 'encoder_weights': None} | kwargs
    return smp.Unet(encoder_name=name, **kwargs)


def test_registered_names() -> None:
    for size in MMEARTH_CONVNEXTV2_SIZES:
        for suffix in ('', '_p16'):
            name = f'mmearth_convnextv2_{size}{suffix}'
            assert name in smp.encoders.get_encoder_names()
            assert smp.encoders.encoders[name]['encoder'] is MMEarthConvNeXtV2Encoder


@pytest.mark.parametrize('patch_size', [8, 16])
@pytest.mark.parametrize('size', [64, 128, 256])
def test_unet_output_size(patch_size: int, size: int) -> None:
    model = unet(ATTO[patch_size]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 12, size, size)).shape == (1, 7, size, size)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_feature_levels(patch_size: int) -> None:
    encoder = unet(ATTO[patch_size]).encoder.eval()
    x = torch.randn(2, 12, 64, 64)
    with torch.no_grad():
        features = encoder(x)
    stem = patch_size // 8
    strides = [1, 1, stem, 2 * stem, 4 * stem, 8 * stem]
    assert encoder.out_channels == [12, 40, 40, 80, 160, 320]
    assert [f.shape[1:] for f in features] == [
        (c, 64 // s, 64 // s)
        for c, s in zip(encoder.out_channels, strides, strict=True)
    ]
    assert encoder.output_stride == patch_size
    # The levels are the timm model's initial conv, patch stem and stages 1-3.
    timm_model = timm.create_model(ATTO[patch_size], num_classes=3).eval()
    timm_model.load_state_dict(encoder.state_dict(), strict=False)
    with torch.no_grad():
        initial = timm_model.stem[:3](x)
        stem_out = timm_model.stem(x)
        stages = timm_model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(features[0], x)
    torch.testing.assert_close(features[1], initial)
    torch.testing.assert_close(features[2], stem_out)
    for level, stage in zip(features[3:], stages[1:], strict=True):
        torch.testing.assert_close(level, stage)


def test_state_dict_keys_are_timm_keys() -> None:
    encoder = unet().encoder
    timm_model = timm.create_model('mmearth_convnextv2_atto', num_classes=10)
    timm_keys = set(timm_model.state_dict())
    assert set(encoder.state_dict()) == {
        k for k in timm_keys if not k.startswith(('norm.', 'head.'))
    }
    # A whole timm state dict (with norm and head) loads strictly.
    encoder.load_state_dict(timm_model.state_dict())
    torch.testing.assert_close(encoder.stem[0].weight, timm_model.stem[0].weight)


def test_load_official_checkpoint(make_official_checkpoint: OfficialCheckpoint) -> None:
    checkpoint = make_official_checkpoint(patch_size=16)
    encoder = unet('mmearth_convnextv2_atto_p16').encoder
    encoder.load_state_dict(checkpoint)
    expected = checkpoint_filter_fn(
        checkpoint, timm.create_model('mmearth_convnextv2_atto_p16')
    )
    assert encoder.state_dict().keys() == expected.keys()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    with pytest.raises(ValueError, match='patch size 16'):
        unet('mmearth_convnextv2_atto').encoder.load_state_dict(checkpoint)
    partial = {
        k: v
        for k, v in encoder.state_dict().items()
        if k.startswith(('stem.', 'stages.0.'))
    }
    with pytest.raises(ValueError, match='another architecture'):
        encoder.load_state_dict(partial)
    result = encoder.load_state_dict(partial, strict=False)
    assert 'stages.1.blocks.0.conv_dw.weight' in result.missing_keys


@pytest.mark.parametrize('in_channels', [1, 3, 13])
def test_in_channels(in_channels: int) -> None:
    model = unet(in_channels=in_channels).eval()
    assert model.encoder.stem[0].in_channels == in_channels
    assert model.encoder.out_channels[0] == in_channels
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 32, 32)).shape == (1, 7, 32, 32)


def test_set_in_channels_pretrained() -> None:
    encoder = MMEarthConvNeXtV2Encoder(*MMEARTH_CONVNEXTV2_SIZES['atto'])
    weight = encoder.stem[0].weight.detach().clone()
    encoder.set_in_channels(24, pretrained=True)
    # smp's rule: channels cycle, rescaled by old / new channels.
    torch.testing.assert_close(encoder.stem[0].weight[:, 12:], weight / 2)


def test_encoder_depth() -> None:
    model = unet(encoder_depth=3, decoder_channels=(64, 32, 16)).eval()
    assert model.encoder.output_stride == 2
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 12, 32, 32))
        assert model(torch.randn(1, 12, 32, 32)).shape == (1, 7, 32, 32)
    assert len(features) == 4
    with pytest.raises(ValueError, match=r'depth must be in 1\.\.5'):
        MMEarthConvNeXtV2Encoder(*MMEARTH_CONVNEXTV2_SIZES['atto'], depth=6)


def test_no_dilation() -> None:
    with pytest.raises(ValueError, match='output_stride=8 needs dilation'):
        smp.DeepLabV3Plus(
            encoder_name='mmearth_convnextv2_atto_p16',
            encoder_weights=None,
            encoder_output_stride=8,
        )
    # A stride the encoder already has is accepted.
    MMEarthConvNeXtV2Encoder(*MMEARTH_CONVNEXTV2_SIZES['atto']).make_dilated(16)
