"""Homoscedastic-uncertainty weighting of the MP-MAE task losses."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ['UncertaintyWeighting']


class UncertaintyWeighting(nn.Module):
    """Learned uncertainty weighting of task losses, as in MP-MAE.

    Each task *t* has a learnable log-variance ``s_t`` (:attr:`log_vars`,
    initialised to 0) and contributes ``exp(-s_t) * L_t + s_t``; the total is the sum
    over tasks. This is the simplified form of Kendall et al. (CVPR 2018) that
    MP-MAE uses: no 1/2 factor and no distinction between regression and
    classification tasks. A task without any valid target in the batch contributes
    exactly 0, so its ``s_t`` gets no gradient from that batch (otherwise the
    ``+ s_t`` term alone would drive ``s_t`` towards minus infinity).

    The log-variances are 1-D parameters; like the reference, optimise them with
    the model and without weight decay.

    If you use this module in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(self, num_tasks: int) -> None:
        """Initialize a new UncertaintyWeighting instance.

        Args:
            num_tasks: number of task losses to weight.

        Raises:
            ValueError: if *num_tasks* is not positive.
        """
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f'num_tasks must be positive, got {num_tasks}')
        self.num_tasks = num_tasks
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def weighted_losses(
        self, losses: Tensor | Sequence[Tensor], has_target: Tensor | None = None
    ) -> Tensor:
        """Weighted loss of every task.

        Args:
            losses: ``(T,)`` task losses, or a sequence of T scalar losses, in the
                order of :attr:`log_vars`.
            has_target: ``(T,)`` booleans, False for a task without any valid target
                in the batch. None applies the reference rule: a task whose loss is
                exactly 0 has no target.

        Returns:
            ``(T,)``: ``exp(-s_t) * L_t + s_t``, or 0 for tasks without targets.

        Raises:
            ValueError: if the number of losses is not :attr:`num_tasks`.
        """
        if not isinstance(losses, Tensor):
            losses = torch.stack(list(losses)) if len(losses) else torch.zeros(0)
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f'losses must hold num_tasks={self.num_tasks} scalars, '
                f'got shape {tuple(losses.shape)}'
            )
        if has_target is None:
            has_target = losses != 0
        elif has_target.shape != (self.num_tasks,):
            raise ValueError(
                f'has_target must be ({self.num_tasks},), '
                f'got shape {tuple(has_target.shape)}'
            )
        weighted = torch.exp(-self.log_vars) * losses + self.log_vars
        return torch.where(has_target.to(torch.bool), weighted, 0.0)

    def forward(
        self, losses: Tensor | Sequence[Tensor], has_target: Tensor | None = None
    ) -> Tensor:
        """Total weighted loss.

        Args:
            losses: ``(T,)`` task losses, or a sequence of T scalar losses, in the
                order of :attr:`log_vars`.
            has_target: ``(T,)`` booleans, False for a task without any valid target
                in the batch; None: a task whose loss is exactly 0 has no target.

        Returns:
            The scalar ``sum_t exp(-s_t) * L_t + s_t`` over the tasks with targets.

        Raises:
            ValueError: if the number of losses is not :attr:`num_tasks`.
        """
        return self.weighted_losses(losses, has_target).sum()
