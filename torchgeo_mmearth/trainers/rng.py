"""The global random state in checkpoints: a resumed run draws as an uninterrupted one."""

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ['RandomStateCheckpoint']


class RandomStateCheckpoint(Callback):
    """Save the global random state with every checkpoint; restore it on resume.

    MP-MAE draws its masks, and the datamodules their GPU augmentations, from
    torch's global random number generator, which Lightning neither saves nor
    restores: a run resumed with ``ckpt_path`` would draw other masks than an
    uninterrupted run. This callback saves the state of torch's CPU and CUDA
    generators in each checkpoint, and sets them back when the resumed training
    starts (after the sanity check, which Lightning runs with its random state
    isolated), so the resumed run continues the same sequence of draws.
    """

    def __init__(self) -> None:
        """Initialize a new RandomStateCheckpoint instance."""
        super().__init__()
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The global random state now, saved by Lightning in the checkpoint.

        Returns:
            The states of torch's CPU generator and of its CUDA generators (none
            before CUDA is used), as tensors.
        """
        initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        cuda = torch.cuda.get_rng_state_all() if initialized else []
        return {'torch': torch.get_rng_state(), 'torch.cuda': cuda}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state of a checkpoint, to set it when training resumes.

        Args:
            state_dict: a state returned by :meth:`state_dict`.
        """
        self._loaded = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Set the global random state of the checkpoint the run resumes from.

        Args:
            trainer: the trainer.
            pl_module: the task.
        """
        state, self._loaded = self._loaded, None
        if state is None:
            return
        torch.set_rng_state(state['torch'])
        if state['torch.cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['torch.cuda'])
