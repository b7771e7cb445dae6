r"""``torchgeo-mmearth embed``: against a bare encoder, one against two processes, memory.

Three tables, each against a baseline measured in the same run:

1. **embed / bare forward**: :func:`~torchgeo_mmearth.inference.embed` (reading,
   normalisation, the encoder, stitching, writing the COG and the GeoParquet) against
   ``encoder.forward_features`` alone over as many chips of the same size and batch,
   their normalised tensors made on the device beforehand. The ratio is the share of
   the bare forward's speed that embed keeps (goal: >= 0.9 on one device).
2. **processes**: the command in one process and under ``torchrun --nproc-per-node
   2`` (gloo on a CPU, one GPU each on CUDA), each process with its share of the
   threads on a CPU; whole commands, start-up included (the start-up of one process,
   importing torch and the package, is printed on its own). The outputs of both must
   be byte-identical.
3. **memory**: peak RSS of the command (a fresh process each) as the area grows, beside
   what one float32 array of the area's features would take: the run holds a block
   (``--block-size``), not the area. The larger scenes are VRTs over one tile.

The scene is a 12-band Sentinel-2 L2A raster at 10 m, tiled from the real BigEarthNet
patch of the tests (``tests/data/bigearthnet``, S2A_MSIL2A_20170613T101031_87_48, every
band resampled to 10 m, mirrored at every other tile so that no edge is a seam). Its
pixels are real radiometry, its layout is not a real landscape: the figures are speed
and memory, nothing about embedding quality. The weights are a seeded random MMEarth
ConvNeXt V2 atto (Nedungadi et al., ECCV 2024, https://arxiv.org/abs/2405.02771) in
the ``export-weights`` format: the official weights run at the same speed. Run from the
repository root::

    python benchmarks/bench_embed.py --threads 2
    python benchmarks/bench_embed.py --device cuda --bf16 --channels-last --compile \
        --size 8192 --batch-size 64 --memory-sizes 8192 16384 32768
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

import geopandas as gpd  # type: ignore[import-untyped]
import numpy as np
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.inference.conftest import export_file, write_stack
from torchgeo_mmearth.inference import SceneEncoder, embed, load_encoder

#: What a process of table 3 runs: embed, then its peak RSS (KiB, Linux) on stdout.
_MEASURE = """
import json, resource, sys
from torchgeo_mmearth.inference import embed
args = json.loads(sys.argv[1])
embed(args.pop('scene'), args.pop('weights'), args.pop('raster'), progress=False, **args)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def tile(folder: Path, size: int) -> Path:
    """The real patch tiled (and mirrored) into a ``size`` x ``size`` GeoTIFF."""
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


def repeated(source: Path, times: int) -> Path:
    """A VRT of *source* repeated *times* x *times* (its bands and georeference)."""
    with rasterio.open(source) as src:
        width, height, count = src.width, src.height, src.count
        crs, transform, descriptions = src.crs, src.transform, src.descriptions
    gdal = ', '.join(repr(float(v)) for v in transform.to_gdal())
    lines = [
        f'<VRTDataset rasterXSize="{width * times}" rasterYSize="{height * times}">',
        f'  <SRS>{escape(crs.to_wkt())}</SRS>',
        f'  <GeoTransform>{gdal}</GeoTransform>',
    ]
    for band in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="UInt16" band="{band}">')
        lines.append(f'    <Description>{descriptions[band - 1]}</Description>')
        for i in range(times):
            for j in range(times):
                name = (
                    f'<SourceFilename relativeToVRT="1">{source.name}</SourceFilename>'
                )
                rect = f'xOff="{j * width}" yOff="{i * height}" xSize="{width}"'
                whole = f'xOff="0" yOff="0" xSize="{width}" ySize="{height}"'
                lines += [
                    f'    <SimpleSource>{name}<SourceBand>{band}</SourceBand>',
                    f'      <SrcRect {whole}/>',
                    f'      <DstRect {rect} ySize="{height}"/></SimpleSource>',
                ]
        lines.append('  </VRTRasterBand>')
    lines.append('</VRTDataset>')
    path = source.with_name(f'S2A_MSIL2A_20170613T101031_{width * times}.vrt')
    path.write_text('\n'.join(lines))
    return path


