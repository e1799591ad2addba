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
Outside the receiver, from just before the Trio run to the process's exit,
SIGTERM and SIGINT are written down rather than left to their defaults: one
that comes just before the run is acted on once the server listens, and one
that comes after the server has stopped changes nothing. That second case is
common with ``--workers``: under systemd's ``KillMode=control-group`` or a
``kill`` of the process group, a worker with no connection to drain may be
done before its supervisor's copy of the same SIGTERM arrives, and must still
exit 0, not die of it.

A ``--workers`` worker also has a channel to its supervisor (a Unix socket
pair, ``supervisor.py``): it writes ``listening`` there once the server
accepts, which is how the supervisor knows it may stop the worker this one
replaces; and it reads it, for end of file means the supervisor is gone
(killed with SIGKILL, say), which is a graceful shutdown too, so that no
worker is left serving the port with nobody to stop it.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final

import trio

from ..server import Server
from .errors import CommandError

__all__ = ["LISTENING_MESSAGE", "run_server", "serve_until_signalled"]

logger = logging.getLogger("millpond.server")

#: What a worker writes on its supervisor channel once its server accepts.
LISTENING_MESSAGE: Final = b"listening\n"


def run_server(
    server: Server,
    grace: float,
    *,
    banner: str,
    where: str,
    supervisor: socket.socket | None = None,
) -> None:
    """Run ``serve_until_signalled`` in a Trio run, with SIGTERM and SIGINT handled around it.

    From here to the process's exit a stop signal outside the run's receiver
    is written down (before the run: acted on once the server listens), and
    after the run it is ignored: the process is about to exit, and a signal
    now must not kill it. Ignored, not handled: as Python exits it puts back
    the default action of every signal it handles (``_PySignal_Fini``), and a
    SIGTERM then would kill the process at its last moment.
    """
    early: list[int] = []

    def write_down(signum: int, _frame: object) -> None:
        early.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, write_down)  # Trio's receiver puts it back at its end
    try:
        trio.run(
            _then_detach_wakeups,
            partial(
                serve_until_signalled,
                server,
                grace,
                banner=banner,
                where=where,
                supervisor=supervisor,
                early=early,
            ),
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


async def _then_detach_wakeups(serve: Callable[[], Awaitable[None]]) -> None:
    """Await ``serve()``, then let no signal write to the run's wake-up descriptor.

    At its end Trio closes its wake-up socket and only then gives the signal
    wake-up descriptor back (``WakeupSocketpair.close``). A signal between the
    two makes CPython write to a closed descriptor, and print "Exception
    ignored when trying to write to the signal wakeup fd" with a traceback;
    with ``--workers``, the supervisor's copy of a SIGTERM the process group
    already had can land there. Nothing in this run waits for a signal once
    the receiver is closed (a stop signal is written down, in Python), so the
    descriptor is detached here, before Trio closes it.
    """
    try:
        await serve()
    finally:
        signal.set_wakeup_fd(-1)


async def serve_until_signalled(
    server: Server,
    grace: float,
    *,
    banner: str,
    where: str,
    supervisor: socket.socket | None = None,
    early: Sequence[int] = (),
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in steps; return once the server is done.

    Logs ``banner`` once the server listens (the server itself logs where).
    ``where`` says what was asked for, for the message when binding fails
    (``CommandError``: a port in use, a socket path taken, no permission).
    ``supervisor`` is a worker's channel to its supervisor: told
    ``LISTENING_MESSAGE`` once the server listens, and watched for end of
    file (the supervisor is gone: shut down gracefully). ``early`` holds the
    signals received before this was called: each is a step, once the server
    listens.
    """
    failure: OSError | None = None
    steps = _ShutdownSteps(server, grace)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        before = list(early)  # from now on they come through the receiver
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(_serve_then_stop, server, nursery.cancel_scope)
            except OSError as exc:
                failure = exc  # raised below: an exception here would come out in a group
            else:
                logger.info("%s", banner)
                if supervisor is not None:
                    nursery.start_soon(_report_to_supervisor, supervisor, steps)
                for signum in before:
                    steps.on_signal(signum)
                async for signum in signals:
                    steps.on_signal(signum)
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


class _ShutdownSteps:
    """The steps of a shutdown, whatever asks for them: the first is graceful, a SIGINT cancels."""

    def __init__(self, server: Server, grace: float) -> None:
        self._server = server
        self._grace = grace
        self._stopping = False

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stopping:
            self._stopping = True
            logger.info("%s: shutting down gracefully (SIGINT, Ctrl-C, cancels what is left)", name)
            self._server.shutdown(self._grace)
        elif signum == signal.SIGINT:
            logger.info("%s while shutting down: cancelling the connections left", name)
            self._server.shutdown(0)
        else:
            logger.info("%s while shutting down: nothing more to do", name)

    def on_supervisor_gone(self) -> None:
        if not self._stopping:
            self._stopping = True
            logger.warning("the supervisor is gone: shutting down gracefully")
            self._server.shutdown(self._grace)


async def _report_to_supervisor(supervisor: socket.socket, steps: _ShutdownSteps) -> None:
    channel = trio.socket.from_stdlib_socket(supervisor)
    with channel:
        try:
            await channel.send(LISTENING_MESSAGE)
            # The supervisor never writes: what wakes this is its end closing.
            while await channel.recv(64):
                pass
        except OSError:  # EPIPE, ECONNRESET: gone too
            pass
    steps.on_supervisor_gone()
