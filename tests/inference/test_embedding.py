"""Embeddings of real BigEarthNet Sentinel-2 patches.

Georeference, chips, seams, no-data, mosaics and resume of
:func:`torchgeo_mmearth.inference.embed`.
"""

import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.shutil
import rasterio.warp
from affine import Affine
from torch import Tensor, nn

from torchgeo_mmearth.inference import (
    SceneEncoder,
    area_grid,
    embed,
    load_encoder,
    sentinel2_source,
)

from .conftest import BIGEARTHNET_BANDS, MOSAIC, PATCH, Stack, write_stack

MMEARTH_ORDER = (*BIGEARTHNET_BANDS[:7], 'B8A', 'B08', *BIGEARTHNET_BANDS[9:])

# A 72 x 72 px area inside PATCH, with 24 px of real pixels on every side.
INNER = (404400 + 240, 5342400 - 960, 404400 + 960, 5342400 - 240)


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {
            'crs': src.crs,
            'transform': src.transform,
            'tags': src.tags(),
            'layout': src.tags(ns='IMAGE_STRUCTURE').get('LAYOUT'),
            'nodata': src.nodata,
            'descriptions': src.descriptions,
        }


def reference(band: str = 'B02') -> tuple[rasterio.crs.CRS, Affine]:
    with rasterio.open(PATCH / f'{PATCH.name}_{band}.tif') as src:
        return src.crs, src.transform


