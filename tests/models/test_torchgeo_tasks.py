from pathlib import Path

import pytest
import timm
import torch
from torch import Tensor

import torchgeo_mmearth  # noqa: F401  (registers the models)
from torchgeo_mmearth._compat import (
    ClassificationTask,
    SemanticSegmentationTask,
    load_state_dict,
)

pytestmark = pytest.mark.usefixtures('single_thread')

NAME = 'mmearth_convnextv2_atto'


def lightning_checkpoint(path: Path, state_dict: dict[str, Tensor]) -> str:
    """A checkpoint of a TorchGeo task whose ``self.model`` is the timm model."""
    torch.save(
        {
            'hyper_parameters': {'model': NAME},
            'state_dict': {f'model.{k}': v for k, v in state_dict.items()},
        },
        path,
    )
    return str(path)


class TestLoadStateDict:
    def test_with_and_without_head(self) -> None:
        source = timm.create_model(NAME, num_classes=10).state_dict()
        model = timm.create_model(NAME, num_classes=10)
        missing, unexpected = load_state_dict(model, dict(source))
        assert missing == [] and unexpected == []
        torch.testing.assert_close(model.head.weight, source['head.weight'])
        backbone = {k: v for k, v in source.items() if not k.startswith('head.')}
        missing, _ = load_state_dict(timm.create_model(NAME, num_classes=10), backbone)
        assert missing == ['head.weight', 'head.bias']

    def test_num_classes_mismatch(self) -> None:
        source = timm.create_model(NAME, num_classes=10).state_dict()
        with pytest.warns(UserWarning, match='num classes 5 != num classes'):
            missing, _ = load_state_dict(
                timm.create_model(NAME, num_classes=5), dict(source)
            )
        assert missing == ['head.weight', 'head.bias']
        with pytest.warns(UserWarning, match='num classes 320 != num classes'):
            load_state_dict(timm.create_model(NAME), dict(source))

    def test_in_chans_mismatch(self) -> None:
        source = timm.create_model(NAME, in_chans=3).state_dict()
        with pytest.warns(UserWarning, match='input channels 12 != input channels'):
            missing, _ = load_state_dict(timm.create_model(NAME), source)
        assert missing == ['stem.0.weight']


class TestClassificationTask:
    @pytest.mark.parametrize(
        'kwargs',
        [{'num_classes': 10}, {'task': 'multilabel', 'num_labels': 19, 'loss': 'bce'}],
    )
    def test_build_and_forward(self, kwargs: dict[str, object]) -> None:
        task = ClassificationTask(model=NAME, in_channels=12, **kwargs)
        outputs = kwargs.get('num_classes') or kwargs['num_labels']
        assert task(torch.randn(2, 12, 16, 16)).shape == (2, outputs)

    def test_freeze_backbone(self) -> None:
        task = ClassificationTask(
            model=NAME, in_channels=12, num_classes=10, freeze_backbone=True
        )
        trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
        assert trainable == {'head.weight', 'head.bias'}

    def test_weights_from_lightning_checkpoint(self, tmp_path: Path) -> None:
        source = timm.create_model(NAME, num_classes=10).state_dict()
        path = lightning_checkpoint(tmp_path / 'pretrained.ckpt', source)
        with pytest.warns(UserWarning, match='num classes 5 != num classes'):
            task = ClassificationTask(
                model=NAME, weights=path, in_channels=12, num_classes=5
            )
        state = task.model.state_dict()
        for key in ('stem.0.weight', 'stages.3.blocks.1.mlp.grn.weight', 'norm.weight'):
            torch.testing.assert_close(state[key], source[key])
        assert state['head.weight'].shape == (5, 320)
        assert task(torch.randn(1, 12, 16, 16)).shape == (1, 5)


class TestSemanticSegmentationTask:
    def test_build_and_forward(self) -> None:
        task = SemanticSegmentationTask(
            model='unet', backbone=NAME, in_channels=12, num_classes=7
        )
        assert task(torch.randn(1, 12, 32, 32)).shape == (1, 7, 32, 32)

    def test_freeze_backbone(self) -> None:
        task = SemanticSegmentationTask(
            model='unet',
            backbone=f'{NAME}_p16',
            in_channels=12,
            num_classes=7,
            freeze_backbone=True,
        )
        assert not any(p.requires_grad for p in task.model.encoder.parameters())
        assert all(p.requires_grad for p in task.model.decoder.parameters())

    def test_weights_from_lightning_checkpoint(self, tmp_path: Path) -> None:
        # A whole timm model (norm and head included) loads into the encoder,
        # which TorchGeo loads with strict=True.
        source = timm.create_model(NAME, num_classes=10).state_dict()
        path = lightning_checkpoint(tmp_path / 'pretrained.ckpt', source)
        task = SemanticSegmentationTask(
            model='unet', backbone=NAME, weights=path, in_channels=12, num_classes=7
        )
        encoder = task.model.encoder.state_dict()
        for key, value in encoder.items():
            torch.testing.assert_close(value, source[key])
        assert task(torch.randn(1, 12, 32, 32)).shape == (1, 7, 32, 32)
