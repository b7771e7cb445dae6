"""k-NN and linear probes on frozen features, in seconds.

Both probes run in PyTorch on any device, fit on the train split, choose their
hyperparameter on the validation split and report the test metric of
:mod:`torchgeo_mmearth.evaluation.metrics` with a bootstrap confidence interval.

* **k-NN** (:func:`knn_scores`): the weighted k-nearest-neighbour classifier of
  DINO (Caron et al., ICCV 2021, https://arxiv.org/abs/2104.14294): cosine
  similarity to the train features, the k most similar vote with weight
  ``exp(similarity / temperature)``; for multilabel tasks the weighted mean of
  the neighbours' label vectors is the label probability.
* **Linear** (:func:`fit_linear_probe`): multinomial (multiclass) or per-label
  (multilabel) logistic regression on features standardised with the train
  statistics, with an L2 penalty ``weight_decay / 2 * ||W||^2`` on the weights
  (not the bias), fitted to convergence by full-batch L-BFGS with a strong-Wolfe
  line search. The penalty is chosen on the validation split from a grid
  (:data:`WEIGHT_DECAYS`), each fit warm-started from the previous, stronger
  one. This is the classifier that MMEarth's linear probing (Nedungadi et al.,
  ECCV 2024, https://arxiv.org/abs/2405.02771) trains with AdamW for 100 epochs
  on the same features, solved directly.
"""

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .features import ExtractedFeatures, SplitFeatures, resolve_device
from .metrics import METRIC_NAMES, bootstrap_ci, check_task, compute_metric

__all__ = [
    'KNN_TEMPERATURE',
    'METHODS',
    'SATURATED',
    'WEIGHT_DECAYS',
    'LinearProbe',
    'ProbeResult',
    'evaluate_knn',
    'evaluate_linear',
    'evaluate_probes',
    'fit_linear_probe',
    'knn_scores',
    'select_linear_probe',
]

#: The probes, by name.
METHODS = ('knn', 'linear')

#: DINO's k-NN temperature.
KNN_TEMPERATURE = 0.07

#: Logit of a class never seen (label never varying) in training: its
#: probability is then 0 or 1 to float precision.
SATURATED = 100.0

