"""The processes of an embedding run: one, or many under ``torchrun``.

:func:`~torchgeo_mmearth.inference.embed` splits its area into blocks; each
process takes every *world*-th block that is not done yet. The processes are
those of a ``torch.distributed`` process group: one that the caller set up
(Lightning Fabric or a Trainer after launch), or one made here from the
environment that ``torchrun`` (or ``srun torchrun`` on Slurm) sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ('Processes', 'processes')

#: How long a process waits for the others at a barrier: a rank that finished its
#: blocks waits for the slowest one, which may take hours on a large area.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run.

    Args:
        rank: this process's number, 0 to *world* - 1.
        world: number of processes.
        device: the device this process encodes on.
    """

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes the final outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """The main process's *value*, in every process.

        Args:
            value: what to send (from the main process; ignored in the others).

        Returns:
            The main process's value.
        """
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextmanager
def processes(device: torch.device) -> Iterator[Processes]:
    """The processes of this run, with a process group while there are several.

    Uses the caller's process group if there is one, else makes one when the
    environment names more than one process (``WORLD_SIZE``, as ``torchrun``
    sets it), and ends the group it made on exit. On CUDA each process takes
    the GPU ``LOCAL_RANK`` unless *device* names one (``cuda:1``).

    Args:
        device: the device asked for (``cpu``, ``cuda``, ``cuda:1``).

    Yields:
        The processes.
    """
    made = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = int(os.environ.get('RANK', '0'))
        world = int(os.environ.get('WORLD_SIZE', '1'))
    if device.type == 'cuda' and device.index is None and world > 1:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    if device.type == 'cuda' and device.index is not None:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        made = True
    try:
        yield Processes(rank, world, device)
    finally:
        if made:
            dist.destroy_process_group()
