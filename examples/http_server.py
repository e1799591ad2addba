"""An HTTP/1.1 server: h11 (or httptools) over millpond connections, bodies in the budget.

Run it with ``python examples/http_server.py --port 8000`` and try it::

    curl http://127.0.0.1:8000/ http://127.0.0.1:8000/      # two requests, one connection
    curl --data-binary @README.md http://127.0.0.1:8000/echo

Ctrl-C (or SIGTERM) drains: new clients are refused, requests in flight are
answered with ``Connection: close``, idle keep-alive connections are closed;
a second Ctrl-C stops at once. ``--help`` lists the limits and timeouts.

What each piece does, and why (docs/http.md says more):

* the parser is sans-I/O (``http_parsers.py``): this module reads, feeds it,
  and writes what it says;
* the limits are pure rules (``http_limits.py``): 431, 413 and 400 are
  answered, then the connection is closed;
* the head has a total deadline and the body its own
  (``Connection.deadline``): a client trickling a byte a second is closed;
* a body is copied into buffers leased from the server's pool, so it is
  charged to the memory budget until the response has been sent, and a full
  budget makes new bodies wait instead of growing the process.
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from http_limits import (
    DEFAULT_BODY_SECONDS,
    DEFAULT_HEAD_SECONDS,
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_HEADERS,
    Limits,
    Refusal,
    body_capacity,
    check_declared_body,
    check_received_body,
)
from http_parsers import END, PARSERS, Event, Parser, Request
from serving import add_server_arguments, serve_until_signalled

import millpond

logger = logging.getLogger("http_server")
access_logger = logging.getLogger("http_server.access")

# After the last response on a connection the server closes its side and reads
# (and drops) what the client still sends, for this long at most: closing a socket
# with unread bytes makes the kernel send a reset, which can destroy the response
# before the client has read it (RFC 9112, 9.6; nginx's lingering_close).
LINGER_SECONDS = 2.0

# A body up to this size goes out in the same send as the head (one syscall); a
# larger one is sent from where it is, without a copy.
JOIN_BODY_BELOW = 16 * 1024


@dataclass(slots=True)
class Response:
    """What the application answers: a status, a body, and headers beyond the framing ones.

    The server adds ``Content-Length``, ``Content-Type``, ``Date`` and, when
    it closes the connection, ``Connection: close``.
    """

    status: int
    body: bytes | memoryview = b""
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


App = Callable[[Request], Awaitable[Response]]


async def demo_app(request: Request) -> Response:
    """``GET /`` says hello, ``POST /echo`` sends the body back, the rest is 404 or 405."""
    if request.target == b"/":
        if request.method in (b"GET", b"HEAD"):
            return Response(200, b"hello")
        return Response(405, b"GET or HEAD\n", headers=[(b"allow", b"GET, HEAD")])
    if request.target == b"/echo":
        if request.method == b"POST":
            return Response(200, request.body, content_type=b"application/octet-stream")
        return Response(405, b"POST\n", headers=[(b"allow", b"POST")])
    return Response(404, b"not found\n")


@functools.lru_cache(maxsize=1)
def http_date(second: int) -> bytes:
    """The ``Date`` header's value for ``second`` (cached: one formatting per second)."""
    return email.utils.formatdate(second, usegmt=True).encode()


