"""A WebSocket echo server: trio-websocket over millpond connections.

Run it with ``python examples/websocket_echo.py --port 7003`` and try it with
the ``websockets`` library's interactive client::

    python -m websockets ws://127.0.0.1:7003/

Every message, text or binary, comes back. millpond accepts the connection
and keeps its reads under the memory budget; ``trio_websocket.
wrap_server_stream`` speaks WebSocket over it (any Trio stream will do).

On SIGINT/SIGTERM the server shuts down gracefully, and every client gets
close code 1001 ("going away") with a reason, not a dropped connection (which
a client reports as 1006): each handler watches
``millpond.current_server().shutting_down`` and closes its WebSocket
properly when it is set.
"""

from __future__ import annotations

import argparse
import sys

import trio
import trio_websocket
from serving import add_server_arguments, serve_until_signalled

import millpond

# How long a client may take to send its opening handshake (an HTTP request):
# trio-websocket's own server allows 60 s; a local example needs far less.
HANDSHAKE_SECONDS = 10.0

# How long closing waits for the client's half of the closing handshake.
CLOSE_SECONDS = 5.0

# The close code a server sends when it goes away (RFC 6455, section 7.4.1).
GOING_AWAY = 1001


async def websocket_echo(stream: millpond.Connection) -> None:
    """Accept a WebSocket on ``stream`` and echo every message until either side closes it."""
    shutting_down = millpond.current_server().shutting_down
    async with trio.open_nursery() as nursery:
        # trio-websocket reads the connection in a task of its own, here.
        with trio.move_on_after(HANDSHAKE_SECONDS):
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            websocket = await request.accept()
            nursery.start_soon(go_away_on_shutdown, websocket, shutting_down)
            try:
                while True:
                    await websocket.send_message(await websocket.get_message())
            except trio_websocket.ConnectionClosed:
                pass  # the client closed (or we did, going away)
            finally:
                with trio.move_on_after(CLOSE_SECONDS):
                    await websocket.aclose()  # nothing to do if already closed
        nursery.cancel_scope.cancel()  # the reader task, and the shutdown watcher


async def go_away_on_shutdown(
    websocket: trio_websocket.WebSocketConnection, shutting_down: trio.Event
) -> None:
    """When the server starts shutting down, close with 1001 (the echo loop then ends)."""
    await shutting_down.wait()
    with trio.move_on_after(CLOSE_SECONDS):
        await websocket.aclose(GOING_AWAY, "server shutting down")


async def main(args: argparse.Namespace) -> None:
    """Serve ``websocket_echo`` until SIGINT/SIGTERM."""
    server = millpond.Server(websocket_echo, args.port, host=args.host)
    await serve_until_signalled(server, args.grace)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, port=7003)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
