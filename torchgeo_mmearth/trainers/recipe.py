"""MMEarth's fine-tuning recipe, mixed into TorchGeo's classification and segmentation."""

from typing import Any

from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn

from ..losses import smoothed_loss
from .optim import configure_optimizers

__all__ = ['FineTuningRecipe']


class FineTuningRecipe:
    """The loss and optimiser of MMEarth's fine-tuning, for TorchGeo's tasks.

    Mixed in before a TorchGeo task whose hyperparameters include
    ``label_smoothing`` and the knobs of
    :func:`~torchgeo_mmearth.trainers.optim.configure_optimizers`.
    """

    hparams: Any
    criterion: nn.Module

    def configure_losses(self) -> None:
        """Initialize the loss criterion, label-smoothed in training."""
        super().configure_losses()  # type: ignore[misc]
        self.criterion = smoothed_loss(
            self.criterion, self.hparams['loss'], self.hparams['label_smoothing']
        )

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Initialize the optimizer and learning rate scheduler.

        Returns:
            TorchGeo's (AdamW, ReduceLROnPlateau) with the default knobs, else
            MMEarth's recipe (:func:`~torchgeo_mmearth.trainers.optim.configure_optimizers`).
        """
        return configure_optimizers(
            self,  # type: ignore[arg-type]
            super().configure_optimizers,  # type: ignore[misc]
        )
