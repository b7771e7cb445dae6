"""MMEarth models: the ConvNeXt V2 encoder for timm, smp and TorchGeo, and MP-MAE.

Importing this package registers the ``mmearth_convnextv2_*`` models with timm
(``timm.create_model``, TorchGeo's ``ClassificationTask``), as encoders with
segmentation-models-pytorch (``smp.Unet``, TorchGeo's
``SemanticSegmentationTask``), and the architectures of the official MP-MAE
checkpoints with TorchGeo's model API together with :class:`MMEarthWeights`
(``torchgeo.models.get_model``, ``get_weight('MMEarthWeights.S2_MP_MAE')``,
``list_models``, and ``weights: MMEarthWeights.S2_MP_MAE`` in YAML configs).
If you use these models, please cite https://arxiv.org/abs/2405.02771.
"""

from .._import_hooks import when_imported
from .checkpoints import (
    OFFICIAL_CHECKPOINTS,
    CheckpointDownloadError,
    OfficialCheckpoint,
    UnsafeCheckpointError,
    load_checkpoint,
)
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
from .weights import (
    WEIGHTS_DIR_VARIABLE,
    MMEarthWeights,
    _register_with_torchgeo,
    convert_checkpoint,
    mmearth_convnextv2_atto,
    mmearth_convnextv2_atto_p16,
    mmearth_convnextv2_tiny,
    weights_state_dict,
)

# TorchGeo's model API loads every TorchGeo dataset module: register with it when
# it is imported (by TorchGeo's tasks, get_weight, configs), not at plugin import.
when_imported('torchgeo.models.api', _register_with_torchgeo)

__all__ = (
    'MMEARTH_CONVNEXTV2_SIZES',
    'MPMAE',
    'OFFICIAL_CHECKPOINTS',
    'PATCH_SIZES',
    'WEIGHTS_DIR_VARIABLE',
    'CheckpointDownloadError',
    'MMEarthConvNeXtV2',
    'MMEarthConvNeXtV2Encoder',
    'MMEarthUNet',
    'MMEarthWeights',
    'MPMAEOutput',
    'MultiPretextDecoder',
    'OfficialCheckpoint',
    'UnsafeCheckpointError',
    'checkpoint_filter_fn',
    'convert_checkpoint',
    'load_checkpoint',
    'masked_forward',
    'mmearth_convnextv2_atto',
    'mmearth_convnextv2_atto_p16',
    'mmearth_convnextv2_tiny',
    'random_patch_mask',
    'upsample_mask',
    'weights_state_dict',
)
