"""The outputs of an embedding run, assembled block by block from its workspace.

The raster is either one Cloud-Optimized GeoTIFF, copied from a GeoTIFF of the
area written block by block, or a VRT over one Cloud-Optimized GeoTIFF per block
(``emb.vrt`` and ``emb_tiles/``) for areas too big for one file. The overviews are
computed here a tile at a time, not by GDAL. The GeoParquet is written one row group
per block. Every pass holds a block or a 256 px tile of every band, so memory is
bounded by the block size, not by the area.

The GeoParquet follows the column conventions of the embedding products that
TorchGeo reads (``torchgeo.datasets.ClayEmbeddings``, ``MajorTOMEmbeddings``,
``EarthEmbeddings``): ``embedding``, ``geometry``, ``date`` and ``timestamp``,
``centre_lon`` and ``centre_lat``.
"""

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.windows
from rasterio import Affine
from rasterio.warp import transform as warp_points

from .._atomic import atomic_path
from .blocks import Block, BlockData

__all__ = ('output_paths', 'tiles_folder', 'write_parquet', 'write_raster')

#: Side of the internal tiles of the GeoTIFFs, and of the row bands read at once.
_TILE = 256
#: Valid pixels the PCA is fitted on, at most.
_PCA_SAMPLE = 65536

Load = Callable[[Block], BlockData]


def tiles_folder(vrt: Path) -> Path:
    """The folder of the tiles of a VRT output: ``emb_tiles/`` for ``emb.vrt``.

    Args:
        vrt: the VRT.

    Returns:
        The folder.
    """
    return vrt.with_name(f'{vrt.stem}_tiles')


def output_paths(raster: Path | None, parquet: Path | None) -> list[Path]:
    """What a run writes: the raster (and a VRT's tiles folder), the GeoParquet.

    Args:
        raster: the raster to write, or None.
        parquet: the GeoParquet to write, or None.

    Returns:
        The paths.
    """
    paths = [p for p in (raster, parquet) if p is not None]
    if raster is not None and raster.suffix.lower() == '.vrt':
        paths.append(tiles_folder(raster))
    return paths


class _Bands:
    """The values written per band: the features, or their PCA, maybe as int8."""

    def __init__(
        self,
        blocks: Sequence[Block],
        load: Load,
        features: int,
        pca: int | None,
        int8: bool,
    ) -> None:
        self.features = features
        self.count = pca or features
        self.tags: dict[str, Any] = {}
        self.mean: np.ndarray | None = None
        self.axes: np.ndarray | None = None
        if pca is not None:
            self.mean, self.axes, ratio = _pca(blocks, load, features, pca)
            self.tags['pca'] = {'components': pca, 'explained_variance_ratio': ratio}
        self.scales, self.offsets = [1.0] * self.count, [0.0] * self.count
        self.int8 = int8
        if int8:
            # Per band: value = offset + scale * q, q in [-127, 127]; -128 no-data.
            low = np.full(self.count, np.inf)
            high = np.full(self.count, -np.inf)
            for block in blocks:
                values = self.values(load(block))
                if np.isfinite(values).any():
                    low = np.fmin(low, np.nanmin(values, axis=(1, 2)))
                    high = np.fmax(high, np.nanmax(values, axis=(1, 2)))
            low = np.where(np.isfinite(low), low, 0.0)
            high = np.where(np.isfinite(high), high, 0.0)
            self.scales = (np.maximum(high - low, 1e-12) / 254).tolist()
            self.offsets = ((high + low) / 2).tolist()
            self.tags['int8'] = (
                'value = offset + scale * q per band (GDAL scale/offset); -128 no-data'
            )
        self.name = 'pca' if pca is not None else 'embedding'
        self.dtype = 'int8' if int8 else 'float32'
        self.nodata = -128 if int8 else float('nan')

    def values(self, data: BlockData) -> np.ndarray:
        """The block's values before quantisation: (count, height, width)."""
        block = data.features
        if self.axes is None or self.mean is None:
            return block
        flat = block.reshape(self.features, -1).T.astype(np.float64)
        out: np.ndarray = ((flat - self.mean) @ self.axes.T).T.astype(np.float32)
        return out.reshape(len(self.axes), *block.shape[1:])

    def written(self, data: BlockData) -> np.ndarray:
        """The block's values as stored in the raster."""
        values = self.values(data)
        if not self.int8:
            return values
        scale = np.array(self.scales, np.float64)[:, None, None]
        offset = np.array(self.offsets, np.float64)[:, None, None]
        q = np.rint((values - offset) / scale)
        return np.where(np.isfinite(values), np.clip(q, -127, 127), -128).astype(
            np.int8
        )

    @property
    def descriptions(self) -> tuple[str, ...]:
        """The band descriptions."""
        return tuple(f'{self.name}_{i:04d}' for i in range(self.count))