class HttpHandler:
    """The millpond handler that speaks HTTP/1.1 for ``app``, one request after another.

    ::

        http = HttpHandler(demo_app, parser="httptools")
        server = millpond.Server(http, 8000, read_timeout=5, write_timeout=30)

    Give the server ``read_timeout=limits.keep_alive_seconds``: it ends the
    wait for a next request (and any single read that waits that long). Call
    ``http.close_idle()`` when a shutdown starts (or run
    ``http.close_idle_on_shutdown(server)`` beside the server), so that a
    graceful shutdown does not wait for keep-alive connections that have
    nothing to finish.
    """

    def __init__(
        self,
        app: App,
        *,
        parser: str = "h11",
        limits: Limits | None = None,
        access_log: bool = False,
    ) -> None:
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {sorted(PARSERS)}, not {parser!r}")
        self._app = app
        self._parser_class = PARSERS[parser]
        self._limits = Limits() if limits is None else limits
        self._access_log = access_log
        # Every open connection and its parser: a shutdown closes the idle ones at once.
        self._open: dict[millpond.Connection, Parser] = {}

    async def __call__(self, stream: millpond.Connection) -> None:
        """Serve one connection: request after request, until one side ends it.

        The loop is the per-request hot path, so it is written out here rather
        than split into coroutines (each costs a frame per request): a request
        that came whole in one read, with no body, sets no deadline and makes
        one receive and one send.
        """
        server = millpond.current_server()
        pool = server.pool
        if pool is None:
            raise RuntimeError("HttpHandler reads bodies into the server's pool: serve it pooled")
        shutting_down = server.shutting_down
        parser: Parser = self._parser_class(self._limits)
        self._open[stream] = parser
        try:
            while True:
                request = parser.next_event()  # a pipelined request may be here already
                if request is None and parser.idle:
                    # The keep-alive wait: the server's read_timeout ends it, and a
                    # shutdown (close_idle closes the connection, or it sees the flag).
                    if shutting_down.is_set():
                        break
                    try:
                        data = await stream.receive_some()
                    except trio.ClosedResourceError:
                        break  # closed by close_idle
                    if not data:
                        break
                    parser.feed(data)
                    request = parser.next_event()
                if request is None:
                    request = await self._rest_of_head(stream, parser)
                    if request is None:
                        break
                assert isinstance(request, Request), request
                if not await self._exchange(stream, parser, request, pool, shutting_down):
                    break
                parser.next_request()
        except Refusal as refusal:
            await self._refuse(stream, parser, refusal)
        finally:
            del self._open[stream]
        await close_gently(stream)

    async def _rest_of_head(self, stream: millpond.Connection, parser: Parser) -> Event:
        """The head that did not come whole with its first bytes (a slow client, or a
        slowloris): ``head_seconds`` in all from now on. None if the client closed."""
        stream.deadline = trio.current_time() + self._limits.head_seconds
        while (event := parser.next_event()) is None:
            data = await stream.receive_some()
            if not data:
                return None  # closed in the middle of a head: nothing to answer
            parser.feed(data)
        return event

    async def _exchange(
        self,
        stream: millpond.Connection,
        parser: Parser,
        request: Request,
        pool: millpond.BufferPool,
        shutting_down: trio.Event,
    ) -> bool:
        """Read the body, run the app, send its response; whether the connection stays open."""
        started = trio.current_time() if self._access_log else 0.0
        if request.content_length is not None:
            check_declared_body(request.content_length, self._limits)
        event = parser.next_event()
        body = None if event is END else await self._read_body(stream, parser, request, pool, event)
        try:
            if body is not None:
                request.body = body.view()
            if stream.deadline != math.inf:
                # The app's time is its own; a client that stops reading meets write_timeout.
                stream.deadline = math.inf
            try:
                response = await self._app(request)
            except Exception:
                logger.exception("the application failed on %r", request)
                response = Response(500, b"internal server error\n")
                request.keep_alive = False
            close = not request.keep_alive or shutting_down.is_set()
            head, rest, stays_open = self._render(
                parser, response, close, request.method == b"HEAD"
            )
            await stream.send_all(head)
            if rest:
                await stream.send_all(rest)
            if self._access_log:
                self._log(stream, request, response.status, len(response.body), started)
        finally:
            if body is not None:
                body.release()
        return stays_open

    async def _read_body(
        self,
        stream: millpond.Connection,
        parser: Parser,
        request: Request,
        pool: millpond.BufferPool,
        event: Event,
    ) -> PooledBody:
        """The request body from ``event`` on, read into ``pool``; the caller releases it.

        What did not come with the head has ``body_seconds`` in all, from the
        first wait for it; a client that sent ``Expect: 100-continue`` is told
        to go on then.
        """
        body = PooledBody(pool, stream, self._limits)
        waited = False
        try:
            if request.content_length:
                await body.expect(request.content_length)
            while event is not END:
                if event is None:
                    if not waited:  # the body did not all come with the head
                        waited = True
                        stream.deadline = trio.current_time() + self._limits.body_seconds
                        if request.expects_continue:
                            await stream.send_all(parser.continue_response())
                    data = await stream.receive_some()
                    if not data:
                        raise trio.BrokenResourceError("the client closed in the middle of a body")
                    parser.feed(data)
                else:
                    assert isinstance(event, bytes | bytearray), type(event)
                    await body.append(event)
                event = parser.next_event()
        except BaseException:
            body.release()
            raise
        return body

    def _render(
        self, parser: Parser, response: Response, close: bool, head_only: bool
    ) -> tuple[bytes, bytes | memoryview, bool]:
        """``response`` on the wire (only its head, for a HEAD request), in two parts to
        send in turn (the second empty when the body went with the head), and whether
        the connection stays open after it."""
        body = response.body
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", b"%d" % len(body)),
            (b"date", http_date(int(time.time()))),
            *response.headers,
        ]
        if head_only:
            body = b""  # the headers a GET would have, and no body
        head, stays_open = parser.respond(response.status, headers, body, close)
        if len(body) < JOIN_BODY_BELOW:
            return head + body, b"", stays_open
        return head, body, stays_open

    async def _refuse(self, stream: millpond.Connection, parser: Parser, refusal: Refusal) -> None:
        """Answer a refused request with its status and the reason, then the connection ends."""
        stream.deadline = math.inf
        response = Response(refusal.status, f"{refusal.reason}\n".encode())
        head, rest, _ = self._render(parser, response, True, False)
        await stream.send_all(head)
        if rest:
            await stream.send_all(rest)
        if self._access_log:
            access_logger.info('%s "-" %d (%s)', peer_name(stream), refusal.status, refusal.reason)

    def _log(
        self,
        stream: millpond.Connection,
        request: Request,
        status: int,
        nbytes: int,
        started: float,
    ) -> None:
        access_logger.info(
            '%s "%s %s HTTP/%s" %d %d %.2fms',
            peer_name(stream),
            request.method.decode("latin-1"),
            request.target.decode("latin-1"),
            request.http_version.decode("latin-1"),
            status,
            nbytes,
            (trio.current_time() - started) * 1000,
        )

    def close_idle(self) -> None:
        """Close the connections waiting for their next request: call it as a shutdown starts.

        Those in the middle of a request finish it (answered with
        ``Connection: close``, as they see ``shutting_down``); these have
        nothing to finish, and would otherwise hold the shutdown for the whole
        grace period.
        """
        for stream, parser in list(self._open.items()):
            # Parked in a receive with no byte of a next request: the keep-alive wait.
            if parser.idle and stream.state == "idle":
                stream.close()

    async def close_idle_on_shutdown(self, server: millpond.Server) -> None:
        """``close_idle`` when ``server`` starts shutting down (run it beside the server)."""
        await server.shutting_down.wait()
        self.close_idle()


