"""Tests of MMEarthWeights and of what it is built from.

The official checkpoint table, safe loading, conversion, timm tags, builders,
TorchGeo's model API, transforms and band remapping.

Every checkpoint is a random one in the exact published format (see
``official_file``), served from a local path or ``file://`` URL.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from timm.models import _registry, get_pretrained_cfg
from torch import Tensor
from torchgeo.models import get_model, get_model_weights, get_weight, list_models

import torchgeo_mmearth
from torchgeo_mmearth.modalities import (
    MMEARTH_S2_BAND_STATS,
    SENTINEL2_INPUT_BANDS,
    SENTINEL2_RGB_BANDS,
)
from torchgeo_mmearth.models import (
    OFFICIAL_CHECKPOINTS,
    CheckpointDownloadError,
    MMEarthConvNeXtV2,
    MMEarthWeights,
    UnsafeCheckpointError,
    checkpoint_filter_fn,
    convert_checkpoint,
    load_checkpoint,
    mmearth_convnextv2_atto,
    mmearth_convnextv2_atto_p16,
    mmearth_convnextv2_tiny,
)
from torchgeo_mmearth.models.checkpoints import CorruptCheckpointError
from torchgeo_mmearth.transforms import MMEarthS2Normalize

from ..transforms.sentinel2 import raw_s2, zscore
from .conftest import official_checkpoint

pytestmark = pytest.mark.usefixtures('single_thread')

HEADLINE = MMEarthWeights.S2_MP_MAE
P16 = MMEarthWeights.S2_MP_MAE_MMEARTH
RGB = MMEarthWeights.RGB_MAE

#: The checkpoints of the torch.hub entry point of vishalned/MMEarth-train
#: (hubconf.py), whose full URLs are published there.
HUB_URLS = {
    'S2_MP_MAE': 'https://sid.erda.dk/share_redirect/g23YOnaaTp/'
    'pt-all_mod_atto_1M_64_uncertainty_56-8/checkpoint-199.pth',
    'S2_MP_MAE_UNWEIGHTED': 'https://sid.erda.dk/share_redirect/g23YOnaaTp/'
    'pt-all_mod_atto_1M_64_unweighted_56-8/checkpoint-199.pth',
    'S2_MP_MAE_MMEARTH': 'https://sid.erda.dk/share_redirect/g23YOnaaTp/'
    'pt-all_mod_atto_1M_128_uncertainty_112-16/checkpoint-199.pth',
    'S2_MAE': 'https://sid.erda.dk/share_redirect/g23YOnaaTp/'
    'pt-S2_atto_1M_64_uncertainty_56-8/checkpoint-199.pth',
}


def architecture(weights: MMEarthWeights) -> tuple[str, int, int]:
    """Size, patch size and input bands of a member."""
    match = re.fullmatch(
        r'mmearth_convnextv2_([a-z]+?)(?:_p16)?', weights.meta['model']
    )
    assert match is not None
    return match[1], weights.meta['patch_size'], weights.meta['in_chans']


def pretraining_args(patch_size: int = 8) -> argparse.Namespace:
    """``args`` as MMEarth-train's main_pretrain.py saves them (paths included)."""
    return argparse.Namespace(
        model='convnextv2_atto',
        input_size=7 * patch_size,
        patch_size=patch_size,
        mask_ratio=0.6,
        loss_aggr='uncertainty',
        data_dir=pathlib.PosixPath('/projects/mmearth/data_1M_v001_64'),
        processed_dir=pathlib.PurePosixPath('/scratch/beton'),
        output_dir='output/pt-all_mod_atto_1M_64_uncertainty_56-8',
        inp_modalities={'sentinel2': list(SENTINEL2_INPUT_BANDS)},
        out_modalities={'sentinel2': list(SENTINEL2_INPUT_BANDS), 'era5': 'all'},
        lr=np.float64(6e-4),
        epochs=200,
        distributed=False,
    )


