from pathlib import Path

import torch
from lightning.pytorch import Trainer

from tests.trainers.test_classification import MICRO_F1
from torchgeo_mmearth._compat import ClassificationTask
from torchgeo_mmearth.datamodules.bigearthnet_demo import BigEarthNetDemoDataModule


class TestBigEarthNetDemoDataModule:
    def test_batches_are_normalised(self, tmp_path: Path) -> None:
        dm = BigEarthNetDemoDataModule(tmp_path, batch_size=40)
        dm.setup('fit')
        batch = next(iter(dm.train_dataloader()))
        assert batch['image'].shape == (40, 12, 64, 64)
        batch = dm.aug(batch)
        # z-scores with the corpus statistics: the 40 training tiles (whose
        # statistics the corpus holds) have band means near 0.
        means = batch['image'].mean(dim=(0, 2, 3))
        assert means.abs().max() < 0.5
        assert batch['label'].shape == (40, 43)
        assert dm.num_labels == 43

    def test_classification_task(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        dm = BigEarthNetDemoDataModule(tmp_path, batch_size=8)
        task = ClassificationTask(
            model='mmearth_convnextv2_atto',
            in_channels=12,
            task='multilabel',
            num_labels=dm.num_labels,
            loss='bce',
        )
        trainer = Trainer(
            max_epochs=1,
            limit_train_batches=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(task, dm)
        (metrics,) = trainer.test(task, dm, verbose=False)
        assert 0 <= metrics[MICRO_F1] <= 1
