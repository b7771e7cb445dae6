"""MMEarth datasets."""

from .mmearth import MMEarth

__all__ = ('MMEarth',)