@pytest.fixture(scope='module')
def outputs(
    weights_p8: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp('embed')
    result = embed(
        PATCH,
        weights_p8,
        out / 'patch.tif',
        out / 'patch.parquet',
        chip_size=56,
        margin=8,
        progress=False,
    )
    assert result.chips == 9 and result.empty_chips == 0
    return out / 'patch.tif', out / 'patch.parquet'


class TestOutputs:
    def test_raster_georeference(self, outputs: tuple[Path, Path]) -> None:
        array, info = read(outputs[0])
        crs, transform = reference()
        assert info['layout'] == 'COG'
        assert info['crs'] == crs
        # One output pixel per 8 x 8 input pixels of the 10 m lattice.
        assert info['transform'] == transform * Affine.scale(8)
        assert array.shape == (320, 15, 15) and np.isfinite(array).all()
        out = info['transform']
        for row, col in ((0, 0), (7, 3), (14, 14)):
            # The centre of output pixel (row, col) is the centre of the input
            # window it summarises.
            window_centre = transform * (8 * col + 4, 8 * row + 4)
            assert out * (col + 0.5, row + 0.5) == pytest.approx(window_centre)
        assert np.isnan(info['nodata'])
        assert info['descriptions'][0] == 'embedding_0000'

    def test_provenance(self, outputs: tuple[Path, Path], weights_p8: Path) -> None:
        _, info = read(outputs[0])
        tags = json.loads(info['tags']['TORCHGEO_MMEARTH'])
        metadata = pq.read_schema(outputs[1]).metadata
        assert json.loads(metadata[b'torchgeo_mmearth']) == tags
        assert tags['weights'] == str(weights_p8.resolve())
        assert tags['model'] == 'mmearth_convnextv2_atto' and tags['patch_size'] == 8
        assert tags['model_bands'][7:9] == ['B8A', 'B8']
        assert tags['source_bands'] == tags['model_bands']
        assert len(tags['normalisation']['l2a']['mean']) == 12
        assert tags['version'] and tags['weights_meta']['corpus'] == 'MMEarth64'
        digest = hashlib.sha256(weights_p8.read_bytes()).hexdigest()
        assert tags['weights_sha256'] == digest
        (scene,) = tags['inputs']['scenes']
        assert scene['name'] == PATCH.name and scene['level'] == 'l2a'
        assert scene['bands']['B8A'][0] == str(PATCH / f'{PATCH.name}_B8A.tif')

    def test_parquet(self, outputs: tuple[Path, Path], weights_p8: Path) -> None:
        frame = gpd.read_parquet(outputs[1])
        array, info = read(outputs[0])
        assert frame.crs == info['crs']
        assert len(frame) == 9
        assert set(frame.columns) >= {
            'geometry',
            'date',
            'scenes',
            'weights',
            'model',
            'embedding',
            'valid_fraction',
        }
        assert (frame['scenes'] == PATCH.name).all()
        assert (frame['date'] == np.datetime64('2017-06-13T10:10:31')).all()
        assert frame.union_all().equals(
            __import__('shapely').box(404400, 5341200, 405600, 5342400)
        )
        # Each row is the mean of the raster's embeddings inside its footprint.
        for _, row in frame.iterrows():
            r0, c0 = row['row'], row['col']
            expected = array[:, r0 : r0 + 5, c0 : c0 + 5].mean(axis=(1, 2))
            np.testing.assert_allclose(row['embedding'], expected, rtol=1e-5, atol=1e-6)
            left, top = info['transform'] * (c0, r0)
            assert row['geometry'].bounds == (left, top - 400, left + 400, top)


def test_stitched_equals_whole_pass_away_from_seams(
    encoder_p8: SceneEncoder, tmp_path: Path
) -> None:
    """Chips keeping their centres match one pass over the whole area.

    The area has real pixels around it, so the only difference between the two
    is the context each output pixel sees (a 72 px chip, or all 120 px).
    """

    def run(name: str, chip_size: int, margin: int) -> np.ndarray:
        path = tmp_path / f'{name}.tif'
        embed(
            PATCH,
            encoder_p8,
            path,
            bounds=INNER,
            chip_size=chip_size,
            margin=margin,
            progress=False,
        )
        return read(path)[0]

    whole = run('whole', 120, 24)  # one chip: the area and 24 px around it
    stitched = run('stitched', 72, 24)  # 3 x 3 chips keeping 24 px each
    seams = run('seams', 24, 0)  # 3 x 3 chips without overlap
    assert whole.shape == stitched.shape == (320, 9, 9)

    def error(x: np.ndarray) -> np.ndarray:
        return np.linalg.norm(x - whole, axis=0) / np.linalg.norm(whole, axis=0)

    assert np.median(error(stitched)) < 0.1 and error(stitched).max() < 0.2
    assert error(stitched).max() < 0.25 * np.median(error(seams))
    # No seam: pixels next to a chip border are no worse than chip centres.
    centres = error(stitched)[1::3, 1::3]
    borders = np.delete(np.delete(error(stitched), np.s_[1::3], 0), np.s_[1::3], 1)
    assert borders.mean() < 1.5 * centres.mean()


def test_nodata_pixels_and_band_order(encoder_p8: SceneEncoder, tmp_path: Path) -> None:
    """A multi-band file in BigEarthNet's order with a no-data block."""
    stack = write_stack(
        tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif', (slice(40, 80), slice(0, 48))
    )
    embed(stack, encoder_p8, tmp_path / 'stack.tif', chip_size=56, progress=False)
    array, info = read(tmp_path / 'stack.tif')
    crs, transform = reference()
    assert info['crs'] == crs and info['transform'] == transform * Affine.scale(8)
    # Rows 40-80, columns 0-48 are output rows 5-9, columns 0-5.
    assert np.isnan(array[:, 5:10, :6]).all()
    assert np.isfinite(array[:, :5]).all() and np.isfinite(array[:, 10:]).all()
    assert np.isfinite(array[:, :, 6:]).all()


def test_bands_matched_by_name(encoder_p8: SceneEncoder, tmp_path: Path) -> None:
    """B8 before B8A (BigEarthNet) or after (MMEarth): the same embeddings."""
    date = 'S2A_MSIL2A_20170613T101031'
    outputs = []
    for name, order in (('ben', BIGEARTHNET_BANDS), ('mmearth', MMEARTH_ORDER)):
        stack = write_stack(tmp_path / f'{date}_{name}.tif', order=order)
        embed(
            stack,
            encoder_p8,
            tmp_path / f'{name}.tif',
            chip_size=120,
            margin=0,
            progress=False,
        )
        outputs.append(read(tmp_path / f'{name}.tif')[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_torchgeo_raster_dataset_and_vrt(
    encoder_p8: SceneEncoder, tmp_path: Path
) -> None:
    """A TorchGeo RasterDataset and a VRT give what their file gives."""
    stack = write_stack(tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif')
    options = {'chip_size': 120, 'margin': 0, 'progress': False}
    embed(stack, encoder_p8, tmp_path / 'file.tif', **options)
    dataset = Stack(paths=[str(tmp_path)])
    embed(
        dataset,
        encoder_p8,
        tmp_path / 'ds.tif',
        tmp_path / 'ds.parquet',
        level='l2a',
        **options,
    )
    # And so does a VRT of the file.
    vrt = tmp_path / 'vrt' / 'S2A_MSIL2A_20170613T101031_stack.vrt'
    vrt.parent.mkdir()
    rasterio.shutil.copy(stack, vrt, driver='VRT')
    embed(vrt, encoder_p8, tmp_path / 'vrt.tif', **options)
    array, info = read(tmp_path / 'ds.tif')
    assert info['transform'] == reference()[1] * Affine.scale(8)
    np.testing.assert_array_equal(array, read(tmp_path / 'file.tif')[0])
    np.testing.assert_array_equal(array, read(tmp_path / 'vrt.tif')[0])
    frame = gpd.read_parquet(tmp_path / 'ds.parquet')
    assert (frame['date'] == np.datetime64('2017-06-13T10:10:31')).all()


def test_missing_bands_are_named(weights_p8: Path, tmp_path: Path) -> None:
    with rasterio.open(PATCH / f'{PATCH.name}_B02.tif') as src:
        profile, data = src.profile, src.read()
    profile.update(count=3)
    path = tmp_path / 'S2A_MSIL2A_20170613T101031_rgb.tif'
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(np.concatenate([data] * 3))
    with pytest.raises(ValueError, match=r"lacks \['B1', 'B5'.*Pass fill="):
        embed(path, weights_p8, tmp_path / 'x.tif', bands=['B2', 'B3', 'B4'])
    with pytest.raises(ValueError, match='without descriptions: pass bands'):
        sentinel2_source(path)
    undated = tmp_path / 'undated' / 'L2A_rgb.tif'
    undated.parent.mkdir()
    undated.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"no acquisition date.*date='YYYY-MM-DD'"):
        sentinel2_source(undated, bands=['B2', 'B3', 'B4'])


def date_of(inputs: Path | list[Path], **kwargs: object) -> datetime:
    (acquisition,) = sentinel2_source(inputs, **kwargs).acquisitions
    assert acquisition.date is not None
    return acquisition.date


def test_dates_from_file_names(tmp_path: Path) -> None:
    """The first YYYYMMDD[THHMMSS] or YYYY-MM-DD of a name, for files and folders."""
    product = 'S2A_MSIL2A_20170613T101031_N0205_R022_T33UUP_20170614T101535'
    stack = write_stack(tmp_path / f'{product}.tif')
    assert date_of(stack) == datetime(2017, 6, 13, 10, 10, 31)
    iso = stack.rename(tmp_path / 'L2A_2020-01-13_20200120.tif')
    assert date_of(iso) == datetime(2020, 1, 13)
    # A folder of single-band files, and a VRT.
    folder = tmp_path / 'bands'
    folder.mkdir()
    for path in PATCH.glob('*_B*.tif'):
        band = path.stem.rpartition('_')[2]
        shutil.copy(path, folder / f'L2A_20200114_T33UUP_2020-01-15_{band}.tif')
    assert date_of(folder) == datetime(2020, 1, 14)
    vrt = tmp_path / 'vrt' / 'S2A_MSIL2A_2020-01-16.vrt'
    vrt.parent.mkdir()
    rasterio.shutil.copy(iso, vrt, driver='VRT')
    assert date_of(vrt) == datetime(2020, 1, 16)


def test_dates_from_tags(tmp_path: Path) -> None:
    """Without a date in the name: GDAL's Sentinel-2 sensing time, TIFF's DateTime."""
    stack = write_stack(tmp_path / 'S2A_MSIL2A_stack.tif')
    with rasterio.open(stack, 'r+') as dst:
        dst.update_tags(TIFFTAG_DATETIME='2020:01:13 10:11:12')
    assert date_of(stack) == datetime(2020, 1, 13, 10, 11, 12)
    with rasterio.open(stack, 'r+') as dst:
        dst.update_tags(PRODUCT_START_TIME='2020-01-12T09:08:07.024Z')
    assert date_of(stack) == datetime(2020, 1, 12, 9, 8, 7)
    # A VRT has the tags gdal_translate copies into it.
    vrt = tmp_path / 'vrt' / 'S2A_MSIL2A_stack.vrt'
    vrt.parent.mkdir()
    rasterio.shutil.copy(stack, vrt, driver='VRT')
    assert date_of(vrt) == datetime(2020, 1, 12, 9, 8, 7)
    # The name comes before the tags, and date before both.
    named = stack.rename(tmp_path / 'S2A_MSIL2A_2019-05-05_stack.tif')
    assert date_of(named) == datetime(2019, 5, 5)
    assert date_of(named, date='2021-02-03') == datetime(2021, 2, 3)
    assert date_of([named], date=datetime(2021, 2, 3, 4)) == datetime(2021, 2, 3, 4)


def test_date_argument_errors(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif')
    with pytest.raises(ValueError, match="date: '2020-13-01' is not an ISO date"):
        sentinel2_source(stack, date='2020-13-01')
    with pytest.raises(ValueError, match='RasterDataset is dated by its filename'):
        sentinel2_source(Stack(paths=[str(tmp_path)]), date='2020-01-13')


def test_mosaic_in_one_crs(weights_p16: Path, tmp_path: Path) -> None:
    """Two patches 20 km apart, two dates: one raster, empty chips as no-data."""
    result = embed(
        MOSAIC,
        weights_p16,
        tmp_path / 'mosaic.tif',
        tmp_path / 'mosaic.parquet',
        chip_size=240,
        margin=0,
        batch_size=64,
        progress=False,
    )
    array, info = read(tmp_path / 'mosaic.tif')
    assert info['crs'].to_epsg() == 32635
    # Union of the footprints: x 668400-684000, y 6953220-6971220.
    assert info['transform'] == Affine(160, 0, 668400, 0, -160, 6971220)
    assert array.shape[1:] == (113, 98)
    assert 0 < result.empty_chips < result.chips
    for path in MOSAIC:
        meta = json.loads(next(path.glob('*_labels_metadata.json')).read_text())
        box = meta['coordinates']
        col, row = ~info['transform'] * (box['ulx'] + 80, box['uly'] - 80)
        assert np.isfinite(array[:, int(row), int(col)]).all(), path.name
    valid = np.isfinite(array).all(axis=0)
    assert valid.sum() <= 2 * 8 * 8  # 2 patches of 7.5 x 7.5 output pixels
    assert not np.isfinite(array[:, ~valid]).any()  # no-data in every band
    frame = gpd.read_parquet(tmp_path / 'mosaic.parquet')
    assert sorted(frame['scenes']) == sorted(p.name for p in MOSAIC)
    assert sorted(frame['date'].dt.year) == [2017, 2018]

    later = embed(
        MOSAIC,
        weights_p16,
        tmp_path / 'later.tif',
        chip_size=240,
        margin=0,
        time_range=('2018-01-01', None),
        progress=False,
    )
    assert later.grid.transform.f == 6954420  # the 2018 patch only
    with pytest.raises(ValueError, match='no acquisition'):
        embed(
            MOSAIC, weights_p16, tmp_path / 'none.tif', time_range=('2020-01-01', None)
        )


class Interrupting(nn.Module):
    """An encoder that is interrupted (Ctrl-C) at its n-th batch."""

    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0
        self.num_features = model.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.model.forward_features(x)


def test_resume_yields_the_identical_files(weights_p8: Path, tmp_path: Path) -> None:
    options = {
        'bounds': INNER,
        'chip_size': 40,
        'margin': 8,
        'batch_size': 2,
        'block_size': 3,  # one chip centre (3 output pixels) per block
        'progress': False,
    }
    embed(PATCH, weights_p8, tmp_path / 'a.tif', tmp_path / 'a.parquet', **options)
    encoder = load_encoder(weights_p8)
    original = encoder.model
    encoder.model = Interrupting(original, at=3)
    with pytest.raises(KeyboardInterrupt):
        embed(PATCH, encoder, tmp_path / 'b.tif', tmp_path / 'b.parquet', **options)
    assert not (tmp_path / 'b.tif').exists()
    assert (tmp_path / '.b.tif.partial').is_dir()
    encoder.model = original
    result = embed(
        PATCH, encoder, tmp_path / 'b.tif', tmp_path / 'b.parquet', **options
    )
    assert result.resumed_chips == 2  # the two blocks finished were kept
    assert (tmp_path / 'b.tif').read_bytes() == (tmp_path / 'a.tif').read_bytes()
    assert (tmp_path / 'b.parquet').read_bytes() == (
        tmp_path / 'a.parquet'
    ).read_bytes()
    assert not (tmp_path / '.b.tif.partial').exists()


def test_refuses_to_overwrite(encoder_p8: SceneEncoder, tmp_path: Path) -> None:
    (tmp_path / 'x.tif').write_bytes(b'')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        embed(PATCH, encoder_p8, tmp_path / 'x.tif')
    with pytest.raises(ValueError, match='nothing to write'):
        embed(PATCH, encoder_p8)
    with pytest.raises(ValueError, match='multiples of the patch size 8'):
        embed(PATCH, encoder_p8, tmp_path / 'y.tif', chip_size=60)


def test_bf16_runs(encoder_p8: SceneEncoder, tmp_path: Path) -> None:
    embed(
        PATCH, encoder_p8, tmp_path / 'b.tif', bf16=True, chip_size=56, progress=False
    )
    array = read(tmp_path / 'b.tif')[0]
    assert array.dtype == np.float32 and np.isfinite(array).all()


def test_pca_and_int8(encoder_p8: SceneEncoder, tmp_path: Path) -> None:
    stack = write_stack(
        tmp_path / 'S2A_MSIL2A_20170613T101031_stack.tif', (slice(40, 80), slice(0, 48))
    )
    options = {'chip_size': 120, 'margin': 0, 'progress': False}
    embed(stack, encoder_p8, tmp_path / 'pca.tif', pca=3, **options)
    embed(stack, encoder_p8, tmp_path / 'q.tif', pca=3, int8=True, **options)
    pca, info = read(tmp_path / 'pca.tif')
    assert pca.shape == (3, 15, 15) and info['layout'] == 'COG'
    assert info['descriptions'] == ('pca_0000', 'pca_0001', 'pca_0002')
    ratio = json.loads(info['tags']['TORCHGEO_MMEARTH'])['pca']
    assert ratio['components'] == 3
    assert 0 < sum(ratio['explained_variance_ratio']) <= 1
    # The no-data block stays no-data; the components are centred, ordered.
    assert np.isnan(pca[:, 5:10, :6]).all() and np.isfinite(pca[:, :5]).all()
    valid = np.ones((15, 15), dtype=bool)
    valid[5:10, :6] = False
    np.testing.assert_allclose(pca[:, valid].mean(axis=1), 0, atol=1e-3)
    variances = pca[:, valid].var(axis=1)
    assert variances[0] >= variances[1] >= variances[2]
    with rasterio.open(tmp_path / 'q.tif') as src:
        q, scales, offsets = src.read(), src.scales, src.offsets
        assert src.dtypes[0] == 'int8' and src.nodata == -128
    assert (q[:, 5:10, :6] == -128).all() and (q[:, valid] > -128).all()
    restored = np.array(offsets)[:, None] + np.array(scales)[:, None] * q[:, valid]
    np.testing.assert_allclose(restored, pca[:, valid], atol=max(scales) / 2 + 1e-6)
    with pytest.raises(ValueError, match=r'pca must be in \[1, 320\]'):
        embed(stack, encoder_p8, tmp_path / 'x.tif', pca=321, **options)


def test_area_in_another_crs() -> None:
    """Bounds in degrees are warped to the rasters' CRS and snapped outward."""
    source = sentinel2_source(PATCH)
    west, south, east, north = rasterio.warp.transform_bounds(
        'EPSG:32633', 'EPSG:4326', *INNER
    )
    grid = area_grid(source.acquisitions, 8, (west, south, east, north), 'EPSG:4326')
    crs, transform = reference()
    assert grid.crs == crs
    left, top = grid.transform.c, grid.transform.f
    right = left + 10 * grid.width
    bottom = top - 10 * grid.height
    # On the 10 m lattice of the input, covering the area, by less than a pixel
    # more than the warped box's own growth.
    assert (left - transform.c) % 10 == 0 and (transform.f - top) % 10 == 0
    assert left <= INNER[0] and bottom <= INNER[1]
    assert right >= INNER[2] and top >= INNER[3]
    assert grid.width < 72 + 10 and grid.height < 72 + 10
    with pytest.raises(ValueError, match='do not overlap'):
        area_grid(source.acquisitions, 8, (0, 0, 1, 1), 'EPSG:4326')