#: L2 penalties tried by the linear probe, strongest first.
WEIGHT_DECAYS: tuple[float, ...] = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe.

    Attributes:
        method: 'knn' or 'linear'.
        metric: 'OverallAccuracy' (multiclass) or 'F1Score' (multilabel).
        val: the metric on the validation split, at the chosen hyperparameter.
        test: the metric on the test split.
        ci_low: lower bound of the test metric's bootstrap interval.
        ci_high: upper bound of the test metric's bootstrap interval.
        hyperparameter: 'k' or 'weight_decay'.
        value: the value chosen on the validation split.
        num_train: number of training samples.
        seconds: wall time of fitting, selection and prediction.
    """

    method: str
    metric: str
    val: float
    test: float
    ci_low: float
    ci_high: float
    hyperparameter: str
    value: float
    num_train: int
    seconds: float

    def as_row(self) -> dict[str, str | float | int]:
        """The result as a table row."""
        return asdict(self)


def _check_labels(split: SplitFeatures, task: str, num_classes: int, name: str) -> None:
    labels = split.labels
    if task == 'multiclass':
        if labels.ndim != 1:
            raise ValueError(
                f'multiclass {name} labels must be (N,) class indices, got shape '
                f'{tuple(labels.shape)}'
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f'{name} labels must be in [0, {num_classes}), got '
                f'[{int(labels.min())}, {int(labels.max())}]'
            )
    elif labels.ndim != 2 or labels.shape[1] != num_classes:
        raise ValueError(
            f'multilabel {name} labels must be (N, {num_classes}) multi-hot, got '
            f'shape {tuple(labels.shape)}'
        )


def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    task: str = 'multiclass',
    num_classes: int | None = None,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted k-NN class probabilities (DINO's vote).

    Args:
        train_features: (N, D) features of the labelled samples.
        train_labels: (N,) class indices or (N, L) multi-hot labels.
        query_features: (Q, D) features to classify.
        k: number of neighbours (at most N are used).
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes (multiclass; default: the largest label
            + 1); the number of labels is that of *train_labels*.
        temperature: the vote of a neighbour is ``exp(cosine / temperature)``.
        chunk_size: queries per similarity block.

    Returns:
        (Q, C) vote shares of each class, or (Q, L) label probabilities.

    Raises:
        ValueError: for invalid arguments.
    """
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    if len(train_features) == 0:
        raise ValueError('k-NN needs at least one training sample')
    if task == 'multiclass':
        classes = num_classes or int(train_labels.max()) + 1
        targets = F.one_hot(train_labels.long(), classes).float()
    else:
        targets = train_labels.float()
    k = min(k, len(train_features))
    bank = F.normalize(train_features.float(), dim=1)
    targets = targets.to(bank.device)
    out: list[Tensor] = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float(), dim=1)
        similarity, index = (query.to(bank.device) @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.einsum('qk,qkc->qc', weights, targets[index])
        # Shares in [0, 1] up to rounding, which torchmetrics would take for
        # logits (and apply a sigmoid) if it pushed one above 1.
        out.append((votes / weights.sum(dim=1, keepdim=True)).clamp(0, 1))
    if not out:
        return torch.empty(0, targets.shape[1], device=bank.device)
    return torch.cat(out)


@dataclass
class LinearProbe:
    """A fitted linear probe: standardisation and a linear classifier.

    Attributes:
        mean: (D,) train feature means.
        std: (D,) train feature standard deviations.
        weight: (C, D) weights on the standardised features.
        bias: (C,) biases.
        task: 'multiclass' or 'multilabel'.
        weight_decay: the L2 penalty it was fitted with.
        iterations: L-BFGS iterations used.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    task: str
    weight_decay: float
    iterations: int

    def logits(self, features: Tensor) -> Tensor:
        """Classifier outputs.

        Args:
            features: (N, D) features.

        Returns:
            (N, C) logits.
        """
        x = (features.to(self.mean) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict_proba(self, features: Tensor) -> Tensor:
        """Class (softmax) or label (sigmoid) probabilities.

        Args:
            features: (N, D) features.

        Returns:
            (N, C) probabilities.
        """
        logits = self.logits(features)
        if self.task == 'multiclass':
            return logits.softmax(dim=1)
        return logits.sigmoid()


#: Below this many multiply-adds per L-BFGS evaluation (samples x features x
#: classes), CPU fits run on one thread: on small problems the OpenMP
#: synchronisation of every tiny operation costs far more than a second thread
#: gains (measured: 40 samples x 320 features x 43 labels, 7 penalties, 1.9 s on
#: one thread and 60 s on two of a busy 2-core machine).
SINGLE_THREAD_BELOW = 10_000_000


@contextlib.contextmanager
def _threads_for(device: torch.device, size: int) -> Iterator[None]:
    """One intra-op thread for small CPU problems, else the current setting."""
    threads = torch.get_num_threads()
    if device.type != 'cpu' or size >= SINGLE_THREAD_BELOW or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _active(labels: Tensor, task: str, num_classes: int) -> Tensor:
    """Classes present in the training labels, or labels that vary in them."""
    if task == 'multiclass':
        return torch.bincount(labels, minlength=num_classes)[:num_classes] > 0
    rate = labels.mean(dim=0)
    return (rate > 0) & (rate < 1)


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    task: str,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 500,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Fit L2-regularised logistic regression by full-batch L-BFGS.

    Minimises ``mean_i loss_i + weight_decay / 2 * ||W||^2``, where ``loss_i`` is
    the cross-entropy (multiclass) or the sum over labels of the binary
    cross-entropy (multilabel) of sample i, on features standardised with their
    own mean and standard deviation. Runs on the device of *features*.

    A class without training samples, or a label that is on (off) for every
    training sample, has no finite optimum (its bias runs off to infinity): it
    gets weight 0 and bias -:data:`SATURATED` (a label always on: +SATURATED),
    i.e. probability 0 (1), and the others are fitted without it, as with few
    labels (GEO-Bench's 1 % partitions) happens.

    Args:
        features: (N, D) training features.
        labels: (N,) class indices or (N, L) multi-hot labels.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        weight_decay: the L2 penalty (>= 0).
        max_iter: maximum number of L-BFGS iterations.
        init: a probe to start from (warm start), fitted on the same features.

    Returns:
        The fitted probe.

    Raises:
        ValueError: for invalid arguments.
    """
    check_task(task, num_classes)
    if weight_decay < 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
    if len(features) == 0:
        raise ValueError('the linear probe needs at least one training sample')
    x = features.float()
    if init is None:
        mean = x.mean(dim=0)
        std = x.std(dim=0, correction=0).clamp(min=1e-6)
    else:
        mean, std = init.mean, init.std
    x = (x - mean) / std
    if task == 'multiclass':
        y = labels.to(x.device).long()
    else:
        y = labels.to(x.device).float()
    active = _active(y, task, num_classes)
    index = active.nonzero()[:, 0]
    full_weight = torch.zeros(num_classes, x.shape[1], device=x.device)
    if task == 'multiclass':
        full_bias = torch.full((num_classes,), -SATURATED, device=x.device)
        # Class indices among the present classes.
        y = torch.cumsum(active.long(), dim=0)[y] - 1
    else:
        always = y.mean(dim=0) == 1
        full_bias = torch.where(always, SATURATED, -SATURATED).to(x.device)
        y = y[:, index]
    weight = torch.zeros(len(index), x.shape[1], device=x.device)
    bias = torch.zeros(len(index), device=x.device)
    if init is not None:
        weight.copy_(init.weight[index])
        bias.copy_(init.bias[index])
    iterations = 0
    # One present class (multiclass) or no varying label: nothing to fit.
    if len(index) > (1 if task == 'multiclass' else 0):
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1,
            max_iter=max_iter,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            history_size=20,
            line_search_fn='strong_wolfe',
        )
        n = len(x)

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = x @ weight.T + bias
            if task == 'multiclass':
                loss = F.cross_entropy(logits, y)
            else:
                loss = (
                    F.binary_cross_entropy_with_logits(logits, y, reduction='sum') / n
                )
            loss = loss + 0.5 * weight_decay * weight.square().sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        with torch.enable_grad(), _threads_for(x.device, n * x.shape[1] * len(index)):
            optimizer.step(closure)  # type: ignore[no-untyped-call]
        # L-BFGS keeps its state on its first parameter.
        iterations = int(optimizer.state[weight].get('n_iter', 0))
    full_weight[index] = weight.detach()
    full_bias[index] = bias.detach()
    return LinearProbe(
        mean=mean,
        std=std,
        weight=full_weight,
        bias=full_bias,
        task=task,
        weight_decay=weight_decay,
        iterations=iterations,
    )


