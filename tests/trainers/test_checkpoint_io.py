"""Checkpoints that are whole or absent: killed or failed saves keep the previous one."""

import errno
import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.connectors.checkpoint_connector import (
    _CheckpointConnector,
)

from tests.trainers.test_mpmae import datamodule, small_task, trainer
from torchgeo_mmearth.trainers import AtomicCheckpointIO, use_atomic_checkpoints


def save_then_block(path: Path, tmpdir: str, writing: Connection) -> None:
    """Save version 1 of a checkpoint, then block half way through version 2."""
    os.environ['TMPDIR'] = tmpdir

    def blocked_save(checkpoint: Any, temporary: Path) -> None:
        temporary.write_bytes(b'PK' + bytes(1000))
        writing.send(temporary)
        signal.pause()  # until killed

    AtomicCheckpointIO().save_checkpoint({'version': 1}, path)
    torch.save = blocked_save
    AtomicCheckpointIO().save_checkpoint({'version': 2}, path)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_save_is_synced_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    fsync = os.fsync

    def record(descriptor: int) -> None:
        synced.append(os.readlink(f'/proc/self/fd/{descriptor}'))
        fsync(descriptor)

    monkeypatch.setattr(os, 'fsync', record)
    path = tmp_path / 'checkpoints' / 'last.ckpt'
    AtomicCheckpointIO().save_checkpoint({'weights': torch.arange(3)}, path)
    # The new file's contents, then the folder that holds its new name.
    hidden = path.with_name(f'.last.ckpt.{os.getpid()}.tmp')
    assert synced == [str(hidden), str(path.parent)]
    assert torch.equal(torch.load(path)['weights'], torch.arange(3))
    assert os.listdir(path.parent) == ['last.ckpt']


@pytest.mark.parametrize('name', ['last.ckpt', 'hpc_ckpt_2.ckpt'])
def test_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    io = AtomicCheckpointIO()
    for previous in ('last.ckpt', 'hpc_ckpt_1.ckpt'):
        io.save_checkpoint({'version': 1}, tmp_path / previous)
    numbered = []

    def disk_full(checkpoint: Any, path: Path) -> None:
        path.write_bytes(b'PK' + bytes(1000))
        # Lightning numbers the next SLURM checkpoint from the file names.
        numbered.append(_CheckpointConnector.hpc_save_path(tmp_path))
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(OSError, match='No space left'):
        io.save_checkpoint({'version': 2}, tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ['hpc_ckpt_1.ckpt', 'last.ckpt']
    monkeypatch.undo()
    for previous in tmp_path.iterdir():
        assert torch.load(previous) == {'version': 1}
    # A partial hpc_ckpt_2 does not make Lightning number the next one otherwise.
    assert numbered == [str(tmp_path / 'hpc_ckpt_2.ckpt')]


def test_killed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    # As on a cluster, the checkpoint folder on another filesystem than $TMPDIR
    # when this machine has one (a tmpfs /dev/shm): the save must not become a
    # copy over the checkpoint.
    other = Path('/dev/shm')
    elsewhere = other.is_dir() and other.stat().st_dev != tmp_path.stat().st_dev
    path = tmp_path / 'last.ckpt'
    context = multiprocessing.get_context('fork')
    receiver, sender = context.Pipe(duplex=False)
    tmpdir = str(other if elsewhere else tmp_path)
    process = context.Process(target=save_then_block, args=(path, tmpdir, sender))
    process.start()
    writing = receiver.recv()
    assert os.path.getsize(writing) > 0
    os.kill(process.pid, signal.SIGKILL)  # half way through the write
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    assert writing.parent == tmp_path
    assert torch.load(path) == {'version': 1}
    # What the killed save leaves: its hidden temporary file, no checkpoint.
    assert sorted(os.listdir(tmp_path)) == [writing.name, 'last.ckpt']
    assert list(tmp_path.glob('*.ckpt')) == [path]


def test_every_checkpoint_of_a_run_is_written_whole(
    mmearth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    written: list[Path] = []
    save = AtomicCheckpointIO.save_checkpoint

    def record(io: AtomicCheckpointIO, checkpoint: Any, path: Any, **kw: Any) -> None:
        written.append(Path(path))
        save(io, checkpoint, path, **kw)

    monkeypatch.setattr(AtomicCheckpointIO, 'save_checkpoint', record)
    copied = ModelCheckpoint(dirpath=tmp_path / 'copied', save_last=True)
    linked = ModelCheckpoint(
        dirpath=tmp_path / 'linked', save_last='link', every_n_train_steps=1
    )
    run = trainer(tmp_path, limit_train_batches=1, callbacks=[copied, linked])
    run.fit(small_task(), datamodule(mmearth_root))
    # MPMAETask's CheckpointOnInterrupt installed it.
    assert isinstance(run.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sorted(written) == [
        tmp_path / 'copied' / 'epoch=0-step=1.ckpt',
        tmp_path / 'copied' / 'last.ckpt',
        tmp_path / 'linked' / 'epoch=0-step=1.ckpt',
    ]
    # save_last='link' makes last.ckpt a symbolic link to a checkpoint written
    # whole: the link is one operation, never a partial file.
    last = tmp_path / 'linked' / 'last.ckpt'
    assert last.is_symlink() and os.readlink(last) == 'epoch=0-step=1.ckpt'


def test_a_chosen_checkpoint_io_is_kept() -> None:
    class Chosen(TorchCheckpointIO):
        pass

    chosen = Chosen()
    run = Trainer(accelerator='cpu', plugins=[chosen], logger=False)
    assert not use_atomic_checkpoints(run)
    assert run.strategy.checkpoint_io is chosen
    default = Trainer(accelerator='cpu', logger=False)
    assert use_atomic_checkpoints(default)
    assert isinstance(default.strategy.checkpoint_io, AtomicCheckpointIO)


def test_remote_checkpoints_are_written_as_lightning_writes_them() -> None:
    AtomicCheckpointIO().save_checkpoint({'version': 1}, 'memory://run/last.ckpt')
    filesystem = fsspec.filesystem('memory')
    with filesystem.open('memory://run/last.ckpt', 'rb') as file:
        assert torch.load(file) == {'version': 1}
    filesystem.rm('memory://run', recursive=True)