class PooledBody:
    """A request body read into a buffer leased from the server's pool.

    Every byte of it is charged to the server's budget until ``release``, and
    a lease waits (in order, cancellably) while the budget is spent, so many
    large uploads at once make each other wait instead of growing the process.
    A body of known length takes one lease; one of unknown length (chunked)
    moves to a buffer twice as large when it fills (``body_capacity``), so it
    is copied less than twice in all.
    """

    __slots__ = ("_buffer", "_length", "_limits", "_owner", "_pool")

    def __init__(
        self, pool: millpond.BufferPool, owner: millpond.Connection, limits: Limits
    ) -> None:
        self._pool = pool
        self._owner = owner  # the connection: the budget's statistics name it
        self._limits = limits
        self._buffer: millpond.Buffer | None = None
        self._length = 0

    async def expect(self, nbytes: int) -> None:
        """Lease room for ``nbytes`` now (the request declared its ``Content-Length``)."""
        await self._move_to(nbytes)

    async def append(self, piece: bytes | bytearray) -> None:
        """Add ``piece``; refuse (413) a body that grows past ``max_body_bytes``."""
        needed = self._length + len(piece)
        check_received_body(needed, self._limits)
        buffer = self._buffer
        if buffer is None or needed > buffer.capacity:
            held = 0 if buffer is None else buffer.capacity
            buffer = await self._move_to(body_capacity(needed, held, self._limits))
        buffer.view[self._length : needed] = piece
        self._length = needed

    def view(self) -> memoryview:
        """The body: valid until ``release``."""
        if self._buffer is None:
            return memoryview(b"")  # a chunked body of no chunks
        self._buffer.set_length(self._length)
        return self._buffer.view

    def release(self) -> None:
        """Give the buffer back to the pool, and its bytes to the budget."""
        if self._buffer is not None:
            self._buffer.release()
            self._buffer = None

    async def _move_to(self, capacity: int) -> millpond.Buffer:
        """Lease a buffer of ``capacity`` bytes and move the body there."""
        new = await self._pool.lease(capacity, owner=self._owner)
        old = self._buffer
        new.set_length(new.capacity)  # write anywhere in the slot; view() trims it
        if old is not None:
            new.view[: self._length] = old.view[: self._length]
            old.release()
        self._buffer = new
        return new


