"""Peer TCP proxy: asyncio ``Protocol`` callbacks on uvloop, what a speed-minded user writes.

Usage: python benchmarks/servers/uvloop_proxy.py --host 127.0.0.1 --port N --upstream HOST:PORT
       [--upstream HOST:PORT ...] [--no-uvloop]

Each client gets the next upstream in turn (round-robin); every chunk received on one
side is written to the other at once. Flow control is the transports' own: when one
side's write buffer passes its high-water mark (``pause_writing``), the other side stops
reading until it drains (``resume_writing``), so a slow side pauses the fast one. A
half-close passes through (``eof_received`` -> ``write_eof``, keeping the other
direction open). Prints ``listening on HOST:PORT`` (flushed) once bound, serves until
SIGINT or SIGTERM, then exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from collections.abc import Iterator
from typing import cast


class Side(asyncio.Protocol):
    """One socket of a proxied pair; ``peer`` is the other side's protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write_eof()
            if peer.eof:  # both directions done
                self.close_both()
        return True  # keep our sending direction open

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_both()

    def close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()


class Client(Side):
    """The accepted side: connects to the next upstream; what the client sends before the
    upstream is up (uvloop may deliver a first chunk despite ``pause_reading``) is kept
    and written once it is."""

    def __init__(self, upstreams: Iterator[tuple[str, int]]) -> None:
        super().__init__()
        self.upstreams = upstreams
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.pause_reading()  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(self.connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if self.peer is None:
            self.eof = True  # passed on once connected
            return True
        return super().eof_received()

    async def connect(self) -> None:
        host, port = next(self.upstreams)
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(Side, host, port)
        except OSError:
            self.close_both()
            return
        upstream.peer, self.peer = self, upstream
        if self.transport is None or self.transport.is_closing():
            upstream.close_both()
            return
        for data in self.early:
            upstream.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()
        if self.eof:
            upstream.transport.write_eof()  # type: ignore[union-attr]
        self.transport.resume_reading()


def parse_upstream(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(host: str, port: int, upstreams: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    turn = itertools.cycle(upstreams)
    server = await loop.create_server(lambda: Client(turn), host, port)
    sockname = server.sockets[0].getsockname()
    print(f"event loop: {type(loop).__module__}.{type(loop).__qualname__}")
    print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=parse_upstream, action="append", required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio's own event loop")
    args = parser.parse_args(argv)
    coroutine = serve(args.host, args.port, args.upstream)
    try:
        if args.no_uvloop:
            asyncio.run(coroutine)
        else:
            import uvloop

            uvloop.run(coroutine)
    except KeyboardInterrupt:
        pass  # SIGINT before the signal handlers were installed
    return 0


if __name__ == "__main__":
    sys.exit(main())
