"""The command's logging: where the lines go (stderr) and how they look.

This module owns the one logging set-up the ``millpond`` command makes for
the whole process: a handler on the root logger, so that millpond's loggers
(``millpond.server``: where it listens, each shutdown step, handler errors;
``millpond.access``: one line per connection) and the handler's own loggers
all reach stderr, at ``--log-level`` and above. Libraries that only use
millpond (not the command) configure nothing: that is their program's job.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

__all__ = ["LOG_FORMAT", "configure_logging"]

# Time, level, logger, message: under systemd, journald adds its own time
# stamp, but the same lines also go to a terminal or a file.
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, access_log: bool) -> None:
    """Send log records of ``level`` (a name: ``"info"``) and above to stderr.

    With ``access_log`` the ``millpond.access`` lines (at INFO) are shown even
    when ``level`` is higher: asking for them is asking to see them.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if access_log and root.level > logging.INFO:
        logging.getLogger("millpond.access").setLevel(logging.INFO)
