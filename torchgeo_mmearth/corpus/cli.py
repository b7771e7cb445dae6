"""``torchgeo-mmearth build-corpus``: build an MMEarth-format corpus from GeoTIFFs."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import report_error
from .._interrupt import command_line, report_interrupted
from .bigearthnet import bigearthnet_source
from .builder import AUXILIARY_MODALITIES, BuildInterrupted, CorpusBuilder
from .geotiff import GeoTiffSource
from .locations import Location, grid_locations, locations_from_geojson
from .sources import ModalitySource

__all__ = ['build_parser', 'main']

_MODALITIES = ('sentinel2', *AUXILIARY_MODALITIES)

_EPILOG = f"""\
modalities with a source: {', '.join(AUXILIARY_MODALITIES)}
(aster takes a DEM: elevation is resampled bilinearly and the slope computed on
the tile grid; era5 takes monthly ERA5(-Land) aggregates, e.g. in EPSG:4326, with
the variables temperature_2m, temperature_2m_min, temperature_2m_max and
total_precipitation_sum: paired by the Sentinel-2 month (previous month, current
month and the --era5-year-months window), each value the tile mean of the
bilinearly resampled raster; lat, lon and month are derived; modalities without
a source are written as no-data).

File names: the default expression takes the first YYYYMMDD[THHMMSS] run of
digits as the date and a trailing _<band> (e.g. _B02, _VV) as the band of a
single-band file (ERA5 also takes a month, YYYYMM or YYYY-MM, and a trailing
_<variable>). Give --regex with named groups date, band, orbit and level
otherwise, and --bands for multi-band files (ERA5 files whose band descriptions
name the variables need none).

examples:
  torchgeo-mmearth build-corpus --root data --name my_corpus \\
      --sentinel2 s2/ --source sentinel1=s1/ --source aster=dem.tif \\
      --bands sentinel1=VV,VH --locations points.geojson
  torchgeo-mmearth build-corpus --root data --name with_era5 \\
      --sentinel2 s2/ --source era5=era5_land_monthly/ --grid
  torchgeo-mmearth build-corpus --root data --name 1M_v001_64 --tile-size 64 \\
      --sentinel2 s2/ --grid 64
  torchgeo-mmearth build-corpus --root data --name ben --bigearthnet \\
      --sentinel2 BigEarthNet-S2/ --source sentinel1=BigEarthNet-S1/ --grid 56

