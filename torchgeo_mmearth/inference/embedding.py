"""Embed Sentinel-2 rasters: a dense embedding COG and a GeoParquet of chips.

The area is cut into square chips on the pixel lattice of the input. Each chip is
read (every band resampled onto the lattice, no-data as NaN), its bands matched
by name and normalised with the MMEarth statistics of its processing level,
and encoded; the encoder's last feature map has one pixel per ``P x P`` input
pixels (P the patch size). Neighbouring chips overlap by a margin and each keeps
only its centre, so that every output pixel is computed with context on all
sides and chip seams do not show. Chips are processed in a fixed order and
batching, and the results go to files on disk after every batch, so a run that is
interrupted continues where it stopped and writes the same files as a run that
was not.
"""

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from torch import Tensor
from torchvision.models._api import WeightsEnum
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from .. import __version__
from ..corpus import (
    Acquisition,
    GeoTiffSource,
    ModalitySource,
    Scene,
    TileGrid,
    as_source,
)
from ..corpus.sources import read_mosaic
from ..modalities import S2_TYPES
from ..transforms import BandRemap, MMEarthS2Normalize
from .blocks import Block, BlockData, Chip, Workspace, layout
from .distributed import Processes, processes
from .encoder import SceneEncoder, load_encoder
from .writers import output_paths, write_parquet, write_raster

__all__ = ['EmbeddingGrid', 'EmbeddingResult', 'area_grid', 'embed', 'sentinel2_source']

# GeoTIFF, BigTIFF and VRT inputs; a trailing _B02 names the band of a
# single-band file.
_BAND = r'(?:[_-](?P<band>(?i:B0?\d{1,2}A?|QA60|SCL|MSK_CLDPRB)))?\.(?i:tiff?|vrt)$'
# The date is the first YYYYMMDD[THHMMSS] run of digits (as the corpus builder's
# default) or YYYY-MM-DD in the name.
_NAME_DATE = r'\d{8}(?:T\d{6})?|\d{4}-\d{2}-\d{2}'
_FILENAME_REGEX = rf'^(?:.*?(?P<date>{_NAME_DATE}))?.*?{_BAND}'
# With a date given for all inputs, the names are not read for one.
_UNDATED_REGEX = rf'^.*?{_BAND}'
# Tags that date a scene whose file names do not, most specific first: the
# sensing times of GDAL's SENTINEL2 driver (which gdal_translate keeps in a
# GeoTIFF or VRT), then TIFF's DateTime ('YYYY:MM:DD HH:MM:SS'), which some
# writers set to the acquisition time and others to the time of writing.
_DATE_TAGS = (
    'SENSING_TIME',
    'DATATAKE_1_DATATAKE_SENSING_START',
    'PRODUCT_START_TIME',
    'TIFFTAG_DATETIME',
)
# ISO (2017-06-13T10:10:31.024Z) or TIFF (2017:06:13 10:10:31) date and time.
_TAG_DATE = re.compile(r'(\d{4})[-:](\d{2})[-:](\d{2})(?:[T ](\d{2}):(\d{2}):(\d{2}))?')


