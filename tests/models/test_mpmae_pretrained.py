"""Whole official MP-MAE checkpoints: conversion, partial loading, parity."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from torchgeo_mmearth.modalities import Kind, Level, PretextTask, default_pretext_tasks
from torchgeo_mmearth.models import MPMAE, mpmae_parts
from torchgeo_mmearth.models.conversion import minkowski_to_conv

from .conftest import OFFICIAL_OUTPUTS, OfficialCheckpoint
from .fcmae_reference import reference_objective

TASKS = list(OFFICIAL_OUTPUTS)
IMAGE_TASKS = [task for task, (_, pixel) in OFFICIAL_OUTPUTS.items() if not pixel]


def mpmae(**kwargs: Any) -> MPMAE:
    return MPMAE('mmearth_convnextv2_atto', **kwargs)


class TestMPMAEParts:
    def test_official(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        checkpoint = make_official_checkpoint()
        sd = checkpoint['model']
        parts = mpmae_parts(checkpoint)
        assert parts.tasks == tuple(TASKS)
        assert parts.shared_decoder
        assert set(parts.decoders) == set(TASKS) == set(parts.heads)
        assert set(parts.image_norms) == set(IMAGE_TASKS)
        block = parts.decoders['biome']
        torch.testing.assert_close(
            block['0.mlp.grn.weight'], sd['decoder_dict.biome.0.grn.gamma'].flatten()
        )
        torch.testing.assert_close(
            block['0.conv_dw.weight'], sd['decoder_dict.biome.0.dwconv.weight']
        )
        assert parts.heads['eco_region']['weight'].shape == (846, 512)
        for i, task in enumerate(TASKS):
            assert parts.log_vars[task] == sd['loss_fn.log_vars'][i]
        torch.testing.assert_close(
            parts.encoder['stem.3.weight'],
            minkowski_to_conv(sd['encoder.stem.0.kernel']),
        )
        # The bare 'model' entry converts the same (task order from the heads).
        assert mpmae_parts(sd).tasks == parts.tasks

    def test_task_order_from_arguments(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint(outputs=['month', 'sentinel2'])
        sd = checkpoint['model']
        assert mpmae_parts(checkpoint).tasks == ('month', 'sentinel2')
        assert (
            mpmae_parts(checkpoint).log_vars['sentinel2'] == sd['loss_fn.log_vars'][1]
        )

    @pytest.mark.parametrize(
        ('key', 'where'),
        [
            ('decoder_dict.sentinel2.0.gamma.weight', 'decoder_dict.sentinel2.0.gamma'),
            ('layer_scale', 'layer_scale'),
            ('encoder.something.weight', 'encoder.something'),
        ],
    )
    def test_unknown_key(
        self, make_official_checkpoint: OfficialCheckpoint, key: str, where: str
    ) -> None:
        checkpoint = make_official_checkpoint()
        checkpoint['model'][key] = torch.zeros(1)
        with pytest.raises(ValueError, match=where):
            mpmae_parts(checkpoint)

    def test_unknown_wrapper_key(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint() | {'lr_scheduler': {}}
        with pytest.raises(ValueError, match="'lr_scheduler' beside its model"):
            mpmae_parts(checkpoint)

    def test_encoder_only(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        sd = make_official_checkpoint()['model']
        encoder = {k: v for k, v in sd.items() if k.startswith('encoder.')}
        with pytest.raises(ValueError, match='holds no MP-MAE decoder'):
            mpmae_parts(encoder)

    def test_log_vars_of_other_tasks(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint()
        checkpoint['model']['loss_fn.log_vars'] = torch.zeros(3)
        with pytest.raises(ValueError, match='12 pretext tasks'):
            mpmae_parts(checkpoint)

    def test_own_state_dict(self) -> None:
        model = mpmae(decoder_dim=32)
        parts = mpmae_parts(model.state_dict())
        assert parts.tasks == tuple(TASKS)
        assert parts.shared_decoder
        lightning = {
            'state_dict': {f'mpmae.{k}': v for k, v in model.state_dict().items()}
        }
        lightning['state_dict'] |= {'model.stem.0.weight': torch.zeros(1)}
        assert mpmae_parts(lightning).heads.keys() == parts.heads.keys()


def assert_loaded(model: MPMAE, sd: dict[str, Tensor], tasks: list[str]) -> None:
    """Every decoder part of *model* holds the official tensors."""
    own = model.state_dict()
    torch.testing.assert_close(own['decoder.proj.weight'], sd['proj.weight'])
    torch.testing.assert_close(own['decoder.mask_token'], sd['mask_token'])
    torch.testing.assert_close(
        own['decoder.image_norm.weight'], sd['layer_norm_tmp.weight']
    )
    for name, ours in (
        ('dwconv.weight', 'conv_dw.weight'),
        ('pwconv1.weight', 'mlp.fc1.weight'),
        ('pwconv2.bias', 'mlp.fc2.bias'),
        ('norm.bias', 'norm.bias'),
    ):
        torch.testing.assert_close(
            own[f'decoder.decoder.0.{ours}'], sd[f'decoder_dict.sentinel2.0.{name}']
        )
    torch.testing.assert_close(
        own['decoder.decoder.0.mlp.grn.bias'],
        sd['decoder_dict.sentinel2.0.grn.beta'].flatten(),
    )
    for task in tasks:
        torch.testing.assert_close(
            own[f'decoder.heads.{task}.weight'], sd[f'pred_dict.{task}.weight']
        )


class TestLoadPretrained:
    def test_everything(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        checkpoint = make_official_checkpoint()
        sd = checkpoint['model']
        model = mpmae()
        report = model.load_pretrained(checkpoint)
        assert report.new == {}
        assert report.unused == {}
        assert 'encoder' in report.loaded
        assert 'decoder.heads.eco_region' in report.loaded
        assert 'criterion.weighting.log_vars[month]' in report.loaded
        assert_loaded(model, sd, TASKS)
        torch.testing.assert_close(
            model.criterion.weighting.log_vars.detach(), sd['loss_fn.log_vars']
        )
        torch.testing.assert_close(
            model.encoder.state_dict()['stages.2.blocks.5.mlp.fc1.weight'],
            sd['encoder.stages.2.5.pwconv1.linear.weight'],
        )
        assert 'new (freshly initialised): none' in report.summary()

    def test_fewer_tasks_other_bands(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint()
        sd = checkpoint['model']
        tasks = [
            PretextTask.from_modality('sentinel1', ['asc_VV', 'asc_VH']),
            *default_pretext_tasks(['month', 'sentinel2']),
        ]
        model = mpmae(tasks=tasks)
        fresh = model.decoder.heads['sentinel1'].weight.detach().clone()
        report = model.load_pretrained(checkpoint)
        assert set(report.new) == {'decoder.heads.sentinel1'}
        assert '(128, 512, 1, 1) in the model' in report.new['decoder.heads.sentinel1']
        torch.testing.assert_close(model.decoder.heads['sentinel1'].weight, fresh)
        assert_loaded(model, sd, ['month', 'sentinel2'])
        # Log-variances by task name, sentinel1's included (its head is new).
        log_vars = sd['loss_fn.log_vars']
        expected = torch.stack([log_vars[TASKS.index(t.name)] for t in tasks])
        torch.testing.assert_close(
            model.criterion.weighting.log_vars.detach(), expected
        )
        assert set(report.unused) == {
            f'{part} {task}'
            for task in TASKS
            if task not in ('sentinel1', 'month', 'sentinel2')
            for part in ('head', 'log-variance')
        }

    def test_new_task(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        checkpoint = make_official_checkpoint(outputs=['sentinel2'])
        model = mpmae(tasks=default_pretext_tasks(['sentinel2', 'biome']))
        report = model.load_pretrained(checkpoint)
        assert report.new == {
            'decoder.image_norm': 'the checkpoint has no image-level task',
            'decoder.heads.biome': 'not a task of the checkpoint',
            'criterion.weighting.log_vars[biome]': 'not a task of the checkpoint',
        }
        assert model.criterion.weighting.log_vars[1] == 0

    def test_per_task_decoders(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint()
        sd = checkpoint['model']
        model = mpmae(
            tasks=default_pretext_tasks(['lat', 'aster']), shared_decoder=False
        )
        report = model.load_pretrained(checkpoint)
        assert report.new == {}
        for task in ('lat', 'aster'):
            torch.testing.assert_close(
                model.decoder.decoders[task][0].conv_dw.weight,
                sd[f'decoder_dict.{task}.0.dwconv.weight'],
            )
        torch.testing.assert_close(
            model.decoder.image_norms['lat'].weight, sd['layer_norm_tmp.weight']
        )

    def test_per_task_into_shared(self) -> None:
        source = mpmae(decoder_dim=32, shared_decoder=False)
        with pytest.raises(ValueError, match='shared_decoder=False'):
            mpmae(decoder_dim=32).load_pretrained(source.state_dict())

    def test_own_checkpoint(self) -> None:
        source = mpmae(decoder_dim=32, shared_decoder=False)
        with torch.no_grad():
            source.criterion.weighting.log_vars.uniform_()
        target = mpmae(decoder_dim=32, shared_decoder=False)
        report = target.load_pretrained(source.state_dict())
        assert report.new == {} and report.unused == {}
        for key, value in source.state_dict().items():
            torch.testing.assert_close(target.state_dict()[key], value)

    @pytest.mark.parametrize(
        ('checkpoint_loss', 'aggregation', 'part'),
        [('unweighted', 'uncertainty', 'new'), ('uncertainty', 'unweighted', 'unused')],
    )
    def test_loss_weighting(
        self,
        make_official_checkpoint: OfficialCheckpoint,
        checkpoint_loss: str,
        aggregation: Any,
        part: str,
    ) -> None:
        checkpoint = make_official_checkpoint(
            outputs=['sentinel2'], loss=checkpoint_loss
        )
        model = mpmae(
            tasks=default_pretext_tasks(['sentinel2']), aggregation=aggregation
        )
        report = model.load_pretrained(checkpoint)
        if part == 'new':
            assert report.new == {
                'criterion.weighting.log_vars[sentinel2]': (
                    'the checkpoint was trained with unweighted losses'
                )
            }
        else:
            assert report.unused == {
                'log-variances': 'the model sums its losses unweighted'
            }

    def test_other_decoder_width(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        model = mpmae(decoder_dim=32, tasks=default_pretext_tasks(['sentinel2']))
        report = model.load_pretrained(make_official_checkpoint(outputs=['sentinel2']))
        assert set(report.new) == {
            'decoder.proj',
            'decoder.mask_token',
            'decoder.decoder',
            'decoder.heads.sentinel2',
        }
        assert report.loaded == ('encoder', 'criterion.weighting.log_vars[sentinel2]')

    def test_unknown_encoder_entry(
        self, make_official_checkpoint: OfficialCheckpoint
    ) -> None:
        checkpoint = make_official_checkpoint()
        checkpoint['model']['encoder.stages.0.0.extra.weight'] = torch.zeros(1)
        with pytest.raises(ValueError, match=r'stages\.0\.blocks\.0\.extra\.weight'):
            mpmae().load_pretrained(checkpoint)

    def test_other_encoder(self, make_official_checkpoint: OfficialCheckpoint) -> None:
        with pytest.raises(ValueError, match='input bands'):
            mpmae().load_pretrained(make_official_checkpoint(in_chans=3))


def official_batch(
    batch_size: int, size: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """A normalised batch of every pretext task, keyed as the package's batches."""
    batch: dict[str, Tensor] = {}
    for task in default_pretext_tasks():
        if task.kind is Kind.CATEGORICAL and task.level is Level.PIXEL:
            labels = torch.randint(
                task.channels, (batch_size, 1, size, size), generator=generator
            )
            unlabelled = torch.rand(labels.shape, generator=generator) < 0.2
            batch[task.key] = labels.masked_fill(unlabelled, -1)
        elif task.kind is Kind.CATEGORICAL:
            batch[task.key] = torch.randint(
                task.channels, (batch_size,), generator=generator
            )
        elif task.level is Level.PIXEL:
            shape = (batch_size, task.channels, size, size)
            batch[task.key] = torch.randn(shape, generator=generator)
        else:
            vector = torch.randn(batch_size, task.channels, generator=generator)
            missing = torch.rand(vector.shape, generator=generator) < 0.2
            batch[task.key] = vector.masked_fill(missing, float('nan'))
    return batch


