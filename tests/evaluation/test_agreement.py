"""The fast linear probe agrees with TorchGeo's Lightning linear probe.

TorchGeo's ``ClassificationTask(freeze_backbone=True)`` trained with Lightning on
the same backbone, weights, datamodule and split: its test accuracy and the fast
probe's differ by less than the noise (the paired bootstrap interval of their
difference holds 0). ``benchmarks/bench_probe.py`` measures the same at a larger
scale, with timings.
"""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from torchgeo_mmearth._compat import ClassificationTask
from torchgeo_mmearth.evaluation import (
    bootstrap_ci,
    compute_metric,
    evaluate_linear,
    extract_features,
    load_backbone,
    select_linear_probe,
)

from .fake_classification import BandMeanDataModule

MODEL = 'mmearth_convnextv2_atto'


def test_fast_probe_agrees_with_lightning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = load_backbone(MODEL, in_channels=12).state_dict()
    weights = tmp_path / 'backbone.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': MODEL},
            'state_dict': {f'model.{k}': v for k, v in state.items()},
        },
        weights,
    )
    kwargs = {'batch_size': 16, 'size': 8, 'signal': 1.0, 'seed': 1}

    backbone = load_backbone(MODEL, weights, in_channels=12)
    features = extract_features(
        backbone, BandMeanDataModule(**kwargs), device='cpu', progress=False
    )
    fast = evaluate_linear(
        features['train'], features['val'], features['test'], 'multiclass', 4
    )

    seed_everything(0, verbose=False)
    task = ClassificationTask(
        model=MODEL,
        weights=str(weights),
        in_channels=12,
        num_classes=4,
        freeze_backbone=True,
        lr=0.02,
        patience=1000,
    )
    trainer = Trainer(
        accelerator='cpu',
        max_epochs=20,  # 120 AdamW steps: converged on this problem
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = BandMeanDataModule(**kwargs)
    trainer.fit(task, datamodule)
    lightning = trainer.test(task, datamodule, verbose=False)[0]['test_OverallAccuracy']

    # Lightning's classifier on the extracted features reproduces its test
    # accuracy: the features are exactly those its frozen backbone computes.
    test = features['test']
    with torch.no_grad():
        lightning_scores = task.model.get_classifier()(test.features)
    assert compute_metric(lightning_scores, test.labels, 'multiclass', 4) == (
        pytest.approx(lightning)
    )
    assert 0.6 < fast.test < 1.0  # neither trivial nor hopeless
    assert abs(fast.test - lightning) <= 0.1
    # Within noise: the paired bootstrap interval of the difference holds 0.
    probe, _ = select_linear_probe(
        features['train'], features['val'], 'multiclass', 4, device='cpu'
    )
    fast_scores = probe.predict_proba(test.features)
    assert compute_metric(fast_scores, test.labels, 'multiclass', 4) == fast.test
    low, high = bootstrap_ci(
        fast_scores, test.labels, 'multiclass', reference=lightning_scores
    )
    assert low <= 0 <= high, (fast.test, lightning, low, high)
