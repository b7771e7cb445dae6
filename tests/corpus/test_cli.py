import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from torchgeo_mmearth.corpus.cli import main
from torchgeo_mmearth.datasets import MMEarth


def arguments(rasters: Path, root: Path, *extra: str) -> list[str]:
    return [
        '--root',
        str(root),
        '--name',
        'cli',
        '--sentinel2',
        str(rasters / 's2'),
        '--source',
        f'sentinel1={rasters / "s1"}',
        '--bands',
        'sentinel1=VV,VH',
        '--source',
        f'aster={rasters / "dem"}',
        '--tile-size',
        '32',
        '--grid',
        '32',
        '--splits',
        '0.5',
        '0.25',
        '0.25',
        '--split-by',
        'scene',
        '--no-progress',
        *extra,
    ]


def test_build(
    rasters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments(rasters, tmp_path)) == 0
    out = capsys.readouterr().out
    assert (
        'Corpus data_cli: 15 tiles written' in out
    )  # 3 x 3 grid in 2 scenes, minus no-data
    assert 'sentinel1' in out
    report = json.loads(
        (tmp_path / 'data_cli' / 'data_cli_build_report.json').read_text()
    )
    assert report['dropped'] == {'too_little_valid_sentinel2': 3}
    assert len(MMEarth(tmp_path, 'data_cli', 'train')) > 0
    # Run again: the corpus exists.
    assert main(arguments(rasters, tmp_path)) == 2
    assert 'already exists' in capsys.readouterr().err
    assert main(arguments(rasters, tmp_path, '--overwrite')) == 0


def test_points(
    rasters: Path,
    corpus_data: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lon, lat = corpus_data.utm_to_lonlat(corpus_data.X0 + 305, corpus_data.Y0 - 305)
    args = arguments(rasters, tmp_path)
    args[args.index('--grid') : args.index('--grid') + 2] = [
        '--point',
        str(lon),
        str(lat),
    ]
    args[args.index('--splits') + 1 : args.index('--splits') + 4] = ['1', '0', '0']
    assert main(args) == 0
    assert '1 tiles written' in capsys.readouterr().out


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        '--root',
        '--name',
        '--sentinel2',
        '--source',
        '--regex',
        '--date-format',
        '--bands',
        '--nodata',
        '--level',
        '--orbit',
        '--bigearthnet',
        '--locations',
        '--point',
        '--grid',
        '--tile-size',
        '--max-days',
        '--min-valid',
        '--splits',
        '--split-by',
        '--seed',
        '--segment-size',
        '--overwrite',
        '--no-progress',
        'canopy_height_eth',
    ):
        assert option in text, option


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--source', 'sentinel3=x'], "unknown modality 'sentinel3'"),
        (['--source', 'aster'], 'expects MODALITY=VALUE'),
        (['--source', 'sentinel2=x'], 'give Sentinel-2 with --sentinel2'),
    ],
)
def test_bad_arguments(
    rasters: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments(rasters, tmp_path, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_build_error_is_reported(
    rasters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = arguments(rasters, tmp_path)
    args[args.index('--grid') : args.index('--grid') + 2] = ['--point', '0', '0']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: None of the 1 locations lies inside')
    assert len(err.splitlines()) == 1


def test_bigearthnet_layout(
    rasters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A BigEarthNet-style patch folder: <patch>_B01.tif ... and the metadata JSON.
    patch = 'S2A_MSIL2A_20200615T103021_1_1'
    folder = tmp_path / 'patches' / patch
    folder.mkdir(parents=True)
    for path in (rasters / 's2').glob('S2A_*.tif'):
        band = path.stem.rsplit('_', 1)[1]
        if band != 'B10':
            (folder / f'{patch}_{band}.tif').write_bytes(path.read_bytes())
    metadata = {'acquisition_date': '2020-06-15 10:30:21', 'labels': []}
    (folder / f'{patch}_labels_metadata.json').write_text(json.dumps(metadata))
    args = [
        '--root',
        str(tmp_path),
        '--name',
        'ben',
        '--bigearthnet',
        '--sentinel2',
        str(tmp_path / 'patches'),
        '--tile-size',
        '32',
        '--grid',
        '--splits',
        '1',
        '0',
        '0',
        '--no-progress',
    ]
    assert main(args) == 0
    assert '6 tiles written' in capsys.readouterr().out  # 9 minus the no-data column
    info = json.loads((tmp_path / 'data_ben' / 'data_ben_tile_info.json').read_text())
    assert {record['S2_type'] for record in info.values()} == {'l2a'}


# Runs the command in a fresh interpreter that sends itself SIGINT (Ctrl-C) when
# the builder reaches location STOP, wherever in Python or rasterio that lands.
INTERRUPTING = """
import os, signal, sys
# Ctrl-C as in a terminal, also when the suite runs as a background job
# (whose children inherit SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from torchgeo_mmearth.corpus import builder
from torchgeo_mmearth.corpus.cli import main

make_tile = builder.CorpusBuilder.make_tile

def make_tile_then_interrupt(self, index, location):
    if index == int(os.environ['STOP']):
        os.kill(os.getpid(), signal.SIGINT)
    return make_tile(self, index, location)

builder.CorpusBuilder.make_tile = make_tile_then_interrupt
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_keeps_tiles_and_resumes(
    rasters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupted = tmp_path / 'interrupted'
    args = arguments(rasters, interrupted, '--segment-size', '2', '--overwrite')
    result = subprocess.run(
        [sys.executable, '-c', INTERRUPTING, *args],
        capture_output=True,
        text=True,
        env={**os.environ, 'STOP': '5'},
        check=False,
    )
    assert result.returncode == 130, result.stderr
    assert 'Traceback' not in result.stderr
    resume = shlex.join(
        ['torchgeo-mmearth', 'build-corpus', *(a for a in args if a != '--overwrite')]
    )
    folder = interrupted / 'data_cli'
    # Segments of 2 locations: 0-1 and 2-3 were committed, 4 was lost.
    assert result.stderr.strip().splitlines() == [
        f'Interrupted: 4 of 18 locations are kept in {folder}. To resume: {resume}'
    ]
    assert not (folder / 'data_cli.h5').exists()

    # The printed command resumes, says so, and gives the uninterrupted corpus.
    assert main(shlex.split(resume)[2:]) == 0
    resumed = (
        f'Resuming the interrupted build of data_cli in {folder}: 4 of 18 '
        'locations were kept, continuing from location 4'
    )
    assert capsys.readouterr().err.splitlines() == [resumed]
    reference = tmp_path / 'reference'
    assert main(arguments(rasters, reference, '--segment-size', '2')) == 0
    for path in (reference / 'data_cli').iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name
