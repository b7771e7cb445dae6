"""Transforms for MMEarth samples and for other datasets' Sentinel-2 bands."""

from .bands import SO2SAT_FILL, BandRemap, remap_bands
from .normalize import MMEarthNormalize, MMEarthS2Normalize

__all__ = (
    'SO2SAT_FILL',
    'BandRemap',
    'MMEarthNormalize',
    'MMEarthS2Normalize',
    'remap_bands',
)
