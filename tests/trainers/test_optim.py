"""MMEarth's fine-tuning optimiser: layer decay, weight decay, per-step cosine."""

import math

import pytest
import torch
from timm.optim import param_groups_layer_decay as timm_param_groups_layer_decay
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import SGD, AdamW

from torchgeo_mmearth.models import MMEarthUNet
from torchgeo_mmearth.trainers import MMEarthClassificationTask
from torchgeo_mmearth.trainers.optim import (
    WarmupCosineLR,
    add_param_group,
    param_groups_layer_decay,
    pretraining_param_groups,
)

ATTO = (2, 2, 6, 2)


def convnextv2_layer(name: str, depths: tuple[int, ...]) -> int:
    """ConvNeXt V2's get_num_layer_for_convnext_single, on ConvNeXt V2's names."""
    if name.startswith('downsample_layers'):
        stage = int(name.split('.')[1])
        return 0 if stage == 0 else sum(depths[:stage]) + 1
    if name.startswith('stages'):
        stage, block = (int(i) for i in name.split('.')[1:3])
        return sum(depths[:stage]) + block + 1
    return sum(depths) + 1


def convnextv2_name(name: str) -> str:
    """ConvNeXt V2's name of a parameter of MMEarthConvNeXtV2 (up to the leaf)."""
    parts = name.split('.')
    if parts[0] == 'stages' and parts[2] == 'blocks':
        return f'stages.{parts[1]}.{parts[3]}.{".".join(parts[4:])}'
    if parts[0] == 'stages' and parts[2] == 'downsample':
        return f'downsample_layers.{parts[1]}.{".".join(parts[3:])}'
    if parts[0] == 'stem':  # the custom stem replaces ConvNeXt V2's
        return f'downsample_layers.0.{".".join(parts[1:])}'
    return name


def named_groups(
    groups: list[dict[str, object]], module: nn.Module
) -> dict[str, tuple[float, float]]:
    """{parameter name: (lr_scale, weight_decay)}."""
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict[str, tuple[float, float]] = {}
    for group in groups:
        for param in group['params']:  # type: ignore[attr-defined]
            name = names[id(param)]
            assert name not in out, f'{name} in two groups'
            out[name] = (group['lr_scale'], group['weight_decay'])  # type: ignore[assignment]
    return out


def mmearth_train_name(name: str) -> str:
    """MMEarth-train's name (models/convnextv2.py) of a parameter of our encoder."""
    parts = name.split('.')
    if parts[0] == 'stem':  # MMEarth's stem: conv, LN, GELU, depthwise conv, LN
        index = int(parts[1])
        module = 'initial_conv' if index < 3 else 'stem'
        return f'{module}.{index % 3}.{parts[2]}'
    if parts[0] == 'stages' and parts[2] == 'downsample':
        # downsample_layers.i feeds stage i + 1: MMEarth has no layer 0 (its stem).
        return f'downsample_layers.{int(parts[1]) - 1}.{".".join(parts[3:])}'
    if parts[0] == 'stages':
        leaf = '.'.join(parts[4:])
        for ours, theirs in (
            ('conv_dw', 'dwconv'),
            ('mlp.fc1', 'pwconv1'),
            ('mlp.fc2', 'pwconv2'),
            ('mlp.grn.weight', 'grn.gamma'),
            ('mlp.grn.bias', 'grn.beta'),
        ):
            leaf = leaf.replace(ours, theirs)
        return f'stages.{parts[1]}.{parts[3]}.{leaf}'
    return name


def mmearth_train_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, depths: tuple[int, ...]
) -> dict[str, tuple[float, float]]:
    """{our name: (lr_scale, weight_decay)} by MMEarth-train's fine-tuning rules.

    ``optim_factory.get_parameter_groups`` (no decay on 1-D parameters and names
    ending in ``.bias``, ``.gamma`` or ``.beta``; its GRN ``gamma`` and ``beta`` are
    (1, 1, 1, C)) with ``LayerDecayValueAssigner``'s "single" layers
    (``get_num_layer_for_convnext_single``) and ``main_finetune.py``'s values
    ``layer_decay ** (sum(depths) + 1 - layer)``, on MMEarth-train's names.
    """
    layers = sum(depths)
    out = {}
    for name, param in model.named_parameters():
        theirs = mmearth_train_name(name)
        if theirs.startswith('downsample_layers'):
            layer = sum(depths[: int(theirs.split('.')[1])]) + 1
        elif theirs.startswith('stages'):
            stage, block = (int(i) for i in theirs.split('.')[1:3])
            layer = sum(depths[:stage]) + block + 1
        else:
            layer = layers + 1
        ndim = 4 if theirs.endswith(('grn.gamma', 'grn.beta')) else param.ndim
        no_decay = ndim == 1 or theirs.endswith(('.bias', '.gamma', '.beta'))
        decay = 0.0 if no_decay else weight_decay
        out[name] = (layer_decay ** (layers + 1 - layer), decay)
    return out


