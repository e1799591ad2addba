"""Lower bounds for a Trio echo server on millpond's poller, for the performance notes.

Not a server to use: the handler reaches into a ``Connection``'s socket and
registration and skips everything a stream must do (busy checks, errors, budgets).

* ``--mode bare``: one schedule point per message (after the send); a receive that finds
  data does not yield. Not a conforming Trio stream.
* ``--mode checkpoints``: what Trio's stream contract requires and
  ``trio.testing.check_half_closeable_stream`` asserts: every receive and every send is a
  checkpoint (a cancel point first; a schedule point after the syscall unless it parked).

Schedule points and parks use millpond's reusable ones (``millpond._core.traps``, through
``park_readable``), as a ``Connection`` does.

    python benchmarks/probes/floor_echo.py --mode checkpoints --port 7000
"""

from __future__ import annotations

import argparse

import trio
from trio.lowlevel import checkpoint_if_cancelled

import millpond
from millpond._core.traps import SCHEDULE_POINT


async def bare(conn: millpond.Connection) -> None:
    """Echo with one schedule point per message."""
    registration = conn._registration
    recv = registration.recv  # consumes readiness only on EAGAIN (poller.py, rule 3)
    send = registration.send
    while True:
        if not registration.readable:
            await registration.park_readable()
        data = recv(65536)
        if data is None:
            continue
        if not data:
            return
        send(data)  # 64-byte echoes: the kernel takes them whole
        await SCHEDULE_POINT


async def checkpoints(conn: millpond.Connection) -> None:
    """Echo with a full checkpoint in every receive and every send."""
    registration = conn._registration
    recv = registration.recv
    send = registration.send
    while True:
        await checkpoint_if_cancelled()
        parked = False
        while True:
            if not registration.readable:
                await registration.park_readable()
                if registration.read_failure is not None:
                    registration.raise_read_failure()
                parked = True
            data = recv(65536)
            if data is not None:
                break
        if not parked:
            await SCHEDULE_POINT
        if not data:
            return
        await checkpoint_if_cancelled()
        send(data)
        await SCHEDULE_POINT


def main() -> None:
    """Serve the chosen floor handler until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("bare", "checkpoints"), default="checkpoints")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    handler = bare if args.mode == "bare" else checkpoints
    trio.run(lambda: millpond.serve(handler, args.port, host=args.host, pooled=False))


if __name__ == "__main__":
    main()
