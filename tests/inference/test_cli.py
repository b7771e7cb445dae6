import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from torchgeo_mmearth.main import main

from .conftest import BIGEARTHNET_BANDS, PATCH, write_stack


def embed_one_chip(inputs: Path, weights: Path, out: Path, *flags: str) -> int:
    """``embed`` of one 120 x 120 chip into the GeoParquet *out*."""
    args = ['embed', str(inputs), '--weights', str(weights), '--parquet', str(out)]
    chip = ['--chip-size', '120', '--margin', '0', '--no-progress']
    return main([*args, *chip, *flags])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line on stderr, without its prefix."""
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    return err.removeprefix('error: ')


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
    # Outputs are not replaced silently; the advice is the flag.
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f'error: {raster} exists; add --overwrite to replace it\n'
    )
    assert main([*args, '--overwrite']) == 0
    # A VRT's tiles are an output too.
    vrt = tmp_path / 'emb.vrt'
    (tmp_path / 'emb_tiles').mkdir()
    renamed = {str(raster): str(vrt), str(parquet): str(tmp_path / 'vrt.parquet')}
    vrt_args = [renamed.get(arg, arg) for arg in args]
    assert main(vrt_args) == 2
    assert capsys.readouterr().err == (
        f'error: {tmp_path / "emb_tiles"} exists; add --overwrite to replace it\n'
    )
    assert main([*vrt_args, '--overwrite']) == 0
    assert [p.name for p in (tmp_path / 'emb_tiles').iterdir()] == [
        'block_0000_0000.tif'
    ]


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
    other = str(tmp_path / 'other.tif')
    assert main([*args, '--raster', other, '--dataset', 'no.such.Class']) == 2
    assert 'not an importable class' in capsys.readouterr().err


def test_errors(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(['embed', str(PATCH), '--weights', str(weights_p8)]) == 2
    assert '--raster, --parquet or both' in capsys.readouterr().err
    args = ['embed', str(PATCH), '--weights', str(weights_p8), '--raster']
    assert main([*args, str(tmp_path / 'a.tif'), '--chip-size', '60']) == 2
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
    assert 'finished blocks are kept' in err
    assert f'To continue: torchgeo-mmearth embed {PATCH}' in err


def test_date_flag_dates_every_input(weights_p8: Path, tmp_path: Path) -> None:
    """--date comes before the date in PATCH's file names (2017-06-13)."""
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(PATCH, weights_p8, out, '--date', '2020-01-13') == 0
    assert (gpd.read_parquet(out)['date'] == np.datetime64('2020-01-13')).all()


def test_bad_date_is_one_line(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(PATCH, weights_p8, out, '--date', '2020-13-01') == 2
    message = one_error_line(capsys)
    assert message.startswith("--date: '2020-13-01' is not an ISO date")


def test_iso_named_scene(weights_p8: Path, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / 'S2A_MSIL2A_T33UUP_2020-01-13_stack.tif')
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(stack, weights_p8, out) == 0
    assert (gpd.read_parquet(out)['date'] == np.datetime64('2020-01-13')).all()


def test_tiff_tag_dated_scene(weights_p8: Path, tmp_path: Path) -> None:
    stack = write_stack(tmp_path / 'S2A_MSIL2A_stack.tif')
    with rasterio.open(stack, 'r+') as dst:
        dst.update_tags(TIFFTAG_DATETIME='2020:01:13 10:11:12')
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(stack, weights_p8, out) == 0
    dates = gpd.read_parquet(out)['date']
    assert (dates == np.datetime64('2020-01-13T10:11:12')).all()


def test_no_date_says_how_to_give_one(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = write_stack(tmp_path / 'S2A_MSIL2A_stack.tif')
    assert embed_one_chip(stack, weights_p8, tmp_path / 'chips.parquet') == 2
    message = one_error_line(capsys)
    assert message.startswith(f'{stack} has no acquisition date')
    assert 'add --date YYYY-MM-DD' in message and "date='" not in message


def test_fill_flag(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bands the inputs lack: the error names --fill, which fills them."""
    order = tuple(b for b in BIGEARTHNET_BANDS if b not in ('B01', 'B09'))
    stack = write_stack(tmp_path / 'S2A_MSIL2A_20170613T101031_so2sat.tif', order=order)
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(stack, weights_p8, out) == 2
    message = one_error_line(capsys)
    assert "the input lacks ['B1', 'B9']" in message
    assert 'Add --fill BAND=SUBSTITUTE' in message and 'fill=' not in message
    assert embed_one_chip(stack, weights_p8, out, '--fill', 'B1') == 2
    assert one_error_line(capsys) == (
        '--fill takes BAND=SUBSTITUTE pairs such as B1=B2, got B1\n'
    )
    assert embed_one_chip(stack, weights_p8, out, '--fill', 'B1=B2', 'B9=B8A') == 0
    with rasterio.open(stack) as src:
        assert src.count == 10
    options = json.loads(pq.read_schema(out).metadata[b'torchgeo_mmearth'])['options']
    assert options['fill'] == {'B1': 'B2', 'B9': 'B8A'}


def test_python_advice_is_given_as_flags(
    weights_p8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The processing level, band names and time range, as flags."""
    stack = write_stack(tmp_path / 'stack_20170613.tif')
    out = tmp_path / 'chips.parquet'
    assert embed_one_chip(stack, weights_p8, out) == 2
    message = one_error_line(capsys)
    assert message.endswith('has no L1C or L2A; add --level l1c or --level l2a\n')
    with rasterio.open(stack, 'r+') as dst:
        dst.descriptions = (None,) * dst.count
    assert embed_one_chip(stack, weights_p8, out, '--level', 'l2a') == 2
    assert 'without descriptions: add --bands (e.g. B2' in one_error_line(capsys)
    stack = write_stack(tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif')
    assert embed_one_chip(stack, weights_p8, out, '--start', '2017-13') == 2
    assert one_error_line(capsys).startswith("--start/--end: '2017-13' is not")
