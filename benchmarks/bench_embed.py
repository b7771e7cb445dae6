r"""``torchgeo-mmearth embed``: against a bare encoder, one against two processes, memory.

Three tables in one run, every ratio against a baseline measured in the same run:

1. **embed / bare forward**: :func:`~torchgeo_mmearth.inference.embed` (reading,
   normalisation, the encoder, stitching, saving blocks, writing the COG and the
   GeoParquet) against ``encoder.forward_features`` alone (``torch.inference_mode``,
   the same autocast) over the very batches that embed gave the encoder in that
   run, kept on the device, so that only the forward is timed. The ratio, bare
   forward s / embed s, is the share of the forward's speed that embed keeps (goal:
   >= 0.9 on one device). The bare forward over random batches of the same shapes is
   printed beside it: on a CPU, real chips make the forward slower (denormal floats;
   ``torch.set_flush_denormal(True)`` removes most of the difference). The time embed spends writing (the output
   writers and the saving of finished blocks, clocked inside the same run) is also
   printed, and the ratio without it. Both after a warm-up (and compilation).
2. **processes**: the command in one process against ``torchrun --standalone
   --nproc-per-node 2`` (gloo on a CPU; NCCL and one GPU each, ``LOCAL_RANK``, on
   CUDA) on the same scene, cut into 2 x 2 blocks so that each process gets half
   (``--processes-block-size`` to choose). On a CPU each of the 2 processes gets half
   of the threads (``OMP_NUM_THREADS``), so both rows use the same cores. Whole
   commands, process start-up included; the start-up (python or torchrun running only
   the command's imports and its process group) is measured on its own and printed,
   with the figures without it. Whether the two runs wrote byte-identical COGs and
   GeoParquets is printed.
3. **memory**: peak RSS (and on CUDA peak GPU memory) of embed in a fresh process per
   scene size, beside what one float32 array of the area's features (D x H/P x W/P x
   4 bytes) would take: the run holds a block (``--block-size``) and, for one COG,
   a 256 px tile of every band, not the area, so the peak RSS stays flat while that
   array grows. Scenes beyond ``--size`` are VRTs
   repeating the ``--size`` scene (nothing big is written as input). The output is
   one COG, or with ``--memory-vrt`` a VRT over a COG per block. ``--memory-limit
   GIB`` runs each process in a cgroup v1 memory group of that size (root, Linux):
   an area whose one float32 array is larger than the limit shows that it is never
   held. ``--memory-stand-in FEATURES`` replaces the encoder by one strided
   convolution to that many features: the same reading, blocks and writers at a
   fraction of the compute, so that such an area takes minutes, not hours, on a CPU
   (memory figures only; the time is not an encoder's).

Every row gives km^2/s (10 m pixels) and chips/s.

Honesty: the scene is a 12-band Sentinel-2 L2A raster at 10 m tiled from one real
BigEarthNet patch of the tests (``tests/data/bigearthnet``,
S2A_MSIL2A_20170613T101031_87_48, every band resampled to 10 m, mirrored at every
other tile so that no edge is a seam). Its pixels are real radiometry, its layout is
not a real landscape: the figures are speed and memory only, nothing about embedding
quality. The weights are a seeded random MMEarth ConvNeXt V2 atto (Nedungadi et al.,
ECCV 2024, https://arxiv.org/abs/2405.02771), patch sizes 8 and 16, in the
``export-weights`` format; trained atto weights run at the same speed, larger models
do not.

Run from the repository root. On a CPU (the default sizes take about 10 minutes on 2
idle cores, 5.5 of them the 4096 px scene of table 3; ``--memory-sizes 1024 2048``
for a quicker run)::

    .venv/bin/python benchmarks/bench_embed.py --threads 2

On a GPU (bf16 autocast; ``--channels-last`` and ``--compile`` apply to the encoder
of table 1, as a prepared ``SceneEncoder`` passed to embed: the command has no such
flags; table 2 then needs 2 GPUs)::

    .venv/bin/python benchmarks/bench_embed.py --device cuda --bf16 --channels-last \
        --compile --size 4096 --batch-size 64 --memory-sizes 4096 8192 16384

Sizes: ``--size`` (tables 1 and 2), ``--memory-sizes`` (table 3; a 16384 px scene
keeps about 11 GB of features on disk in the run's temporary folder), ``--skip`` to
leave tables out. An area larger than a memory limit on a CPU, as a VRT of tiles, with
the stand-in (about 8 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_embed.py --threads 2 --skip embed processes \
        --memory-sizes 1024 4096 8192 --memory-batch-size 2 --block-size 128 \
        --memory-stand-in 2048 --memory-vrt --memory-limit 2.5

and into one COG (about 8 minutes)::

    .venv/bin/python benchmarks/bench_embed.py --threads 2 --skip embed processes \
        --memory-sizes 4096 16384 --memory-batch-size 2 --block-size 128 \
        --memory-stand-in 320 --memory-limit 2.5
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import geopandas as gpd  # type: ignore[import-untyped]
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.inference.conftest import MEASURE_EMBED, export_file, tiled_scene
from torchgeo_mmearth.inference import SceneEncoder, embed, load_encoder
from torchgeo_mmearth.inference import blocks as _blocks
from torchgeo_mmearth.inference import embedding as _embedding
from torchgeo_mmearth.inference.blocks import layout


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
        # SceneEncoder.forward_features calls model.forward_features (timm).
        model: Any = encoder.model
        model.forward_features = torch.compile(model.forward_features)
    return encoder


def synchronize(device: str) -> None:
    """Wait for the device's queued work."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


