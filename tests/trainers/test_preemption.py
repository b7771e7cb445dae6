"""SIGTERM, SIGUSR1 and SLURM's requeue during ``torchgeo-mmearth fit``.

A signalled run stops at the end of the step with a checkpoint, says how to
resume and ends with the signal's exit status; resumed, it ends with the weights
of an uninterrupted run, bit for bit on a CPU.
"""

import json
import logging
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch import Callback

from torchgeo_mmearth.main import main

ROOT = Path(__file__).parents[2]
CONF = ROOT / 'tests' / 'conf'
COMMAND = Path(sys.executable).with_name('torchgeo-mmearth')


class SignalAtStep(Callback):
    """Send a signal while training step *step* runs (a config's callback).

    Args:
        step: the global step during which to send it.
        name: the signal's name.
        rank: the process that sends it.
        group: send it to the whole process group, not only to the process.
    """

    #: The handlers of SIGINT and SIGTERM at the end of the step, in-process.
    handlers: ClassVar[list[tuple[Any, Any]]] = []

    def __init__(
        self, step: int, name: str = 'SIGTERM', rank: int = 0, group: bool = False
    ) -> None:
        self.step = step
        self.signum = signal.Signals[name]
        self.rank = rank
        self.group = group

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        if self.group:
            # From another process, as scancel's: the workers take a signal of
            # their own parent as the order to end.
            group = f'-{os.getpgid(0)}'
            subprocess.run(
                ['kill', '-s', self.signum.name, '--', group],
                check=True,
                start_new_session=True,
            )
        else:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Called before the task's own callbacks.
        if trainer.global_step == self.step + 1 and trainer.global_rank == self.rank:
            handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
            self.handlers.append(handlers)


def signal_at(step: int, **init_args: Any) -> str:
    """The argument that adds :class:`SignalAtStep` to a run's callbacks."""
    callback = {
        'class_path': f'{__name__}.SignalAtStep',
        'init_args': {'step': step, **init_args},
    }
    return f'--trainer.callbacks+={json.dumps(callback)}'


def fit_args(config: str, data: tuple[str, Path], out: Path, *extra: str) -> list[str]:
    """``fit`` of a tests/conf config: 2 epochs of 3 steps, no validation."""
    return [
        'fit',
        '--config',
        str(CONF / config),
        f'--data.init_args.{data[0]}',
        str(data[1]),
        '--seed_everything',
        '0',
        '--trainer.accelerator',
        'cpu',
        '--trainer.max_epochs',
        '2',
        '--trainer.limit_val_batches',
        '0',
        '--trainer.default_root_dir',
        str(out),
        '--trainer.logger',
        'false',
        '--trainer.enable_progress_bar',
        'false',
        '--model.init_args.plot_every_n_steps',
        'null',
        *extra,
    ]