def reference_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same batch in the reference's format (one-hot biome and ecoregion)."""
    converted = {}
    for task in default_pretext_tasks():
        value = batch[task.key]
        if task.kind is Kind.CATEGORICAL and task.level is Level.IMAGE:
            value = F.one_hot(value, task.channels).to(torch.float64)
        converted[task.name] = value
    return converted


# Our parameter, the official key it was converted from, and how (None: as is).
GRADIENT_PAIRS = [
    ('decoder.proj.weight', 'proj.weight'),
    ('decoder.proj.bias', 'proj.bias'),
    ('decoder.mask_token', 'mask_token'),
    ('decoder.image_norm.weight', 'layer_norm_tmp.weight'),
    ('decoder.image_norm.bias', 'layer_norm_tmp.bias'),
    ('decoder.decoder.0.conv_dw.weight', 'decoder_dict.sentinel2.0.dwconv.weight'),
    ('decoder.decoder.0.norm.weight', 'decoder_dict.sentinel2.0.norm.weight'),
    ('decoder.decoder.0.mlp.fc1.weight', 'decoder_dict.sentinel2.0.pwconv1.weight'),
    ('decoder.decoder.0.mlp.grn.weight', 'decoder_dict.sentinel2.0.grn.gamma'),
    ('decoder.decoder.0.mlp.grn.bias', 'decoder_dict.sentinel2.0.grn.beta'),
    ('decoder.decoder.0.mlp.fc2.weight', 'decoder_dict.sentinel2.0.pwconv2.weight'),
    ('criterion.weighting.log_vars', 'loss_fn.log_vars'),
    *(
        (f'decoder.heads.{task}.{name}', f'pred_dict.{task}.{name}')
        for task in TASKS
        for name in ('weight', 'bias')
    ),
]


