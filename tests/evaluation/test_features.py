from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchgeo_mmearth._compat import ClassificationTask
from torchgeo_mmearth.evaluation import (
    ExtractedFeatures,
    SplitFeatures,
    extract_features,
    load_backbone,
    pooled_features,
)
from torchgeo_mmearth.models import MMEarthWeights

from ..models.test_weights import official_file
from .fake_classification import BandMeanDataModule, BandMeanDataset


class BandMeans(nn.Module):
    """A backbone whose features are the band means: exact to check against."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        assert not self.training
        assert torch.is_inference_mode_enabled()
        return x.mean(dim=(2, 3)) * self.scale


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, 'image': batch['image'] * self.factor}


class ScalingDataModule(BandMeanDataModule):
    """Stage-specific augmentations that scale the images."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aug = Scale(2.0)
        self.train_aug = Scale(5.0)
        self.test_aug = Scale(3.0)


def band_means(split: str, **kwargs: Any) -> Tensor:
    return BandMeanDataset(split, **kwargs).images.mean(dim=(2, 3))


class TestExtract:
    def test_applies_the_datamodule_aug_per_stage(self) -> None:
        kwargs = {'size': 4, 'channels': 3}
        dm = ScalingDataModule(batch_size=40, **kwargs)
        backbone = BandMeans()
        features = extract_features(backbone, dm, device='cpu', progress=False)
        # train: the evaluation transforms (val_aug, here the fallback aug);
        # val: aug; test: test_aug; in dataset order with the last short batch.
        for split, factor in (('train', 2.0), ('val', 2.0), ('test', 3.0)):
            torch.testing.assert_close(
                features[split].features, band_means(split, **kwargs) * factor
            )
        assert backbone.calls == 3 + 2 + 3  # 96, 48 and 96 samples in 40s
        assert features['train'].ids == tuple(f'train-{i}' for i in range(96))
        torch.testing.assert_close(
            features['val'].labels, BandMeanDataset('val', **kwargs).labels
        )
        train = extract_features(
            backbone, dm, ['train'], device='cpu', train_aug=True, progress=False
        )
        torch.testing.assert_close(
            train['train'].features, band_means('train', **kwargs) * 5.0
        )
        assert list(train.splits) == ['train']

    def test_torchgeo_normalisation(self) -> None:
        # The default aug z-scores with mean/std: features are band means / 100.
        dm = BandMeanDataModule(batch_size=16, size=4, channels=3)
        features = extract_features(BandMeans(), dm, ['val'], progress=False)
        torch.testing.assert_close(
            features['val'].features,
            (band_means('val', size=4, channels=3) - 1000) / 100,
            rtol=1e-5,
            atol=1e-4,
        )
        assert dm.trainer is None  # detached again

    def test_bf16_autocast(self) -> None:
        torch.manual_seed(0)
        backbone = load_backbone('mmearth_convnextv2_atto', in_channels=3)
        dm = BandMeanDataModule(batch_size=48, size=8, channels=3)
        full = extract_features(backbone, dm, ['val'], device='cpu', progress=False)
        half = extract_features(
            backbone, dm, ['val'], device='cpu', bf16=True, progress=False
        )
        assert half['val'].features.dtype == torch.float32
        assert not torch.equal(half['val'].features, full['val'].features)
        torch.testing.assert_close(
            half['val'].features, full['val'].features, rtol=0.1, atol=0.1
        )

    def test_cache(self, tmp_path: Path) -> None:
        dm = BandMeanDataModule(batch_size=32, size=4, channels=3)
        backbone = BandMeans()
        cache = tmp_path / 'features.pt'
        first = extract_features(backbone, dm, cache=cache, progress=False)
        calls = backbone.calls
        assert cache.exists() and not list(tmp_path.glob('*.partial'))
        second = extract_features(backbone, dm, cache=cache, progress=False)
        assert backbone.calls == calls  # read, not recomputed
        for split in ('train', 'val', 'test'):
            torch.testing.assert_close(second[split].features, first[split].features)
            assert second[split].ids == first[split].ids
        with torch.no_grad():
            backbone.scale.fill_(2.0)  # other weights: not the cached features
        with pytest.raises(ValueError, match=r'features cache .* was written for'):
            extract_features(backbone, dm, cache=cache, progress=False)
        backbone.scale.data.fill_(1.0)
        other = BandMeanDataModule(batch_size=32, size=4, channels=3, signal=2.0)
        with pytest.raises(ValueError, match=r'features cache .* was written for'):
            extract_features(backbone, other, cache=cache, progress=False)
        loaded = ExtractedFeatures.load(cache)
        assert loaded.meta == first.meta
        torch.save({'x': 1}, tmp_path / 'bad.pt')
        with pytest.raises(ValueError, match=r'bad\.pt is not a features file'):
            ExtractedFeatures.load(tmp_path / 'bad.pt')

    def test_errors(self) -> None:
        dm = BandMeanDataModule(batch_size=32, size=4, channels=3)
        with pytest.raises(ValueError, match='splits must be among'):
            extract_features(BandMeans(), dm, ['predict'])
        with pytest.raises(KeyError, match="without 'mask'"):
            extract_features(BandMeans(), dm, ['val'], label_key='mask', progress=False)
        with pytest.raises(ValueError, match=r'features must be \(B, D\)'):
            pooled_features(nn.Identity(), torch.zeros(2, 3, 4, 4))

    def test_split_features(self) -> None:
        split = SplitFeatures(
            torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]), ('a', 'b', 'c')
        )
        chosen = split.select_ids(['c', 'a'])
        assert chosen.labels.tolist() == [2, 0] and chosen.ids == ('c', 'a')
        with pytest.raises(ValueError, match='1 of 2 sample ids are not among'):
            split.select_ids(['a', 'z'])
        with pytest.raises(ValueError, match='3 feature rows but 2 labels'):
            SplitFeatures(torch.zeros(3, 2), torch.zeros(2))


