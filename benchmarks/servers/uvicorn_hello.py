"""uvicorn on uvloop, serving asgi_hello.app with its h11 or its httptools protocol.

Usage: python benchmarks/servers/uvicorn_hello.py --http h11|httptools --host 127.0.0.1 --port N

Prints the event loop class and ``listening on HOST:PORT`` (flushed) once uvicorn has
started, serves until SIGINT or SIGTERM (uvicorn's own graceful shutdown), exits 0. The
access log is off, as it is in the millpond example by default.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn
import uvloop
from asgi_hello import app


async def serve(config: uvicorn.Config) -> None:
    """Run uvicorn; print where it listens once it has started."""
    print(f"event loop: {type(asyncio.get_running_loop()).__module__}.Loop", flush=True)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return await serving
        await asyncio.sleep(0.01)
    print(f"listening on {config.host}:{config.port}", flush=True)
    await serving


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", choices=("h11", "httptools"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--keep-alive-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=args.http,
        loop="none",  # uvloop.run below makes the loop
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=args.keep_alive_timeout,
    )
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