def sentinel2_source(
    inputs: Any,
    bands: Sequence[str] | None = None,
    level: str | None = None,
    date: date | str | None = None,
) -> ModalitySource:
    """The Sentinel-2 rasters to embed, as a corpus-builder source.

    The acquisition date of a scene of GeoTIFF or VRT files is *date* if given,
    else the first ``YYYYMMDD[THHMMSS]`` or ``YYYY-MM-DD`` in its file name
    (``S2A_MSIL2A_20170613T101031_..._B02.tif``, ``scene_2017-06-13.tif``),
    else read from the tags of its files (for a VRT, its own metadata):
    ``SENSING_TIME``, ``DATATAKE_1_DATATAKE_SENSING_START`` or
    ``PRODUCT_START_TIME`` (GDAL's Sentinel-2 metadata), else
    ``TIFFTAG_DATETIME``. The name comes before the tags: a name is what you see
    and set, and TIFF's DateTime is often the time the file was written.

    Args:
        inputs: GeoTIFF or VRT files, folders of them (single-band files named
            ``..._B02.tif`` are grouped into scenes), a TorchGeo
            ``RasterDataset`` or a :class:`~torchgeo_mmearth.corpus.ModalitySource`.
        bands: band names of multi-band files, in file order; None reads them
            from the files' band descriptions.
        level: processing level ('l1c' or 'l2a'); None reads ``L1C``/``L2A``
            from the file names.
        date: acquisition date of every scene of GeoTIFF or VRT files (a date,
            a datetime or an ISO string, ``'2017-06-13'``); None dates each
            scene by its file name or tags (a dataset or source keeps its own
            dates).

    Returns:
        The source; its ``bands`` are the canonical band names it provides.

    Raises:
        FileNotFoundError: if no raster is found.
        ValueError: if the band names, processing level or date of a scene
            cannot be told, or *date* is not a date or given with a dataset or
            source.
    """
    when = None if date is None else _date(date, 'date')
    # A TorchGeo RasterDataset (as the corpus builder tells one; a list of paths
    # has an index method too).
    dataset = all(hasattr(inputs, name) for name in ('index', 'crs', 'res'))
    if when is not None and (isinstance(inputs, ModalitySource) or dataset):
        raise ValueError(
            'date: only GeoTIFF and VRT inputs take a date; a TorchGeo '
            'RasterDataset is dated by its filename_regex'
        )
    if isinstance(inputs, ModalitySource):
        return as_source(inputs, 'sentinel2')
    if dataset:
        options: dict[str, Any] = {'level': level}
        if bands is not None:
            options['bands'] = bands
        return as_source(inputs, 'sentinel2', **options)
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if bands is None:
        bands = _described_bands(paths)

    class DatedSource(GeoTiffSource):
        """The files' scenes (found by ``from_paths``), dated as described above."""

        def __init__(self, scenes: Sequence[Scene], *args: Any) -> None:
            super().__init__([_dated(scene, when) for scene in scenes], *args)

    return DatedSource.from_paths(
        [Path(p) for p in paths],
        'sentinel2',
        filename_glob='*',
        filename_regex=_FILENAME_REGEX if when is None else _UNDATED_REGEX,
        bands=bands,
        level=level,
    )


def _dated(scene: Scene, date: datetime | None) -> Scene:
    """*scene* with its acquisition date: *date*, its name's or its tags'."""
    found = date or scene.date or _tagged_date(scene)
    if found is None:
        first = min(f.path for f in scene.bands.values())
        raise ValueError(
            f'{first} has no acquisition date: none in its name (YYYYMMDD or '
            f'YYYY-MM-DD) nor in its tags ({", ".join(_DATE_TAGS)}); '
            "pass date='YYYY-MM-DD' (for all inputs) or put the date in the file "
            'names (e.g. S2_2017-06-13_scene.tif)'
        )
    return replace(scene, date=found)


def _tagged_date(scene: Scene) -> datetime | None:
    """The date in the most specific date tag of a scene's files, if any."""
    tags = []
    for path in sorted({f.path for f in scene.bands.values()}):
        with rasterio.open(path) as src:
            tags.append({key.upper(): value for key, value in src.tags().items()})
    for key in _DATE_TAGS:
        for found in tags:
            match = _TAG_DATE.match(found.get(key, '').strip())
            if match is None:
                continue
            year, month, day, hour, minute, second = map(int, match.groups('0'))
            try:
                return datetime(year, month, day, hour, minute, second)
            except ValueError:  # not a calendar date: try the next tag
                continue
    return None


def _described_bands(paths: Sequence[str | os.PathLike[str]]) -> list[str] | None:
    """Band descriptions of the first multi-band raster, if it has some."""
    pattern = re.compile(_FILENAME_REGEX)
    for root in paths:
        root = Path(root)
        files = sorted(root.rglob('*')) if root.is_dir() else [root]
        for path in files:
            if not path.is_file() or not pattern.match(path.name):
                continue
            with rasterio.open(path) as src:
                if src.count == 1:
                    continue
                if all(src.descriptions):
                    return [str(d) for d in src.descriptions]
                raise ValueError(
                    f'{path} holds {src.count} bands without descriptions: pass '
                    'bands=[...] (e.g. B2 B3 B4 B8) naming them in file order'
                )
    return None


