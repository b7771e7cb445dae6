"""MMEarthClassificationTask: TorchGeo's classification with MMEarth's recipe."""

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchgeo.datamodules import BaseDataModule
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multilabel_f1_score,
)

from tests.conftest import load_data_script
from tests.models import test_weights_tasks
from tests.models.conftest import single_thread  # noqa: F401  (fixture)
from tests.models.fake_s2_datamodule import FakeS2DataModule
from torchgeo_mmearth._compat import TASKS_MODULE, BaseTask, ClassificationTask
from torchgeo_mmearth.datamodules import GeoBenchDataModule
from torchgeo_mmearth.losses import LabelSmoothingBCEWithLogitsLoss, SmoothedInTraining
from torchgeo_mmearth.main import main
from torchgeo_mmearth.models import MMEarthWeights
from torchgeo_mmearth.trainers import MMEarthClassificationTask
from torchgeo_mmearth.trainers.optim import WarmupCosineLR

pytestmark = pytest.mark.usefixtures('single_thread')

#: Serves a random official checkpoint as MMEarthWeights.S2_MP_MAE and returns its
#: encoder in timm keys (the fixture of the TorchGeo-task tests of the weights).
served = test_weights_tasks.served

NAME = 'mmearth_convnextv2_atto'
HEADLINE = MMEarthWeights.S2_MP_MAE
CONF = Path(__file__).parents[1] / 'conf'
# TorchGeo's name of the micro-averaged F1, which 0.9 renamed.
MICRO_F1 = 'test_OverallF1Score' if TASKS_MODULE == 'torchgeo.tasks' else 'test_F1Score'
EXAMPLES = Path(__file__).parents[2] / 'examples' / 'conf' / 'geobench'
GEOBENCH = load_data_script('geobench')


def small_task(**kwargs: Any) -> MMEarthClassificationTask:
    return MMEarthClassificationTask(
        **{'model': NAME, 'in_channels': 12, 'num_classes': 3, **kwargs}
    )


def trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    kwargs = {
        'accelerator': 'cpu',
        'max_epochs': 1,
        'default_root_dir': tmp_path,
        'logger': False,
        'enable_checkpointing': False,
        'enable_progress_bar': False,
        'enable_model_summary': False,
        **kwargs,
    }
    return Trainer(**kwargs)


class TestLosses:
    def test_multiclass_closed_form(self) -> None:
        task = small_task(num_classes=5, label_smoothing=0.2)
        logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
        logp = logits.log_softmax(dim=1)
        nll = -logp[torch.arange(8), target]
        expected = (0.8 * nll + 0.2 * (-logp).mean(dim=1)).mean()
        task.train()
        torch.testing.assert_close(task.criterion(logits, target), expected)
        timm_loss = LabelSmoothingCrossEntropy(smoothing=0.2)(logits, target)
        torch.testing.assert_close(task.criterion(logits, target), timm_loss)
        task.eval()
        torch.testing.assert_close(
            task.criterion(logits, target), F.cross_entropy(logits, target)
        )

    def test_multilabel_closed_form(self) -> None:
        task = small_task(
            task='multilabel',
            num_classes=None,
            num_labels=6,
            loss='bce',
            label_smoothing=0.2,
        )
        generator = torch.Generator().manual_seed(1)
        logits = torch.randn(4, 6, generator=generator)
        target = torch.randint(0, 2, (4, 6), generator=generator).float()
        smoothed = target * 0.8 + (1 - target) * 0.2
        p = logits.sigmoid()
        expected = -(smoothed * p.log() + (1 - smoothed) * (1 - p).log()).mean()
        task.train()
        torch.testing.assert_close(task.criterion(logits, target), expected)
        task.eval()
        plain = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
        torch.testing.assert_close(task.criterion(logits, target), plain)

    def test_default_is_torchgeo(self) -> None:
        task = small_task()
        assert type(task.criterion) is nn.CrossEntropyLoss
        assert task.criterion.label_smoothing == 0.0

    def test_class_weights_kept(self) -> None:
        task = small_task(label_smoothing=0.1, class_weights=[1.0, 2.0, 3.0])
        assert isinstance(task.criterion, SmoothedInTraining)
        smoothed = task.criterion.smoothed
        assert isinstance(smoothed, nn.CrossEntropyLoss)
        torch.testing.assert_close(smoothed.weight, torch.tensor([1.0, 2.0, 3.0]))

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match="needs loss='ce' or loss='bce'"):
            small_task(loss='focal', label_smoothing=0.2)
        with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 1\)'):
            small_task(label_smoothing=1.0)
        with pytest.raises(ValueError, match=r'smoothing must be in \[0, 1\)'):
            LabelSmoothingBCEWithLogitsLoss(-0.1)

    def test_validation_loss_unsmoothed(self, tmp_path: Path) -> None:
        task = small_task(label_smoothing=0.2)
        datamodule = FakeS2DataModule(batch_size=4, size=16)
        (result,) = trainer(tmp_path).validate(task, datamodule, verbose=False)
        datamodule.setup('validate')
        batch = datamodule.aug(next(iter(datamodule.val_dataloader())))
        task.eval()
        with torch.no_grad():
            logits = task(batch['image'])
        plain = F.cross_entropy(logits, batch['label'])
        smoothed = LabelSmoothingCrossEntropy(0.2)(logits, batch['label'])
        assert result['val_loss'] == pytest.approx(plain.item(), rel=1e-4)
        assert result['val_loss'] != pytest.approx(smoothed.item(), rel=1e-3)


