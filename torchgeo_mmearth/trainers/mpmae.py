"""Trainer for MP-MAE pretraining on MMEarth corpora."""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torch.optim import AdamW, Optimizer
from torchvision.models._api import WeightsEnum

from .._compat import BaseTask
from .._errors import NonFiniteTrainingError
from .._panels import has_data
from ..modalities import Level, default_pretext_tasks
from ..models import MPMAE, MPMAEOutput, PretrainedLoad, pretraining_checkpoint
from .callbacks import CheckpointOnInterrupt
from .optim import pretraining_param_groups
from .plotting import (
    RECONSTRUCTION_CAPTION,
    Panel,
    plot_reconstruction,
    plot_training_progress,
    reconstruction_panels,
)
from .rng import RandomStateCheckpoint

__all__ = ['MPMAETask', 'plot_reconstruction']


class MPMAETask(BaseTask):
    """Pretrain an MMEarth ConvNeXt V2 with the Multi-Pretext Masked Autoencoder.

    MP-MAE (Nedungadi et al., ECCV 2024) masks 60 % of the patches of a Sentinel-2
    tile, encodes the visible pixels with a sparse-equivalent ConvNeXt V2 and
    reconstructs, from the encoder features, Sentinel-2 and the other modalities of
    the corpus (:class:`~torchgeo_mmearth.models.MPMAE`). Use it with
    :class:`~torchgeo_mmearth.datamodules.MMEarthDataModule`.

    The defaults are the published recipe, step for step as MMEarth-train's
    ``main_pretrain.py``: AdamW with betas (0.9, 0.95) and weight decay 0.05 on the
    parameters with 2 or more dimensions and on the GRN parameters (not on norms,
    biases and other 1-D parameters), learning rate ``base_lr * effective batch /
    256`` where the effective batch is the batch size times gradient accumulation
    times the number of processes, set before every optimizer step from the
    fractional epoch: a linear warm-up from 0, then a half-cycle cosine to
    ``min_lr`` at the last epoch. Set the number of epochs and the gradient
    accumulation (``accumulate_grad_batches``) on the Trainer. With accumulation,
    an epoch of ``n`` micro-batches has ``n // accumulate_grad_batches`` optimizer
    steps: the gradients of the micro-batches left over are dropped, as
    MMEarth-train drops them (Lightning's ``global_step`` counts the dropped window
    as a step all the same).

    **Non-finite gradients.** A step whose gradients are not all finite is skipped:
    parameters, AdamW moments and the schedule stay where they were. Skipped steps
    are logged (``train_skipped_steps``) and reported in a warning; after
    ``max_nonfinite_steps`` of them in a row the run stops with an error naming the
    step and the tasks whose loss was not finite. The check runs on the device,
    without making the host wait for it at every step.

    The encoder is ``self.model``, a plain timm model named by ``hparams['model']``,
    so a checkpoint of this task is a backbone for TorchGeo's own tasks
    (``ClassificationTask(model=..., weights='path/to/mpmae.ckpt')``) and for
    ``torchgeo-mmearth export-weights``.

    **Continued pretraining.** ``weights`` starts from a published MP-MAE (an
    :class:`~torchgeo_mmearth.models.MMEarthWeights` member) or from a checkpoint
    file, whole: encoder, decoder, prediction heads and uncertainty weights
    (:meth:`~torchgeo_mmearth.models.MPMAE.load_pretrained`). Tasks the checkpoint
    lacks, or whose channels differ, start fresh; the task logs which parts were
    loaded and which are new, and keeps the report in :attr:`pretrained`.

    If you use this trainer in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    monitor = 'train_loss'

    def __init__(
        self,
        model: str = 'mmearth_convnextv2_atto',
        in_channels: int = 12,
        patch_size: int = 8,
        input_size: int = 56,
        mask_ratio: float = 0.6,
        target_modalities: Sequence[str] | None = None,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        shared_decoder: bool = True,
        decoder_init: Literal['reference', 'timm'] = 'reference',
        encoder_init: Literal['timm', 'reference'] = 'timm',
        norm_pix_loss: Sequence[str] | None = None,
        loss_aggregation: Literal['uncertainty', 'unweighted'] = 'uncertainty',
        grn_pooling: Literal['batch', 'sample'] = 'batch',
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        grn_weight_decay: bool = True,
        max_nonfinite_steps: int | None = 5,
        plot_every_n_steps: int | None = 1000,
        weights: WeightsEnum | str | None = None,
    ) -> None:
        """Initialize a new MPMAETask instance.

        Args:
            model: timm name of the encoder, e.g. ``mmearth_convnextv2_atto`` (the
                ``_p16`` names fix the patch size at 16).
            in_channels: number of Sentinel-2 input bands.
            patch_size: masking patch size = encoder stride (8 for 56 px inputs,
                16 for 112 px inputs).
            input_size: side of the input crop (the datamodule's ``input_size``);
                must be a multiple of *patch_size*.
            mask_ratio: fraction of masked patches per sample.
            target_modalities: MMEarth modalities to reconstruct, each with its
                MP-MAE bands; None for the 12 pretext tasks of MP-MAE,
                ``['sentinel2']`` for a plain masked autoencoder. The Sentinel-2
                target is the input itself (*in_channels* channels).
            decoder_dim: decoder width.
            decoder_depth: number of decoder blocks.
            shared_decoder: one decoder for all tasks, as the released checkpoints
                (True), or one per task (False; costs one decoder per task).
            decoder_init: decoder initialisation, ``'reference'`` (as the released
                checkpoints) or ``'timm'``.
            encoder_init: encoder initialisation, ``'timm'`` (the encoder's own,
                standard deviation 0.02) or ``'reference'`` (FCMAE's standard
                deviation 1.0 for depthwise convolutions and MLPs, as the released
                checkpoints started from; see :doc:`/fixes`).
            norm_pix_loss: targets normalised per patch; None for sentinel2 only.
            loss_aggregation: ``'uncertainty'`` (learned task weights) or
                ``'unweighted'`` (sum).
            grn_pooling: GRN statistics of the masked encoder over the whole batch
                (``'batch'``, as the released checkpoints) or per sample.
            base_lr: learning rate per 256 samples of effective batch.
            lr: absolute learning rate, instead of the one derived from *base_lr*.
            min_lr: learning rate at the end of the cosine schedule.
            weight_decay: AdamW weight decay of the parameters with 2 or more
                dimensions (and of the GRN parameters, see *grn_weight_decay*).
            betas: AdamW betas.
            warmup_epochs: epochs of linear warm-up (fractions allowed).
            grn_weight_decay: decay the GRN parameters as MMEarth-train's
                pretraining does (True), or exempt them as 1-D parameters (False;
                see :doc:`/fixes`).
            max_nonfinite_steps: stop after this many optimizer steps in a row
                skipped for non-finite gradients; None never stops. The counters are
                read every ``log_every_n_steps`` optimizer steps and at the end of
                each epoch, so the run stops at the first reading after the limit.
            plot_every_n_steps: log a reconstruction figure every this many training
                steps to loggers that take figures; None never.
            weights: a whole MP-MAE checkpoint to continue pretraining from: an
                :class:`~torchgeo_mmearth.models.MMEarthWeights` member, its name
                (``'MMEarthWeights.S2_MP_MAE'``), or the path of an official
                checkpoint or of a checkpoint of this task. Its encoder must have
                this task's *model*, *in_channels* and *patch_size*.

        Raises:
            ValueError: for a target modality the format does not know, an input
                size that is not a multiple of the patch size, a
                *max_nonfinite_steps* below 1, or weights whose encoder is not this
                task's.
        """
        if max_nonfinite_steps is not None and max_nonfinite_steps < 1:
            raise ValueError(
                f'max_nonfinite_steps must be >= 1 or None, got {max_nonfinite_steps}'
            )
        if input_size % patch_size:
            raise ValueError(
                f'input_size {input_size} must be a multiple of patch_size {patch_size}'
            )
        default_pretext_tasks(target_modalities or None)  # a clear error, early
        self.weights = weights
        #: What ``weights`` initialised (None without weights).
        self.pretrained: PretrainedLoad | None = None
        super().__init__()

    def configure_models(self) -> None:
        """Build the encoder (``self.model``), decoder and losses."""
        hparams = self.hparams
        encoder = timm.create_model(
            hparams['model'],
            in_chans=hparams['in_channels'],
            patch_size=hparams['patch_size'],
            num_classes=0,
        )
        tasks = default_pretext_tasks(
            hparams['target_modalities'] or None,
            sentinel2_channels=hparams['in_channels'],
        )
        self.mpmae = MPMAE(
            encoder,
            patch_size=hparams['patch_size'],
            tasks=tasks,
            mask_ratio=hparams['mask_ratio'],
            decoder_dim=hparams['decoder_dim'],
            decoder_depth=hparams['decoder_depth'],
            shared_decoder=hparams['shared_decoder'],
            decoder_init=hparams['decoder_init'],
            encoder_init=hparams['encoder_init'],
            norm_pix_loss=hparams['norm_pix_loss'],
            aggregation=hparams['loss_aggregation'],
            grn_pooling=hparams['grn_pooling'],
        )
        if self.weights:
            self.pretrained = self._load_weights(self.weights)
        # TorchGeo's extract_backbone reads the encoder from the 'model.' keys.
        self.model = self.mpmae.encoder
        self._last_plot_step = -1
        # What on_fit_end draws: the first and latest reconstruction rows per stage,
        # and the mean loss of every epoch as (step, loss) per stage.
        self._snapshots: dict[str, list[tuple[str, list[Panel]]]] = {}
        self._epoch_loss_sums: dict[str, Tensor] = {}
        self._loss_history: dict[str, list[tuple[int, float]]] = {
            'train': [],
            'val': [],
        }
        # The mean loss of each task per epoch, per stage.
        self._task_history: dict[str, dict[str, list[tuple[int, float]]]] = {}
        # The validation tile the figure draws, chosen once (see _figure_tile).
        self._figure_index: int | None = None
        # The optimizer steps (counted on the device from on_train_start on), the
        # state of a checkpoint being resumed, the learning-rate schedule and the
        # micro-batches of an epoch that end in an optimizer step.
        self._steps: _OptimizerSteps | None = None
        self._resumed_steps: dict[str, Tensor] | None = None
        self._schedule: _PretrainingSchedule | None = None
        self._skipped_reported = 0

    def _load_weights(self, weights: WeightsEnum | str) -> PretrainedLoad:
        """Initialise MP-MAE from *weights* and log what was loaded."""
        name = weights if isinstance(weights, str) else repr(weights)
        try:
            report = self.mpmae.load_pretrained(pretraining_checkpoint(weights))
        except ValueError as error:
            raise ValueError(f'weights {name}: {error}') from None
        rank_zero_info(f'MP-MAE initialised from {name}:\n{report.summary()}')
        return report

    def forward(self, batch: Mapping[str, Any], **kwargs: Any) -> MPMAEOutput:
        """Run MP-MAE on a batch.

        Args:
            batch: a normalised MMEarth batch.
            **kwargs: ``mask`` or ``generator``, see :class:`MPMAE`.

        Returns:
            The losses, predictions, mask and encoder features.
        """
        output: MPMAEOutput = self.mpmae(batch, **kwargs)
        return output

    def training_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Compute the MP-MAE loss and log the training signals.

        Args:
            batch: a normalised MMEarth batch.
            batch_idx: index of the batch.
            dataloader_idx: index of the dataloader.

        Returns:
            The total loss.
        """
        self._check_input(batch)
        output: MPMAEOutput = self(batch)
        batch_size = len(output.mask)
        losses = torch.stack([output.loss, *output.task_losses.values()]).detach()
        if self._steps is not None:
            first = batch_idx % self.trainer.accumulate_grad_batches == 0
            self._steps.record_losses(losses, first)
            skipped = self._steps.skipped.float()
            self.log('train_skipped_steps', skipped, batch_size=batch_size)
        self._log_step('train', output, batch_size)
        self._add_to_epoch_loss('train', losses, batch_size)
        self.log('train_feature_std', _feature_std(output), batch_size=batch_size)
        for name, value in self.mpmae.task_log_variances().items():
            self.log(f'train_log_var_{name}', value, batch_size=batch_size)
        lr = self.trainer.optimizers[0].param_groups[0]['lr']
        self.log('lr', lr, batch_size=batch_size)
        every = self.hparams['plot_every_n_steps']
        if (
            every
            and self.global_step % every == 0
            and self.global_step != self._last_plot_step
        ):
            self._last_plot_step = self.global_step
            self._log_figure(batch, output, 'train')
        return output.loss

    def validation_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Compute the validation losses with a mask fixed per batch index.

        Args:
            batch: a normalised MMEarth batch.
            batch_idx: index of the batch.
            dataloader_idx: index of the dataloader.
        """
        self._check_input(batch)
        generator = torch.Generator().manual_seed(batch_idx)
        output = self(batch, generator=generator)
        self._log_step('val', output, len(output.mask))
        if not self.trainer.sanity_checking:
            losses = torch.stack([output.loss, *output.task_losses.values()])
            self._add_to_epoch_loss('val', losses, len(output.mask))
        if batch_idx == 0:
            # The same tile of the first batch, with the same mask, at every epoch.
            self._log_figure(batch, output, 'val')

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Ctrl-C keeps a checkpoint; a resumed run draws the masks of an uninterrupted one.

        Returns:
            :class:`~torchgeo_mmearth.trainers.CheckpointOnInterrupt` and
            :class:`~torchgeo_mmearth.trainers.RandomStateCheckpoint`.
        """
        return [CheckpointOnInterrupt(), RandomStateCheckpoint()]

    def on_train_start(self) -> None:
        """Start counting the optimizer steps on the device, or go on from a checkpoint."""
        steps = _OptimizerSteps(len(self.mpmae.tasks), self.device)
        if self._resumed_steps is not None:
            steps.load_state_dict(self._resumed_steps)
            # Reported by the run that saved them (CPU tensors: no wait).
            self._skipped_reported = int(self._resumed_steps['skipped'])
        else:  # a checkpoint written before the steps were counted: none skipped
            steps.applied.fill_(self.trainer.global_step)
        steps.step.fill_(self.trainer.global_step)
        self._steps, self._resumed_steps = steps, None
        for group in self.trainer.optimizers[0].param_groups:
            # The groups of a checkpoint replace the optimizer's: one written before
            # the task used fused AdamW would turn it off.
            group['fused'] = True
        self._set_learning_rate()

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Flag the step for fused AdamW to skip if a gradient is not finite.

        Args:
            optimizer: the optimizer about to step.
        """
        if self._steps is not None:
            self._steps.check_gradients(optimizer)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step as MMEarth-train does; then set the learning rate of the next step.

        The micro-batches left over at the end of an epoch, fewer than
        ``accumulate_grad_batches``, are computed and their gradients dropped
        (MMEarth-train's ``train_one_epoch`` steps only after full windows and
        zeroes the gradients when the next epoch starts). A step skipped for
        non-finite gradients leaves the schedule where it was. Every
        ``log_every_n_steps`` steps the counters are read (see
        *max_nonfinite_steps*).

        Args:
            epoch: the current epoch.
            batch_idx: index of the last micro-batch of the step.
            optimizer: the optimizer.
            optimizer_closure: training step and backward of the last micro-batch.

        Raises:
            FloatingPointError: after *max_nonfinite_steps* skipped steps in a row.
        """
        steps, schedule = self._steps, self._schedule
        if steps is None or schedule is None:  # not fitting: Lightning's own step
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        if batch_idx >= schedule.stepping_micro_batches:
            if optimizer_closure is not None:
                optimizer_closure()
            steps.step.add_(1)
            return
        optimizer.step(closure=optimizer_closure)
        steps.stepped(self.hparams['max_nonfinite_steps'])
        self._set_learning_rate()
        # Set by Lightning's logger connector, not declared on the Trainer.
        every = int(getattr(self.trainer, 'log_every_n_steps', 1)) or 1
        if (self.trainer.global_step + 1) % every == 0:
            self._check_skipped_steps(self.trainer.global_step)

    def on_train_epoch_end(self) -> None:
        """Record the mean training loss of the epoch; check the skipped steps."""
        self._record_epoch_loss('train')
        if self._steps is not None:
            self._check_skipped_steps(self.global_step - 1)

    def on_validation_epoch_end(self) -> None:
        """Record the mean validation loss (not of the sanity check)."""
        if not self.trainer.sanity_checking:
            self._record_epoch_loss('val')

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what the encoder was pretrained on, for ``export-weights``.

        Args:
            checkpoint: the checkpoint being saved.
        """
        dataset = getattr(
            getattr(self.trainer, 'datamodule', None), 'train_dataset', None
        )
        corpus: dict[str, Any] = {}
        if dataset is not None and hasattr(dataset, 'modality_bands'):
            corpus = {
                'root': str(dataset.root),
                'subset': dataset.subset,
                'bands': list(dataset.modality_bands.get('sentinel2', ())),
            }
        checkpoint['mmearth'] = {
            'model': self.hparams['model'],
            'in_chans': self.hparams['in_channels'],
            'patch_size': self.hparams['patch_size'],
            'input_size': self.hparams['input_size'],
            'corpus': corpus,
        }
        if self._steps is not None:
            checkpoint['mmearth_steps'] = self._steps.state_dict()
        # What the final figure draws, so that a resumed run's covers the whole run.
        checkpoint['mmearth_progress'] = {
            'loss_history': self._loss_history,
            'task_history': self._task_history,
            'epoch_loss_sums': self._epoch_loss_sums,
            'figure_index': self._figure_index,
            'first_rows': {
                stage: (rows[0][0], [_stored_panel(panel) for panel in rows[0][1]])
                for stage, rows in self._snapshots.items()
                if rows
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the step counters, losses and first figure rows of a run.

        Args:
            checkpoint: the checkpoint being loaded.
        """
        self._resumed_steps = checkpoint.get('mmearth_steps')
        progress = checkpoint.get('mmearth_progress')
        if progress is None:  # written before this was recorded
            return
        self._loss_history = progress['loss_history']
        self._task_history = progress['task_history']
        self._epoch_loss_sums = progress['epoch_loss_sums']
        self._figure_index = progress['figure_index']
        self._snapshots = {
            stage: [(label, [_restored_panel(panel) for panel in panels])]
            for stage, (label, panels) in progress['first_rows'].items()
        }

    def on_fit_end(self) -> None:
        """Save the progress figure and say where the results are.

        The figure shows the first validation tile after the first and the last
        validation (the same tile and mask in both rows) beside the training and
        validation loss of every epoch. Without validation, its rows are the first
        and the last logged training batches, which are different tiles.
        """
        # log_dir is a collective call under DDP: every rank must ask for it.
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        figure_path = None
        rows = self._snapshots.get('val') or self._snapshots.get('train')
        if rows:
            uncertainty = self.hparams['loss_aggregation'] == 'uncertainty'
            figure = plot_training_progress(
                rows,
                {
                    'training (epoch mean)': self._loss_history['train'],
                    'validation': self._loss_history['val'],
                },
                'total loss, '
                + ('uncertainty-weighted' if uncertainty else 'sum of the tasks'),
                # The training epochs: more tiles than validation, all targets.
                task_losses=self._task_history.get('train'),
                caption=RECONSTRUCTION_CAPTION,
            )
            directory.mkdir(parents=True, exist_ok=True)
            figure_path = directory / 'reconstruction.png'
            figure.savefig(figure_path, dpi=100)
            plt.close(figure)
        callback = self.trainer.checkpoint_callback
        checkpoint = getattr(callback, 'last_model_path', '') or getattr(
            callback, 'best_model_path', ''
        )
        if checkpoint:
            print(f'MP-MAE checkpoint: {checkpoint}')
        if figure_path is not None:
            print(f'Reconstruction figure: {figure_path}')

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Fused AdamW; the learning rate is set before every step (no scheduler).

        Returns:
            The optimizer.

        Raises:
            ValueError: if the learning rate cannot be derived (no datamodule batch
                size and no *lr*), the Trainer has no epoch limit or the number of
                training batches per epoch is unknown.
        """
        hparams = self.hparams
        lr = hparams['lr'] or self._scaled_lr()
        groups = pretraining_param_groups(
            self, hparams['weight_decay'], hparams['grn_weight_decay']
        )
        # Fused AdamW skips a step flagged by found_inf (parameters, moments and
        # step count) on the device, and takes the learning rate as a tensor.
        optimizer = AdamW(groups, lr=lr, betas=tuple(hparams['betas']), fused=True)
        trainer = self.trainer
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(
                'MPMAETask needs trainer.max_epochs to place its warm-up and cosine '
                'schedule'
            )
        # Loads the training data if not yet, for num_training_batches.
        if not math.isfinite(trainer.estimated_stepping_batches):
            raise ValueError(
                'MPMAETask needs training data of known length to place its '
                'schedule; set trainer.limit_train_batches to an int'
            )
        self._schedule = _PretrainingSchedule(
            lr=lr,
            min_lr=hparams['min_lr'],
            warmup_epochs=hparams['warmup_epochs'],
            epochs=epochs,
            micro_batches=int(trainer.num_training_batches),
            accumulation=trainer.accumulate_grad_batches,
        )
        return optimizer

    def _set_learning_rate(self) -> None:
        """Give every group the learning rate of the next step, on the device."""
        if self._steps is None or self._schedule is None:
            return
        lr = self._schedule(self._steps.applied)
        if lr.device.type != 'cpu':
            lr = lr.float()  # what the fused CUDA kernels read; CPU reads a double
        for group in self.trainer.optimizers[0].param_groups:
            group['lr'] = lr

    def _check_skipped_steps(self, last_step: int) -> None:
        """Read the step counters (one host synchronisation); warn, or stop.

        Args:
            last_step: the step just taken (Lightning's ``global_step`` before it).

        Raises:
            FloatingPointError: after *max_nonfinite_steps* skipped steps in a row.
        """
        steps = self._steps
        if steps is None:
            return
        skipped, stop_step = torch.stack([steps.skipped, steps.stop_step]).tolist()
        limit = self.hparams['max_nonfinite_steps']
        if stop_step >= 0:
            # Every process stops here at the same step: their gradients are equal.
            total, *flags = self.trainer.strategy.reduce(
                steps.stop_losses.float(), reduce_op='sum'
            ).tolist()
            bad = [
                task.name
                for task, flag in zip(self.mpmae.tasks, flags, strict=True)
                if flag
            ]
            losses = bad if bad else 'none (the aggregation)' if total else 'none'
            raise NonFiniteTrainingError(
                f'MP-MAE stopped: {limit} optimizer steps in a row had non-finite '
                f'gradients and were skipped, the last at step {stop_step} '
                f'(max_nonfinite_steps={limit}); tasks with a non-finite loss: '
                f'{losses}'
            )
        if skipped > self._skipped_reported:
            stops = f'; the run stops after {limit} in a row' if limit else ''
            rank_zero_warn(
                f'MP-MAE skipped {skipped - self._skipped_reported} optimizer steps '
                f'with non-finite gradients up to step {last_step} '
                f'({skipped} in all{stops})'
            )
            self._skipped_reported = skipped

    def _scaled_lr(self) -> float:
        """``base_lr * batch size * accumulation * processes / 256``."""
        batch_size = getattr(
            getattr(self.trainer, 'datamodule', None), 'batch_size', None
        )
        if batch_size is None:
            raise ValueError(
                'MPMAETask derives its learning rate from the datamodule batch size; '
                'use a datamodule with batch_size or set lr'
            )
        effective = (
            int(batch_size)
            * self.trainer.accumulate_grad_batches
            * self.trainer.world_size
        )
        return float(self.hparams['base_lr'] * effective / 256)

    def _check_input(self, batch: Mapping[str, Any]) -> None:
        x = batch.get('image_sentinel2')
        expected = (self.hparams['in_channels'], self.hparams['input_size'])
        if x is None or (x.shape[1], x.shape[-1]) != expected:
            shape = None if x is None else tuple(x.shape)
            raise ValueError(
                f'MPMAETask expects image_sentinel2 of shape (B, {expected[0]}, '
                f'{expected[1]}, {expected[1]}) (in_channels, input_size), got {shape}'
            )

    def _log_step(self, stage: str, output: MPMAEOutput, batch_size: int) -> None:
        self.log(f'{stage}_loss', output.loss, batch_size=batch_size, prog_bar=True)
        for name, loss in output.task_losses.items():
            self.log(f'{stage}_loss_{name}', loss, batch_size=batch_size)
        for name, fraction in output.valid_fractions.items():
            self.log(f'{stage}_valid_{name}', fraction, batch_size=batch_size)

    def _add_to_epoch_loss(self, stage: str, losses: Tensor, batch_size: int) -> None:
        """Add a batch to the epoch's sums of the total and of each task's loss.

        *losses* are the total, then each task's. A task counts only in batches
        where it had targets (else its loss is 0).
        """
        counted = torch.ones_like(losses)
        counted[1:] = (losses[1:] != 0).to(losses.dtype)
        sums = self._epoch_loss_sums.setdefault(
            stage, torch.zeros(2, len(losses), device=losses.device)
        )
        sums[0] += losses.float() * counted * batch_size
        sums[1] += counted * batch_size

    def _record_epoch_loss(self, stage: str) -> None:
        tasks = [task.name for task in self.mpmae.tasks]
        sums = self._epoch_loss_sums.pop(
            stage, torch.zeros(2, 1 + len(tasks), device=self.device)
        )
        # A collective call under DDP: every rank ends every epoch here.
        sums = self.trainer.strategy.reduce(sums, reduce_op='sum')
        if sums[1, 0] > 0:
            self._loss_history[stage].append(
                (self.global_step, float(sums[0, 0] / sums[1, 0]))
            )
        history = self._task_history.setdefault(stage, {})
        for name, total, count in zip(tasks, sums[0, 1:], sums[1, 1:], strict=True):
            if count > 0:
                history.setdefault(name, []).append(
                    (self.global_step, float(total / count))
                )

    def _figure_tile(self, batch: Mapping[str, Any]) -> int:
        """The first sample of the batch that has data in every pixel-level target.

        Chosen at the first validation and kept, so every row of the figure shows
        the same tile; sample 0 when no sample has all.
        """
        if self._figure_index is None:
            keys = [
                (task.key, task.kind)
                for task in self.mpmae.tasks
                if task.level is Level.PIXEL and task.key in batch
            ]
            size = len(batch[self.mpmae.input_key])
            complete = (
                index
                for index in range(size)
                if all(
                    has_data(batch[key][index].float().cpu().numpy(), kind)
                    for key, kind in keys
                )
            )
            self._figure_index = next(complete, 0)
        return self._figure_index

    def _log_figure(
        self, batch: Mapping[str, Any], output: MPMAEOutput, stage: str
    ) -> None:
        panels = reconstruction_panels(
            batch,
            output,
            self.mpmae.tasks,
            self.hparams['patch_size'],
            self.mpmae.norm_pix_loss,
            index=self._figure_tile(batch) if stage == 'val' else 0,
        )
        tile = 'validation tile' if stage == 'val' else 'training batch'
        row = (
            f'{tile}\nepoch {self.current_epoch + 1}, step {self.global_step}',
            panels,
        )
        if not self.trainer.sanity_checking:
            # Keep the first and the latest row: the figure saved at the end of fit.
            snapshots = self._snapshots.setdefault(stage, [])
            del snapshots[1:]
            snapshots.append(row)
        experiments = [getattr(logger, 'experiment', None) for logger in self.loggers]
        takes_figures = [
            experiment
            for experiment in experiments
            if experiment is not None and hasattr(experiment, 'add_figure')
        ]
        if takes_figures:
            figure = plot_training_progress([row])
            for experiment in takes_figures:
                experiment.add_figure(
                    f'{stage}/reconstruction', figure, self.global_step, close=False
                )
            plt.close(figure)


def _stored_panel(panel: Panel) -> tuple[str, Tensor | None, dict[str, Any]]:
    """A panel as plain data that loads with ``torch.load(weights_only=True)``."""
    image = None if panel.image is None else torch.from_numpy(panel.image.copy())
    return panel.title, image, dict(panel.options)


def _restored_panel(stored: tuple[str, Tensor | None, dict[str, Any]]) -> Panel:
    title, image, options = stored
    return Panel(title, None if image is None else image.numpy(), options)


def _feature_std(output: MPMAEOutput) -> Tensor:
    """Mean over channels of the std of L2-normalised features across visible cells.

    About ``1 / sqrt(C)`` for healthy features, near 0 when the representation
    collapses to a constant. Weighted sums rather than indexing, which would make
    the host wait for the device.
    """
    features = output.features.detach().permute(0, 2, 3, 1).flatten(0, 2).float()
    rows = F.normalize(features, dim=1)
    visible = (~output.mask).flatten().to(rows.dtype).unsqueeze(1)
    count = visible.sum()
    mean = (rows * visible).sum(0) / count.clamp(min=1)
    variance = ((rows - mean) ** 2 * visible).sum(0) / (count - 1).clamp(min=1)
    return torch.where(count >= 2, variance.sqrt().mean(), 0.0)


@dataclass(frozen=True)
class _PretrainingSchedule:
    """MMEarth-train's learning rate of pretraining, per optimizer step.

    ``helpers.adjust_learning_rate`` at the fractional epoch ``epoch + i / n``,
    where ``i`` is the micro-batch that starts the step's accumulation window and
    ``n`` the micro-batches of an epoch: a linear warm-up from 0 over
    *warmup_epochs*, then a half-cycle cosine to *min_lr* at *epochs*. An epoch
    has ``n // accumulation`` steps (at least one, on the micro-batches there are).
    """

    lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int
    micro_batches: int
    accumulation: int

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in an epoch."""
        return max(self.micro_batches // self.accumulation, 1)

    @property
    def stepping_micro_batches(self) -> int:
        """The micro-batches of an epoch whose gradients are used."""
        return min(self.steps_per_epoch * self.accumulation, self.micro_batches)

    def __call__(self, applied: Tensor) -> Tensor:
        """The learning rate of the step after *applied* steps, on its device.

        Args:
            applied: optimizer steps applied so far, an integer tensor.

        Returns:
            The learning rate, float64.
        """
        epoch = (applied // self.steps_per_epoch).double()
        within = applied % self.steps_per_epoch * self.accumulation
        epoch = within.double() / self.micro_batches + epoch
        warmup = self.lr * epoch / (self.warmup_epochs or 1.0)
        progress = math.pi * (epoch - self.warmup_epochs)
        progress = progress / ((self.epochs - self.warmup_epochs) or 1.0)
        cosine = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + progress.cos())
        return torch.where(epoch < self.warmup_epochs, warmup, cosine)


class _OptimizerSteps:
    """The optimizer steps of a run, counted on the device.

    Nothing here makes the host wait for the device; the host reads the counters
    only when it checks them (:meth:`MPMAETask._check_skipped_steps`).
    """

    #: The counters a checkpoint keeps.
    saved = ('applied', 'skipped', 'in_a_row', 'stop_step', 'run_losses', 'stop_losses')

    def __init__(self, tasks: int, device: torch.device) -> None:
        """Initialize a new _OptimizerSteps instance.

        Args:
            tasks: number of pretext tasks.
            device: the device of the parameters.
        """

        def zero(dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros((), dtype=dtype, device=device)

        #: Lightning's global_step: every optimizer_step, dropped windows included.
        self.step = zero()
        #: Steps that updated the parameters: the schedule's position.
        self.applied = zero()
        #: Steps skipped for non-finite gradients, in all and in a row.
        self.skipped = zero()
        self.in_a_row = zero()
        #: The step at which in_a_row reached max_nonfinite_steps; -1 before.
        self.stop_step = zero() - 1
        #: Non-finite losses (the total, then each task's): in the current
        #: accumulation window, in the current run of skipped steps, in the run
        #: that reached the limit.
        self.window_losses = torch.zeros(tasks + 1, dtype=torch.bool, device=device)
        self.run_losses = torch.zeros_like(self.window_losses)
        self.stop_losses = torch.zeros_like(self.window_losses)
        #: 1 where a gradient is not finite: fused AdamW then skips its update.
        self.found_inf = zero(torch.float32)
        self._one = torch.ones((), device=device)

    def state_dict(self) -> dict[str, Tensor]:
        """The counters for a checkpoint.

        Returns:
            The counters, on the CPU.
        """
        return {name: getattr(self, name).cpu() for name in self.saved}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Set the counters from a checkpoint.

        Args:
            state: a state of :meth:`state_dict`.
        """
        for name in self.saved:
            getattr(self, name).copy_(state[name])

    def record_losses(self, losses: Tensor, first: bool) -> None:
        """Note which losses of a micro-batch are not finite.

        Args:
            losses: the total loss, then each task's.
            first: whether the micro-batch starts an accumulation window.
        """
        if first:
            self.window_losses.zero_()
        self.window_losses |= ~losses.isfinite()

    def check_gradients(self, optimizer: Optimizer) -> None:
        """Set the optimizer's ``found_inf`` (as GradScaler does) from its gradients.

        Args:
            optimizer: a fused AdamW.
        """
        grads = [
            param.grad
            for group in optimizer.param_groups
            for param in group['params']
            if param.grad is not None
        ]
        self.found_inf.zero_()
        if grads:
            # GradScaler's check; unscaling by 1 leaves the gradients as they are.
            torch._amp_foreach_non_finite_check_and_unscale_(
                grads, self.found_inf, self._one
            )
        optimizer.found_inf = self.found_inf  # type: ignore[attr-defined]

    def stepped(self, limit: int | None) -> None:
        """Count a step that the optimizer applied or skipped by ``found_inf``.

        Args:
            limit: *max_nonfinite_steps*.
        """
        skipped = self.found_inf.bool()
        self.applied += ~skipped
        self.skipped += skipped
        self.in_a_row.add_(1).mul_(skipped)
        self.run_losses |= self.window_losses
        self.run_losses &= skipped
        if limit is not None:
            reached = (self.in_a_row == limit) & (self.stop_step < 0)
            self.stop_step.copy_(torch.where(reached, self.step, self.stop_step))
            self.stop_losses.copy_(
                torch.where(reached, self.run_losses, self.stop_losses)
            )
        self.step += 1
