"""Trainers for MMEarth pretraining."""

from .mpmae import MPMAETask

__all__ = ('MPMAETask',)