@pytest.fixture(scope='module')
def task() -> MMEarthClassificationTask:
    return MMEarthClassificationTask(
        model='mmearth_convnextv2_atto', in_channels=12, num_classes=10
    )


class TestParamGroups:
    def test_convnextv2_assignment(self, task: MMEarthClassificationTask) -> None:
        groups = param_groups_layer_decay(task, 0.3, 0.9)
        got = named_groups(groups, task)
        params = dict(task.named_parameters())
        assert set(got) == set(params)
        for name, (scale, decay) in got.items():
            local = name.removeprefix('model.')
            expected = 0.9 ** (13 - convnextv2_layer(convnextv2_name(local), ATTO))
            assert scale == pytest.approx(expected, rel=1e-12), name
            no_decay = params[name].ndim <= 1 or name.endswith('.bias')
            assert decay == (0.0 if no_decay else 0.3), name
        # For atto: the stem 0.9^13, stage-0 blocks 0.9^12 and 0.9^11, ...,
        # stage-3 blocks 0.9^2 and 0.9^1, the downsampling with the first block
        # of the stage it feeds, the head undecayed.
        quoted = {
            'model.stem.0.weight': 0.9**13,
            'model.stem.3.weight': 0.9**13,
            'model.stages.0.blocks.0.mlp.fc1.weight': 0.9**12,
            'model.stages.0.blocks.1.mlp.fc1.weight': 0.9**11,
            'model.stages.1.downsample.1.weight': 0.9**10,
            'model.stages.2.blocks.0.mlp.fc1.weight': 0.9**8,
            'model.stages.3.downsample.1.weight': 0.9**2,
            'model.stages.3.blocks.0.mlp.fc1.weight': 0.9**2,
            'model.stages.3.blocks.1.mlp.fc1.weight': 0.9**1,
            'model.head.weight': 1.0,
        }
        for name, scale in quoted.items():
            assert got[name] == (pytest.approx(scale), 0.3)
        # GRN gamma/beta (timm: mlp.grn.weight/bias, 1-D) and norms: no decay.
        assert got['model.stages.1.blocks.0.mlp.grn.weight'][1] == 0.0
        assert got['model.stages.1.blocks.0.norm.weight'][1] == 0.0
        assert got['model.stem.0.bias'] == (pytest.approx(0.9**13), 0.0)
        assert got['model.head.bias'] == (1.0, 0.0)
        # One group per (layer, decay): 14 layers x 2.
        assert len(groups) == 2 * 14

    def test_against_mmearth_train(self, task: MMEarthClassificationTask) -> None:
        # MMEarth-train's fine-tuning groups, by an independent rewrite of its rules.
        # They differ only where docs/fixes.md says ("Layer-wise learning-rate decay
        # reaches the stem"): its custom stem is in the top layer (not decayed),
        # each downsampling layer has the rate of the stage below the one it feeds.
        got = {
            name.removeprefix('model.'): value
            for name, value in named_groups(
                param_groups_layer_decay(task, 0.3, 0.9), task
            ).items()
        }
        official = mmearth_train_groups(task.model, 0.3, 0.9, ATTO)
        assert got.keys() == official.keys()
        assert {n: d for n, (_, d) in got.items()} == {
            n: d for n, (_, d) in official.items()
        }
        different = {
            name
            for name in got
            if got[name][0] != pytest.approx(official[name][0], rel=1e-12)
        }
        stem = {name for name in got if name.startswith('stem.')}
        downsampling = {name for name in got if '.downsample.' in name}
        assert different == stem | downsampling
        for name in stem:
            assert (got[name][0], official[name][0]) == (pytest.approx(0.9**13), 1.0)
        for name in downsampling:
            stage = int(name.split('.')[1])
            assert got[name][0] == pytest.approx(0.9 ** (12 - sum(ATTO[:stage])))
            assert official[name][0] == pytest.approx(
                0.9 ** (12 - sum(ATTO[: stage - 1]))
            )

    def test_same_layers_as_the_model_in_timm(
        self, task: MMEarthClassificationTask
    ) -> None:
        # The task's groups are those timm's helper gives the bare model.
        model = task.model
        bare = named_groups(
            timm_param_groups_layer_decay(model, 0.3, layer_decay=0.9), model
        )
        got = named_groups(param_groups_layer_decay(task, 0.3, 0.9), task)
        assert {f'model.{name}': scale for name, (scale, _) in bare.items()} == {
            name: scale for name, (scale, _) in got.items()
        }

    def test_without_layer_decay(self, task: MMEarthClassificationTask) -> None:
        got = named_groups(param_groups_layer_decay(task, 0.05), task)
        assert {scale for scale, _ in got.values()} == {1.0}
        assert got['model.stages.0.blocks.0.mlp.fc1.weight'] == (1.0, 0.05)
        assert got['model.stages.0.blocks.0.mlp.fc1.bias'] == (1.0, 0.0)

    def test_frozen_left_out(self) -> None:
        probe = MMEarthClassificationTask(
            model='mmearth_convnextv2_atto',
            in_channels=12,
            num_classes=10,
            freeze_backbone=True,
        )
        got = named_groups(param_groups_layer_decay(probe, 0.3, 0.9), probe)
        assert got == {'model.head.weight': (1.0, 0.3), 'model.head.bias': (1.0, 0.0)}

    @pytest.mark.parametrize('layer_decay', [None, 0.9])
    def test_gamma_beta_names(self, layer_decay: float | None) -> None:
        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.gamma = nn.Parameter(torch.ones(1, 1, 1, 4))
                self.beta = nn.Parameter(torch.zeros(1, 1, 1, 4))
                self.weight = nn.Parameter(torch.ones(4, 4))

        model = nn.Sequential(Block(), MMEarthUNet(num_classes=3).encoder)
        got = named_groups(param_groups_layer_decay(model, 0.3, layer_decay), model)
        assert got['0.gamma'] == (1.0, 0.0)
        assert got['0.beta'] == (1.0, 0.0)
        assert got['0.weight'] == (1.0, 0.3)

    @pytest.mark.parametrize('decay_grn', [True, False])
    def test_pretraining(
        self, task: MMEarthClassificationTask, decay_grn: bool
    ) -> None:
        groups = pretraining_param_groups(task, 0.05, decay_grn)
        got = {
            name: decay
            for name, (_, decay) in named_groups(
                [{**g, 'lr_scale': 1.0} for g in groups], task
            ).items()
        }
        grn = {name for name in got if '.grn.' in name}
        assert len(grn) == 24  # 12 blocks, weight and bias
        for name, parameter in task.named_parameters():
            timm_rule = parameter.ndim > 1 and not name.endswith('.bias')
            expected = timm_rule or (decay_grn and name in grn)
            assert got[name] == (0.05 if expected else 0.0), name

    def test_unet_encoder_found(self) -> None:
        unet = MMEarthUNet(num_classes=3)
        got = named_groups(param_groups_layer_decay(unet, 0.3, 0.9), unet)
        # The smp encoder has no norm or head: the decoder is the last layer.
        assert got['encoder.stem.0.weight'][0] == pytest.approx(0.9**13)
        assert got['encoder.stages.0.blocks.0.mlp.fc1.weight'][0] == pytest.approx(
            0.9**12
        )
        assert got['encoder.stages.3.blocks.1.mlp.fc1.weight'][0] == pytest.approx(0.9)
        assert got['upsample_layers.0.conv.weight'] == (1.0, 0.3)
        assert got['head.weight'] == (1.0, 0.3)

    def test_needs_mmearth_encoder(self) -> None:
        resnet = MMEarthClassificationTask(model='resnet18', num_classes=2)
        with pytest.raises(ValueError, match='needs exactly one such encoder'):
            param_groups_layer_decay(resnet, 0.3, 0.9)
        with pytest.raises(ValueError, match='layer_decay must be > 0'):
            param_groups_layer_decay(MMEarthUNet(num_classes=3), 0.3, 0.0)


