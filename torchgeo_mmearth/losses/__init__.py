"""Losses of MP-MAE pretraining.

The patch layout of pixel-level targets, NaN-safe pretext-task losses, uncertainty weighting and
their combination for the Multi-Pretext Masked Autoencoder of MMEarth
(https://arxiv.org/abs/2405.02771). This package imports neither timm nor the
model zoo.
"""

from .mpmae import MultiPretextLoss
from .patches import patchify, unpatchify
from .pretext import (
    TaskLoss,
    image_cross_entropy,
    image_mse,
    masked_patch_cross_entropy,
    masked_patch_mse,
)
from .uncertainty import UncertaintyWeighting

__all__ = (
    'MultiPretextLoss',
    'TaskLoss',
    'UncertaintyWeighting',
    'image_cross_entropy',
    'image_mse',
    'masked_patch_cross_entropy',
    'masked_patch_mse',
    'patchify',
    'unpatchify',
)