def _on(split: SplitFeatures, device: torch.device) -> tuple[Tensor, Tensor]:
    return split.features.to(device), split.labels.to(device)


def _result(
    method: str,
    task: str,
    num_classes: int,
    val: float,
    test_scores: Tensor,
    test_labels: Tensor,
    hyperparameter: str,
    value: float,
    num_train: int,
    start: float,
    bootstrap: int,
    seed: int,
) -> ProbeResult:
    test = compute_metric(test_scores, test_labels, task, num_classes)
    low, high = (
        bootstrap_ci(test_scores, test_labels, task, bootstrap, seed=seed)
        if bootstrap
        else (float('nan'), float('nan'))
    )
    return ProbeResult(
        method=method,
        metric=METRIC_NAMES[task],
        val=val,
        test=test,
        ci_low=low,
        ci_high=high,
        hyperparameter=hyperparameter,
        value=value,
        num_train=num_train,
        seconds=time.perf_counter() - start,
    )


def _checked(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    task: str,
    num_classes: int,
) -> None:
    check_task(task, num_classes)
    for name, split in (('train', train), ('val', val), ('test', test)):
        _check_labels(split, task, num_classes, name)
    if len(val) == 0 or len(test) == 0:
        raise ValueError('the validation and test splits must not be empty')