def mmearth_lr(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    warmup: float,
    min_lr: float,
) -> float:
    """MMEarth's adjust_learning_rate at the fractional epoch of a step."""
    epoch = step / steps_per_epoch
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))
    )


def two_groups(lr: float) -> AdamW:
    a, b = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    return AdamW(
        [
            {'params': [a], 'lr': lr * 0.81, 'lr_scale': 0.81},
            {'params': [b], 'lr': lr, 'lr_scale': 1.0},
        ],
        lr=lr,
    )


class TestWarmupCosineLR:
    @pytest.mark.parametrize('warmup_epochs', [0, 2])
    def test_values(self, warmup_epochs: int) -> None:
        lr, min_lr, epochs, per_epoch = 8e-4, 1e-6, 10, 7
        total = epochs * per_epoch
        optimizer = two_groups(lr)
        scheduler = WarmupCosineLR(optimizer, total, warmup_epochs * per_epoch, min_lr)
        for step in [*range(total), total, total + 5]:
            if step:
                optimizer.step()
                scheduler.step()
            expected = mmearth_lr(
                min(step, total), per_epoch, epochs, lr, warmup_epochs, min_lr
            )
            # MMEarth: lr_scale * adjust_learning_rate(...)
            scales = [g['lr_scale'] for g in optimizer.param_groups]
            got = [g['lr'] for g in optimizer.param_groups]
            assert got == pytest.approx([s * expected for s in scales], rel=1e-12)

    def test_given_steps(self) -> None:
        optimizer = two_groups(1.0)
        scheduler = WarmupCosineLR(optimizer, total_steps=100, min_lr=0.0)
        lrs = {}
        for step in range(101):
            lrs[step] = optimizer.param_groups[1]['lr']
            optimizer.step()
            scheduler.step()
        assert lrs[0] == 1.0
        assert lrs[25] == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 4))
        assert lrs[50] == pytest.approx(0.5)
        assert lrs[100] == pytest.approx(0.0, abs=1e-15)

    def test_agrees_with_timm(self) -> None:
        lr, total, warmup, min_lr = 1e-3, 60, 6, 1e-6
        ours, theirs = two_groups(lr), two_groups(lr)
        for group in theirs.param_groups:  # timm scales lr_scale itself
            group['lr'] = lr
        scheduler = WarmupCosineLR(ours, total, warmup, min_lr)
        timm_scheduler = CosineLRScheduler(
            theirs,
            t_initial=total - warmup,
            lr_min=min_lr,
            warmup_t=warmup,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        for step in range(total + 3):
            timm_scheduler.step_update(step)
            # timm applies lr_scale after the floor; MMEarth too.
            assert [g['lr'] for g in ours.param_groups] == pytest.approx(
                [g['lr'] for g in theirs.param_groups], rel=1e-9
            )
            ours.step()
            scheduler.step()

    def test_group_added_later(self) -> None:
        lr, total = 1e-2, 20
        optimizer = two_groups(lr)
        scheduler = WarmupCosineLR(optimizer, total, 0, 1e-6)
        for _ in range(5):
            optimizer.step()
            scheduler.step()
        extra = nn.Parameter(torch.zeros(3, 3))
        assert add_param_group(optimizer, [extra], weight_decay=0.0) == [extra]
        group = optimizer.param_groups[-1]
        expected = mmearth_lr(5, 1, total, lr, 0, 1e-6)
        assert group['lr'] == pytest.approx(expected)
        assert group['initial_lr'] == pytest.approx(lr)
        assert (group['weight_decay'], group['lr_scale']) == (0.0, 1.0)
        state = scheduler.state_dict()
        for step in range(6, 12):
            optimizer.step()
            scheduler.step()
            assert group['lr'] == pytest.approx(mmearth_lr(step, 1, total, lr, 0, 1e-6))
            assert optimizer.param_groups[0]['lr'] == pytest.approx(0.81 * group['lr'])
        # A fresh scheduler resumed from the state carries on over the new group.
        resumed = WarmupCosineLR(optimizer, total, 0, 1e-6)
        resumed.load_state_dict(state)
        optimizer.step()
        resumed.step()
        assert group['lr'] == pytest.approx(mmearth_lr(6, 1, total, lr, 0, 1e-6))

    def test_errors(self) -> None:
        optimizer = SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises(ValueError, match='warmup_steps <= total_steps'):
            WarmupCosineLR(optimizer, 10, 11)
        with pytest.raises(ValueError, match='total_steps >= 1'):
            WarmupCosineLR(optimizer, 0)
        with pytest.raises(ValueError, match='min_lr must be >= 0'):
            WarmupCosineLR(optimizer, 10, 0, -1.0)


class TestAddParamGroup:
    def test_skips_present_and_uses_scale_one_lr(self) -> None:
        a, b = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
        optimizer = AdamW([{'params': [a], 'lr': 0.25, 'lr_scale': 0.5}], lr=0.5)
        assert add_param_group(optimizer, [a]) == []
        assert len(optimizer.param_groups) == 1
        assert add_param_group(optimizer, [a, b], weight_decay=0.1) == [b]
        group = optimizer.param_groups[-1]
        assert group['params'] == [b]
        assert (group['lr'], group['weight_decay'], group['lr_scale']) == (0.5, 0.1, 1)
        assert 'initial_lr' not in group