class TestModels:
    def test_model_kwargs(self) -> None:
        task = small_task(model_kwargs={'drop_path_rate': 0.1, 'head_init_scale': 1e-3})
        drop = [m for m in task.model.modules() if isinstance(m, DropPath)]
        assert len(drop) == 11  # 12 blocks, the first at rate 0
        assert drop[-1].drop_prob == pytest.approx(0.1)
        # MMEarth's head: trunc_normal std 0.02 * 0.001 = 2e-5.
        assert task.model.head.weight.std().item() == pytest.approx(2e-5, rel=0.2)

    @pytest.mark.parametrize('weights', [HEADLINE, 'MMEarthWeights.S2_MP_MAE'])
    def test_model_kwargs_with_weights(
        self, weights: object, served: dict[str, Tensor]
    ) -> None:
        task = small_task(
            weights=weights, freeze_backbone=True, model_kwargs={'drop_path_rate': 0.1}
        )
        state = task.model.state_dict()
        for key, value in served.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
        trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
        assert trainable == {'head.weight', 'head.bias'}

    def test_without_model_kwargs_as_torchgeo(self, served: dict[str, Tensor]) -> None:
        ours = small_task(weights=HEADLINE)
        torchgeo = ClassificationTask(
            model=NAME, weights=HEADLINE, in_channels=12, num_classes=3
        )
        ours_state, theirs = ours.model.state_dict(), torchgeo.model.state_dict()
        assert ours_state.keys() == theirs.keys()
        for key in served:
            torch.testing.assert_close(ours_state[key], theirs[key], rtol=0, atol=0)


class Recorder(Callback):
    """Learning rates and weight decays of every group before each optimiser step."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[float, float]]] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        self.steps.append(
            [(g['lr'], g['weight_decay']) for g in optimizer.param_groups]
        )


class GroupRecorder(Callback):
    """{parameter name: (lr, weight decay, lr_scale)} when training starts."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self.groups = {
            names[id(p)]: (g['lr'], g['weight_decay'], g['lr_scale'])
            for g in trainer.optimizers[0].param_groups
            for p in g['params']
        }


class TestOptimizers:
    def test_default_is_torchgeo(self) -> None:
        task = small_task()
        config: Any = task.configure_optimizers()
        optimizer = config['optimizer']
        assert type(optimizer) is AdamW
        (group,) = optimizer.param_groups
        assert group['weight_decay'] == 0.01 and group['lr'] == 1e-3
        assert len(group['params']) == len(list(task.parameters()))
        scheduler = config['lr_scheduler']
        assert isinstance(scheduler['scheduler'], ReduceLROnPlateau)
        assert scheduler['monitor'] == 'val_loss'

    def test_recipe_per_step(self, tmp_path: Path) -> None:
        lr, min_lr, epochs, batches, accumulate = 8e-4, 1e-6, 2, 4, 2
        task = small_task(
            lr=lr,
            weight_decay=0.3,
            layer_decay=0.9,
            lr_schedule='cosine',
            min_lr=min_lr,
            label_smoothing=0.2,
        )
        recorder = Recorder()
        trainer(
            tmp_path,
            max_epochs=epochs,
            accumulate_grad_batches=accumulate,
            limit_train_batches=batches,
            limit_val_batches=0,
            callbacks=[recorder],
        ).fit(task, FakeS2DataModule(batch_size=1, size=16))
        total = epochs * batches // accumulate
        assert len(recorder.steps) == total
        scales = sorted({0.9**k for k in range(14)}, reverse=True)  # layers 0..13
        for step, groups in enumerate(recorder.steps):
            epoch = step / (batches // accumulate)
            cosine = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / 2))
            got = sorted({round(rate / cosine, 9) for rate, _ in groups}, reverse=True)
            assert got == pytest.approx(scales, rel=1e-6)
            assert {decay for _, decay in groups} == {0.0, 0.3}

    def test_linear_probe_groups(self, tmp_path: Path) -> None:
        task = small_task(
            freeze_backbone=True,
            weight_decay=0.3,
            layer_decay=0.9,
            lr_schedule='cosine',
            lr=0.1,
        )
        recorder = GroupRecorder()
        trainer(
            tmp_path,
            max_epochs=3,
            limit_train_batches=2,
            limit_val_batches=0,
            callbacks=[recorder],
        ).fit(task, FakeS2DataModule(batch_size=2, size=16))
        assert recorder.groups == {
            'model.head.weight': (0.1, 0.3, 1.0),
            'model.head.bias': (0.1, 0.0, 1.0),
        }
        scheduler = task.lr_schedulers()
        assert isinstance(scheduler, WarmupCosineLR)
        assert scheduler.total_steps == 3 * 2

    def test_cosine_needs_epochs(self, tmp_path: Path) -> None:
        task = small_task(lr_schedule='cosine')
        with pytest.raises(ValueError, match=r'needs trainer\.max_epochs'):
            trainer(tmp_path, max_epochs=-1, limit_val_batches=0).fit(
                task, FakeS2DataModule(batch_size=2, size=16)
            )