@dataclass(frozen=True)
class EmbeddingGrid:
    """The input lattice of an embedded area and the output grid derived from it.

    Args:
        crs: CRS of the input and output rasters.
        transform: affine transform of the input lattice at the top-left corner
            of the area (pixel edges).
        width: width of the area in input pixels.
        height: height of the area in input pixels.
        patch_size: input pixels per output pixel along each axis.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    patch_size: int

    @property
    def out_transform(self) -> Affine:
        """Transform of the embedding raster.

        Output pixel (r, c) covers input pixels ``[r P, (r + 1) P) x [c P,
        (c + 1) P)``: its centre is the centre of that window.
        """
        return self.transform * Affine.scale(self.patch_size)

    @property
    def out_shape(self) -> tuple[int, int]:
        """(height, width) of the embedding raster."""
        return (
            math.ceil(self.height / self.patch_size),
            math.ceil(self.width / self.patch_size),
        )


@dataclass(frozen=True)
class EmbeddingResult:
    """What :func:`embed` wrote.

    Args:
        raster: the embedding COG, or None.
        parquet: the GeoParquet of chip embeddings, or None.
        grid: the grid of the area.
        chips: number of chips.
        empty_chips: chips whose centre has no valid output pixel: no-data in
            the raster and no GeoParquet row (chips without any valid input
            pixel are not even encoded).
        resumed_chips: chips taken from an interrupted run.
    """

    raster: Path | None
    parquet: Path | None
    grid: EmbeddingGrid
    chips: int
    empty_chips: int
    resumed_chips: int


def _select(
    source: ModalitySource, time_range: tuple[Any, Any] | None
) -> list[Acquisition]:
    acquisitions = list(source.acquisitions)
    if time_range is not None:
        start, stop = (
            None if t is None else _date(t, 'time_range') for t in time_range
        )
        acquisitions = [
            a
            for a in acquisitions
            if a.date is None
            or ((start is None or a.date >= start) and (stop is None or a.date <= stop))
        ]
    if not acquisitions:
        raise ValueError(
            f'no acquisition of {source.describe()} lies in the time range '
            f'{time_range}; its dates are '
            f'{sorted({str(a.date) for a in source.acquisitions})}'
        )
    return acquisitions


def _date(value: date | str, name: str) -> datetime:
    """*value* (a date, a datetime or an ISO string) as a datetime.

    Raises:
        ValueError: naming the argument *name*, if *value* is not an ISO date.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError as error:
            raise ValueError(
                f'{name}: {value!r} is not an ISO date (YYYY-MM-DD[THH:MM:SS])'
            ) from error
    if parsed.tzinfo is not None:  # acquisition dates are naive UTC
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _snap(value: float, origin: float, step: float, up: bool) -> int:
    """Index of the lattice line at or beyond *value* (outward from the area)."""
    index = (value - origin) / step
    nearest = round(index)
    if abs(index - nearest) < 1e-6:  # on a line, up to floating-point noise
        return int(nearest)
    return math.ceil(index) if up else math.floor(index)


