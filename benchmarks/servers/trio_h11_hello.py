"""A bare h11 loop on ``trio.serve_tcp``: what h11's own Trio example does, answering "hello".

Usage: python benchmarks/servers/trio_h11_hello.py --host 127.0.0.1 --port N

The baseline for the millpond example with ``--parser h11``: the same parser and the
same response (content-type, content-length, a cached date), with none of the
example's limits, deadlines or budget. Prints ``listening on HOST:PORT`` (flushed) once
bound, serves until SIGINT, exits 0.
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import sys
import time

import h11
import trio


@functools.lru_cache(maxsize=1)
def http_date(second: int) -> bytes:
    """The Date header for ``second``, formatted once per second."""
    return email.utils.formatdate(second, usegmt=True).encode()


async def hello(stream: trio.SocketStream) -> None:
    """Answer every request on the connection with "hello" until the client closes."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.EndOfMessage):
                headers = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"5"),
                    (b"date", http_date(int(time.time()))),
                ]
                response = conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
                body = conn.send(h11.Data(data=b"hello"))
                conn.send(h11.EndOfMessage())
                await stream.send_all(response + body)
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (h11.RemoteProtocolError, trio.BrokenResourceError):
        return


async def serve(host: str, port: int) -> None:
    """Serve ``hello``; print where once bound."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, hello, port, host=host))
        sockname = listeners[0].socket.getsockname()
        print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keep-alive-timeout", type=float, help="ignored: no timeout here")
    args = parser.parse_args(argv)
    try:
        trio.run(serve, args.host, args.port)
    except* KeyboardInterrupt:
        pass  # Ctrl-C / SIGINT is the normal way to stop the server.
    return 0


if __name__ == "__main__":
    sys.exit(main())
