"""TorchGeo's semantic segmentation with MMEarth's UNet and fine-tuning protocol."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import JaccardIndex
from torchvision.models._api import WeightsEnum

from .._compat import SemanticSegmentationTask, task_arguments
from ..models import MMEARTH_CONVNEXTV2_SIZES, MMEarthUNet, weights_state_dict
from ..models.smp_encoder import mmearth_encoders
from .optim import add_param_group
from .recipe import FineTuningRecipe

__all__ = ['MMEarthSemanticSegmentationTask', 'UnfreezeBackbone']


def _encoder(module: LightningModule) -> nn.Module:
    encoder = getattr(getattr(module, 'model', None), 'encoder', None)
    if encoder is None:
        raise ValueError(
            f'{type(module).__name__} has no model.encoder to freeze and unfreeze'
        )
    return cast(nn.Module, encoder)


class UnfreezeBackbone(BaseFinetuning):
    """Train a segmentation model's encoder from a given epoch on.

    MMEarth's UNet protocol ("unet-lp&ft", Nedungadi et al., ECCV 2024,
    https://arxiv.org/abs/2405.02771): the encoder (``model.encoder``) is frozen
    for the first *epoch* epochs, which train the decoder and head; at the start
    of epoch *epoch* it is unfrozen and added to the optimiser as one new
    parameter group at the full learning rate (no layer decay) with weight decay
    *weight_decay* (0, the reference's optimiser default) by
    :func:`~torchgeo_mmearth.trainers.optim.add_param_group`, so that the
    learning-rate schedule carries on over it. Lightning's
    :class:`~lightning.pytorch.callbacks.BaseFinetuning` restores the added group
    when training resumes from a checkpoint.
    """

    def __init__(self, epoch: int, weight_decay: float = 0.0) -> None:
        """Initialize a new UnfreezeBackbone instance.

        Args:
            epoch: first epoch (counted from 0) that trains the encoder.
            weight_decay: weight decay of the encoder's parameter group.

        Raises:
            ValueError: if *epoch* is negative.
        """
        if epoch < 0:
            raise ValueError(f'the unfreezing epoch must be >= 0, got {epoch}')
        super().__init__()
        self.epoch = epoch
        self.weight_decay = weight_decay

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        """Freeze the encoder (as TorchGeo's ``freeze_backbone`` does).

        Args:
            pl_module: the task.
        """
        for param in _encoder(pl_module).parameters():
            param.requires_grad = False

    def finetune_function(
        self, pl_module: LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """Unfreeze the encoder from the unfreezing epoch on.

        Args:
            pl_module: the task.
            epoch: the epoch that starts.
            optimizer: the task's optimiser.
        """
        if epoch < self.epoch:
            return
        encoder = _encoder(pl_module)
        self.make_trainable(encoder)
        added = add_param_group(optimizer, encoder.parameters(), self.weight_decay)
        if added:
            rank_zero_info(
                f'Epoch {epoch}: encoder unfrozen, {len(added)} parameter tensors '
                f'added to the optimiser (lr {optimizer.param_groups[-1]["lr"]:.3g}, '
                f'weight decay {self.weight_decay})'
            )


class MMEarthSemanticSegmentationTask(FineTuningRecipe, SemanticSegmentationTask):
    """TorchGeo's semantic segmentation with MMEarth's UNet and protocol.

    TorchGeo's ``SemanticSegmentation`` (``torchgeo.trainers.SemanticSegmentationTask``
    on TorchGeo 0.8) plus what MMEarth's
    GEO-Bench segmentation (m-cashew-plantation, m-SA-crop-type; Nedungadi et al.,
    ECCV 2024, https://arxiv.org/abs/2405.02771, on GEO-Bench,
    https://arxiv.org/abs/2306.03831) needs:

    * ``model='mmearth_unet'``: MMEarth's ConvNeXt V2 UNet
      (:class:`~torchgeo_mmearth.models.MMEarthUNet`) on the encoder named by
      ``backbone`` (``mmearth_convnextv2_atto``, ``..._p16``, ...), taking
      ``weights`` into its encoder as TorchGeo's smp models do, next to smp's
      models (where ``backbone='mmearth_convnextv2_atto'`` gives smp's UNet on
      the same encoder);
    * ``unfreeze_backbone_at_epoch``: MMEarth's "unet-lp&ft" protocol, with
      ``freeze_backbone=True``: the encoder is frozen until that epoch, then
      trained as one new parameter group at the full learning rate and weight
      decay 0 (:class:`UnfreezeBackbone`);
    * the optimiser knobs of :class:`~torchgeo_mmearth.trainers.MMEarthClassificationTask`
      (``weight_decay``, ``layer_decay``, ``lr_schedule``,
      ``min_lr``, ``warmup_epochs``), ``label_smoothing`` and ``model_kwargs``
      (arguments of ``MMEarthUNet``, e.g. ``{'drop_path_rate': 0.1}``);
    * the mean intersection over union over classes, MMEarth's metric
      (``MeanIoU``: torchmetrics' macro ``JaccardIndex``, logged as
      ``val_MeanIoU`` and ``test_MeanIoU``) besides TorchGeo's micro-averaged
      metrics, all computed over the whole split.

    The defaults are TorchGeo's behaviour. Everything else (smp models,
    ``weights``, ``freeze_backbone``, logging, the ``torchgeo`` command line) is
    TorchGeo's.

    If you use this trainer in your research, please cite the following papers:

    * https://arxiv.org/abs/2405.02771
    * https://arxiv.org/abs/2306.03831
    """

    def __init__(
        self,
        model: Literal[
            'unet', 'deeplabv3+', 'fcn', 'upernet', 'segformer', 'dpt', 'mmearth_unet'
        ] = 'unet',
        backbone: str = 'resnet50',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        task: Literal['binary', 'multiclass', 'multilabel'] = 'multiclass',
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        num_filters: int = 3,
        pos_weight: Tensor | None = None,
        loss: Literal['ce', 'bce', 'jaccard', 'focal'] = 'ce',
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        unfreeze_backbone_at_epoch: int | None = None,
        label_smoothing: float = 0.0,
        weight_decay: float | None = None,
        layer_decay: float | None = None,
        lr_schedule: Literal['plateau', 'cosine'] = 'plateau',
        min_lr: float = 1e-6,
        warmup_epochs: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Initialize a new MMEarthSemanticSegmentationTask instance.

        Args:
            model: Name of the smp model to use, or ``'mmearth_unet'``.
            backbone: Name of the encoder: an MMEarth ConvNeXt V2
                (``mmearth_convnextv2_atto``, ...) for ``'mmearth_unet'``, else a
                timm or smp encoder as for TorchGeo.
            weights: Initial encoder weights: a weights enum member, its name
                (``'MMEarthWeights.S2_MP_MAE'``), True for smp's ImageNet weights
                (not for ``'mmearth_unet'``), False or None for random weights,
                or the path to a Lightning checkpoint.
            in_channels: Number of input channels to model.
            task: One of 'binary', 'multiclass', or 'multilabel'.
            num_classes: Number of prediction classes (only for ``task='multiclass'``).
            num_labels: Number of prediction labels (only for ``task='multilabel'``).
            labels: List of class names (TorchGeo 0.9+).
            num_filters: Number of filters. Only applicable when model='fcn'.
            pos_weight: A weight of positive examples, used with 'bce' loss
                (TorchGeo 0.9+).
            loss: One of 'ce', 'bce', 'jaccard', or 'focal'.
            class_weights: Optional rescaling weight given to each class and used
                with 'ce' loss.
            ignore_index: Optional integer class index to ignore in the loss and
                metrics.
            lr: Learning rate (of the groups without layer decay).
            patience: Patience of the 'plateau' learning rate schedule.
            freeze_backbone: Freeze the encoder.
            freeze_decoder: Freeze the decoder (all but the segmentation head).
            unfreeze_backbone_at_epoch: With *freeze_backbone*, the epoch (from 0)
                at which the encoder is unfrozen and joins the optimiser; None
                keeps it frozen. MMEarth: 50 of 200 epochs.
            label_smoothing: Label smoothing of the training loss ('ce' or 'bce').
            weight_decay: AdamW weight decay of the parameters with 2 or more
                dimensions (none on biases and 1-D parameters), or None for
                TorchGeo's AdamW (decay 0.01 on every parameter). MMEarth: 0.3.
            layer_decay: Layer-wise learning-rate decay factor of the encoder, or
                None for none; needs an MMEarth ConvNeXt V2 encoder.
            lr_schedule: 'plateau' (TorchGeo's ReduceLROnPlateau on the
                validation loss) or 'cosine' (MMEarth's per-step cosine).
            min_lr: Final learning rate of the cosine. MMEarth: 1e-6.
            warmup_epochs: Epochs of linear warm-up of the cosine. MMEarth: 0.
            model_kwargs: Further arguments of ``MMEarthUNet`` (only for
                ``'mmearth_unet'``).

        Raises:
            ValueError: If *unfreeze_backbone_at_epoch* is given without
                *freeze_backbone* or for 'fcn', *model_kwargs* are given for an
                smp model, an argument is out of range, or an argument of
                TorchGeo 0.9+ is set with TorchGeo 0.8.
        """
        if unfreeze_backbone_at_epoch is not None:
            if not freeze_backbone or model == 'fcn':
                raise ValueError(
                    'unfreeze_backbone_at_epoch needs freeze_backbone=True and a '
                    f'model with an encoder, got freeze_backbone={freeze_backbone}, '
                    f'model={model!r}'
                )
            if unfreeze_backbone_at_epoch < 0:
                raise ValueError(
                    'unfreeze_backbone_at_epoch must be >= 0, got '
                    f'{unfreeze_backbone_at_epoch}'
                )
        if model_kwargs and model != 'mmearth_unet':
            raise ValueError(
                "model_kwargs are arguments of MMEarthUNet (model='mmearth_unet'); "
                f'got {dict(model_kwargs)} for model={model!r}'
            )
        super().__init__(
            **task_arguments(
                SemanticSegmentationTask,
                model=model,
                backbone=backbone,
                weights=weights,
                in_channels=in_channels,
                task=task,
                num_classes=num_classes,
                num_labels=num_labels,
                labels=labels,
                num_filters=num_filters,
                pos_weight=pos_weight,
                loss=loss,
                class_weights=class_weights,
                ignore_index=ignore_index,
                lr=lr,
                patience=patience,
                freeze_backbone=freeze_backbone,
                freeze_decoder=freeze_decoder,
            )
        )

    def configure_models(self) -> None:
        """Initialize the model: MMEarth's UNet, or TorchGeo's models.

        Raises:
            ValueError: If ``'mmearth_unet'`` is asked for with a backbone that is
                not an MMEarth ConvNeXt V2, or with ``weights=True``.
        """
        if self.hparams['model'] != 'mmearth_unet':
            super().configure_models()
            return
        backbone: str = self.hparams['backbone']
        if backbone not in mmearth_encoders:
            raise ValueError(
                "model='mmearth_unet' needs an MMEarth ConvNeXt V2 backbone, one of "
                f'{sorted(mmearth_encoders)}; got {backbone!r}'
            )
        params = mmearth_encoders[backbone]['params']
        size = next(
            name
            for name, (depths, dims) in MMEARTH_CONVNEXTV2_SIZES.items()
            if (depths, dims) == (params['depths'], params['dims'])
        )
        weights = self.weights
        if weights is True:
            raise ValueError(
                "model='mmearth_unet' has no ImageNet weights; pass an "
                'MMEarthWeights member, its name or a checkpoint path'
            )
        self.model = MMEarthUNet(
            num_classes=self.hparams['num_classes'] or self.hparams['num_labels'] or 1,
            size=size,
            in_chans=self.hparams['in_channels'],
            patch_size=params['patch_size'],
            **dict(self.hparams['model_kwargs'] or {}),
        )
        if weights:
            self.model.encoder.load_state_dict(weights_state_dict(weights))
        if self.hparams['freeze_backbone']:
            for param in self.model.encoder.parameters():
                param.requires_grad = False
        if self.hparams['freeze_decoder']:
            for part in (self.model.upsample_layers, self.model.initial_conv_upsample):
                for param in part.parameters():
                    param.requires_grad = False

    def configure_metrics(self) -> None:
        """Initialize TorchGeo's metrics and MMEarth's mean IoU (``MeanIoU``).

        ``MeanIoU`` is torchmetrics' ``JaccardIndex`` averaged over classes
        ('macro'), as MMEarth reports for GEO-Bench segmentation; TorchGeo's
        ``JaccardIndex`` is micro-averaged over pixels.
        """
        super().configure_metrics()
        for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
            metrics.add_metrics(
                {
                    'MeanIoU': JaccardIndex(
                        task=self.hparams['task'],
                        num_classes=self.hparams['num_classes'],
                        num_labels=self.hparams['num_labels'],
                        ignore_index=self.hparams['ignore_index'],
                        average='macro',
                    )
                }
            )

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """The unfreezing callback of the UNet protocol, if asked for.

        Returns:
            :class:`UnfreezeBackbone` at ``unfreeze_backbone_at_epoch``, or none.
        """
        epoch = self.hparams['unfreeze_backbone_at_epoch']
        return [] if epoch is None else [UnfreezeBackbone(epoch)]