class TestLoadBackbone:
    def test_timm_features_are_pre_logits(self) -> None:
        torch.manual_seed(0)
        backbone = load_backbone('mmearth_convnextv2_atto', in_channels=5)
        x = torch.randn(2, 5, 16, 16)
        with torch.inference_mode():
            features = pooled_features(backbone, x)
            expected = backbone.norm(backbone.forward_features(x).mean(dim=(2, 3)))
        assert features.shape == (2, 320)
        torch.testing.assert_close(features, expected)
        # The head norm stays at its identity initialisation: non-affine.
        assert torch.equal(backbone.norm.weight, torch.ones(320))
        assert torch.equal(backbone.norm.bias, torch.zeros(320))
        assert not backbone.training

    def test_weights_enum_as_classification_task(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights = MMEarthWeights.S2_MP_MAE
        path = official_file(tmp_path / 'checkpoint-199.pth')
        monkeypatch.setattr(weights.value, 'url', path.as_uri())
        task = ClassificationTask(
            model=weights.meta['model'], weights=weights, in_channels=12, num_classes=3
        )
        expected = {
            k: v for k, v in task.model.state_dict().items() if not k.startswith('head')
        }
        for given in (weights, 'MMEarthWeights.S2_MP_MAE'):
            backbone = load_backbone(weights.meta['model'], given)
            state = backbone.state_dict()
            assert state.keys() == expected.keys()
            for key, value in expected.items():
                assert torch.equal(state[key], value), key

    def test_checkpoint_files(self, tmp_path: Path) -> None:
        torch.manual_seed(1)
        source = load_backbone('mmearth_convnextv2_atto', in_channels=3)
        state = source.state_dict()
        lightning = tmp_path / 'probe.ckpt'
        torch.save(
            {
                'hyper_parameters': {'model': 'mmearth_convnextv2_atto'},
                'state_dict': {f'model.{k}': v for k, v in state.items()},
            },
            lightning,
        )
        plain = tmp_path / 'plain.pth'
        torch.save({'state_dict': state}, plain)
        for path in (lightning, plain, str(plain)):
            loaded = load_backbone('mmearth_convnextv2_atto', path, in_channels=3)
            for key, value in loaded.state_dict().items():
                assert torch.equal(value, state[key]), key

    def test_generic_timm_model(self, tmp_path: Path) -> None:
        torch.manual_seed(2)
        source = load_backbone('resnet18', in_channels=4)
        path = tmp_path / 'resnet.pth'
        # A classifier in the weights is ignored.
        state = {**source.state_dict(), 'fc.weight': torch.zeros(10, 512)}
        torch.save(state, path)
        loaded = load_backbone('resnet18', path, in_channels=4)
        assert torch.equal(loaded.conv1.weight, source.conv1.weight)
        torch.save({**state, 'decoder.weight': torch.zeros(2)}, path)
        with pytest.raises(ValueError, match=r'1 entries that the backbone .* lacks'):
            load_backbone('resnet18', path, in_channels=4)
        torch.save({'other.weight': torch.zeros(2)}, path)
        with pytest.raises(ValueError, match=r'none of the weights .* match'):
            load_backbone('resnet18', path, in_channels=4)
