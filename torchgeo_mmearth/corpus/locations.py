"""Tile locations: points, GeoJSON features, TorchGeo samplers or a regular grid.

Each location becomes at most one tile: the ``S x S`` pixels of the Sentinel-2 grid
centred on it (see :meth:`~torchgeo_mmearth.corpus.grid.TileGrid.centred`).
"""

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import shapely  # type: ignore[import-untyped]
from rasterio.crs import CRS
from torch.utils.data import Sampler

from .grid import anchor_lattice
from .sources import ModalitySource

__all__ = [
    'Location',
    'grid_locations',
    'locations_from_geojson',
    'locations_from_points',
    'locations_from_sampler',
    'resolve_locations',
]


@dataclass(frozen=True)
class Location:
    """Where to cut a tile.

    Args:
        x: longitude, or easting in *crs*.
        y: latitude, or northing in *crs*.
        crs: CRS of the coordinates (any string rasterio understands).
        date: preferred Sentinel-2 date; among the Sentinel-2 acquisitions that
            contain the point, the nearest to it is tried first (None: earliest
            first).
        id: tile id; None uses the location's index.
    """

    x: float
    y: float
    crs: str = 'EPSG:4326'
    date: datetime | None = None
    id: str | None = None

    def to_json(self) -> list[Any]:
        """A JSON-serialisable form (for the build fingerprint)."""
        return [
            self.x,
            self.y,
            self.crs,
            self.date.isoformat() if self.date else None,
            self.id,
        ]


def locations_from_points(
    points: Iterable[Sequence[float]], crs: str = 'EPSG:4326'
) -> list[Location]:
    """Locations from ``(x, y)`` pairs, longitude/latitude by default.

    Args:
        points: the coordinates.
        crs: their CRS.

    Returns:
        The locations.

    Raises:
        ValueError: for a point that is not two finite numbers.
    """
    locations = []
    for point in points:
        values = tuple(point)
        if len(values) != 2 or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in values
        ):
            raise ValueError(
                f'A point must be two finite numbers (x, y), got {point!r}'
            )
        locations.append(Location(float(values[0]), float(values[1]), crs))
    return locations


