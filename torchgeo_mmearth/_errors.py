"""The one line a ``torchgeo-mmearth`` command prints for a user's mistake.

A missing or corrupt file, an output that exists, a wrong option: every
subcommand prints ``error: <message>`` on stderr, naming the file or flag and the
fix in the command line's terms, and exits with :data:`USAGE_ERROR`. With
``torchgeo-mmearth --debug`` or ``TORCHGEO_MMEARTH_DEBUG=1`` the full traceback is
shown instead. Anything else (a bug) keeps its traceback.
"""

import contextlib
import contextvars
import os
import pickle
import re
import sys
from collections.abc import Iterator

__all__ = [
    'DEBUG_VARIABLE',
    'USAGE_ERROR',
    'USER_ERRORS',
    'CommandLineError',
    'CorruptDataError',
    'NonFiniteTrainingError',
    'ResumeError',
    'RunError',
    'check_new_output',
    'debug_mode',
    'debugging',
    'report_error',
]

#: Environment variable that shows tracebacks instead of one-line errors.
DEBUG_VARIABLE = 'TORCHGEO_MMEARTH_DEBUG'
#: Exit status of a command refused for a user's mistake (as argparse's).
USAGE_ERROR = 2

_DEBUG = contextvars.ContextVar('debug', default=False)


class CommandLineError(Exception):
    """A mistake in a command line, worded in its terms (flags and files)."""


class RunError(Exception):
    """A mistake in a run's data or checkpoint, found once the run has started.

    ``torchgeo-mmearth fit`` stopped by one prints it as its one ``error:`` line,
    also when a DataLoader worker raised it. Its subclasses are also ValueError or
    OSError, what Python callers catch.
    """


class ResumeError(RunError, ValueError):
    """A checkpoint that cannot resume the run as the run is set up."""


class CorruptDataError(RunError, OSError):
    """A data file that differs from what was written (its checksum)."""


class NonFiniteTrainingError(RunError, FloatingPointError):
    """Training that cannot go on: step after step with non-finite gradients."""


#: What a user's mistake raises in the subcommands: missing, existing or corrupt
#: files (OSError, including failed downloads and truncated checkpoints), values
#: that do not fit (ValueError) and checkpoints refused as unsafe.
USER_ERRORS: tuple[type[Exception], ...] = (
    CommandLineError,
    OSError,
    ValueError,
    pickle.UnpicklingError,
)


@contextlib.contextmanager
def debug_mode(enabled: bool) -> Iterator[None]:
    """Show tracebacks instead of one-line errors, for the duration.

    Args:
        enabled: whether ``--debug`` was given.

    Yields:
        Nothing.
    """
    token = _DEBUG.set(enabled)
    try:
        yield
    finally:
        _DEBUG.reset(token)


def debugging() -> bool:
    """Whether errors show their traceback: ``--debug`` or the environment.

    Returns:
        True under ``--debug`` or ``TORCHGEO_MMEARTH_DEBUG`` set (not to 0).
    """
    return _DEBUG.get() or os.environ.get(DEBUG_VARIABLE, '') not in ('', '0')


def report_error(error: Exception) -> int:
    """Print *error* as the one line ``error: <message>`` on stderr.

    Call it where the error is handled (``except ... as error``); under
    :func:`debugging` it raises the error again, traceback and all.

    Args:
        error: a user's mistake (one of :data:`USER_ERRORS`).

    Returns:
        :data:`USAGE_ERROR`, the exit status to return.

    Raises:
        Exception: *error*, when debugging.
    """
    if debugging():
        raise error
    print(f'error: {_message(error)}', file=sys.stderr)
    return USAGE_ERROR


def check_new_output(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse to replace *path* unless ``--overwrite`` was given.

    Args:
        path: an output of the command.
        overwrite: whether ``--overwrite`` was given.

    Raises:
        CommandLineError: if *path* exists and *overwrite* is False.
    """
    if not overwrite and os.path.lexists(path):
        raise CommandLineError(f'{path} exists; add --overwrite to replace it')


def _message(error: Exception) -> str:
    """The message of *error* on one line; an OSError of a file names it first."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f'{error.filename}: {error.strerror}'
    else:
        text = str(error) or type(error).__name__
    # An error raised in a DataLoader worker comes back with the worker's
    # traceback in its message; its own message is the last line.
    if text.startswith('Caught ') and '\nOriginal Traceback' in text:
        last = text.rstrip().rsplit('\n', 1)[-1]
        text = re.sub(rf'^[\w.]*\b{type(error).__name__}: ', '', last)
    return re.sub(r'\s*\n\s*', ' ', text.strip())
