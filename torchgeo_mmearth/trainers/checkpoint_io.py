"""Checkpoints that are whole or absent: never torn by a kill or a full disk.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` writes a
checkpoint into a temporary file in ``$TMPDIR`` and moves it over the target. When
the checkpoint folder is on another filesystem than ``$TMPDIR`` (on most clusters)
the move is a copy over the target in place: a job killed during it leaves a
truncated ``last.ckpt``, and nothing older to resume from.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .._atomic import atomic_path

__all__ = ['AtomicCheckpointIO', 'use_atomic_checkpoints']


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` whose local files appear whole.

    A checkpoint is written into a hidden temporary file in its own folder,
    flushed to the disk (fsync) and renamed to its name (``os.replace``): a save
    that is killed (SIGKILL, a lost node) or fails (a full disk) keeps the
    previous file of that name, and a file of that name is always complete.
    Every checkpoint of a run goes through it: ModelCheckpoint's (``last.ckpt``
    included), :class:`~torchgeo_mmearth.trainers.CheckpointOnInterrupt`'s
    ``interrupted.ckpt`` and Lightning's SLURM ``hpc_ckpt_<n>.ckpt``. Remote
    paths (``s3://`` and other fsspec URLs) are written as Lightning writes them.

    A save killed before the rename leaves its temporary file,
    ``.<name>.<process id>.tmp`` with the ``_`` of the name written ``-``; it can
    be deleted. (Lightning numbers the SLURM checkpoints from every file name in
    the folder that holds ``hpc_ckpt_``.)

    :func:`use_atomic_checkpoints` installs it on a Trainer; ``Trainer(plugins=
    [AtomicCheckpointIO()])`` does too.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: _PATH,
        storage_options: Any | None = None,
    ) -> None:
        """Write *checkpoint* to *path* whole, or leave *path* as it was.

        Args:
            checkpoint: the checkpoint Lightning dumped.
            path: the file to write.
            storage_options: not supported, as by TorchCheckpointIO.
        """
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix('file://'))
        target.parent.mkdir(parents=True, exist_ok=True)
        hidden = f'.{target.name.replace("_", "-")}.{os.getpid()}.tmp'
        with atomic_path(target, durable=True, temporary_name=hidden) as temporary:
            torch.save(checkpoint, temporary)


def use_atomic_checkpoints(trainer: Trainer) -> bool:
    """Make *trainer* write its checkpoints with :class:`AtomicCheckpointIO`.

    Only Lightning's default writer is replaced; a CheckpointIO chosen for the
    Trainer (``plugins=[...]``) is kept.

    Args:
        trainer: the trainer, before it saves its first checkpoint.

    Returns:
        Whether the writer was replaced.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
