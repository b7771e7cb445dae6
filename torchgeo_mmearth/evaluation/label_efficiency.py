"""Label efficiency: the probes' test metric against the number of labels.

Two ways to take fewer training labels:

* **GEO-Bench partitions** (:func:`partition_label_efficiency`): the datamodule
  is built once per partition (``partition='0.01x_train'`` ...
  ``'1.00x_train'``, GEO-Bench's label-efficiency subsets, Lacoste et al.,
  NeurIPS 2023, https://arxiv.org/abs/2306.03831), which is how MMEarth's
  label-efficiency experiments select their training samples (Nedungadi et al.,
  ECCV 2024, https://arxiv.org/abs/2405.02771). The features of the full splits
  are extracted once; a partition's samples are then picked from them by sample
  id (the batches' ``id`` entry or the dataset's ``sample_ids`` or
  ``sample_names``, which GEO-Bench datasets have), and only a partition
  without ids is extracted again.
* **Fractions** (:func:`label_efficiency`): a stratified subsample of the
  extracted train features (:func:`stratified_subset`); the validation and test
  splits stay whole.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn

from .features import (
    ExtractedFeatures,
    SplitFeatures,
    dataset_sample_ids,
    extract_features,
)
from .metrics import check_task
from .probes import (
    KNN_TEMPERATURE,
    METHODS,
    WEIGHT_DECAYS,
    ProbeResult,
    evaluate_probes,
)

__all__ = [
    'LabelEfficiencyResult',
    'label_efficiency',
    'partition_label_efficiency',
    'stratified_subset',
]


@dataclass(frozen=True)
class LabelEfficiencyResult:
    """One probe at one amount of training labels.

    Attributes:
        partition: the GEO-Bench partition or the requested fraction, as text.
        fraction: the share of the full training split actually used.
        result: the probe's result.
    """

    partition: str
    fraction: float
    result: ProbeResult

    def as_row(self) -> dict[str, str | float | int]:
        """The result as a table row: partition, fraction, then the probe's."""
        return {
            'partition': self.partition,
            'fraction': self.fraction,
            **self.result.as_row(),
        }


def stratified_subset(
    labels: Tensor, fraction: float, task: str = 'multiclass', seed: int = 0
) -> Tensor:
    """Indices of a fraction of the samples, stratified by class.

    Multiclass: each class keeps ``round(fraction * its count)`` samples, at
    least one. Multilabel: ``round(fraction * N)`` samples drawn uniformly (at
    least one). For one seed, the subsets are nested: a smaller fraction's
    samples are among a larger one's.

    Args:
        labels: (N,) class indices or (N, L) multi-hot labels.
        fraction: share of the samples to keep, in (0, 1].
        task: 'multiclass' or 'multilabel'.
        seed: seed of the draw.

    Returns:
        Sorted sample indices.

    Raises:
        ValueError: if *fraction* is not in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    if task == 'multiclass':
        chosen = []
        for cls in torch.unique(labels).tolist():
            members = (labels == cls).nonzero()[:, 0]
            order = members[torch.randperm(len(members), generator=generator)]
            chosen.append(order[: max(1, round(fraction * len(members)))])
        index = torch.cat(chosen)
    else:
        order = torch.randperm(len(labels), generator=generator)
        index = order[: max(1, round(fraction * len(labels)))]
    return index.sort().values


def label_efficiency(
    features: ExtractedFeatures,
    fractions: Sequence[float],
    task: str,
    num_classes: int,
    methods: Sequence[str] = METHODS,
    k: int | Sequence[int] = 20,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    temperature: float = KNN_TEMPERATURE,
) -> list[LabelEfficiencyResult]:
    """Probe stratified fractions of the training features.

    Args:
        features: train, val and test features.
        fractions: shares of the training samples, each in (0, 1].
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        methods: probes among 'knn' and 'linear'.
        k: k-NN neighbours (or candidates chosen on the validation split).
        weight_decays: the linear probe's penalty grid.
        bootstrap: number of bootstrap resamples of each test metric (0: none).
        seed: seed of the subsampling and of the bootstraps.
        device: where to compute (default: CUDA when available).
        temperature: the k-NN vote temperature.

    Returns:
        One result per fraction (ascending) and method.
    """
    check_task(task, num_classes)
    if not fractions:
        raise ValueError('fractions needs at least one value')
    full = features['train']
    results = []
    for fraction in sorted(fractions):
        train = full.select(stratified_subset(full.labels, fraction, task, seed))
        for result in evaluate_probes(
            features,
            task,
            num_classes,
            methods,
            k,
            weight_decays,
            bootstrap,
            seed,
            device,
            train=train,
            temperature=temperature,
        ):
            results.append(
                LabelEfficiencyResult(f'{fraction:g}', len(train) / len(full), result)
            )
    return results


def partition_label_efficiency(
    backbone: nn.Module,
    datamodule_factory: Callable[[str | None], LightningDataModule],
    partitions: Sequence[str],
    task: str,
    num_classes: int,
    methods: Sequence[str] = METHODS,
    k: int | Sequence[int] = 20,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    features: ExtractedFeatures | None = None,
    temperature: float = KNN_TEMPERATURE,
    **extract_kwargs: Any,
) -> tuple[list[LabelEfficiencyResult], ExtractedFeatures]:
    """Probe the training subsets of a datamodule's partitions.

    Args:
        backbone: the frozen model.
        datamodule_factory: builds the datamodule of a partition name; None
            asks for the full (default) partition.
        partitions: partition names, e.g. ``['0.01x_train', '0.05x_train',
            '0.50x_train']``.
        task: 'multiclass' or 'multilabel'.
        num_classes: number of classes or labels.
        methods: probes among 'knn' and 'linear'.
        k: k-NN neighbours (or candidates chosen on the validation split).
        weight_decays: the linear probe's penalty grid.
        bootstrap: number of bootstrap resamples of each test metric (0: none).
        seed: seed of the bootstraps.
        device: where to compute (default: CUDA when available).
        features: the features of the full partition, if already extracted.
        temperature: the k-NN vote temperature.
        **extract_kwargs: options of
            :func:`~torchgeo_mmearth.evaluation.extract_features` (``bf16``,
            ``progress``, ``cache`` of the full partition, ...).

    Returns:
        One result per partition (in the given order) and method, and the
        features of the full partition.
    """
    check_task(task, num_classes)
    if not partitions:
        raise ValueError('partitions needs at least one name')
    if features is None:
        features = extract_features(
            backbone, datamodule_factory(None), device=device, **extract_kwargs
        )
    extract_kwargs.pop('cache', None)
    full = features['train']
    results = []
    for partition in partitions:
        datamodule = datamodule_factory(partition)
        datamodule.prepare_data()
        datamodule.setup('fit')
        selected: dict[str, SplitFeatures] = {}
        missing = []
        for split in ('train', 'val'):
            ids = dataset_sample_ids(getattr(datamodule, f'{split}_dataset', None))
            if ids is not None and features[split].ids is not None:
                selected[split] = features[split].select_ids(ids)
            else:
                missing.append(split)
        if missing:
            selected.update(
                extract_features(
                    backbone, datamodule, missing, device=device, **extract_kwargs
                ).splits
            )
        for result in evaluate_probes(
            features,
            task,
            num_classes,
            methods,
            k,
            weight_decays,
            bootstrap,
            seed,
            device,
            train=selected['train'],
            val=selected['val'],
            temperature=temperature,
        ):
            results.append(
                LabelEfficiencyResult(
                    partition, len(selected['train']) / len(full), result
                )
            )
    return results, features
