import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from torchgeo_mmearth.evaluation import (
    METRIC_NAMES,
    SplitFeatures,
    bootstrap_ci,
    compute_metric,
    evaluate_knn,
    evaluate_linear,
    evaluate_probes,
    fit_linear_probe,
    knn_scores,
)
from torchgeo_mmearth.evaluation.features import ExtractedFeatures


def clusters(
    n_per_class: int, num_classes: int = 3, dim: int = 8, seed: int = 0
) -> SplitFeatures:
    """Well separated Gaussian clusters: class c around 10 * e_c."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = 10 * torch.eye(num_classes, dim)
    x = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return SplitFeatures(x, labels)


def flip(split: SplitFeatures, rows: list[int], num_classes: int) -> SplitFeatures:
    """The split with the labels of *rows* moved to the next class."""
    labels = split.labels.clone()
    labels[rows] = (labels[rows] + 1) % num_classes
    return SplitFeatures(split.features, labels)


def multilabel_split(n: int, num_labels: int = 4, seed: int = 0) -> SplitFeatures:
    """Label j is on iff feature j is positive, with a margin of 3."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, num_labels, generator=generator) < 0.4).long()
    x = torch.randn(n, num_labels + 2, generator=generator) * 0.5
    x[:, :num_labels] += torch.where(labels.bool(), 3.0, -3.0)
    return SplitFeatures(x, labels)


class TestKNN:
    def test_weighted_vote(self) -> None:
        train = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
        labels = torch.tensor([0, 0, 1])
        query = torch.tensor([[0.6, 0.8]])
        scores = knn_scores(train, labels, query, k=3, num_classes=2, temperature=0.5)
        cos = F.normalize(query, dim=1) @ F.normalize(train, dim=1).T
        weights = (cos[0] / 0.5).exp()
        expected = torch.stack(
            (weights[:2].sum() / weights.sum(), weights[2] / weights.sum())
        )
        torch.testing.assert_close(scores[0], expected)
        # k=1: the nearest neighbour (class 1, cosine 0.8) takes all.
        scores = knn_scores(train, labels, query, k=1, num_classes=2)
        assert scores.tolist() == [[0.0, 1.0]]

    def test_k_larger_than_train(self) -> None:
        scores = knn_scores(
            torch.eye(2), torch.tensor([0, 1]), torch.eye(2), k=50, num_classes=3
        )
        assert scores.shape == (2, 3)
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))

    def test_multilabel_shares(self) -> None:
        train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
        scores = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), 2, 'multilabel')
        torch.testing.assert_close(scores, torch.tensor([[1.0, 0.5]]))

    def test_accuracy_exact(self) -> None:
        train, val = clusters(20), clusters(10, seed=1)
        test = flip(clusters(10, seed=2), [0, 13, 27], 3)
        result = evaluate_knn(train, val, test, 'multiclass', 3, k=[1, 5], device='cpu')
        assert result.val == 1.0
        assert result.test == pytest.approx(27 / 30)
        assert result.value == 1  # the first of equally good candidates
        assert result.metric == 'OverallAccuracy'
        assert result.num_train == 60

    def test_multilabel_exact(self) -> None:
        train, val = multilabel_split(200), multilabel_split(50, seed=1)
        test = multilabel_split(50, seed=2)
        result = evaluate_knn(train, val, test, 'multilabel', 4, k=5, device='cpu')
        assert result.metric == 'F1Score'
        assert result.test == 1.0

    def test_bad_k(self) -> None:
        with pytest.raises(ValueError, match='k must be >= 1'):
            knn_scores(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), k=0)