def locations_from_geojson(path: str | os.PathLike[str]) -> list[Location]:
    """Locations from a GeoJSON file of points (and polygons or lines: centroids).

    Coordinates are longitude/latitude (RFC 7946), unless the file carries a legacy
    ``crs`` member. A feature's ``id`` (or ``properties.id``) becomes the tile id,
    and ``properties.date`` (ISO 8601) the preferred Sentinel-2 date.

    Args:
        path: the GeoJSON file.

    Returns:
        The locations, in file order (a MultiPoint gives one per point).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a GeoJSON of geometries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not valid JSON ({error})') from error
    crs = 'EPSG:4326'
    if isinstance(data, Mapping) and isinstance(data.get('crs'), Mapping):
        name = data['crs'].get('properties', {}).get('name')
        if name:
            crs = CRS.from_user_input(name).to_string()
    if isinstance(data, Mapping) and data.get('type') == 'FeatureCollection':
        features = list(data.get('features') or [])
    elif isinstance(data, Mapping) and data.get('type') == 'Feature':
        features = [data]
    elif isinstance(data, Mapping) and 'coordinates' in data:
        features = [{'type': 'Feature', 'geometry': data, 'properties': {}}]
    else:
        raise ValueError(
            f'{path} is not a GeoJSON FeatureCollection, Feature or geometry'
        )
    locations = []
    for number, feature in enumerate(features):
        geometry = feature.get('geometry')
        if not geometry:
            raise ValueError(f'{path}: feature {number} has no geometry')
        try:
            shape = shapely.geometry.shape(geometry)
        except Exception as error:
            raise ValueError(
                f'{path}: feature {number} has an invalid geometry ({error})'
            ) from error
        properties = feature.get('properties') or {}
        identifier = feature.get('id', properties.get('id'))
        date = properties.get('date')
        when = datetime.fromisoformat(str(date)) if date else None
        points = list(shape.geoms) if shape.geom_type == 'MultiPoint' else [shape]
        for i, point in enumerate(points):
            if point.geom_type != 'Point':
                point = point.centroid
            tile_id = None
            if identifier is not None:
                tile_id = str(identifier) + (f'_{i}' if len(points) > 1 else '')
            locations.append(Location(point.x, point.y, crs, when, tile_id))
    if not locations:
        raise ValueError(f'{path} holds no features')
    return locations


def locations_from_sampler(sampler: Any, crs: Any = None) -> list[Location]:
    """Locations from a TorchGeo sampler: the centre of each sampled box.

    Args:
        sampler: a TorchGeo sampler over a Sentinel-2 dataset
            (``GriddedPatchSampler`` or ``RandomPatchSampler`` of TorchGeo 0.10,
            ``GridGeoSampler`` or ``RandomGeoSampler`` of 0.8); its queries are in
            the CRS of its dataset. A bounded time slice gives the preferred date
            (its midpoint).
        crs: that CRS (``dataset.crs``); TorchGeo 0.10's samplers do not keep
            it, 0.8's do (``sampler.index.crs``) and need none.

    Returns:
        The locations, in sampling order.

    Raises:
        ValueError: if *crs* is None and the sampler does not record it.
    """
    if crs is None:
        if not hasattr(getattr(sampler, 'index', None), 'crs'):
            raise ValueError(
                f'{type(sampler).__name__} does not record the CRS of its dataset '
                "(TorchGeo 0.10's samplers do not): pass it, "
                'locations_from_sampler(sampler, crs=dataset.crs)'
            )
        crs = sampler.index.crs
    crs = CRS.from_user_input(crs).to_string()
    locations = []
    for query in sampler:
        x, y, *rest = query
        date = None
        if rest and rest[0].start is not None and rest[0].stop is not None:
            start, stop = pd.Timestamp(rest[0].start), pd.Timestamp(rest[0].stop)
            if start > pd.Timestamp.min and stop < pd.Timestamp.max:
                date = (start + (stop - start) / 2).to_pydatetime()
        locations.append(
            Location((x.start + x.stop) / 2, (y.start + y.stop) / 2, crs, date)
        )
    return locations


def grid_locations(
    source: ModalitySource,
    tile_size: int,
    stride: int | None = None,
    resolution: float | None = 10.0,
) -> list[Location]:
    """Tile centres on a regular grid inside every Sentinel-2 scene.

    Tiles lie wholly inside their scene's footprint, on the scene's pixel lattice,
    every *stride* pixels from its top-left corner. Each location carries its
    acquisition's date, so that the builder cuts it from that acquisition.

    Args:
        source: the Sentinel-2 source.
        tile_size: tile side in pixels.
        stride: pixels between tile origins; None uses *tile_size* (no overlap).
            A smaller stride gives overlapping tiles.
        resolution: pixel size of the tile grid (as given to the builder).

    Returns:
        The locations, scene by scene, row by row.

    Raises:
        ValueError: if *tile_size* or *stride* is not positive.
    """
    if tile_size < 1 or (stride is not None and stride < 1):
        raise ValueError(
            f'tile_size and stride must be positive, got {tile_size} and {stride}'
        )
    stride = stride or tile_size
    locations = []
    for acquisition in source.acquisitions:
        lattice = anchor_lattice(acquisition.lattice, resolution)
        crs = acquisition.crs.to_string()
        for left, bottom, right, top in acquisition.footprints:
            first_col = math.ceil((left - lattice.c) / lattice.a - 1e-6)
            last_col = math.floor((right - lattice.c) / lattice.a + 1e-6)
            first_row = math.ceil((top - lattice.f) / lattice.e - 1e-6)
            last_row = math.floor((bottom - lattice.f) / lattice.e + 1e-6)
            for row in range(first_row, last_row - tile_size + 1, stride):
                for col in range(first_col, last_col - tile_size + 1, stride):
                    # The centre of pixel (S // 2, S // 2) of the tile.
                    x = lattice.c + lattice.a * (col + tile_size // 2 + 0.5)
                    y = lattice.f + lattice.e * (row + tile_size // 2 + 0.5)
                    locations.append(Location(x, y, crs, acquisition.date))
    return locations


def resolve_locations(value: Any) -> list[Location]:
    """Turn any accepted form of locations into a list.

    Args:
        value: a sequence of :class:`Location` or of ``(lon, lat)`` pairs, a path to
            a GeoJSON file, or a TorchGeo sampler that records its CRS (TorchGeo
            0.8's; for 0.10's, pass ``locations_from_sampler(sampler,
            crs=dataset.crs)``).

    Returns:
        The locations.

    Raises:
        ValueError: if there are no locations or two share a tile id.
        TypeError: for any other kind of value.
    """
    if isinstance(value, str | os.PathLike):
        locations = locations_from_geojson(value)
    elif isinstance(value, Sampler):
        locations = locations_from_sampler(value)
    elif isinstance(value, Sequence) and all(isinstance(v, Location) for v in value):
        locations = list(value)
    elif isinstance(value, Sequence):
        locations = locations_from_points(value)
    else:
        raise TypeError(
            'locations must be Location objects, (lon, lat) pairs, a GeoJSON path or '
            f'a TorchGeo sampler, got {type(value).__name__}'
        )
    if not locations:
        raise ValueError('No locations were given')
    ids = [location.id for location in locations if location.id is not None]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f'Two locations have the tile id {duplicate!r}')
    return locations
