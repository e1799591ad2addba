"""How the example servers start and stop: listen, say where, shut down gracefully on a signal.

Shared by ``chat.py``, ``tls_echo.py`` and ``websocket_echo.py`` (each runs
as a script from this folder, so Python finds this module beside it). The
first SIGINT or SIGTERM starts a graceful shutdown (``Server.shutdown``:
accepting stops, handlers see ``shutting_down`` and get ``grace`` seconds);
a second one cancels what is left at once, as a second Ctrl-C should.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable

import trio

import millpond

__all__ = ["add_server_arguments", "serve_until_signalled"]


def add_server_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """``--host``, ``--port`` (default ``port``) and ``--grace``, as every example takes them."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=port, help=f"port (default {port}; 0 picks a free one)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long handlers may take to finish (default 10)",
    )


async def serve_until_signalled(
    server: millpond.Server, grace: float, on_stopping: Callable[[], None] | None = None
) -> None:
    """Run ``server``, print ``listening on HOST:PORT``, stop gracefully on SIGINT/SIGTERM.

    ``on_stopping`` runs first when the first signal comes (a chat tells its
    clients); then ``server.shutdown(grace)``. Returns once the server has
    stopped.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(_run_then_stop_watching, server, nursery.cancel_scope)
            for address in addresses:
                print(f"listening on {address[0]}:{address[1]}", flush=True)
            async for signum in signals:
                name = signal.Signals(signum).name
                if server.shutting_down.is_set():
                    print(f"{name} again: stopping now", flush=True)
                    server.shutdown(0)
                    continue
                print(f"{name}: stopping (up to {grace:g} s for handlers)", flush=True)
                if on_stopping is not None:
                    on_stopping()
                server.shutdown(grace)


async def _run_then_stop_watching(
    server: millpond.Server,
    watching: trio.CancelScope,
    task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await server.run(task_status=task_status)
    watching.cancel()  # the server has stopped: no more signals to wait for
