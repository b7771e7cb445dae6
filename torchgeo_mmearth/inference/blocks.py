"""Chips and blocks of an embedded area, and the workspace of finished blocks.

The output grid is cut into square blocks of whole chip centres. A block is the
unit of work, of resumption and of memory: a process encodes all chips of a
block, then saves the block's features in the workspace (one file, renamed into
place, then its record); a block whose record exists is done. Each block's result
depends on the block alone, not on which process computed it or on what it
computed before, so any number of processes write the same files.
"""

import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from .._atomic import atomic_path

__all__ = ('Block', 'BlockData', 'Chip', 'Workspace', 'layout')

_STATE = 'state.json'


@dataclass(frozen=True)
class Chip:
    """A chip: its top-left input pixel and the output cells it keeps.

    Args:
        index: number of the chip in the area, row by row.
        row: input row of the chip's top-left corner (negative at the top edge).
        col: input column of the chip's top-left corner.
        out_rows: output rows ``[start, stop)`` that the chip keeps.
        out_cols: output columns ``[start, stop)`` that the chip keeps.
    """

    index: int
    row: int
    col: int
    out_rows: tuple[int, int]
    out_cols: tuple[int, int]

    def bounds(self, transform: Affine) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the kept centre.

        Args:
            transform: the affine transform of the output grid.

        Returns:
            The bounds, in the grid's CRS.
        """
        (r0, r1), (c0, c1) = self.out_rows, self.out_cols
        left, top = transform * (c0, r0)
        right, bottom = transform * (c1, r1)
        return (left, bottom, right, top)


@dataclass(frozen=True)
class Block:
    """A block of the output grid and the chips whose centres tile it.

    Args:
        name: ``block_RRRR_CCCC``, its row and column among the blocks.
        out_rows: output rows ``[start, stop)``.
        out_cols: output columns ``[start, stop)``.
        chips: its chips, row by row.
    """

    name: str
    out_rows: tuple[int, int]
    out_cols: tuple[int, int]
    chips: tuple[Chip, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in output pixels."""
        return (
            self.out_rows[1] - self.out_rows[0],
            self.out_cols[1] - self.out_cols[0],
        )


@dataclass(frozen=True)
class BlockData:
    """What a block holds once encoded.

    Args:
        features: (D, height, width) embeddings of the block, NaN where no-data.
        pooled: (chips, D) mean embedding of each chip's valid centre (NaN for
            chips without one).
        valid: (chips,) fraction of valid output pixels of each chip's centre.
        dates: ISO date of the first acquisition under each chip, or None.
        scenes: comma-separated names of the scenes under each chip.
    """

    features: np.ndarray
    pooled: np.ndarray
    valid: np.ndarray
    dates: list[str | None]
    scenes: list[str]