def _pca(
    blocks: Sequence[Block], load: Load, features: int, components: int
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Mean, (components, D) axes and explained variance ratios of valid pixels.

    Fitted on at most 65 536 valid pixels of the whole area drawn with a fixed
    seed, read block by block, so that every run over the same blocks writes the
    same file.
    """
    counts = [int(np.isfinite(load(block).features[0]).sum()) for block in blocks]
    total = sum(counts)
    if total == 0:
        raise ValueError('the area has no valid embedding to fit the PCA on')
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(total, min(total, _PCA_SAMPLE), replace=False))
    starts = np.cumsum([0, *counts])
    parts = []
    for k, block in enumerate(blocks):
        picked = chosen[(chosen >= starts[k]) & (chosen < starts[k + 1])] - starts[k]
        if len(picked) == 0:
            continue
        flat = load(block).features.reshape(features, -1)
        valid = np.flatnonzero(np.isfinite(flat[0]))
        parts.append(np.asarray(flat[:, valid[picked]], np.float64).T)
    sample = np.concatenate(parts)
    mean = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - mean, full_matrices=False)
    variance = singular**2
    ratio = (variance[:components] / variance.sum()).tolist()
    return mean, axes[:components], ratio


def _profile(
    bands: _Bands, crs: Any, transform: Any, shape: tuple[int, int]
) -> dict[str, Any]:
    height, width = shape
    # Tiles no larger than the raster (multiples of 16, as TIFF requires): a
    # padded 256 x 256 tile of every band costs more than the data itself.
    tile = min(_TILE, 16 * math.ceil(max(height, width) / 16))
    return {
        'driver': 'GTiff',
        'dtype': bands.dtype,
        'count': bands.count,
        'height': height,
        'width': width,
        'crs': crs,
        'transform': transform,
        'nodata': bands.nodata,
        'tiled': True,
        'blockxsize': tile,
        'blockysize': tile,
        'BIGTIFF': 'IF_SAFER',
    }


def _halve(values: np.ndarray, average: bool) -> np.ndarray:
    """Half the rows and columns of (bands, rows, cols), rounded up.

    The mean of the valid values of each 2 x 2 window (NaN where none is), as GDAL's
    ``AVERAGE`` computes it, or the window's top-left value, as its ``NEAREST``.
    """
    if not average:
        return values[:, ::2, ::2]
    bands, rows, cols = values.shape
    total = np.zeros((bands, -(-rows // 2), -(-cols // 2)))
    valid = np.zeros(total.shape, np.uint8)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        part = values[:, dy::2, dx::2]
        finite = np.isfinite(part)
        height, width = part.shape[1:]
        total[:, :height, :width] += np.where(finite, part, 0)
        valid[:, :height, :width] += finite
    with np.errstate(invalid='ignore', divide='ignore'):
        halved: np.ndarray = (total / valid).astype(values.dtype)
    return halved


def _overviews(source: Path, average: bool, tile: int) -> list[Path]:
    """Overviews of the tiled GeoTIFF *source*, written beside it.

    Each level halves the last, until it fits in one *tile*, as GDAL's COG driver
    chooses them; :func:`_write_overview` writes each a tile at a time. GDAL's own
    overviews thrash its block cache once the cache cannot hold a row of tiles of
    every band (measured: a 1024 x 1024 px COG of 320 features did not finish in 6
    minutes with ``GDAL_CACHEMAX=128``).

    Args:
        source: the GeoTIFF.
        average: average the valid values (else the nearest value).
        tile: the side of *source*'s tiles.

    Returns:
        The levels, largest first.
    """
    levels: list[Path] = []
    while True:
        with rasterio.open(levels[-1] if levels else source) as src:
            if max(src.height, src.width) <= tile:
                return levels
            levels.append(source.with_name(f'{source.stem}.overview{len(levels)}.tif'))
            _write_overview(src, levels[-1], average, tile)


def _write_overview(src: Any, path: Path, average: bool, tile: int) -> None:
    """*src* at half its resolution (:func:`_halve`) into the GeoTIFF *path*.

    Tile by tile, each from the four quarters of source it covers, one source tile
    read at a time: what it holds is bounded by the tile, not by the raster.
    """
    height, width = -(-src.height // 2), -(-src.width // 2)
    profile = {
        **src.profile,
        'height': height,
        'width': width,
        'transform': src.transform
        * Affine.scale(src.width / width, src.height / height),
        'BIGTIFF': 'IF_SAFER',
    }
    half = tile // 2
    with rasterio.open(path, 'w', **profile) as dst:
        for _, window in dst.block_windows(1):
            out = np.empty((src.count, window.height, window.width), src.dtypes[0])
            for r in range(0, window.height, half):
                for c in range(0, window.width, half):
                    r0, c0 = 2 * (window.row_off + r), 2 * (window.col_off + c)
                    quarter = rasterio.windows.Window(
                        c0, r0, min(tile, src.width - c0), min(tile, src.height - r0)
                    )
                    out[:, r : r + half, c : c + half] = _halve(
                        src.read(window=quarter), average
                    )
            dst.write(out, window=window)


def _cog(source: Path, target: Path, bands: _Bands, tile: int, tags: str) -> None:
    """Copy the GeoTIFF *source* into the COG *target*, atomically.

    From one GeoTIFF of the area, not from a VRT of block files: GDAL keeps up to
    100 of a VRT's files open, each with a decompressed tile of all bands, so that
    the copy's memory grew with the area (measured: peak RSS of embed's process 6.1
    GB for 81 blocks of 320 features, 1.25 GiB in all, against 2.9 GB from one
    GeoTIFF). A VRT of that GeoTIFF gives GDAL our overviews (:func:`_overviews`).
    *source* and these files are removed once copied.
    """
    with rasterio.open(source) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    levels = _overviews(source, not bands.int8, tile)
    vrt = source.with_suffix('.vrt')
    _write_vrt(
        vrt, [((0, 0), shape, source)], bands, crs, transform, shape, tags, levels
    )
    with atomic_path(target) as temporary:
        rasterio.shutil.copy(
            vrt,
            temporary,
            driver='COG',
            COMPRESS='DEFLATE',
            PREDICTOR='STANDARD' if bands.int8 else 'FLOATING_POINT',
            BLOCKSIZE=tile,
            OVERVIEWS='FORCE_USE_EXISTING',
            BIGTIFF='IF_SAFER',
        )
    for path in (source, vrt, *levels):
        path.unlink()


def write_raster(
    path: Path,
    blocks: Sequence[Block],
    load: Load,
    staging: Path,
    crs: Any,
    transform: Any,
    shape: tuple[int, int],
    features: int,
    provenance: dict[str, Any],
    pca: int | None,
    int8: bool,
) -> None:
    """Write the embedding raster: a COG, or a VRT over COG tiles (``.vrt``).

    Args:
        path: the raster to write; a ``.vrt`` gets its tiles in
            :func:`tiles_folder`.
        blocks: the blocks of the area, all finished.
        load: reads a block's data.
        staging: an empty folder for the intermediate files.
        crs: CRS of the output grid.
        transform: affine transform of the output grid.
        shape: (height, width) of the output grid.
        features: D, the features per pixel.
        provenance: the ``TORCHGEO_MMEARTH`` tag.
        pca: components to write instead of the features, or None.
        int8: quantise to int8 with a scale and offset per band.
    """
    bands = _Bands(blocks, load, features, pca, int8)
    tags = json.dumps({**provenance, **bands.tags}, sort_keys=True)

    def tiff(file: Path, shape: tuple[int, int], offset: tuple[int, int]) -> Any:
        """A GeoTIFF of the grid's window at *offset* (rows, cols), opened to write."""
        r0, c0 = offset
        window_transform = transform * transform.translation(c0, r0)
        return rasterio.open(file, 'w', **_profile(bands, crs, window_transform, shape))

    if path.suffix.lower() != '.vrt':
        # One GeoTIFF of the area, written block by block, then copied (see _cog).
        area = staging / 'area.tif'
        with tiff(area, shape, (0, 0)) as dst:
            for block in blocks:
                (r0, _), (c0, _) = block.out_rows, block.out_cols
                height, width = block.shape
                window = rasterio.windows.Window(c0, r0, width, height)
                dst.write(bands.written(load(block)), window=window)
        size = _profile(bands, crs, transform, shape)['blockxsize']
        _cog(area, path, bands, size, tags)
        return
    folder = tiles_folder(path)
    partial = folder.with_name(f'.{folder.name}.partial')
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    final = []
    for block in blocks:
        data = load(block)
        if not np.isfinite(data.features[0]).any():
            continue  # no tile: the VRT reads no-data there
        (r0, _), (c0, _) = block.out_rows, block.out_cols
        tile = staging / f'{block.name}.tif'
        with tiff(tile, block.shape, (r0, c0)) as dst:
            dst.write(bands.written(data))
        size = _profile(bands, crs, transform, block.shape)['blockxsize']
        _cog(tile, partial / tile.name, bands, size, tags)
        final.append(((r0, c0), block.shape, folder / tile.name))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    _write_vrt(path, final, bands, crs, transform, shape, tags)


