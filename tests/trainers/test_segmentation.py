"""MMEarthSemanticSegmentationTask: MMEarth's UNet and its lp&ft protocol."""

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_jaccard_index

from tests.models import test_weights_tasks
from tests.models.conftest import single_thread  # noqa: F401  (fixture)
from tests.models.fake_s2_datamodule import FakeS2DataModule
from tests.trainers.test_classification import (
    CONF,
    EXAMPLES,
    check_example,
    evaluate,
    instantiate,
    logged_test_metrics,
    run_cli,
    write_geobench,
)
from torchgeo_mmearth._compat import TASKS_MODULE
from torchgeo_mmearth.datamodules import GeoBenchDataModule
from torchgeo_mmearth.models import MMEarthUNet, MMEarthWeights
from torchgeo_mmearth.trainers import MMEarthSemanticSegmentationTask
from torchgeo_mmearth.trainers.optim import WarmupCosineLR
from torchgeo_mmearth.trainers.segmentation import UnfreezeBackbone

pytestmark = pytest.mark.usefixtures('single_thread')

#: Serves a random official checkpoint as MMEarthWeights.S2_MP_MAE and returns its
#: encoder in timm keys (the fixture of the TorchGeo-task tests of the weights).
served = test_weights_tasks.served

NAME = 'mmearth_convnextv2_atto'
HEADLINE = MMEarthWeights.S2_MP_MAE


def unet_task(**kwargs: Any) -> MMEarthSemanticSegmentationTask:
    return MMEarthSemanticSegmentationTask(
        **{
            'model': 'mmearth_unet',
            'backbone': NAME,
            'in_channels': 12,
            'num_classes': 3,
            **kwargs,
        }
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
        'limit_val_batches': 0,
        **kwargs,
    }
    return Trainer(**kwargs)


def datamodule() -> FakeS2DataModule:
    return FakeS2DataModule(batch_size=2, size=16, task='segmentation', num_classes=3)


class TestMMEarthUNet:
    @pytest.mark.parametrize(
        ('backbone', 'patch_size'), [(NAME, 8), (f'{NAME}_p16', 16)]
    )
    def test_model(self, backbone: str, patch_size: int) -> None:
        task = unet_task(backbone=backbone, num_classes=7)
        assert isinstance(task.model, MMEarthUNet)
        assert task.model.patch_size == patch_size
        assert task(torch.randn(2, 12, 32, 32)).shape == (2, 7, 32, 32)

    @pytest.mark.parametrize('weights', [HEADLINE, 'MMEarthWeights.S2_MP_MAE'])
    def test_weights(self, weights: object, served: dict[str, Tensor]) -> None:
        task = unet_task(weights=weights, model_kwargs={'drop_path_rate': 0.1})
        state = task.model.encoder.state_dict()
        assert state.keys() == served.keys()
        for key, value in served.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)

    def test_freezing(self) -> None:
        task = unet_task(freeze_backbone=True, freeze_decoder=True)
        trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
        assert trainable == {'head.weight', 'head.bias'}

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match='needs an MMEarth ConvNeXt V2 backbone'):
            unet_task(backbone='resnet18')
        with pytest.raises(ValueError, match='has no ImageNet weights'):
            unet_task(weights=True)
        with pytest.raises(
            ValueError, match='model_kwargs are arguments of MMEarthUNet'
        ):
            MMEarthSemanticSegmentationTask(
                backbone=NAME, in_channels=12, num_classes=3, model_kwargs={'a': 1}
            )
        with pytest.raises(ValueError, match='needs freeze_backbone=True'):
            unet_task(unfreeze_backbone_at_epoch=2)
        with pytest.raises(ValueError, match='must be >= 0'):
            unet_task(freeze_backbone=True, unfreeze_backbone_at_epoch=-1)
        with pytest.raises(ValueError, match='must be >= 0'):
            UnfreezeBackbone(-1)

    def test_smp_unchanged(self, served: dict[str, Tensor]) -> None:
        task = MMEarthSemanticSegmentationTask(
            backbone=NAME, weights=HEADLINE, in_channels=12, num_classes=3
        )
        assert type(task.model).__name__ == 'Unet'
        state = task.model.encoder.state_dict()
        torch.testing.assert_close(state['stem.0.weight'], served['stem.0.weight'])


