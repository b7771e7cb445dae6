from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule

from torchgeo_mmearth.evaluation import (
    ExtractedFeatures,
    SplitFeatures,
    extract_features,
    label_efficiency,
    load_backbone,
    partition_label_efficiency,
    stratified_subset,
)
from torchgeo_mmearth.evaluation import features as features_module

from .fake_classification import BandMeanDataModule, BandMeanDataset


def gaussian_classes(n: int, seed: int, num_classes: int = 10) -> SplitFeatures:
    """Overlapping Gaussian classes in 32 dimensions: more labels help."""
    centres = torch.randn(num_classes, 32, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    x = centres[labels] + 1.2 * torch.randn(n, 32, generator=generator)
    return SplitFeatures(x, labels)


class TestStratifiedSubset:
    def test_per_class_quota_and_nesting(self) -> None:
        labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 4)
        small = stratified_subset(labels, 0.1, seed=3)
        counts = torch.bincount(labels[small], minlength=3).tolist()
        assert counts == [5, 3, 1]  # round(0.1 * n), at least one per class
        large = stratified_subset(labels, 0.5, seed=3)
        assert set(small.tolist()) <= set(large.tolist())
        assert torch.equal(stratified_subset(labels, 1.0), torch.arange(84))
        assert not torch.equal(small, stratified_subset(labels, 0.1, seed=4))

    def test_multilabel(self) -> None:
        labels = torch.randint(0, 2, (40, 5))
        index = stratified_subset(labels, 0.25, 'multilabel')
        assert len(index) == 10 and len(set(index.tolist())) == 10

    def test_bad_fraction(self) -> None:
        with pytest.raises(ValueError, match=r'fraction must be in \(0, 1\]'):
            stratified_subset(torch.zeros(3), 0.0)


def test_monotone_on_easy_problem() -> None:
    features = ExtractedFeatures(
        {
            'train': gaussian_classes(2000, 1),
            'val': gaussian_classes(500, 2),
            'test': gaussian_classes(2000, 3),
        }
    )
    fractions = [1.0, 0.005, 0.05, 0.25]
    results = label_efficiency(
        features, fractions, 'multiclass', 10, bootstrap=200, device='cpu'
    )
    assert [r.partition for r in results[::2]] == ['0.005', '0.05', '0.25', '1']
    assert [r.fraction for r in results[::2]] == [0.005, 0.05, 0.25, 1.0]
    for method in ('knn', 'linear'):
        curve = [r.result.test for r in results if r.result.method == method]
        assert curve == sorted(curve), (method, curve)
        assert curve[-1] > curve[0] + 0.1
        assert [r.result.num_train for r in results if r.result.method == method] == [
            10,
            100,
            500,
            2000,
        ]
    row = results[0].as_row()
    assert list(row)[:3] == ['partition', 'fraction', 'method']


class NoIdsDataset(BandMeanDataset):
    """The same samples, without sample ids (partitions must be extracted)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.sample_ids


class NoIdsDataModule(BandMeanDataModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_class = NoIdsDataset


def test_partitions_select_by_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    backbone = load_backbone('mmearth_convnextv2_atto', in_channels=12)
    kwargs = {'batch_size': 48, 'size': 8, 'signal': 1.5}
    calls: list[str] = []
    extract = features_module._extract_split

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(args[3])  # the split
        return extract(*args, **kw)

    monkeypatch.setattr(features_module, '_extract_split', counting)

    def results(cls: type[BandMeanDataModule]) -> list[Any]:
        def factory(partition: str | None) -> LightningDataModule:
            return cls(partition=partition, **kwargs)

        rows, features = partition_label_efficiency(
            backbone,
            factory,
            ['0.25x_train', '1.00x_train'],
            'multiclass',
            4,
            bootstrap=0,
            device='cpu',
            progress=False,
        )
        assert len(features['train']) == 96
        return rows

    by_id = results(BandMeanDataModule)
    assert calls == ['train', 'val', 'test']  # the full splits, once
    calls.clear()
    extracted = results(NoIdsDataModule)
    assert calls == ['train', 'val', 'test'] + ['train', 'val'] * 2
    assert [r.partition for r in by_id] == ['0.25x_train'] * 2 + ['1.00x_train'] * 2
    assert [r.fraction for r in by_id] == [0.25, 0.25, 1.0, 1.0]
    for a, b in zip(by_id, extracted, strict=True):
        assert a.result.num_train == b.result.num_train
        assert a.result.test == pytest.approx(b.result.test)


def test_extracted_ids_follow_the_partition() -> None:
    dm = BandMeanDataModule(batch_size=32, size=4, channels=3, partition='0.25x_train')
    features = extract_features(
        torch.nn.Flatten(), dm, ['train'], device='cpu', progress=False
    )
    dataset = BandMeanDataset('train', size=4, channels=3, partition='0.25x_train')
    assert features['train'].ids == tuple(dataset.sample_ids)
