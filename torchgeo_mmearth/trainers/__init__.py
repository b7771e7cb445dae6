"""Trainers: MMEarth pretraining, and TorchGeo's tasks with MMEarth's fine-tuning recipe."""

from .callbacks import CheckpointOnInterrupt, resume_in_version_folder
from .classification import MMEarthClassificationTask
from .mpmae import MPMAETask
from .rng import RandomStateCheckpoint
from .segmentation import MMEarthSemanticSegmentationTask

__all__ = (
    'CheckpointOnInterrupt',
    'MMEarthClassificationTask',
    'MMEarthSemanticSegmentationTask',
    'MPMAETask',
    'RandomStateCheckpoint',
    'resume_in_version_folder',
)
