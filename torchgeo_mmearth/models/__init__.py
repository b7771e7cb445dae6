"""MMEarth models: the ConvNeXt V2 encoder for timm, smp and TorchGeo, and MP-MAE.

``import torchgeo_mmearth`` registers the ``mmearth_convnextv2_*`` models with timm
(``timm.create_model``, TorchGeo's ``ClassificationTask``), as encoders with
segmentation-models-pytorch (``smp.Unet``, TorchGeo's
``SemanticSegmentationTask``), and the architectures of the official MP-MAE
checkpoints with TorchGeo's model API together with :class:`MMEarthWeights`
(``torchgeo.models.get_model``, ``get_weight('MMEarthWeights.S2_MP_MAE')``,
``list_models``, and ``weights: MMEarthWeights.S2_MP_MAE`` in YAML configs), each
when timm, smp or TorchGeo's model API is imported, before or after the plugin.
If you use these models, please cite https://arxiv.org/abs/2405.02771.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoints import (
        OFFICIAL_CHECKPOINTS,
        CheckpointDownloadError,
        OfficialCheckpoint,
        UnsafeCheckpointError,
        load_checkpoint,
    )
    from .conversion import MPMAEParts, mpmae_parts
    from .masked_encoder import masked_forward, random_patch_mask, upsample_mask
    from .mmearth_convnextv2 import (
        MMEARTH_CONVNEXTV2_SIZES,
        PATCH_SIZES,
        MMEarthConvNeXtV2,
        checkpoint_filter_fn,
    )
    from .mmearth_unet import MMEarthUNet
    from .mpmae import MPMAE, MPMAEOutput, PretrainedLoad
    from .mpmae_decoder import MultiPretextDecoder
    from .smp_encoder import MMEarthConvNeXtV2Encoder
    from .weights import (
        WEIGHTS_DIR_VARIABLE,
        MMEarthWeights,
        convert_checkpoint,
        mmearth_convnextv2_atto,
        mmearth_convnextv2_atto_p16,
        mmearth_convnextv2_tiny,
        pretraining_checkpoint,
        weights_state_dict,
    )

# Where each name is defined: the package imports a module on first use of one of
# its names (PEP 562), so that ``import torchgeo_mmearth.models`` loads neither
# timm nor segmentation-models-pytorch (their import hooks in the package's
# ``__init__`` register the models).
_SUBMODULES = {
    'checkpoints': (
        'OFFICIAL_CHECKPOINTS',
        'CheckpointDownloadError',
        'OfficialCheckpoint',
        'UnsafeCheckpointError',
        'load_checkpoint',
    ),
    'conversion': ('MPMAEParts', 'mpmae_parts'),
    'masked_encoder': ('masked_forward', 'random_patch_mask', 'upsample_mask'),
    'mmearth_convnextv2': (
        'MMEARTH_CONVNEXTV2_SIZES',
        'PATCH_SIZES',
        'MMEarthConvNeXtV2',
        'checkpoint_filter_fn',
    ),
    'mmearth_unet': ('MMEarthUNet',),
    'mpmae': ('MPMAE', 'MPMAEOutput', 'PretrainedLoad'),
    'mpmae_decoder': ('MultiPretextDecoder',),
    'smp_encoder': ('MMEarthConvNeXtV2Encoder',),
    'weights': (
        'WEIGHTS_DIR_VARIABLE',
        'MMEarthWeights',
        'convert_checkpoint',
        'mmearth_convnextv2_atto',
        'mmearth_convnextv2_atto_p16',
        'mmearth_convnextv2_tiny',
        'pretraining_checkpoint',
        'weights_state_dict',
    ),
}
_MODULE_OF = {name: module for module, names in _SUBMODULES.items() for name in names}

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
    'MPMAEParts',
    'MultiPretextDecoder',
    'OfficialCheckpoint',
    'PretrainedLoad',
    'UnsafeCheckpointError',
    'checkpoint_filter_fn',
    'convert_checkpoint',
    'load_checkpoint',
    'masked_forward',
    'mmearth_convnextv2_atto',
    'mmearth_convnextv2_atto_p16',
    'mmearth_convnextv2_tiny',
    'mpmae_parts',
    'pretraining_checkpoint',
    'random_patch_mask',
    'upsample_mask',
    'weights_state_dict',
)


def __getattr__(name: str) -> Any:
    """Import the module that defines *name* on first access (PEP 562).

    Args:
        name: the attribute looked up.

    Returns:
        The attribute.

    Raises:
        AttributeError: if no module of the package defines *name*.
    """
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """The package's public names, with those not imported yet.

    Returns:
        The names.
    """
    return sorted({*globals(), *__all__})