def _write_vrt(
    path: Path,
    sources: Sequence[tuple[tuple[int, int], tuple[int, int], Path]],
    bands: _Bands,
    crs: Any,
    transform: Any,
    shape: tuple[int, int],
    tags: str,
    overviews: Sequence[Path] = (),
) -> None:
    """A VRT placing each source GeoTIFF at its offset, written line by line.

    A source per band and GeoTIFF: written as it goes, not held as one string.

    Args:
        path: the VRT to write.
        sources: (rows, cols) offset, (height, width) and path of each GeoTIFF.
        bands: the bands.
        crs: CRS of the grid.
        transform: affine transform of the grid.
        shape: (height, width) of the grid.
        tags: the ``TORCHGEO_MMEARTH`` tag.
        overviews: GeoTIFFs of the whole grid at lower resolutions, largest first.
    """
    height, width = shape
    data_type = {'float32': 'Float32', 'int8': 'Int8'}[bands.dtype]
    geotransform = ', '.join(repr(float(v)) for v in transform.to_gdal())

    def relative(file: Path) -> str:
        return escape(file.relative_to(path.parent).as_posix())

    with atomic_path(path) as temporary, temporary.open('w') as vrt:
        vrt.write(
            f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
            f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(crs.to_wkt())}</SRS>\n'
            f'  <GeoTransform>{geotransform}</GeoTransform>\n'
            '  <Metadata>\n'
            f'    <MDI key="TORCHGEO_MMEARTH">{escape(tags)}</MDI>\n'
            '  </Metadata>\n'
        )
        for number, description in enumerate(bands.descriptions):
            vrt.write(
                f'  <VRTRasterBand dataType="{data_type}" band="{number + 1}">\n'
                f'    <Description>{description}</Description>\n'
                f'    <NoDataValue>{bands.nodata}</NoDataValue>\n'
            )
            if bands.int8:
                vrt.write(
                    f'    <Offset>{bands.offsets[number]!r}</Offset>\n'
                    f'    <Scale>{bands.scales[number]!r}</Scale>\n'
                )
            for (r0, c0), (rows, cols), file in sources:
                vrt.write(
                    '    <SimpleSource>\n'
                    f'      <SourceFilename relativeToVRT="1">{relative(file)}'
                    '</SourceFilename>\n'
                    f'      <SourceBand>{number + 1}</SourceBand>\n'
                    f'      <SrcRect xOff="0" yOff="0" xSize="{cols}" ySize="{rows}"/>\n'
                    f'      <DstRect xOff="{c0}" yOff="{r0}" xSize="{cols}" '
                    f'ySize="{rows}"/>\n'
                    '    </SimpleSource>\n'
                )
            for level in overviews:
                vrt.write(
                    '    <Overview>\n'
                    f'      <SourceFilename relativeToVRT="1">{relative(level)}'
                    '</SourceFilename>\n'
                    f'      <SourceBand>{number + 1}</SourceBand>\n'
                    '    </Overview>\n'
                )
            vrt.write('  </VRTRasterBand>\n')
        vrt.write('</VRTDataset>\n')