def area_grid(
    acquisitions: Sequence[Acquisition],
    patch_size: int,
    bounds: Sequence[float] | None = None,
    bounds_crs: Any = None,
) -> EmbeddingGrid:
    """The lattice of the first acquisition over the area to embed.

    Args:
        acquisitions: the acquisitions to embed, first one's lattice and CRS used.
        patch_size: output stride.
        bounds: (left, bottom, right, top) of the area; None for the union of
            the acquisitions' footprints.
        bounds_crs: CRS of *bounds*; None for the CRS of the first acquisition.

    Returns:
        The grid, snapped outward to the input lattice.

    Raises:
        ValueError: if the area does not overlap the acquisitions.
    """
    first = acquisitions[0]
    crs, lattice = first.crs, first.lattice
    boxes = []
    for acquisition in acquisitions:
        for footprint in acquisition.footprints:
            if acquisition.crs != crs:
                footprint = transform_bounds(
                    acquisition.crs, crs, *footprint, densify_pts=21
                )
            boxes.append(footprint)
    array = np.array(boxes, dtype=np.float64)
    left, bottom = float(array[:, 0].min()), float(array[:, 1].min())
    right, top = float(array[:, 2].max()), float(array[:, 3].max())
    if bounds is not None:
        area = tuple(float(v) for v in bounds)
        if bounds_crs is not None and CRS.from_user_input(bounds_crs) != crs:
            area = transform_bounds(
                CRS.from_user_input(bounds_crs), crs, *area, densify_pts=21
            )
        left, bottom = max(left, area[0]), max(bottom, area[1])
        right, top = min(right, area[2]), min(top, area[3])
        if not (left < right and bottom < top):
            raise ValueError(
                f'bounds={list(bounds)} (CRS {bounds_crs or crs}) do not overlap the '
                'rasters'
            )
    col0 = _snap(left, lattice.c, lattice.a, up=False)
    col1 = _snap(right, lattice.c, lattice.a, up=True)
    row0 = _snap(top, lattice.f, lattice.e, up=False)
    row1 = _snap(bottom, lattice.f, lattice.e, up=True)
    return EmbeddingGrid(
        crs,
        lattice * Affine.translation(col0, row0),
        col1 - col0,
        row1 - row0,
        patch_size,
    )


def _check_geometry(chip_size: int, margin: int, patch_size: int) -> None:
    if chip_size % patch_size or margin % patch_size:
        raise ValueError(
            f'chip_size ({chip_size}) and margin ({margin}) must be multiples of the '
            f'patch size {patch_size} of the weights'
        )
    if margin < 0 or chip_size - 2 * margin < patch_size:
        raise ValueError(
            f'chip_size - 2 * margin must be at least the patch size {patch_size}; '
            f'got chip_size={chip_size}, margin={margin}'
        )


def _read_chips(
    source: ModalitySource,
    acquisitions: Sequence[Acquisition],
    grid: EmbeddingGrid,
    chips: Sequence[Chip],
    size: int,
    footprints: Sequence[tuple[float, float, float, float]],
) -> tuple[np.ndarray, list[str | None]]:
    """Raw chips (B, C, size, size) in source band order, NaN no-data; levels."""
    selected = {a.key for a in acquisitions}
    out = np.full((len(chips), len(source.bands), size, size), np.nan, np.float32)
    levels: list[str | None] = []
    for k, chip in enumerate(chips):
        tile = TileGrid(
            grid.crs, grid.transform * Affine.translation(chip.col, chip.row), size
        )
        if not any(_overlaps(tile.bounds, box) for box in footprints):
            # Cheaper than asking the source: most chips of a sparse mosaic.
            levels.append(None)
            continue
        found = [a for a in source.overlapping(tile) if a.key in selected]
        levels.append(found[0].level if found else None)
        for band, array in read_mosaic(source, found, tile).items():
            if band in source.bands:
                out[k, source.bands.index(band)] = array
    return out, levels


def _fingerprint(
    source: ModalitySource, encoder: SceneEncoder, options: dict[str, Any]
) -> dict[str, Any]:
    weights = Path(encoder.weights)
    digest = None
    if weights.is_file():
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return {
        'source': json.loads(json.dumps(source.fingerprint(), default=str)),
        'weights': encoder.weights,
        'weights_sha256': digest,
        'options': json.loads(json.dumps(options, default=str)),
    }


