from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from rasterio.enums import Resampling
from torchgeo.datasets import RasterDataset

from torchgeo_mmearth.inference import SceneEncoder, load_encoder
from torchgeo_mmearth.modalities import SENTINEL2_INPUT_BANDS

#: Real BigEarthNet Sentinel-2 patches (see tests/data/bigearthnet/README.md).
BIGEARTHNET = Path(__file__).parents[1] / 'data' / 'bigearthnet'
#: One patch in UTM zone 33N.
PATCH = BIGEARTHNET / 'S2A_MSIL2A_20170613T101031_87_48'
#: Two patches in UTM zone 35N, acquired on 2017-09-24 and 2018-02-04.
MOSAIC = [
    BIGEARTHNET / 'S2B_MSIL2A_20170924T93020_69_24',
    BIGEARTHNET / 'S2B_MSIL2A_20180204T94161_57_38',
]
#: BigEarthNet's band order: B8 before B8A.
BIGEARTHNET_BANDS = (
    *('B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A'),
    *('B09', 'B11', 'B12'),
)


def export_file(path: Path, patch_size: int, seed: int = 0) -> Path:
    """A random atto encoder in the format of ``torchgeo-mmearth export-weights``."""
    torch.manual_seed(seed)
    name = 'mmearth_convnextv2_atto'
    model = timm.create_model(name, num_classes=0, patch_size=patch_size)
    torch.save(
        {
            'state_dict': {f'model.{k}': v for k, v in model.state_dict().items()},
            'hyper_parameters': {'model': name},
            'meta': {
                'model': name,
                'in_chans': 12,
                'bands': list(SENTINEL2_INPUT_BANDS),
                'patch_size': patch_size,
                'input_size': 7 * patch_size,
                'corpus': 'MMEarth64',
                'ssl_method': 'mp-mae',
            },
        },
        path,
    )
    return path


@pytest.fixture(scope='session')
def weights_p8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_file(tmp_path_factory.mktemp('weights') / 'atto_p8.pth', 8)


@pytest.fixture(scope='session')
def weights_p16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_file(tmp_path_factory.mktemp('weights') / 'atto_p16.pth', 16)


@pytest.fixture(scope='session')
def encoder_p8(weights_p8: Path) -> SceneEncoder:
    """The encoder of weights_p8, built once."""
    return load_encoder(weights_p8)


def write_stack(
    path: Path,
    nodata_block: tuple[slice, slice] | None = None,
    order: tuple[str, ...] = BIGEARTHNET_BANDS,
) -> Path:
    """The 12 bands of PATCH at 10 m in one GeoTIFF, in *order*.

    The band descriptions name the bands; *nodata_block* is set to 0, Sentinel-2's
    no-data value.
    """
    name = PATCH.name
    with rasterio.open(PATCH / f'{name}_B02.tif') as ref:
        profile = ref.profile
    arrays = []
    for band in order:
        with rasterio.open(PATCH / f'{name}_{band}.tif') as src:
            arrays.append(
                src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
            )
    stack = np.stack(arrays)
    if nodata_block is not None:
        stack[:, nodata_block[0], nodata_block[1]] = 0
    profile.update(count=len(order), dtype=stack.dtype)
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(stack)
        dst.descriptions = order
    return path


class Stack(RasterDataset):
    """The files of :func:`write_stack` as a TorchGeo raster dataset."""

    filename_glob = '*_stack.tif'
    filename_regex = r'^S2A_MSIL2A_(?P<date>\d{8}T\d{6})_stack'
    date_format = '%Y%m%dT%H%M%S'
    all_bands = BIGEARTHNET_BANDS
