"""Peer echo server: idiomatic asyncio streams (``asyncio.start_server``).

Usage: python benchmarks/servers/asyncio_streams_echo.py --host 127.0.0.1 --port N [--uvloop]

Each connection reads up to 64 KiB with ``StreamReader.read``, writes it back and awaits
``drain()`` (the flow control the asyncio docs ask for). With ``--uvloop`` the same code runs
on uvloop's event loop. Prints ``listening on HOST:PORT`` (flushed) once the listener is
bound, serves until SIGINT or SIGTERM, then exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from asyncio_main import main

# The usual read size for an asyncio echo: large enough that a burst is one call.
READ_SIZE = 65536
# How long shutdown waits for handlers to return after their connections were closed.
STOP_GRACE_S = 2.0

# Open connections and their handler tasks, for shutdown only. On Python 3.11 a handler that
# ends cancelled (as asyncio.run would leave it) makes StreamReaderProtocol log "Exception in
# callback ... CancelledError", so shutdown closes the connections and lets handlers return.
connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    task = asyncio.current_task()
    assert task is not None
    connections[writer] = task
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # Peer reset the connection; nothing to do but close our side.
    finally:
        del connections[writer]
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(echo_handler, host, port)
    sockname = server.sockets[0].getsockname()
    print(f"event loop: {type(loop).__module__}.{type(loop).__qualname__}")
    print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
    # Not `async with server: await server.serve_forever()`: from Python 3.12 on, leaving
    # that block waits for every client to disconnect, so a signal would not stop a server
    # with connected clients. Close the listener, then the connections (their reads return
    # b"" and the handlers finish normally).
    try:
        await stop.wait()
    finally:
        server.close()
        for writer in list(connections):
            writer.close()
        if connections:
            await asyncio.wait(connections.values(), timeout=STOP_GRACE_S)


if __name__ == "__main__":
    sys.exit(main(serve, __doc__.splitlines()[0]))
