"""How the ``millpond`` command fails: one line on stderr and an exit status, never a traceback.

This module owns the command's exit statuses and ``CommandError``, the one
exception its parts raise for a mistake the user can fix (a TARGET that does
not import, a port in use, a certificate that cannot be read). Everything
else (a bug) keeps its traceback.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CommandError"]

# The server ran and stopped as it was asked to (a signal, a graceful shutdown).
EXIT_OK: Final = 0

# It ran and failed: a bug (with a traceback), or, with --workers, workers
# that kept dying before they listened, or that had to be killed because they
# did not stop in time.
EXIT_FAILURE: Final = 1

# Something the user gave cannot be used: argparse's own status for a bad
# flag, kept for every mistake the user can fix, so that a supervisor (or a
# deploy script) tells "fix the command line" from "it crashed" (1).
EXIT_USAGE: Final = 2

# Ctrl-C before the server started (while the TARGET imported): the shell's
# convention for a process that SIGINT stopped, 128 + 2.
EXIT_INTERRUPTED: Final = 130


class CommandError(Exception):
    """A mistake in what the user gave the command, said in one line.

    ``str(error)`` is the whole message, written after ``millpond: error:``;
    it names the flag or the TARGET and says what is wrong with it.
    """