def assert_relative(value: Tensor, expected: Tensor, what: str) -> None:
    """|value - expected| <= 1e-5 max |expected|, elementwise (float32 vs float64)."""
    error = (value.double() - expected).abs().max()
    scale = expected.abs().max()
    assert scale > 0, what
    assert error <= 1e-5 * scale, f'{what}: relative error {float(error / scale):.2e}'


@pytest.mark.parametrize('patch_size', [8, 16])
def test_parity_with_the_reference_objective(
    make_official_checkpoint: OfficialCheckpoint,
    single_thread: None,
    patch_size: int,
    tmp_path: Any,
) -> None:
    """Per-task losses and gradients of the loaded model equal FCMAE's.

    The official checkpoint goes through the public path of continued
    pretraining (MPMAETask(weights=file)); the oracle computes the reference
    objective after the encoder, in float64, from the official tensors under their
    own keys, on the same batch, mask and encoder features. Equal gradients with
    respect to the encoder features give equal encoder gradients (the encoder
    itself is checked against a sparse convolution oracle in
    test_masked_encoder.py).
    """
    from torchgeo_mmearth.trainers import MPMAETask

    checkpoint = make_official_checkpoint(patch_size=patch_size, seed=3)
    path = tmp_path / 'checkpoint-199.pth'
    torch.save(checkpoint, path)
    size = 7 * patch_size
    task = MPMAETask(
        model='mmearth_convnextv2_atto',
        patch_size=patch_size,
        input_size=size,
        weights=str(path),
        plot_every_n_steps=None,
    )
    assert task.pretrained is not None and task.pretrained.new == {}
    model = task.mpmae

    generator = torch.Generator().manual_seed(0)
    batch = official_batch(2, size, generator)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[:, torch.randperm(49, generator=generator)[:30]] = True
    output = model(batch, mask=mask.reshape(2, 7, 7))
    output.features.retain_grad()
    output.loss.backward()

    sd = {
        k: v.double().requires_grad_()
        for k, v in checkpoint['model'].items()
        if not k.startswith('encoder.')
    }
    # One block shared by every task, as the reference's module identity.
    for key in list(sd):
        if key.startswith('decoder_dict.') and not key.startswith(
            'decoder_dict.sentinel2.'
        ):
            sd[key] = sd['decoder_dict.sentinel2.0.' + key.split('.', 3)[3]]
    features = output.features.detach().double().requires_grad_()
    reference = {
        k: v.double() if v.is_floating_point() else v
        for k, v in reference_batch(batch).items()
    }
    total, losses = reference_objective(
        sd, features, mask.double(), reference, TASKS, patch_size
    )
    total.backward()

    for name in TASKS:
        assert_relative(output.task_losses[name], losses[name], name)
    assert_relative(output.loss, total, 'total')
    assert output.features.grad is not None and features.grad is not None
    assert_relative(output.features.grad, features.grad, 'encoder features')
    parameters = dict(model.named_parameters())
    for ours, official in GRADIENT_PAIRS:
        grad, expected = parameters[ours].grad, sd[official].grad
        assert grad is not None and expected is not None, ours
        assert_relative(grad, expected.reshape(grad.shape), ours)
