import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from torchgeo_mmearth.main import main

from .inference.conftest import PATCH

EXAMPLE = Path(__file__).parents[1] / 'examples' / 'conf' / 'mpmae_demo.yaml'
COMMANDS = ('fit', 'validate', 'test', 'predict', 'build-corpus', 'shard')
COMMANDS += ('export-weights', 'probe', 'embed')


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused command printed on stderr (after any logging)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err
    assert 'Traceback' not in err
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A Lightning checkpoint of MPMAETask, as export-weights reads it."""
    path = tmp_path / 'mpmae.ckpt'
    hparams = {'model': 'mmearth_convnextv2_atto', 'in_channels': 12}
    torch.save(
        {
            'hyper_parameters': {**hparams, 'patch_size': 8, 'input_size': 56},
            'state_dict': {'model.stem.0.weight': torch.zeros(1)},
        },
        path,
    )
    return path


@pytest.fixture
def truncated(checkpoint: Path) -> Path:
    path = checkpoint.with_name('truncated.ckpt')
    path.write_bytes(checkpoint.read_bytes()[:200])
    return path


def test_python_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'torchgeo_mmearth', 'export-weights', '--help'],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage: torchgeo-mmearth export-weights')


@pytest.mark.parametrize('args', [['--help'], ['-h'], []])
def test_help_lists_every_command(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if not line.startswith('   ')]
    listed = [row.split()[0] for row in rows if row.startswith('  ')]
    assert listed[: len(COMMANDS)] == list(COMMANDS)
    assert 'torchgeo-mmearth COMMAND --help' in out and '--debug' in out
    assert max(map(len, out.splitlines())) <= 80


def test_help_imports_no_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from torchgeo_mmearth.main import main
        assert main(['--help']) == 0 and main(['--version']) == 0
        print(sorted(m for m in ('torch', 'torchgeo', 'lightning') if m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == '[]'


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['--version']) == 0
    version = importlib.metadata.version
    assert capsys.readouterr().out == (
        f'torchgeo-mmearth {version("torchgeo-mmearth")} '
        f'(torchgeo {version("torchgeo")})\n'
    )


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['fitt']) == 2
    assert error_line(capsys).startswith("error: unknown command 'fitt'; the ")


class TestExportWeights:
    def test_missing_or_truncated_checkpoint(
        self, tmp_path: Path, truncated: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / 'encoder.pth'
        missing = tmp_path / 'missing.ckpt'
        assert main(['export-weights', str(missing), str(out)]) == 2
        assert error_line(capsys) == f"error: no checkpoint file at '{missing}'"
        assert main(['export-weights', str(truncated), str(out)]) == 2
        assert error_line(capsys).startswith(
            f'error: {truncated} is truncated or not a PyTorch checkpoint'
        )
        assert not out.exists()

    def test_refuses_an_export(
        self, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        exported, again = tmp_path / 'encoder.pth', tmp_path / 'again.pth'
        assert main(['export-weights', str(checkpoint), str(exported)]) == 0
        assert torch.load(exported, weights_only=True)['meta']['in_chans'] == 12
        capsys.readouterr()
        assert main(['export-weights', str(exported), str(again)]) == 2
        assert error_line(capsys) == (
            f'error: {exported} is not a checkpoint of MPMAETask: it is an encoder '
            'already exported by export-weights (mmearth_convnextv2_atto); use it '
            'as it is'
        )
        assert not again.exists()
        # A Lightning checkpoint of another task.
        torch.save({'state_dict': {}, 'hyper_parameters': {'model': 'x'}}, again)
        assert main(['export-weights', str(again), str(tmp_path / 'x.pth')]) == 2
        assert 'a Lightning checkpoint of another task (its hyper-parameters lack ' in (
            error_line(capsys)
        )

    def test_existing_output_needs_overwrite(
        self, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / 'encoder.pth'
        out.write_text('keep me')
        args = ['export-weights', str(checkpoint), str(out)]
        assert main(args) == 2
        assert (
            error_line(capsys) == f'error: {out} exists; add --overwrite to replace it'
        )
        assert out.read_text() == 'keep me'
        assert main([*args, '--overwrite']) == 0
        assert 'meta' in torch.load(out, weights_only=True)

    def test_debug_shows_the_traceback(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        args = ['export-weights', str(tmp_path / 'missing.ckpt'), 'out.pth']
        with pytest.raises(FileNotFoundError, match='no checkpoint file'):
            main(['--debug', *args])
        monkeypatch.setenv('TORCHGEO_MMEARTH_DEBUG', '1')
        with pytest.raises(FileNotFoundError, match='no checkpoint file'):
            main(args)

    def test_console_script(self, tmp_path: Path) -> None:
        # What the user sees: one line on stderr, exit status 2.
        missing = tmp_path / 'missing.ckpt'
        result = subprocess.run(
            [
                *(sys.executable, '-m', 'torchgeo_mmearth', 'export-weights'),
                *(str(missing), str(tmp_path / 'out.pth')),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr == f"error: no checkpoint file at '{missing}'\n"
        assert result.stdout == ''


def test_embed_with_truncated_weights(
    tmp_path: Path, truncated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ['embed', str(PATCH), '--weights', str(truncated)]
    assert main([*args, '--raster', str(tmp_path / 'emb.tif'), '--no-progress']) == 2
    assert error_line(capsys).startswith(
        f'error: {truncated} is truncated or not a PyTorch checkpoint'
    )


class TestLightningCommands:
    def config(self, tmp_path: Path, old: str, new: str) -> str:
        text = EXAMPLE.read_text()
        assert old in text
        path = tmp_path / 'config.yaml'
        path.write_text(text.replace(old, new))
        return str(path)

    def test_unknown_argument(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = self.config(tmp_path, '    lr: 1.0e-3', '    lrr: 1.0e-3')
        assert main(['fit', '--config', config]) == 2
        assert error_line(capsys) == (
            'error: model (torchgeo_mmearth.trainers.MPMAETask): '
            "Option 'lrr' is not accepted (--model.help MPMAETask lists its options)"
        )

    def test_error_of_the_task(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = self.config(
            tmp_path, 'target_modalities: [sentinel2,', 'target_modalities: [sentinel3,'
        )
        assert main(['fit', '--config', config]) == 2
        assert error_line(capsys).startswith(
            "error: MPMAETask: Unknown target modality 'sentinel3'; valid targets are"
        )

    def test_ckpt_path(
        self, tmp_path: Path, truncated: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ['fit', '--config', str(EXAMPLE), '--ckpt_path']
        missing = tmp_path / 'missing.ckpt'
        assert main([*args, str(missing)]) == 2
        assert error_line(capsys) == (
            f'error: --ckpt_path {missing}: no such file; the newest readable '
            f'checkpoint in {tmp_path} is {tmp_path / "mpmae.ckpt"}: resume with '
            f'--ckpt_path {tmp_path / "mpmae.ckpt"}'
        )
        assert main([*args, str(truncated)]) == 2
        assert error_line(capsys).startswith(
            f'error: --ckpt_path {truncated} is truncated or not a PyTorch checkpoint'
        )

    def test_broken_checkpoint_names_the_one_to_resume_from(
        self, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A run killed while an older Lightning copied last.ckpt into place: an
        # empty or truncated last.ckpt beside the checkpoints of earlier epochs.
        folder = tmp_path / 'checkpoints'
        folder.mkdir()
        older, newer = folder / 'epoch=0-step=5.ckpt', folder / 'epoch=1-step=10.ckpt'
        for path, age in ((older, 200), (newer, 100)):
            path.write_bytes(checkpoint.read_bytes())
            os.utime(path, (time.time() - age,) * 2)
        last = folder / 'last.ckpt'
        last.touch()
        args = ['fit', '--config', str(EXAMPLE), '--ckpt_path', str(last)]
        assert main(args) == 2
        assert error_line(capsys) == (
            f'error: --ckpt_path {last} is empty (0 bytes); the newest readable '
            f'checkpoint in {folder} is {newer}: resume with --ckpt_path {newer}'
        )
        # Truncated, as is the newest other checkpoint: the older one is named.
        last.write_bytes(checkpoint.read_bytes()[:300])
        newer.write_bytes(checkpoint.read_bytes()[:300])
        assert main(args) == 2
        line = error_line(capsys)
        assert line.startswith(f'error: --ckpt_path {last} is truncated')
        assert line.endswith(
            f'; the newest readable checkpoint in {folder} is {older}: resume with '
            f'--ckpt_path {older}'
        )
        older.unlink()
        assert main(args) == 2
        assert error_line(capsys).endswith(
            f'; no other readable checkpoint in {folder}'
        )

    def test_lightnings_own_sigterm_exits_with_its_status(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Before the first training step (the sanity check), Lightning handles
        # SIGTERM: its SIGTERMException has no status, which would exit 0.
        import torchgeo.main
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        def stopped(args: list[str] | None) -> None:
            raise SIGTERMException

        monkeypatch.setattr(torchgeo.main, 'main', stopped)
        assert main(['fit', '--config', str(EXAMPLE)]) == 128 + signal.SIGTERM

    def test_valid_config_and_help_still_work(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(['fit', '--config', str(EXAMPLE), '--print_config'])
        assert exit_info.value.code == 0
        assert 'class_path: torchgeo_mmearth.trainers.MPMAETask' in (
            capsys.readouterr().out
        )
        with pytest.raises(SystemExit) as exit_info:
            main(['fit', '--help'])
        assert exit_info.value.code == 0
        assert '--ckpt_path' in capsys.readouterr().out


@pytest.mark.parametrize('error', ['ResumeError', 'NonFiniteTrainingError'])
def test_a_run_error_is_one_error_line(
    error: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the datamodules raise when a mid-epoch checkpoint meets another layout,
    # and MPMAETask after too many non-finite steps in a row.
    from torchgeo_mmearth import _errors
    from torchgeo_mmearth import main as command

    def stop(argv: list[str] | None) -> int:
        raise getattr(_errors, error)('the reason\nand the fix')

    monkeypatch.setattr(command, '_lightning', stop)
    assert main(['fit', '--config', 'run.yaml']) == 2
    assert capsys.readouterr().err == 'error: the reason and the fix\n'
