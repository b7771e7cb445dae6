import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import timm
import torch
import torchgeo.main
import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from matplotlib.figure import Figure
from torch.utils.data import default_collate

from tests.conftest import figure_panels, launch_spawned
from tests.models.conftest import official_checkpoint
from torchgeo_mmearth._compat import ClassificationTask, SemanticSegmentationTask
from torchgeo_mmearth.datamodules import MMEarthDataModule, MMEarthStreamingDataModule
from torchgeo_mmearth.losses import masked_patch_mse, patchify
from torchgeo_mmearth.main import export_weights, main
from torchgeo_mmearth.modalities import (
    IGNORE_INDEX,
    MODALITIES,
    Kind,
    Level,
    PretextTask,
    default_pretext_tasks,
)
from torchgeo_mmearth.models import MPMAE, MMEarthWeights, MPMAEOutput, load_checkpoint
from torchgeo_mmearth.trainers import MPMAETask, resume_in_version_folder
from torchgeo_mmearth.trainers.mpmae import plot_reconstruction
from torchgeo_mmearth.trainers.plotting import (
    plot_training_progress,
    reconstruction_panels,
)

CONF = Path(__file__).parents[1] / 'conf'
EXAMPLES = Path(__file__).parents[2] / 'examples' / 'conf'


@pytest.fixture
def official_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCHGEO_MMEARTH_WEIGHTS with a generated MMEarthWeights.S2_MP_MAE file."""
    folder = tmp_path / 'weights'
    path = folder / MMEarthWeights.S2_MP_MAE.meta['checkpoint'] / 'checkpoint-199.pth'
    path.parent.mkdir(parents=True)
    torch.save(official_checkpoint(seed=5), path)
    monkeypatch.setenv('TORCHGEO_MMEARTH_WEIGHTS', str(folder))
    return folder


def small_task(**kwargs: Any) -> MPMAETask:
    kwargs = {
        'decoder_dim': 32,
        'warmup_epochs': 0.5,
        'plot_every_n_steps': None,
        **kwargs,
    }
    return MPMAETask(**kwargs)


def datamodule(root: Path, **kwargs: Any) -> MMEarthDataModule:
    return MMEarthDataModule(
        root=str(root), subset='MMEarth64', **{'batch_size': 2, **kwargs}
    )


def trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    kwargs = {
        'accelerator': 'cpu',
        'max_epochs': 1,
        'default_root_dir': tmp_path,
        'logger': False,
        'enable_progress_bar': False,
        'limit_val_batches': 0,
        'log_every_n_steps': 1,
        **kwargs,
    }
    return Trainer(**kwargs)


def cli_args(config: Path, root: Path, tmp_path: Path) -> list[str]:
    return [
        'fit',
        '--config',
        str(config),
        '--data.init_args.root',
        str(root),
        '--trainer.accelerator',
        'cpu',
        '--trainer.fast_dev_run',
        '1',
        '--trainer.default_root_dir',
        str(tmp_path),
    ]


class TestCLI:
    def test_torchgeo_fit_with_full_class_paths(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        torchgeo.main.main(cli_args(CONF / 'mpmae.yaml', mmearth_root, tmp_path))

    def test_stock_torchgeo_command_runs_the_demo_config(self, tmp_path: Path) -> None:
        # `torchgeo fit --config examples/conf/mpmae_demo.yaml`, TorchGeo's own
        # console script as a user runs it, on whichever TorchGeo is installed.
        command = Path(sys.executable).with_name('torchgeo')
        result = subprocess.run(
            [
                str(command),
                'fit',
                '--config',
                str(EXAMPLES / 'mpmae_demo.yaml'),
                '--trainer.accelerator',
                'cpu',
                '--trainer.fast_dev_run',
                '1',
                '--trainer.default_root_dir',
                str(tmp_path),
                '--data.init_args.num_workers',
                '0',
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'fast_dev_run' in result.stderr + result.stdout
        assert 'DeprecationWarning' not in result.stderr

    @pytest.mark.parametrize('workers', [0, 2])
    def test_ctrl_c_keeps_a_checkpoint_and_resumes(
        self, tmp_path: Path, workers: int
    ) -> None:
        # A fresh `torchgeo-mmearth fit` that sends itself SIGINT (Ctrl-C) during
        # the 4th training step of the demo config (5 steps an epoch).
        interrupting = """
import os, signal, sys
# Ctrl-C as in a terminal, also when the suite runs as a background job
# (whose children inherit SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from torchgeo_mmearth.main import main
from torchgeo_mmearth.trainers import MPMAETask, resume_in_version_folder

training_step = MPMAETask.training_step

def training_step_then_interrupt(self, *args, **kwargs):
    if self.global_step == int(os.environ.get('STOP', -1)):
        os.kill(os.getpid(), signal.SIGINT)
    return training_step(self, *args, **kwargs)