class TestMetrics:
    def test_whole_split(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        task = small_task(task='multilabel', num_classes=None, num_labels=4, loss='bce')
        datamodule = FakeS2DataModule(
            batch_size=1, size=16, task='multilabel', num_classes=4, length=6
        )
        (result,) = trainer(tmp_path).test(task, datamodule, verbose=False)
        datamodule.setup('test')
        task.eval()
        logits, targets, per_batch = [], [], []
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                batch = datamodule.aug(batch)
                logits.append(task(batch['image']))
                targets.append(batch['label'])
                per_batch.append(
                    multilabel_f1_score(
                        logits[-1], targets[-1], num_labels=4, average='micro'
                    ).item()
                )
        overall = multilabel_f1_score(
            torch.cat(logits), torch.cat(targets), num_labels=4, average='micro'
        ).item()
        assert result[MICRO_F1] == pytest.approx(overall, abs=1e-6)
        assert overall != pytest.approx(sum(per_batch) / len(per_batch), abs=1e-3)


# --------------------------------------------------------------------------------
# The command line, on generated GEO-Bench data (never a GEO-Bench result).


def write_geobench(root: Path, tasks: tuple[str, ...]) -> Path:
    for task in tasks:
        GEOBENCH.write_task(root, task, samples_per_split=4)
    return root


@pytest.fixture(scope='module')
def geobench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated m-so2sat, m-bigearthnet, m-eurosat and m-brick-kiln."""
    tasks = ('m-so2sat', 'm-bigearthnet', 'm-eurosat', 'm-brick-kiln')
    return write_geobench(tmp_path_factory.mktemp('geobench'), tasks)


def run_cli(
    command: str, config: Path, root: Path, tmp_path: Path, *extra: str
) -> None:
    """``torchgeo-mmearth <command>`` with the run's folders under *tmp_path*."""
    main(
        [
            command,
            '--config',
            str(config),
            '--data.init_args.root',
            str(root),
            '--trainer.default_root_dir',
            str(tmp_path),
            '--trainer.callbacks.init_args.dirpath',
            str(tmp_path / 'checkpoints'),
            '--trainer.logger.init_args.save_dir',
            str(tmp_path / 'logs'),
            *extra,
        ]
    )


def logged_test_metrics(logs: Path) -> dict[str, float]:
    """The test_* values of the newest CSVLogger run under *logs*."""
    newest = max(logs.glob('lightning_logs/version_*/metrics.csv'))
    with newest.open() as file:
        rows = list(csv.DictReader(file))
    return {
        key: float(value)
        for row in rows
        for key, value in row.items()
        if key.startswith('test_') and value
    }


def evaluate(
    task: LightningModule, datamodule: GeoBenchDataModule
) -> Iterator[tuple[Tensor, Tensor]]:
    """(logits, targets) of every test batch, computed outside Lightning."""
    datamodule.setup('test')
    task.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            batch = datamodule.aug(batch)
            key = 'mask' if 'mask' in batch else 'label'
            yield task(batch['image']), batch[key]


class TestCLI:
    @pytest.mark.parametrize(
        ('config', 'task', 'epochs'),
        [
            ('geobench_lp_so2sat', 'm-so2sat', 2),
            ('geobench_ft_bigearthnet', 'm-bigearthnet', 1),
        ],
    )
    def test_fit_then_test_last(
        self,
        config: str,
        task: str,
        epochs: int,
        geobench_root: Path,
        tmp_path: Path,
        served: dict[str, Tensor],
    ) -> None:
        path = CONF / f'{config}.yaml'
        run_cli('fit', path, geobench_root, tmp_path)
        last = tmp_path / 'checkpoints' / 'last.ckpt'
        assert torch.load(last, weights_only=False)['epoch'] == epochs - 1
        run_cli('test', path, geobench_root, tmp_path, '--ckpt_path', 'last')
        logged = logged_test_metrics(tmp_path / 'logs')

        # The same numbers, outside Lightning, from the last checkpoint over the
        # whole test split (in batches of another size) and without smoothing.
        trained = MMEarthClassificationTask.load_from_checkpoint(last)
        datamodule = GeoBenchDataModule(
            task=task, root=str(geobench_root), weights=HEADLINE, batch_size=3
        )
        logits, targets = (
            torch.cat(x) for x in zip(*evaluate(trained, datamodule), strict=True)
        )
        assert len(targets) == 4
        if task == 'm-bigearthnet':
            score = multilabel_f1_score(logits, targets, num_labels=43, average='micro')
            loss = F.binary_cross_entropy_with_logits(logits, targets.float())
            assert logged[MICRO_F1] == pytest.approx(score.item(), abs=1e-6)
        else:
            score = multiclass_accuracy(
                logits, targets, num_classes=17, average='micro'
            )
            loss = F.cross_entropy(logits, targets)
            assert logged['test_OverallAccuracy'] == pytest.approx(score.item())
        assert logged['test_loss'] == pytest.approx(loss.item(), rel=1e-5)


def instantiate(config: Path, *extra: str) -> LightningCLI:
    """Parse and instantiate a config as ``torchgeo-mmearth`` does, without running."""
    return LightningCLI(
        model_class=BaseTask,
        datamodule_class=BaseDataModule,
        seed_everything_default=0,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=['--config', str(config), *extra],
    )


def check_example(cli: LightningCLI, blr: float, epochs: int) -> None:
    """The reference's lr rule and epochs, the last-checkpoint set-up, one batch."""
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    effective = datamodule.batch_size * trainer.accumulate_grad_batches
    assert model.hparams['lr'] == pytest.approx(blr * effective / 256)
    assert trainer.max_epochs == epochs
    (checkpoint,) = (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    # No monitor: Lightning then refreshes last.ckpt every epoch.
    assert checkpoint.save_last is True and checkpoint.dirpath
    assert checkpoint.monitor is None
    datamodule.setup('fit')
    # (The train loader drops the last incomplete batch: 4 samples < batch_size.)
    batch = datamodule.aug(next(iter(datamodule.val_dataloader())))
    model.train()
    key = 'mask' if 'mask' in batch else 'label'
    target = batch[key].float() if model.hparams['loss'] == 'bce' else batch[key]
    output = model(batch['image'])
    loss = model.criterion(output.squeeze(1), target)
    assert loss.isfinite()


EXAMPLE_CLASSIFICATION = sorted(EXAMPLES.glob('[lf][pt]_*.yaml'))


class TestExamples:
    def test_all_listed(self) -> None:
        assert len(EXAMPLE_CLASSIFICATION) == 8

    @pytest.mark.parametrize('config', EXAMPLE_CLASSIFICATION, ids=lambda p: p.stem)
    def test_instantiates(
        self,
        config: Path,
        geobench_root: Path,
        served: dict[str, Tensor],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        cli = instantiate(
            config,
            '--data.init_args.root',
            str(geobench_root),
            '--data.init_args.num_workers',
            '0',
        )
        model = cli.model
        assert isinstance(model, MMEarthClassificationTask)
        assert model.hparams['freeze_backbone'] is config.stem.startswith('lp_')
        recipe = {
            'label_smoothing': 0.2,
            'weight_decay': 0.3,
            'layer_decay': 0.9,
            'lr_schedule': 'cosine',
            'min_lr': 1e-6,
            'warmup_epochs': 0,
        }
        assert {k: model.hparams[k] for k in recipe} == recipe
        assert model.hparams['model_kwargs'] == {
            'drop_path_rate': 0.1,
            'head_init_scale': 0.001,
        }
        state = model.model.state_dict()
        torch.testing.assert_close(state['stem.0.weight'], served['stem.0.weight'])
        check_example(cli, 2e-4, 100)

    def test_label_efficiency_overrides(
        self,
        geobench_root: Path,
        served: dict[str, Tensor],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        cli = instantiate(
            EXAMPLES / 'lp_m-so2sat.yaml',
            '--config',
            str(EXAMPLES / 'label_efficiency_lp.yaml'),
            '--data.init_args.root',
            str(geobench_root),
            '--data.init_args.num_workers',
            '0',
            '--data.init_args.partition',
            '0.50x_train',
            '--trainer.callbacks.init_args.dirpath',
            str(tmp_path / 'checkpoints'),
        )
        assert cli.datamodule.kwargs['partition'] == '0.50x_train'
        assert cli.model.hparams['freeze_backbone'] is True
        check_example(cli, 2e-4, 100)
        (checkpoint,) = (
            c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)
        )
        assert checkpoint.dirpath == str(tmp_path / 'checkpoints')
