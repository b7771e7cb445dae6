"""Interrupted, preempted and resumed runs.

:class:`CheckpointOnInterrupt`: Ctrl-C, SIGTERM (preemption, ``scancel``) and
SIGUSR1 (SLURM's warning before the time limit) during training stop at the end
of the step, keep a checkpoint and say how to resume. :func:`resume_in_version_folder`:
a run resumed from a checkpoint of a logger's ``version_N`` folder goes on logging
there.
"""

import multiprocessing.util
import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.fabric.plugins.environments.cluster_environment import ClusterEnvironment
from lightning.fabric.plugins.environments.lightning import LightningEnvironment
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers.subprocess_script import (
    _SubprocessScriptLauncher,
)
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .checkpoint_io import use_atomic_checkpoints

__all__ = ['CheckpointOnInterrupt', 'StoppedBySignal', 'resume_in_version_folder']

#: Console scripts whose command line, plus ``--ckpt_path``, resumes a run.
_CLI_NAMES = ('torchgeo-mmearth', 'torchgeo')


class StoppedBySignal(SIGTERMException):
    """Training stopped by SIGTERM or SIGUSR1 at the end of a step, checkpoint saved.

    A :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException`, and so a
    :class:`SystemExit`: ``trainer.fit`` raises it, and a script that does not
    catch it ends without a traceback, with the exit status :attr:`code`.

    Attributes:
        signum: the signal.
        code: the exit status: 128 + *signum*, as a shell reports a process
            that the signal ended (0 in the processes that Lightning's launcher
            started for the other devices: their launcher kills the whole run
            when one of them ends otherwise).
    """

    def __init__(self, signum: int, code: int) -> None:
        """Initialize a new StoppedBySignal instance.

        Args:
            signum: the signal.
            code: the exit status.
        """
        super().__init__(code)
        self.signum = signum


