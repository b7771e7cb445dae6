import subprocess
import sys


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
