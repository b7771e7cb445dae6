from pathlib import Path

import pytest
import timm
import torch

from tests.models.test_weights import official_file
from torchgeo_mmearth.inference import load_encoder
from torchgeo_mmearth.models import WEIGHTS_DIR_VARIABLE, MMEarthWeights


def test_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = MMEarthWeights.S2_MP_MAE_MMEARTH
    folder = tmp_path / weights.meta['checkpoint']
    folder.mkdir()
    official_file(folder / 'checkpoint-199.pth', patch_size=16)
    monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path))
    for given in (weights, 'MMEarthWeights.S2_MP_MAE_MMEARTH'):
        encoder = load_encoder(given)
        assert encoder.weights == 'MMEarthWeights.S2_MP_MAE_MMEARTH'
        assert encoder.patch_size == 16 and encoder.num_features == 320
        assert encoder.bands == tuple(weights.meta['bands'])
        assert encoder.provenance['checkpoint'] == weights.meta['checkpoint']
        assert not encoder.model.training


def test_mpmae_checkpoint(tmp_path: Path) -> None:
    """A Lightning checkpoint of MPMAETask: the encoder under model., a decoder."""
    model = timm.create_model('mmearth_convnextv2_atto', num_classes=0, patch_size=16)
    state_dict = {f'model.{k}': v for k, v in model.state_dict().items()}
    state_dict['decoder.proj.weight'] = torch.zeros(2, 2)
    path = tmp_path / 'last.ckpt'
    torch.save(
        {
            'state_dict': state_dict,
            'hyper_parameters': {
                'model': 'mmearth_convnextv2_atto',
                'in_channels': 12,
                'patch_size': 16,
                'input_size': 112,
            },
            'mmearth': {'corpus': {'subset': 'MMEarthDemo', 'bands': None}},
        },
        path,
    )
    encoder = load_encoder(path)
    assert encoder.patch_size == 16 and encoder.input_size == 112
    assert encoder.bands[7:9] == ('B8A', 'B8')  # MMEarth's input bands
    assert encoder.provenance == {
        'corpus': 'MMEarthDemo',
        'ssl_method': 'mp-mae',
        'input_size': 112,
    }
    for key, value in model.state_dict().items():
        assert torch.equal(encoder.model.state_dict()[key], value), key


def test_errors(tmp_path: Path) -> None:
    path = tmp_path / 'other.pth'
    torch.save({'weights': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match='neither a torchgeo-mmearth export-weights'):
        load_encoder(path)
    with pytest.raises(ValueError, match='neither an existing file nor the name'):
        load_encoder('no-such-file.pth')
