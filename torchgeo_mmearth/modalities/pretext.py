"""The pretext tasks of MP-MAE: which modalities are predicted, and how.

MP-MAE (Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For
Geospatial Representation Learning", ECCV 2024, https://arxiv.org/abs/2405.02771)
reconstructs masked Sentinel-2 patches and, from the same encoder features,
predicts the other MMEarth modalities. A :class:`PretextTask` describes one such
target; the decoder, the losses and the pretraining task all read it.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from .registry import (
    MODALITIES,
    PRETEXT_MODALITIES,
    Kind,
    Level,
    resolve_modality_bands,
    sample_key,
)

__all__ = ['PretextTask', 'check_tasks', 'default_pretext_tasks']


@dataclass(frozen=True)
class PretextTask:
    """One prediction target of MP-MAE.

    Args:
        name: task name; also the key of the task's prediction in the decoder output
            and, through :attr:`key`, of its target in a batch.
        level: pixel-level map (predicted per masked patch) or image-level vector
            (predicted once per sample). Strings such as ``'pixel'`` are accepted.
        kind: continuous values (regression, MSE) or classes (cross-entropy).
            Strings such as ``'categorical'`` are accepted.
        channels: number of regressed channels of a continuous task or number of
            classes of a categorical task.

    Raises:
        ValueError: if *name* is empty or contains a dot (it names submodules), if
            *level* or *kind* is unknown, or if *channels* is not positive.
    """

    name: str
    level: Level
    kind: Kind
    channels: int

    def __post_init__(self) -> None:
        """Validate the fields; coerce strings to :class:`Level` and :class:`Kind`."""
        if not self.name or '.' in self.name:
            raise ValueError(
                f'name must be a non-empty string without dots, got {self.name!r}'
            )
        try:
            # ``sample_key`` compares enum members by identity, so store members.
            object.__setattr__(self, 'level', Level(self.level))
            object.__setattr__(self, 'kind', Kind(self.kind))
        except ValueError as error:
            raise ValueError(
                f'Invalid level or kind of task {self.name!r}: {error}'
            ) from None
        if self.channels < 1:
            raise ValueError(
                f'channels of task {self.name!r} must be positive, got {self.channels}'
            )

    @property
    def key(self) -> str:
        """Batch key of the task's target.

        See :func:`~torchgeo_mmearth.modalities.sample_key`.
        """
        return sample_key(self.name, self.level, self.kind)

    @classmethod
    def from_modality(
        cls, name: str, bands: Sequence[str] | None = None
    ) -> 'PretextTask':
        """Describe the pretext task of an MMEarth modality.

        Args:
            name: modality name, a key of
                :data:`~torchgeo_mmearth.modalities.MODALITIES`.
            bands: bands to regress for a continuous modality, in the order of the
                dataset samples; None selects the MP-MAE bands (the 12 input bands
                for sentinel2, all bands otherwise). Categorical modalities predict
                their classes and take no bands.

        Returns:
            The task, with ``len(bands)`` channels for a continuous modality and the
            number of classes for a categorical one.

        Raises:
            ValueError: for an unknown modality or band, or *bands* given for a
                categorical modality.
        """
        if name not in MODALITIES:
            raise ValueError(
                f'Unknown modality {name!r}; valid modalities are {list(MODALITIES)}'
            )
        modality = MODALITIES[name]
        if modality.kind is Kind.CATEGORICAL:
            if bands is not None:
                raise ValueError(
                    f'bands cannot be chosen for the categorical modality {name!r}, '
                    f'which predicts its {modality.num_classes} classes'
                )
            channels = modality.num_classes
        else:
            selection = None if bands is None else {name: bands}
            channels = len(resolve_modality_bands([name], selection)[name])
        return cls(name, modality.level, modality.kind, channels)


def check_tasks(tasks: Sequence[PretextTask]) -> tuple[PretextTask, ...]:
    """Validate a list of pretext tasks.

    Args:
        tasks: the tasks.

    Returns:
        The tasks as a tuple.

    Raises:
        ValueError: if *tasks* is empty or names a task twice.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError('tasks must name at least one PretextTask')
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f'tasks has duplicate names: {names}')
    return tasks


def default_pretext_tasks(
    modalities: Sequence[str] | None = None, sentinel2_channels: int | None = None
) -> tuple[PretextTask, ...]:
    """The pretext tasks of MP-MAE, by default the 12 of the "all modalities" models.

    Args:
        modalities: the target modalities, in task order; None for every modality
            of :data:`~torchgeo_mmearth.modalities.PRETEXT_MODALITIES`, in its order
            (the order that indexes the uncertainty weights of the released
            checkpoints).
        sentinel2_channels: channels of the sentinel2 reconstruction task (the
            encoder's input bands, 3 for the RGB models); None for the 12 MP-MAE
            input bands.

    Returns:
        One task per modality, with the MP-MAE bands.

    Raises:
        ValueError: for a modality that is not a pretext target.
    """
    names = list(PRETEXT_MODALITIES) if modalities is None else list(modalities)
    unknown = [name for name in names if name not in PRETEXT_MODALITIES]
    if unknown:
        raise ValueError(
            f'Unknown target modality {unknown[0]!r}; valid targets are '
            f'{list(PRETEXT_MODALITIES)}'
        )
    return tuple(
        PretextTask('sentinel2', Level.PIXEL, Kind.CONTINUOUS, sentinel2_channels)
        if name == 'sentinel2' and sentinel2_channels is not None
        else PretextTask.from_modality(name)
        for name in names
    )
