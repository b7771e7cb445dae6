"""The patch layout of MP-MAE's pixel-level targets and predictions.

:func:`patchify` and :func:`unpatchify` define how pixel-level maps are laid out
per patch, as the pixel heads of the decoder
(:class:`~torchgeo_mmearth.models.MultiPretextDecoder`) predict them and the
losses compare them.
"""

from torch import Tensor

__all__ = ['patchify', 'unpatchify']


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