class TestLinear:
    def test_separable_exact(self) -> None:
        train, val = clusters(20), clusters(10, seed=1)
        test = flip(clusters(10, seed=2), [3, 4], 3)
        result = evaluate_linear(train, val, test, 'multiclass', 3, device='cpu')
        assert result.val == 1.0
        assert result.test == pytest.approx(28 / 30)
        assert result.hyperparameter == 'weight_decay'
        # All penalties separate the clusters: the strongest wins the tie.
        assert result.value == 10.0
        assert result.ci_low <= result.test <= result.ci_high

    def test_matches_closed_form_optimum(self) -> None:
        # The gradient of the penalised loss vanishes at the fitted probe.
        split = clusters(30, seed=3)
        x = (split.features - split.features.mean(0)) / split.features.std(
            0, correction=0
        )
        probe = fit_linear_probe(split.features, split.labels, 'multiclass', 3, 0.1)
        weight = probe.weight.clone().requires_grad_(True)
        bias = probe.bias.clone().requires_grad_(True)
        loss = F.cross_entropy(x @ weight.T + bias, split.labels)
        loss = loss + 0.05 * weight.square().sum()
        loss.backward()
        assert weight.grad is not None and bias.grad is not None
        assert weight.grad.abs().max() < 1e-4
        assert bias.grad.abs().max() < 1e-4

    def test_multilabel_exact(self) -> None:
        train, val = multilabel_split(200), multilabel_split(50, seed=1)
        test = multilabel_split(50, seed=2)
        result = evaluate_linear(train, val, test, 'multilabel', 4, device='cpu')
        assert result.metric == 'F1Score'
        assert result.test == 1.0
        probe = fit_linear_probe(train.features, train.labels, 'multilabel', 4, 1e-3)
        probabilities = probe.predict_proba(test.features)
        assert probabilities.shape == (50, 4)
        assert ((probabilities > 0.5).long() == test.labels).all()

    def test_classes_absent_from_training(self) -> None:
        # Class 3 of 4 has no training sample: probability 0, the rest as if
        # it did not exist.
        train = clusters(20)
        probe = fit_linear_probe(train.features, train.labels, 'multiclass', 4, 1e-3)
        reference = fit_linear_probe(
            train.features, train.labels, 'multiclass', 3, 1e-3
        )
        assert probe.iterations < 500  # converged, no bias running off
        test = clusters(10, seed=2).features
        probabilities = probe.predict_proba(test)
        assert probabilities[:, 3].max() < 1e-30
        torch.testing.assert_close(
            probabilities[:, :3], reference.predict_proba(test), rtol=0, atol=1e-5
        )
        one = fit_linear_probe(
            train.features, torch.zeros(60, dtype=torch.long), 'multiclass', 4, 1.0
        )
        assert one.iterations == 0 and (one.predict_proba(test).argmax(1) == 0).all()

    def test_constant_labels(self) -> None:
        split = multilabel_split(100)
        labels = split.labels.clone()
        labels[:, 0] = 0  # never on
        labels[:, 1] = 1  # always on
        probe = fit_linear_probe(split.features, labels, 'multilabel', 4, 1e-3)
        assert probe.iterations < 500
        probabilities = probe.predict_proba(multilabel_split(50, seed=2).features)
        assert probabilities[:, 0].max() == 0 and probabilities[:, 1].min() == 1
        assert (
            (probabilities[:, 2:] > 0.5).long()
            == multilabel_split(50, seed=2).labels[:, 2:]
        ).all()

    def test_bad_labels(self) -> None:
        train = clusters(5)
        with pytest.raises(ValueError, match=r'labels must be in \[0, 2\)'):
            evaluate_linear(train, train, train, 'multiclass', 2)
        with pytest.raises(ValueError, match='multilabel train labels must be'):
            evaluate_linear(train, train, train, 'multilabel', 3)
        with pytest.raises(ValueError, match='task must be one of'):
            evaluate_linear(train, train, train, 'binary', 3)


def test_evaluate_probes_order_and_methods() -> None:
    features = ExtractedFeatures(
        {'train': clusters(10), 'val': clusters(5, seed=1), 'test': clusters(5, seed=2)}
    )
    results = evaluate_probes(
        features, 'multiclass', 3, methods=['linear', 'knn'], bootstrap=0
    )
    assert [r.method for r in results] == ['linear', 'knn']
    assert all(r.test == 1.0 and math.isnan(r.ci_low) for r in results)
    with pytest.raises(ValueError, match='methods must be among'):
        evaluate_probes(features, 'multiclass', 3, methods=['svm'])