def prepare(encoder: SceneEncoder, args: argparse.Namespace) -> SceneEncoder:
    """The encoder with --channels-last and --compile applied."""
    if args.channels_last:
        encoder.model.to(memory_format=torch.channels_last)
    if args.compile:
        model = encoder.model
        model.forward_features = torch.compile(model.forward_features)  # type: ignore[method-assign]
    return encoder


def synchronize(device: str) -> None:
    """Wait for the device's queued work."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def bare_forward(
    encoder: SceneEncoder, chips: int, size: int, args: argparse.Namespace
) -> float:
    """Seconds of ``forward_features`` over *chips* chips of *size* px, batched."""
    device = torch.device(args.device)
    batches = [
        torch.randn(min(args.batch_size, chips - start), 12, size, size, device=device)
        for start in range(0, chips, args.batch_size)
    ]

    def run() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, torch.bfloat16, enabled=args.bf16),
        ):
            for batch in batches:
                encoder.forward_features(batch)

    run()  # warm-up (and compilation)
    synchronize(args.device)
    start = time.perf_counter()
    run()
    synchronize(args.device)
    return time.perf_counter() - start


def km2(pixels: int) -> float:
    """Area of *pixels* x *pixels* px at 10 m, in km^2."""
    return (pixels * 10 / 1000) ** 2


def table_embed(
    folder: Path, scene: Path, weights: dict[int, Path], args: argparse.Namespace
) -> None:
    """Table 1: embed against the bare forward, for each patch size."""
    print(
        '\n| weights | chips | embed s | bare forward s | embed / bare forward '
        '| embed chips/s | bare chips/s | embed km^2/s |\n|---|---|---|---|---|---|---|---|'
    )
    for patch_size in args.patch_sizes:
        encoder = prepare(load_encoder(weights[patch_size], args.device), args)
        options = {'batch_size': args.batch_size, 'bf16': args.bf16}
        # Warm-up on a small area (and compilation), then the scene.
        embed(
            scene,
            encoder,
            folder / 'warm.tif',
            bounds=_corner(scene, 64 * patch_size),
            device=args.device,
            progress=False,
            overwrite=True,
            **options,
        )
        synchronize(args.device)
        start = time.perf_counter()
        result = embed(
            scene,
            encoder,
            folder / f'p{patch_size}.tif',
            folder / f'p{patch_size}.parquet',
            device=args.device,
            progress=False,
            overwrite=True,
            **options,
        )
        synchronize(args.device)
        seconds = time.perf_counter() - start
        encoded = result.chips - result.empty_chips
        bare = bare_forward(encoder, encoded, 32 * patch_size, args)
        print(
            f'| atto p{patch_size} | {encoded} of {32 * patch_size} px | {seconds:.2f} '
            f'| {bare:.2f} | {bare / seconds:.2f} | {encoded / seconds:.2f} '
            f'| {encoded / bare:.2f} | {km2(args.size) / seconds:.2f} |'
        )


def _corner(scene: Path, pixels: int) -> tuple[float, float, float, float]:
    """Bounds of the top-left *pixels* x *pixels* of *scene*."""
    with rasterio.open(scene) as src:
        left, top = src.transform * (0, 0)
        right, bottom = src.transform * (pixels, pixels)
    return (left, bottom, right, top)


def command(
    scene: Path, weights: Path, raster: Path, args: argparse.Namespace
) -> list[str]:
    """The embed command line (arguments after the program)."""
    line = [
        *('embed', str(scene), '--weights', str(weights), '--raster', str(raster)),
        *('--parquet', str(raster.with_suffix('.parquet')), '--no-progress'),
        *('--batch-size', str(args.batch_size), '--device', args.device),
    ]
    return [*line, '--bf16'] if args.bf16 else line


def timed(line: list[str], threads: int) -> float:
    """Seconds of a whole command with *threads* threads per process."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    start = time.perf_counter()
    subprocess.run(line, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def table_processes(
    folder: Path, scene: Path, weights: Path, args: argparse.Namespace
) -> None:
    """Table 2: one process against two, whole commands."""
    python = sys.executable
    cpu = args.device == 'cpu'
    threads = args.threads or torch.get_num_threads()
    startup = timed([python, '-c', 'import torchgeo_mmearth.inference.embedding'], 1)
    one = folder / 'one.tif'
    two = folder / 'two.tif'
    seconds_one = timed(
        [python, '-m', 'torchgeo_mmearth', *command(scene, weights, one, args)], threads
    )
    seconds_two = timed(
        [
            *(python, '-m', 'torch.distributed.run', '--standalone'),
            *('--nproc-per-node', '2', '-m', 'torchgeo_mmearth'),
            *command(scene, weights, two, args),
        ],
        max(1, threads // 2) if cpu else threads,
    )
    chips = len(gpd.read_parquet(one.with_suffix('.parquet')))
    same = one.read_bytes() == two.read_bytes() and (
        one.with_suffix('.parquet').read_bytes()
        == two.with_suffix('.parquet').read_bytes()
    )
    share = f'{max(1, threads // 2)} threads each' if cpu else 'one GPU each'
    print(
        f'\nstart-up of one process (import torch and the package): {startup:.1f} s; '
        f'{chips} chips\n\n| processes | s | chips/s | km^2/s | vs 1 process |\n'
        f'|---|---|---|---|---|\n'
        f'| 1 ({threads} threads) | {seconds_one:.1f} | {chips / seconds_one:.2f} '
        f'| {km2(args.size) / seconds_one:.2f} | 1.00 |\n'
        f'| 2 ({share}) | {seconds_two:.1f} | {chips / seconds_two:.2f} '
        f'| {km2(args.size) / seconds_two:.2f} | {seconds_one / seconds_two:.2f} |\n\n'
        f'outputs of 1 and 2 processes byte-identical: {same}'
    )


def table_memory(
    folder: Path, base: Path, weights: Path, args: argparse.Namespace
) -> None:
    """Table 3: peak RSS as the area grows."""
    encoder = load_encoder(weights, 'cpu')
    features, p = encoder.num_features, encoder.patch_size
    print(
        f'\nblock size {args.block_size} output px; patch size {p}, {features} features'
        '\n\n| scene px | km^2 | one float32 array of the area | peak RSS | s |'
        '\n|---|---|---|---|---|'
    )
    with rasterio.open(base) as src:
        side = src.width
    for size in args.memory_sizes:
        scene = base if size == side else repeated(base, -(-size // side))
        with rasterio.open(scene) as src:
            size = src.width
        whole = features * (size // p) ** 2 * 4
        options = {
            'scene': str(scene),
            'weights': str(weights),
            'raster': str(folder / f'memory_{size}.tif'),
            'batch_size': args.batch_size,
            'block_size': args.block_size,
            'device': args.device,
            'bf16': args.bf16,
            'overwrite': True,
        }
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, '-c', _MEASURE, json.dumps(options)],
            check=True,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                'OMP_NUM_THREADS': str(args.threads or torch.get_num_threads()),
            },
        )
        seconds = time.perf_counter() - start
        rss = int(done.stdout.split()[-1]) * 1024
        print(
            f'| {size} | {km2(size):.0f} | {whole / 2**30:.2f} GiB | '
            f'{rss / 2**30:.2f} GiB | {seconds:.0f} |'
        )


def main() -> None:
    """Write the scenes and weights, then print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=1024, help='scene side (px)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--bf16', action='store_true')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument(
        '--compile', action='store_true', help='torch.compile (table 1)'
    )
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--block-size', type=int, default=256)
    parser.add_argument('--patch-sizes', type=int, nargs='+', default=[8, 16])
    parser.add_argument(
        '--memory-sizes',
        type=int,
        nargs='+',
        default=[1024, 2048, 4096],
        help='scene sides of table 3 (px), VRTs over the --size scene beyond it',
    )
    parser.add_argument(
        '--skip', nargs='*', default=[], choices=('embed', 'processes', 'memory')
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = tile(folder, args.size)
        weights = {p: export_file(folder / f'atto_p{p}.pth', p) for p in (8, 16)}
        print(
            f'scene: {args.size} x {args.size} px at 10 m ({km2(args.size):.1f} km^2), '
            f'device {args.device}, bf16 {args.bf16}, channels_last '
            f'{args.channels_last}, compile {args.compile}, '
            f'{torch.get_num_threads()} threads, batch {args.batch_size}; torch '
            f'{torch.__version__}; synthetic layout of a real patch, random atto weights'
        )
        if 'embed' not in args.skip:
            table_embed(folder, scene, weights, args)
        if 'processes' not in args.skip:
            table_processes(folder, scene, weights[8], args)
        if 'memory' not in args.skip:
            table_memory(folder, scene, weights[8], args)


if __name__ == '__main__':
    main()
