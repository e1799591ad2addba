"""Peer echo server: idiomatic AnyIO (``anyio.create_tcp_listener``) on the Trio backend.

Usage: python benchmarks/servers/anyio_echo.py --host 127.0.0.1 --port N

What a user who writes against AnyIO's portable API and runs it on Trio gets: the same
loop as ``trio_echo.py``, through AnyIO's stream and listener wrappers. Prints
``listening on HOST:PORT`` (flushed) once the listener is bound, serves until SIGINT or
SIGTERM, then exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys

import anyio
from anyio.abc import SocketAttribute, SocketStream


async def echo_handler(stream: SocketStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # Peer reset the connection; the stream is closed on the way out.


async def serve(host: str, port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    sockname = listener.extra(SocketAttribute.local_address)
    assert isinstance(sockname, tuple)
    async with listener, anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            tg.start_soon(listener.serve, echo_handler)
            print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        anyio.run(serve, args.host, args.port, backend="trio")
    except* KeyboardInterrupt:
        pass  # SIGINT before the signal receiver was installed.
    return 0


if __name__ == "__main__":
    sys.exit(main())
