"""Transforms for MMEarth samples and batches."""

from .mmearth import BandStats, MMEarthNormalize

__all__ = ('BandStats', 'MMEarthNormalize')