class TestMetrics:
    def test_mean_iou_is_macro(self) -> None:
        task = unet_task(num_classes=3)
        target = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]])
        pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 2, 0]]])
        logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
        metrics = task.test_metrics(logits, target)
        # IoU per class: 0: 1/3, 1: 2/3, 2: 3/4.
        mean_iou = (1 / 3 + 2 / 3 + 3 / 4) / 3
        assert metrics['test_MeanIoU'].item() == pytest.approx(mean_iou)
        # TorchGeo's own JaccardIndex stays micro-averaged (0.9 renamed it).
        micro = (
            'test_OverallJaccardIndex'
            if TASKS_MODULE == 'torchgeo.tasks'
            else 'test_MulticlassJaccardIndex'
        )
        assert metrics[micro].item() == pytest.approx(6 / 10, abs=1e-6)


class Recorder(Callback):
    """Per epoch: the encoder's state, trainability and the optimiser's groups."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, Any]] = {}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx:
            return
        encoder = pl_module.model.encoder  # type: ignore[union-attr]
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        encoder_ids = {id(p) for p in encoder.parameters()}
        groups = [
            {
                'lr': g['lr'],
                'weight_decay': g['weight_decay'],
                'lr_scale': g.get('lr_scale'),
                'encoder': sum(id(p) in encoder_ids for p in g['params']),
                'size': len(g['params']),
            }
            for g in optimizer.param_groups
        ]
        self.epochs[trainer.current_epoch] = {
            'trainable': {p.requires_grad for p in encoder.parameters()},
            'groups': groups,
            'scheduled': scheduler.lr_at(
                trainer.global_step, {'initial_lr': pl_module.hparams['lr']}
            )
            if isinstance(scheduler, WarmupCosineLR)
            else None,
            'encoder': {n: p.detach().clone() for n, p in encoder.named_parameters()},
        }


def protocol_task() -> MMEarthSemanticSegmentationTask:
    return unet_task(
        freeze_backbone=True,
        unfreeze_backbone_at_epoch=1,
        lr=0.01,
        weight_decay=0.3,
        layer_decay=0.9,
        lr_schedule='cosine',
        min_lr=1e-6,
    )


class TestUnfreezeProtocol:
    def test_frozen_then_trained(self, tmp_path: Path) -> None:
        task = protocol_task()
        recorder = Recorder()
        trainer(
            tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[recorder]
        ).fit(task, datamodule())
        assert isinstance(task.lr_schedulers(), WarmupCosineLR)
        first, second, third = (recorder.epochs[i] for i in range(3))
        # Epoch 0: the encoder is frozen and out of the optimiser.
        assert first['trainable'] == {False}
        assert all(group['encoder'] == 0 for group in first['groups'])
        for name, value in first['encoder'].items():
            assert torch.equal(value, second['encoder'][name]), name
        # Epoch 1: trainable, in one new group at the full (scheduled) learning
        # rate, without layer decay, with weight decay 0.
        assert second['trainable'] == {True}
        *decoder, added = second['groups']
        assert len(decoder) == len(first['groups'])
        encoder_size = len(second['encoder'])
        assert added == {
            'lr': pytest.approx(second['scheduled']),
            'weight_decay': 0.0,
            'lr_scale': 1.0,
            'encoder': encoder_size,
            'size': encoder_size,
        }
        assert {g['lr_scale'] for g in decoder} == {1.0}
        for group in decoder:
            assert group['lr'] == pytest.approx(second['scheduled'])
        assert {g['weight_decay'] for g in decoder} == {0.0, 0.3}
        # 2 steps per epoch of a 6-step cosine: epoch 1 starts at step 2.
        assert second['scheduled'] == pytest.approx(
            1e-6 + (0.01 - 1e-6) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)))
        )
        changed = [
            name
            for name, value in second['encoder'].items()
            if not torch.equal(value, third['encoder'][name])
        ]
        assert (
            'stem.0.weight' in changed and 'stages.3.blocks.1.mlp.fc2.weight' in changed
        )
        assert third['groups'][-1]['lr'] == pytest.approx(third['scheduled'])

    def test_resume_after_unfreezing(self, tmp_path: Path) -> None:
        checkpoints = ModelCheckpoint(
            dirpath=tmp_path / 'checkpoints', save_top_k=-1, every_n_epochs=1
        )
        recorder = Recorder()
        trainer(
            tmp_path,
            max_epochs=3,
            limit_train_batches=2,
            callbacks=[recorder, checkpoints],
            enable_checkpointing=True,
        ).fit(protocol_task(), datamodule())
        resumed = Recorder()
        checkpoints = ModelCheckpoint(
            dirpath=tmp_path / 'checkpoints', save_top_k=-1, every_n_epochs=1
        )
        trainer(
            tmp_path,
            max_epochs=3,
            limit_train_batches=2,
            callbacks=[resumed, checkpoints],
            enable_checkpointing=True,
        ).fit(
            protocol_task(),
            datamodule(),
            ckpt_path=tmp_path / 'checkpoints' / 'epoch=1-step=4.ckpt',
        )
        assert list(resumed.epochs) == [2]
        again, original = resumed.epochs[2], recorder.epochs[2]
        assert again['trainable'] == {True}
        assert again['groups'] == original['groups']
        assert again['scheduled'] == pytest.approx(original['scheduled'])

    def test_default_optimiser(self, tmp_path: Path) -> None:
        # TorchGeo's AdamW holds every parameter: unfreezing adds no group.
        task = unet_task(freeze_backbone=True, unfreeze_backbone_at_epoch=1)
        recorder = Recorder()
        trainer(
            tmp_path,
            max_epochs=2,
            limit_train_batches=1,
            limit_val_batches=1,
            callbacks=[recorder],
        ).fit(task, datamodule())
        assert recorder.epochs[0]['trainable'] == {False}
        assert recorder.epochs[1]['trainable'] == {True}
        assert len(recorder.epochs[1]['groups']) == 1


# --------------------------------------------------------------------------------
# The command line, on generated GEO-Bench data (never a GEO-Bench result).


@pytest.fixture(scope='module')
def geobench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated m-cashew-plantation and m-SA-crop-type."""
    tasks = ('m-cashew-plantation', 'm-SA-crop-type')
    return write_geobench(tmp_path_factory.mktemp('geobench'), tasks)