def run_command(args: list[str], status: int) -> str:
    """Run ``torchgeo-mmearth *args`` in its own process group; its stderr."""
    result = subprocess.run(
        [str(COMMAND), *args],
        capture_output=True,
        text=True,
        env={**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'},
        timeout=600,
        check=False,
        start_new_session=True,
    )
    assert result.returncode == status, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return result.stderr


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The weights of the end-of-run checkpoint (2 epochs of 3 steps)."""
    path = out / 'checkpoints' / 'epoch=1-step=6.ckpt'
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=False)['state_dict']
    return state


def assert_same_weights(out: Path, reference: dict[str, torch.Tensor]) -> None:
    weights = final_weights(out)
    assert weights.keys() == reference.keys()
    assert [k for k, v in reference.items() if not torch.equal(v, weights[k])] == []


def stop_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith('Stopped by')]


@pytest.fixture(autouse=True, scope='module')
def one_thread() -> Iterator[None]:
    """Runs in this process with one thread, as the commands run.

    Also the fastest on a CPU that other processes share.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def hdf5(mmearth_root: Path) -> tuple[str, Path]:
    return ('root', mmearth_root)


@pytest.fixture(scope='module')
def reference(
    hdf5: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    """The weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp('uninterrupted')
    assert main(fit_args('mpmae.yaml', hdf5, out)) == 0
    return final_weights(out)


def test_sigterm_to_the_command(
    hdf5: tuple[str, Path],
    reference: dict[str, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = fit_args('mpmae.yaml', hdf5, tmp_path, signal_at(1))
    stderr = run_command(args, status=128 + signal.SIGTERM)
    saved = tmp_path / 'checkpoints' / 'interrupted.ckpt'
    resume = shlex.join(['torchgeo-mmearth', *args, '--ckpt_path', str(saved)])
    assert stop_lines(stderr) == [
        f'Stopped by SIGTERM at epoch 0, step 2: saved {saved}. To resume: {resume}'
    ]
    # Nothing else: no checkpoint of a partial epoch, no temporary file.
    assert [p.name for p in saved.parent.iterdir()] == ['interrupted.ckpt']
    assert torch.load(saved, weights_only=False)['global_step'] == 2

    assert main(shlex.split(resume)[1:]) == 0
    assert_same_weights(tmp_path, reference)


def test_sigusr1(
    hdf5: tuple[str, Path], reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    SignalAtStep.handlers.clear()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    args = fit_args('mpmae.yaml', hdf5, tmp_path)
    assert main([*args, signal_at(1, name='SIGUSR1')]) == 128 + signal.SIGUSR1
    # Until the step ended, a second signal would have stopped at once: Ctrl-C
    # as Lightning handles it, SIGTERM by its default action.
    assert SignalAtStep.handlers == [(before[0], signal.SIG_DFL)]
    # The run gave the signals back.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    saved = tmp_path / 'checkpoints' / 'interrupted.ckpt'
    assert main([*args, '--ckpt_path', str(saved)]) == 0
    assert_same_weights(tmp_path, reference)


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SLURM job as Lightning sees it; its ``scontrol`` records its arguments."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    record = tmp_path / 'scontrol.txt'
    scontrol = folder / 'scontrol'
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(record))}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
    job = {'JOB_ID': '4242', 'JOB_NAME': 'pretrain', 'NTASKS': '1', 'NNODES': '1'}
    job |= {'NTASKS_PER_NODE': '1', 'PROCID': '0', 'LOCALID': '0', 'NODEID': '0'}
    for name, value in job.items():
        monkeypatch.setenv(f'SLURM_{name}', value)
    for name in ('MASTER_ADDR', 'MASTER_PORT'):  # Lightning may set them
        monkeypatch.delenv(name, raising=False)
    return record


@pytest.mark.parametrize('datamodule', ['hdf5', 'shards'])
def test_slurm_requeue(
    datamodule: str,
    request: pytest.FixtureRequest,
    slurm: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if datamodule == 'hdf5':
        args = fit_args('mpmae.yaml', request.getfixturevalue('hdf5'), tmp_path)
    else:
        shards = ('input_dir', request.getfixturevalue('mmearth_shards'))
        args = fit_args('mpmae_shards.yaml', shards, tmp_path)
    assert main([*args, signal_at(1, name='SIGUSR1')]) == 128 + signal.SIGUSR1
    # Lightning's requeue at the end of the step: its checkpoint, then scontrol.
    saved = tmp_path / 'hpc_ckpt_1.ckpt'
    assert torch.load(saved, weights_only=False)['global_step'] == 2
    assert slurm.read_text() == 'requeue 4242\n'
    requeued = f'saved {saved}, which the requeued SLURM job resumes from'
    resume = f"trainer.fit(model, datamodule, ckpt_path='{saved}')"
    assert stop_lines(capsys.readouterr().err) == [
        f'Stopped by SIGUSR1 at epoch 0, step 2: {requeued}. To resume: {resume}'
    ]
    assert not (tmp_path / 'checkpoints').exists()

    # The requeued job: the same command, which Lightning resumes from the
    # newest hpc_ckpt_<n>.ckpt.
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert f'Resumed from {saved}: continuing at epoch 0, step 2' in caplog.text
    if datamodule == 'hdf5':
        assert_same_weights(tmp_path, request.getfixturevalue('reference'))
    # The shards' own resumption mid-epoch is tested with the streaming
    # datamodule (tests/datamodules/test_streaming_resume.py).


@pytest.mark.slow
@pytest.mark.parametrize('group', [False, True], ids=['rank 1', 'process group'])
def test_sigterm_under_ddp(hdf5: tuple[str, Path], tmp_path: Path, group: bool) -> None:
    # 2 CPU processes, 3 steps of 1 tile each per epoch; the signal during step
    # 1, to rank 1 alone or to both ranks and their DataLoader workers.
    sender = signal_at(1, rank=0, group=True) if group else signal_at(1, rank=1)
    ddp = ['--trainer.devices', '2', '--data.init_args.batch_size', '1']
    # A tile without some modality leaves its heads out of the loss.
    ddp += ['--trainer.strategy', 'ddp_find_unused_parameters_true']
    ddp += ['--data.init_args.num_workers', '1']
    args = fit_args('mpmae.yaml', hdf5, tmp_path, sender, *ddp)
    stderr = run_command(args, status=128 + signal.SIGTERM)
    saved = tmp_path / 'checkpoints' / 'interrupted.ckpt'
    resume = shlex.join(['torchgeo-mmearth', *args, '--ckpt_path', str(saved)])
    assert stop_lines(stderr) == [
        f'Stopped by SIGTERM at epoch 0, step 2: saved {saved}. To resume: {resume}'
    ]
    assert torch.load(saved, weights_only=False)['global_step'] == 2
    if group:
        # Resumed (the signal's step is behind it), the run ends with the weights
        # of an uninterrupted run on as many processes.
        run_command(shlex.split(resume)[1:], status=0)
        uninterrupted = tmp_path / 'uninterrupted'
        run_command(fit_args('mpmae.yaml', hdf5, uninterrupted, *ddp), status=0)
        assert_same_weights(tmp_path, final_weights(uninterrupted))


def _sleep() -> None:
    time.sleep(60)


def test_forked_workers_leave_signals_to_their_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in a run: the stopping signals are left to the training process.
    from torchgeo_mmearth.trainers import callbacks

    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
    monkeypatch.setattr(callbacks._worker_signals, 'blocked', signals)
    worker = multiprocessing.get_context('fork').Process(target=_sleep, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)  # the worker blocks the signals as it starts
        # From another process (scancel, a group's Ctrl-C): ignored.
        for number in signals:
            subprocess.run(
                ['kill', '-s', str(int(number)), str(worker.pid)], check=True
            )
        worker.join(1)
        assert worker.is_alive()
        # From the parent (the loader stopping it, or Python at exit): it ends.
        worker.terminate()
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
