"""torchgeo-mmearth: MMEarth multi-modal pretraining (MP-MAE) for TorchGeo.

Importing the package is cheap: its subpackages load on first use
(``torchgeo_mmearth.models``, ``from torchgeo_mmearth.datasets import MMEarth``),
and the ``mmearth_convnextv2_*`` models are registered with timm, as encoders with
segmentation-models-pytorch, and :class:`~torchgeo_mmearth.models.MMEarthWeights`
with TorchGeo's model API as soon as each of those is imported, before or after
this package.

If you use this package in your research, please cite MMEarth:
https://arxiv.org/abs/2405.02771
"""

import importlib
from types import ModuleType

from ._import_hooks import when_imported

__version__ = '0.1.0.dev0'

__all__ = (
    'corpus',
    'datamodules',
    'datasets',
    'evaluation',
    'inference',
    'losses',
    'modalities',
    'models',
    'trainers',
    'transforms',
)


def __getattr__(name: str) -> ModuleType:
    """Import a subpackage on first access (PEP 562).

    Args:
        name: the attribute looked up.

    Returns:
        The subpackage.

    Raises:
        AttributeError: if *name* is not a subpackage.
    """
    if name in __all__:
        return importlib.import_module(f'.{name}', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _register_with_timm(timm: ModuleType) -> None:
    # The module registers its entry points with timm's register_model.
    importlib.import_module('.models.mmearth_convnextv2', __name__)


def _register_with_smp(smp: ModuleType) -> None:
    # The module adds its encoders to segmentation_models_pytorch.encoders.encoders.
    importlib.import_module('.models.smp_encoder', __name__)


def _register_with_torchgeo(api: ModuleType) -> None:
    from .models.weights import _register_with_torchgeo as register

    register(api)


# timm, smp and TorchGeo's model API each take seconds to import: fill their
# registries when they are imported, not at plugin import.
when_imported('timm', _register_with_timm)
when_imported('segmentation_models_pytorch', _register_with_smp)
when_imported('torchgeo.models.api', _register_with_torchgeo)
