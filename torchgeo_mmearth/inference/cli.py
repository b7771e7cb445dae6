"""``torchgeo-mmearth embed``: MMEarth embeddings of Sentinel-2 rasters."""

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import USER_ERRORS, CommandLineError, check_new_output, report_error
from .._interrupt import command_line, report_interrupted

__all__ = ['build_parser', 'main']

_EPILOG = """\
Inputs are Sentinel-2 GeoTIFFs or VRTs, or folders of them: single-band files
named ..._B02.tif are grouped into scenes; multi-band files name their bands in
their band descriptions or by --bands. The processing level is an L1C or L2A in
a file name (or --level). The date of a scene is --date, else the first
YYYYMMDD[THHMMSS] or YYYY-MM-DD in its file name, else a date tag of its files
(SENSING_TIME, DATATAKE_1_DATATAKE_SENSING_START or PRODUCT_START_TIME as GDAL
reads Sentinel-2 products, else TIFFTAG_DATETIME). With --dataset, the inputs
are the paths of a TorchGeo RasterDataset class instead, dated by its
filename_regex.

examples:
  torchgeo-mmearth embed S2A_MSIL2A_20170613T101031_87_48/ \\
      --weights MMEarthWeights.S2_MP_MAE --raster emb.tif --parquet chips.parquet
  torchgeo-mmearth embed scenes/ --weights encoder.pth --raster emb.tif \\
      --bounds 404400 5341200 405600 5342400 --start 2017-06-01 --end 2017-06-30
  torchgeo-mmearth embed s2/ --dataset torchgeo.datasets.Sentinel2 \\
      --weights last.ckpt --parquet chips.parquet --device cuda --bf16

A --raster ending in .vrt writes a VRT over one COG per block in <name>_tiles/
(for areas too big for one file). On many GPUs or nodes, run it under torchrun:
each process embeds its share of the blocks on its GPU and the first writes the
outputs, the same files as one process writes:
  torchrun --standalone --nproc-per-node 4 -m torchgeo_mmearth embed scenes/ \
      --weights MMEarthWeights.S2_MP_MAE --raster emb.vrt --parquet chips.parquet \
      --device cuda --bf16

An interrupted run keeps its finished blocks and continues when run again with
the same arguments (with any number of processes), and writes the same files as
a run that was not interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``embed``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog='torchgeo-mmearth embed',
        description='Embed Sentinel-2 rasters with an MMEarth encoder: a dense '
        "Cloud-Optimized GeoTIFF at the encoder's output stride and a GeoParquet "
        'of pooled chip embeddings, georeferenced like the input.',
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('inputs', nargs='+', help='GeoTIFF/VRT files or folders')
    parser.add_argument(
        '--weights',
        required=True,
        help='an MMEarthWeights member (MMEarthWeights.S2_MP_MAE), an '
        'export-weights file or an MPMAETask checkpoint',
    )
    parser.add_argument('--raster', type=Path, help='embedding COG to write')
    parser.add_argument('--parquet', type=Path, help='chip GeoParquet to write')
    data = parser.add_argument_group('data')
    data.add_argument(
        '--dataset',
        help='class path of a TorchGeo RasterDataset taking the inputs as paths',
    )
    data.add_argument(
        '--bands', nargs='+', help='band names of multi-band files, in file order'
    )
    data.add_argument(
        '--fill',
        nargs='+',
        metavar='BAND=SUBSTITUTE',
        help='substitutes for bands of the weights the inputs lack, e.g. B1=B2 '
        "B9=B8A (as MMEarth's GEO-Bench So2Sat runs did)",
    )
    data.add_argument('--level', choices=('l1c', 'l2a'), help='processing level')
    data.add_argument(
        '--date',
        metavar='YYYY-MM-DD',
        help='acquisition date of all inputs (default: from the file names or tags)',
    )
    data.add_argument(
        '--bounds',
        nargs=4,
        type=float,
        metavar=('LEFT', 'BOTTOM', 'RIGHT', 'TOP'),
        help='area to embed (default: all)',
    )
    data.add_argument(
        '--bounds-crs', help='CRS of --bounds, e.g. EPSG:4326 (default: the rasters)'
    )
    data.add_argument('--start', help='first acquisition date (YYYY-MM-DD)')
    data.add_argument('--end', help='last acquisition date (YYYY-MM-DD)')
    run = parser.add_argument_group('run')
    run.add_argument('--chip-size', type=int, help='chip side in pixels (32 P)')
    run.add_argument('--margin', type=int, help='overlap per side in pixels (4 P)')
    run.add_argument(
        '--min-valid',
        type=float,
        default=0.5,
        help='valid fraction an output pixel needs (default: %(default)s)',
    )
    run.add_argument('--batch-size', type=int, default=16, help='chips per batch')
    run.add_argument(
        '--block-size',
        type=int,
        default=256,
        help='side of a block in output pixels: the unit of work, resumption and '
        'memory (default: %(default)s)',
    )
    run.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ...')
    run.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    run.add_argument(
        '--pca', type=int, metavar='K', help='write K principal components only'
    )
    run.add_argument(
        '--int8', action='store_true', help='int8 raster with a scale/offset per band'
    )
    run.add_argument('--overwrite', action='store_true', help='replace outputs')
    run.add_argument('--restart', action='store_true', help='ignore an interrupted run')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


#: Advice worded for the Python API in the errors that embed raises (a regular
#: expression), and the same advice in the command line's terms.
_COMMAND_LINE_TERMS = (
    (r'^date: ', '--date: '),
    (r'^time_range: ', '--start/--end: '),
    (r"pass date='YYYY-MM-DD'", 'add --date YYYY-MM-DD'),
    (r'pass bands=\[\.\.\.\]', 'add --bands'),
    (r"pass level='l1c' or 'l2a'", 'add --level l1c or --level l2a'),
    (
        r'Pass fill= .*',
        (
            'Add --fill BAND=SUBSTITUTE to substitute a neighbouring band (--fill '
            "B1=B2 B9=B8A is what MMEarth's GEO-Bench So2Sat runs did), or give "
            '--weights pretrained on the bands you have (MMEarthWeights.RGB_MAE '
            'for B2, B3, B4)'
        ),
    ),
)


def _in_command_line_terms(error: Exception) -> Exception:
    """*error*, or if it advises Python arguments, the same advice as flags."""
    message = str(error)
    for python, flags in _COMMAND_LINE_TERMS:
        message = re.sub(python, flags, message, flags=re.DOTALL)
    if message == str(error):
        return error
    reworded = CommandLineError(message)
    reworded.__cause__ = error
    return reworded


def _fill(values: Sequence[str] | None) -> dict[str, str] | None:
    """``--fill B1=B2 B9=B8A`` as ``{'B1': 'B2', 'B9': 'B8A'}``."""
    if values is None:
        return None
    pairs = [value.split('=') for value in values]
    bad = [value for value, pair in zip(values, pairs, strict=True) if len(pair) != 2]
    if bad:
        raise CommandLineError(
            f'--fill takes BAND=SUBSTITUTE pairs such as B1=B2, got {" ".join(bad)}'
        )
    return dict(pairs)


def _dataset(class_path: str, paths: Sequence[str], bands: Any) -> Any:
    module, _, name = class_path.rpartition('.')
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f'--dataset {class_path!r} is not an importable class ({error})'
        ) from error
    kwargs: dict[str, Any] = {'paths': list(paths)}
    if bands:
        kwargs['bands'] = bands
    return cls(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchgeo-mmearth embed``.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for a mistake (one ``error:`` line on stderr), 130
        when interrupted (the finished blocks are kept).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Heavy imports (torch, rasterio, timm) only once the arguments are parsed.
    from .embedding import embed
    from .writers import output_paths

    inputs: Any = args.inputs
    bands = args.bands
    time_range = (args.start, args.end) if args.start or args.end else None
    try:
        if args.raster is None and args.parquet is None:
            raise CommandLineError('give --raster, --parquet or both')
        for output in output_paths(args.raster, args.parquet):
            check_new_output(output, args.overwrite)
        fill = _fill(args.fill)
        if args.dataset:
            inputs, bands = _dataset(args.dataset, args.inputs, args.bands), None
        result = embed(
            inputs,
            args.weights,
            args.raster,
            args.parquet,
            bands=bands,
            fill=fill,
            level=args.level,
            date=args.date,
            bounds=args.bounds,
            bounds_crs=args.bounds_crs,
            time_range=time_range,
            chip_size=args.chip_size,
            margin=args.margin,
            min_valid=args.min_valid,
            batch_size=args.batch_size,
            block_size=args.block_size,
            device=args.device,
            bf16=args.bf16,
            pca=args.pca,
            int8=args.int8,
            resume=not args.restart,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return report_interrupted(
            'the finished blocks are kept', 'To continue', command_line('embed', argv)
        )
    except USER_ERRORS as error:
        return report_error(_in_command_line_terms(error))
    if os.environ.get('RANK', '0') != '0':
        return 0  # under torchrun, the first process reports what it wrote
    written = [str(p) for p in (result.raster, result.parquet) if p is not None]
    print(
        f'{result.chips} chips ({result.empty_chips} without data) of '
        f'{result.grid.width} x {result.grid.height} px embedded: '
        f'{", ".join(written)}'
    )
    return 0
