"""MPMAETask pretrains step for step as MMEarth-train's ``main_pretrain.py``.

The reference below is a plain PyTorch loop written from MMEarth-train's rules
(``main_pretrain.py``, ``engine_pretrain.train_one_epoch``,
``helpers.adjust_learning_rate``), not from this package's optimiser code: its own
parameter groups (timm's rule on MMEarth-train's parameter shapes, where the GRN
``gamma`` and ``beta`` are (1, 1, 1, C)), its own per-iteration learning rate, its
own gradient accumulation that drops the micro-batches left over at the end of an
epoch, and ``torch.optim.AdamW(betas=(0.9, 0.95))``. Both runs start from the same
weights and see the same batches and masks, in float64. The objective itself is
MP-MAE's forward pass, whose equality with FCMAE's is tested in
``tests/models/test_mpmae_pretrained.py``.
"""

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from torchgeo_mmearth.models import MPMAE, MPMAEOutput, random_patch_mask
from torchgeo_mmearth.trainers import MPMAETask

SIZE, PATCH, BATCH = 16, 8, 1
#: The recipe of the runs: large enough a learning rate that recipes that differ
#: (e.g. GRN parameters not decayed) end far apart.
RECIPE = {'base_lr': 0.5, 'min_lr': 1e-4, 'weight_decay': 0.05, 'warmup_epochs': 1.5}


def tiles(
    count: int, poisoned: tuple[int, ...] = (), dtype: torch.dtype = torch.float64
) -> list[Any]:
    """Sentinel-2 tiles, each with its patch mask and a poison flag."""
    generator = torch.Generator().manual_seed(0)
    grid = (SIZE // PATCH, SIZE // PATCH)
    return [
        {
            'image_sentinel2': torch.randn(
                12, SIZE, SIZE, generator=generator, dtype=dtype
            ),
            'mask': random_patch_mask(1, grid, 0.6, generator=generator)[0],
            'poison': torch.tensor(index in poisoned),
        }
        for index in range(count)
    ]


def objective(mpmae: MPMAE, batch: dict[str, Tensor]) -> MPMAEOutput:
    """MP-MAE with the batch's masks; a poisoned batch has a NaN Sentinel-2 loss."""
    output: MPMAEOutput = mpmae(batch, mask=batch['mask'])
    # On the device: the host does not read the flag.
    poison = torch.where(batch['poison'].any(), math.nan, 1.0)
    loss = output.task_losses['sentinel2'] * poison.to(output.loss.dtype)
    return output._replace(loss=loss, task_losses={'sentinel2': loss})


class FixedMasks(MPMAETask):
    """MPMAETask taking the masks from the batch, so both loops draw the same."""

    def forward(self, batch: Any, **kwargs: Any) -> MPMAEOutput:
        return objective(self.mpmae, batch)


class Tiles(LightningDataModule):
    """The tiles in order, in batches of BATCH, the last incomplete one dropped."""

    def __init__(self, samples: list[Any]) -> None:
        super().__init__()
        self.samples = samples
        self.batch_size = BATCH

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.samples, batch_size=BATCH, drop_last=True)


class LearningRates(Callback):
    """The learning rate of every optimizer step taken."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, module: LightningModule, optimizer: Optimizer
    ) -> None:
        # Kept on the device: the host reads them after the run.
        self.tensors.append(torch.as_tensor(optimizer.param_groups[0]['lr']).clone())

    @property
    def values(self) -> list[float]:
        return [float(value) for value in self.tensors]


def task(dtype: torch.dtype = torch.float64, **kwargs: Any) -> FixedMasks:
    torch.manual_seed(0)
    module = FixedMasks(
        in_channels=12,
        patch_size=PATCH,
        input_size=SIZE,
        target_modalities=['sentinel2'],
        decoder_dim=32,
        plot_every_n_steps=None,
        **{**RECIPE, **kwargs},
    )
    return module.to(dtype)


def fit(
    module: MPMAETask,
    samples: list[Any],
    epochs: int,
    ckpt_path: Path | None = None,
    **kwargs: Any,
) -> tuple[Trainer, list[float]]:
    learning_rates = LearningRates()
    kwargs['callbacks'] = [learning_rates, *kwargs.get('callbacks', [])]
    trainer = Trainer(
        accelerator='cpu',
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    trainer.fit(module, Tiles(samples), ckpt_path=ckpt_path)
    return trainer, learning_rates.values


def official_param_groups(model: nn.Module, weight_decay: float) -> list[Any]:
    """The groups of timm's ``param_groups_weight_decay`` on MMEarth-train's shapes.

    No decay on 1-D parameters and names ending in ``.bias``. MMEarth-train's GRN
    has ``gamma`` and ``beta`` of shape (1, 1, 1, C), where timm's has 1-D
    ``weight`` and ``bias``; its ``mask_token`` is (1, C, 1, 1) as ours.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        official = name.replace('grn.weight', 'grn.gamma')
        official = official.replace('grn.bias', 'grn.beta')
        ndim = 4 if '.grn.' in name else param.ndim
        if ndim <= 1 or official.endswith('.bias'):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {'params': no_decay, 'weight_decay': 0.0},
        {'params': decay, 'weight_decay': weight_decay},
    ]


