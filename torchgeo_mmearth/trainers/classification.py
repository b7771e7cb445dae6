"""TorchGeo's image classification with MMEarth's fine-tuning recipe."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import timm
from torch import Tensor
from torchvision.models._api import WeightsEnum

from .._compat import ClassificationTask, load_state_dict, task_arguments
from ..models import weights_state_dict
from .recipe import FineTuningRecipe

__all__ = ['MMEarthClassificationTask']


class MMEarthClassificationTask(FineTuningRecipe, ClassificationTask):
    """TorchGeo's image classification with MMEarth's fine-tuning recipe.

    TorchGeo's ``Classification`` (``torchgeo.trainers.ClassificationTask`` on
    TorchGeo 0.8) plus the knobs of MMEarth's
    GEO-Bench linear probing and fine-tuning (Nedungadi et al., ECCV 2024,
    https://arxiv.org/abs/2405.02771, on GEO-Bench, https://arxiv.org/abs/2306.03831):

    * label smoothing in training only (``label_smoothing``): timm's
      ``LabelSmoothingCrossEntropy`` for ``loss='ce'``, targets
      ``t (1 - e) + (1 - t) e`` for ``loss='bce'`` (multi-label); validation and
      test losses are unsmoothed;
    * AdamW without weight decay on 1-D parameters and biases
      (``weight_decay``), layer-wise learning-rate decay (``layer_decay``,
      ConvNeXt V2's layers) and a per-step cosine with warm-up (``lr_schedule='cosine'``,
      ``min_lr``, ``warmup_epochs``), see :mod:`torchgeo_mmearth.trainers.optim`;
    * arguments for the timm model (``model_kwargs``), e.g. MMEarth's stochastic
      depth 0.1 and head initialisation (``{'drop_path_rate': 0.1,
      'head_init_scale': 0.001}``).

    Their defaults are TorchGeo's behaviour. Everything else (model, ``weights``,
    ``freeze_backbone`` for linear probing, metrics computed over the whole split,
    logging, the ``torchgeo`` command line) is TorchGeo's.

    If you use this trainer in your research, please cite the following papers:

    * https://arxiv.org/abs/2405.02771
    * https://arxiv.org/abs/2306.03831
    """

    def __init__(
        self,
        model: str = 'resnet50',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        task: Literal['binary', 'multiclass', 'multilabel'] = 'multiclass',
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        pos_weight: Tensor | None = None,
        loss: Literal['ce', 'bce', 'jaccard', 'focal'] = 'ce',
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
        freeze_backbone: bool = False,
        label_smoothing: float = 0.0,
        weight_decay: float | None = None,
        layer_decay: float | None = None,
        lr_schedule: Literal['plateau', 'cosine'] = 'plateau',
        min_lr: float = 1e-6,
        warmup_epochs: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Initialize a new MMEarthClassificationTask instance.

        Args:
            model: Name of the timm model to use, e.g.
                ``'mmearth_convnextv2_atto'``.
            weights: Initial model weights: a weights enum member, its name
                (``'MMEarthWeights.S2_MP_MAE'``), True for timm's pretrained
                weights, False or None for random weights, or the path to a
                Lightning checkpoint.
            in_channels: Number of input channels to model.
            task: One of 'binary', 'multiclass', or 'multilabel'.
            num_classes: Number of prediction classes (only for ``task='multiclass'``).
            num_labels: Number of prediction labels (only for ``task='multilabel'``).
            labels: List of class names (TorchGeo 0.9+).
            pos_weight: A weight of positive examples, used with 'bce' loss
                (TorchGeo 0.9+).
            loss: One of 'ce', 'bce', 'jaccard', or 'focal'.
            class_weights: Optional rescaling weight given to each class and used
                with 'ce' loss.
            ignore_index: Optional integer class index to ignore in the loss and
                metrics (TorchGeo 0.9+).
            lr: Learning rate (of the groups without layer decay).
            patience: Patience of the 'plateau' learning rate schedule.
            freeze_backbone: Freeze everything but the classifier (linear probing).
            label_smoothing: Label smoothing of the training loss, in [0, 1);
                needs loss 'ce' or 'bce'. MMEarth: 0.2.
            weight_decay: AdamW weight decay of the parameters with 2 or more
                dimensions (none on biases and 1-D parameters), or None for
                TorchGeo's AdamW (decay 0.01 on every parameter). MMEarth: 0.3.
            layer_decay: Layer-wise learning-rate decay factor (MMEarth: 0.9), or
                None for none; needs an MMEarth ConvNeXt V2 model.
            lr_schedule: 'plateau' (TorchGeo's ReduceLROnPlateau on the
                validation loss) or 'cosine' (MMEarth's per-step cosine).
            min_lr: Final learning rate of the cosine. MMEarth: 1e-6.
            warmup_epochs: Epochs of linear warm-up of the cosine. MMEarth: 0.
            model_kwargs: Further arguments of ``timm.create_model``.

        Raises:
            ValueError: If *label_smoothing* is out of range or used with a loss
                other than 'ce' and 'bce', or an argument of TorchGeo 0.9+ is set
                with TorchGeo 0.8.
        """
        super().__init__(
            **task_arguments(
                ClassificationTask,
                model=model,
                weights=weights,
                in_channels=in_channels,
                task=task,
                num_classes=num_classes,
                num_labels=num_labels,
                labels=labels,
                pos_weight=pos_weight,
                loss=loss,
                class_weights=class_weights,
                ignore_index=ignore_index,
                lr=lr,
                patience=patience,
                freeze_backbone=freeze_backbone,
            )
        )

    def configure_models(self) -> None:
        """Initialize the model, with ``model_kwargs`` for timm."""
        model_kwargs = dict(self.hparams['model_kwargs'] or {})
        if not model_kwargs:
            super().configure_models()
            return
        # TorchGeo's ClassificationTask.configure_models, with model_kwargs.
        weights = self.weights
        self.model = timm.create_model(
            self.hparams['model'],
            num_classes=self.hparams['num_classes'] or self.hparams['num_labels'] or 1,
            in_chans=self.hparams['in_channels'],
            pretrained=weights is True,
            **model_kwargs,
        )
        if weights and weights is not True:
            load_state_dict(self.model, weights_state_dict(weights))
        if self.hparams['freeze_backbone']:
            for param in self.model.parameters():
                param.requires_grad = False
            for param in self.model.get_classifier().parameters():
                param.requires_grad = True