class TestMetrics:
    def test_torchmetrics_names_and_values(self) -> None:
        generator = torch.Generator().manual_seed(0)
        scores = torch.rand(50, 5, generator=generator)
        targets = torch.randint(0, 5, (50,), generator=generator)
        expected = MulticlassAccuracy(num_classes=5, average='micro')(scores, targets)
        assert compute_metric(scores, targets, 'multiclass', 5) == float(expected)
        probabilities = torch.rand(50, 7, generator=generator)
        labels = torch.randint(0, 2, (50, 7), generator=generator)
        expected = MultilabelF1Score(num_labels=7, average='micro')(
            probabilities, labels
        )
        assert compute_metric(probabilities, labels, 'multilabel', 7) == float(expected)
        assert METRIC_NAMES == {
            'multiclass': 'OverallAccuracy',
            'multilabel': 'F1Score',
        }


def accuracy_case(n: int, correct: float = 0.8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Scores that are right for a fraction *correct* of *n* samples."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (n,), generator=generator)
    predicted = targets.clone()
    wrong = torch.randperm(n, generator=generator)[: round((1 - correct) * n)]
    predicted[wrong] = (predicted[wrong] + 1) % 3
    return F.one_hot(predicted, 3).float(), targets


class TestBootstrap:
    def test_contains_point_and_shrinks(self) -> None:
        widths = []
        for n in (100, 10_000):
            scores, targets = accuracy_case(n)
            point = compute_metric(scores, targets, 'multiclass', 3)
            low, high = bootstrap_ci(scores, targets, 'multiclass', 500, seed=1)
            assert low < point < high
            widths.append(high - low)
        assert widths[1] < widths[0] / 5  # ~ 1 / sqrt(n): 10x narrower
        # The binomial standard error at n = 100: the 95 % interval is ~ +-1.96 se.
        se = math.sqrt(0.8 * 0.2 / 100)
        assert widths[0] == pytest.approx(2 * 1.96 * se, rel=0.25)

    def test_multilabel(self) -> None:
        split = multilabel_split(300)
        noisy = split.labels.float() * 0.4 + 0.6 * torch.rand(300, 4)
        point = compute_metric(noisy, split.labels, 'multilabel', 4)
        low, high = bootstrap_ci(noisy, split.labels, 'multilabel', 300)
        assert 0 < low < point < high < 1

    def test_degenerate_and_reproducible(self) -> None:
        scores, targets = accuracy_case(40, correct=1.0)
        assert bootstrap_ci(scores, targets, 'multiclass', 100) == (1.0, 1.0)
        scores, targets = accuracy_case(40)
        a = bootstrap_ci(scores, targets, 'multiclass', 100, seed=3)
        assert a == bootstrap_ci(scores, targets, 'multiclass', 100, seed=3)

    def test_paired_difference(self) -> None:
        scores, targets = accuracy_case(200)
        assert bootstrap_ci(scores, targets, 'multiclass', reference=scores) == (
            0.0,
            0.0,
        )
        better = F.one_hot(targets, 3).float()  # always right: +20 points
        low, high = bootstrap_ci(better, targets, 'multiclass', reference=scores)
        assert 0 < low < 0.2 < high

    def test_errors(self) -> None:
        scores, targets = accuracy_case(10)
        with pytest.raises(ValueError, match='confidence must be in'):
            bootstrap_ci(scores, targets, 'multiclass', confidence=1.0)
        with pytest.raises(ValueError, match='num_resamples must be'):
            bootstrap_ci(scores, targets, 'multiclass', num_resamples=0)
        with pytest.raises(ValueError, match='10 targets'):
            bootstrap_ci(scores[:5], targets, 'multiclass')
