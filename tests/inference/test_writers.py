"""The outputs of embed, read by TorchGeo's embedding datasets (TorchGeo 0.9+)."""

import json
import tracemalloc
import warnings
from pathlib import Path

import geopandas as gpd  # type: ignore[import-untyped]
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.shutil
import shapely  # type: ignore[import-untyped]
import torch
import torchgeo.datasets
from rasterio.warp import transform as warp_points

from torchgeo_mmearth.inference import SceneEncoder, embed
from torchgeo_mmearth.inference.writers import write_parquet

from .conftest import (
    CRS,
    MEASURE_WRITE_COG,
    PROVENANCE,
    TRANSFORM,
    peak_rss,
    saved_blocks,
    write_cog,
    write_stack,
)

OPTIONS = {'chip_size': 56, 'margin': 8, 'block_size': 5, 'progress': False}

needs_embedding_datasets = pytest.mark.skipif(
    not hasattr(torchgeo.datasets, 'MajorTOMEmbeddings'),
    reason="TorchGeo's embedding datasets came in 0.9",
)


@pytest.fixture(scope='module')
def outputs(
    encoder_p8: SceneEncoder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """64 principal components (AlphaEarth's band count) and the chips' GeoParquet."""
    folder = tmp_path_factory.mktemp('outputs')
    stack = write_stack(folder / 'S2A_MSIL2A_20170613T101031_stack.tif')
    raster, parquet = folder / '2017' / 'emb.tif', folder / 'chips.parquet'
    raster.parent.mkdir()
    embed(stack, encoder_p8, raster, parquet, pca=64, **OPTIONS)  # type: ignore[arg-type]
    return raster, parquet


def test_geoparquet_columns_and_metadata(outputs: tuple[Path, Path]) -> None:
    frame = gpd.read_parquet(outputs[1])
    with rasterio.open(outputs[0]) as src:
        crs = src.crs
    assert frame.crs == crs
    # Row groups of one block each, the metadata of all rows.
    assert pq.ParquetFile(outputs[1]).num_row_groups > 1
    geo = json.loads(pq.read_schema(outputs[1]).metadata[b'geo'])
    assert geo['columns']['geometry']['bbox'] == pytest.approx(list(frame.total_bounds))
    centres = shapely.centroid(frame.geometry)
    lon, lat = warp_points(crs, 'EPSG:4326', list(centres.x), list(centres.y))
    np.testing.assert_allclose(frame['centre_lon'], lon)
    np.testing.assert_allclose(frame['centre_lat'], lat)
    assert (frame['timestamp'] == frame['date']).all()
    assert (frame['date'] == np.datetime64('2017-06-13T10:10:31')).all()


@needs_embedding_datasets
@pytest.mark.parametrize(
    'name', ['ClayEmbeddings', 'MajorTOMEmbeddings', 'EarthEmbeddings']
)
def test_torchgeo_embedding_tables_read_the_geoparquet(
    name: str, outputs: tuple[Path, Path]
) -> None:
    frame = gpd.read_parquet(outputs[1])
    dataset = getattr(torchgeo.datasets, name)(root=outputs[1])
    assert len(dataset) == len(frame) > 1
    for index in (0, len(frame) - 1):
        sample = dataset[index]
        row = frame.iloc[index]
        torch.testing.assert_close(
            sample['embedding'], torch.tensor(np.asarray(row['embedding']))
        )
        # TorchGeo keeps t in float32: 128 s apart around 2017.
        assert sample['t'].item() == pytest.approx(row['date'].timestamp(), abs=128)
        if name == 'ClayEmbeddings':  # the centroid, in the raster's CRS
            centre = shapely.centroid(row['geometry'])
            assert (sample['x'].item(), sample['y'].item()) == pytest.approx(
                (centre.x, centre.y)
            )
        else:
            assert (sample['x'].item(), sample['y'].item()) == pytest.approx(
                (row['centre_lon'], row['centre_lat'])
            )


@needs_embedding_datasets
def test_google_satellite_embedding_reads_64_components(
    outputs: tuple[Path, Path],
) -> None:
    """With --pca 64 the raster has AlphaEarth's 64 bands, its year in the path."""
    dataset = torchgeo.datasets.GoogleSatelliteEmbedding(paths=outputs[0].parent)
    with rasterio.open(outputs[0]) as src:
        expected = src.read()
    sample = dataset[dataset.bounds]
    assert sample['image'].shape == expected.shape == (64, 15, 15)
    torch.testing.assert_close(
        sample['image'], torch.from_numpy(expected), equal_nan=True
    )
    assert dataset.bounds[2].start.year == 2017


def overview_levels(path: Path) -> list[np.ndarray]:
    with rasterio.open(path) as src:
        count = len(src.overviews(1))
    levels = []
    for level in range(count):
        with rasterio.open(path, OVERVIEW_LEVEL=level) as src:
            levels.append(src.read())
    return levels


@pytest.mark.parametrize('int8', [False, True])
def test_writers_hold_one_block_at_a_time(tmp_path: Path, int8: bool) -> None:
    """The outputs of an area of 100 blocks, with NumPy's memory of about a block.

    Its overviews too: 5 x 5 tiles of 256 px, 3 levels.
    """
    features, side, block_size = 16, 1280, 128
    blocks, workspace = saved_blocks(
        tmp_path / 'work', (side, side), features, block_size
    )
    whole = features * side * side * 4  # one float32 array of the area: 105 MB
    tracemalloc.start()
    try:
        write_cog(tmp_path / 'emb.tif', blocks, workspace, (side, side), int8)
        write_parquet(
            tmp_path / 'emb.parquet',
            blocks,
            workspace.load,
            tmp_path / 'staging',
            CRS,
            TRANSFORM,
            PROVENANCE,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(blocks) == 100
    assert peak < whole / 4, f'{peak / 1e6:.1f} MB for a {whole / 1e6:.1f} MB area'
    with rasterio.open(tmp_path / 'emb.tif') as src:
        assert src.shape == (side, side) and src.count == features
        assert src.dtypes[0] == ('int8' if int8 else 'float32')
        assert src.overviews(1) == [2, 4, 8]
    assert len(gpd.read_parquet(tmp_path / 'emb.parquet')) == 99  # one block empty
    assert not list((tmp_path / 'staging').iterdir())


@pytest.mark.parametrize('int8', [False, True])
def test_overviews_are_gdals(tmp_path: Path, int8: bool) -> None:
    """Ours, a tile at a time, equal those GDAL's COG driver computes from the area.

    The mean of the valid values of 2 x 2 pixels (``AVERAGE``), for int8 the top-left
    one (``NEAREST``); the sides are even at every level, where GDAL's levels and
    ours have the same size.
    """
    shape = (1024, 768)
    blocks, workspace = saved_blocks(tmp_path / 'work', shape, 3, 96)
    write_cog(tmp_path / 'emb.tif', blocks, workspace, shape, int8)
    with rasterio.open(tmp_path / 'emb.tif') as src:
        profile = {**src.profile, 'driver': 'GTiff'}
        full = src.read()
    with rasterio.open(tmp_path / 'full.tif', 'w', **profile) as dst:
        dst.write(full)
    rasterio.shutil.copy(
        tmp_path / 'full.tif',
        tmp_path / 'gdal.tif',
        driver='COG',
        BLOCKSIZE=256,
        OVERVIEW_RESAMPLING='NEAREST' if int8 else 'AVERAGE',
    )
    ours, gdal = (
        overview_levels(tmp_path / 'emb.tif'),
        overview_levels(tmp_path / 'gdal.tif'),
    )
    assert [level.shape for level in ours] == [(3, 512, 384), (3, 256, 192)]
    assert [level.shape for level in gdal] == [level.shape for level in ours]
    for mine, theirs in zip(ours, gdal, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert np.isnan(ours[0]).any() if not int8 else (ours[0] == -128).any()


def test_overviews_of_odd_sides(tmp_path: Path) -> None:
    """Each level has half the last one's rows and columns, rounded up."""
    shape = (601, 515)
    blocks, workspace = saved_blocks(tmp_path / 'work', shape, 2, 64)
    write_cog(tmp_path / 'emb.tif', blocks, workspace, shape, False)
    with rasterio.open(tmp_path / 'emb.tif') as src:
        previous = src.read().astype(np.float64)
    levels = overview_levels(tmp_path / 'emb.tif')
    assert [level.shape[1:] for level in levels] == [(301, 258), (151, 129)]
    for level in levels:
        bands, rows, cols = previous.shape
        padded = np.full((bands, rows + rows % 2, cols + cols % 2), np.nan)
        padded[:, :rows, :cols] = previous
        windows = padded.reshape(bands, level.shape[1], 2, level.shape[2], 2)
        with np.errstate(invalid='ignore'), warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN windows
            expected = np.nanmean(windows, axis=(2, 4)).astype(np.float32)
        np.testing.assert_array_equal(level, expected)
        previous = level.astype(np.float64)


@pytest.mark.slow
def test_cog_memory_follows_the_tile_not_the_area(tmp_path: Path) -> None:
    """4 times the area of one COG with overviews: peak RSS grows by little.

    32 features: one float32 array of the area 72 MiB at 768 px, 288 MiB at 1536
    px; a tile of 256 px of every band 8 MiB. GDAL's block cache is 16 MB, less
    than a row of tiles of every band at 1536 px (48 MiB), with which GDAL's own
    overviews slowed down (57.7 s instead of 24 s, measured by hand).
    """
    peaks = {}
    for side in (768, 1536):
        folder = tmp_path / str(side)
        folder.mkdir()
        peaks[side] = peak_rss(MEASURE_WRITE_COG, str(folder), str(side), '32')
    grown = 288 - 72  # MiB of one float32 array of the area's features
    assert (peaks[1536] - peaks[768]) / 1024 < grown / 4, peaks