def evaluate_knn(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    task: str,
    num_classes: int,
    k: int | Sequence[int] = 20,
    temperature: float = KNN_TEMPERATURE,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Weighted k-NN: k chosen on the validation split, scored on the test split.

    Args:
        train: labelled features to vote.
        val: features to choose k on.
        test: features to report.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        k: the number of neighbours, or candidates to choose from (ties go to
            the first).
        temperature: DINO's vote temperature.
        bootstrap: number of bootstrap resamples of the test metric (0: none).
        seed: seed of the bootstrap.
        device: where to compute (default: CUDA when available).

    Returns:
        The result.
    """
    start = time.perf_counter()
    _checked(train, val, test, task, num_classes)
    device = resolve_device(device)
    candidates = [k] if isinstance(k, int) else list(k)
    if not candidates:
        raise ValueError('k needs at least one value')
    train_x, train_y = _on(train, device)
    val_x, val_y = _on(val, device)
    best_k, best_val = candidates[0], -1.0
    for candidate in candidates:
        scores = knn_scores(
            train_x, train_y, val_x, candidate, task, num_classes, temperature
        )
        value = compute_metric(scores, val_y, task, num_classes)
        if value > best_val:
            best_k, best_val = candidate, value
    test_x, test_y = _on(test, device)
    scores = knn_scores(
        train_x, train_y, test_x, best_k, task, num_classes, temperature
    )
    return _result(
        'knn',
        task,
        num_classes,
        best_val,
        scores,
        test_y,
        'k',
        best_k,
        len(train),
        start,
        bootstrap,
        seed,
    )


def select_linear_probe(
    train: SplitFeatures,
    val: SplitFeatures,
    task: str,
    num_classes: int,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    max_iter: int = 500,
    device: str | torch.device | None = None,
) -> tuple[LinearProbe, float]:
    """Fit a linear probe per penalty and keep the best on the validation split.

    Args:
        train: features to fit on.
        val: features to choose the penalty on.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        weight_decays: penalties to try; fitted from the strongest down, each
            warm-started from the previous (ties go to the stronger).
        max_iter: L-BFGS iterations per penalty.
        device: where to compute (default: CUDA when available).

    Returns:
        The chosen probe and its validation metric.
    """
    check_task(task, num_classes)
    _check_labels(train, task, num_classes, 'train')
    _check_labels(val, task, num_classes, 'val')
    if not weight_decays:
        raise ValueError('weight_decays needs at least one value')
    device = resolve_device(device)
    train_x, train_y = _on(train, device)
    val_x, val_y = _on(val, device)
    best: LinearProbe | None = None
    best_val = -1.0
    probe: LinearProbe | None = None
    for weight_decay in sorted(weight_decays, reverse=True):
        probe = fit_linear_probe(
            train_x, train_y, task, num_classes, weight_decay, max_iter, init=probe
        )
        value = compute_metric(probe.predict_proba(val_x), val_y, task, num_classes)
        if value > best_val:
            best, best_val = probe, value
    assert best is not None
    return best, best_val


def evaluate_linear(
    train: SplitFeatures,
    val: SplitFeatures,
    test: SplitFeatures,
    task: str,
    num_classes: int,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    max_iter: int = 500,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Linear probe: the L2 penalty chosen on the validation split.

    Args:
        train: features to fit on.
        val: features to choose the penalty on.
        test: features to report.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        weight_decays: penalties to try (see :func:`select_linear_probe`).
        max_iter: L-BFGS iterations per penalty.
        bootstrap: number of bootstrap resamples of the test metric (0: none).
        seed: seed of the bootstrap.
        device: where to compute (default: CUDA when available).

    Returns:
        The result.
    """
    start = time.perf_counter()
    _checked(train, val, test, task, num_classes)
    device = resolve_device(device)
    best, best_val = select_linear_probe(
        train, val, task, num_classes, weight_decays, max_iter, device
    )
    test_x, test_y = _on(test, device)
    return _result(
        'linear',
        task,
        num_classes,
        best_val,
        best.predict_proba(test_x),
        test_y,
        'weight_decay',
        best.weight_decay,
        len(train),
        start,
        bootstrap,
        seed,
    )


def evaluate_probes(
    features: ExtractedFeatures,
    task: str,
    num_classes: int,
    methods: Sequence[str] = METHODS,
    k: int | Sequence[int] = 20,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    train: SplitFeatures | None = None,
    val: SplitFeatures | None = None,
    temperature: float = KNN_TEMPERATURE,
) -> list[ProbeResult]:
    """Run the probes on extracted train, validation and test features.

    Args:
        features: the output of
            :func:`~torchgeo_mmearth.evaluation.extract_features`.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        methods: probes among :data:`METHODS`.
        k: k-NN neighbours, or candidates chosen on the validation split.
        weight_decays: the linear probe's penalty grid.
        bootstrap: number of bootstrap resamples of each test metric (0: none).
        seed: seed of the bootstraps.
        device: where to compute (default: CUDA when available).
        train: train features instead of ``features['train']`` (a subset).
        val: validation features instead of ``features['val']``.
        temperature: the k-NN vote temperature.

    Returns:
        One result per method, in the order of *methods*.

    Raises:
        ValueError: for an unknown method.
    """
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ValueError(f'methods must be among {METHODS}, got {list(methods)}')
    train = features['train'] if train is None else train
    val = features['val'] if val is None else val
    test = features['test']
    results = []
    for method in methods:
        if method == 'knn':
            result = evaluate_knn(
                train,
                val,
                test,
                task,
                num_classes,
                k,
                temperature,
                bootstrap=bootstrap,
                seed=seed,
                device=device,
            )
        else:
            result = evaluate_linear(
                train,
                val,
                test,
                task,
                num_classes,
                weight_decays,
                bootstrap=bootstrap,
                seed=seed,
                device=device,
            )
        results.append(result)
    return results
