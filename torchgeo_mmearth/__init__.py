"""torchgeo-mmearth: MMEarth multi-modal pretraining (MP-MAE) for TorchGeo.

If you use this package in your research, please cite MMEarth:
https://arxiv.org/abs/2405.02771
"""

# Registers the mmearth_convnextv2_* models with timm and segmentation-models-pytorch,
# and MMEarthWeights with TorchGeo's model API.
from . import models

__version__ = '0.1.0.dev0'

__all__ = ('models',)
