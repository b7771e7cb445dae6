r"""Rebuild the demo corpus packaged with torchgeo-mmearth (subset ``'MMEarthDemo'``).

The demo corpus is built by the corpus builder from the real BigEarthNet example
patches shipped in two packages on PyPI:

* ``bigearthnet-common==2.8.0`` (wheel): ``BigEarthNet-S2-Example.tar.bz2`` and
  ``BigEarthNet-S1-Example.tar.bz2``, 6 Sentinel-2 L2A patches and 6 Sentinel-1
  patches;
* ``bigearthnet-gdf-builder==0.1.10`` (sdist): ``tests/datasets/tiny/`` (11
  Sentinel-2 patches, 3 of them the same as above) and ``tests/datasets/s1-tiny/``
  (3 Sentinel-1 patches).

That is 14 distinct Sentinel-2 patches of 120 x 120 px at 10 m, and 9 Sentinel-1
patches of which 6 overlap a Sentinel-2 patch (the other 3 lie where no
Sentinel-2 patch is). Each Sentinel-2 patch gives the four 64 x 64 px corner
crops (tile origins at pixels 0 and 56: every pixel of the patch is covered,
neighbouring crops overlap by 8 px), and the splits keep the four crops of a
patch together (``split_by='scene'``) so that no pixel is in two splits.
Sentinel-1 is paired by location and time (nearest acquisition within 7 days per
orbit direction); every other modality is no-data, lat/lon/month are derived.
``data_bigearthnet_demo_labels.json`` keeps the BigEarthNet labels (43-class
nomenclature) of the patch each tile was cropped from, for downstream examples.

Run it as::

    python -m pip download --no-deps bigearthnet-common==2.8.0 -d PACKAGES
    python -m pip download --no-deps --no-binary :all: \\
        bigearthnet-gdf-builder==0.1.10 -d PACKAGES
    python -m torchgeo_mmearth.corpus.demo --packages PACKAGES --overwrite

or with ``--download`` to run the two ``pip download`` commands itself.
"""

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from rasterio.warp import transform as transform_coords
from torchgeo.datasets import BigEarthNet

from ..datasets.mmearth import DEMO_ROOT, MMEarth
from .bigearthnet import bigearthnet_source
from .builder import BuildReport, build_corpus
from .locations import grid_locations
from .writer import _write_json

__all__ = ['BIGEARTHNET_CLASSES', 'DEMO_NAME', 'build_demo', 'main', 'write_labels']

#: Corpus name of the demo (folder ``data_bigearthnet_demo``).
DEMO_NAME = MMEarth.subsets['MMEarthDemo'].removeprefix('data_')

#: BigEarthNet's 43-class nomenclature (CORINE Land Cover level 3), in the
#: order of TorchGeo's ``BigEarthNet.class_sets[43]``.
BIGEARTHNET_CLASSES: tuple[str, ...] = tuple(BigEarthNet.class_sets[43])

_WHEEL = 'bigearthnet_common-2.8.0-py3-none-any.whl'
_SDIST = 'bigearthnet-gdf-builder-0.1.10.tar.gz'
_REQUIREMENTS = (
    ('bigearthnet-common==2.8.0', ()),
    ('bigearthnet-gdf-builder==0.1.10', ('--no-binary', ':all:')),
)

