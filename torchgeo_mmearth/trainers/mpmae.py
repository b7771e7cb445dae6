"""Trainer for MP-MAE pretraining on MMEarth corpora."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRScheduler

# timm.optim has no __all__, so mypy does not see its re-exports.
from timm.optim import param_groups_weight_decay  # type: ignore[attr-defined]
from torch import Tensor
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torchvision.models._api import WeightsEnum

from .._compat import BaseTask
from .._panels import has_data
from ..modalities import Level, default_pretext_tasks
from ..models import MPMAE, MPMAEOutput, PretrainedLoad, pretraining_checkpoint
from .callbacks import CheckpointOnInterrupt
from .optim import warmup_cosine
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

    The defaults are the published recipe: AdamW with betas (0.9, 0.95) and weight
    decay 0.05 (not on norms, biases and other 1-D parameters), learning rate
    ``base_lr * effective batch / 256`` where the effective batch is the batch size
    times gradient accumulation times the number of processes, a linear warm-up per
    step followed by a half-cycle cosine to ``min_lr``. Set the number of epochs and
    the gradient accumulation (``accumulate_grad_batches``) on the Trainer.

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
                dimensions.
            betas: AdamW betas.
            warmup_epochs: epochs of linear warm-up (fractions allowed).
            plot_every_n_steps: log a reconstruction figure every this many training
                steps to loggers that take figures; None never.
            weights: a whole MP-MAE checkpoint to continue pretraining from: an
                :class:`~torchgeo_mmearth.models.MMEarthWeights` member, its name
                (``'MMEarthWeights.S2_MP_MAE'``), or the path of an official
                checkpoint or of a checkpoint of this task. Its encoder must have
                this task's *model*, *in_channels* and *patch_size*.

        Raises:
            ValueError: for a target modality the format does not know, an input
                size that is not a multiple of the patch size, or weights whose
                encoder is not this task's.
        """
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

        Raises:
            FloatingPointError: if the loss is NaN or infinite; the message names the
                step and the tasks whose loss is not finite.
        """
        self._check_input(batch)
        output: MPMAEOutput = self(batch)
        self._check_finite(output)
        batch_size = len(output.mask)
        self._log_step('train', output, batch_size)
        self._add_to_epoch_loss('train', output, batch_size)
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
            self._add_to_epoch_loss('val', output, len(output.mask))
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

    def on_train_epoch_end(self) -> None:
        """Record the mean training loss of the epoch."""
        self._record_epoch_loss('train')

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
        """Restore the losses and first figure rows of the run being resumed.

        Args:
            checkpoint: the checkpoint being loaded.
        """
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
        """AdamW with per-step linear warm-up and cosine decay.

        Returns:
            The optimizer and the per-step learning-rate schedule.

        Raises:
            ValueError: if the learning rate cannot be derived (no datamodule batch
                size and no *lr*) or the Trainer has no epoch limit.
        """
        hparams = self.hparams
        lr = hparams['lr'] or self._scaled_lr()
        groups = param_groups_weight_decay(self, hparams['weight_decay'])
        optimizer = AdamW(groups, lr=lr, betas=tuple(hparams['betas']))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(
                'MPMAETask needs trainer.max_epochs to place its warm-up and cosine '
                'schedule'
            )
        warmup = round(hparams['warmup_epochs'] * total / epochs)
        schedule = LambdaLR(
            optimizer, warmup_cosine(warmup, total, hparams['min_lr'] / lr)
        )
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': schedule, 'interval': 'step'},
        }

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

    def _check_finite(self, output: MPMAEOutput) -> None:
        if bool(torch.isfinite(output.loss)):
            return
        bad = [name for name, loss in output.task_losses.items() if not loss.isfinite()]
        raise FloatingPointError(
            f'MP-MAE loss is {output.loss.item()} at step {self.global_step}; '
            f'tasks with a non-finite loss: {bad or "none (the aggregation)"}'
        )

    def _log_step(self, stage: str, output: MPMAEOutput, batch_size: int) -> None:
        self.log(f'{stage}_loss', output.loss, batch_size=batch_size, prog_bar=True)
        for name, loss in output.task_losses.items():
            self.log(f'{stage}_loss_{name}', loss, batch_size=batch_size)
        for name, fraction in output.valid_fractions.items():
            self.log(f'{stage}_valid_{name}', fraction, batch_size=batch_size)

    def _add_to_epoch_loss(
        self, stage: str, output: MPMAEOutput, batch_size: int
    ) -> None:
        """Add a batch to the epoch's sums of the total and of each task's loss.

        A task counts only in batches where it had targets (else its loss is 0).
        """
        losses = torch.stack([output.loss, *output.task_losses.values()]).detach()
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
    collapses to a constant.
    """
    features = output.features.detach().permute(0, 2, 3, 1).flatten(0, 2)
    visible = (~output.mask).flatten()
    rows = F.normalize(features[visible].float(), dim=1)
    if len(rows) < 2:
        return torch.zeros((), device=features.device)
    return rows.std(dim=0).mean()
