"""MMEarth models: the ConvNeXt V2 encoder for timm, smp and TorchGeo, and MP-MAE.

Importing this package registers the ``mmearth_convnextv2_*`` models with timm
(``timm.create_model``, TorchGeo's ``ClassificationTask``) and as encoders with
segmentation-models-pytorch (``smp.Unet``, TorchGeo's
``SemanticSegmentationTask``).
"""

from .masked_encoder import masked_forward, random_patch_mask, upsample_mask
from .mmearth_convnextv2 import (
    MMEARTH_CONVNEXTV2_SIZES,
    PATCH_SIZES,
    MMEarthConvNeXtV2,
    checkpoint_filter_fn,
)
from .mmearth_unet import MMEarthUNet
from .mpmae import MPMAE, MPMAEOutput
from .mpmae_decoder import MultiPretextDecoder
from .smp_encoder import MMEarthConvNeXtV2Encoder

__all__ = (
    'MMEARTH_CONVNEXTV2_SIZES',
    'MPMAE',
    'PATCH_SIZES',
    'MMEarthConvNeXtV2',
    'MMEarthConvNeXtV2Encoder',
    'MMEarthUNet',
    'MPMAEOutput',
    'MultiPretextDecoder',
    'checkpoint_filter_fn',
    'masked_forward',
    'random_patch_mask',
    'upsample_mask',
)
