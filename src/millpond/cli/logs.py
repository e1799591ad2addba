"""The command's logging: where the lines go (stderr) and how they look.

This module owns the one logging set-up the ``millpond`` command makes in
each of its processes (with ``--workers``: the supervisor and each worker):
a handler on the root logger, so that millpond's loggers (``millpond.server``:
where it listens, each shutdown step, handler errors; ``millpond.access``:
one line per connection; ``millpond.supervisor``: workers started, stopped,
dead) and the handler's own loggers all reach stderr, at ``--log-level`` and
above. Libraries that only use
millpond (not the command) configure nothing: that is their program's job.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

__all__ = ["LOG_FORMAT", "WORKER_LOG_FORMAT", "configure_logging"]

# Time, level, logger, message: under systemd, journald adds its own time
# stamp, but the same lines also go to a terminal or a file.
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# With --workers every process writes to the same stderr: each worker's lines
# say which worker (its index, stable across restarts) and which process (its
# pid, new at every restart) wrote them. A line is one write(), so lines from
# different workers interleave whole.
WORKER_LOG_FORMAT: Final = (
    "%(asctime)s %(levelname)s worker {index} pid %(process)d %(name)s: %(message)s"
)


def configure_logging(level: str, access_log: bool, *, worker: int | None = None) -> None:
    """Send log records of ``level`` (a name: ``"info"``) and above to stderr.

    With ``access_log`` the ``millpond.access`` lines (at INFO) are shown even
    when ``level`` is higher: asking for them is asking to see them. With
    ``worker`` (a ``--workers`` worker's index) every line names the worker
    and its pid.
    """
    handler = logging.StreamHandler(sys.stderr)
    line_format = LOG_FORMAT if worker is None else WORKER_LOG_FORMAT.format(index=worker)
    handler.setFormatter(logging.Formatter(line_format))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if access_log and root.level > logging.INFO:
        logging.getLogger("millpond.access").setLevel(logging.INFO)
