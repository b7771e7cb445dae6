"""Trainers: MMEarth pretraining, and TorchGeo's tasks with MMEarth's fine-tuning recipe."""

from .callbacks import CheckpointOnInterrupt, StoppedBySignal, resume_in_version_folder
from .checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from .classification import MMEarthClassificationTask
from .mpmae import MPMAETask
from .rng import RandomStateCheckpoint
from .segmentation import MMEarthSemanticSegmentationTask

__all__ = (
    'AtomicCheckpointIO',
    'CheckpointOnInterrupt',
    'MMEarthClassificationTask',
    'MMEarthSemanticSegmentationTask',
    'MPMAETask',
    'RandomStateCheckpoint',
    'StoppedBySignal',
    'resume_in_version_folder',
    'use_atomic_checkpoints',
)
