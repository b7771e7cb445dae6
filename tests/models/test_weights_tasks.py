"""MMEarthWeights through TorchGeo's own tasks and ``torchgeo fit``.

The official-format fixture is served from a local ``file://`` URL; the
MPMAETask checkpoint fixture has the layout of that task's Lightning
checkpoints (encoder under ``model.``, decoder and loss elsewhere).
"""

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchgeo.main import main

from torchgeo_mmearth._compat import ClassificationTask, SemanticSegmentationTask
from torchgeo_mmearth.models import MMEarthWeights, checkpoint_filter_fn
from torchgeo_mmearth.models.checkpoints import load_checkpoint

from .test_weights import official_file

pytestmark = pytest.mark.usefixtures('single_thread')

HEADLINE = MMEarthWeights.S2_MP_MAE
NAME = 'mmearth_convnextv2_atto'
CONF = Path(__file__).parents[1] / 'conf'


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Tensor]:
    """Serve a random official checkpoint as MMEarthWeights.S2_MP_MAE.

    Returns:
        Its encoder, converted independently of the weights enum.
    """
    path = official_file(tmp_path / 'checkpoint-199.pth')
    monkeypatch.setattr(HEADLINE.value, 'url', path.as_uri())
    model = ClassificationTask(model=NAME, in_channels=12, num_classes=2).model
    return checkpoint_filter_fn(load_checkpoint(path), model)


@pytest.fixture
def mpmae_checkpoint(tmp_path: Path, served: dict[str, Tensor]) -> Path:
    """A checkpoint in the layout of MPMAETask's Lightning checkpoints."""
    state_dict = {f'model.{k}': v for k, v in served.items()}
    state_dict['decoder.proj.weight'] = torch.randn(8, 320, 1, 1)
    state_dict['decoder.heads.biome.weight'] = torch.randn(14, 8)
    state_dict['criterion.log_vars'] = torch.zeros(12)
    path = tmp_path / 'mpmae.ckpt'
    torch.save(
        {
            'epoch': 0,
            'global_step': 1,
            'hyper_parameters': {
                'model': NAME,
                'in_channels': 12,
                'patch_size': 8,
                'lr': 1.5e-4,
            },
            'state_dict': state_dict,
        },
        path,
    )
    return path


def assert_loaded(model: nn.Module, expected: dict[str, Tensor]) -> None:
    state = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def train_step(
    task: ClassificationTask | SemanticSegmentationTask,
) -> dict[str, Tensor]:
    """One optimiser step of the task's optimiser; returns the parameters before."""
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    task.train()
    x = torch.randn(2, 12, 16, 16)
    y_hat = task(x)
    if isinstance(task, SemanticSegmentationTask):
        target = torch.randint(0, y_hat.shape[1], (2, 16, 16))
    elif task.hparams['task'] == 'multilabel':
        target = torch.randint(0, 2, y_hat.shape).float()
    else:
        target = torch.randint(0, y_hat.shape[1], (2,))
    task.criterion(y_hat, target).backward()
    optimizer = task.configure_optimizers()['optimizer']
    optimizer.step()
    return before


def changed(task: nn.Module, before: dict[str, Tensor]) -> set[str]:
    return {
        n for n, p in task.model.named_parameters() if not torch.equal(p, before[n])
    }


CLASSIFICATION = [
    pytest.param({'num_classes': 5}, id='multiclass'),
    pytest.param(
        {'task': 'multilabel', 'num_labels': 4, 'loss': 'bce'}, id='multilabel'
    ),
]


class TestClassificationTask:
    @pytest.mark.parametrize('kwargs', CLASSIFICATION)
    @pytest.mark.parametrize('weights', [HEADLINE, 'MMEarthWeights.S2_MP_MAE'])
    def test_fine_tune(
        self, kwargs: dict[str, object], weights: object, served: dict[str, Tensor]
    ) -> None:
        task = ClassificationTask(model=NAME, weights=weights, in_channels=12, **kwargs)
        assert_loaded(task.model, served)
        assert all(p.requires_grad for p in task.parameters())
        before = train_step(task)
        moved = changed(task, before)
        assert {
            'head.weight',
            'stem.0.weight',
            'stages.3.blocks.1.mlp.fc2.weight',
        } <= moved

    @pytest.mark.parametrize('kwargs', CLASSIFICATION)
    def test_linear_probe(
        self, kwargs: dict[str, object], served: dict[str, Tensor]
    ) -> None:
        task = ClassificationTask(
            model=NAME, weights=HEADLINE, in_channels=12, freeze_backbone=True, **kwargs
        )
        assert_loaded(task.model, served)
        trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
        assert trainable == {'head.weight', 'head.bias'}
        before = train_step(task)
        assert changed(task, before) == {'head.weight', 'head.bias'}
        # MMEarth's linear probe: features are GAP -> LayerNorm without affine.
        torch.testing.assert_close(task.model.norm.weight, torch.ones(320))

    def test_in_channels_mismatch(self, served: dict[str, Tensor]) -> None:
        # TorchGeo's loader: a warning, and a freshly initialised first conv.
        with pytest.warns(UserWarning, match='input channels 3 != input channels'):
            task = ClassificationTask(
                model=NAME, weights=HEADLINE, in_channels=3, num_classes=2
            )
        assert task.model.stem[0].weight.shape == (40, 3, 3, 3)
        torch.testing.assert_close(task.model.stem[3].weight, served['stem.3.weight'])

    def test_patch_size_mismatch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights = MMEarthWeights.S2_MP_MAE_MMEARTH  # patch size 16
        path = official_file(tmp_path / 'checkpoint-199.pth', patch_size=16)
        monkeypatch.setattr(weights.value, 'url', path.as_uri())
        with pytest.raises(RuntimeError, match=r'size mismatch for stem\.3\.weight'):
            ClassificationTask(model=NAME, weights=weights, num_classes=2)
        task = ClassificationTask(
            model=weights.meta['model'], weights=weights, in_channels=12, num_classes=2
        )
        assert task(torch.randn(1, 12, 32, 32)).shape == (1, 2)

    def test_mpmae_checkpoint(
        self, mpmae_checkpoint: Path, served: dict[str, Tensor]
    ) -> None:
        task = ClassificationTask(
            model=NAME,
            weights=str(mpmae_checkpoint),
            in_channels=12,
            num_classes=3,
            freeze_backbone=True,
        )
        assert_loaded(task.model, served)
        assert task(torch.randn(2, 12, 16, 16)).shape == (2, 3)


