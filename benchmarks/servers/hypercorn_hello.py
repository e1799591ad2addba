"""hypercorn's Trio worker, serving asgi_hello.app.

Usage: python benchmarks/servers/hypercorn_hello.py --host 127.0.0.1 --port N

Prints ``listening on HOST:PORT`` (flushed) once bound, serves until SIGINT or SIGTERM
(hypercorn's graceful shutdown), exits 0. No access log.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from typing import cast

import trio
from asgi_hello import app
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework


async def until_signalled() -> None:
    """Return at the first SIGINT or SIGTERM: hypercorn's shutdown trigger."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def run(config: Config, host: str, port: int) -> None:
    """Serve; print where once bound."""
    async with trio.open_nursery() as nursery:
        # asgi_hello.app is typed with plain dicts (uvicorn serves it too), not
        # hypercorn's TypedDicts: the same callable, which mypy cannot see.
        hypercorn_app = cast(ASGIFramework, app)
        await nursery.start(
            functools.partial(serve, hypercorn_app, config, shutdown_trigger=until_signalled)
        )
        print(f"listening on {host}:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--keep-alive-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.keep_alive_timeout = args.keep_alive_timeout
    config.accesslog = None
    config.loglevel = "WARNING"
    trio.run(run, config, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
