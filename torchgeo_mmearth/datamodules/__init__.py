"""MMEarth datamodules."""

from .mmearth import MMEarthDataModule

__all__ = ('MMEarthDataModule',)
