"""MMEarth's optimisers: pretraining weight decay, fine-tuning layer decay and cosine.

MMEarth (Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For
Geospatial Representation Learning", ECCV 2024, https://arxiv.org/abs/2405.02771)
fine-tunes and linearly probes its ConvNeXt V2 encoders on GEO-Bench
(https://arxiv.org/abs/2306.03831) with ConvNeXt V2's recipe:

* AdamW, no weight decay on 1-D parameters, biases and ``gamma``/``beta``, and
  frozen parameters left out (:func:`param_groups_layer_decay`);
* layer-wise learning-rate decay, ConvNeXt V2's "single" assignment (the
  encoder's ``group_matcher``, through timm's ``param_groups_layer_decay``): each
  block is a layer, each group's learning rate is scaled by ``layer_decay **
  (num_layers + 1 - layer)``;
* a learning rate set before every optimiser step: linear warm-up, then a
  half-cycle cosine to ``min_lr`` (:class:`WarmupCosineLR`).

:func:`configure_optimizers` assembles them for the TorchGeo tasks of this
package; :func:`add_param_group` adds parameters that are unfrozen during
training (the UNet protocol) so that the schedule drives them as well.

MP-MAE pretraining decays the GRN parameters, as MMEarth-train's pretraining does
(:func:`pretraining_param_groups`).
"""

import fnmatch
import math
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any, Literal, cast

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm import optim as timm_optim
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ..models.mmearth_convnextv2 import MMEarthConvNeXtV2

__all__ = [
    'GRN_PARAMETERS',
    'WarmupCosineLR',
    'add_param_group',
    'configure_optimizers',
    'param_groups_layer_decay',
    'pretraining_param_groups',
    'warmup_cosine',
]

#: Parameter names never decayed by MMEarth's optimiser factory, besides 1-D
#: parameters and biases (``fnmatch`` patterns, as timm's ``no_weight_decay_list``).
NO_WEIGHT_DECAY = ('*.gamma', '*.beta')

#: The GRN parameters of the MMEarth ConvNeXt V2 blocks, timm's ``grn.weight`` and
#: ``grn.bias`` (``fnmatch`` patterns). They are 1-D here; MMEarth-train's are
#: ``gamma`` and ``beta`` of shape (1, 1, 1, C) (dense blocks) or (1, C) (sparse
#: ones), so its pretraining decays them: timm's rule exempts only 1-D parameters and
#: names ending in ``.bias``.
GRN_PARAMETERS = ('*.grn.weight', '*.grn.bias')