class TestSemanticSegmentationTask:
    def test_linear_probe_then_train(self, served: dict[str, Tensor]) -> None:
        task = SemanticSegmentationTask(
            model='unet',
            backbone=NAME,
            weights=HEADLINE,
            in_channels=12,
            num_classes=4,
            freeze_backbone=True,
        )
        assert_loaded(task.model.encoder, served)
        assert not any(p.requires_grad for p in task.model.encoder.parameters())
        assert all(p.requires_grad for p in task.model.decoder.parameters())
        before = train_step(task)
        moved = changed(task, before)
        assert moved and not any(n.startswith('encoder.') for n in moved)
        assert any(n.startswith('decoder.') for n in moved)

    @pytest.mark.parametrize('weights', [HEADLINE, 'MMEarthWeights.S2_MP_MAE'])
    def test_fine_tune(self, weights: object, served: dict[str, Tensor]) -> None:
        task = SemanticSegmentationTask(
            model='unet', backbone=NAME, weights=weights, in_channels=12, num_classes=4
        )
        assert_loaded(task.model.encoder, served)
        before = train_step(task)
        assert 'encoder.stem.0.weight' in changed(task, before)

    def test_clear_errors(self, served: dict[str, Tensor]) -> None:
        with pytest.raises(ValueError, match='pretrained on 12 input bands, the model'):
            SemanticSegmentationTask(
                model='unet', backbone=NAME, weights=HEADLINE, in_channels=3
            )
        with pytest.raises(ValueError, match='build the model with patch_size=8'):
            SemanticSegmentationTask(
                model='unet', backbone=f'{NAME}_p16', weights=HEADLINE, in_channels=12
            )

    def test_mpmae_checkpoint(
        self, mpmae_checkpoint: Path, served: dict[str, Tensor]
    ) -> None:
        task = SemanticSegmentationTask(
            model='unet',
            backbone=NAME,
            weights=str(mpmae_checkpoint),
            in_channels=12,
            num_classes=4,
            freeze_backbone=True,
        )
        assert_loaded(task.model.encoder, served)
        assert task(torch.randn(1, 12, 16, 16)).shape == (1, 4, 16, 16)


def fit(config: str, tmp_path: Path, *extra: str) -> None:
    """Run a config of tests/conf as a user of this TorchGeo generation writes it.

    The configs name TorchGeo's tasks by their 0.8 short names; TorchGeo >= 0.9
    users write ``Classification`` and ``SemanticSegmentation``.
    """
    text = (CONF / f'{config}.yaml').read_text()
    for task in (ClassificationTask, SemanticSegmentationTask):
        old = task.__name__.removesuffix('Task') + 'Task'
        text = text.replace(f'class_path: {old}\n', f'class_path: {task.__name__}\n')
    (tmp_path / 'config.yaml').write_text(text)
    main(
        [
            'fit',
            '--config',
            str(tmp_path / 'config.yaml'),
            '--trainer.accelerator',
            'cpu',
            '--trainer.fast_dev_run',
            '1',
            '--trainer.default_root_dir',
            str(tmp_path),
            *extra,
        ]
    )


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """Copies of the networks the tasks build, as they are right after loading."""
    models: list[nn.Module] = []
    for cls in (ClassificationTask, SemanticSegmentationTask):

        def spy(self: nn.Module, original: object = cls.configure_models) -> None:
            original(self)  # type: ignore[operator]
            model = getattr(self.model, 'encoder', self.model)
            models.append(copy.deepcopy(model))

        monkeypatch.setattr(cls, 'configure_models', spy)
    return models


class TestCLI:
    @pytest.mark.parametrize(
        'config',
        ['weights_classification', 'weights_multilabel', 'weights_segmentation'],
    )
    def test_fit_with_enum_name(
        self,
        config: str,
        tmp_path: Path,
        served: dict[str, Tensor],
        loaded: list[nn.Module],
    ) -> None:
        fit(config, tmp_path)
        assert len(loaded) == 1
        assert_loaded(loaded[0], served)

    def test_fit_with_mpmae_checkpoint(
        self,
        tmp_path: Path,
        mpmae_checkpoint: Path,
        served: dict[str, Tensor],
        loaded: list[nn.Module],
    ) -> None:
        fit(
            'weights_classification',
            tmp_path,
            '--model.init_args.weights',
            str(mpmae_checkpoint),
        )
        assert len(loaded) == 1
        assert_loaded(loaded[0], served)
