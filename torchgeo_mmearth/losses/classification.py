"""Label-smoothed classification losses of MMEarth's fine-tuning recipe."""

from typing import Any

from torch import Tensor, nn

__all__ = ['LabelSmoothingBCEWithLogitsLoss', 'SmoothedInTraining', 'smoothed_loss']


class LabelSmoothingBCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on logits with smoothed targets.

    Targets ``t`` become ``t (1 - smoothing) + (1 - t) smoothing`` before
    :class:`torch.nn.BCEWithLogitsLoss`, as MMEarth's
    ``LabelSmoothingBinaryCrossEntropy`` for multi-label GEO-Bench tasks
    (m-bigearthnet).

    If you use this loss in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(self, smoothing: float = 0.0, **kwargs: Any) -> None:
        """Initialize a new LabelSmoothingBCEWithLogitsLoss instance.

        Args:
            smoothing: amount of smoothing, in [0, 1).
            **kwargs: further arguments of :class:`torch.nn.BCEWithLogitsLoss`.

        Raises:
            ValueError: if *smoothing* is out of range.
        """
        if not 0 <= smoothing < 1:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        super().__init__(**kwargs)
        self.smoothing = smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            input: logits.
            target: 0/1 targets of the same shape.

        Returns:
            The loss.
        """
        target = target.to(input.dtype)
        target = target * (1 - self.smoothing) + (1 - target) * self.smoothing
        return super().forward(input, target)


class SmoothedInTraining(nn.Module):
    """A label-smoothed loss in training mode, the plain loss otherwise.

    MMEarth trains with label smoothing and validates and tests without it; as a
    submodule of a LightningModule this follows its mode (``train()`` during the
    training loop, ``eval()`` during validation and test).
    """

    def __init__(self, smoothed: nn.Module, plain: nn.Module) -> None:
        """Initialize a new SmoothedInTraining instance.

        Args:
            smoothed: the loss in training mode.
            plain: the loss in evaluation mode.
        """
        super().__init__()
        self.smoothed = smoothed
        self.plain = plain

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Compute the loss of the current mode.

        Args:
            input: predictions.
            target: targets.

        Returns:
            The loss.
        """
        loss: Tensor = (self.smoothed if self.training else self.plain)(input, target)
        return loss


def smoothed_loss(criterion: nn.Module, loss: str, smoothing: float) -> nn.Module:
    """Wrap a TorchGeo criterion so that it smooths labels in training only.

    Args:
        criterion: TorchGeo's criterion for *loss*.
        loss: TorchGeo's loss name, ``'ce'`` or ``'bce'``.
        smoothing: amount of label smoothing; 0 returns *criterion* itself.

    Returns:
        :class:`SmoothedInTraining` of the smoothed and the plain loss: for
        ``'ce'``, :class:`torch.nn.CrossEntropyLoss` with ``label_smoothing``
        (timm's ``LabelSmoothingCrossEntropy``, which MMEarth uses, without class
        weights) keeping the criterion's class weights and ignore index; for
        ``'bce'``, :class:`LabelSmoothingBCEWithLogitsLoss` keeping its
        ``pos_weight``.

    Raises:
        ValueError: for another loss, or a smoothing out of [0, 1).
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f'label_smoothing must be in [0, 1), got {smoothing}')
    if smoothing == 0:
        return criterion
    smoothed: nn.Module
    if loss == 'ce' and isinstance(criterion, nn.CrossEntropyLoss):
        smoothed = nn.CrossEntropyLoss(
            weight=criterion.weight,
            ignore_index=criterion.ignore_index,
            label_smoothing=smoothing,
        )
    elif loss == 'bce' and isinstance(criterion, nn.BCEWithLogitsLoss):
        smoothed = LabelSmoothingBCEWithLogitsLoss(
            smoothing, pos_weight=criterion.pos_weight
        )
    else:
        raise ValueError(
            f"label_smoothing needs loss='ce' or loss='bce', got loss={loss!r}"
        )
    return SmoothedInTraining(smoothed, criterion)