def pretraining_param_groups(
    module: nn.Module, weight_decay: float, decay_grn: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups of MMEarth-train's pretraining (``main_pretrain.py``).

    timm's ``param_groups_weight_decay``: no weight decay on 1-D parameters and
    biases, *weight_decay* on the others, frozen parameters left out. With
    *decay_grn*, the GRN parameters (:data:`GRN_PARAMETERS`) are decayed too, as
    MMEarth-train's pretraining decays its GRN ``gamma`` and ``beta``, which have
    more dimensions than ours.

    Args:
        module: the model, or a LightningModule holding it.
        weight_decay: decay of the decayed group.
        decay_grn: decay the GRN parameters (True, as MMEarth-train) or not.

    Returns:
        Two groups with ``params`` and ``weight_decay``: not decayed, decayed.
    """
    patterns = GRN_PARAMETERS if decay_grn else ()
    forced = {
        id(param)
        for name, param in module.named_parameters()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    }
    exempt: list[nn.Parameter] = []
    decayed: list[nn.Parameter] = []
    groups = timm_optim.param_groups_weight_decay(  # type: ignore[attr-defined]
        module, weight_decay
    )
    for group in groups:
        for param in group['params']:
            if group['weight_decay'] == 0 and id(param) not in forced:
                exempt.append(param)
            else:
                decayed.append(param)
    return [
        {'params': exempt, 'weight_decay': 0.0},
        {'params': decayed, 'weight_decay': weight_decay},
    ]


def warmup_cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then a cosine to *floor*.

    Args:
        warmup: warm-up steps (the factor rises linearly from 0 to 1).
        total: total steps; the cosine reaches *floor* at the last one.
        floor: the final factor (``min_lr / lr``).

    Returns:
        ``factor(step)``, for ``torch.optim.lr_scheduler.LambdaLR`` or a manual
        schedule.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _find_encoder(module: nn.Module) -> tuple[str, MMEarthConvNeXtV2]:
    """The only MMEarth ConvNeXt V2 in *module*, with its name prefix."""
    found = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, MMEarthConvNeXtV2)
    ]
    if len(found) != 1:
        raise ValueError(
            'layer_decay groups the layers with the group_matcher of an MMEarth '
            'ConvNeXt V2 and needs exactly one such encoder (the '
            f'mmearth_convnextv2_* models, MMEarthUNet), found {len(found)} in '
            f'{type(module).__name__}'
        )
    name, encoder = found[0]
    return f'{name}.' if name else '', encoder


class _EncoderLayers:
    """*module* as timm's layer-decay helper sees it: layers from its encoder.

    timm's ``param_groups_layer_decay`` asks the model it is given for its
    ``group_matcher``; a task or a UNet holds the encoder under a prefix, so its
    patterns are anchored there. Parameters no pattern matches (the encoder's
    ``norm`` and ``head``, a decoder) share the last layer.
    """

    def __init__(self, module: nn.Module) -> None:
        prefix, encoder = _find_encoder(module)
        anchor = '^' + re.escape(prefix)
        self._matcher: dict[str, Any] = {}
        for group, spec in encoder.group_matcher(coarse=False).items():
            if isinstance(spec, str):
                self._matcher[group] = anchor + spec.removeprefix('^')
            else:
                self._matcher[group] = [
                    (anchor + pattern.removeprefix('^'), ordinal)
                    for pattern, ordinal in spec
                ]
        self.named_parameters = module.named_parameters

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The encoder's fine-grained parameter groups, anchored at its prefix.

        Args:
            coarse: unused; timm's layer decay asks for the fine groups.

        Returns:
            timm's parameter-group regular expressions.
        """
        return self._matcher


def param_groups_layer_decay(
    module: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    no_weight_decay: Collection[str] = NO_WEIGHT_DECAY,
) -> list[dict[str, Any]]:
    """Parameter groups of the fine-tuning recipe, by timm's helpers.

    Weight decay as timm's ``param_groups_weight_decay`` (none on 1-D parameters,
    biases and the names matching *no_weight_decay*) and frozen parameters left
    out. With *layer_decay*, timm's ``param_groups_layer_decay`` with the layers
    of the encoder's own
    :meth:`~torchgeo_mmearth.models.MMEarthConvNeXtV2.group_matcher`, ConvNeXt
    V2's assignment: the stem is layer 0, block ``b`` of stage ``s`` is layer
    ``sum(depths[:s]) + b + 1`` with the downsampling before it as the stage's
    first block, and everything else (the final norm, the head, a decoder) is the
    last layer, ``sum(depths) + 1``; a group's ``lr_scale`` is ``layer_decay **
    (sum(depths) + 1 - layer)``. MMEarth's fine-tuning meant this assignment but
    left its custom stem and shifted its downsampling layers (see
    :doc:`/fixes`). Without *layer_decay* every ``lr_scale`` is 1.

    Args:
        module: the model, or a LightningModule holding it; with *layer_decay*
            it must hold exactly one
            :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2` (or its smp
            encoder), whose ``group_matcher`` gives the layers.
        weight_decay: decay of the other parameters.
        layer_decay: factor per layer, e.g. 0.9; None for no layer decay.
        no_weight_decay: ``fnmatch`` patterns of further names not to decay.

    Returns:
        Groups with ``params``, ``weight_decay`` and ``lr_scale``.

    Raises:
        ValueError: if *layer_decay* is given and *module* has no, or several,
            MMEarth ConvNeXt V2 encoders, or is not positive.
    """
    # Exact names: older timm compares names, newer timm fnmatches them.
    excluded = [
        name
        for name, _ in module.named_parameters()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in no_weight_decay)
    ]
    if layer_decay is None:
        groups = timm_optim.param_groups_weight_decay(  # type: ignore[attr-defined]
            module, weight_decay, no_weight_decay_list=excluded
        )
        return [{**group, 'lr_scale': 1.0} for group in groups]
    if layer_decay <= 0:
        raise ValueError(f'layer_decay must be > 0, got {layer_decay}')
    # timm reads only named_parameters() and group_matcher() of the model.
    groups = timm_optim.param_groups_layer_decay(  # type: ignore[attr-defined]
        cast(nn.Module, _EncoderLayers(module)),
        weight_decay,
        no_weight_decay_list=excluded,
        layer_decay=layer_decay,
    )
    return cast(list[dict[str, Any]], groups)