@contextmanager
def writing_clock() -> Iterator[dict[str, float]]:
    """Seconds spent writing, while the context lasts, by what embed writes.

    Wraps (in this process only) the writers of the outputs (``write_raster``,
    ``write_parquet``) and the saving of finished blocks (``Workspace.save``).
    They run between batches, not beside them (the chips of the next batch are
    read in a thread, the writers are not), so the rest of embed's time is its
    time without writing.

    Yields:
        ``{'outputs': s, 'blocks': s}``, filled as embed runs.
    """
    spent = {'outputs': 0.0, 'blocks': 0.0}
    writers = ('write_raster', 'write_parquet')  # as embedding.py imports them
    originals = {name: getattr(_embedding, name) for name in writers}
    workspace: Any = _blocks.Workspace
    save = workspace.save

    def clocked(function: Callable[..., Any], key: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return run

    for name, function in originals.items():
        setattr(_embedding, name, clocked(function, 'outputs'))
    workspace.save = clocked(save, 'blocks')
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(_embedding, name, function)
        workspace.save = save


def bare_forward(
    encoder: SceneEncoder, batches: list[torch.Tensor], args: argparse.Namespace
) -> float:
    """Seconds of ``forward_features`` over *batches*, already on the device.

    Args:
        encoder: the encoder (as embed got it).
        batches: the input batches.
        args: the device, bf16.

    Returns:
        Seconds of the forward passes (the second of two runs).
    """
    device = torch.device(args.device)

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


@contextmanager
def recorded_inputs(encoder: SceneEncoder) -> Iterator[list[torch.Tensor]]:
    """The batches given to the encoder while the context lasts.

    The tensors themselves, not copies (embed makes a new one for each batch), so
    that recording takes no time from the run it records.

    Yields:
        The batches, filled as embed runs.
    """
    model: Any = encoder.model
    own = vars(model).get('forward_features')  # set by --compile
    forward = model.forward_features
    inputs: list[torch.Tensor] = []

    def record(batch: torch.Tensor) -> Any:
        inputs.append(batch)
        return forward(batch)

    model.forward_features = record
    try:
        yield inputs
    finally:
        if own is None:
            del model.forward_features
        else:
            model.forward_features = own


def human(size: float) -> str:
    """*size* bytes in MiB below a GiB, else in GiB."""
    if size < 2**30:
        return f'{size / 2**20:.0f} MiB'
    return f'{size / 2**30:.2f} GiB'


def km2(pixels: int) -> float:
    """Area of *pixels* x *pixels* px at 10 m, in km^2."""
    return (pixels * 10 / 1000) ** 2


def table_embed(
    folder: Path, scene: Path, weights: dict[int, Path], args: argparse.Namespace
) -> None:
    """Table 1: embed against the bare forward, for each patch size."""
    print(
        '\nembed / bare forward = bare forward s / embed s (the share of the '
        "forward's speed that embed keeps; goal >= 0.9). Writing: embed's time in "
        'write_raster + write_parquet (the COG and the GeoParquet) and in '
        'Workspace.save (the finished blocks), measured inside the same run; '
        '"w/o writing" subtracts it.\n'
        '\n| weights | chips | embed s | of which writing s | bare forward s '
        '| bare forward, random input s | embed / bare | embed w/o writing / bare '
        '| embed chips/s | w/o writing chips/s | bare chips/s | embed km^2/s '
        '| bare km^2/s |'
        '\n|---|---|---|---|---|---|---|---|---|---|---|---|---|'
    )
    for patch_size in args.patch_sizes:
        encoder = prepare(load_encoder(weights[patch_size], args.device), args)
        options = {
            'batch_size': args.batch_size,
            'block_size': args.block_size,
            'bf16': args.bf16,
        }
        # Warm-up on a small area, then the scene; with --compile on the scene
        # (every batch shape compiled before the timed run, as the bare forward).
        embed(
            scene,
            encoder,
            folder / 'warm.tif',
            bounds=None if args.compile else _corner(scene, 64 * patch_size),
            device=args.device,
            progress=False,
            overwrite=True,
            **options,
        )
        synchronize(args.device)
        with writing_clock() as spent, recorded_inputs(encoder) as batches:
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
        writing = spent['outputs'] + spent['blocks']
        computing = seconds - writing
        encoded = result.chips - result.empty_chips
        bare = bare_forward(encoder, batches, args)
        random = bare_forward(encoder, [torch.randn_like(b) for b in batches], args)
        area = km2(args.size)
        print(
            f'| atto p{patch_size} | {encoded} of {32 * patch_size} px '
            f'| {seconds:.2f} | {writing:.2f} | {bare:.2f} | {random:.2f} '
            f'| {bare / seconds:.2f} '
            f'| {bare / computing:.2f} | {encoded / seconds:.2f} '
            f'| {encoded / computing:.2f} | {encoded / bare:.2f} '
            f'| {area / seconds:.3f} | {area / bare:.3f} |'
        )


def _corner(scene: Path, pixels: int) -> tuple[float, float, float, float]:
    """Bounds of the top-left *pixels* x *pixels* of *scene*."""
    with rasterio.open(scene) as src:
        left, top = src.transform * (0, 0)
        right, bottom = src.transform * (pixels, pixels)
    return (left, bottom, right, top)


def command(
    scene: Path,
    weights: Path,
    raster: Path,
    args: argparse.Namespace,
    block_size: int | None = None,
) -> list[str]:
    """The embed command line (arguments after the program)."""
    line = [
        *('embed', str(scene), '--weights', str(weights), '--raster', str(raster)),
        *('--parquet', str(raster.with_suffix('.parquet')), '--no-progress'),
        *('--batch-size', str(args.batch_size), '--device', args.device),
        *('--block-size', str(block_size or args.block_size)),
    ]
    return [*line, '--bf16'] if args.bf16 else line


def timed(line: list[str], threads: int) -> float:
    """Seconds of a whole command with *threads* threads per process."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    start = time.perf_counter()
    subprocess.run(line, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


#: What the start-up runs of table 2 do: what the command imports, and the
#: process group of embed (gloo on a CPU, NCCL on CUDA), nothing else.
_STARTUP = """
import sys
import torch
import torchgeo_mmearth.main
from torchgeo_mmearth.inference.embedding import embed
from torchgeo_mmearth.inference.distributed import processes
with processes(torch.device(sys.argv[1])) as group:
    group.barrier()
"""


def split_blocks(
    size: int, patch_size: int, block_size: int | None
) -> tuple[int, list[int]]:
    """A block size and the chips of each block (as embed lays them out).

    Args:
        size: scene side in px.
        patch_size: the encoder's patch size (default chip and margin).
        block_size: the block size asked for; None for 2 x 2 blocks of whole
            chip centres (the area split in halves both ways), so that two
            processes of table 2 get the same share.

    Returns:
        The block size in output px and the number of chips of each block.
    """
    chip = 32 * patch_size
    margin = (chip // 8) // patch_size * patch_size
    core = (chip - 2 * margin) // patch_size
    cells = math.ceil(size / patch_size)
    if block_size is None:
        block_size = core * math.ceil(math.ceil(cells / core) / 2)
    found = layout((cells, cells), patch_size, chip, margin, block_size)
    return block_size, [len(block.chips) for block in found]


def table_processes(
    folder: Path, scene: Path, weights: Path, args: argparse.Namespace
) -> None:
    """Table 2: one process against two, whole commands."""
    python = sys.executable
    cpu = args.device == 'cpu'
    if not cpu and torch.cuda.device_count() < 2:
        print(
            f'\n(table 2 left out: 2 processes on CUDA take one GPU each, and '
            f'{torch.cuda.device_count()} is visible)'
        )
        return
    threads = args.threads or torch.get_num_threads()
    half = max(1, threads // 2) if cpu else threads
    torchrun = [python, '-m', 'torch.distributed.run', '--standalone']
    torchrun += ['--nproc-per-node', '2']
    patch_size = load_encoder(weights, 'cpu').patch_size
    block_size, sizes = split_blocks(args.size, patch_size, args.processes_block_size)
    shares = [sum(sizes[rank::2]) for rank in range(2)]
    script = folder / 'startup.py'
    script.write_text(_STARTUP)
    # Start-up alone: a second run of each, so that neither is a cold disk cache.
    timed([python, str(script), args.device], threads)
    startup_one = timed([python, str(script), args.device], threads)
    startup_two = timed([*torchrun, str(script), args.device], half)
    one = folder / 'one.tif'
    two = folder / 'two.tif'
    seconds_one = timed(
        [
            *(python, '-m', 'torchgeo_mmearth'),
            *command(scene, weights, one, args, block_size),
        ],
        threads,
    )
    seconds_two = timed(
        [
            *torchrun,
            '-m',
            'torchgeo_mmearth',
            *command(scene, weights, two, args, block_size),
        ],
        half,
    )
    chips = len(gpd.read_parquet(one.with_suffix('.parquet')))
    same_raster = one.read_bytes() == two.read_bytes()
    same_parquet = (
        one.with_suffix('.parquet').read_bytes()
        == two.with_suffix('.parquet').read_bytes()
    )
    share = f'OMP_NUM_THREADS={half} each' if cpu else 'one GPU each'
    area = km2(args.size)
    rows = []
    for name, seconds, startup in (
        (f'1 (OMP_NUM_THREADS={threads})', seconds_one, startup_one),
        (f'2 ({share})', seconds_two, startup_two),
    ):
        rest = seconds - startup
        rows.append(
            f'| {name} | {seconds:.1f} | {chips / seconds:.2f} | {area / seconds:.3f} '
            f'| {seconds_one / seconds:.2f} | {startup:.1f} | {chips / rest:.2f} '
            f'| {area / rest:.3f} |'
        )
    print(
        f'\n{args.size} x {args.size} px, patch size {patch_size}, {chips} chips in '
        f'{len(sizes)} blocks of --block-size {block_size} (chips {sizes}); with 2 '
        f'processes, process 0 takes {shares[0]} chips, process 1 {shares[1]}. '
        'Whole commands (python -m torchgeo_mmearth embed ... against torchrun '
        '--standalone --nproc-per-node 2 -m torchgeo_mmearth embed ...), start-up '
        'included; '
        + (
            f'each of the 2 processes has half of the {threads} threads, so both '
            'rows use the same cores. '
            if cpu
            else ''
        )
        + 'Start-up: python (or torchrun) running only the imports of the command '
        'and its process group, measured on its own; "w/o start-up" subtracts it '
        '(an estimate: measured in another run).\n'
        '\n| processes | s | chips/s | km^2/s | speed vs 1 process | start-up s '
        '| w/o start-up chips/s | w/o start-up km^2/s |'
        '\n|---|---|---|---|---|---|---|---|\n' + '\n'.join(rows) + '\n\n'
        f'outputs of 1 and 2 processes byte-identical: COG {same_raster}, '
        f'GeoParquet {same_parquet}'
    )


def measure(
    options: dict[str, object], args: argparse.Namespace
) -> tuple[dict[str, float] | str, float]:
    """Run ``MEASURE_EMBED`` in a fresh process: what it printed, and its seconds.

    Args:
        options: the arguments of embed (``scene`` empty: load the encoder only).
        args: the benchmark's arguments (threads, memory limit).

    Returns:
        The printed figures (or why the process failed) and the seconds of the
        whole process.
    """
    start = time.perf_counter()
    with _memory_group(args.memory_limit) as join:
        done = subprocess.run(
            [sys.executable, '-c', MEASURE_EMBED, json.dumps(options)],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                'OMP_NUM_THREADS': str(args.threads or torch.get_num_threads()),
            },
            preexec_fn=join,
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return f'failed (exit {done.returncode}): {done.stderr[-200:]!r}', seconds
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures, seconds


def table_memory(
    folder: Path, base: Path, weights: Path, args: argparse.Namespace
) -> None:
    """Table 3: peak RSS as the area grows, optionally under a memory limit."""
    encoder = load_encoder(weights, 'cpu')
    features, p = args.memory_stand_in or encoder.num_features, encoder.patch_size
    batch = args.memory_batch_size or args.batch_size
    model = 'the random atto'
    if args.memory_stand_in:
        model = (
            f'a stand-in encoder (one {p} x {p} convolution of stride {p} to '
            f'{features} features: the pipeline at a fraction of the compute, '
            'memory figures only)'
        )
    suffix = '.vrt' if args.memory_vrt else '.tif'
    output = 'a VRT over one COG per block' if args.memory_vrt else 'a COG'
    limit = ''
    if args.memory_limit:
        limit = (
            f'; each run in a memory cgroup limited to {args.memory_limit} GiB '
            '(v1 memory.limit_in_bytes: resident memory and page cache)'
        )
    common = {
        'weights': str(weights),
        'batch_size': batch,
        'block_size': args.block_size,
        'device': args.device,
        'bf16': args.bf16,
        'overwrite': True,
        'stand_in': args.memory_stand_in,
    }
    floor, _ = measure({**common, 'scene': ''}, args)
    floor_text = floor if isinstance(floor, str) else human(floor['rss'] * 1024)
    cuda = args.device.startswith('cuda')
    print(
        f'\n{model}; block size {args.block_size} output px, batch {batch}; patch size '
        f'{p}, {features} features{limit}. Each row is a fresh process (embed of the '
        f'whole scene to {output}, no GeoParquet); scenes beyond --size are VRTs '
        'repeating the --size scene. Peak RSS of a process that only imports torch '
        f'and the package and loads the encoder: {floor_text}. s: embed alone (the '
        'process: with start-up and loading the encoder).\n'
        '\n| scene px | km^2 | chips | one float32 array of the area | peak RSS '
        + ('| peak CUDA memory ' if cuda else '')
        + '| s (process s) | chips/s | km^2/s |\n|---|---|---|---|---|'
        + ('---|' if cuda else '')
        + '---|---|---|'
    )
    with rasterio.open(base) as src:
        side = src.width
    for size in args.memory_sizes:
        options: dict[str, object] = {
            **common,
            'raster': str(folder / f'memory_{size}{suffix}'),
        }
        if size <= side:
            options['scene'] = str(base)
            if size < side:
                options['bounds'] = _corner(base, size)
        else:
            scene = repeated(base, -(-size // side))
            options['scene'] = str(scene)
            with rasterio.open(scene) as src:
                size = src.width
        whole = features * (-(-size // p)) ** 2 * 4
        figures, process = measure(options, args)
        if isinstance(figures, str):
            print(f'| {size} | {km2(size):.1f} | | {human(whole)} | {figures} |')
            continue
        seconds, chips = figures['seconds'], int(figures['chips'])
        gpu = f'{human(figures["cuda"])} | ' if cuda else ''
        print(
            f'| {size} | {km2(size):.1f} | {chips} | {human(whole)} '
            f'| {human(figures["rss"] * 1024)} | {gpu}{seconds:.1f} '
            f'({process:.1f}) | {chips / seconds:.2f} | {km2(size) / seconds:.3f} |'
        )


@contextmanager
def _memory_group(gib: float | None) -> Iterator[Callable[[], None] | None]:
    """A cgroup v1 memory group of *gib* GiB, and what puts a child process in it."""
    if not gib:
        yield None
        return
    group = Path(f'/sys/fs/cgroup/memory/bench_embed_{os.getpid()}')
    group.mkdir()
    try:
        (group / 'memory.limit_in_bytes').write_text(str(int(gib * 2**30)))

        def join() -> None:
            (group / 'cgroup.procs').write_text(str(os.getpid()))

        yield join
    finally:
        group.rmdir()


def main() -> None:
    """Write the scenes and weights, then print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=1024, help='scene side (px)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--bf16', action='store_true')
    parser.add_argument(
        '--channels-last',
        action='store_true',
        help='encoder in channels_last memory format (table 1: the command has no '
        'such flag)',
    )
    parser.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile the encoder (table 1: the command has no such flag)',
    )
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument(
        '--block-size', type=int, default=256, help='block size of tables 1 and 3'
    )
    parser.add_argument(
        '--processes-block-size',
        type=int,
        help='block size of table 2 (default: 2 x 2 blocks, an even split)',
    )
    parser.add_argument(
        '--patch-sizes', type=int, nargs='+', default=[8, 16], help='table 1'
    )
    parser.add_argument(
        '--memory-sizes',
        type=int,
        nargs='+',
        default=[1024, 2048, 4096],
        help='scene sides of table 3 (px), VRTs over the --size scene beyond it',
    )
    parser.add_argument(
        '--memory-batch-size', type=int, help='batch of table 3 (default: --batch-size)'
    )
    parser.add_argument(
        '--memory-limit',
        type=float,
        metavar='GIB',
        help='run table 3 in a cgroup v1 memory group of this size (root, Linux)',
    )
    parser.add_argument(
        '--memory-stand-in',
        type=int,
        metavar='FEATURES',
        help='table 3 with a stand-in encoder: one strided convolution to this many '
        'features (an area whose float32 features exceed --memory-limit in minutes '
        'on a CPU; memory only)',
    )
    parser.add_argument(
        '--memory-vrt',
        action='store_true',
        help='table 3 writes a VRT over one COG per block (default: one COG)',
    )
    parser.add_argument(
        '--skip', nargs='*', default=[], choices=('embed', 'processes', 'memory')
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = tiled_scene(folder, args.size)
        weights = {p: export_file(folder / f'atto_p{p}.pth', p) for p in (8, 16)}
        device = (
            torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'
        )
        print(
            f'scene: {args.size} x {args.size} px at 10 m ({km2(args.size):.1f} km^2), '
            f'device {args.device} ({device}), bf16 {args.bf16}, channels_last '
            f'{args.channels_last}, compile {args.compile}, '
            f'{torch.get_num_threads()} threads of {os.cpu_count()} CPUs, batch '
            f'{args.batch_size}; torch {torch.__version__}. The scene tiles a real '
            'BigEarthNet patch (speed only, nothing about embedding quality); the '
            'weights are a random atto in export-weights format.'
        )
        if 'embed' not in args.skip:
            table_embed(folder, scene, weights, args)
        if 'processes' not in args.skip:
            table_processes(folder, scene, weights[8], args)
        if 'memory' not in args.skip:
            table_memory(folder, scene, weights[8], args)


if __name__ == '__main__':
    main()
