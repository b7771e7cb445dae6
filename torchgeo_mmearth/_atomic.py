"""Files that appear whole or not at all."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ('atomic_path',)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to *path*, renamed to *path* when the block succeeds.

    A crash or Ctrl-C leaves either the old file or the complete new one, never a
    torn one, and no temporary file. The temporary name holds the process id, so
    that two processes writing the same file do not write into one another's.

    Args:
        path: the file to write.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    temporary.unlink(missing_ok=True)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
