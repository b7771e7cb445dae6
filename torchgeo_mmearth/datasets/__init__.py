"""MMEarth datasets."""

from .bigearthnet_demo import BigEarthNetDemo
from .geobench import GeoBench
from .mmearth import DEMO_ROOT, MMEarth

__all__ = ('DEMO_ROOT', 'BigEarthNetDemo', 'GeoBench', 'MMEarth')