ATTRIBUTION = """\
# BigEarthNet demo corpus (torchgeo-mmearth subset 'MMEarthDemo')

An MMEarth-format corpus of 56 tiles of 64 x 64 px at 10 m, built by
`python -m torchgeo_mmearth.corpus.demo` from the real BigEarthNet example patches
of the PyPI packages bigearthnet-common 2.8.0 and bigearthnet-gdf-builder 0.1.10:
14 Sentinel-2 L2A patches (four corner crops each) and the 6 Sentinel-1 patches
that overlap them (VV and VH, paired by location and date). All other modalities
are no-data; lat, lon and month are derived. Splits (by patch): 40 / 8 / 8 tiles.
`data_bigearthnet_demo_labels.json` gives every tile the BigEarthNet labels
(43-class nomenclature) of the patch it was cropped from.

## Source data and licence

Contains modified BigEarthNet data: resampled (20 m and 60 m bands to 10 m,
bilinear), cropped (64 x 64 px tiles) and converted (MMEarth HDF5 layout).

BigEarthNet is made available under the Community Data License Agreement -
Permissive, Version 1.0 (CDLA-Permissive-1.0),
https://cdla.dev/permissive-1-0/. It contains modified Copernicus Sentinel data
(2017-2018).

If you use this data, please cite:

G. Sumbul, M. Charfuelan, B. Demir, V. Markl, "BigEarthNet: A Large-Scale
Benchmark Archive for Remote Sensing Image Understanding", IEEE International
Geoscience and Remote Sensing Symposium (IGARSS), pp. 5901-5904, Yokohama,
Japan, 2019.

G. Sumbul, A. de Wall, T. Kreuziger, F. Marcelino, H. Costa, P. Benevides,
M. Caetano, B. Demir, V. Markl, "BigEarthNet-MM: A Large Scale Multi-Modal
Multi-Label Benchmark Archive for Remote Sensing Image Classification and
Retrieval", IEEE Geoscience and Remote Sensing Magazine, vol. 9, no. 3,
pp. 174-180, 2021.
"""


def extract_patches(packages: Path, workdir: Path) -> tuple[list[Path], list[Path]]:
    """Unpack the BigEarthNet example patches of the two packages.

    Args:
        packages: folder holding the downloaded wheel and sdist.
        workdir: folder to unpack into.

    Returns:
        The Sentinel-2 and Sentinel-1 patch folders (roots to search).

    Raises:
        FileNotFoundError: naming a missing package and the command to get it.
    """
    wheel, sdist = packages / _WHEEL, packages / _SDIST
    for path, (requirement, options) in zip((wheel, sdist), _REQUIREMENTS, strict=True):
        if not path.is_file():
            raise FileNotFoundError(
                f'{path} is missing; download it with: python -m pip download '
                f'--no-deps {" ".join(options)} {requirement} -d {packages}'.replace(
                    '  ', ' '
                )
            )
    with zipfile.ZipFile(wheel) as archive:
        for member in (
            'BigEarthNet-S2-Example.tar.bz2',
            'BigEarthNet-S1-Example.tar.bz2',
        ):
            with (
                archive.open(f'bigearthnet_common/{member}') as handle,
                tarfile.open(fileobj=handle, mode='r:bz2') as tar,
            ):
                tar.extractall(workdir, filter='data')
    prefix = 'bigearthnet-gdf-builder-0.1.10/tests/datasets/'
    with tarfile.open(sdist, 'r:gz') as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith((prefix + 'tiny/', prefix + 's1-tiny/'))
        ]
        tar.extractall(workdir, members=members, filter='data')
    tests = workdir / prefix
    return (
        [workdir / 'BigEarthNet-S2-Example', tests / 'tiny'],
        [workdir / 'BigEarthNet-S1-Example', tests / 's1-tiny'],
    )


def download(packages: Path) -> None:
    """Download the two packages with pip (no dependencies).

    Args:
        packages: destination folder.

    Raises:
        subprocess.CalledProcessError: if pip fails.
        subprocess.TimeoutExpired: if pip takes longer than 10 minutes.
    """
    for requirement, options in _REQUIREMENTS:
        subprocess.run(
            [
                sys.executable,
                '-m',
                'pip',
                'download',
                '--no-deps',
                *options,
                requirement,
                '-d',
                str(packages),
            ],
            check=True,
            # pip waits on the network; never hang a build or a test on it
            timeout=600,
        )


