"""Losses of MP-MAE pretraining.

Pretext-task descriptions, NaN-safe pretext-task losses, uncertainty weighting and
their combination for the Multi-Pretext Masked Autoencoder of MMEarth
(https://arxiv.org/abs/2405.02771). This package imports neither timm nor the
model zoo.
"""

from .mpmae import MultiPretextLoss
from .pretext import (
    TaskLoss,
    image_cross_entropy,
    image_mse,
    masked_patch_cross_entropy,
    masked_patch_mse,
)
from .tasks import PretextTask, check_tasks, default_pretext_tasks, patchify, unpatchify
from .uncertainty import UncertaintyWeighting

__all__ = (
    'MultiPretextLoss',
    'PretextTask',
    'TaskLoss',
    'UncertaintyWeighting',
    'check_tasks',
    'default_pretext_tasks',
    'image_cross_entropy',
    'image_mse',
    'masked_patch_cross_entropy',
    'masked_patch_mse',
    'patchify',
    'unpatchify',
)
