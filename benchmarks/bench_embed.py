"""Throughput of ``torchgeo_mmearth.inference.embed``: chips/s and km^2/s.

The scene is a 12-band Sentinel-2 L2A GeoTIFF of ``--size`` x ``--size`` px at
10 m, tiled from the real BigEarthNet patch of the tests
(``tests/data/bigearthnet``, S2A_MSIL2A_20170613T101031_87_48, every band
resampled to 10 m, mirrored at every other tile so that no edge is a seam). Its
pixels are real radiometry, its layout is not a real landscape: the figures are
the speed of reading, encoding and writing, nothing about embedding quality. The
weights are a seeded random MMEarth ConvNeXt V2 atto (Nedungadi et al., ECCV 2024,
https://arxiv.org/abs/2405.02771) in the ``export-weights`` format: the speed of
the official weights is the same.

For each patch size (8 and 16) it runs :func:`~torchgeo_mmearth.inference.embed`
once with the default chips (32 patches, margin 4 patches) and writes the COG and
the GeoParquet; the time includes reading, normalisation, the encoder, stitching
and writing, not building the encoder. Run from the repository root::

    python benchmarks/bench_embed.py --threads 2
    python benchmarks/bench_embed.py --device cuda --bf16 --size 4096
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.inference.conftest import export_file, write_stack
from torchgeo_mmearth.inference import embed, load_encoder


def tiled_scene(folder: Path, size: int) -> Path:
    """The real patch tiled (and mirrored) into a ``size`` x ``size`` scene."""
    stack = write_stack(folder / 'patch.tif')
    with rasterio.open(stack) as src:
        patch, profile, descriptions = src.read(), src.profile, src.descriptions
    row = np.concatenate([patch, patch[:, :, ::-1]], axis=2)
    tile = np.concatenate([row, row[:, ::-1]], axis=1)  # 240 x 240
    reps = -(-size // tile.shape[1])
    scene = np.tile(tile, (1, reps, reps))[:, :size, :size]
    profile.update(width=size, height=size, tiled=True, blockxsize=256, blockysize=256)
    path = folder / 'S2A_MSIL2A_20170613T101031_scene.tif'
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(scene)
        dst.descriptions = descriptions
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=1024, help='scene side (px)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--bf16', action='store_true')
    parser.add_argument('--batch-size', type=int, default=8)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = tiled_scene(folder, args.size)
        km2 = (args.size * 10 / 1000) ** 2
        print(
            f'scene: {args.size} x {args.size} px at 10 m ({km2:.1f} km^2), '
            f'device {args.device}, bf16 {args.bf16}, '
            f'{torch.get_num_threads()} threads, batch {args.batch_size}'
        )
        for patch_size in (8, 16):
            weights = export_file(folder / f'atto_p{patch_size}.pth', patch_size)
            encoder = load_encoder(weights, args.device)
            start = time.perf_counter()
            result = embed(
                scene,
                encoder,
                folder / f'p{patch_size}.tif',
                folder / f'p{patch_size}.parquet',
                batch_size=args.batch_size,
                device=args.device,
                bf16=args.bf16,
                progress=False,
            )
            seconds = time.perf_counter() - start
            print(
                f'atto p{patch_size}: {result.chips} chips of {32 * patch_size} px '
                f'in {seconds:.1f} s: {result.chips / seconds:.2f} chips/s, '
                f'{km2 / seconds:.2f} km^2/s'
            )


if __name__ == '__main__':
    main()