The corpus is written to ROOT/data_NAME/ (data_NAME.h5 and the
_band_stats.json, _splits.json, _tile_info.json and _build_report.json files).
An interrupted build resumes when run again with the same arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``build-corpus``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog='torchgeo-mmearth build-corpus',
        description='Build an MMEarth-format pretraining corpus from your own '
        'rasters: Sentinel-2 tiles (the anchor: grid, CRS and date) with every other '
        'modality paired by location and time and resampled onto them.',
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    output = parser.add_argument_group('output')
    output.add_argument(
        '--root', type=Path, required=True, help='folder that receives data_NAME/'
    )
    output.add_argument(
        '--name',
        required=True,
        help='corpus name: the corpus is ROOT/data_NAME (1M_v001_64 gives the '
        "folder of torchgeo's MMEarth64 subset)",
    )
    output.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an existing corpus and discard a partial build',
    )

    inputs = parser.add_argument_group('inputs')
    inputs.add_argument(
        '--sentinel2',
        type=Path,
        nargs='+',
        required=True,
        metavar='PATH',
        help='Sentinel-2 GeoTIFF files or folders (searched recursively)',
    )
    inputs.add_argument(
        '--source',
        action='append',
        default=[],
        metavar='MODALITY=PATH',
        help='files or a folder for another modality (repeat the option for more '
        'modalities, or for more paths of one modality)',
    )
    inputs.add_argument(
        '--glob',
        default='*.tif*',
        help='glob of raster files in folders (default: %(default)s)',
    )
    inputs.add_argument(
        '--regex',
        action='append',
        default=[],
        metavar='MODALITY=REGEX',
        help='file-name regular expression of a modality, with optional named '
        'groups date, band, orbit and level',
    )
    inputs.add_argument(
        '--date-format',
        action='append',
        default=[],
        metavar='MODALITY=FORMAT',
        help='strptime format of the date group (default: YYYYMMDD[THHMMSS] or ISO)',
    )
    inputs.add_argument(
        '--bands',
        action='append',
        default=[],
        metavar='MODALITY=B1,B2,...',
        help='band names of multi-band files, in file order',
    )
    inputs.add_argument(
        '--nodata',
        action='append',
        default=[],
        metavar='MODALITY=VALUE',
        help="no-data value of a modality's files (default: each file's own; 0 for "
        'Sentinel-2)',
    )
    inputs.add_argument(
        '--level',
        choices=('l1c', 'l2a'),
        help='Sentinel-2 processing level (default: L1C/L2A in the file names)',
    )
    inputs.add_argument(
        '--orbit',
        choices=('asc', 'desc'),
        help='Sentinel-1 orbit direction (default: the orbit group, or derived from '
        'the acquisition time)',
    )
    inputs.add_argument(
        '--bigearthnet',
        action='store_true',
        help='read --sentinel2 and the sentinel1 source as BigEarthNet patch folders '
        '(dates from *_labels_metadata.json)',
    )

    where = parser.add_argument_group('locations (one of)')
    group = where.add_mutually_exclusive_group(required=True)
    group.add_argument(
        '--locations',
        type=Path,
        metavar='GEOJSON',
        help='GeoJSON of points (polygons: centroids); properties.date and id are used',
    )
    group.add_argument(
        '--point',
        type=float,
        nargs=2,
        action='append',
        metavar=('LON', 'LAT'),
        help='a tile centre in degrees (repeat for more)',
    )
    group.add_argument(
        '--grid',
        type=int,
        nargs='?',
        const=0,
        metavar='STRIDE',
        help='tiles on a grid inside every Sentinel-2 scene, STRIDE pixels apart '
        '(default: the tile size, no overlap)',
    )

    tiles = parser.add_argument_group('tiles and pairing')
    tiles.add_argument(
        '--tile-size', type=int, default=64, help='tile side in pixels (default: 64)'
    )
    tiles.add_argument(
        '--resolution',
        type=float,
        default=10.0,
        help='pixel size in Sentinel-2 CRS units (default: 10)',
    )
    tiles.add_argument(
        '--max-days',
        type=float,
        default=30.0,
        help='largest time between a dated acquisition and the Sentinel-2 date '
        '(default: 30)',
    )
    tiles.add_argument(
        '--era5-year-months',
        type=int,
        default=12,
        metavar='N',
        help="months of the ERA5 'year' window, ending with the Sentinel-2 month "
        '(default: 12, one year; 13 reproduces the published MMEarth data)',
    )
    tiles.add_argument(
        '--min-valid',
        type=float,
        default=0.9,
        help='smallest fraction of valid Sentinel-2 pixels to keep a tile (default: '
        '0.9)',
    )

    splits = parser.add_argument_group('splits and build')
    splits.add_argument(
        '--splits',
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=('TRAIN', 'VAL', 'TEST'),
        help='split fractions (default: 0.8 0.1 0.1)',
    )
    splits.add_argument(
        '--split-by',
        choices=('tile', 'scene'),
        default='tile',
        help='split tiles independently, or keep the tiles of a scene together '
        '(default: tile)',
    )
    splits.add_argument('--seed', type=int, default=0, help='split seed (default: 0)')
    splits.add_argument(
        '--segment-size',
        type=int,
        default=64,
        help='locations per resumable segment (default: 64)',
    )
    splits.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _pairs(
    parser: argparse.ArgumentParser, values: Sequence[str], option: str
) -> dict[str, list[str]]:
    """Parse repeated ``MODALITY=VALUE`` options."""
    pairs: dict[str, list[str]] = {}
    for value in values:
        modality, sep, text = value.partition('=')
        if not sep or not text:
            parser.error(f'{option} expects MODALITY=VALUE, got {value!r}')
        if modality not in _MODALITIES:
            parser.error(
                f'{option}: unknown modality {modality!r}; valid modalities are '
                f'{list(_MODALITIES)}'
            )
        pairs.setdefault(modality, []).append(text)
    return pairs


