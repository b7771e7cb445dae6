"""BigEarthNet patch folders as corpus sources.

BigEarthNet (Sumbul et al., 2019, 2021) stores every 120 x 120 px patch as a folder
of single-band GeoTIFFs (Sentinel-2 L2A ``<patch>_B01.tif`` ... ``_B12.tif`` at 10,
20 and 60 m, no B10; Sentinel-1 ``<patch>_VV.tif`` and ``_VH.tif`` in dB) with a
``<patch>_labels_metadata.json`` that holds the acquisition date. The date is
read from that file (the patch names abbreviate some times), and the Sentinel-1
orbit direction, which the metadata does not give, is derived from the
acquisition time (:func:`~.sources.orbit_from_time`).
"""

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rasterio.warp import transform as transform_coords

from .geotiff import GeoTiffSource
from .grid import WGS84
from .sources import BandFile, Scene, normalize_band, orbit_from_time

__all__ = ['bigearthnet_scenes', 'bigearthnet_source']


def bigearthnet_scenes(
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], modality: str
) -> list[Scene]:
    """The patches under one or more folders, as scenes.

    A patch found twice (the same name under two roots) is taken once, from the
    first root.

    Args:
        roots: folders searched recursively for ``*_labels_metadata.json``.
        modality: 'sentinel2' or 'sentinel1'.

    Returns:
        The scenes, sorted by patch name.

    Raises:
        ValueError: for another modality, or a metadata file without date.
        FileNotFoundError: if no patch is found.
    """
    if modality not in ('sentinel2', 'sentinel1'):
        raise ValueError(
            f"BigEarthNet holds 'sentinel2' and 'sentinel1' patches, not {modality!r}"
        )
    paths = (
        [Path(roots)]
        if isinstance(roots, str | os.PathLike)
        else [Path(r) for r in roots]
    )
    scenes: dict[str, Scene] = {}
    for root in paths:
        for metadata_path in sorted(root.rglob('*_labels_metadata.json')):
            name = metadata_path.name.removesuffix('_labels_metadata.json')
            if name in scenes:
                continue
            metadata = json.loads(metadata_path.read_text())
            bands = {}
            for tif in sorted(metadata_path.parent.glob(f'{name}_*.tif')):
                band = tif.stem.removeprefix(f'{name}_')
                bands[normalize_band(modality, band)] = BandFile(tif, 1)
            if not bands:
                continue
            date = _date(metadata, metadata_path)
            if modality == 'sentinel2':
                scenes[name] = Scene(name, bands, date, level='l2a')
            else:
                scenes[name] = Scene(name, bands, date, orbit=_orbit(metadata, date))
    if not scenes:
        raise FileNotFoundError(
            f'No BigEarthNet {modality} patch (*_labels_metadata.json) under '
            f'{[str(p) for p in paths]}'
        )
    return [scenes[name] for name in sorted(scenes)]


def bigearthnet_source(
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    modality: str,
    **options: Any,
) -> GeoTiffSource:
    """A source of BigEarthNet patches.

    Args:
        roots: folders of patches (see :func:`bigearthnet_scenes`).
        modality: 'sentinel2' or 'sentinel1'.
        **options: keyword arguments of :class:`~.sources.GeoTiffSource`.

    Returns:
        The source.
    """
    return GeoTiffSource(bigearthnet_scenes(roots, modality), modality, **options)


def _date(metadata: dict[str, Any], path: Path) -> datetime:
    text = metadata.get('acquisition_date') or metadata.get('acquisition_time')
    if not text:
        raise ValueError(f'{path} has no acquisition_date or acquisition_time')
    return datetime.fromisoformat(str(text).replace(' ', 'T'))


def _orbit(metadata: dict[str, Any], date: datetime) -> str:
    coordinates = metadata['coordinates']
    x = (coordinates['ulx'] + coordinates['lrx']) / 2
    y = (coordinates['uly'] + coordinates.get('lry', coordinates.get('lly'))) / 2
    lons, _ = transform_coords(metadata['projection'], WGS84, [x], [y])
    return orbit_from_time(date, float(lons[0]))