MPMAETask.training_step = training_step_then_interrupt
sys.argv[0] = 'torchgeo-mmearth'
sys.exit(main())
"""

        def fit_args(root: Path) -> list[str]:
            return [
                'fit',
                '--config',
                str(EXAMPLES / 'mpmae_demo.yaml'),
                '--seed_everything',
                '0',
                '--trainer.max_epochs',
                '2',
                '--trainer.default_root_dir',
                str(root),
                '--trainer.logger',
                'false',
                '--trainer.enable_progress_bar',
                'false',
                '--data.init_args.num_workers',
                str(workers),
            ]

        args = fit_args(tmp_path)

        def run(arguments: list[str], stop: int = -1, status: int = 0) -> str:
            result = subprocess.run(
                [sys.executable, '-c', interrupting, *arguments],
                capture_output=True,
                text=True,
                env={**os.environ, 'STOP': str(stop)},
                timeout=600,
                check=False,
            )
            assert result.returncode == status, result.stderr[-3000:]
            assert 'Traceback' not in result.stderr
            return result.stderr

        stderr = run(args, stop=3, status=1)  # Lightning's exit status after Ctrl-C
        saved = tmp_path / 'checkpoints' / 'interrupted.ckpt'
        resume = shlex.join(['torchgeo-mmearth', *args, '--ckpt_path', str(saved)])
        lines = [line for line in stderr.splitlines() if 'Interrupted' in line]
        assert lines == [
            f'Interrupted at epoch 0, step 4: saved {saved}. To resume: {resume}'
        ]
        assert torch.load(saved, weights_only=False)['global_step'] == 4
        # Nothing else: no validation or checkpoint of a partial epoch.
        assert sorted(saved.parent.iterdir()) == [saved]

        stderr = run(shlex.split(resume)[1:])
        assert f'Resumed from {saved}: continuing at epoch 0, step 4' in stderr
        last = torch.load(tmp_path / 'checkpoints' / 'last.ckpt', weights_only=False)
        assert last['global_step'] == 10  # as an uninterrupted run of 2 x 5 steps

        # The same weights, bit for bit, as an uninterrupted run with the same seed:
        # the loader resumes in the epoch's order, the masks from the saved state.
        run(fit_args(tmp_path / 'uninterrupted'))
        uninterrupted = torch.load(
            tmp_path / 'uninterrupted' / 'checkpoints' / 'last.ckpt', weights_only=False
        )
        assert uninterrupted['state_dict'].keys() == last['state_dict'].keys()
        different = [
            key
            for key, value in uninterrupted['state_dict'].items()
            if not torch.equal(value, last['state_dict'][key])
        ]
        assert different == []

    def test_resumed_fit_keeps_its_version_folder(
        self, mmearth_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        def fit(epochs: int, *extra: str) -> None:
            args = cli_args(CONF / 'mpmae.yaml', mmearth_root, tmp_path)
            start = args.index('--trainer.fast_dev_run')
            args[start : start + 2] = ['--trainer.limit_train_batches', '1']
            args += ['--trainer.limit_val_batches', '1', '--trainer.max_epochs']
            assert main([*args, str(epochs), *extra]) == 0

        with caplog.at_level(logging.INFO):
            fit(1)
        logs = tmp_path / 'lightning_logs'
        (first,) = (logs / 'version_0' / 'checkpoints').glob('*.ckpt')
        with caplog.at_level(logging.INFO):
            fit(2, '--ckpt_path', str(first))
        assert [p.name for p in logs.iterdir()] == ['version_0']
        assert len(list((logs / 'version_0').glob('events.out.tfevents*'))) == 2
        # Lightning's advertisements are left out.
        assert not [r for r in caplog.records if 'Tip:' in r.getMessage()]

    def test_plugin_command_with_short_names(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        assert (
            main(cli_args(CONF / 'mpmae_short_names.yaml', mmearth_root, tmp_path)) == 0
        )

    def test_fit_from_shards(self, mmearth_shards: Path, tmp_path: Path) -> None:
        # The tiny config of the HDF5 corpus, with the data section of shards.
        args = cli_args(CONF / 'mpmae_shards.yaml', mmearth_shards, tmp_path)
        args[args.index('--data.init_args.root')] = '--data.init_args.input_dir'
        args[args.index('--trainer.fast_dev_run')] = '--trainer.limit_train_batches'
        args += ['--trainer.max_epochs', '1', '--trainer.logger', 'false']
        args += ['--trainer.limit_val_batches', '1']
        assert main(args) == 0
        (saved,) = (tmp_path / 'checkpoints').glob('*.ckpt')
        corpus = torch.load(saved, weights_only=False)['mmearth']['corpus']
        assert corpus['subset'] == 'MMEarth64'
        assert corpus['root'] == str(mmearth_shards)

    def test_corrupt_chunk_read_by_a_worker_is_one_error_line(
        self, mmearth_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        shards = tmp_path / 'shards'
        shutil.copytree(mmearth_shards, shards)
        chunks = sorted((shards / 'train').glob('*.bin'))
        for chunk in chunks:  # whichever the first batch reads
            data = bytearray(chunk.read_bytes())
            data[len(data) // 2] ^= 1
            chunk.write_bytes(data)
        args = cli_args(CONF / 'mpmae_shards.yaml', shards, tmp_path / 'run')
        args[args.index('--data.init_args.root')] = '--data.init_args.input_dir'
        args += ['--data.init_args.num_workers', '1', '--trainer.logger', 'false']
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(tuple(f'error: {chunk}' for chunk in chunks))
        assert 'Traceback' not in '\n'.join(lines)

    def test_shard_configs_differ_only_in_data(self) -> None:
        pairs = [
            (CONF / 'mpmae.yaml', CONF / 'mpmae_shards.yaml'),
            (
                EXAMPLES / 'mpmae_atto_mmearth64.yaml',
                EXAMPLES / 'mpmae_atto_mmearth64_shards.yaml',
            ),
        ]
        for hdf5, shards in pairs:
            a, b = (yaml.safe_load(p.read_text()) for p in (hdf5, shards))
            assert a.pop('data') != b.pop('data')
            assert a == b

    def test_continue_pretraining_from_official_weights(
        self,
        mmearth_root: Path,
        official_weights_dir: Path,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # `torchgeo-mmearth fit` with weights: MMEarthWeights.S2_MP_MAE, read from
        # TORCHGEO_MMEARTH_WEIGHTS as on a machine without network.
        args = cli_args(CONF / 'mpmae_continue.yaml', mmearth_root, tmp_path)
        args[
            args.index('--trainer.fast_dev_run') : args.index('--trainer.fast_dev_run')
            + 2
        ] = [
            '--trainer.limit_train_batches',
            '1',
            '--trainer.limit_val_batches',
            '0',
            '--trainer.max_epochs',
            '1',
            '--trainer.logger',
            'false',
        ]
        with caplog.at_level(logging.INFO):
            assert main(args) == 0
        (report,) = [
            r.message for r in caplog.records if 'MP-MAE initialised' in r.message
        ]
        assert report.startswith('MP-MAE initialised from MMEarthWeights.S2_MP_MAE:')
        assert 'new (freshly initialised): none' in report
        assert 'unused from the checkpoint: none' in report

        # After one step at lr ~1e-7, every part is still the checkpoint's: nothing
        # was re-initialised (fresh values differ by 1e-2 and more).
        (saved,) = (tmp_path / 'checkpoints').glob('*.ckpt')
        state = torch.load(saved, weights_only=False)['state_dict']
        official = load_checkpoint(
            official_weights_dir
            / MMEarthWeights.S2_MP_MAE.meta['checkpoint']
            / 'checkpoint-199.pth'
        )
        expected = MPMAE('mmearth_convnextv2_atto')
        expected.load_pretrained(official)
        assert state.keys() >= {f'mpmae.{k}' for k in expected.state_dict()}
        for key, value in expected.state_dict().items():
            torch.testing.assert_close(
                state[f'mpmae.{key}'], value, rtol=0, atol=1e-4, msg=key
            )

    @pytest.mark.parametrize(
        'config', sorted(EXAMPLES.glob('*.yaml')), ids=lambda p: p.stem
    )
    def test_example_configs(self, config: Path, official_weights_dir: Path) -> None:
        spec = yaml.safe_load(config.read_text())
        assert spec['model']['class_path'] == 'torchgeo_mmearth.trainers.MPMAETask'
        task = MPMAETask(**spec['model']['init_args'])
        data = spec['data']['init_args']
        assert data.get('input_size', 56) == task.hparams['input_size']
        datamodules = {
            'torchgeo_mmearth.datamodules.MMEarthDataModule': MMEarthDataModule,
            'torchgeo_mmearth.datamodules.MMEarthStreamingDataModule': (
                MMEarthStreamingDataModule
            ),
        }
        datamodules[spec['data']['class_path']](**data)
        with pytest.raises(SystemExit):
            main(['fit', '--config', str(config), '--print_config'])


class TestTraining:
    def test_logs_and_figure(
        self, mmearth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task = small_task(plot_every_n_steps=1)
        run = trainer(
            tmp_path,
            limit_train_batches=2,
            limit_val_batches=1,
            logger=lightning.pytorch.loggers.TensorBoardLogger(tmp_path),
        )
        run.fit(task, datamodule(mmearth_root))
        metrics = run.callback_metrics
        for key in (
            'train_loss',
            'val_loss',
            'train_feature_std',
            'lr',
            'train_valid_sentinel1',
            'train_loss_biome',
            'train_log_var_esa_worldcover',
        ):
            assert key in metrics, key
        assert 0 < metrics['train_feature_std'] < 1
        out = capsys.readouterr().out
        assert 'MP-MAE checkpoint:' in out and 'Reconstruction figure:' in out
        figure = Path(out.split('Reconstruction figure: ')[1].split()[0])
        assert figure.is_file()
        events = list(Path(run.log_dir or '').glob('events.out.tfevents*'))
        assert events and events[0].stat().st_size > 10_000  # holds the figures

    def test_nan_loss_stops_with_the_step_and_task(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        # Every step is non-finite; the second in a row stops the run.
        task = small_task(max_nonfinite_steps=2)
        with torch.no_grad():
            task.mpmae.decoder.heads['aster'].bias.fill_(math.nan)
        with pytest.raises(
            FloatingPointError,
            match=r'the last at step 1 \(max_nonfinite_steps=2\); '
            r"tasks with a non-finite loss: \['aster'\]",
        ):
            trainer(tmp_path, limit_train_batches=2).fit(task, datamodule(mmearth_root))
        with pytest.raises(ValueError, match='max_nonfinite_steps must be >= 1'):
            small_task(max_nonfinite_steps=0)

    def test_wrong_input_size(self, mmearth_root: Path, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError, match=r'image_sentinel2 of shape \(B, 12, 112, 112\)'
        ):
            trainer(tmp_path, limit_train_batches=1).fit(
                small_task(
                    model='mmearth_convnextv2_atto_p16', patch_size=16, input_size=112
                ),
                datamodule(mmearth_root),
            )

    def test_bad_arguments(self) -> None:
        with pytest.raises(
            ValueError, match='input_size 60 must be a multiple of patch_size 8'
        ):
            small_task(input_size=60)
        with pytest.raises(ValueError, match="Unknown target modality 'sentinel3'"):
            small_task(target_modalities=['sentinel3'])


PREDICTED = '\npredicted (masked patches)'


class TestReconstructionFigure:
    @pytest.fixture
    def batch(self, mmearth_root: Path) -> dict[str, Any]:
        """Two tiles through the evaluation pipeline; data in every map of tile 0."""
        dm = datamodule(mmearth_root)
        dm.setup('fit')
        batch: dict[str, Any] = dm.aug(
            default_collate([dm.train_dataset[i] for i in range(2)])
        )
        for modality in MODALITIES.values():
            if modality.level is Level.PIXEL and modality.key in batch:
                tile = batch[modality.key][0]
                if modality.kind is Kind.CATEGORICAL:
                    tile[:] = torch.randint(0, modality.num_classes, tile.shape)
                else:
                    tile[:] = torch.randn(tile.shape)
        return batch

    def draw(self, batch: dict[str, Any]) -> Figure:
        task = small_task()
        with torch.no_grad():
            output = task(batch)
        return plot_reconstruction(batch, output, task.mpmae.tasks, 8)

    def test_every_pixel_task_and_both_sentinel1_passes(
        self, batch: dict[str, Any]
    ) -> None:
        figure = self.draw(batch)
        panels = figure_panels(figure)
        assert panels[4][0].startswith('sentinel2 squared error\n(masked patches, mean')
        del panels[4]
        assert panels == [
            ('Sentinel-2 input', False),
            ('visible patches\n(masked: grey checks)', False),
            ('sentinel2 target', False),
            ('sentinel2 reconstructed\n(masked patches predicted)', False),
            ('sentinel1 asc VV target', False),
            ('sentinel1 asc VV' + PREDICTED, False),
            ('sentinel1 desc VV target', False),
            ('sentinel1 desc VV' + PREDICTED, False),
            ('aster elevation target', False),
            ('aster elevation' + PREDICTED, False),
            ('dynamic_world target', False),
            ('dynamic_world' + PREDICTED, False),
            ('canopy_height_eth height target', False),
            ('canopy_height_eth height' + PREDICTED, False),
            ('esa_worldcover target', False),
            ('esa_worldcover' + PREDICTED, False),
        ]
        for axis in figure.axes:  # none is blank
            image = np.ma.filled(axis.images[0].get_array(), np.nan)
            assert np.isfinite(image).any(), axis.get_title()

    def test_absent_modalities_say_no_data(self, batch: dict[str, Any]) -> None:
        batch['image_sentinel1'][0] = math.nan
        batch['image_aster'][0] = math.nan
        batch['mask_esa_worldcover'][0] = IGNORE_INDEX
        # Canopy height without height: its std is drawn.
        batch['image_canopy_height_eth'][0, 0] = math.nan
        # One panel lists every absent modality, after those with data.
        assert figure_panels(self.draw(batch))[5:] == [
            ('dynamic_world target', False),
            ('dynamic_world' + PREDICTED, False),
            ('canopy_height_eth std target', False),
            ('canopy_height_eth std' + PREDICTED, False),
            ('no data in this tile:\nsentinel1, aster, esa_worldcover', True),
        ]

    def test_descending_pass_only(self, batch: dict[str, Any]) -> None:
        # No ascending pass and no descending VV: descending VH stands for it.
        batch['image_sentinel1'][0, :5] = math.nan
        assert figure_panels(self.draw(batch))[5:7] == [
            ('sentinel1 desc VH target', False),
            ('sentinel1 desc VH' + PREDICTED, False),
        ]

    def test_perfect_norm_pix_prediction_draws_the_target(
        self, batch: dict[str, Any]
    ) -> None:
        target = batch['image_sentinel2'][:1].clone()
        target[0, :, :3, :5] = math.nan  # no-data pixels in patch (0, 0)
        target[0, :, 8:16, 8:16] = math.nan  # patch (1, 1) holds no data
        # Normalised per patch over its valid entries, computed here independently.
        patches = patchify(target.double(), 8)
        valid = patches.isfinite()
        mean = patches.nanmean(-1, keepdim=True)
        count = valid.sum(-1, keepdim=True)
        var = (patches - mean).square().nansum(-1, keepdim=True) / (count - 1)
        normalised = (patches - mean) / (var + 1e-6).sqrt()
        prediction = torch.where(valid, normalised, 0.0).float()
        mask = torch.ones(1, 7, 7, dtype=torch.bool)  # every patch predicted
        assert masked_patch_mse(prediction, target, mask, 8, norm_pix=True).loss < 1e-9
        zero = torch.zeros(())
        output = MPMAEOutput(
            zero, {}, {}, {'sentinel2': prediction}, mask, torch.zeros(1, 8, 7, 7)
        )
        panels = reconstruction_panels(
            {'image_sentinel2': target},
            output,
            [PretextTask('sentinel2', Level.PIXEL, Kind.CONTINUOUS, 12)],
            8,
        )
        assert [panel.title for panel in panels[2:]] == [
            'sentinel2 target',
            'sentinel2 reconstructed\n(masked patches predicted)',
            'sentinel2 squared error\n(masked patches, mean 0.00)',
        ]
        error = panels[4].image
        assert error is not None and np.nanmax(error) < 1e-9
        drawn_target, reconstructed = panels[2].image, panels[3].image
        assert drawn_target is not None and reconstructed is not None
        finite = target[0].isfinite().all(0).numpy()
        np.testing.assert_allclose(
            reconstructed[finite], drawn_target[finite], atol=1e-5
        )
        # Without target data a patch has no statistics: drawn as no data (white).
        assert (reconstructed[8:16, 8:16] == 1).all()

    def test_masked_patches_and_error_scale(self, batch: dict[str, Any]) -> None:
        task = small_task()
        with torch.no_grad():
            output = task(batch, generator=torch.Generator().manual_seed(0))
        panels = reconstruction_panels(batch, output, task.mpmae.tasks, 8)
        visible, error = panels[1].image, panels[4].image
        assert visible is not None and error is not None
        hidden = output.mask[0].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
        # Masked patches: grey checks of 2 px, in every channel; nothing else.
        checks = visible[hidden]
        assert set(np.unique(checks)) == {0.4, 0.65}
        assert (visible[:2, :2] == visible[0, 0]).all()
        # The error of the masked patches only, on the one fixed scale.
        assert np.isnan(error[~hidden]).all() and np.isfinite(error[hidden]).all()
        assert panels[4].options == {'cmap': 'magma', 'vmin': 0.0, 'vmax': 2.0}
        assert f'mean {np.nanmean(error):.2f}' in panels[4].title

    def test_the_figure_tile_has_every_pixel_target(
        self, batch: dict[str, Any]
    ) -> None:
        task = small_task()
        batch['image_sentinel1'][0] = math.nan
        # Tile 1 is given every map; the choice is kept for later batches.
        for modality in MODALITIES.values():
            if modality.level is Level.PIXEL and modality.key in batch:
                batch[modality.key][1] = batch[modality.key][0]
        batch['image_sentinel1'][1] = torch.randn(batch['image_sentinel1'][1].shape)
        assert task._figure_tile(batch) == 1
        batch['image_sentinel1'][:] = math.nan
        assert task._figure_tile(batch) == 1

    def test_bad_arguments(self, batch: dict[str, Any]) -> None:
        task = small_task()
        with torch.no_grad():
            output = task(batch)
        with pytest.raises(
            IndexError, match='index 2 is out of range for a batch of 2'
        ):
            reconstruction_panels(batch, output, task.mpmae.tasks, 8, index=2)
        with pytest.raises(ValueError, match='needs at least one row'):
            plot_training_progress([])


class TestProgressFigure:
    """The figure saved at the end of fit."""

    def fit(
        self,
        mmearth_root: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        **kwargs: Any,
    ) -> tuple[Figure, list[float], list[float]]:
        saved: list[Figure] = []
        savefig = Figure.savefig

        def record(figure: Figure, *args: Any, **kw: Any) -> None:
            saved.append(figure)
            savefig(figure, *args, **kw)

        monkeypatch.setattr(Figure, 'savefig', record)
        steps: list[float] = []
        validation: list[float] = []

        class Record(lightning.Callback):
            def on_train_batch_end(
                self,
                trainer: Trainer,
                module: Any,
                outputs: Any,
                batch: Any,
                index: int,
            ) -> None:
                steps.append(float(outputs['loss']))

            def on_validation_epoch_end(self, trainer: Trainer, module: Any) -> None:
                if not trainer.sanity_checking:
                    validation.append(float(trainer.callback_metrics['val_loss']))

        task = small_task(plot_every_n_steps=kwargs.pop('plot_every_n_steps', None))
        run = trainer(tmp_path, callbacks=[Record()], **kwargs)
        run.fit(task, datamodule(mmearth_root))
        assert len(saved) == 1 and (tmp_path / 'reconstruction.png').is_file()
        return saved[0], steps, validation

    def test_first_and_last_epoch_of_the_same_validation_tile(
        self, mmearth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        figure, steps, validation = self.fit(
            mmearth_root,
            tmp_path,
            monkeypatch,
            max_epochs=2,
            limit_train_batches=2,
            limit_val_batches=1,
            num_sanity_val_steps=0,
        )
        *images, curves, per_task = figure.axes
        rows = [images[: len(images) // 2], images[len(images) // 2 :]]
        assert [row[0].get_ylabel() for row in rows] == [
            'validation tile\nepoch 1, step 2',
            'validation tile\nepoch 2, step 4',
        ]
        assert [axis.get_title() for axis in rows[0]] == [
            axis.get_title() for axis in rows[1]
        ]
        # The same tile and mask in both rows: input and visible patches are equal.
        for first, last in zip(rows[0][:2], rows[1][:2], strict=True):
            np.testing.assert_array_equal(
                first.images[0].get_array(), last.images[0].get_array()
            )
        assert curves.get_title() == 'total loss, uncertainty-weighted'
        train, val = curves.get_lines()
        assert train.get_label() == 'training (epoch mean)'
        assert val.get_label() == 'validation'
        assert list(train.get_xdata()) == list(val.get_xdata()) == [2, 4]
        # The logged losses, neither smoothed nor picked: epoch means of the steps.
        epoch_means = torch.tensor(steps).reshape(2, 2).mean(1).tolist()
        np.testing.assert_allclose(train.get_ydata(), epoch_means, rtol=1e-5)
        np.testing.assert_allclose(val.get_ydata(), validation, rtol=1e-5)
        # Each task's training loss per epoch, relative to its first epoch.
        assert [line.get_label() for line in per_task.get_lines()] == [
            task.name for task in default_pretext_tasks()
        ]
        for line in per_task.get_lines():
            assert list(line.get_xdata()) == [2, 4]
            assert line.get_ydata()[0] == 1
        assert 'masked patches, in the loss' in figure.get_supxlabel()

    def test_without_validation_rows_are_training_batches(
        self, mmearth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        figure, _, _ = self.fit(
            mmearth_root,
            tmp_path,
            monkeypatch,
            max_epochs=2,
            limit_train_batches=1,
            plot_every_n_steps=1,
        )
        labels = [axis.get_ylabel() for axis in figure.axes if axis.get_ylabel()]
        assert labels == [
            'training batch\nepoch 1, step 0',
            'training batch\nepoch 2, step 1',
        ]
        assert [line.get_label() for line in figure.axes[-2].get_lines()] == [
            'training (epoch mean)'
        ]


def test_loss_falls_on_the_demo_corpus(tmp_path: Path) -> None:
    """A short real run on real radiometry: training and validation losses fall."""
    torch.manual_seed(0)
    task = small_task(
        target_modalities=['sentinel2'], decoder_dim=64, lr=2e-3, warmup_epochs=1
    )
    dm = MMEarthDataModule(subset='MMEarthDemo', modalities=['sentinel2'], batch_size=8)
    steps: list[float] = []
    validation: list[float] = []

    class Record(lightning.Callback):
        def on_train_batch_end(
            self, trainer: Trainer, module: Any, outputs: Any, batch: Any, index: int
        ) -> None:
            steps.append(float(outputs['loss']))

        def on_validation_epoch_end(self, trainer: Trainer, module: Any) -> None:
            if not trainer.sanity_checking:
                validation.append(float(trainer.callback_metrics['val_loss']))

    epochs = 6
    run = trainer(
        tmp_path, max_epochs=epochs, limit_val_batches=None, callbacks=[Record()]
    )
    run.fit(task, dm)
    per_epoch = torch.tensor(steps).reshape(epochs, -1).mean(1)  # 40 tiles: 5 steps
    assert per_epoch[-1] < 0.93 * per_epoch[0]
    assert validation[-1] < validation[0]


class LearningRates(lightning.Callback):
    """The learning rate of every optimizer step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, module: Any, optimizer: torch.optim.Optimizer
    ) -> None:
        self.values.append(float(optimizer.param_groups[0]['lr']))