class WarmupCosineLR(LRScheduler):
    """MMEarth's learning rate per optimiser step: linear warm-up, then cosine.

    Step ``t`` of ``total_steps`` (``warmup_steps`` of them warm-up) trains with

    * ``initial_lr * t / warmup_steps`` during the warm-up,
    * ``floor + (initial_lr - floor) * (1 + cos(pi * (t - warmup_steps) /
      (total_steps - warmup_steps))) / 2`` after it, and ``floor`` from
      ``total_steps`` on, with ``floor = min_lr * lr_scale``,

    per parameter group, where ``initial_lr`` is the group's learning rate when
    the scheduler was created (``lr * lr_scale`` for the groups of
    :func:`param_groups_layer_decay`). That is ``lr_scale`` times MMEarth's
    ``adjust_learning_rate`` at the fractional epoch ``t / steps per epoch``.
    Unlike torch's and timm's schedulers, which keep one value per group from
    their creation on, every step reads the groups anew, so a group added later
    (:func:`add_param_group`, with its own ``initial_lr``) follows the schedule
    too, also after resuming from a checkpoint. Step it after every optimiser
    step (Lightning: ``'interval': 'step'``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        """Initialize a new WarmupCosineLR instance.

        Args:
            optimizer: the optimiser.
            total_steps: optimiser steps of the whole training.
            warmup_steps: steps of linear warm-up from 0, within *total_steps*.
            min_lr: learning rate at the end, for a group with ``lr_scale`` 1.
            last_epoch: index of the last step taken, -1 to start.

        Raises:
            ValueError: if the steps or *min_lr* are out of range.
        """
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                'WarmupCosineLR needs total_steps >= 1 and 0 <= warmup_steps <= '
                f'total_steps, got total_steps={total_steps}, '
                f'warmup_steps={warmup_steps}'
            )
        if min_lr < 0:
            raise ValueError(f'min_lr must be >= 0, got {min_lr}')
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, group: dict[str, Any]) -> float:
        """Learning rate of a parameter group at an optimiser step.

        Args:
            step: the step, from 0.
            group: the parameter group (its ``initial_lr``, else ``lr``, and
                ``lr_scale``).

        Returns:
            The learning rate.
        """
        if 'initial_lr' not in group:  # added without one: its lr is its base
            group['initial_lr'] = group['lr']
        initial = float(group['initial_lr'])
        if initial == 0:
            return 0.0
        floor = self.min_lr * float(group.get('lr_scale', 1.0))
        factor = warmup_cosine(self.warmup_steps, self.total_steps, floor / initial)
        return initial * float(factor(step))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Learning rates of all parameter groups at the current step.

        Returns:
            One learning rate per group, in order.
        """
        return [
            self.lr_at(self.last_epoch, group) for group in self.optimizer.param_groups
        ]


def add_param_group(
    optimizer: Optimizer, params: Iterable[nn.Parameter], weight_decay: float = 0.0
) -> list[nn.Parameter]:
    """Add parameters to a running optimiser at the full, current learning rate.

    MMEarth's UNet protocol adds the encoder, when it unfreezes it, as one group
    with the optimiser's defaults: no ``lr_scale`` (so no layer decay) and weight
    decay 0. The group's ``lr`` is the current learning rate of a group of scale 1
    (that of the first group divided by its ``lr_scale``) and its ``initial_lr``
    the initial one, so :class:`WarmupCosineLR` and ``ReduceLROnPlateau`` carry it
    on with the others. Parameters already in the optimiser are skipped.

    Args:
        optimizer: the optimiser.
        params: the parameters to add.
        weight_decay: their weight decay.

    Returns:
        The parameters added (none if all were in the optimiser already).
    """
    present = {id(p) for group in optimizer.param_groups for p in group['params']}
    new = [p for p in params if id(p) not in present]
    if not new:
        return []
    first = optimizer.param_groups[0]
    scale = float(first.get('lr_scale', 1.0))
    group = {
        'params': new,
        'lr': float(first['lr']) / scale,
        'weight_decay': weight_decay,
        'lr_scale': 1.0,
    }
    if 'initial_lr' in first:
        group['initial_lr'] = float(first['initial_lr']) / scale
    optimizer.add_param_group(group)
    return new


