"""Embedding in blocks: several processes, resumption, VRT tiles, TorchGeo's readers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd  # type: ignore[import-untyped]
import numpy as np
import pytest
import rasterio
import torch

from tests.conftest import launch_spawned
from torchgeo_mmearth.inference import SceneEncoder, embed
from torchgeo_mmearth.inference.blocks import layout

from .conftest import MEASURE_EMBED, peak_rss, tiled_scene

#: Small chips and one chip centre (3 output pixels) per block: many blocks.
OPTIONS: dict[str, object] = {
    'chip_size': 40,
    'margin': 8,
    'batch_size': 4,
    'block_size': 3,
}
ARGUMENTS = ['--chip-size', '40', '--margin', '8', '--batch-size', '4']


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        array: np.ndarray = src.read()
        return array


@pytest.fixture(scope='module')
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 120 x 120 px patch, mirrored into a 240 x 240 px scene."""
    return tiled_scene(tmp_path_factory.mktemp('scene'), 240)


@pytest.fixture(scope='module')
def one_process(
    scene: Path, weights_p8: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The outputs of one process, in blocks of one chip."""
    folder = tmp_path_factory.mktemp('one')
    raster, parquet = folder / 'emb.tif', folder / 'emb.parquet'
    embed(scene, weights_p8, raster, parquet, progress=False, **OPTIONS)  # type: ignore[arg-type]
    return raster, parquet


def torchrun(
    scene: Path, weights: Path, raster: Path, parquet: Path
) -> subprocess.Popen[bytes]:
    """``torchgeo-mmearth embed`` in two CPU processes (gloo), one thread each."""
    command = [
        *(sys.executable, '-m', 'torch.distributed.run', '--standalone'),
        *('--nproc-per-node', '2'),
        *('-m', 'torchgeo_mmearth', 'embed', str(scene), '--weights', str(weights)),
        *('--raster', str(raster), '--parquet', str(parquet), '--no-progress'),
        *ARGUMENTS,
        *('--block-size', str(OPTIONS['block_size'])),
    ]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_layout_tiles_the_grid_with_whole_chip_centres() -> None:
    blocks = layout((30, 31), 8, 40, 8, block_size=7)  # centres of 3: 2 per block
    assert [b.name for b in blocks[:2]] == ['block_0000_0000', 'block_0000_0001']
    assert len(blocks) == 5 * 6
    chips = [chip for block in blocks for chip in block.chips]
    assert sorted(c.index for c in chips) == list(range(10 * 11))
    covered = np.zeros((30, 31), int)
    for block in blocks:
        (r0, r1), (c0, c1) = block.out_rows, block.out_cols
        covered[r0:r1, c0:c1] += 1
        for chip in block.chips:
            assert r0 <= chip.out_rows[0] < chip.out_rows[1] <= r1
            assert c0 <= chip.out_cols[0] < chip.out_cols[1] <= c1
    assert (covered == 1).all()
    assert blocks[-1].shape == (30 - 8 * 3, 31 - 10 * 3)


def test_blocks_do_not_change_the_embeddings(
    scene: Path,
    encoder_p8: SceneEncoder,
    one_process: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """One block for the whole area gives what blocks of one chip give."""
    options = {**OPTIONS, 'block_size': 1000}
    embed(
        scene,
        encoder_p8,
        tmp_path / 'a.tif',
        tmp_path / 'a.parquet',
        progress=False,
        **options,
    )  # type: ignore[arg-type]
    whole, blocks = read(tmp_path / 'a.tif'), read(one_process[0])
    assert whole.shape == (320, 30, 30) and np.isfinite(whole).all()
    np.testing.assert_allclose(whole, blocks, rtol=1e-4, atol=1e-5)
    a = gpd.read_parquet(tmp_path / 'a.parquet')
    b = gpd.read_parquet(one_process[1])
    assert list(a['chip']) == list(b['chip']) == list(range(100))
    np.testing.assert_allclose(
        np.stack(a['embedding']), np.stack(b['embedding']), rtol=1e-4, atol=1e-5
    )


def test_two_processes_write_the_files_of_one(
    scene: Path, weights_p8: Path, one_process: tuple[Path, Path], tmp_path: Path
) -> None:
    raster, parquet = tmp_path / 'emb.tif', tmp_path / 'emb.parquet'
    run = torchrun(scene, weights_p8, raster, parquet)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()[-2000:]
    # The first process reports; the files are those of one process.
    assert out.decode().count('100 chips') == 1
    assert raster.read_bytes() == one_process[0].read_bytes()
    assert parquet.read_bytes() == one_process[1].read_bytes()


def children(pid: int) -> list[int]:
    """The child processes of *pid* (Linux)."""
    found = []
    for task in Path(f'/proc/{pid}/task').iterdir():
        text = (task / 'children').read_text().split()
        found += [int(child) for child in text]
    return found


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='needs Linux /proc')
def test_a_killed_process_resumes(
    scene: Path, weights_p8: Path, one_process: tuple[Path, Path], tmp_path: Path
) -> None:
    """Kill one of two processes mid-run; one process finishes what is left."""
    raster, parquet = tmp_path / 'emb.tif', tmp_path / 'emb.parquet'
    blocks = tmp_path / '.emb.tif.partial' / 'blocks'
    run = torchrun(scene, weights_p8, raster, parquet)
    deadline = time.monotonic() + 240
    while not (blocks.is_dir() and any(blocks.glob('*.json'))):
        assert run.poll() is None, run.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ranks = children(run.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    run.communicate(timeout=120)
    assert run.returncode != 0 and not raster.exists()
    done = len(list(blocks.glob('*.json')))
    assert 0 < done < 100
    torch.set_num_threads(1)
    result = embed(scene, weights_p8, raster, parquet, progress=False, **OPTIONS)  # type: ignore[arg-type]
    assert result.resumed_chips >= done  # whole blocks, some finished since
    assert raster.read_bytes() == one_process[0].read_bytes()
    assert parquet.read_bytes() == one_process[1].read_bytes()
    assert not blocks.parent.exists()


def test_vrt_of_cog_tiles(
    scene: Path,
    encoder_p8: SceneEncoder,
    one_process: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from torchgeo.datasets import RasterDataset

    vrt = tmp_path / 'emb.vrt'
    options = {**OPTIONS, 'block_size': 15}  # 2 x 2 blocks of 5 x 5 chips
    embed(scene, encoder_p8, vrt, progress=False, **options)  # type: ignore[arg-type]
    tiles = sorted((tmp_path / 'emb_tiles').iterdir())
    assert [t.name for t in tiles] == [
        f'block_000{i}_000{j}.tif' for i in range(2) for j in range(2)
    ]
    with rasterio.open(tiles[0]) as src:
        assert src.profile['driver'] == 'GTiff' and src.shape == (15, 15)
        assert src.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
    with rasterio.open(one_process[0]) as cog, rasterio.open(vrt) as src:
        assert src.transform == cog.transform and src.crs == cog.crs
        assert src.descriptions == cog.descriptions
        assert src.tags()['TORCHGEO_MMEARTH']
        np.testing.assert_allclose(src.read(), cog.read(), rtol=1e-4, atol=1e-5)
    # TorchGeo reads the tiles as one dataset.
    dataset = RasterDataset(paths=str(tmp_path / 'emb_tiles'))
    assert len(dataset) == 4
    with pytest.raises(FileExistsError, match='emb_tiles'):
        (tmp_path / 'emb.vrt').unlink()
        embed(scene, encoder_p8, vrt, progress=False, **options)  # type: ignore[arg-type]


def embed_in_fabric(
    fabric: object, scene: Path, weights: Path, raster: Path, parquet: Path
) -> None:
    """What each process of a Lightning Fabric run does (picklable for spawn)."""
    torch.set_num_threads(1)
    # overwrite: a second launch (launch_spawned) replaces what the first wrote
    embed(scene, weights, raster, parquet, progress=False, overwrite=True, **OPTIONS)  # type: ignore[arg-type]


def test_lightning_fabric_processes(
    scene: Path, weights_p8: Path, one_process: tuple[Path, Path], tmp_path: Path
) -> None:
    """In the process group of a Lightning Fabric run, embed shares the blocks."""
    from lightning.fabric import Fabric

    raster, parquet = tmp_path / 'emb.tif', tmp_path / 'emb.parquet'

    def launch() -> None:
        fabric = Fabric(accelerator='cpu', devices=2, strategy='ddp_spawn')
        fabric.launch(embed_in_fabric, scene, weights_p8, raster, parquet)

    launch_spawned(launch)
    assert raster.read_bytes() == one_process[0].read_bytes()
    assert parquet.read_bytes() == one_process[1].read_bytes()


@pytest.mark.slow
def test_peak_memory_follows_the_block_not_the_area(
    weights_p8: Path, tmp_path: Path
) -> None:
    """9 times the area: its float32 features grow by 256 MiB, peak RSS by little.

    A stand-in encoder of 2048 features makes the features of a 1536 px scene 288
    MiB in one float32 array, against 32 MiB at 512 px; blocks of 32 output pixels
    hold 8 MiB; the raster is a VRT over COG tiles. (``benchmarks/bench_embed.py``
    measures areas larger than a memory limit, and the single COG.)
    """
    peaks = {}
    for size in (512, 1536):
        folder = tmp_path / str(size)
        folder.mkdir()
        scene = tiled_scene(folder, size)
        options = {
            'scene': str(scene),
            'weights': str(weights_p8),
            'stand_in': 2048,
            'raster': str(folder / 'emb.vrt'),
            'block_size': 32,
            'batch_size': 2,
        }
        peaks[size] = peak_rss(MEASURE_EMBED, json.dumps(options))
    grown = 288 - 32  # MiB of one float32 array of the area's features
    assert (peaks[1536] - peaks[512]) / 1024 < grown / 8, peaks
