"""``torchgeo-mmearth probe`` on GEO-Bench-format tasks with partitions.

The tasks are small generated files in GEO-Bench's exact on-disk format
(``tests/data/geobench/data.py``) with random pixels and labels: the metrics
are meaningless here; what is checked is the pipeline (multilabel and
multiclass, partitions selected by sample name without a second extraction).
"""

import csv
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from torchgeo_mmearth.evaluation import features as features_module
from torchgeo_mmearth.main import main

from ..conftest import load_data_script

N = 12


@pytest.fixture(scope='module')
def geobench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data: ModuleType = load_data_script('geobench')
    root = tmp_path_factory.mktemp('geobench')
    for task in ('m-eurosat', 'm-bigearthnet'):
        data.write_task(root, task, samples_per_split=N, size=8, seed=3)
    return root


@pytest.mark.parametrize(
    ('task', 'metric', 'classes'),
    [('m-eurosat', 'OverallAccuracy', 10), ('m-bigearthnet', 'F1Score', 43)],
)
def test_partitions(
    geobench_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    task: str,
    metric: str,
    classes: int,
) -> None:
    calls: list[str] = []
    extract = features_module._extract_split

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])  # the split
        return extract(*args, **kwargs)

    monkeypatch.setattr(features_module, '_extract_split', counting)
    out = tmp_path / 'out'
    args = [
        'probe',
        '--data',
        'GeoBenchDataModule',
        '--data.init_args.task',
        task,
        '--data.init_args.root',
        str(geobench_root),
        '--data.init_args.batch_size',
        '8',
        '--k',
        '3',
        '--bootstrap',
        '50',
        '--fractions',
        '0.50x_train',
        '1.00x_train',
        '--out',
        str(out),
        '--device',
        'cpu',
        '--progress',
        'false',
    ]
    assert main(args) == 0
    assert f'{classes} classes' in capsys.readouterr().out
    assert calls == ['train', 'val', 'test']  # partitions picked by sample name
    with (out / 'label_efficiency.csv').open() as f:
        rows = list(csv.DictReader(f))
    folder = next(geobench_root.glob(f'*/{task}'))
    half = json.loads((folder / '0.50x_train_partition.json').read_text())
    assert [(r['partition'], r['method'], r['metric']) for r in rows] == [
        ('0.50x_train', 'knn', metric),
        ('0.50x_train', 'linear', metric),
        ('1.00x_train', 'knn', metric),
        ('1.00x_train', 'linear', metric),
    ]
    assert [int(r['num_train']) for r in rows] == [len(half['train'])] * 2 + [N] * 2
    assert all(0 <= float(r['test']) <= 1 for r in rows)