def layout(
    out_shape: tuple[int, int],
    patch_size: int,
    chip_size: int,
    margin: int,
    block_size: int,
) -> list[Block]:
    """The blocks of an output grid and their chips.

    Chips of *chip_size* input pixels keep their centres (*chip_size* - 2
    *margin*), which tile the output grid; blocks are square groups of whole
    centres, about *block_size* output pixels on a side.

    Args:
        out_shape: (height, width) of the output grid.
        patch_size: input pixels per output pixel.
        chip_size: side of a chip in input pixels.
        margin: input pixels dropped from each side of a chip's output.
        block_size: side of a block in output pixels, rounded down to whole chip
            centres (at least one).

    Returns:
        The blocks, row by row; chip numbers run row by row over the whole grid.
    """
    p = patch_size
    core = (chip_size - 2 * margin) // p  # output cells kept per chip and axis
    per_block = max(1, block_size // core)  # chip centres per block and axis
    height, width = out_shape
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    chips = [
        Chip(
            i * cols + j,
            i * core * p - margin,
            j * core * p - margin,
            (i * core, min((i + 1) * core, height)),
            (j * core, min((j + 1) * core, width)),
        )
        for i in range(rows)
        for j in range(cols)
    ]
    blocks = []
    for bi in range(math.ceil(rows / per_block)):
        for bj in range(math.ceil(cols / per_block)):
            members = tuple(
                chips[i * cols + j]
                for i in range(bi * per_block, min((bi + 1) * per_block, rows))
                for j in range(bj * per_block, min((bj + 1) * per_block, cols))
            )
            blocks.append(
                Block(
                    f'block_{bi:04d}_{bj:04d}',
                    (members[0].out_rows[0], members[-1].out_rows[1]),
                    (members[0].out_cols[0], members[-1].out_cols[1]),
                    members,
                )
            )
    return blocks


class Workspace:
    """The folder of an embedding run: its fingerprint and its finished blocks.

    Args:
        folder: the workspace (``.<output>.partial`` next to the first output).
    """

    def __init__(self, folder: Path) -> None:
        """Initialise the workspace in *folder* (made by :meth:`prepare`)."""
        self.folder = folder
        self.blocks = folder / 'blocks'

    def prepare(self, fingerprint: dict[str, Any], resume: bool) -> set[str]:
        """Keep the finished blocks of the same run, or start afresh.

        Called by one process, before the others read or write blocks.

        Args:
            fingerprint: the inputs and options of this run.
            resume: keep the blocks of an interrupted run with the same
                fingerprint.

        Returns:
            The names of the blocks already done.
        """
        state = self.folder / _STATE
        if resume and state.is_file():
            saved = json.loads(state.read_text())
            if saved.get('fingerprint') == fingerprint:
                return self.done()
            warnings.warn(
                f'{self.folder} holds an interrupted run with other inputs or '
                'options; starting again',
                UserWarning,
                stacklevel=3,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.blocks.mkdir(parents=True)
        with atomic_path(state) as temporary:
            temporary.write_text(json.dumps({'fingerprint': fingerprint}))
        return set()

    def done(self) -> set[str]:
        """The names of the finished blocks."""
        return {path.stem for path in self.blocks.glob('block_*.json')}

    def save(self, block: Block, data: BlockData) -> None:
        """Save a finished block: its features, its chips' arrays, then its record.

        The features go to a ``.npy`` file of their own, which :meth:`load` maps
        rather than reads: a pass that needs one band, or none, reads no more.

        Args:
            block: the block.
            data: what it holds.
        """
        with (
            atomic_path(self._path(block, '.features.npy')) as temporary,
            temporary.open('wb') as file,
        ):
            np.save(file, data.features)
        with (
            atomic_path(self._path(block, '.npz')) as temporary,
            temporary.open('wb') as file,
        ):
            np.savez(file, pooled=data.pooled, valid=data.valid)
        record = {'dates': data.dates, 'scenes': data.scenes}
        with atomic_path(self._path(block, '.json')) as temporary:
            temporary.write_text(json.dumps(record))

    def valid(self, block: Block) -> np.ndarray:
        """A finished block's fraction of valid output pixels per chip.

        Args:
            block: the block.

        Returns:
            (chips,) fractions.
        """
        with np.load(self._path(block, '.npz')) as arrays:
            valid: np.ndarray = arrays['valid']
            return valid

    def load(self, block: Block) -> BlockData:
        """A finished block's data, its features memory-mapped (read-only).

        Args:
            block: the block.

        Returns:
            What it holds.
        """
        record = json.loads(self._path(block, '.json').read_text())
        features = np.load(self._path(block, '.features.npy'), mmap_mode='r')
        with np.load(self._path(block, '.npz')) as arrays:
            return BlockData(
                features,
                arrays['pooled'],
                arrays['valid'],
                record['dates'],
                record['scenes'],
            )

    def _path(self, block: Block, suffix: str) -> Path:
        return self.blocks / f'{block.name}{suffix}'