def official_file(
    path: Path,
    size: str = 'atto',
    patch_size: int = 8,
    in_chans: int = 12,
    seed: int = 0,
) -> Path:
    """Write a random ``checkpoint-199.pth`` in the published format."""
    checkpoint = official_checkpoint(size, patch_size, in_chans, seed)
    checkpoint['args'] = pretraining_args(patch_size)
    checkpoint['optimizer'] = {
        'state': {0: {'step': torch.tensor(1.0), 'exp_avg': torch.zeros(3)}},
        'param_groups': [{'lr': 6e-4, 'betas': (0.9, 0.95), 'params': [0]}],
    }
    checkpoint['scaler'] = {'scale': 65536.0, 'growth_factor': 2.0}
    torch.save(checkpoint, path)
    return path


def serve(
    weights: MMEarthWeights,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    seed: int = 0,
    as_uri: bool = True,
) -> Path:
    """Serve a random official-format file for *weights* from a local URL."""
    size, patch_size, in_chans = architecture(weights)
    folder = tmp_path / weights.name
    folder.mkdir(exist_ok=True)
    path = official_file(
        folder / 'checkpoint-199.pth', size, patch_size, in_chans, seed
    )
    monkeypatch.setattr(weights.value, 'url', path.as_uri() if as_uri else str(path))
    return path


def expected_state_dict(
    path: Path, model: str, in_chans: int = 12
) -> dict[str, Tensor]:
    """Independent conversion of a file: plain torch.load + checkpoint_filter_fn."""
    checkpoint = torch.load(path, weights_only=False)
    with torch.device('meta'):
        target = timm.create_model(model, in_chans=in_chans)
    return checkpoint_filter_fn(checkpoint, target)


