"""Baseline echo server: idiomatic ``trio.serve_tcp`` + ``SocketStream``.

Usage: python benchmarks/servers/trio_echo.py --host 127.0.0.1 --port N

Prints ``listening on HOST:PORT`` (flushed) once the listener is bound, serves until
SIGINT, then exits with status 0.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio


async def echo_handler(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # Peer reset the connection; nothing to do (serve_tcp closes the stream).
        pass


async def serve(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        serve_tcp = functools.partial(trio.serve_tcp, echo_handler, port, host=host)
        listeners = await nursery.start(serve_tcp)
        sockname = listeners[0].socket.getsockname()
        print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        trio.run(serve, args.host, args.port)
    except* KeyboardInterrupt:
        pass  # Ctrl-C / SIGINT is the normal way to stop the server.
    return 0


if __name__ == "__main__":
    sys.exit(main())
