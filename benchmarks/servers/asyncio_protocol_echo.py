"""Peer echo server: idiomatic asyncio ``Protocol`` (``data_received`` -> ``transport.write``).

Usage: python benchmarks/servers/asyncio_protocol_echo.py --host 127.0.0.1 --port N [--uvloop]

The callback style asyncio's docs show for servers that want speed: no task per
connection and no awaits, the event loop calls ``data_received`` and the protocol writes
the bytes straight back. With ``--uvloop`` the same code runs on uvloop's event loop.
Prints ``listening on HOST:PORT`` (flushed) once the listener is bound, serves until
SIGINT or SIGTERM, then exits with status 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

from asyncio_main import main


class EchoProtocol(asyncio.Protocol):
    """Write every received chunk back on the same connection.

    When the transport's write buffer passes its high-water mark (a client that sends but
    does not read), stop reading until it drains, so one connection cannot grow the
    server's memory without bound. Ping-pong traffic never reaches that mark.
    """

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(EchoProtocol, host, port)
    sockname = server.sockets[0].getsockname()
    print(f"event loop: {type(loop).__module__}.{type(loop).__qualname__}")
    print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()  # open transports are closed with the loop


if __name__ == "__main__":
    sys.exit(main(serve, __doc__.splitlines()[0]))
