"""Embeddings of Sentinel-2 scenes: georeferenced MMEarth features for any area.

:func:`embed` runs an MMEarth encoder over Sentinel-2 GeoTIFFs, VRTs or a
TorchGeo ``RasterDataset`` and writes a dense embedding raster (a Cloud-Optimized
GeoTIFF at the encoder's output stride) and a GeoParquet of pooled chip
embeddings, both with their provenance. The command ``torchgeo-mmearth embed``
runs it. See ``docs/tutorials/embed_scene.md``. If you use the MMEarth weights,
please cite https://arxiv.org/abs/2405.02771.
"""

from .embedding import (
    EmbeddingGrid,
    EmbeddingResult,
    area_grid,
    embed,
    sentinel2_source,
)
from .encoder import SceneEncoder, load_encoder

__all__ = (
    'EmbeddingGrid',
    'EmbeddingResult',
    'SceneEncoder',
    'area_grid',
    'embed',
    'load_encoder',
    'sentinel2_source',
)
