"""Files that appear whole or not at all."""

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ('atomic_path',)


@contextmanager
def atomic_path(
    path: str | os.PathLike[str],
    *,
    durable: bool = False,
    temporary_name: str | None = None,
) -> Iterator[Path]:
    """A temporary path next to *path*, renamed to *path* when the block succeeds.

    A crash or Ctrl-C leaves either the old file or the complete new one, never a
    torn one, and no temporary file. The temporary name holds the process id, so
    that two processes writing the same file do not write into one another's.
    The temporary file is in the folder of *path*, so the rename never becomes a
    copy across filesystems.

    Args:
        path: the file to write.
        durable: also make the new file survive a power cut or a lost node: its
            contents reach the disk (fsync) before it takes the name, and the
            rename does after.
        temporary_name: the name of the temporary file in the folder of *path*
            (default ``.<name>.<process id>.tmp``).

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    temporary = path.with_name(temporary_name or f'.{path.name}.{os.getpid()}.tmp')
    temporary.unlink(missing_ok=True)
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        # Some filesystems (network and FUSE ones) cannot sync a folder; the
        # file itself is on disk either way.
        with contextlib.suppress(OSError):
            _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Write what the system holds of *path* (a file or a folder) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
