import csv
import math
from pathlib import Path

import pytest

from torchgeo_mmearth.evaluation import (
    LabelEfficiencyResult,
    ProbeResult,
    format_markdown,
    plot_label_efficiency,
    plot_probe_results,
    write_table,
)

PNG = b'\x89PNG\r\n\x1a\n'


def result(method: str, test: float, fraction: float = 1.0) -> LabelEfficiencyResult:
    probe = ProbeResult(
        method=method,
        metric='OverallAccuracy',
        val=0.5,
        test=test,
        ci_low=test - 0.05,
        ci_high=test + 0.04,
        hyperparameter='k' if method == 'knn' else 'weight_decay',
        value=20 if method == 'knn' else 1e-4,
        num_train=round(1000 * fraction),
        seconds=0.25,
    )
    return LabelEfficiencyResult(f'{fraction:g}', fraction, probe)


def test_write_table(tmp_path: Path) -> None:
    rows = [
        result('knn', 0.8125).result.as_row(),
        result('linear', 0.875).result.as_row(),
    ]
    csv_path, md_path = write_table(rows, tmp_path / 'probe')
    assert (csv_path.name, md_path.name) == ('probe.csv', 'probe.md')
    assert not list(tmp_path.glob('*.partial'))
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert [row['method'] for row in read] == ['knn', 'linear']
    assert float(read[1]['test']) == 0.875  # full precision
    assert float(read[1]['value']) == 1e-4
    lines = md_path.read_text().splitlines()
    assert lines[0] == (
        '| method | metric | val | test | ci_low | ci_high | hyperparameter | value '
        '| num_train | seconds |'
    )
    assert lines[1] == '|' + '|'.join(['---'] * 10) + '|'
    assert lines[3] == (
        '| linear | OverallAccuracy | 0.5000 | 0.8750 | 0.8250 | 0.9150 | '
        'weight_decay | 1e-04 | 1000 | 0.2500 |'
    )
    assert md_path.read_text() == format_markdown(rows)


def test_markdown_missing_values() -> None:
    table = format_markdown([{'a': 1, 'b': math.nan}, {'a': 2, 'c': 'x'}])
    assert table.splitlines()[2:] == ['| 1 |  |  |', '| 2 |  | x |']
    with pytest.raises(ValueError, match='no rows'):
        format_markdown([])


def test_plots(tmp_path: Path) -> None:
    rows = [result('knn', 0.8).result.as_row(), result('linear', 0.9).result.as_row()]
    path = plot_probe_results(rows, tmp_path / 'probe.png', title='test')
    assert path.read_bytes().startswith(PNG)
    curve = [
        result(method, 0.5 + 0.4 * fraction, fraction).as_row()
        for fraction in (0.01, 0.1, 1.0)
        for method in ('knn', 'linear')
    ]
    path = plot_label_efficiency(curve, tmp_path / 'curve.png')
    assert path.read_bytes().startswith(PNG)
    svg = plot_label_efficiency(curve, tmp_path / 'curve.svg')
    assert b'<svg' in svg.read_bytes()[:500]
    assert not list(tmp_path.glob('*.partial'))


def test_write_table_creates_the_folder(tmp_path: Path) -> None:
    csv_file, markdown_file = write_table(
        [{'method': 'knn', 'value': 0.5}], tmp_path / 'new' / 'probe'
    )
    assert csv_file.is_file() and markdown_file.is_file()