async def close_gently(stream: millpond.Connection) -> None:
    """End a connection the client may still be sending on: our side first, then read and
    drop what comes, until the client closes or ``LINGER_SECONDS`` have passed."""
    if stream.eof_received or stream.closed:
        return
    stream.deadline = math.inf
    with trio.move_on_after(LINGER_SECONDS):
        await stream.send_eof()
        while await stream.receive_some():
            pass


def peer_name(stream: millpond.Connection) -> str:
    """``host:port`` of the client, or ``-`` once the kernel has forgotten it (a reset)."""
    try:
        host, port = stream.getpeername()[:2]
    except OSError:
        return "-"
    return f"{host}:{port}"


async def main(args: argparse.Namespace) -> None:
    """Serve the demo app as the command line says; print where; drain on a signal."""
    http = HttpHandler(demo_app, parser=args.parser, limits=args.limits, access_log=args.access_log)
    server = millpond.Server(
        http,
        args.port,
        host=args.host,
        poller=args.poller,
        limiter=millpond.BufferLimiter(args.budget_mib << 20, reserved_bytes=args.budget_mib << 16),
        read_timeout=args.limits.keep_alive_seconds,  # the keep-alive wait: see _read_head
        write_timeout=args.write_timeout,
    )
    await serve_until_signalled(server, args.grace, on_stopping=http.close_idle)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Try: curl http://127.0.0.1:8000/ http://127.0.0.1:8000/ "
        "(two requests, one connection); curl --data-binary @FILE http://127.0.0.1:8000/echo",
    )
    add_server_arguments(parser, port=8000)
    parser.add_argument(
        "--parser",
        choices=sorted(PARSERS),
        default="h11",
        help="h11 (pure Python, checks both directions) or httptools (llhttp, in C: faster)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--max-head-bytes",
        type=int,
        default=DEFAULT_MAX_HEAD_BYTES,
        help="largest request line + headers; larger is answered 431 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-headers",
        type=int,
        default=DEFAULT_MAX_HEADERS,
        help="most header lines in a request; more is answered 431 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body; larger is answered 413 (held in the budget until answered)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=DEFAULT_KEEP_ALIVE_SECONDS,
        help="seconds a connection may wait for its next request (and any one read may wait)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--head-timeout",
        type=float,
        default=DEFAULT_HEAD_SECONDS,
        help="seconds a request head may take once it has begun to arrive (the slowloris defence)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_SECONDS,
        help="seconds for a whole request body (default: %(default)s)",
    )
    parser.add_argument(
        "--write-timeout",
        type=float,
        default=30.0,
        help="seconds a response may stay blocked on a client that does not read"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--budget-mib",
        type=int,
        default=64,
        help="memory budget for reads and request bodies, in MiB (1/16 of it is the reserve)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--poller",
        choices=("auto", "epoll", "trio"),
        default="auto",
        help="readiness backend (default: %(default)s)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="print a line per request: client, request line, status, body bytes, duration",
    )
    args = parser.parse_args(argv)
    try:
        args.limits = Limits(
            max_head_bytes=args.max_head_bytes,
            max_headers=args.max_headers,
            max_body_bytes=args.max_body_bytes,
            keep_alive_seconds=args.keep_alive_timeout,
            head_seconds=args.head_timeout,
            body_seconds=args.body_timeout,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc).replace("_", "-"))
    if args.budget_mib < 1:
        parser.error("--budget-mib must be >= 1")
    # A body is leased whole: the largest must fit what the budget grants one holder.
    if args.max_body_bytes > (args.budget_mib << 20) - (args.budget_mib << 16):
        parser.error("--max-body-bytes must fit in the budget less its reserve (--budget-mib)")
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.access_log:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)
        access_logger.propagate = False
    trio.run(main, arguments)
