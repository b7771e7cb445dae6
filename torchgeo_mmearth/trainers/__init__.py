"""Trainers: MMEarth pretraining, and TorchGeo's tasks with MMEarth's fine-tuning recipe."""

from .classification import MMEarthClassificationTask
from .mpmae import MPMAETask
from .segmentation import MMEarthSemanticSegmentationTask

__all__ = ('MMEarthClassificationTask', 'MMEarthSemanticSegmentationTask', 'MPMAETask')