def _source(
    modality: str,
    paths: Sequence[Path],
    args: argparse.Namespace,
    options: dict[str, Any],
) -> ModalitySource:
    if args.bigearthnet and modality in ('sentinel2', 'sentinel1'):
        nodata = options.get('nodata')
        return bigearthnet_source(
            paths, modality, **({'nodata': nodata} if nodata is not None else {})
        )
    return GeoTiffSource.from_paths(paths, modality, filename_glob=args.glob, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchgeo-mmearth build-corpus``.

    Args:
        argv: the arguments after ``build-corpus`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 when the build fails (one ``error:``
        line), 130 when interrupted (Ctrl-C): the tiles built are kept and the
        printed command resumes the build.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    # The same command, less --overwrite (which would discard the kept tiles).
    resume = command_line('build-corpus', [a for a in argv if a != '--overwrite'])
    paths = _pairs(parser, args.source, '--source')
    if 'sentinel2' in paths:
        parser.error('give Sentinel-2 with --sentinel2, not --source')
    regexes = _pairs(parser, args.regex, '--regex')
    formats = _pairs(parser, args.date_format, '--date-format')
    bands = _pairs(parser, args.bands, '--bands')
    nodata = _pairs(parser, args.nodata, '--nodata')

    def options(modality: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if modality in regexes:
            found['filename_regex'] = regexes[modality][-1]
        if modality in formats:
            found['date_format'] = formats[modality][-1]
        if modality in bands:
            found['bands'] = [b for b in bands[modality][-1].split(',') if b]
        if modality in nodata:
            try:
                found['nodata'] = float(nodata[modality][-1])
            except ValueError:
                parser.error(f'--nodata {modality}: not a number')
        if modality == 'sentinel2' and args.level:
            found['level'] = args.level
        if modality == 'sentinel1' and args.orbit:
            found['orbit'] = args.orbit
        return found

    messages = logging.StreamHandler(sys.stderr)
    messages.setFormatter(logging.Formatter('%(message)s'))
    # The builder's messages (such as where a build resumes), for this run.
    logger = logging.getLogger('torchgeo_mmearth.corpus')
    logger.addHandler(messages)
    logger.setLevel(logging.INFO)
    try:
        sentinel2 = _source('sentinel2', args.sentinel2, args, options('sentinel2'))
        sources = {
            modality: _source(
                modality, [Path(p) for p in values], args, options(modality)
            )
            for modality, values in paths.items()
        }
        builder = CorpusBuilder(
            sentinel2,
            sources,
            tile_size=args.tile_size,
            resolution=args.resolution,
            max_days=args.max_days,
            min_valid=args.min_valid,
            split_by=args.split_by,
            era5_year_months=args.era5_year_months,
        )
        locations: list[Location]
        if args.locations is not None:
            locations = locations_from_geojson(args.locations)
        elif args.point:
            locations = [Location(lon, lat) for lon, lat in args.point]
        else:
            locations = grid_locations(
                sentinel2, args.tile_size, args.grid or None, args.resolution
            )
        report = builder.build(
            args.root,
            args.name,
            locations,
            splits=args.splits,
            seed=args.seed,
            segment_size=args.segment_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (OSError, ValueError, TypeError) as error:
        return report_error(error)
    except BuildInterrupted as interrupted:
        return report_interrupted(str(interrupted), 'To resume', resume)
    except KeyboardInterrupt:
        kept = (
            'what was built is kept (whole segments of '
            f'--segment-size {args.segment_size} locations)'
        )
        return report_interrupted(kept, 'To resume', resume)
    finally:
        logger.removeHandler(messages)
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
