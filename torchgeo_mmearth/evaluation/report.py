"""Tables (CSV and Markdown) and figures of probe results.

Every file is written to a temporary name next to its destination and renamed
when complete, so an interrupted run never leaves a truncated table or figure.
"""

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .._atomic import atomic_path

__all__ = [
    'format_markdown',
    'plot_label_efficiency',
    'plot_probe_results',
    'write_table',
]

Row = Mapping[str, Any]


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ''
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f'{value:.0e}'
        return f'{value:.4f}'
    return str(value)


def _columns(rows: Sequence[Row]) -> list[str]:
    if not rows:
        raise ValueError('no rows to write')
    columns = list(rows[0])
    for row in rows[1:]:
        columns.extend(key for key in row if key not in columns)
    return columns


def format_markdown(rows: Sequence[Row]) -> str:
    """A Markdown (GitHub pipe) table of *rows*.

    Args:
        rows: one mapping per row; the columns are their keys, in order of
            first appearance.

    Returns:
        The table, floats with four decimals (tiny and huge ones in
        scientific notation), missing values empty.

    Raises:
        ValueError: if there are no rows.
    """
    columns = _columns(rows)
    lines = [
        '| ' + ' | '.join(columns) + ' |',
        '|' + '|'.join('---' for _ in columns) + '|',
    ]
    for row in rows:
        cells = [_format(row[c]) if c in row else '' for c in columns]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_table(rows: Sequence[Row], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write *rows* as ``<path>.csv`` (full precision) and ``<path>.md``.

    Args:
        rows: one mapping per row.
        path: the files' path without suffix (a suffix is replaced).

    Returns:
        The CSV and Markdown files.

    Raises:
        ValueError: if there are no rows.
    """
    base = Path(path)
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    csv_path = _atomic_write(base.with_suffix('.csv'), buffer.getvalue().encode())
    md_path = _atomic_write(
        base.with_suffix('.md'), format_markdown(rows).encode('utf-8')
    )
    return csv_path, md_path


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip('.') or 'png', dpi=150)
    return _atomic_write(path, buffer.getvalue())


def _error(rows: Sequence[Row]) -> list[list[float]]:
    """Asymmetric error bars from the bootstrap bounds (0 where there are none)."""
    below, above = [], []
    for row in rows:
        low, high, test = row['ci_low'], row['ci_high'], row['test']
        below.append(0.0 if math.isnan(low) else test - low)
        above.append(0.0 if math.isnan(high) else high - test)
    return [below, above]


def plot_probe_results(
    rows: Sequence[Row], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Bar chart of the test metric of each probe with its confidence interval.

    Args:
        rows: :meth:`~torchgeo_mmearth.evaluation.ProbeResult.as_row` rows.
        path: the image to write (its suffix picks the format, e.g. ``.png``).
        title: the figure title.

    Returns:
        The written file.
    """
    if not rows:
        raise ValueError('no results to plot')
    # A Figure without pyplot: no global state, no GUI backend.
    fig = Figure(figsize=(1.6 + 1.2 * len(rows), 3.6), layout='tight')
    ax = fig.subplots()
    labels = [str(row['method']) for row in rows]
    values = [float(row['test']) for row in rows]
    ax.bar(labels, values, yerr=_error(rows), capsize=6, color='tab:blue')
    for x, value in enumerate(values):
        ax.annotate(
            f'{value:.3f}',
            (x, value),
            ha='center',
            va='bottom',
            fontsize=8,
            xytext=(8, 2),
            textcoords='offset points',
        )
    ax.set_ylabel(f'test {rows[0]["metric"]}')
    ax.set_ylim(0, 1.05)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_label_efficiency(
    rows: Sequence[Row], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Test metric against the fraction of labelled training samples.

    One line per probe, with its bootstrap interval as a band, fraction on a
    logarithmic axis.

    Args:
        rows: :meth:`~torchgeo_mmearth.evaluation.LabelEfficiencyResult.as_row`
            rows.
        path: the image to write.
        title: the figure title.

    Returns:
        The written file.
    """
    if not rows:
        raise ValueError('no results to plot')
    fig = Figure(figsize=(5.2, 3.6), layout='tight')
    ax = fig.subplots()
    methods = list(dict.fromkeys(str(row['method']) for row in rows))
    for method in methods:
        points = sorted(
            (row for row in rows if row['method'] == method),
            key=lambda row: float(row['fraction']),
        )
        x = [float(row['fraction']) for row in points]
        y = [float(row['test']) for row in points]
        low = [float(row['ci_low']) for row in points]
        high = [float(row['ci_high']) for row in points]
        (line,) = ax.plot(x, y, marker='o', label=method)
        if not any(math.isnan(v) for v in low + high):
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xscale('log')
    ax.set_xlabel('fraction of labelled training samples')
    ax.set_ylabel(f'test {rows[0]["metric"]}')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)
