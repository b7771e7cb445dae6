"""MMEarth datamodules."""

from .bigearthnet_demo import BigEarthNetDemoDataModule
from .geobench import GeoBenchDataModule
from .mmearth import MMEarthDataModule

__all__ = ('BigEarthNetDemoDataModule', 'GeoBenchDataModule', 'MMEarthDataModule')
