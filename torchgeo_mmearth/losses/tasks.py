"""Pretext tasks of MP-MAE and the patch layout of their pixel-level targets.

MP-MAE (Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For
Geospatial Representation Learning", ECCV 2024, https://arxiv.org/abs/2405.02771)
reconstructs masked Sentinel-2 patches and, from the same encoder features,
predicts the other MMEarth modalities. A :class:`PretextTask` describes one such
target; :func:`patchify` and :func:`unpatchify` define how pixel-level targets and
predictions are laid out per patch. The decoder
(:class:`~torchgeo_mmearth.models.mpmae_decoder.MultiPretextDecoder`) and the
losses (:class:`~torchgeo_mmearth.losses.MultiPretextLoss`) share them; they live
here so that the losses do not import the model zoo.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..modalities import (
    MODALITIES,
    PRETEXT_MODALITIES,
    Kind,
    Level,
    resolve_modality_bands,
    sample_key,
)

__all__ = ['PretextTask', 'default_pretext_tasks', 'patchify', 'unpatchify']


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


def default_pretext_tasks() -> tuple[PretextTask, ...]:
    """The 12 pretext tasks of the MP-MAE "all modalities" models.

    Returns:
        One task per modality of
        :data:`~torchgeo_mmearth.modalities.PRETEXT_MODALITIES`, in its order (the
        order that indexes the uncertainty weights of the released checkpoints),
        with the MP-MAE bands.
    """
    return tuple(PretextTask.from_modality(name) for name in PRETEXT_MODALITIES)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut maps into flattened, non-overlapping square patches.

    Patches are numbered row-major over the patch grid; within a patch the values
    are ordered (row in patch, column in patch, channel) with the channel fastest,
    which is the layout of the MP-MAE pixel heads and of the reference ``patchify``.

    Args:
        images: maps of shape ``(B, C, H, W)``, any dtype.
        patch_size: side *P* of a patch in pixels; must divide *H* and *W*.

    Returns:
        Patches of shape ``(B, (H / P) * (W / P), P * P * C)``.

    Raises:
        ValueError: if *images* is not 4-D or *patch_size* does not divide its size.
    """
    if images.ndim != 4:
        raise ValueError(
            f'images must be (B, C, H, W), got shape {tuple(images.shape)}'
        )
    batch, channels, height, width = images.shape
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(
            f'patch_size={patch_size} must divide the image size {height} x {width}'
        )
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    # (B, C, rows, p, cols, q) -> (B, rows, cols, p, q, C)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(
    patches: Tensor, patch_size: int, grid_size: tuple[int, int] | None = None
) -> Tensor:
    """Reassemble maps from patches laid out as by :func:`patchify`.

    Args:
        patches: patches of shape ``(B, L, P * P * C)``, e.g. the pixel-level outputs
            of :class:`MultiPretextDecoder`.
        patch_size: side *P* of a patch in pixels.
        grid_size: patch grid ``(rows, cols)`` with ``rows * cols = L``; None for a
            square grid.

    Returns:
        Maps of shape ``(B, C, rows * P, cols * P)``.

    Raises:
        ValueError: if the patch width is not a multiple of ``P * P`` or the grid
            does not hold ``L`` patches.
    """
    if patches.ndim != 3:
        raise ValueError(
            f'patches must be (B, L, P*P*C), got shape {tuple(patches.shape)}'
        )
    batch, length, width = patches.shape
    area = patch_size * patch_size
    if patch_size < 1 or width % area:
        raise ValueError(
            f'patch_size={patch_size} does not fit patches of width {width}, '
            f'which must be a multiple of patch_size**2 = {area}'
        )
    if grid_size is None:
        side = round(length**0.5)
        grid_size = (side, side)
    rows, cols = grid_size
    if rows * cols != length:
        raise ValueError(
            f'grid_size={grid_size} does not hold the {length} patches; '
            'give grid_size for a non-square grid'
        )
    channels = width // area
    maps = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
    maps = maps.permute(0, 5, 1, 3, 2, 4)
    return maps.reshape(batch, channels, rows * patch_size, cols * patch_size)
