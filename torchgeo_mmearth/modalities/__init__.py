"""The MMEarth modalities: the one registry every other part reads.

What a modality is (stored layout, bands, no-data rules, its role as a pretext
target), how Sentinel-2 bands are spelled, and the corpus band statistics are
described here once. This package imports no other part of torchgeo-mmearth.
"""

from .bands import GEOBENCH_SENTINEL2_NAMES, SENTINEL2_BANDS, canonical_band_name
from .pretext import PretextTask, check_tasks, default_pretext_tasks
from .registry import (
    DATA_VERSIONS,
    IGNORE_INDEX,
    MODALITIES,
    PRETEXT_MODALITIES,
    S2_TYPES,
    SENTINEL2_INPUT_BANDS,
    SENTINEL2_RGB_BANDS,
    VERSION_ATTRIBUTE,
    VERSION_NODATA,
    Kind,
    Level,
    Modality,
    check_data_version,
    data_version,
    nodata_values,
    resolve_modality_bands,
    sample_key,
    split_data_version,
)
from .statistics import (
    MMEARTH_S2_BAND_STATS,
    BandStats,
    band_statistics,
    read_band_stats,
)

__all__ = [
    'DATA_VERSIONS',
    'GEOBENCH_SENTINEL2_NAMES',
    'IGNORE_INDEX',
    'MMEARTH_S2_BAND_STATS',
    'MODALITIES',
    'PRETEXT_MODALITIES',
    'S2_TYPES',
    'SENTINEL2_BANDS',
    'SENTINEL2_INPUT_BANDS',
    'SENTINEL2_RGB_BANDS',
    'VERSION_ATTRIBUTE',
    'VERSION_NODATA',
    'BandStats',
    'Kind',
    'Level',
    'Modality',
    'PretextTask',
    'band_statistics',
    'canonical_band_name',
    'check_data_version',
    'check_tasks',
    'data_version',
    'default_pretext_tasks',
    'nodata_values',
    'read_band_stats',
    'resolve_modality_bands',
    'sample_key',
    'split_data_version',
]