def adjust_learning_rate(optimizer: Optimizer, epoch: float, lr: float) -> float:
    """``helpers.adjust_learning_rate``: warm-up, then half-cycle cosine."""
    warmup, min_lr = RECIPE['warmup_epochs'], RECIPE['min_lr']
    if epoch < warmup:
        value = lr * epoch / warmup
    else:
        value = min_lr + (lr - min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * (epoch - warmup) / (EPOCHS - warmup))
        )
    for group in optimizer.param_groups:
        group['lr'] = value
    return value


def official_pretraining(
    model: MPMAE, samples: list[Any], epochs: int, update_freq: int
) -> list[float]:
    """``main_pretrain.main`` and ``train_one_epoch``; returns each step's lr."""
    loader = [
        default_collate(samples[i : i + BATCH])
        for i in range(0, len(samples) - BATCH + 1, BATCH)
    ]
    lr = RECIPE['base_lr'] * BATCH * update_freq / 256
    groups = official_param_groups(model, RECIPE['weight_decay'])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    model.train()
    learning_rates = []
    steps = len(loader) // update_freq * update_freq
    for epoch in range(epochs):
        optimizer.zero_grad()
        for step, batch in enumerate(loader):
            if step % update_freq == 0:
                value = adjust_learning_rate(optimizer, step / len(loader) + epoch, lr)
            if step >= steps:
                # MMEarth-train computes the micro-batches left over too, and zeroes
                # their gradients at the next epoch; with masks that do not depend on
                # the random state, leaving them out here changes nothing.
                continue
            loss = objective(model, batch).loss / update_freq
            loss.backward()
            if (step + 1) % update_freq == 0:
                optimizer.step()
                optimizer.zero_grad()
                learning_rates.append(value)
    return learning_rates


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest ``|a - b| / |b|`` (Frobenius norms) over the parameters."""
    other = dict(b.named_parameters())
    with torch.no_grad():
        return max(
            float((param - other[name]).norm() / other[name].norm())
            for name, param in a.named_parameters()
            if other[name].norm() > 0
        )


EPOCHS = 5  # of 9 micro-batches: 4 steps and 1 dropped micro-batch each


class TestRecipeParity:
    def test_param_groups_are_the_official_ones(self) -> None:
        module = task()
        trainer, _ = fit(module, tiles(2 * BATCH), 1, limit_train_batches=1)
        names = {id(p): n for n, p in module.mpmae.named_parameters()}
        ours = {
            names[id(p)]: group['weight_decay']
            for group in trainer.optimizers[0].param_groups
            for p in group['params']
        }
        official = {
            names[id(p)]: group['weight_decay']
            for group in official_param_groups(module.mpmae, 0.05)
            for p in group['params']
        }
        assert ours == official
        decayed_grn = [n for n, decay in ours.items() if '.grn.' in n and decay]
        assert len(decayed_grn) == 26  # 12 encoder blocks and 1 decoder block, x2
        assert ours['decoder.mask_token'] == 0.05
        assert ours['criterion.weighting.log_vars'] == 0.0
        optimizer = trainer.optimizers[0]
        assert optimizer.defaults['betas'] == (0.9, 0.95)
        assert optimizer.defaults['eps'] == 1e-8

    @pytest.mark.slow  # float64 depthwise convolutions are slow on CPU
    def test_twenty_steps_as_main_pretrain(self) -> None:
        samples = tiles(9 * BATCH)  # 9 micro-batches an epoch
        module = task()
        reference = copy.deepcopy(module.mpmae)
        trainer, learning_rates = fit(
            module, samples, EPOCHS, accumulate_grad_batches=2
        )
        official = official_pretraining(reference, samples, EPOCHS, update_freq=2)
        # 4 steps an epoch, the 9th micro-batch dropped: 20 steps, 7 of them in the
        # 1.5 epochs of warm-up (at epochs 0, 2/9, 4/9, 6/9, 1, 1 + 2/9, 1 + 4/9),
        # then the cosine.
        assert len(official) == len(learning_rates) == 20
        lr = 0.5 * BATCH * 2 / 256
        assert official[:2] == [0.0, lr * (2 / 9) / 1.5]
        assert official[:7] == sorted(official[:7])
        assert official[7:] == sorted(official[7:], reverse=True)
        torch.testing.assert_close(
            torch.tensor(learning_rates), torch.tensor(official), rtol=1e-13, atol=0
        )
        assert relative_difference(module.mpmae, reference) <= 1e-10
        # Lightning counts the dropped window of each epoch as a step.
        assert trainer.global_step == 25


#: The tensor methods that copy a value to the host, making it wait for the device.
HOST_READS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
    }
)


class Reads(TorchFunctionMode):
    """Counts the host reads of tensor values (on any device, CPU included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Count *func* if it reads a value, and call it."""
        self.count += func in HOST_READS
        return func(*args, **(kwargs or {}))


class HostReads(Callback):
    """The host reads of device values, per training batch."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self._mode: Reads | None = None

    def on_train_batch_start(self, *args: Any) -> None:
        self._mode = Reads()
        self._mode.__enter__()

    def on_train_batch_end(self, *args: Any) -> None:
        assert self._mode is not None
        self._mode.__exit__(None, None, None)
        self.counts.append(self._mode.count)


class TestNonFiniteSteps:
    def test_a_nan_step_is_skipped(self) -> None:
        # The same tiles and masks but for the poisoned one: after it is skipped,
        # the schedule goes on where it was, so the weights are those of a run
        # without it, bit for bit.
        samples = tiles(5, poisoned=(1,), dtype=torch.float32)
        poisoned = task(torch.float32)
        clean = task(torch.float32)
        with pytest.warns(
            UserWarning,
            match=r'skipped 1 optimizer steps with non-finite gradients up to step '
            r'1 \(1 in all; the run stops after 5 in a row\)',
        ):
            run, _ = fit(poisoned, samples[:4], 1, log_every_n_steps=1)
        fit(clean, [samples[0], *samples[2:]], 1, max_steps=3)
        assert run.global_step == 4
        assert run.callback_metrics['train_skipped_steps'] == 1
        for (name, param), other in zip(
            poisoned.named_parameters(), clean.parameters(), strict=True
        ):
            assert torch.equal(param, other), name

    def test_resume_keeps_the_count_of_skipped_steps(self, tmp_path: Path) -> None:
        # The schedule's position (steps applied, not Lightning's global_step) and
        # the counters go on from the checkpoint: the same weights as without it.
        samples = tiles(4, poisoned=(1,), dtype=torch.float32)
        uninterrupted = task(torch.float32)
        fit(uninterrupted, samples, 2)
        first = task(torch.float32)
        run, _ = fit(first, samples, 1)
        run.save_checkpoint(tmp_path / 'epoch.ckpt')
        resumed = task(torch.float32)
        run, _ = fit(resumed, samples, 2, ckpt_path=tmp_path / 'epoch.ckpt')
        assert run.global_step == 8
        assert run.callback_metrics['train_skipped_steps'] == 2
        for (name, param), other in zip(
            resumed.named_parameters(), uninterrupted.parameters(), strict=True
        ):
            assert torch.equal(param, other), name

    def test_too_many_in_a_row_stop_the_run(self) -> None:
        module = task(torch.float32, max_nonfinite_steps=3)
        initial = copy.deepcopy(module.state_dict())
        with pytest.raises(
            FloatingPointError,
            match=r'^MP-MAE stopped: 3 optimizer steps in a row had non-finite '
            r'gradients and were skipped, the last at step 2 '
            r"\(max_nonfinite_steps=3\); tasks with a non-finite loss: \['sentinel2'\]$",
        ):
            # Read every 2 steps: the limit, reached at step 2, is seen after step 3.
            fit(
                module,
                tiles(6, poisoned=tuple(range(6)), dtype=torch.float32),
                1,
                log_every_n_steps=2,
            )
        assert module.trainer.global_step == 3
        for name, value in module.state_dict().items():
            assert torch.equal(value, initial[name]), name

    def test_no_host_reads_between_checks(self) -> None:
        module = task(torch.float32)
        samples = tiles(8, poisoned=(2,), dtype=torch.float32)
        with torch.no_grad(), Reads() as forward:
            # The masked encoder reads how many cells are active, to plan its work.
            objective(module.mpmae, default_collate(samples[:1]))
        reads = HostReads()
        fit(module, samples, 1, log_every_n_steps=4, callbacks=[reads])
        # Besides the forward pass's, the step counters are read once every 4
        # steps (after steps 3 and 7), and never in between, skipped step included.
        checks = [int(step in (3, 7)) for step in range(8)]
        assert reads.counts == [forward.count + check for check in checks]
