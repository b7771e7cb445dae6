"""Test metrics of the probes and their bootstrap confidence intervals.

The metrics are those MMEarth reports on GEO-Bench (Nedungadi et al., ECCV 2024,
https://arxiv.org/abs/2405.02771; GEO-Bench, Lacoste et al., NeurIPS 2023,
https://arxiv.org/abs/2306.03831), computed with torchmetrics over the whole
split, under the names TorchGeo's ``ClassificationTask`` logs them:

* multiclass (m-eurosat, m-so2sat, m-brick-kiln): ``OverallAccuracy``,
  torchmetrics ``Accuracy(average='micro')``;
* multilabel (m-bigearthnet, 43 labels): ``F1Score``, torchmetrics
  ``F1Score(average='micro', threshold=0.5)`` on sigmoid probabilities.

Both are functions of per-sample counts (correct predictions; true positives,
false positives and false negatives), so :func:`bootstrap_ci` resamples the test
samples with replacement by summing those counts, thousands of resamples in
milliseconds.
"""

from typing import Literal, TypeAlias

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

__all__ = [
    'METRIC_NAMES',
    'TASKS',
    'Task',
    'bootstrap_ci',
    'check_task',
    'compute_metric',
    'make_metric',
]

#: The classification tasks the probes handle.
Task: TypeAlias = Literal['multiclass', 'multilabel']
TASKS: tuple[Task, ...] = ('multiclass', 'multilabel')

#: The metric of each task, named as TorchGeo's ClassificationTask logs it.
METRIC_NAMES: dict[str, str] = {
    'multiclass': 'OverallAccuracy',
    'multilabel': 'F1Score',
}

#: Multilabel decision threshold on probabilities (torchmetrics' default).
THRESHOLD = 0.5


def check_task(task: str, num_classes: int) -> None:
    """Check a task and its number of classes or labels.

    Args:
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes (multiclass) or labels (multilabel).

    Raises:
        ValueError: if either is invalid.
    """
    if task not in TASKS:
        raise ValueError(
            f"task must be one of {TASKS} (a binary task is 'multiclass' with "
            f'num_classes=2), got {task!r}'
        )
    if num_classes < (2 if task == 'multiclass' else 1):
        raise ValueError(f'num_classes must be >= 2 for {task}, got {num_classes}')


def make_metric(task: str, num_classes: int) -> Metric:
    """The torchmetrics metric of a task.

    Args:
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.

    Returns:
        Micro-averaged accuracy (multiclass) or F1 at 0.5 (multilabel).
    """
    check_task(task, num_classes)
    if task == 'multiclass':
        return MulticlassAccuracy(num_classes=num_classes, average='micro')
    return MultilabelF1Score(
        num_labels=num_classes, average='micro', threshold=THRESHOLD
    )


def compute_metric(
    scores: Tensor, targets: Tensor, task: str, num_classes: int
) -> float:
    """The metric of a task over a whole split.

    Args:
        scores: (N, C) class probabilities or scores (multiclass), or (N, L)
            label probabilities in [0, 1] (multilabel).
        targets: (N,) class indices or (N, L) multi-hot labels.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.

    Returns:
        The metric value.
    """
    metric = make_metric(task, num_classes).to(scores.device)
    return float(metric(scores, targets.to(scores.device)))


def _sample_counts(scores: Tensor, targets: Tensor, task: str) -> Tensor:
    """Per-sample counts whose sums give the metric: (N, 1) or (N, 3)."""
    if task == 'multiclass':
        return (scores.argmax(dim=1) == targets).float()[:, None]
    predicted = scores > THRESHOLD
    actual = targets.bool()
    tp = (predicted & actual).sum(dim=1)
    fp = (predicted & ~actual).sum(dim=1)
    fn = (~predicted & actual).sum(dim=1)
    return torch.stack((tp, fp, fn), dim=1).float()


def _metric_from_sums(sums: Tensor, n: int, task: str) -> Tensor:
    if task == 'multiclass':
        return sums[..., 0] / n
    tp, fp, fn = sums.unbind(-1)
    denominator = 2 * tp + fp + fn
    return torch.where(
        denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp)
    )


def bootstrap_ci(
    scores: Tensor,
    targets: Tensor,
    task: str,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    reference: Tensor | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the test metric.

    The test samples are resampled with replacement *num_resamples* times and the
    metric (see :func:`make_metric`) is recomputed on each resample; the interval
    is the central *confidence* mass of those values. It reflects the finite test
    set only, not the randomness of training. With *reference*, the interval is
    that of the difference ``metric(scores) - metric(reference)`` over the same
    resamples (a paired comparison of two classifiers on one test set).

    Args:
        scores: (N, C) class scores or (N, L) label probabilities.
        targets: (N,) class indices or (N, L) multi-hot labels.
        task: 'multiclass' or 'multilabel'.
        num_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.
        reference: scores of a second classifier on the same samples.

    Returns:
        The lower and upper bounds.

    Raises:
        ValueError: for invalid arguments.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if num_resamples < 1:
        raise ValueError(f'num_resamples must be >= 1, got {num_resamples}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    n = len(targets)
    if n == 0:
        raise ValueError('no test samples to resample')
    if len(scores) != n or (reference is not None and reference.shape != scores.shape):
        raise ValueError(
            f'{len(targets)} targets, scores of shape {tuple(scores.shape)}'
            + ('' if reference is None else f', reference {tuple(reference.shape)}')
        )
    counts = _sample_counts(scores, targets, task).cpu().double()
    width = counts.shape[1]
    if reference is not None:
        counts = torch.cat(
            (counts, _sample_counts(reference, targets, task).cpu().double()), dim=1
        )
    generator = torch.Generator().manual_seed(seed)
    # About 2 M indices (and 12 M counts) at a time.
    chunk = max(1, 2_000_000 // n)
    values: list[Tensor] = []
    for start in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - start)
        index = torch.randint(0, n, (size, n), generator=generator)
        sums = counts[index].sum(dim=1)
        value = _metric_from_sums(sums[:, :width], n, task)
        if reference is not None:
            value = value - _metric_from_sums(sums[:, width:], n, task)
        values.append(value)
    resampled = torch.cat(values)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(resampled, torch.tensor([alpha, 1 - alpha]).double())
    return float(low), float(high)
