"""The command line shared by the asyncio echo servers: ``--host``, ``--port``, ``--uvloop``.

Each server module keeps its own ``serve(host, port)`` (the code being measured); this
runs it on asyncio's event loop or, with ``--uvloop``, on uvloop's.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Serve = Callable[[str, int], Coroutine[Any, Any, None]]


def run(main: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run ``main`` to completion on asyncio's loop, or uvloop's."""
    if use_uvloop:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main(serve: Serve, description: str, argv: list[str] | None = None) -> int:
    """Parse the command line and serve until SIGINT/SIGTERM; returns the exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    try:
        run(serve(args.host, args.port), args.uvloop)
    except KeyboardInterrupt:
        pass  # SIGINT before the signal handlers were installed.
    return 0
