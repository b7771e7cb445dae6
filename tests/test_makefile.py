"""The Makefile's entry points, read with ``make -n`` (nothing is run)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def fit_line(target: str, tmp_path: Path) -> str:
    """The ``torchgeo-mmearth fit`` line that ``make <target>`` would run."""
    # A stand-in that .ci/python-latest.sh accepts as Python 3.12+ (make -n runs
    # the recursive make of the -latest targets, and so that script).
    python = tmp_path / 'python3.13'
    python.write_text('#!/bin/sh\nexit 0\n')
    python.chmod(0o755)
    # A user's shell, not the environment of this run: under `make test-latest`
    # the outer make's variables (DEMO_DIR, VENV, MAKEFLAGS) are in os.environ.
    env = {key: os.environ[key] for key in ('PATH', 'HOME') if key in os.environ}
    result = subprocess.run(
        ['make', '-n', '--no-print-directory', target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**env, 'PYTHON_LATEST': str(python)},
        timeout=60,
    )
    (line,) = [line for line in result.stdout.splitlines() if ' fit ' in line]
    return line


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_demo_and_demo_latest_write_their_own_folders(tmp_path: Path) -> None:
    assert fit_line('demo', tmp_path).endswith('default_root_dir demo-output')
    assert fit_line('demo-latest', tmp_path).endswith(
        'default_root_dir demo-output-latest'
    )