def embed(
    inputs: Any,
    weights: SceneEncoder | WeightsEnum | str | os.PathLike[str],
    raster: str | os.PathLike[str] | None = None,
    parquet: str | os.PathLike[str] | None = None,
    *,
    bands: Sequence[str] | None = None,
    fill: Mapping[str, str] | None = None,
    level: str | None = None,
    date: date | str | None = None,
    bounds: Sequence[float] | None = None,
    bounds_crs: Any = None,
    time_range: tuple[Any, Any] | None = None,
    chip_size: int | None = None,
    margin: int | None = None,
    min_valid: float = 0.5,
    batch_size: int = 16,
    block_size: int = 256,
    device: str | torch.device = 'cpu',
    bf16: bool = False,
    pca: int | None = None,
    int8: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbeddingResult:
    """Embed Sentinel-2 rasters with an MMEarth encoder.

    Writes a Cloud-Optimized GeoTIFF with one float32 band per feature (or
    *pca* components, optionally *int8*-quantised) at the encoder's output
    stride (one output pixel per ``P x P`` input pixels, its centre on the
    centre of the window it summarises; NaN is no-data), or for a *raster*
    ending in ``.vrt``, a VRT over one COG per block in the folder ``<name>_tiles``
    (for areas too big for one file; TorchGeo's ``RasterDataset`` reads either).
    And a GeoParquet with one row per chip centre: its footprint, the date and
    scenes it was read from, the weights, the fraction of valid output pixels
    and the mean of its valid embeddings, in the columns that TorchGeo's
    ``ClayEmbeddings``, ``MajorTOMEmbeddings`` and ``EarthEmbeddings`` read
    (``embedding``, ``geometry``, ``date``, ``timestamp``, ``centre_lon``,
    ``centre_lat``). Both carry the provenance (weights, bands, band
    statistics, options, package version) in their metadata
    (``TORCHGEO_MMEARTH`` tag, ``torchgeo_mmearth`` Parquet key).

    An output pixel whose input window has less than *min_valid* valid pixels
    (every band present, not no-data) is no-data; chips without any valid output
    pixel are not encoded and have no row.

    The area is cut into blocks of about *block_size* output pixels on a side;
    memory is bounded by the block, not the area. Run under ``torchrun`` (or in
    a process group the caller set up, e.g. by Lightning Fabric), each process
    encodes every *n*-th unfinished block on its own device, and the first
    process writes the outputs; the files are the same for any number of
    processes. An interrupted run keeps its finished blocks and continues with
    the others when run again with the same inputs and options, with any number
    of processes.

    If you use the MMEarth weights, please cite the following paper:

    * https://arxiv.org/abs/2405.02771

    Args:
        inputs: see :func:`sentinel2_source`.
        weights: an :class:`~torchgeo_mmearth.models.MMEarthWeights` member or its
            name, an ``export-weights`` file, an MPMAETask checkpoint, or an
            encoder from :func:`~torchgeo_mmearth.inference.load_encoder`.
        raster: the embedding COG to write, or None.
        parquet: the GeoParquet to write, or None.
        bands: band names of multi-band files (see :func:`sentinel2_source`).
        fill: substitutes for bands of the weights that the inputs lack,
            ``{missing band: band to use instead}``, e.g.
            :data:`~torchgeo_mmearth.transforms.SO2SAT_FILL`.
        level: processing level of the inputs (see :func:`sentinel2_source`).
        date: acquisition date of all GeoTIFF and VRT inputs; None dates each
            scene by its file name or tags (see :func:`sentinel2_source`).
        bounds: (left, bottom, right, top) of the area to embed; None for all.
        bounds_crs: CRS of *bounds*; None for the CRS of the rasters.
        time_range: (start, stop) dates (ISO strings or datetimes, either None)
            of the acquisitions to embed, inclusive.
        chip_size: side of a chip in input pixels, a multiple of the patch
            size P (default: 32 P, 256 px for P = 8).
        margin: pixels dropped from each side of a chip's output, a multiple of
            P; neighbouring chips overlap by twice this (default: an eighth of
            the chip, 32 px for P = 8).
        min_valid: fraction of valid input pixels an output pixel needs.
        batch_size: chips per forward pass.
        block_size: side of a block in output pixels, rounded down to whole
            chip centres (at least one chip).
        device: where to run the encoder; ``cuda`` under ``torchrun`` is each
            process's GPU (``LOCAL_RANK``).
        bf16: run the encoder in bfloat16 autocast (for GPUs).
        pca: write this many principal components of the features instead of
            all of them (fitted on the area's valid pixels, their explained
            variance in the tags); the GeoParquet keeps every feature.
        int8: quantise the raster to int8 with a GDAL scale and offset per band
            (value = offset + scale * q; -128 is no-data).
        resume: keep the finished blocks of an interrupted run of the same
            inputs and options.
        overwrite: replace existing outputs.
        progress: show a progress bar.

    Returns:
        What was written (in processes other than the first, what the first
        writes; their ``empty_chips`` is 0).

    Raises:
        ValueError: for no output, bad chip geometry, a bad or undetermined
            date, inputs that lack bands of the weights (naming them), or an
            area or time range without data.
        FileExistsError: if an output exists and *overwrite* is False.
    """
    if raster is None and parquet is None:
        raise ValueError('nothing to write: pass raster=, parquet= or both')
    raster = None if raster is None else Path(raster)
    parquet = None if parquet is None else Path(parquet)
    existing = [str(p) for p in output_paths(raster, parquet) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f'{existing} exist; pass overwrite=True to replace them')
    if not 0 < min_valid <= 1:
        raise ValueError(f'min_valid must be in (0, 1], got {min_valid}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if block_size < 1:
        raise ValueError(f'block_size must be >= 1, got {block_size}')
    when = None if date is None else _date(date, 'date')
    with processes(torch.device(device)) as group:
        return _embed(
            group,
            inputs,
            weights,
            raster,
            parquet,
            bands=bands,
            fill=fill,
            level=level,
            date=when,
            bounds=bounds,
            bounds_crs=bounds_crs,
            time_range=time_range,
            chip_size=chip_size,
            margin=margin,
            min_valid=min_valid,
            batch_size=batch_size,
            block_size=block_size,
            bf16=bf16,
            pca=pca,
            int8=int8,
            resume=resume,
            progress=progress,
        )


def _embed(
    group: Processes,
    inputs: Any,
    weights: SceneEncoder | WeightsEnum | str | os.PathLike[str],
    raster: Path | None,
    parquet: Path | None,
    *,
    bands: Sequence[str] | None,
    fill: Mapping[str, str] | None,
    level: str | None,
    date: datetime | None,
    bounds: Sequence[float] | None,
    bounds_crs: Any,
    time_range: tuple[Any, Any] | None,
    chip_size: int | None,
    margin: int | None,
    min_valid: float,
    batch_size: int,
    block_size: int,
    bf16: bool,
    pca: int | None,
    int8: bool,
    resume: bool,
    progress: bool,
) -> EmbeddingResult:
    """:func:`embed` in one of the run's processes (arguments checked)."""
    device = group.device
    encoder = (
        weights if isinstance(weights, SceneEncoder) else load_encoder(weights, device)
    )
    encoder.model.to(device)
    p = encoder.patch_size
    # Wider than the pretraining input: the receptive field of the last stage
    # spans hundreds of pixels, and a wide margin keeps chip borders out of the
    # kept centres (docs: the seam test in tests/inference).
    size = chip_size or 32 * p
    margin = margin if margin is not None else (size // 8) // p * p
    _check_geometry(size, margin, p)
    source = sentinel2_source(inputs, bands, level, date)
    transforms = encoder.transforms(source.bands, fill).to(device)
    remap, normalize = transforms
    assert isinstance(remap, BandRemap) and isinstance(normalize, MMEarthS2Normalize)
    acquisitions = _select(source, time_range)
    grid = area_grid(acquisitions, p, bounds, bounds_crs)
    blocks = layout(grid.out_shape, p, size, margin, block_size)
    chips = sum(len(block.chips) for block in blocks)
    options = {
        'bands': bands,
        'fill': fill,
        'level': level,
        'date': date,
        'bounds': bounds,
        'bounds_crs': str(bounds_crs),
        'time_range': time_range,
        'chip_size': size,
        'margin': margin,
        'min_valid': min_valid,
        'batch_size': batch_size,
        'block_size': block_size,
        'bf16': bf16,
        'pca': pca,
        'int8': int8,
    }
    fingerprint = _fingerprint(source, encoder, options)
    provenance = {
        'package': 'torchgeo-mmearth',
        'version': __version__,
        'weights': encoder.weights,
        'weights_sha256': fingerprint['weights_sha256'],
        'model': encoder.model_name,
        'patch_size': p,
        'model_bands': list(encoder.bands),
        'source_bands': list(remap.bands),
        'normalisation': {
            level_: {
                'mean': normalize.mean[i].tolist(),
                'std': normalize.std[i].tolist(),
            }
            for i, level_ in enumerate(S2_TYPES)
        },
        'weights_meta': encoder.provenance,
        'options': json.loads(json.dumps(options, default=str)),
        # The scenes and their files (paths, sizes), for the GeoParquet's
        # 'scenes' column.
        'inputs': fingerprint['source'],
    }
    features = encoder.num_features
    if pca is not None and not 1 <= pca <= features:
        raise ValueError(
            f'pca must be in [1, {features}] (the features of {encoder.model_name}), '
            f'got {pca}'
        )
    first = raster or parquet
    assert first is not None
    workspace = Workspace(first.with_name(f'.{first.name}.partial'))
    # The main process keeps or clears the workspace before any block is read
    # or written; the others learn which blocks are done from it.
    done = group.broadcast(
        workspace.prepare(fingerprint, resume) if group.main else None
    )
    todo = [block for block in blocks if block.name not in done]
    mine = todo[group.rank :: group.world]
    resumed = sum(len(block.chips) for block in blocks if block.name in done)
    reader = _ChipReader(source, acquisitions, grid, size, remap.bands)
    bar = tqdm(
        total=sum(len(block.chips) for block in mine),
        disable=not progress or not group.main,
        unit='chip',
        desc='embedding' if group.world == 1 else f'embedding (1 of {group.world})',
    )
    try:
        for block in mine:
            data = _encode_block(
                block,
                reader,
                encoder,
                transforms,
                features,
                batch_size,
                min_valid,
                margin // p,
                device,
                bf16,
                bar,
            )
            workspace.save(block, data)
    finally:
        bar.close()
        source.close()
    group.barrier()
    result = EmbeddingResult(raster, parquet, grid, chips, 0, resumed)
    if not group.main:
        return result  # the main process writes the outputs
    empty = sum(int((workspace.valid(block) == 0).sum()) for block in blocks)
    staging = workspace.folder / 'staging'
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if raster is not None:
        write_raster(
            raster,
            blocks,
            workspace.load,
            staging,
            grid.crs,
            grid.out_transform,
            grid.out_shape,
            features,
            provenance,
            pca,
            int8,
        )
    if parquet is not None:
        write_parquet(
            parquet,
            blocks,
            workspace.load,
            staging,
            grid.crs,
            grid.out_transform,
            provenance,
        )
    shutil.rmtree(workspace.folder)
    return replace(result, empty_chips=empty)


class _ChipReader:
    """Reads chips of the area: raw values, valid pixels, levels and scenes."""

    def __init__(
        self,
        source: ModalitySource,
        acquisitions: Sequence[Acquisition],
        grid: EmbeddingGrid,
        size: int,
        used_bands: Sequence[str],
    ) -> None:
        self.source = source
        self.acquisitions = acquisitions
        self.grid = grid
        self.size = size
        self.used = [source.bands.index(b) for b in used_bands]
        self.footprints = [
            _in_crs(f, a.crs, grid.crs) for a in acquisitions for f in a.footprints
        ]

    def read(self, chips: Sequence[Chip]) -> tuple[np.ndarray, list[str | None]]:
        """Raw chips (B, C, size, size) in source band order, NaN no-data; levels."""
        return _read_chips(
            self.source, self.acquisitions, self.grid, chips, self.size, self.footprints
        )

    def prefetched(
        self, batches: Sequence[Sequence[Chip]]
    ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """:meth:`read` of each batch, the next one read while this one is used.

        GDAL and PyTorch release the GIL: reading (one thread, so one reader of
        the files at a time) overlaps encoding.
        """
        with ThreadPoolExecutor(1) as pool:
            pending = [pool.submit(self.read, batch) for batch in batches[:1]]
            for n in range(len(batches)):
                result = pending.pop().result()
                if n + 1 < len(batches):
                    pending.append(pool.submit(self.read, batches[n + 1]))
                yield result

    def scenes(self, chip: Chip) -> tuple[str | None, str]:
        """The ISO date of the first acquisition under a chip's centre, and its scenes."""
        box = chip.bounds(self.grid.out_transform)
        found = [
            (a, name)
            for a in self.acquisitions
            for name, f in zip(a.scenes, a.footprints, strict=True)
            if _overlaps(_in_crs(f, a.crs, self.grid.crs), box)
        ]
        first = found[0][0].date if found else None
        names = ','.join(dict.fromkeys(name for _, name in found))
        return (None if first is None else first.isoformat()), names


def _encode_block(
    block: Block,
    reader: _ChipReader,
    encoder: SceneEncoder,
    transforms: torch.nn.Module,
    features: int,
    batch_size: int,
    min_valid: float,
    margin_cells: int,
    device: torch.device,
    bf16: bool,
    bar: Any,
) -> BlockData:
    """Encode the chips of a block, batch by batch, and keep their centres."""
    p = encoder.patch_size
    cells = reader.size // p
    height, width = block.shape
    (b0, _), (d0, _) = block.out_rows, block.out_cols
    out = np.full((features, height, width), np.nan, np.float32)
    pooled = np.full((len(block.chips), features), np.nan, np.float32)
    valid = np.zeros(len(block.chips), np.float32)
    dates: list[str | None] = [None] * len(block.chips)
    scenes = [''] * len(block.chips)
    starts = range(0, len(block.chips), batch_size)
    batches = [block.chips[start : start + batch_size] for start in starts]
    for start, batch, (arrays, levels) in zip(
        starts, batches, reader.prefetched(batches), strict=True
    ):
        ok = np.isfinite(arrays[:, reader.used]).all(axis=1)
        fraction = ok.reshape(len(batch), cells, p, cells, p).mean(axis=(2, 4))
        keep = fraction >= min_valid
        todo = [k for k in range(len(batch)) if keep[k].any()]
        if todo:
            maps = _encode(
                encoder,
                transforms,
                arrays[todo],
                [levels[k] for k in todo],
                device,
                bf16,
            )
            for k, fmap in zip(todo, maps, strict=True):
                chip = batch[k]
                (r0, r1), (c0, c1) = chip.out_rows, chip.out_cols
                m = margin_cells
                core = fmap[:, m : m + r1 - r0, m : m + c1 - c0]
                mask = keep[k][m : m + r1 - r0, m : m + c1 - c0]
                core = np.where(mask[None], core, np.float32(np.nan))
                out[:, r0 - b0 : r1 - b0, c0 - d0 : c1 - d0] = core
                index = start + k
                valid[index] = mask.mean()
                if mask.any():
                    pooled[index] = core[:, mask].mean(axis=1)
                    dates[index], scenes[index] = reader.scenes(chip)
        bar.update(len(batch))
    return BlockData(out, pooled, valid, dates, scenes)


def _encode(
    encoder: SceneEncoder,
    transforms: torch.nn.Module,
    arrays: np.ndarray,
    levels: Sequence[str | None],
    device: torch.device,
    bf16: bool,
) -> np.ndarray:
    """Feature maps (B, D, h, w) of raw chips; no-data enters as the band mean."""
    sample = {
        'image': torch.from_numpy(arrays).to(device),
        's2_type': [level or 'l2a' for level in levels],
    }
    with torch.inference_mode():
        image: Tensor = transforms(sample)['image']
        image = torch.nan_to_num(image, nan=0.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = encoder.forward_features(image)
    result: np.ndarray = out.float().cpu().numpy()
    return result


def _in_crs(
    box: tuple[float, float, float, float], crs: CRS, target: CRS
) -> tuple[float, float, float, float]:
    if crs == target:
        return box
    left, bottom, right, top = transform_bounds(crs, target, *box, densify_pts=21)
    return float(left), float(bottom), float(right), float(top)


def _overlaps(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
