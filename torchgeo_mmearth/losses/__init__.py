"""Losses of MP-MAE pretraining and of MMEarth's fine-tuning recipe.

The patch layout of pixel-level targets, NaN-safe pretext-task losses, uncertainty
weighting and their combination for the Multi-Pretext Masked Autoencoder of
MMEarth (https://arxiv.org/abs/2405.02771), and the label-smoothed losses of its
fine-tuning recipe. This package imports neither timm nor the model zoo.
"""

from .classification import (
    LabelSmoothingBCEWithLogitsLoss,
    SmoothedInTraining,
    smoothed_loss,
)
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
    'LabelSmoothingBCEWithLogitsLoss',
    'MultiPretextLoss',
    'SmoothedInTraining',
    'TaskLoss',
    'UncertaintyWeighting',
    'image_cross_entropy',
    'image_mse',
    'masked_patch_cross_entropy',
    'masked_patch_mse',
    'patchify',
    'smoothed_loss',
    'unpatchify',
)
