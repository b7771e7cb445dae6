from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from torchgeo_mmearth.datamodules import MMEarthDataModule
from torchgeo_mmearth.modalities import PretextTask, default_pretext_tasks
from torchgeo_mmearth.models import MPMAE


@pytest.fixture(scope='module')
def batch(mmearth_root: Path) -> dict[str, Any]:
    """A normalised, cropped training batch with every pretext target."""
    dm = MMEarthDataModule(root=str(mmearth_root), subset='MMEarth64', batch_size=4)
    dm.setup('fit')
    torch.manual_seed(0)
    return dm.train_aug(next(iter(dm.train_dataloader())))  # type: ignore[misc]


def small_mpmae(**kwargs: Any) -> MPMAE:
    kwargs = {'decoder_dim': 32, **kwargs}
    return MPMAE('mmearth_convnextv2_atto', **kwargs)


def test_all_pretext_tasks_on_a_real_batch(batch: dict[str, Any]) -> None:
    model = small_mpmae()
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out.task_losses) == {task.name for task in default_pretext_tasks()}
    assert out.loss.isfinite()
    assert all(loss.isfinite() for loss in out.task_losses.values())
    assert all(0 <= f <= 1 for f in out.valid_fractions.values())
    assert out.mask.shape == (4, 7, 7) and (out.mask.sum((1, 2)) == 30).all()
    assert out.features.shape == (4, 320, 7, 7)
    assert (out.features * out.mask[:, None]).abs().max() == 0  # masked cells empty
    out.loss.backward()
    # norm is the classifier's LayerNorm after pooling: not part of pretraining
    grads = {
        n: p.grad
        for n, p in model.encoder.named_parameters()
        if not n.startswith('norm.')
    }
    assert all(g is not None and g.isfinite().all() for g in grads.values())
    assert model.criterion.weighting.log_vars.grad is not None  # type: ignore[union-attr]


def test_encoder_is_a_plain_timm_model() -> None:
    model = small_mpmae()
    reference = timm.create_model('mmearth_convnextv2_atto', in_chans=12)
    assert model.encoder.state_dict().keys() == reference.state_dict().keys()


def test_masked_input_does_not_reach_the_encoder(batch: dict[str, Any]) -> None:
    model = small_mpmae(tasks=[PretextTask.from_modality('biome')])
    mask = torch.zeros(4, 7, 7, dtype=torch.bool)
    mask[:, :, :4] = True
    first = model(batch, mask=mask)
    changed = dict(batch)
    changed['image_sentinel2'] = batch['image_sentinel2'].clone()
    changed['image_sentinel2'][..., :32] = 1e3  # only the masked patches
    second = model(changed, mask=mask)
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.loss, second.loss)


def test_nodata_pixels_are_inactive(batch: dict[str, Any]) -> None:
    model = small_mpmae(tasks=[PretextTask.from_modality('sentinel2')])
    empty = dict(batch)
    empty['image_sentinel2'] = batch['image_sentinel2'].clone()
    empty['image_sentinel2'][0] = torch.nan  # a tile without any data
    out = model(empty)
    assert out.features[0].abs().max() == 0
    assert out.loss.isfinite()


def test_mask_is_reproducible(batch: dict[str, Any]) -> None:
    model = small_mpmae(tasks=[PretextTask.from_modality('sentinel2')], mask_ratio=0.5)
    a = model(batch, generator=torch.Generator().manual_seed(1))
    b = model(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    assert (a.mask.sum((1, 2)) == 49 - int(49 * 0.5)).all()


def test_patch_16(mmearth_root: Path) -> None:
    dm = MMEarthDataModule(
        root=str(mmearth_root),
        subset='MMEarth',
        batch_size=2,
        modalities=['sentinel2', 'esa_worldcover'],
    )
    dm.setup('fit')
    batch = dm.train_aug(next(iter(dm.train_dataloader())))  # type: ignore[misc]
    tasks = [
        PretextTask.from_modality('sentinel2'),
        PretextTask.from_modality('esa_worldcover'),
    ]
    model = MPMAE('mmearth_convnextv2_atto', patch_size=16, tasks=tasks, decoder_dim=32)
    out = model(batch)
    assert out.mask.shape == (2, 7, 7)
    assert out.predictions['sentinel2'].shape == (2, 49, 16 * 16 * 12)


def test_errors(batch: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match='mask_ratio must be in'):
        small_mpmae(mask_ratio=1.0)
    encoder = timm.create_model('mmearth_convnextv2_atto_p16', in_chans=12)
    with pytest.raises(
        ValueError, match='patch_size 8 must equal the encoder patch size 16'
    ):
        MPMAE(encoder, patch_size=8)
    with pytest.raises(TypeError, match='no integer num_features'):
        MPMAE(torch.nn.Conv2d(12, 8, 3))
    model = small_mpmae(tasks=[PretextTask.from_modality('sentinel2')])
    with pytest.raises(KeyError, match='image_sentinel2'):
        model({'image_sentinel1': batch['image_sentinel2']})
    with pytest.raises(ValueError, match='not a multiple of the patch size 8'):
        model({'image_sentinel2': batch['image_sentinel2'][..., :50, :50]})


@pytest.mark.parametrize(
    ('encoder_init', 'large'), [('timm', 0.02), ('reference', 0.88)]
)
def test_encoder_init(encoder_init: Any, large: float) -> None:
    torch.manual_seed(0)
    encoder = small_mpmae(encoder_init=encoder_init).encoder
    weights = dict(encoder.named_parameters())
    # Depthwise convolutions and MLPs: std 1.0 truncated at +-2 (0.88) in FCMAE.
    for name in (
        'stem.3.weight',
        'stages.2.blocks.3.conv_dw.weight',
        'stages.2.blocks.3.mlp.fc1.weight',
        'stages.3.blocks.1.mlp.fc2.weight',
    ):
        assert weights[name].std().item() == pytest.approx(large, rel=0.1), name
    assert weights['stages.2.blocks.3.mlp.fc1.bias'].abs().max() == 0
    # The other convolutions keep 0.02 in both.
    for name in ('stem.0.weight', 'stages.2.downsample.1.weight'):
        assert weights[name].std().item() == pytest.approx(0.02, rel=0.1), name


def test_unknown_encoder_init() -> None:
    with pytest.raises(ValueError, match="Unknown encoder_init 'xavier'"):
        small_mpmae(encoder_init='xavier')
