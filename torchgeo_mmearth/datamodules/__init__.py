"""MMEarth datamodules."""

from .bigearthnet_demo import BigEarthNetDemoDataModule
from .geobench import GeoBenchDataModule
from .mmearth import MMEarthDataModule
from .streaming import MMEarthStreamingDataModule

__all__ = (
    'BigEarthNetDemoDataModule',
    'GeoBenchDataModule',
    'MMEarthDataModule',
    'MMEarthStreamingDataModule',
)