class TestCLI:
    def test_protocol_then_test_last(
        self, geobench_root: Path, tmp_path: Path, served: dict[str, Tensor]
    ) -> None:
        config = CONF / 'geobench_unet_cashew.yaml'
        run_cli('fit', config, geobench_root, tmp_path)
        last = tmp_path / 'checkpoints' / 'last.ckpt'
        checkpoint = torch.load(last, weights_only=False)
        assert checkpoint['epoch'] == 1
        # Unfrozen at epoch 1: the encoder trained, in a group of its own.
        trained = MMEarthSemanticSegmentationTask.load_from_checkpoint(last)
        encoder = trained.model.encoder.state_dict()
        assert not torch.equal(encoder['stem.0.weight'], served['stem.0.weight'])
        groups = checkpoint['optimizer_states'][0]['param_groups']
        assert (groups[-1]['weight_decay'], groups[-1]['lr_scale']) == (0.0, 1.0)
        assert len(groups[-1]['params']) == len(encoder)

        run_cli('test', config, geobench_root, tmp_path, '--ckpt_path', 'last')
        logged = logged_test_metrics(tmp_path / 'logs')
        datamodule = GeoBenchDataModule(
            task='m-cashew-plantation',
            root=str(geobench_root),
            weights=HEADLINE,
            batch_size=3,
        )
        logits, masks = (
            torch.cat(x) for x in zip(*evaluate(trained, datamodule), strict=True)
        )
        assert len(masks) == 4
        mean_iou = multiclass_jaccard_index(logits, masks, 7, average='macro')
        assert logged['test_MeanIoU'] == pytest.approx(mean_iou.item(), abs=1e-6)
        loss = F.cross_entropy(logits, masks)
        assert logged['test_loss'] == pytest.approx(loss.item(), rel=1e-5)


EXAMPLE_SEGMENTATION = sorted(EXAMPLES.glob('unet_*.yaml'))


class TestExamples:
    def test_all_listed(self) -> None:
        assert [p.stem for p in EXAMPLE_SEGMENTATION] == [
            'unet_m-SA-crop-type',
            'unet_m-cashew-plantation',
        ]

    @pytest.mark.parametrize('config', EXAMPLE_SEGMENTATION, ids=lambda p: p.stem)
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
        assert isinstance(model, MMEarthSemanticSegmentationTask)
        assert isinstance(model.model, MMEarthUNet)
        recipe = {
            'freeze_backbone': True,
            'unfreeze_backbone_at_epoch': 50,
            'label_smoothing': 0.0,
            'weight_decay': 0.3,
            'layer_decay': 0.9,
            'lr_schedule': 'cosine',
            'min_lr': 1e-6,
            'warmup_epochs': 0,
            'model_kwargs': {'drop_path_rate': 0.1},
        }
        assert {k: model.hparams[k] for k in recipe} == recipe
        state = model.model.encoder.state_dict()
        torch.testing.assert_close(state['stem.0.weight'], served['stem.0.weight'])
        assert model.configure_callbacks()[0].epoch == 50  # type: ignore[index]
        check_example(cli, 1e-2, 200)
