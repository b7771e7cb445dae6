"""Interrupted and resumed runs.

:class:`CheckpointOnInterrupt`: Ctrl-C during training stops at the end of the
step, keeps a checkpoint and says how to resume. :func:`resume_in_version_folder`:
a run resumed from a checkpoint of a logger's ``version_N`` folder goes on logging
there.
"""

import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

__all__ = ['CheckpointOnInterrupt', 'resume_in_version_folder']

#: Console scripts whose command line, plus ``--ckpt_path``, resumes a run.
_CLI_NAMES = ('torchgeo-mmearth', 'torchgeo')


class CheckpointOnInterrupt(Callback):
    """Turn Ctrl-C (SIGINT) into a checkpoint and the command that resumes from it.

    Lightning's own handling of Ctrl-C stops wherever the signal lands, possibly
    half way through an optimiser step, and keeps no checkpoint. With this
    callback the first Ctrl-C lets the running step finish, saves
    ``<log dir>/checkpoints/interrupted.ckpt`` (model, optimiser, schedule and
    loop state, mid-epoch), then interrupts the run as Lightning does (no
    end-of-epoch validation or checkpoints, exit status 1) and prints one line
    with the exact command that resumes; a second Ctrl-C interrupts at once, as
    without it. A run resumed from a checkpoint (``--ckpt_path``) says so, with
    the epoch and step it continues from.
    """

    def __init__(self) -> None:
        """Initialize a new CheckpointOnInterrupt instance."""
        super().__init__()
        self.requested = False
        self.saved: Path | None = None
        self._previous: Any = None

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take over Ctrl-C for the run; say where a resumed run continues.

        Args:
            trainer: the trainer.
            pl_module: the task.
        """
        if trainer.ckpt_path:
            rank_zero_info(
                f'Resumed from {trainer.ckpt_path}: continuing at epoch '
                f'{trainer.current_epoch}, step {trainer.global_step}'
            )
        self.requested = False
        self.saved = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After a Ctrl-C: save the checkpoint and interrupt the run.

        Args:
            trainer: the trainer.
            pl_module: the task.
            outputs: the step's outputs.
            batch: the batch.
            batch_idx: its index.
        """
        requested = self.requested
        if trainer.world_size > 1:  # every rank stops at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        directory = Path(trainer.log_dir or trainer.default_root_dir) / 'checkpoints'
        self.saved = directory / 'interrupted.ckpt'
        trainer.save_checkpoint(self.saved)
        # Stopping through should_stop would finish the epoch: validation and
        # end-of-epoch checkpoints of a partial epoch.
        raise KeyboardInterrupt

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Say what was kept and how to resume, once Lightning has stopped.

        Args:
            trainer: the trainer.
            pl_module: the task.
            exception: the interruption.
        """
        if (
            isinstance(exception, KeyboardInterrupt)
            and self.saved is not None
            and trainer.is_global_zero
        ):
            print(
                f'Interrupted at epoch {trainer.current_epoch}, step '
                f'{trainer.global_step}: saved {self.saved}. To resume: '
                f'{_resume(self.saved)}',
                file=sys.stderr,
                flush=True,
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Give Ctrl-C back.

        Args:
            trainer: the trainer.
            pl_module: the task.
        """
        self._restore()

    def teardown(
        self, trainer: Trainer, pl_module: LightningModule, stage: str
    ) -> None:
        """Give Ctrl-C back, also after an interruption.

        Args:
            trainer: the trainer.
            pl_module: the task.
            stage: the stage that ends.
        """
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


def resume_in_version_folder(
    trainer: Trainer, checkpoint: str | os.PathLike[str] | None
) -> Path | None:
    """Make a run resumed from *checkpoint* log into the checkpoint's version folder.

    Lightning's TensorBoard logger (the default) starts a new ``version_N+1`` folder
    for every run, so a resumed run would split one training into two folders: its
    curves, figures and later checkpoints apart from the first part's. When
    *checkpoint* lies in ``<logger root>/version_N/checkpoints/`` and the logger was
    given no version, this sets the logger to version N, where TensorBoard adds the
    new events beside the earlier ones. (A CSV logger would overwrite its
    ``metrics.csv`` there, so other loggers keep a new folder.) Call it before
    ``trainer.fit(..., ckpt_path=checkpoint)``, before the logger is first used
    (``torchgeo-mmearth fit --ckpt_path`` does).

    Args:
        trainer: the trainer that will resume.
        checkpoint: the checkpoint it resumes from, or None.

    Returns:
        The version folder the logger now writes to, or None if nothing changed.
    """
    logger = trainer.logger
    if not checkpoint or not isinstance(logger, TensorBoardLogger):
        return None
    folder = Path(checkpoint).resolve().parent.parent
    match = re.fullmatch(r'version_(\d+)', folder.name)
    # The logger keeps the version given, or None, in ``_version`` until its first
    # use, when it numbers the run.
    if (
        match is None
        or logger._version is not None
        or Path(logger.root_dir).resolve() != folder.parent
    ):
        return None
    logger._version = int(match[1])
    return folder


def _resume(path: Path) -> str:
    """The command that resumes from *path*: this one with ``--ckpt_path``."""
    program = os.path.basename(sys.argv[0])
    if program not in _CLI_NAMES:
        return f"trainer.fit(model, datamodule, ckpt_path='{path}')"
    args = list(sys.argv[1:])
    for option in ('--ckpt_path', '--ckpt-path'):
        while option in args:  # an earlier resume's checkpoint
            index = args.index(option)
            del args[index : index + 2]
        args = [a for a in args if not a.startswith(f'{option}=')]
    return shlex.join([program, *args, '--ckpt_path', str(path)])