def write_parquet(
    path: Path,
    blocks: Sequence[Block],
    load: Load,
    staging: Path,
    crs: Any,
    transform: Any,
    provenance: dict[str, Any],
) -> None:
    """One GeoParquet row per chip centre with valid embeddings, a row group per block.

    Args:
        path: the GeoParquet to write.
        blocks: the blocks of the area, all finished.
        load: reads a block's data.
        staging: a folder for the intermediate files.
        crs: CRS of the output grid (and of the geometries).
        transform: affine transform of the output grid.
        provenance: the ``torchgeo_mmearth`` schema metadata.
    """
    import pyarrow.parquet as pq

    part = staging / 'part.parquet'
    writer: pq.ParquetWriter | None = None
    geo: dict[str, Any] = {}
    types: set[str] = set()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    with atomic_path(path) as temporary:
        try:
            for block in blocks:
                frame = _frame(block, load(block), crs, transform, provenance)
                if frame.empty and (writer is not None or block is not blocks[-1]):
                    continue  # an empty table only where there is no row at all
                # geopandas encodes the geometries and describes them.
                frame.to_parquet(part)
                table = pq.read_table(part)
                metadata = json.loads(table.schema.metadata[b'geo'])
                types.update(metadata['columns']['geometry']['geometry_types'])
                if not frame.empty:
                    box = frame.total_bounds
                    bounds = np.concatenate(
                        [np.fmin(bounds[:2], box[:2]), np.fmax(bounds[2:], box[2:])]
                    )
                if writer is None:
                    geo = metadata
                    # Without the Arrow schema, the key-value metadata added at
                    # the end is what readers see.
                    writer = pq.ParquetWriter(
                        temporary, table.schema, store_schema=False
                    )
                writer.write_table(table)
            assert writer is not None
            # The metadata of all rows: their bounding box and geometry types.
            geometry = geo['columns']['geometry']
            geometry['geometry_types'] = sorted(types)
            if np.isfinite(bounds).all():
                geometry['bbox'] = bounds.tolist()
            else:
                geometry.pop('bbox', None)
            writer.add_key_value_metadata(
                {
                    'geo': json.dumps(geo),
                    'torchgeo_mmearth': json.dumps(provenance, sort_keys=True),
                }
            )
        finally:
            if writer is not None:
                writer.close()
    part.unlink(missing_ok=True)


