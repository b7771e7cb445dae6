"""The outputs of embed, read by TorchGeo's embedding datasets (TorchGeo 0.9+)."""

import json
import tracemalloc
from pathlib import Path

import geopandas as gpd  # type: ignore[import-untyped]
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely  # type: ignore[import-untyped]
import torch
import torchgeo.datasets
from rasterio.warp import transform as warp_points

from torchgeo_mmearth.inference import SceneEncoder, embed
from torchgeo_mmearth.inference.blocks import BlockData, Workspace, layout
from torchgeo_mmearth.inference.writers import write_parquet, write_raster

from .conftest import write_stack

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


def test_writers_hold_one_block_at_a_time(tmp_path: Path) -> None:
    """The outputs of an area of 100 blocks, with NumPy's memory of about a block."""
    features, side, per_block = 64, 240, 24
    blocks = layout((side, side), 8, 8 * per_block, 0, per_block)
    workspace = Workspace(tmp_path / 'work')
    workspace.prepare({}, resume=False)
    rng = np.random.default_rng(0)
    for block in blocks:
        height, width = block.shape
        data = rng.standard_normal((features, height, width), np.float32)
        n = len(block.chips)
        workspace.save(
            block,
            BlockData(
                data,
                data.mean(axis=(1, 2))[None].repeat(n, 0),
                np.ones(n, np.float32),
                ['2017-06-13T10:10:31'] * n,
                ['scene'] * n,
            ),
        )
    whole = features * side * side * 4  # one float32 array of the area: 14.7 MB
    crs = rasterio.crs.CRS.from_epsg(32633)
    transform = rasterio.Affine(80, 0, 400000, 0, -80, 5400000)
    staging = tmp_path / 'staging'
    staging.mkdir()
    tracemalloc.start()
    try:
        write_raster(
            tmp_path / 'emb.tif',
            blocks,
            workspace.load,
            staging,
            crs,
            transform,
            (side, side),
            features,
            {'weights': 'w', 'model': 'm'},
            None,
            True,
        )
        write_parquet(
            tmp_path / 'emb.parquet',
            blocks,
            workspace.load,
            staging,
            crs,
            transform,
            {'weights': 'w', 'model': 'm'},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(blocks) == 100
    assert peak < whole / 4, f'{peak / 1e6:.1f} MB for a {whole / 1e6:.1f} MB area'
    with rasterio.open(tmp_path / 'emb.tif') as src:
        assert src.shape == (side, side) and src.count == features
        assert src.dtypes[0] == 'int8' and (src.read(1) != -128).all()
    assert len(gpd.read_parquet(tmp_path / 'emb.parquet')) == 100