class CheckpointOnInterrupt(Callback):
    """Turn Ctrl-C, SIGTERM and SIGUSR1 into a checkpoint and the command that resumes.

    Lightning's own handling of Ctrl-C stops wherever the signal lands, possibly
    half way through an optimiser step, and keeps no checkpoint; on SIGTERM it
    stops at the end of the step with exit status 0 and no checkpoint either.
    With this callback the first of these signals lets the running step finish
    (in a validation, the next training step), saves
    ``<log dir>/checkpoints/interrupted.ckpt`` (model, optimiser, schedule and
    loop state, mid-epoch), stops the run without end-of-epoch validation or
    checkpoints and prints one line with the exact command that resumes.

    * Ctrl-C (SIGINT) interrupts the run as Lightning does (exit status 1).
    * SIGTERM and SIGUSR1 raise :class:`StoppedBySignal`: the run ends with the
      signal's exit status, 143 and 138 (128 + the signal's number, as a shell
      reports it).
    * Under SLURM with Lightning's auto-requeue (``SLURMEnvironment``, the
      default when Lightning finds a SLURM job), the requeue signal (SIGUSR1,
      sent ``--signal=USR1@<seconds>`` before the time limit) runs Lightning's
      own requeue at the end of the step instead of inside the signal handler:
      it saves ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` and calls ``scontrol
      requeue``; the requeued job resumes from that checkpoint by itself.
    * A second signal before the step ends stops at once: Ctrl-C as Lightning
      does, SIGTERM and SIGUSR1 by their default action (the process ends, with
      no checkpoint). Once the checkpoint is being saved, the three are ignored
      until the run has stopped.

    Under DDP the processes stop together, at the end of the same step, whichever
    of them received the signal (if several signals, the highest-numbered one
    decides). DataLoader workers forked during the run drop the three signals
    unless their own process sends them (as it does, or Python at exit, to stop
    them): the processes stop them as at the end of an epoch, so a signal to the
    whole process group (``scancel``, ``kill -- -PGID``) prints no worker
    tracebacks.

    While training runs, this callback handles SIGTERM instead of Lightning (its
    handler, which sets ``trainer.received_sigterm``, stays off until the run
    ends, so the loops' own SIGTERMException does not stop the run before the
    checkpoint). Before the first training step (the sanity check) Lightning's
    handling applies.

    The callback also makes the Trainer write every checkpoint of the run whole
    or not at all (:class:`~torchgeo_mmearth.trainers.AtomicCheckpointIO`, when
    the Trainer has Lightning's default writer). A run resumed from a
    checkpoint (``--ckpt_path``) says so, with the epoch and step it continues
    from.
    """

    def __init__(self) -> None:
        """Initialize a new CheckpointOnInterrupt instance."""
        super().__init__()
        #: The signal that asked to stop (the first one), or 0.
        self.signum = 0
        self.saved: Path | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write checkpoints whole; keep the signals from the DataLoader workers.

        Args:
            trainer: the trainer.
            pl_module: the task.
            stage: the stage that starts.
        """
        if stage != 'fit':
            return
        use_atomic_checkpoints(trainer)
        _worker_signals.blocked = set(self._signals(trainer))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take over the stopping signals for the run; say where a resumed run continues.

        Args:
            trainer: the trainer.
            pl_module: the task.
        """
        if trainer.ckpt_path:
            rank_zero_info(
                f'Resumed from {trainer.ckpt_path}: continuing at epoch '
                f'{trainer.current_epoch}, step {trainer.global_step}'
            )
        self.signum = 0
        self.saved = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                signum: signal.signal(signum, self._request)
                for signum in self._signals(trainer)
            }

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        # A second signal stops at once: Ctrl-C as Lightning handles it.
        for other, previous in self._previous.items():
            ctrl_c = other == signal.SIGINT and previous is not None
            signal.signal(other, previous if ctrl_c else signal.SIG_DFL)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After a signal: save the checkpoint and stop the run.

        Args:
            trainer: the trainer.
            pl_module: the task.
            outputs: the step's outputs.
            batch: the batch.
            batch_idx: its index.
        """
        signum = self.signum
        if trainer.world_size > 1:  # every process stops at the same step
            decision = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(decision, reduce_op='max'))
        if not signum:
            return
        self.signum = signum
        for other in self._previous:  # let the checkpoint be written
            signal.signal(other, signal.SIG_IGN)
        environment = trainer._accelerator_connector.cluster_environment
        if signum == _requeue_signal(environment):
            # Lightning's requeue, at the end of the step: it saves the next
            # hpc_ckpt_<n>.ckpt, which the requeued job resumes from.
            connector = trainer._checkpoint_connector
            self.saved = Path(connector.hpc_save_path(trainer.default_root_dir))
            trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)  # type: ignore[arg-type]
        else:
            directory = (
                Path(trainer.log_dir or trainer.default_root_dir) / 'checkpoints'
            )
            self.saved = directory / 'interrupted.ckpt'
            trainer.save_checkpoint(self.saved)
        if signum == signal.SIGINT:
            # Stopping through should_stop would finish the epoch: validation and
            # end-of-epoch checkpoints of a partial epoch.
            raise KeyboardInterrupt
        launched = isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
        child = launched and isinstance(environment, LightningEnvironment)
        raise StoppedBySignal(
            signum, 0 if child and trainer.local_rank else 128 + signum
        )

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Say what was kept and how to resume, once Lightning has stopped.

        Args:
            trainer: the trainer.
            pl_module: the task.
            exception: the interruption.
        """
        _worker_signals.blocked = set()
        if self.saved is None or not trainer.is_global_zero:
            return
        where = f'at epoch {trainer.current_epoch}, step {trainer.global_step}'
        if isinstance(exception, KeyboardInterrupt):
            message = f'Interrupted {where}: saved {self.saved}.'
        elif isinstance(exception, StoppedBySignal):
            name = signal.Signals(exception.signum).name
            message = f'Stopped by {name} {where}: saved {self.saved}'
            if self.saved.name.startswith('hpc_ckpt_'):
                message += ', which the requeued SLURM job resumes from'
            message += '.'
        else:
            return
        print(
            f'{message} To resume: {_resume(self.saved)}', file=sys.stderr, flush=True
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Give the signals back.

        Args:
            trainer: the trainer.
            pl_module: the task.
        """
        self._restore()

    def teardown(
        self, trainer: Trainer, pl_module: LightningModule, stage: str
    ) -> None:
        """Give the signals back, also to the DataLoader workers.

        Args:
            trainer: the trainer.
            pl_module: the task.
            stage: the stage that ends.
        """
        self._restore()
        _worker_signals.blocked = set()

    def _restore(self) -> None:
        if not self.signum:
            for signum, previous in self._previous.items():
                if previous is not None:  # None: not set from Python
                    signal.signal(signum, previous)
        self._previous = {}

    @staticmethod
    def _signals(trainer: Trainer) -> list[int]:
        """The signals that stop the run: Ctrl-C, SIGTERM, SIGUSR1, SLURM's requeue."""
        signals: list[int] = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
        requeue = _requeue_signal(trainer._accelerator_connector.cluster_environment)
        if requeue is not None and requeue not in signals:
            signals.append(requeue)
        return signals


def _requeue_signal(environment: ClusterEnvironment) -> int | None:
    """The signal on which Lightning requeues the SLURM job, if it does."""
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


class _WorkerSignals:
    """The signals that the processes multiprocessing forks leave to their parent.

    A DataLoader worker that receives SIGTERM dies (PyTorch's handler in the
    workers), and its process then fails at the next batch; one that receives
    Ctrl-C ends quietly, with the same effect. In a forked process the signals are
    blocked and a thread takes them: one sent by the parent (which stops its
    workers so, also when Python exits) ends the process at once, as PyTorch's
    handler does; any other (``scancel``, ``kill -- -PGID``, a terminal's Ctrl-C)
    is dropped, and the training process stops its workers when it stops the run.
    """

    def __init__(self) -> None:
        self.blocked: set[int] = set()

    def block(self) -> None:
        """Leave the signals to the parent in a process just forked (a hook)."""
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.blocked)
            threading.Thread(
                target=_end_when_the_parent_signals,
                args=(frozenset(self.blocked),),
                name='torchgeo-mmearth signals',
                daemon=True,
            ).start()


def _end_when_the_parent_signals(signals: frozenset[int]) -> None:
    """Wait for *signals* (blocked); end this process on one from its parent."""
    while True:
        received = signal.sigwaitinfo(signals)
        if received.si_pid == os.getppid():
            os._exit(0)


_worker_signals = _WorkerSignals()
multiprocessing.util.register_after_fork(_worker_signals, _WorkerSignals.block)


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
