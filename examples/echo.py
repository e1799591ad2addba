"""An echo server: every byte a client sends comes straight back.

Run it with ``python examples/echo.py --port 7000`` and try it with
``nc 127.0.0.1 7000``. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys

import trio

import millpond


async def echo(stream: millpond.Connection) -> None:
    """Send back everything received, until the client closes its side."""
    async for chunk in stream:
        await stream.send_all(chunk)


async def main(
    host: str, port: int, poller: str, pooled: bool = True, budget_mib: int | None = None
) -> None:
    """Serve ``echo``, print where it listens, stop cleanly on SIGINT/SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            limiter = None if budget_mib is None else millpond.BufferLimiter(budget_mib << 20)
            addresses = await nursery.start(
                functools.partial(
                    millpond.serve,
                    echo,
                    port,
                    host=host,
                    poller=poller,
                    pooled=pooled,
                    limiter=limiter,
                )
            )
            for address in addresses:
                print(f"listening on {address[0]}:{address[1]}", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", flush=True)
                nursery.cancel_scope.cancel()
                break


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7000, help="port (0 picks a free one)")
    parser.add_argument(
        "--poller", choices=("auto", "epoll", "trio"), default="auto", help="readiness backend"
    )
    parser.add_argument(
        "--unpooled",
        action="store_true",
        help="read into fresh bytes objects, outside any memory budget (for comparison)",
    )
    parser.add_argument(
        "--budget-mib",
        type=int,
        default=None,
        help="memory budget for buffers, in MiB (default: millpond's 64 MiB)",
    )
    args = parser.parse_args(argv)
    if args.budget_mib is not None and args.budget_mib < 1:
        parser.error("--budget-mib must be >= 1")
    if args.budget_mib is not None and args.unpooled:
        parser.error("--budget-mib needs the pool: drop --unpooled")
    return args


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    trio.run(main, args.host, args.port, args.poller, not args.unpooled, args.budget_mib)
