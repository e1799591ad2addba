"""A TCP reverse proxy: HAProxy's core loop (``mode tcp``, round-robin) on millpond.

Run it in front of one or more servers::

    python examples/proxy.py --port 8000 --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002

Each client gets the next upstream in turn; one that refuses or does not
answer within ``--connect-timeout`` seconds is skipped for the next (a client
for which every upstream fails is closed). Bytes move both ways at once, with
``splice(2)`` where both sides are plain TCP on Linux (``--no-splice``:
budgeted reads and ``send_all``); a slow side pauses the fast one,
half-closes pass through each way, and SIGINT or SIGTERM stops it gracefully
(a second one at once).
The design is in docs/proxy.md; proxy_forward.py moves the bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio
from proxy_forward import (
    DEFAULT_PIPE_SIZE,
    PipePool,
    Tally,
    can_splice,
    forward_pooled,
    forward_spliced,
)
from serving import add_server_arguments, serve_until_signalled

import millpond

logger = logging.getLogger("millpond.proxy")

# HAProxy's "timeout connect" is commonly set to 5 s: long enough for a busy
# server's accept queue, short enough that a dead one costs a client little.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0

# How long a client for which no upstream answered may take to read our EOF and
# close its side, while what it already sent is read and dropped. Closing a socket
# with unread bytes makes Linux send a reset instead of a FIN (RFC 2525, 2.17), and a
# client that sent its request at once would see "connection reset" rather than a
# clean end; Apache's lingering close waits up to 2 s for the same reason.
NO_UPSTREAM_LINGER: Final = 2.0


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """What the proxy has done so far.

    Attributes:
      connections: clients accepted.
      active: clients connected right now.
      spliced: connections whose bytes moved with ``splice(2)``.
      bytes_upstream: bytes moved from clients to upstreams.
      bytes_downstream: bytes moved from upstreams to clients.
      upstream_failures: connects to an upstream that failed or timed out.
      no_upstream: clients closed because every upstream failed.
      resets: connections closed because one side broke (a reset, a write to a closed peer).
    """

    connections: int
    active: int
    spliced: int
    bytes_upstream: int
    bytes_downstream: int
    upstream_failures: int
    no_upstream: int
    resets: int


class Proxy:
    """The handler of every client: choose an upstream, connect, move bytes both ways.

    ``upstreams`` are ``(host, port)`` pairs tried round-robin; ``splice``
    allows ``splice(2)`` where both sides are plain TCP; ``limiter`` is the
    server's budget (spliced pipes are charged to it), ``pool`` its buffers
    (upstream connections read into it too).
    """

    def __init__(
        self,
        upstreams: list[tuple[str, int]],
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        splice: bool = True,
        limiter: millpond.BufferLimiter | None = None,
        pool: millpond.BufferPool | None = None,
        pipe_size: int = DEFAULT_PIPE_SIZE,
    ) -> None:
        if not upstreams:
            raise ValueError("upstreams must name at least one (host, port)")
        for upstream in upstreams:
            match upstream:
                case (str(), int(port)) if 0 < port < 65536:
                    pass
                case _:
                    raise ValueError(f"upstreams: expected (host, port), got {upstream!r}")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int | float):
            raise TypeError(f"connect_timeout must be a number, not {connect_timeout!r}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, not {connect_timeout!r}")
        if isinstance(pipe_size, bool) or not isinstance(pipe_size, int):
            raise TypeError(f"pipe_size must be an int, not {pipe_size!r}")
        if pipe_size < 4096:
            raise ValueError(f"pipe_size must be >= 4096 (one page), not {pipe_size}")
        self.upstreams = upstreams
        self.connect_timeout = connect_timeout
        self.splice = splice
        self.limiter = limiter
        self.pool = pool
        self.pipes = PipePool(pipe_size)
        self._next = 0
        self._upstream_tally = Tally()
        self._downstream_tally = Tally()
        self._connections = 0
        self._active = 0
        self._spliced = 0
        self._upstream_failures = 0
        self._no_upstream = 0
        self._resets = 0

    def statistics(self) -> ProxyStatistics:
        """A snapshot of the counters."""
        return ProxyStatistics(
            connections=self._connections,
            active=self._active,
            spliced=self._spliced,
            bytes_upstream=self._upstream_tally.bytes,
            bytes_downstream=self._downstream_tally.bytes,
            upstream_failures=self._upstream_failures,
            no_upstream=self._no_upstream,
            resets=self._resets,
        )

    async def __call__(self, client: millpond.Connection) -> None:
        self._connections += 1
        self._active += 1
        try:
            upstream = await self.connect_upstream(client.poller)
            if upstream is None:
                self._no_upstream += 1
                await self.close_gently(client)
                return  # the server closes the client
            async with upstream:
                await self.relay(client, upstream)
        finally:
            self._active -= 1

    async def connect_upstream(self, poller: millpond.Poller) -> millpond.Connection | None:
        """Connect to the next upstream in turn, skipping those that fail; None if all do."""
        for _ in range(len(self.upstreams)):
            host, port = self.upstreams[self._next]
            self._next = (self._next + 1) % len(self.upstreams)
            try:
                return await millpond.open_connection(
                    host, port, connect_timeout=self.connect_timeout, poller=poller, pool=self.pool
                )
            except trio.TooSlowError:
                logger.info("upstream %s:%d: no answer in %g s", host, port, self.connect_timeout)
            except OSError as exc:
                logger.info("upstream %s:%d failed: %s", host, port, exc)
            self._upstream_failures += 1
        return None

    async def close_gently(self, client: millpond.Connection) -> None:
        """Send EOF, then read and drop what ``client`` sends until its own EOF (at most
        ``NO_UPSTREAM_LINGER`` seconds), so that the close is a FIN, not a reset."""
        with trio.move_on_after(NO_UPSTREAM_LINGER):
            try:
                await client.send_eof()
                async for _ in client:
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client is gone already

    async def relay(self, client: millpond.Connection, upstream: millpond.Connection) -> None:
        """Move bytes both ways until both sides have sent EOF, or one side breaks."""
        spliced = self.splice and can_splice(client, upstream)
        self._spliced += spliced
        if spliced:
            for stream in (client, upstream):
                # Connection sets a 16 KiB TCP_NOTSENT_LOWAT (as Trio does) so that
                # wait_send_all_might_not_block means "the queue is short"; a splice
                # direction never asks that, and the low-water mark only made the
                # kernel wake it for every 16 KiB of room. 0 restores the system's
                # default (off): 0.32 s of CPU per GiB instead of 0.37, 4 of 4 paired
                # rounds (proxy_compare.py --scenarios bulk --b-proxy).
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0)
        async with trio.open_nursery() as nursery:
            for source, sink, tally in (
                (client, upstream, self._upstream_tally),
                (upstream, client, self._downstream_tally),
            ):
                forward: Callable[[], Awaitable[None]]
                if spliced:
                    forward = functools.partial(
                        forward_spliced, source, sink, self.pipes, self.limiter, tally
                    )
                else:
                    forward = functools.partial(forward_pooled, source, sink, tally)
                nursery.start_soon(self._direction, forward, nursery.cancel_scope)

    async def _direction(
        self, forward: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        # One side broke: there is nobody left to tell, in either direction. Both
        # sockets are closed once the nursery ends (the upstream by relay's caller,
        # the client by the server). The other direction may break too before its
        # cancellation lands: one connection counts one reset.
        try:
            await forward()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if not scope.cancel_called:
                self._resets += 1
                scope.cancel()


def parse_upstream(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) as a pair; ``argparse`` reports errors."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def main(args: argparse.Namespace) -> None:
    """Serve the proxy until SIGINT/SIGTERM, then print its statistics."""
    limiter = millpond.BufferLimiter(args.budget_mib << 20, reserved_bytes=args.budget_mib << 16)
    pool = millpond.BufferPool(limiter)
    proxy = Proxy(
        args.upstream,
        connect_timeout=args.connect_timeout,
        splice=not args.no_splice,
        limiter=limiter,
        pool=pool,
        pipe_size=args.pipe_size,
    )
    server = millpond.Server(
        proxy, args.port, host=args.host, poller=args.poller, limiter=limiter, pool=pool
    )
    mode = "receive_some/send_all" if args.no_splice else "splice where both sides are TCP"
    print(f"forwarding with {mode}", flush=True)
    try:
        await serve_until_signalled(server, args.grace)
    finally:
        proxy.pipes.close()
    print("statistics " + json.dumps(dataclasses.asdict(proxy.statistics())), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="A TCP reverse proxy: round-robin over upstreams, splice(2) where both "
        "sides are TCP, backpressure and half-close both ways.",
        epilog="example: python examples/proxy.py --port 8000 "
        "--upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002",
    )
    add_server_arguments(parser, 8000)
    parser.add_argument(
        "--upstream",
        type=parse_upstream,
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a server to forward to (repeat for round-robin over several)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on an upstream after this long (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--no-splice",
        action="store_true",
        help="move bytes through Python (budgeted reads, send_all) even where splice could",
    )
    parser.add_argument(
        "--pipe-size",
        type=int,
        default=DEFAULT_PIPE_SIZE,
        metavar="BYTES",
        help=f"kernel pipe size for splice (default {DEFAULT_PIPE_SIZE}, pipe-max-size's default)",
    )
    parser.add_argument(
        "--budget-mib",
        type=int,
        default=64,
        help="memory budget for buffers and pipes, in MiB (default 64)",
    )
    parser.add_argument(
        "--poller", choices=("auto", "epoll", "trio"), default="auto", help="readiness backend"
    )
    args = parser.parse_args(argv)
    if args.connect_timeout <= 0:
        parser.error("--connect-timeout must be > 0")
    if args.budget_mib < 1:
        parser.error("--budget-mib must be >= 1")
    if args.pipe_size < 4096:
        parser.error("--pipe-size must be >= 4096")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, parse_args(sys.argv[1:]))
