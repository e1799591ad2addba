"""The debug HTTP endpoint: h11 on a millpond listener, inside the server it describes.

This module owns the endpoint's HTTP and its life: it binds the debug
address, serves GET (and HEAD) requests with h11 on a second, small
``Server`` of millpond's own, and answers each with a page from
``pages.py``. ``Server`` starts it in its service nursery when made with
``debug_address`` (the ``millpond`` command's ``--debug-port``), so it lives
and dies with the server, and answers through a graceful shutdown too.

**Outside the budget.** The endpoint's server is made with ``pooled=False``:
its reads are plain ``recv`` calls of at most :data:`RECEIVE_BYTES` into new
``bytes``, charged to no limiter, so it answers while the user's budget is
spent and every user connection waits for memory. What bounds it instead:
at most :data:`MAX_CONNECTIONS` connections (the backlog holds more), a
request head of at most :data:`MAX_REQUEST_HEAD` bytes (h11 answers 431 when
an incomplete head grows past it, so it holds at most one read more), no
request body (413), :data:`REQUEST_SECONDS` to send a request (the
connection's deadline) and :data:`IDLE_SECONDS` idle between requests.
Pages are built whole, then sent; the largest (``tasks`` of a server with
many unalike tasks, ``connections?limit=10000``) are a few MB at most.

**Loopback by default.** The pages name peers, files and lines: a debug
endpoint bound to another address logs a WARNING once it listens.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import TYPE_CHECKING, Any

import h11
import trio

from ..server.listeners import open_listeners
from ..server.server import Server
from ..stream import Connection
from .address import DebugAddress, is_loopback
from .heap import HeapProfiler
from .pages import Response, respond

if TYPE_CHECKING:
    from ..server.server import SockAddr

__all__ = ["DebugEndpoint"]

logger = logging.getLogger("millpond.server")

# Connections the endpoint serves at once; more wait in its backlog. A person
# with a browser and a Prometheus scraper need a handful.
MAX_CONNECTIONS = 16

# The most one read takes from a debug connection (a plain recv: no budget).
RECEIVE_BYTES = 16 * 1024

# The largest request head h11 accepts (it answers 431 beyond). A GET with a
# query and a browser's headers is well under 8 KiB.
MAX_REQUEST_HEAD = 16 * 1024

# How long a client may take to send one request head, and to idle between
# requests on a kept-alive connection.
REQUEST_SECONDS = 10.0
IDLE_SECONDS = 60.0

_SERVER_HEADER = b"millpond-debug"


class DebugEndpoint:
    """The debug endpoint of ``server`` at ``where`` (an address, or listening sockets):
    :meth:`bind`, then :meth:`run`.

    Made by ``Server`` when it has a ``debug_address`` or ``debug_sockets``; it is not useful on
    its own. ``addresses`` are the bound addresses once :meth:`bind` returned.
    """

    def __init__(self, server: Server, where: DebugAddress | list[socket.socket]) -> None:
        self._server = server
        self._where = where
        self._sockets: list[socket.socket] = []
        self._profiler = HeapProfiler()

    @property
    def addresses(self) -> tuple[SockAddr, ...]:
        """Where it listens (empty before :meth:`bind`)."""
        return tuple(sock.getsockname() for sock in self._sockets if sock.fileno() >= 0)

    async def bind(self) -> None:
        """Bind and listen on the debug address (``OSError`` if it is taken); sockets given
        ready-made (``Server(debug_sockets=...)``) are used as they are."""
        if isinstance(self._where, list):
            self._sockets = self._where
            return
        host, port = self._where
        self._sockets = await open_listeners(port, host=host)

    async def run(self) -> None:
        """Serve the pages until cancelled, on the sockets :meth:`bind` opened."""
        poller = self._server.poller
        assert poller is not None and self._sockets  # Server.run binds, then starts us
        addresses = self.addresses
        endpoint = Server(
            functools.partial(_serve_client, server=self._server, profiler=self._profiler),
            sockets=self._sockets,
            poller=poller.name,
            pooled=False,
            max_connections=MAX_CONNECTIONS,
            idle_timeout=IDLE_SECONDS,
        )
        urls = ", ".join(f"http://{_host_port(a)}/debug/millpond/" for a in addresses)
        logger.info("debug endpoint: %s", urls)
        exposed = [_host_port(a) for a in addresses if not is_loopback(a)]
        if exposed:
            logger.warning(
                "the debug endpoint listens on %s, beyond this machine: its pages show "
                "peers' addresses, file names and memory contents' sizes to anyone who can "
                "connect; bind it to 127.0.0.1 and reach it through an SSH tunnel",
                ", ".join(exposed),
            )
        await endpoint.run()

    def close(self) -> None:
        """Close the listening sockets if ``run`` did not (idempotent)."""
        for sock in self._sockets:
            sock.close()


async def _serve_client(stream: Connection, *, server: Server, profiler: HeapProfiler) -> None:
    """One debug connection: requests in, pages out, until either side closes."""
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    while True:
        stream.deadline = trio.current_time() + REQUEST_SECONDS
        try:
            event = await _next_event(stream, http)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await _send_error(stream, http, status, f"bad request: {exc}")
            return
        if not isinstance(event, h11.Request):
            return  # ConnectionClosed (the client is done) or a stray event
        stream.deadline = float("inf")
        if event.method not in (b"GET", b"HEAD"):
            await _send_error(stream, http, 405, "the debug endpoint only answers GET and HEAD")
            return
        if _has_body(event):
            await _send_error(stream, http, 413, "the debug endpoint takes no request body")
            return
        try:
            await _next_event(stream, http)  # EndOfMessage: GET and HEAD have no body
            response = await respond(event.target.decode("ascii", "replace"), server, profiler)
        except h11.RemoteProtocolError as exc:
            await _send_error(stream, http, exc.error_status_hint, f"bad request: {exc}")
            return
        await _send(stream, http, response, head_only=event.method == b"HEAD")
        if http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
            return
        try:
            http.start_next_cycle()
        except h11.LocalProtocolError:
            return
        stream.deadline = trio.current_time() + IDLE_SECONDS


async def _next_event(stream: Connection, http: h11.Connection) -> Any:
    while True:
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        if http.they_are_waiting_for_100_continue:
            raise h11.RemoteProtocolError("no 100-continue here", error_status_hint=417)
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        http.receive_data(data)


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _send(
    stream: Connection, http: h11.Connection, response: Response, *, head_only: bool = False
) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        (b"server", _SERVER_HEADER),
    ]
    if response.location is not None:
        headers.append((b"location", response.location.encode()))
    data = http.send(h11.Response(status_code=response.status, headers=headers))
    if not head_only and response.body:
        data += http.send(h11.Data(data=response.body))
    data += http.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_error(stream: Connection, http: h11.Connection, status: int, text: str) -> None:
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{text}\n".encode()
    await _send(stream, http, Response(status, "text/plain; charset=utf-8", body))


def _host_port(address: Any) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