def write_labels(folder: Path, s2_roots: Sequence[Path]) -> Path:
    """Write ``<corpus>_labels.json``: the BigEarthNet labels of every tile.

    A tile inherits the labels of the Sentinel-2 patch it was cropped from: the
    patch whose bounds hold the tile's centre (``lat``/``lon`` of its tile info;
    two patches of one acquisition share an ``S2_SCENE``). BigEarthNet labels are
    per 120 px patch, so a 64 px corner crop may lack some of its classes.

    Args:
        folder: the corpus folder (``.../data_bigearthnet_demo``).
        s2_roots: folders holding the patches' ``*_labels_metadata.json``.

    Returns:
        The written file: ``{'classes': [...43 names], 'labels': {tile id:
        [class indices]}}``.

    Raises:
        ValueError: if a tile's centre lies in no patch, or in two.
    """
    patches = [
        json.loads(path.read_text())
        for root in s2_roots
        for path in sorted(Path(root).rglob('*_labels_metadata.json'))
    ]
    tile_info = json.loads((folder / f'{folder.name}_tile_info.json').read_text())
    index = {name: i for i, name in enumerate(BIGEARTHNET_CLASSES)}
    labels: dict[str, list[int]] = {}
    for tile_id, info in tile_info.items():
        found = set()
        for patch in patches:
            (x,), (y,) = transform_coords(
                'EPSG:4326', patch['projection'], [info['lon']], [info['lat']]
            )
            box = patch['coordinates']
            if box['ulx'] < x < box['lrx'] and box['lry'] < y < box['uly']:
                found.add(tuple(sorted(index[name] for name in patch['labels'])))
        if len(found) != 1:
            raise ValueError(
                f'tile {tile_id} of {folder}: its centre lies in {len(found)} '
                'labelled patches, expected exactly one'
            )
        labels[tile_id] = list(found.pop())
    path = folder / f'{folder.name}_labels.json'
    _write_json(path, {'classes': list(BIGEARTHNET_CLASSES), 'labels': labels})
    return path


def build_demo(
    packages: Path,
    root: Path = DEMO_ROOT,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build the demo corpus ``root/data_bigearthnet_demo``.

    Args:
        packages: folder holding the downloaded wheel and sdist.
        root: destination root (default: the packaged copy).
        overwrite: replace an existing demo corpus.
        progress: show a progress bar.

    Returns:
        The build report.
    """
    with tempfile.TemporaryDirectory() as workdir:
        s2_roots, s1_roots = extract_patches(Path(packages), Path(workdir))
        sentinel2 = bigearthnet_source(s2_roots, 'sentinel2')
        sentinel1 = bigearthnet_source(s1_roots, 'sentinel1')
        report = build_corpus(
            root,
            DEMO_NAME,
            sentinel2,
            grid_locations(sentinel2, tile_size=64, stride=56),
            sources={'sentinel1': sentinel1},
            tile_size=64,
            max_days=7,
            min_valid=0.9,
            splits=(0.7, 0.15, 0.15),
            split_by='scene',
            seed=0,
            overwrite=overwrite,
            progress=progress,
        )
        write_labels(report.folder, s2_roots)
    (report.folder / 'README.md').write_text(ATTRIBUTION)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the demo corpus from the command line.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog='python -m torchgeo_mmearth.corpus.demo',
        description='Rebuild the MMEarthDemo corpus from the BigEarthNet example '
        'patches of bigearthnet-common 2.8.0 and bigearthnet-gdf-builder 0.1.10.',
    )
    parser.add_argument(
        '--packages',
        type=Path,
        required=True,
        help=f'folder holding {_WHEEL} and {_SDIST} (pip download --no-deps)',
    )
    parser.add_argument(
        '--download', action='store_true', help='pip-download the packages first'
    )
    parser.add_argument(
        '--output',
        type=Path,
        default=DEMO_ROOT,
        help='root that receives data_bigearthnet_demo/ (default: %(default)s)',
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace an existing demo corpus'
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.download:
        download(args.packages)
    try:
        report = build_demo(
            args.packages, args.output, args.overwrite, not args.no_progress
        )
    except (FileExistsError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
