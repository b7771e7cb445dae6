"""The one line a ``torchgeo-mmearth`` command prints when Ctrl-C stops it."""

import shlex
import sys
from collections.abc import Sequence

__all__ = ['INTERRUPTED', 'command_line', 'report_interrupted']

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


def command_line(subcommand: str, argv: Sequence[str]) -> str:
    """The ``torchgeo-mmearth`` command line that runs *subcommand*, shell-quoted.

    Args:
        subcommand: e.g. ``'build-corpus'``.
        argv: its arguments.

    Returns:
        The command line, to paste into a shell.
    """
    return shlex.join(['torchgeo-mmearth', subcommand, *argv])


def report_interrupted(kept: str, next_step: str, command: str) -> int:
    """Say on stderr what an interrupted command kept and how to go on.

    Args:
        kept: what was kept (or not), e.g. ``'the finished batches are kept'``.
        next_step: e.g. ``'To resume'``.
        command: the command line that goes on (:func:`command_line`).

    Returns:
        :data:`INTERRUPTED`, the exit status to return.
    """
    print(f'\nInterrupted: {kept}. {next_step}: {command}', file=sys.stderr)
    return INTERRUPTED