class TestOptimisation:
    def test_recipe(self, mmearth_root: Path, tmp_path: Path) -> None:
        task = small_task(warmup_epochs=1.0)
        learning_rates = LearningRates()
        run = trainer(
            tmp_path,
            max_epochs=4,
            limit_train_batches=3,
            accumulate_grad_batches=1,
            callbacks=[learning_rates],
        )
        run.fit(task, datamodule(mmearth_root, batch_size=2))
        optimizer = run.optimizers[0]
        assert optimizer.defaults['betas'] == (0.9, 0.95)
        assert optimizer.defaults['fused']
        decay = {
            id(p)
            for g in optimizer.param_groups
            if g['weight_decay'] == 0.05
            for p in g['params']
        }
        for name, parameter in task.named_parameters():
            # GRN decayed as MMEarth-train's (1, 1, 1, C) gamma and beta.
            expected = parameter.ndim > 1 and not name.endswith('.bias')
            assert (id(parameter) in decay) == (expected or '.grn.' in name), name
        assert 'mpmae.criterion.weighting.log_vars' in dict(task.named_parameters())
        assert run.lr_scheduler_configs == []  # set by the task before every step
        # 12 optimizer steps at epochs 0, 1/3, ..., 11/3: 3 of warm-up, 9 of cosine.
        lr = 1.5e-4 * 2 / 256
        expected_lr = [
            lr * epoch
            if epoch < 1
            else lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / 3))
            for epoch in (step / 3 for step in range(12))
        ]
        assert learning_rates.values == pytest.approx(expected_lr, rel=1e-12, abs=0)
        # After the last step, the cosine's end.
        assert float(optimizer.param_groups[0]['lr']) == pytest.approx(0, abs=1e-20)

    def test_accumulation_drops_the_remainder(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        # 3 micro-batches an epoch, accumulated by 2: one step, the third dropped.
        task = small_task(warmup_epochs=1.0, lr=1e-3)
        learning_rates = LearningRates()
        run = trainer(
            tmp_path,
            max_epochs=2,
            limit_train_batches=3,
            accumulate_grad_batches=2,
            callbacks=[learning_rates],
        )
        run.fit(task, datamodule(mmearth_root, batch_size=1))
        # Steps at epochs 0 and 1 (MMEarth-train's adjust_learning_rate at the
        # micro-batch starting the window, 0 / 3 + epoch).
        assert learning_rates.values == [0.0, pytest.approx(1e-3 * 0.5 * (1 + 1))]
        # Lightning calls the dropped window a step: 2 per epoch.
        assert run.global_step == 4
        state = run.optimizers[0].state
        assert all(s['step'] == 2 for s in state.values())

    def test_learning_rate_scales_with_accumulation(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        task = small_task()
        run = trainer(tmp_path, limit_train_batches=2, accumulate_grad_batches=2)
        run.fit(task, datamodule(mmearth_root, batch_size=3))
        assert run.optimizers[0].defaults['lr'] == pytest.approx(1.5e-4 * 6 / 256)

    def test_lr_overrides_the_scaled_rate(
        self, mmearth_root: Path, tmp_path: Path
    ) -> None:
        run = trainer(tmp_path, limit_train_batches=1)
        run.fit(small_task(lr=1e-3), datamodule(mmearth_root))
        assert run.optimizers[0].defaults['lr'] == 1e-3


class TestCheckpoints:
    @pytest.fixture
    def checkpoint(self, mmearth_root: Path, tmp_path: Path) -> Path:
        run = trainer(tmp_path, limit_train_batches=2, enable_checkpointing=True)
        run.fit(small_task(), datamodule(mmearth_root))
        path = tmp_path / 'mpmae.ckpt'
        run.save_checkpoint(path)
        return path

    def test_continue_from_a_checkpoint_of_this_task(self, checkpoint: Path) -> None:
        # A real Lightning checkpoint of MPMAETask as weights, with fewer targets.
        source = MPMAETask.load_from_checkpoint(checkpoint)
        task = small_task(weights=str(checkpoint), target_modalities=['biome', 'aster'])
        assert task.pretrained is not None
        assert task.pretrained.new == {}
        names = [t.name for t in source.mpmae.tasks]
        assert len(names) == 12
        assert set(task.pretrained.unused) == {
            f'{part} {name}'
            for name in names
            if name not in ('biome', 'aster')
            for part in ('head', 'log-variance')
        }
        expected = source.mpmae.state_dict()
        for key, value in task.mpmae.state_dict().items():
            if key != 'criterion.weighting.log_vars':
                torch.testing.assert_close(value, expected[key], msg=key)
        log_vars = source.mpmae.criterion.weighting.log_vars
        torch.testing.assert_close(
            task.mpmae.criterion.weighting.log_vars,
            log_vars[[names.index('biome'), names.index('aster')]],
        )

    def test_weights_of_another_patch_size(self, tmp_path: Path) -> None:
        path = tmp_path / 'checkpoint-199.pth'
        torch.save(official_checkpoint(patch_size=16), path)
        with pytest.raises(ValueError, match=f'weights {path}: .*patch size'):
            small_task(weights=str(path))

    def test_torchgeo_classification_task_reuses_the_encoder(
        self, checkpoint: Path
    ) -> None:
        task = MPMAETask.load_from_checkpoint(checkpoint)
        classifier = ClassificationTask(
            model='mmearth_convnextv2_atto',
            weights=str(checkpoint),
            in_channels=12,
            num_classes=5,
        )
        pretrained = task.model.state_dict()
        for key, value in classifier.model.state_dict().items():
            if not key.startswith('head.'):
                assert torch.equal(value, pretrained[key]), key

    def test_export_weights(
        self, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / 'encoder.pth'
        assert main(['export-weights', str(checkpoint), str(out)]) == 0
        assert 'encoder weights written' in capsys.readouterr().out
        exported = torch.load(out, weights_only=True)
        meta = exported['meta']
        assert meta['model'] == 'mmearth_convnextv2_atto' and meta['in_chans'] == 12
        assert meta['patch_size'] == 8 and meta['input_size'] == 56
        assert meta['corpus'] == 'MMEarth64' and len(meta['bands']) == 12
        model = timm.create_model(
            meta['model'], pretrained=True, pretrained_cfg_overlay={'file': str(out)}
        )
        task = MPMAETask.load_from_checkpoint(checkpoint)
        encoder = task.model.state_dict()
        for key, value in encoder.items():
            assert torch.equal(model.state_dict()[key], value), key
        # TorchGeo's own tasks take the file as weights='<file>'.
        classifier = ClassificationTask(
            model=meta['model'], weights=str(out), in_channels=12, num_classes=5
        )
        segmentation = SemanticSegmentationTask(
            model='unet',
            backbone=meta['model'],
            weights=str(out),
            in_channels=12,
            num_classes=2,
        )
        # So does the enum of the same architecture (a file given by path).
        from_enum = MMEarthWeights.S2_MP_MAE.get_state_dict(str(out))
        for key, value in encoder.items():
            if key.startswith(('norm.', 'head.')):
                continue
            assert torch.equal(classifier.model.state_dict()[key], value), key
            assert torch.equal(segmentation.model.encoder.state_dict()[key], value)
            assert torch.equal(from_enum[key], value), key

    def test_export_weights_refuses_other_files(self, tmp_path: Path) -> None:
        path = tmp_path / 'other.ckpt'
        torch.save({'state_dict': {}, 'hyper_parameters': {}}, path)
        with pytest.raises(
            ValueError,
            match='is not a checkpoint of MPMAETask: it is a Lightning checkpoint of another task',
        ):
            export_weights(path, tmp_path / 'out.pth')

    def test_resume_continues_the_run(self, mmearth_root: Path, tmp_path: Path) -> None:
        def run(directory: str, epochs: int) -> tuple[Trainer, ModelCheckpoint]:
            callback = ModelCheckpoint(dirpath=tmp_path / directory, save_last=True)
            return trainer(
                tmp_path,
                max_epochs=epochs,
                limit_train_batches=2,
                callbacks=[callback],
                enable_checkpointing=True,
            ), callback

        first, callback = run('ckpt', 2)
        first.fit(small_task(), datamodule(mmearth_root))
        assert first.global_step == 4
        resumed, _ = run('ckpt', 4)
        resumed.fit(
            small_task(), datamodule(mmearth_root), ckpt_path=callback.last_model_path
        )
        assert resumed.global_step == 8
        # The schedule went on from step 4 of an 8-step run, not from step 0.
        uninterrupted, _ = run('reference', 4)
        uninterrupted.fit(small_task(), datamodule(mmearth_root))
        lr = resumed.optimizers[0].param_groups[0]['lr']
        assert lr == pytest.approx(uninterrupted.optimizers[0].param_groups[0]['lr'])
        state = resumed.optimizers[0].state
        assert all(s['step'] == 8 for s in state.values())  # AdamW moments carried on

    def test_resumed_run_keeps_its_folder_and_history(
        self, mmearth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        saved: list[Figure] = []
        savefig = Figure.savefig

        def record(figure: Figure, *args: Any, **kw: Any) -> None:
            saved.append(figure)
            savefig(figure, *args, **kw)

        monkeypatch.setattr(Figure, 'savefig', record)

        def run(epochs: int) -> Trainer:
            return trainer(
                tmp_path,
                max_epochs=epochs,
                limit_train_batches=2,
                limit_val_batches=1,
                num_sanity_val_steps=0,
                logger=lightning.pytorch.loggers.TensorBoardLogger(tmp_path),
                callbacks=[ModelCheckpoint(save_last=True)],
            )

        run(1).fit(small_task(), datamodule(mmearth_root))
        last = tmp_path / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'
        assert last.is_file()
        resumed = run(2)
        assert resume_in_version_folder(resumed, last) == last.parent.parent
        resumed.fit(small_task(), datamodule(mmearth_root), ckpt_path=last)
        # The same folder, not version_1; its figure covers both epochs.
        assert [p.name for p in (tmp_path / 'lightning_logs').iterdir()] == [
            'version_0'
        ]
        assert resumed.log_dir == str(last.parent.parent)
        assert (last.parent.parent / 'reconstruction.png').is_file()
        *images, curves, _ = saved[-1].axes
        train, val = curves.get_lines()
        assert list(train.get_xdata()) == list(val.get_xdata()) == [2, 4]
        assert [images[0].get_ylabel(), images[len(images) // 2].get_ylabel()] == [
            'validation tile\nepoch 1, step 2',
            'validation tile\nepoch 2, step 4',
        ]


@pytest.mark.slow
def test_distributed_pretraining(mmearth_root: Path, tmp_path: Path) -> None:
    """Two gloo processes, each with a DataLoader worker and its own HDF5 handle."""

    def fit() -> None:
        callback = ModelCheckpoint(dirpath=tmp_path / 'ckpt', save_last=True)
        run = trainer(
            tmp_path,
            devices=2,
            strategy=lightning.pytorch.strategies.DDPStrategy(
                start_method='spawn', process_group_backend='gloo'
            ),
            limit_train_batches=2,
            callbacks=[callback],
        )
        run.fit(small_task(), datamodule(mmearth_root, num_workers=1))

    launch_spawned(fit)
    checkpoint = torch.load(tmp_path / 'ckpt' / 'last.ckpt', weights_only=True)
    # 6 training tiles: 3 per rank, so one full batch of 2 per rank and epoch.
    assert checkpoint['global_step'] == 1
    assert checkpoint['mmearth']['corpus']['subset'] == 'MMEarth64'
