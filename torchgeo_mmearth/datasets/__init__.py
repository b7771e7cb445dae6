"""MMEarth datasets."""

from .mmearth import DEMO_ROOT, MMEarth

__all__ = ('DEMO_ROOT', 'MMEarth')
