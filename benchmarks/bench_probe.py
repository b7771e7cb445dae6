"""Fast frozen-feature linear probe against TorchGeo's Lightning linear probe.

Both evaluate the same frozen backbone (an MMEarth ConvNeXt V2,
https://arxiv.org/abs/2405.02771, with seeded random weights loaded from one
checkpoint file by both) on the same datamodule and splits, all in one run:

* ``lightning``: TorchGeo's ``ClassificationTask(freeze_backbone=True)`` trained
  by a Lightning ``Trainer`` for a fixed number of epochs (MMEarth's linear
  probing also runs a fixed schedule and tests the last epoch), then
  ``trainer.test``. The backbone runs on every batch of every epoch;
* ``fast``: :func:`~torchgeo_mmearth.evaluation.extract_features` once, then
  the L-BFGS linear probe with its L2 penalty chosen on the validation split
  (:func:`~torchgeo_mmearth.evaluation.select_linear_probe`) and the test
  metric with its bootstrap interval; the k-NN probe is timed separately.

It prints both test accuracies, their difference with the paired bootstrap
interval of that difference (resampling the test set), both wall times and their
ratio, and the validation loss of the Lightning probe along its epochs to show
that it has converged. It also checks that Lightning's trained classifier, applied
to the extracted test features, reproduces Lightning's own test accuracy: the
features are exactly those the frozen backbone gives inside Lightning.

The data is synthetic (``tests/evaluation/fake_classification.py``: the class
raises the mean of one band), so the accuracies say nothing about MMEarth or
GEO-Bench; the agreement and the timings are what is measured. The ratio grows
with the number of epochs (about ``epochs * (train + val) / (train + val +
test)`` when the backbone dominates). Run by hand from the repository root::

    python benchmarks/bench_probe.py --threads 1
    python benchmarks/bench_probe.py --threads 1 --test 1024 --epochs 100
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from torchgeo_mmearth._compat import ClassificationTask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.evaluation.fake_classification import BandMeanDataModule
from torchgeo_mmearth.evaluation import (
    bootstrap_ci,
    compute_metric,
    evaluate_knn,
    extract_features,
    load_backbone,
    select_linear_probe,
)


class ValLoss(Callback):
    """Record the validation loss after every epoch."""

    def __init__(self) -> None:
        """Initialize a new ValLoss instance."""
        self.values: list[float] = []

    def on_validation_epoch_end(
        self, trainer: Trainer, module: LightningModule
    ) -> None:
        """Keep the epoch's validation loss (not the sanity check's)."""
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics['val_loss']))


def _weights(model: str, in_channels: int, seed: int, folder: Path) -> Path:
    """Seeded random backbone weights in the layout of TorchGeo's checkpoints."""
    torch.manual_seed(seed)
    state = load_backbone(model, in_channels=in_channels).state_dict()
    path = folder / 'backbone.ckpt'
    torch.save(
        {
            'hyper_parameters': {'model': model},
            'state_dict': {f'model.{k}': v for k, v in state.items()},
        },
        path,
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='mmearth_convnextv2_atto')
    parser.add_argument('--size', type=int, default=8, help='image size (px)')
    parser.add_argument('--channels', type=int, default=12)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--signal', type=float, default=1.0, help='class signal')
    parser.add_argument('--train', type=int, default=1024)
    parser.add_argument('--val', type=int, default=256)
    parser.add_argument('--test', type=int, default=512)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--lr', type=float, default=0.01, help='Lightning AdamW lr')
    parser.add_argument('--bootstrap', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data: dict[str, Any] = {
        'batch_size': args.batch_size,
        'size': args.size,
        'channels': args.channels,
        'num_classes': args.classes,
        'signal': args.signal,
        'seed': args.seed,
        'lengths': {'train': args.train, 'val': args.val, 'test': args.test},
    }
    task_name = 'multiclass'
    print(
        f'{args.model}, {args.channels} x {args.size} x {args.size} px, '
        f'{args.classes} classes, train/val/test {args.train}/{args.val}/{args.test}, '
        f'batch {args.batch_size}, {args.threads} thread(s), '
        f'torch {torch.__version__} on {"cuda" if torch.cuda.is_available() else "cpu"}'
    )

    with tempfile.TemporaryDirectory() as folder:
        weights = _weights(args.model, args.channels, args.seed, Path(folder))

        # Fast: features once, then the probe.
        start_fast = time.perf_counter()
        backbone = load_backbone(args.model, weights, in_channels=args.channels)
        features = extract_features(
            backbone, BandMeanDataModule(**data), device='cpu', progress=False
        )
        extracted = time.perf_counter()
        probe, _ = select_linear_probe(
            features['train'], features['val'], task_name, args.classes, device='cpu'
        )
        test = features['test']
        fast_scores = probe.predict_proba(test.features)
        fast = compute_metric(fast_scores, test.labels, task_name, args.classes)
        fast_ci = bootstrap_ci(
            fast_scores, test.labels, task_name, args.bootstrap, seed=args.seed
        )
        fast_seconds = time.perf_counter() - start_fast
        knn = evaluate_knn(
            features['train'],
            features['val'],
            test,
            task_name,
            args.classes,
            k=[10, 20],
            bootstrap=args.bootstrap,
            device='cpu',
        )

        # Lightning: TorchGeo's linear probe on the same weights and data.
        start = time.perf_counter()
        seed_everything(args.seed, verbose=False)
        task = ClassificationTask(
            model=args.model,
            weights=str(weights),
            in_channels=args.channels,
            num_classes=args.classes,
            freeze_backbone=True,
            lr=args.lr,
            patience=args.epochs,  # no plateau schedule within the run
        )
        val_loss = ValLoss()
        trainer = Trainer(
            accelerator='cpu',
            max_epochs=args.epochs,
            logger=False,
            callbacks=[val_loss],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        datamodule = BandMeanDataModule(**data)
        trainer.fit(task, datamodule)
        lightning = trainer.test(task, datamodule, verbose=False)[0][
            'test_OverallAccuracy'
        ]
        lightning_seconds = time.perf_counter() - start

    with torch.no_grad():
        lightning_scores = task.model.get_classifier()(test.features)
    replayed = compute_metric(lightning_scores, test.labels, task_name, args.classes)
    lightning_ci = bootstrap_ci(
        lightning_scores, test.labels, task_name, args.bootstrap, seed=args.seed
    )
    low, high = bootstrap_ci(
        fast_scores,
        test.labels,
        task_name,
        args.bootstrap,
        seed=args.seed,
        reference=lightning_scores,
    )

    every = max(1, args.epochs // 6)
    curve = ', '.join(
        f'{epoch + 1}: {value:.4f}'
        for epoch, value in enumerate(val_loss.values)
        if (epoch + 1) % every == 0 or epoch + 1 == len(val_loss.values)
    )
    print(f'Lightning val_loss by epoch: {curve}')
    print(
        f"Lightning's classifier on the extracted test features: accuracy "
        f'{replayed:.4f} (Lightning reports {lightning:.4f})'
    )
    print()
    print(
        '| probe | test OverallAccuracy | 95 % bootstrap CI | wall s | vs Lightning |'
    )
    print('|---|---|---|---|---|')
    print(
        f'| Lightning ClassificationTask, {args.epochs} epochs | {lightning:.4f} | '
        f'[{lightning_ci[0]:.4f}, {lightning_ci[1]:.4f}] | {lightning_seconds:.1f} '
        '| 1.0x |'
    )
    print(
        f'| fast linear: extraction {extracted - start_fast:.1f} s + L-BFGS '
        f'{fast_seconds - (extracted - start_fast):.1f} s | {fast:.4f} | '
        f'[{fast_ci[0]:.4f}, {fast_ci[1]:.4f}] | {fast_seconds:.1f} | '
        f'{lightning_seconds / fast_seconds:.1f}x faster |'
    )
    print(
        f'| fast k-NN (k={knn.value:g}), on the same features | {knn.test:.4f} | '
        f'[{knn.ci_low:.4f}, {knn.ci_high:.4f}] | +{knn.seconds:.2f} | |'
    )
    print()
    verdict = 'within noise' if low <= 0 <= high else 'NOT within noise'
    print(
        f'fast - Lightning = {fast - lightning:+.4f}; paired 95 % bootstrap CI of '
        f'the difference [{low:+.4f}, {high:+.4f}]: {verdict}'
    )


if __name__ == '__main__':
    main()
