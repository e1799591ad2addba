"""Running the command's server in a Trio run until a signal stops it.

This module owns the life of the process once everything is checked: start
the server (which logs where it listens) and turn signals into shutdown
steps. The first SIGTERM or SIGINT is a graceful shutdown
(``Server.shutdown(grace)``: no new connections, those open get ``grace``
seconds); a SIGINT after that (a second Ctrl-C) cancels the connections left
at once (``Server.shutdown(0)``); a SIGTERM after that changes nothing,
because systemd sends SIGTERM to every process of the unit, and a supervisor
may repeat it. The run ends when the server's ``run`` returns: every handler
finished or cancelled, every socket closed.

The signal receiver is opened before the server binds, so a signal that
arrives while it starts is acted on as soon as it listens, not lost and not
a ``KeyboardInterrupt``. Trio may report a signal sent twice in a row once
(its receiver coalesces repeats not yet read); either way that is one step.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import trio

from ..server import Server
from .errors import CommandError

__all__ = ["serve_until_signalled"]

logger = logging.getLogger("millpond.server")


async def serve_until_signalled(server: Server, grace: float, *, banner: str, where: str) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in steps; return once the server is done.

    Logs ``banner`` once the server listens (the server itself logs where).
    ``where`` says what was asked for, for the message when binding fails
    (``CommandError``: a port in use, a socket path taken, no permission).
    """
    failure: OSError | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(_serve_then_stop, server, nursery.cancel_scope)
            except OSError as exc:
                failure = exc  # raised below: an exception here would come out in a group
            else:
                logger.info("%s", banner)
                await _follow_signals(signals, server, grace)
    if failure is not None:
        raise CommandError(f"cannot listen on {where}: {failure.strerror or failure}")


async def _serve_then_stop(
    server: Server,
    signals_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await server.run(task_status=task_status)
    signals_scope.cancel()  # the server is done: stop waiting for signals


async def _follow_signals(signals: AsyncIterator[int], server: Server, grace: float) -> None:
    stopping = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stopping:
            stopping = True
            logger.info("%s: shutting down gracefully (SIGINT, Ctrl-C, cancels what is left)", name)
            server.shutdown(grace)
        elif signum == signal.SIGINT:
            logger.info("%s while shutting down: cancelling the connections left", name)
            server.shutdown(0)
        else:
            logger.info("%s while shutting down: nothing more to do", name)