class Evil:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Unpickle by calling os.system."""
        return os.system, (f'touch {self.marker}',)


class Custom:
    """An arbitrary class: not on the allow-list."""


class TestCheckpointTable:
    def test_one_member_per_published_checkpoint(self) -> None:
        assert [w.name for w in MMEarthWeights] == [
            c.name for c in OFFICIAL_CHECKPOINTS
        ]
        assert len(MMEarthWeights) == 10
        pattern = (
            r'https://sid\.erda\.dk/share_redirect/g23YOnaaTp/'
            r'pt-(all_mod|img_mod|pix_mod|S2|rgb)_(atto|tiny)_(1M_64|1M_128|100k_128)_'
            r'(uncertainty|unweighted)_(56-8|112-16)/checkpoint-199\.pth'
        )
        for weights in MMEarthWeights:
            match = re.fullmatch(pattern, weights.url)
            assert match, weights.url
            inputs, size, data, loss, geometry = match.groups()
            assert weights.meta['checkpoint'] in weights.url
            assert architecture(weights)[0] == size
            assert (
                f'{weights.meta["input_size"]}-{weights.meta["patch_size"]}' == geometry
            )
            dataset = {
                '1M_64': 'MMEarth64',
                '1M_128': 'MMEarth',
                '100k_128': 'MMEarth100k',
            }
            assert weights.meta['dataset'] == dataset[data]
            assert weights.meta['loss_weighting'] == loss
            assert (weights.meta['in_chans'] == 3) == (inputs == 'rgb')
        for name, url in HUB_URLS.items():
            assert MMEarthWeights[name].url == url
        assert len({w.url for w in MMEarthWeights}) == 10

    def test_headline(self) -> None:
        meta = HEADLINE.meta
        assert HEADLINE.meta['checkpoint'] == 'pt-all_mod_atto_1M_64_uncertainty_56-8'
        assert (meta['model'], meta['in_chans'], meta['dataset']) == (
            'mmearth_convnextv2_atto',
            12,
            'MMEarth64',
        )
        assert (meta['input_size'], meta['patch_size']) == (56, 8)
        assert (meta['outputs'], meta['loss_weighting']) == (
            'all modalities',
            'uncertainty',
        )

    @pytest.mark.parametrize('weights', MMEarthWeights)
    def test_bands(self, weights: MMEarthWeights) -> None:
        assert len(weights.meta['bands']) == weights.meta['in_chans']
        expected = (
            SENTINEL2_RGB_BANDS
            if weights.name.startswith('RGB')
            else (SENTINEL2_INPUT_BANDS)
        )
        assert tuple(weights.meta['bands']) == expected
        if weights.meta['in_chans'] == 12:  # the pretraining order: B8A before B8
            assert weights.meta['bands'][7:9] == ['B8A', 'B8']

    @pytest.mark.parametrize('weights', MMEarthWeights)
    def test_meta(self, weights: MMEarthWeights) -> None:
        keys = {'dataset', 'in_chans', 'model', 'publication', 'repo', 'ssl_method'}
        keys |= {'bands', 'patch_size', 'input_size', 'license'}
        assert keys <= set(weights.meta)
        assert weights.meta['publication'] == 'https://arxiv.org/abs/2405.02771'
        assert weights.meta['repo'] == 'https://github.com/vishalned/MMEarth-train'
        with torch.device('meta'):
            model = timm.create_model(
                weights.meta['model'], in_chans=weights.meta['in_chans']
            )
        assert isinstance(model, MMEarthConvNeXtV2)
        assert model.patch_size == weights.meta['patch_size']
        assert weights.meta['input_size'] == 7 * weights.meta['patch_size']

    @pytest.mark.parametrize('weights', MMEarthWeights)
    def test_timm_tag(self, weights: MMEarthWeights) -> None:
        cfg = get_pretrained_cfg(weights.meta['timm_name'])
        assert cfg is not None and cfg.custom_load
        assert (
            weights.meta['timm_name']
            == f'{weights.meta["model"]}.{weights.name.lower()}'
        )
        url, file_name = cfg.url
        assert url == weights.url
        assert weights.meta['checkpoint'] in file_name
        assert cfg.input_size == (
            weights.meta['in_chans'],
            *(weights.meta['input_size'],) * 2,
        )

    def test_default_tags(self) -> None:
        assert get_pretrained_cfg('mmearth_convnextv2_atto').tag == 's2_mp_mae'
        assert (
            get_pretrained_cfg('mmearth_convnextv2_atto_p16').tag == 's2_mp_mae_mmearth'
        )
        assert get_pretrained_cfg('mmearth_convnextv2_tiny').tag == 's2_mp_mae_tiny'
        assert not get_pretrained_cfg('mmearth_convnextv2_nano').has_weights


class TestSafeLoading:
    def test_official_pickle(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        with pytest.raises(Exception, match='weights_only'):
            torch.load(path, weights_only=True)  # what plain PyTorch does
        checkpoint = load_checkpoint(path)
        args = checkpoint['args']
        assert isinstance(args, argparse.Namespace)
        assert args.data_dir == pathlib.PosixPath('/projects/mmearth/data_1M_v001_64')
        assert isinstance(args.lr, np.float64) and checkpoint['epoch'] == 199
        assert (
            load_checkpoint(path.as_uri())['model'].keys() == checkpoint['model'].keys()
        )

    def test_numpy_arrays(self, tmp_path: Path) -> None:
        torch.save(
            {'args': argparse.Namespace(mean=np.arange(3.0))}, tmp_path / 'a.pth'
        )
        assert load_checkpoint(tmp_path / 'a.pth')['args'].mean.tolist() == [0, 1, 2]
        objects = np.array([Custom()], dtype=object)
        torch.save({'args': argparse.Namespace(x=objects)}, tmp_path / 'b.pth')
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(tmp_path / 'b.pth')

    def test_refuses_code_execution(self, tmp_path: Path) -> None:
        marker = tmp_path / 'pwned'
        path = official_file(tmp_path / 'checkpoint-199.pth')
        checkpoint = torch.load(path, weights_only=False)
        checkpoint['args'] = Evil(marker)
        torch.save(checkpoint, path)
        with pytest.raises(UnsafeCheckpointError, match=r'refusing to load .*system'):
            load_checkpoint(path)
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(path.as_uri())
        assert not marker.exists()

    def test_refuses_arbitrary_class(self, tmp_path: Path) -> None:
        torch.save({'model': {}, 'args': Custom()}, tmp_path / 'c.pth')
        with pytest.raises(UnsafeCheckpointError, match=r'test_weights\.Custom'):
            load_checkpoint(tmp_path / 'c.pth')

    def test_allow_list_is_scoped(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        load_checkpoint(path)
        with pytest.raises(Exception, match=r'argparse\.Namespace'):
            torch.load(path, weights_only=True)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match='no checkpoint file'):
            load_checkpoint(tmp_path / 'nothing.pth')

    def test_truncated_or_other_file(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        truncated = tmp_path / 'truncated.pth'
        truncated.write_bytes(path.read_bytes()[:1000])
        text = tmp_path / 'notes.pth'
        text.write_text('not a checkpoint')
        for bad in (truncated, text, tmp_path / 'empty.pth'):
            bad.touch()
            for mmap in (False, True):
                with pytest.raises(CorruptCheckpointError) as caught:
                    load_checkpoint(bad, mmap=mmap)
                message = str(caught.value)
                assert message.startswith(f'{bad} is truncated or not a PyTorch')
                assert caught.value.path == str(bad) and '\n' not in message
                assert caught.value.__cause__ is None
        # Through the loaders of the weights too, also from Python.
        with pytest.raises(CorruptCheckpointError, match=r'truncated\.pth is trunc'):
            mmearth_convnextv2_atto(weights=str(truncated))
        with pytest.raises(CorruptCheckpointError, match=r'truncated\.pth is trunc'):
            HEADLINE.get_state_dict(truncated)

    def test_enum_and_timm_refuse(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        marker = tmp_path / 'pwned'
        path = tmp_path / 'evil.pth'
        torch.save({'model': {}, 'args': Evil(marker)}, path)
        monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
        with pytest.raises(UnsafeCheckpointError):
            HEADLINE.get_state_dict(progress=False)
        with pytest.raises((UnsafeCheckpointError, RuntimeError), match='system'):
            timm.create_model(
                'mmearth_convnextv2_atto',
                pretrained=True,
                pretrained_cfg_overlay={'file': str(path)},
            )
        with pytest.raises(UnsafeCheckpointError):
            mmearth_convnextv2_atto(weights=str(path))
        assert not marker.exists()


class TestGetStateDict:
    @pytest.mark.parametrize(
        'weights', [HEADLINE, P16, RGB, MMEarthWeights.S2_MP_MAE_TINY]
    )
    def test_converts_official_file(
        self, weights: MMEarthWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = serve(weights, tmp_path, monkeypatch)
        state_dict = weights.get_state_dict(progress=False)
        expected = expected_state_dict(
            path, weights.meta['model'], weights.meta['in_chans']
        )
        assert state_dict.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(state_dict[key], value, rtol=0, atol=0)
        with torch.device('meta'):
            model = timm.create_model(
                weights.meta['model'], in_chans=weights.meta['in_chans'], num_classes=5
            )
        missing = set(model.state_dict()) - set(state_dict)
        assert missing == {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
        cached = Path(torch.hub.get_dir(), 'checkpoints')
        assert [p.name for p in cached.iterdir()] == [
            f'mmearth-{weights.meta["checkpoint"]}-checkpoint-199.pth'
        ]

    def test_torchgeo_call(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # TorchGeo >= 0.9's tasks call get_state_dict(progress=True,
        # check_hash=True, weights_only=True); the official file names hold no
        # hash ('checkpoint-199.pth' is no sha256 prefix '199').
        path = serve(HEADLINE, tmp_path, monkeypatch)
        state_dict = HEADLINE.get_state_dict(
            progress=False, check_hash=True, weights_only=True
        )
        expected = expected_state_dict(path, HEADLINE.meta['model'])
        torch.testing.assert_close(state_dict, expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match='weights_only=False is not supported'):
            HEADLINE.get_state_dict(weights_only=False)

    def test_hash_in_url_name_is_checked(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-0123abcd.pth')
        cache = tmp_path / 'cache'
        with pytest.raises(CheckpointDownloadError, match='checksum mismatch'):
            load_checkpoint(path.as_uri(), model_dir=cache, check_hash=True)
        assert list(cache.iterdir()) == []  # nothing partial left in the cache
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        good = path.rename(tmp_path / f'checkpoint-{digest}.pth')
        load_checkpoint(good.as_uri(), model_dir=cache, check_hash=True)
        assert [p.name for p in cache.iterdir()] == [good.name]

    def test_plain_path_and_cache_per_member(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        serve(HEADLINE, tmp_path, monkeypatch, seed=1, as_uri=False)
        serve(MMEarthWeights.S2_MAE, tmp_path, monkeypatch, seed=2)
        serve(MMEarthWeights.S2_MP_MAE_UNWEIGHTED, tmp_path, monkeypatch, seed=3)
        stems = [
            w.get_state_dict(progress=False)['stem.0.weight']
            for w in (
                HEADLINE,
                MMEarthWeights.S2_MAE,
                MMEarthWeights.S2_MP_MAE_UNWEIGHTED,
            )
        ]
        assert not torch.equal(stems[0], stems[1])
        assert not torch.equal(stems[1], stems[2])
        # The second call reads the cache, the file behind the URL may be gone.
        Path(MMEarthWeights.S2_MAE.url.removeprefix('file://')).unlink()
        torch.testing.assert_close(
            MMEarthWeights.S2_MAE.get_state_dict(progress=False)['stem.0.weight'],
            stems[1],
        )

    def test_export_format(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        source = timm.create_model('mmearth_convnextv2_atto').state_dict()
        meta = {
            'model': 'mmearth_convnextv2_atto',
            'in_chans': 12,
            'bands': list(SENTINEL2_INPUT_BANDS),
            'patch_size': 8,
            'input_size': 56,
            'corpus': 'MMEarth64',
        }
        path = tmp_path / 'export.pth'
        torch.save({'state_dict': source, 'meta': meta}, path)
        monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
        state_dict = HEADLINE.get_state_dict(progress=False)
        assert 'norm.weight' in state_dict  # the export holds the whole encoder
        for key, value in state_dict.items():
            torch.testing.assert_close(value, source[key])

    @pytest.mark.parametrize(
        ('size', 'patch_size', 'in_chans', 'message'),
        [
            ('tiny', 8, 12, r'another architecture: depths=\[3, 3, 9, 3\]'),
            ('atto', 16, 12, r'patch size 16 .* build the model with patch_size=16'),
            ('atto', 8, 3, r'pretrained on 3 input bands, the model has in_chans=12'),
        ],
    )
    def test_wrong_file(
        self,
        size: str,
        patch_size: int,
        in_chans: int,
        message: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        path = official_file(
            tmp_path / 'checkpoint-199.pth', size, patch_size, in_chans
        )
        monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
        with pytest.raises(ValueError, match=r'MMEarthWeights\.S2_MP_MAE .*' + message):
            HEADLINE.get_state_dict(progress=False)

    def test_convert_checkpoint(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth', patch_size=16)
        converted = convert_checkpoint(
            load_checkpoint(path), 'mmearth_convnextv2_atto_p16'
        )
        model = timm.create_model('mmearth_convnextv2_atto_p16')
        assert model.load_state_dict(converted, strict=False).unexpected_keys == []


class TestBuilders:
    def test_weights_enum(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = serve(HEADLINE, tmp_path, monkeypatch)
        expected = expected_state_dict(path, 'mmearth_convnextv2_atto')
        for model in (
            mmearth_convnextv2_atto(weights=HEADLINE, num_classes=4),
            mmearth_convnextv2_atto(weights='MMEarthWeights.S2_MP_MAE'),
            get_model('mmearth_convnextv2_atto', weights=HEADLINE),
            get_model('mmearth_convnextv2_atto', HEADLINE),  # TorchGeo's positional
        ):
            state = model.state_dict()
            for key, value in expected.items():
                torch.testing.assert_close(state[key], value)
        features = mmearth_convnextv2_atto(weights=HEADLINE, features_only=True)
        torch.testing.assert_close(
            features.state_dict()['stages_3.blocks.1.mlp.fc2.weight'],
            expected['stages.3.blocks.1.mlp.fc2.weight'],
        )
        assert features.pretrained_cfg.get('state_dict') is None

    def test_takes_patch_size_and_bands_of_weights(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        serve(P16, tmp_path, monkeypatch)
        serve(RGB, tmp_path, monkeypatch)
        model = mmearth_convnextv2_atto(weights=P16)
        assert (model.patch_size, model.in_chans) == (16, 12)
        assert model(torch.randn(1, 12, 32, 32)).shape == (1, 320)
        assert mmearth_convnextv2_atto(weights=RGB).in_chans == 3

    def test_errors(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        serve(HEADLINE, tmp_path, monkeypatch)
        with pytest.raises(ValueError, match=r'pretrained on 12 input bands .*B8A, B8'):
            mmearth_convnextv2_atto(weights=HEADLINE, in_chans=3)
        with pytest.raises(ValueError, match='remap_bands'):
            mmearth_convnextv2_atto(weights=HEADLINE, in_chans=13)
        with pytest.raises(
            ValueError, match=r'patch size 8, mmearth_convnextv2_atto_p16 has 16'
        ):
            mmearth_convnextv2_atto_p16(weights=HEADLINE)
        with pytest.raises(ValueError, match='have patch size 8, got patch_size=16'):
            mmearth_convnextv2_atto(weights=HEADLINE, patch_size=16)
        with pytest.raises(ValueError, match=r'for mmearth_convnextv2_atto .*not for'):
            mmearth_convnextv2_tiny(weights=HEADLINE)
        with pytest.raises(ValueError, match='either pretrained=True'):
            mmearth_convnextv2_atto(pretrained=True, weights=HEADLINE)
        with pytest.raises(ValueError, match='is not a valid WeightsEnum'):
            mmearth_convnextv2_atto(weights='MMEarthWeights.NOPE')
        with pytest.raises(
            ValueError, match=r"not for an MMEarth ConvNeXt V2: .*'resnet18'"
        ):
            mmearth_convnextv2_atto(weights='ResNet18_Weights.SENTINEL2_ALL_MOCO')
        with pytest.raises(FileNotFoundError, match='no checkpoint file'):
            mmearth_convnextv2_atto(weights='missing.pth')

    def test_checkpoint_paths(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth', patch_size=16)
        expected = expected_state_dict(path, 'mmearth_convnextv2_atto_p16')
        with pytest.raises(ValueError, match='build the model with patch_size=16'):
            mmearth_convnextv2_atto(weights=str(path))
        model = mmearth_convnextv2_atto(weights=path.as_uri(), patch_size=16)
        torch.testing.assert_close(model.stem[3].weight, expected['stem.3.weight'])
        # An export carries its own bands and patch size.
        export = tmp_path / 'export.pth'
        meta = {
            'model': 'mmearth_convnextv2_atto_p16',
            'in_chans': 12,
            'patch_size': 16,
        }
        torch.save({'state_dict': model.state_dict(), 'meta': meta}, export)
        loaded = mmearth_convnextv2_atto(weights=str(export))
        assert loaded.patch_size == 16
        torch.testing.assert_close(loaded.stem[3].weight, expected['stem.3.weight'])


class TestTimmTags:
    def test_pretrained_from_url(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth')
        expected = expected_state_dict(path, 'mmearth_convnextv2_atto')
        name = 'mmearth_convnextv2_atto.s2_mp_mae'
        cfg = _registry._model_pretrained_cfgs[name]
        patched = dataclasses.replace(cfg, url=(path.as_uri(), cfg.url[1]))
        monkeypatch.setitem(_registry._model_pretrained_cfgs, name, patched)
        for model_name in (name, 'mmearth_convnextv2_atto'):  # the default tag
            model = timm.create_model(model_name, pretrained=True, num_classes=3)
            torch.testing.assert_close(model.stem[0].weight, expected['stem.0.weight'])
            assert model.head.weight.shape == (3, 320)
        cached = Path(torch.hub.get_dir(), 'checkpoints', cfg.url[1])
        assert cached.exists()
        features = timm.create_model(name, pretrained=True, features_only=True)
        assert [f.shape[1] for f in features(torch.randn(1, 12, 16, 16))] == [
            40,
            80,
            160,
            320,
        ]

    def test_pretrained_from_file(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth', patch_size=16)
        expected = expected_state_dict(path, 'mmearth_convnextv2_atto_p16')
        model = timm.create_model(
            'mmearth_convnextv2_atto_p16.s2_mp_mae_mmearth',
            pretrained=True,
            pretrained_cfg_overlay={'file': str(path)},
        )
        for key, value in expected.items():
            torch.testing.assert_close(model.state_dict()[key], value)

    def test_rgb_tag(self, tmp_path: Path) -> None:
        path = official_file(tmp_path / 'checkpoint-199.pth', in_chans=3)
        overlay = {'file': str(path), 'custom_load': True}
        model = timm.create_model(
            'mmearth_convnextv2_atto.rgb_mae',
            pretrained=True,
            pretrained_cfg_overlay=overlay,
        )
        assert model.in_chans == 3  # from the tag's input_size
        with pytest.raises(ValueError, match='pretrained on 3 input bands'):
            timm.create_model(
                'mmearth_convnextv2_atto.rgb_mae',
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                in_chans=12,
            )


class TestTorchGeoApi:
    @pytest.mark.parametrize('weights', MMEarthWeights)
    def test_get_weight(self, weights: MMEarthWeights) -> None:
        assert get_weight(str(weights)) is weights
        assert str(weights) == f'MMEarthWeights.{weights.name}'

    def test_registered(self) -> None:
        names = {w.meta['model'] for w in MMEarthWeights}
        assert names <= set(list_models())
        for name in names:
            assert get_model_weights(name) is MMEarthWeights
        assert get_model_weights(mmearth_convnextv2_atto) is MMEarthWeights
        assert isinstance(get_model('mmearth_convnextv2_atto_p16'), MMEarthConvNeXtV2)

    def test_registered_on_plugin_import(self) -> None:
        assert torchgeo_mmearth.models.MMEarthWeights is MMEarthWeights


class TestTransforms:
    def test_published_statistics(self) -> None:
        for level in ('l1c', 'l2a'):
            entry = MMEARTH_S2_BAND_STATS[f'sentinel2_{level}']
            assert len(entry['mean']) == len(entry['std']) == 12
            assert all(s > 0 for s in entry['std'])
        # L1C and L2A differ (top-of-atmosphere vs surface reflectance).
        assert MMEARTH_S2_BAND_STATS['sentinel2_l1c']['mean'][0] == pytest.approx(
            1864.88, abs=0.01
        )
        assert MMEARTH_S2_BAND_STATS['sentinel2_l2a']['mean'][0] == pytest.approx(
            1349.40, abs=0.01
        )

    @pytest.mark.parametrize('weights', MMEarthWeights)
    def test_transforms(self, weights: MMEarthWeights) -> None:
        c = weights.meta['in_chans']
        x = raw_s2(c, 8, 8)
        out = weights.transforms({'image': x, 'label': 3})
        assert out['label'] == 3 and out['image'].dtype == torch.float32
        torch.testing.assert_close(
            out['image'], zscore(x, 'l2a', weights.meta['bands'])
        )

    def test_level_per_sample(self) -> None:
        transform = HEADLINE.transforms
        batch = raw_s2(3, 12, 4, 4)
        out = transform({'image': batch, 's2_type': torch.tensor([0, 1, 0])})['image']
        for i, level in enumerate(('l1c', 'l2a', 'l1c')):
            torch.testing.assert_close(out[i], zscore(batch[i], level))
        one = transform({'image': batch[0], 's2_type': 'l1c'})['image']
        torch.testing.assert_close(one, zscore(batch[0], 'l1c'))
        strings = transform({'image': batch, 's2_type': ['l1c', 'l2a', 'l1c']})['image']
        torch.testing.assert_close(strings, out)
        series = batch[:, None].expand(3, 2, 12, 4, 4)  # (B, T, C, H, W)
        out5 = transform({'image': series, 's2_type': torch.tensor([0, 1, 0])})['image']
        torch.testing.assert_close(out5[:, 1], out)

    def test_errors(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"must have 12 channels \(\['B1'"):
            HEADLINE.transforms({'image': raw_s2(13, 4, 4)})
        strict = MMEarthS2Normalize(level=None)
        with pytest.raises(KeyError, match="no 's2_type'"):
            strict({'image': raw_s2(12, 4, 4)})
        with pytest.raises(ValueError, match='s2_type must be in'):
            strict({'image': raw_s2(12, 4, 4), 's2_type': 'l3'})
        with pytest.raises(ValueError, match='level must be one of'):
            MMEarthS2Normalize(level='toa')
        with pytest.raises(ValueError, match='not a Sentinel-2 band'):
            MMEarthS2Normalize(bands=['VV'])

    def test_band_stats_file(self, tmp_path: Path) -> None:
        # A corpus band_stats.json: 13 stored bands (with B10), L2A B10 NaN.
        stored = ['B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8A', 'B8', 'B9']
        stored += ['B10', 'B11', 'B12']
        stats = {
            'sentinel2_l2a': {
                'mean': [100.0 * (i + 1) for i in range(13)],
                'std': [
                    10.0 * (i + 1) if b != 'B10' else float('nan')
                    for i, b in enumerate(stored)
                ],
            }
        }
        path = tmp_path / 'data_1M_v001_64_band_stats.json'
        path.write_text(json.dumps(stats))
        transform = MMEarthS2Normalize(['B2', 'B8', 'B8A'], band_stats=path)
        out = transform({'image': torch.full((3, 1, 1), 1000.0)})['image'].flatten()
        expected = [(1000 - 200) / 20, (1000 - 900) / 90, (1000 - 800) / 80]
        torch.testing.assert_close(out, torch.tensor(expected))
        with pytest.raises(ValueError, match='no usable mean and std for B10'):
            MMEarthS2Normalize(['B10'], band_stats=stats)
        with pytest.raises(ValueError, match="no 'sentinel2_l1c' entry"):
            MMEarthS2Normalize(band_stats=stats, level='l1c')
        no_l1c = MMEarthS2Normalize(['B2'], band_stats=stats)
        with pytest.raises(ValueError, match='without band statistics'):
            no_l1c({'image': torch.ones(2, 1, 1, 1), 's2_type': torch.tensor([1, 0])})
        with pytest.raises(ValueError, match='must list 13'):
            MMEarthS2Normalize(
                band_stats={'sentinel2_l2a': {'mean': [1.0], 'std': [1.0]}}
            )

    def test_scale(self) -> None:
        x = raw_s2(12, 2, 2)
        scaled = MMEarthS2Normalize(scale=10_000)({'image': x.float() / 10_000})
        torch.testing.assert_close(scaled['image'], zscore(x, 'l2a'), atol=1e-4, rtol=0)


@functools.cache
def _network() -> bool:
    try:
        socket.create_connection(('sid.erda.dk', 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize('weights', MMEarthWeights)
def test_real_download(weights: MMEarthWeights) -> None:
    """Download and convert the real checkpoint (skipped without network)."""
    if not _network():
        pytest.skip('sid.erda.dk is not reachable')
    state_dict = weights.get_state_dict(progress=False)
    model = get_model(weights.meta['model'], weights=weights, num_classes=2)
    assert model.load_state_dict(state_dict, strict=False).unexpected_keys == []
    c, size = weights.meta['in_chans'], weights.meta['input_size']
    assert model(torch.randn(1, c, size, size)).shape == (1, 2)
