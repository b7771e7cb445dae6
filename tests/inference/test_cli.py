import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from torchgeo_mmearth.main import main

from .conftest import PATCH, write_stack


def test_embed(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raster, parquet = tmp_path / 'emb.tif', tmp_path / 'chips.parquet'
    args = [
        'embed',
        str(PATCH),
        '--weights',
        str(weights_p8),
        '--raster',
        str(raster),
        '--parquet',
        str(parquet),
        '--chip-size',
        '120',
        '--margin',
        '0',
        '--batch-size',
        '2',
        '--no-progress',
    ]
    assert main(args) == 0
    assert (
        '1 chips (0 without data) of 120 x 120 px embedded' in capsys.readouterr().out
    )
    with rasterio.open(raster) as src:
        assert src.count == 320 and src.shape == (15, 15)
        options = json.loads(src.tags()['TORCHGEO_MMEARTH'])['options']
        assert options['chip_size'] == 120 and options['batch_size'] == 2
    assert len(gpd.read_parquet(parquet)) == 1
    # Outputs are not replaced silently.
    assert main(args) == 1
    assert 'overwrite' in capsys.readouterr().err
    assert main([*args, '--overwrite']) == 0


def test_dataset_class_path(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_stack(tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif')
    args = ['embed', str(tmp_path), '--weights', str(weights_p8), '--no-progress']
    out = tmp_path / 'out.tif'
    dataset = ['--dataset', 'tests.inference.conftest.Stack', '--level', 'l2a']
    assert (
        main(
            [
                *args,
                '--raster',
                str(out),
                *dataset,
                '--chip-size',
                '120',
                '--margin',
                '0',
            ]
        )
        == 0
    )
    with rasterio.open(out) as src:
        assert src.count == 320 and src.shape == (15, 15)
    assert main([*args, '--raster', str(out), '--dataset', 'no.such.Class']) == 1
    assert 'not an importable class' in capsys.readouterr().err


def test_errors(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(['embed', str(PATCH), '--weights', str(weights_p8)]) == 2
    assert '--raster, --parquet or both' in capsys.readouterr().err
    args = ['embed', str(PATCH), '--weights', str(weights_p8), '--raster']
    assert main([*args, str(tmp_path / 'a.tif'), '--chip-size', '60']) == 1
    assert 'multiples of the patch size 8' in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(['embed', '--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert '--weights' in out and 'GeoParquet' in out


def test_interrupted_run_says_how_to_continue(
    weights_p8: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr('torchgeo_mmearth.inference.embedding.embed', interrupted)
    args = ['embed', str(PATCH), '--weights', str(weights_p8), '--raster', 'a.tif']
    assert main(args) == 130
    err = capsys.readouterr().err
    assert 'finished batches are kept' in err
    assert f'To continue: torchgeo-mmearth embed {PATCH}' in err
