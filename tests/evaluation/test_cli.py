import csv
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchgeo_mmearth.evaluation import (
    ExtractedFeatures,
    cli,
    evaluate_probes,
    load_backbone,
)
from torchgeo_mmearth.main import main

from .fake_classification import BandMeanDataModule

DATAMODULE = 'tests.evaluation.fake_classification.BandMeanDataModule'
PNG = b'\x89PNG\r\n\x1a\n'


class Plain(BandMeanDataModule):
    """A datamodule without partition argument nor **kwargs."""

    def __init__(self, batch_size: int = 48) -> None:
        super().__init__(batch_size=batch_size, size=8, signal=1.5)


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A backbone checkpoint in the layout of TorchGeo's Lightning checkpoints."""
    torch.manual_seed(0)
    state = load_backbone('mmearth_convnextv2_atto', in_channels=12).state_dict()
    path = tmp_path / 'backbone.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': 'mmearth_convnextv2_atto'},
            'state_dict': {f'model.{k}': v for k, v in state.items()},
        },
        path,
    )
    return path


def test_end_to_end(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'out'
    cache = tmp_path / 'features.pt'
    args = [
        'probe',
        '--data',
        DATAMODULE,
        '--data.init_args.batch_size',
        '48',
        '--data.dict_kwargs.size',
        '8',
        '--data.dict_kwargs.signal',
        '1.5',
        '--weights',
        str(weights),
        '--in_channels',
        '12',
        '--k',
        '5',
        '10',
        '--bootstrap',
        '200',
        '--fractions',
        '0.25',
        '1',
        '--out',
        str(out),
        '--cache',
        str(cache),
        '--device',
        'cpu',
        '--progress',
        'false',
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert 'BandMeanDataModule: multiclass, 4 classes' in printed
    assert '| method | metric | val | test |' in printed
    assert '# Label efficiency' in printed
    for name in ('probe', 'label_efficiency'):
        assert (out / f'{name}.md').read_text() in printed
        assert (out / f'{name}.png').read_bytes().startswith(PNG)
    rows = read(out / 'probe.csv')
    assert [row['method'] for row in rows] == ['knn', 'linear']
    # The same numbers through the Python API on the cached features.
    features = ExtractedFeatures.load(cache)
    assert features.meta['backbone']['weights'] == str(weights)
    expected = evaluate_probes(
        features, 'multiclass', 4, k=[5, 10], bootstrap=200, device='cpu'
    )
    for row, result in zip(rows, expected, strict=True):
        assert float(row['test']) == result.test
        assert float(row['ci_low']) == result.ci_low
        assert float(row['value']) == result.value
    assert float(rows[1]['test']) > 0.8  # the band means are learnable
    efficiency = read(out / 'label_efficiency.csv')
    assert [(r['partition'], r['method']) for r in efficiency] == [
        ('0.25', 'knn'),
        ('0.25', 'linear'),
        ('1', 'knn'),
        ('1', 'linear'),
    ]
    assert [int(r['num_train']) for r in efficiency] == [24, 24, 96, 96]
    assert efficiency[3]['test'] == rows[1]['test']


def test_config_and_partitions(tmp_path: Path, weights: Path) -> None:
    config = tmp_path / 'probe.yaml'
    config.write_text(
        f"""
model: mmearth_convnextv2_atto
weights: {weights}
methods: [linear]
bootstrap: 0
device: cpu
progress: false
fractions: [0.25x_train, 1.00x_train]
out: {tmp_path / 'out'}
data:
  class_path: {DATAMODULE}
  init_args:
    batch_size: 48
"""
    )
    # The partition goes to the dataset through **kwargs (dict_kwargs).
    assert main(['probe', '--config', str(config)]) == 0
    rows = read(tmp_path / 'out' / 'label_efficiency.csv')
    assert [(r['partition'], r['num_train']) for r in rows] == [
        ('0.25x_train', '24'),
        ('1.00x_train', '96'),
    ]
    assert math.isnan(float(rows[0]['ci_low']))  # no bootstrap


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ['probe', '--data', DATAMODULE, '--out', str(tmp_path), '--device', 'cpu']
    with pytest.raises(SystemExit):
        main([*base, '--methods', 'svm'])
    with pytest.raises(SystemExit):
        main([*base, '--task', 'binary'])
    capsys.readouterr()
    assert main([*base, '--fractions', '0', '0.5']) == 2
    assert (
        capsys.readouterr().err == 'error: --fractions must be in (0, 1], got [0.0]\n'
    )
    plain = ['probe', '--data', 'tests.evaluation.test_cli.Plain']
    assert main([*plain, '--fractions', '0.01x_train']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'has no partition argument' in err
    assert len(err.splitlines()) == 1
    # A truncated --weights file: one line naming it.
    truncated = tmp_path / 'truncated.ckpt'
    truncated.write_bytes(b'PK')
    assert main([*base, '--weights', str(truncated)]) == 2
    assert capsys.readouterr().err.startswith(f'error: {truncated} is truncated')


def test_ctrl_c_says_what_was_kept(
    tmp_path: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / 'features.pt'
    args = [
        '--data',
        DATAMODULE,
        '--weights',
        str(weights),
        '--in_channels',
        '12',
        '--out',
        str(tmp_path / 'out'),
        '--cache',
        str(cache),
        '--device',
        'cpu',
        '--progress',
        'false',
    ]
    command = shlex.join(['torchgeo-mmearth', 'probe', *args])

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    # During feature extraction: nothing kept.
    with monkeypatch.context() as patch:
        patch.setattr(cli, 'extract_features', interrupted)
        assert main(['probe', *args]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        'Interrupted: no features were kept (--cache FILE keeps them for the next '
        f'run). To resume: {command}'
    )
    # During the probes: the features are cached, and the command reuses them.
    with monkeypatch.context() as patch:
        patch.setattr(cli, 'evaluate_probes', interrupted)
        assert main(['probe', *args]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'Interrupted: the extracted features are kept in {cache}. To resume: {command}'
    )
    assert main(shlex.split(command)[1:]) == 0


def test_export_interrupted_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / 'mpmae.ckpt'
    hparams = {'model': 'mmearth_convnextv2_atto', 'in_channels': 12, 'patch_size': 8}
    torch.save(
        {
            'hyper_parameters': hparams,
            'state_dict': {'model.stem.0.weight': torch.zeros(1)},
        },
        checkpoint,
    )
    out = tmp_path / 'encoder.pth'
    save = torch.save

    def save_then_interrupt(obj: object, f: Path) -> None:
        save(obj, f)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', save_then_interrupt)
    assert main(['export-weights', str(checkpoint), str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'Interrupted: nothing was written to {out}. To export again: '
        f'torchgeo-mmearth export-weights {checkpoint} {out}'
    )
    assert list(tmp_path.iterdir()) == [checkpoint]  # no partial file either


# Runs `torchgeo-mmearth ARGS` in a fresh interpreter that sends itself SIGINT
# (Ctrl-C) on entering the function STOP of the module MODULE, so that the
# KeyboardInterrupt lands wherever the function then is.
INTERRUPTING = """
import importlib, os, signal, sys
# Ctrl-C as in a terminal, also when the suite runs as a background job
# (whose children inherit SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from torchgeo_mmearth.main import main

module = importlib.import_module(os.environ['MODULE'])
function = getattr(module, os.environ['STOP'])

def interrupting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return function(*args, **kwargs)

setattr(module, os.environ['STOP'], interrupting)
sys.argv[0] = 'torchgeo-mmearth'
sys.exit(main())
"""


def interrupt(args: list[str], module: str, stop: str) -> str:
    """Run the command, interrupted; its exit status must be 130."""
    result = subprocess.run(
        [sys.executable, '-c', INTERRUPTING, *args],
        capture_output=True,
        text=True,
        env={**os.environ, 'MODULE': module, 'STOP': stop},
        timeout=600,
        check=False,
    )
    assert result.returncode == 130, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ('stop', 'kept'),
    [
        (
            'extract_features',
            'no features were kept (--cache FILE keeps them for the next run)',
        ),
        ('evaluate_probes', 'the extracted features are kept in {cache}'),
    ],
)
def test_sigint_then_resume_gives_the_uninterrupted_results(
    tmp_path: Path, weights: Path, stop: str, kept: str
) -> None:
    def arguments(out: Path) -> list[str]:
        return [
            'probe',
            '--data',
            DATAMODULE,
            '--data.dict_kwargs.size',
            '8',
            '--weights',
            str(weights),
            '--in_channels',
            '12',
            '--bootstrap',
            '50',
            '--fractions',
            '0.5',
            '--out',
            str(out),
            '--cache',
            str(out / 'features.pt'),
            '--device',
            'cpu',
            '--progress',
            'false',
        ]

    interrupted = tmp_path / 'interrupted'
    args = arguments(interrupted)
    stderr = interrupt(args, 'torchgeo_mmearth.evaluation.cli', stop)
    command = shlex.join(['torchgeo-mmearth', *args])
    message = kept.format(cache=interrupted / 'features.pt')
    assert stderr.strip().splitlines()[-1] == (
        f'Interrupted: {message}. To resume: {command}'
    )
    assert not (interrupted / 'probe.csv').exists()

    # The printed command finishes the run as an uninterrupted one would have.
    assert main(shlex.split(command)[1:]) == 0
    uninterrupted = tmp_path / 'uninterrupted'
    assert main(arguments(uninterrupted)) == 0
    results = sorted(
        path.name for path in uninterrupted.iterdir() if path.suffix != '.pt'
    )
    assert results == [
        'label_efficiency.csv',
        'label_efficiency.md',
        'label_efficiency.png',
        'probe.csv',
        'probe.md',
        'probe.png',
    ]
    for name in results:
        assert timeless(interrupted / name) == timeless(uninterrupted / name), name


def timeless(path: Path) -> object:
    """A results file without its wall times (the last column of the tables)."""
    if path.suffix == '.csv':
        return [{**row, 'seconds': ''} for row in read(path)]
    if path.suffix == '.md':
        return re.sub(r'\| [0-9.]+ \|$', '| |', path.read_text(), flags=re.MULTILINE)
    return path.read_bytes()


def test_export_sigint_then_export_again(tmp_path: Path, weights: Path) -> None:
    checkpoint = tmp_path / 'mpmae.ckpt'
    state = torch.load(weights, weights_only=True)
    state['hyper_parameters'].update(in_channels=12, patch_size=8, input_size=56)
    torch.save(state, checkpoint)
    out = tmp_path / 'out' / 'encoder.pth'
    out.parent.mkdir()
    args = ['export-weights', str(checkpoint), str(out)]

    # Ctrl-C while torch.save writes the file: nothing is left behind.
    stderr = interrupt(args, 'torch', 'save')
    command = shlex.join(['torchgeo-mmearth', *args])
    assert stderr.strip().splitlines() == [
        f'Interrupted: nothing was written to {out}. To export again: {command}'
    ]
    assert list(out.parent.iterdir()) == []

    assert main(shlex.split(command)[1:]) == 0
    reference = tmp_path / 'reference.pth'
    assert main(['export-weights', str(checkpoint), str(reference)]) == 0
    exported = torch.load(out, weights_only=True)
    expected = torch.load(reference, weights_only=True)
    assert exported['meta'] == expected['meta']
    assert exported['hyper_parameters'] == expected['hyper_parameters']
    assert exported['state_dict'].keys() == expected['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        assert torch.equal(exported['state_dict'][key], value), key
