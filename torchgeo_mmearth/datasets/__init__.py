"""MMEarth datasets."""

import importlib
from typing import Any

from .bigearthnet_demo import BigEarthNetDemo
from .geobench import GeoBench
from .mmearth import DEMO_ROOT, MMEarth

__all__ = ('DEMO_ROOT', 'BigEarthNetDemo', 'GeoBench', 'MMEarth', 'StreamingMMEarth')


def __getattr__(name: str) -> Any:
    """Import the streaming dataset (and litdata) on first use (PEP 562).

    Args:
        name: the attribute looked up.

    Returns:
        :class:`~torchgeo_mmearth.datasets.streaming.StreamingMMEarth`.

    Raises:
        AttributeError: for any other name.
    """
    if name == 'StreamingMMEarth':
        return importlib.import_module('.streaming', __name__).StreamingMMEarth
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
