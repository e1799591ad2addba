"""A numbered line echo written only against anyio's API, served by millpond.

Run it with ``python examples/anyio_lines.py --port 7004`` and try it with
``nc 127.0.0.1 7004``: every line comes back with its number, ``quit`` says
goodbye. ``handle`` knows nothing of millpond or Trio: it takes an
``anyio.abc.ByteStream`` and uses anyio's helpers on it
(``BufferedByteReceiveStream.receive_until`` to split lines, ``TextStream``
to send text), so it would run unchanged on any anyio listener. What serves
it is millpond, through ``millpond.anyio``'s listener (the server's byte
budget, limits and graceful shutdown included). SIGINT/SIGTERM: stop
accepting, let connections finish for ``--grace`` seconds; a second signal
stops at once.
"""

from __future__ import annotations

import argparse
import signal
import sys

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.text import TextStream
from serving import add_server_arguments

import millpond.anyio

# The longest line a client may send: receive_until never buffers more.
MAX_LINE_BYTES = 4096


async def handle(stream: anyio.abc.ByteStream) -> None:
    """Echo each line with its number, until ``quit`` or the client leaves."""
    lines = BufferedByteReceiveStream(stream)
    text = TextStream(stream)
    async with text:
        await text.send("hello: every line comes back numbered; 'quit' to leave\n")
        number = 0
        while True:
            try:
                line = await lines.receive_until(b"\n", MAX_LINE_BYTES)
            except anyio.IncompleteRead:
                return  # the client closed (a last line with no newline is dropped)
            except anyio.DelimiterNotFound:
                await text.send(f"a line may hold at most {MAX_LINE_BYTES} bytes: goodbye\n")
                return
            words = line.decode("utf-8", errors="replace").rstrip("\r")
            if words == "quit":
                await text.send("goodbye\n")
                return
            number += 1
            await text.send(f"{number}: {words}\n")


async def main(args: argparse.Namespace) -> None:
    """Serve ``handle`` through millpond until SIGINT/SIGTERM."""
    listener = await millpond.anyio.create_tcp_listener(
        local_host=args.host, local_port=args.port, grace=args.grace
    )
    host, port = listener.extra(anyio.abc.SocketAttribute.local_address)[:2]
    print(f"listening on {host}:{port}", flush=True)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as task_group:

            async def serve_then_stop_watching() -> None:
                await listener.serve(handle)  # returns once the graceful shutdown is over
                task_group.cancel_scope.cancel()

            task_group.start_soon(serve_then_stop_watching)
            async for signum in signals:
                name = signal.Signals(signum).name
                if listener.server.shutting_down.is_set():
                    print(f"{name} again: stopping now", flush=True)
                    listener.server.shutdown(0)
                else:
                    print(f"{name}: stopping (up to {args.grace:g} s for handlers)", flush=True)
                    await listener.aclose()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, port=7004)
    args = parser.parse_args(argv)
    if args.grace < 0:
        parser.error("--grace must be >= 0")
    return args


if __name__ == "__main__":
    # millpond runs on Trio: anyio's trio backend (asyncio would get millpond's RuntimeError).
    anyio.run(main, parse_args(sys.argv[1:]), backend="trio")