def configure_optimizers(
    module: LightningModule, default: Callable[[], OptimizerLRScheduler]
) -> OptimizerLRScheduler:
    """AdamW and a schedule from a task's hyperparameters: MMEarth's or TorchGeo's.

    The hyperparameters read are those of the tasks of this package:

    * ``lr``: learning rate (of the groups of scale 1);
    * ``patience``: epochs without improvement of ``module.monitor`` before
      ``ReduceLROnPlateau`` divides the learning rate by 10;
    * ``weight_decay``: None for TorchGeo's AdamW (its default decay 0.01 on
      every parameter), else that decay with MMEarth's exclusions
      (:func:`param_groups_layer_decay`);
    * ``layer_decay``: layer-wise learning-rate decay;
    * ``lr_schedule``: ``'plateau'`` (TorchGeo's ``ReduceLROnPlateau``) or
      ``'cosine'`` (:class:`WarmupCosineLR`, stepped after every optimiser step,
      over ``trainer.estimated_stepping_batches`` steps);
    * ``min_lr``, ``warmup_epochs``: end and warm-up of the cosine.

    Args:
        module: the task; its trainer sets the number of steps of a cosine.
        default: TorchGeo's ``configure_optimizers`` of the task, used when
            ``weight_decay`` and ``layer_decay`` are None and ``lr_schedule`` is
            ``'plateau'``, so that the defaults are TorchGeo's behaviour.

    Returns:
        Lightning's optimiser configuration.

    Raises:
        ValueError: if a cosine is asked for without an epoch or step limit on
            the Trainer, or the warm-up is longer than the training.
    """
    hparams = module.hparams
    weight_decay: float | None = hparams['weight_decay']
    layer_decay: float | None = hparams['layer_decay']
    lr_schedule: Literal['plateau', 'cosine'] = hparams['lr_schedule']
    if weight_decay is None and layer_decay is None and lr_schedule == 'plateau':
        return default()
    lr: float = hparams['lr']
    if weight_decay is None:
        groups = param_groups_layer_decay(module, 0.01, layer_decay, ())
        # TorchGeo's AdamW decays every parameter.
        for group in groups:
            group['weight_decay'] = 0.01
    else:
        groups = param_groups_layer_decay(module, weight_decay, layer_decay)
    for group in groups:
        group['lr'] = lr * group['lr_scale']
    optimizer = AdamW(groups, lr=lr, weight_decay=0.0)
    if lr_schedule == 'plateau':
        return {
            'optimizer': optimizer,
            'lr_scheduler': {
                'scheduler': ReduceLROnPlateau(optimizer, patience=hparams['patience']),
                'monitor': getattr(module, 'monitor', 'val_loss'),
            },
        }
    trainer = module.trainer
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(
            "lr_schedule='cosine' needs trainer.max_epochs or trainer.max_steps to "
            'place the cosine'
        )
    warmup_epochs: float = hparams['warmup_epochs']
    epochs = trainer.max_epochs
    warmup = 0
    if warmup_epochs:
        if epochs is None or epochs < 1:
            raise ValueError('warmup_epochs needs trainer.max_epochs')
        warmup = round(warmup_epochs * total / epochs)
        if warmup > total:
            raise ValueError(
                f'warmup_epochs={warmup_epochs} is longer than the training '
                f'({epochs} epochs)'
            )
    scheduler = WarmupCosineLR(optimizer, int(total), warmup, hparams['min_lr'])
    return {
        'optimizer': optimizer,
        'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
    }