def _frame(
    block: Block, data: BlockData, crs: Any, transform: Any, provenance: dict[str, Any]
) -> Any:
    """The GeoDataFrame of a block's chips with valid embeddings."""
    import geopandas as gpd  # type: ignore[import-untyped]
    import pandas as pd  # type: ignore[import-untyped]
    import shapely  # type: ignore[import-untyped]

    kept = [k for k in range(len(block.chips)) if data.valid[k] > 0]
    chips = [block.chips[k] for k in kept]
    boxes = [chip.bounds(transform) for chip in chips]
    xs = [(b[0] + b[2]) / 2 for b in boxes]
    ys = [(b[1] + b[3]) / 2 for b in boxes]
    lon, lat = warp_points(crs, 'EPSG:4326', xs, ys) if boxes else ([], [])
    dates = pd.to_datetime(
        pd.Series([data.dates[k] for k in kept], dtype=object), format='ISO8601'
    ).astype('datetime64[us]')
    return gpd.GeoDataFrame(
        {
            'chip': pd.Series([c.index for c in chips], dtype='int64'),
            'row': pd.Series([c.out_rows[0] for c in chips], dtype='int64'),
            'col': pd.Series([c.out_cols[0] for c in chips], dtype='int64'),
            'date': dates,
            # The timestamp and centre of Major TOM's embedding tables.
            'timestamp': dates,
            'centre_lon': pd.Series(lon, dtype='float64'),
            'centre_lat': pd.Series(lat, dtype='float64'),
            'scenes': pd.Series([data.scenes[k] for k in kept], dtype=object),
            'valid_fraction': pd.Series(
                [float(data.valid[k]) for k in kept], dtype='float64'
            ),
            'weights': pd.Series([provenance['weights']] * len(kept), dtype=object),
            'model': pd.Series([provenance['model']] * len(kept), dtype=object),
            'embedding': pd.Series(
                [np.asarray(data.pooled[k], np.float32) for k in kept], dtype=object
            ),
        },
        geometry=[shapely.box(*b) for b in boxes],
        crs=crs,
    )
