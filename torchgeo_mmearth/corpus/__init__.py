"""Corpus builder: MMEarth-format pretraining corpora from your own rasters.

Sentinel-2 is the anchor (it fixes each tile's grid, CRS and date); every other
modality is paired by location and time and resampled onto the Sentinel-2 tile
(ERA5 monthly aggregates by calendar month, reduced to 12 values per tile).
The corpora read with :class:`torchgeo_mmearth.datasets.MMEarth` and
:class:`torchgeo.datasets.MMEarth`. See :func:`build_corpus` and ``docs/corpus.md``.
"""

from .bigearthnet import bigearthnet_scenes, bigearthnet_source
from .builder import (
    DROP_REASONS,
    BuildInterrupted,
    BuildReport,
    CorpusBuilder,
    ModalityCoverage,
    as_source,
    build_corpus,
)
from .geotiff import GeoTiffSource
from .grid import TileGrid
from .locations import (
    Location,
    grid_locations,
    locations_from_geojson,
    locations_from_points,
    locations_from_sampler,
    resolve_locations,
)
from .shards import ShardReport, shard_corpus
from .sources import (
    ERA5_VARIABLES,
    SOURCE_BANDS,
    Acquisition,
    BandFile,
    ModalitySource,
    Scene,
    orbit_from_time,
)
from .torchgeo_source import TorchGeoSource
from .writer import CorpusWriter

__all__ = (
    'DROP_REASONS',
    'ERA5_VARIABLES',
    'SOURCE_BANDS',
    'Acquisition',
    'BandFile',
    'BuildInterrupted',
    'BuildReport',
    'CorpusBuilder',
    'CorpusWriter',
    'GeoTiffSource',
    'Location',
    'ModalityCoverage',
    'ModalitySource',
    'Scene',
    'ShardReport',
    'TileGrid',
    'TorchGeoSource',
    'as_source',
    'bigearthnet_scenes',
    'bigearthnet_source',
    'build_corpus',
    'grid_locations',
    'locations_from_geojson',
    'locations_from_points',
    'locations_from_sampler',
    'orbit_from_time',
    'resolve_locations',
    'shard_corpus',
)
