import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from rasterio.enums import Resampling
from torchgeo.datasets import RasterDataset

from torchgeo_mmearth.inference import SceneEncoder, load_encoder
from torchgeo_mmearth.inference.blocks import Block, BlockData, Workspace, layout
from torchgeo_mmearth.inference.writers import write_raster
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


def stand_in_encoder(weights: Path, features: int, device: str = 'cpu') -> SceneEncoder:
    """The bands and patch size of *weights*, one strided convolution as the model.

    A ``P x P`` convolution of stride ``P`` to *features* channels: embed's reading,
    blocks and writers around a wide output at a fraction of an encoder's compute,
    for memory measurements (its embeddings mean nothing).
    """
    encoder = load_encoder(weights, device)
    p = encoder.patch_size
    model = torch.nn.Conv2d(len(encoder.bands), features, p, p).to(device).eval()
    model.forward_features, model.num_features = model.forward, features
    return SceneEncoder(model, 'stand-in', 'conv', encoder.bands, p)


#: A fresh process (run from the repository root) that embeds and prints a JSON line:
#: its peak RSS (KiB, Linux), embed's seconds, its chips and the peak CUDA memory
#: (bytes). ``argv[1]``: JSON of embed's keyword arguments and ``scene``, ``raster``,
#: ``weights`` and ``stand_in`` (features of :func:`stand_in_encoder`, or 0 for the
#: weights' encoder). With an empty scene it only loads the encoder and runs it once
#: on a small input: the floor of the others' RSS.
MEASURE_EMBED = """
import json, sys, time
import torch
from torchgeo_mmearth.inference import embed, load_encoder
from tests.inference.conftest import stand_in_encoder
args = json.loads(sys.argv[1])
scene, weights, features = args.pop('scene'), args.pop('weights'), args.pop('stand_in')
device = args.get('device', 'cpu')
if features:
    encoder = stand_in_encoder(weights, features, device)
else:
    encoder = load_encoder(weights, device)
start = time.perf_counter()
if scene:
    chips = embed(scene, encoder, args.pop('raster'), progress=False, **args).chips
else:
    with torch.inference_mode():
        encoder.forward_features(torch.zeros(1, 12, 64, 64, device=device))
    chips = 0
seconds = time.perf_counter() - start
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
# VmHWM, the peak of this process's own memory: Linux carries the parent's peak
# RSS across fork and exec into ru_maxrss.
with open('/proc/self/status') as status:
    rss = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))
print(json.dumps({'rss': rss, 'seconds': seconds, 'chips': chips, 'cuda': cuda}))
"""


#: A fresh process (run from the repository root) that writes the COG of random
#: features (:func:`saved_blocks`, blocks of 128 px) and prints a JSON line: its
#: peak RSS (KiB, Linux). ``argv``: folder, side (px), features.
MEASURE_WRITE_COG = """
import json, sys
from pathlib import Path
from tests.inference.conftest import saved_blocks, write_cog
folder, side, features = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
blocks, workspace = saved_blocks(folder / 'work', (side, side), features, 128)
write_cog(folder / 'emb.tif', blocks, workspace, (side, side), False)
with open('/proc/self/status') as status:
    rss = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))
print(json.dumps({'rss': rss}))
"""


def peak_rss(script: str, *args: str) -> int:
    """The ``rss`` of the JSON line that *script* prints last, run in a fresh process.

    From the repository root, with what a user's shell has, not what earlier tests
    set in this process, and GDAL's block cache limited to 16 MB: it keeps the
    blocks it read up to ``GDAL_CACHEMAX`` (5 % of the RAM by default), bounded by
    that setting, not by the area, but over the tests' areas it would grow with them.

    Args:
        script: :data:`MEASURE_EMBED` or :data:`MEASURE_WRITE_COG`.
        args: its arguments.

    Returns:
        Its peak RSS in KiB.
    """
    done = subprocess.run(
        [sys.executable, '-c', script, *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={
            'PATH': os.environ['PATH'],
            'HOME': os.environ['HOME'],
            'OMP_NUM_THREADS': '2',
            'GDAL_CACHEMAX': '16',
        },
    )
    rss: int = json.loads(done.stdout.splitlines()[-1])['rss']
    return rss


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


def tiled_scene(folder: Path, size: int) -> Path:
    """The stack of :func:`write_stack` tiled (and mirrored) into a *size* px GeoTIFF.

    Mirrored at every other tile, so that no edge is a seam; named as a scene of
    the patch's date.
    """
    stack = write_stack(folder / 'patch.tif')
    with rasterio.open(stack) as src:
        patch, profile, descriptions = src.read(), src.profile, src.descriptions
    row = np.concatenate([patch, patch[:, :, ::-1]], axis=2)
    block = np.concatenate([row, row[:, ::-1]], axis=1)  # 240 x 240
    reps = -(-size // block.shape[1])
    scene = np.tile(block, (1, reps, reps))[:, :size, :size]
    profile.update(width=size, height=size, tiled=True, blockxsize=256, blockysize=256)
    path = folder / f'S2A_MSIL2A_20170613T101031_{size}.tif'
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(scene)
        dst.descriptions = descriptions
    return path


class Stack(RasterDataset):
    """The files of :func:`write_stack` as a TorchGeo raster dataset."""

    filename_glob = '*_stack.tif'
    filename_regex = r'^S2A_MSIL2A_(?P<date>\d{8}T\d{6})_stack'
    date_format = '%Y%m%dT%H%M%S'
    all_bands = BIGEARTHNET_BANDS


CRS = rasterio.crs.CRS.from_epsg(32633)
TRANSFORM = rasterio.Affine(80, 0, 400000, 0, -80, 5400000)
PROVENANCE = {'weights': 'w', 'model': 'm'}


def saved_blocks(
    folder: Path, shape: tuple[int, int], features: int, block_size: int
) -> tuple[list[Block], Workspace]:
    """Blocks of random features in a workspace, a few pixels and a block no-data."""
    blocks = layout(shape, 8, 8 * block_size, 0, block_size)
    workspace = Workspace(folder)
    workspace.prepare({}, resume=False)
    rng = np.random.default_rng(0)
    for number, block in enumerate(blocks):
        height, width = block.shape
        data = rng.standard_normal((features, height, width), np.float32)
        data[:, rng.random((height, width)) < 0.1] = np.nan
        if number == 1:
            data[:] = np.nan
        n = len(block.chips)  # one: the chips are as large as the blocks
        workspace.save(
            block,
            BlockData(
                data,
                rng.standard_normal((n, features), np.float32),
                np.full(n, np.isfinite(data[0]).mean(), np.float32),
                ['2017-06-13T10:10:31'] * n,
                ['scene'] * n,
            ),
        )
    return blocks, workspace


def write_cog(
    path: Path,
    blocks: list[Block],
    workspace: Workspace,
    shape: tuple[int, int],
    int8: bool,
) -> None:
    """Write the COG of *workspace*'s blocks, staged in ``staging/`` beside it."""
    staging = path.with_name('staging')
    staging.mkdir()
    features = workspace.load(blocks[0]).features.shape[0]
    write_raster(
        path,
        blocks,
        workspace.load,
        staging,
        CRS,
        TRANSFORM,
        shape,
        features,
        PROVENANCE,
        None,
        int8,
    )
