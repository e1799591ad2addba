"""millpond under anyio's interfaces: a served connection as an ``anyio.abc.ByteStream``,
and millpond's server as an ``anyio.abc.Listener``.

This module owns one translation, in both directions of a call: code written
against anyio's stream and listener interfaces (``anyio.streams.tls``'s
``TLSListener``, ``BufferedByteReceiveStream.receive_until``, ``TextStream``,
anything typed ``anyio.abc.ByteStream``) calls ``ByteStream`` and
``Listener``, which call a millpond ``Connection`` and ``Server``; what comes
back is translated to anyio's conventions (``EndOfStream`` instead of
``b""``, anyio's exception classes instead of Trio's, ``SocketAttribute``
keys for the addresses). It adds no I/O of its own and imports only
millpond's public API (DESIGN.md's layout), so every property of the server
(the byte budget, timeouts, graceful shutdown, statistics) holds unchanged.

The decision that shapes ``Listener``: anyio's ``Listener.serve(handler,
task_group)`` lets the caller say in which task group the connection tasks
run. millpond's server owns every connection task in its own nursery; that is
what lets it promise that nothing outlives ``serve()``, that a graceful
shutdown knows which handlers to wait for and which to cancel, and that
``max_connections``, timeouts and statistics see every connection
(``docs/server.md``, "No handler_nursery"). So ``task_group`` is accepted,
because code written for anyio passes it along (``TLSListener`` does), and it
is not used. What the caller can observe: handlers never outlive ``serve()``,
and a handler's exception is logged and closes only its own connection (with
anyio's ``SocketListener`` it would cancel the task group). Cancelling the
caller of ``serve()`` stops every handler, as it does in anyio when
``serve()`` runs in the task group it was given.

millpond needs a Trio run: under anyio's asyncio backend the first call that
touches the loop raises millpond's ``RuntimeError`` ("... needs a running
Trio event loop ... anyio.run(..., backend='trio')").
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypedDict, Unpack

try:
    import anyio
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a child process
    if exc.name != "anyio":
        raise
    raise ModuleNotFoundError(
        "millpond.anyio needs anyio: pip install 'millpond[anyio]'", name="anyio"
    ) from exc
import anyio.abc
import trio
from anyio.streams.tls import TLSAttribute

import millpond
import millpond.server

__all__ = ["ByteStream", "Listener", "ServerOptions", "create_tcp_listener"]

#: What a millpond handler is given: a ``Connection``, or a ``trio.SSLStream``
#: over one when the server has an ``ssl_context``.
ServedStream: TypeAlias = "millpond.Connection | trio.SSLStream[millpond.Connection]"

# anyio's default and documented ceiling for ByteReceiveStream.receive.
DEFAULT_RECEIVE_BYTES = 65536


def _anyio_error(exc: Exception, action: str) -> Exception:
    """anyio's exception for Trio's ``exc``; ``action`` words a busy error ("receiving from")."""
    if isinstance(exc, trio.BusyResourceError):
        return anyio.BusyResourceError(action)
    if isinstance(exc, trio.ClosedResourceError):
        return anyio.ClosedResourceError(*exc.args)
    return anyio.BrokenResourceError(*exc.args)


# The three Trio errors a stream raises that anyio names differently.
_TRIO_STREAM_ERRORS = (trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError)


def _address(sockaddr: Any) -> Any:
    """A socket address as anyio gives it: IPv6 as ``(host%scope, port)``, others as they are."""
    if isinstance(sockaddr, tuple) and len(sockaddr) == 4:
        host, port, _flowinfo, scope_id = sockaddr
        return (f"{host}%{scope_id}" if scope_id else host, port)
    return sockaddr


def _socket_attributes(
    sock: socket.socket, getpeername: Callable[[], Any]
) -> dict[Any, Callable[[], Any]]:
    """anyio's ``SocketAttribute`` entries for ``sock``, the remote ones from ``getpeername``
    (if it answers)."""
    attributes: dict[Any, Callable[[], Any]] = {
        anyio.abc.SocketAttribute.family: lambda: sock.family,
        anyio.abc.SocketAttribute.local_address: lambda: _address(sock.getsockname()),
        anyio.abc.SocketAttribute.raw_socket: lambda: sock,
    }
    try:
        peer = _address(getpeername())
    except OSError:  # a listening socket, or a peer already gone
        peer = None
    if peer is not None:
        attributes[anyio.abc.SocketAttribute.remote_address] = lambda: peer
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        attributes[anyio.abc.SocketAttribute.local_port] = lambda: sock.getsockname()[1]
        if peer is not None:
            attributes[anyio.abc.SocketAttribute.remote_port] = lambda: peer[1]
    return attributes


class ByteStream(anyio.abc.ByteStream):
    """A millpond connection as an ``anyio.abc.ByteStream``, for code written against anyio.

    Wraps what a millpond handler gets (a ``Connection``, or the
    ``trio.SSLStream`` over one that a server with ``ssl_context`` hands out)
    and speaks anyio's dialect: ``receive`` raises ``anyio.EndOfStream`` at
    EOF instead of returning ``b""``; Trio's ``BusyResourceError``,
    ``ClosedResourceError`` and ``BrokenResourceError`` become anyio's (with
    Trio's as ``__cause__``); ``extra()`` answers anyio's ``SocketAttribute``
    keys (and ``TLSAttribute``'s over TLS). Reads stay charged to the
    server's budget exactly as they are without the wrapper::

        async def handler(connection: millpond.Connection) -> None:
            stream = millpond.anyio.ByteStream(connection)
            lines = anyio.streams.buffered.BufferedByteReceiveStream(stream)
            name = await lines.receive_until(b"\\n", 1024)
            await stream.send(b"hello " + name + b"\\n")

    ``Listener`` does this for every connection.
    """

    def __init__(self, stream: ServedStream) -> None:
        if isinstance(stream, trio.SSLStream):
            connection = stream.transport_stream
        else:
            connection = stream
        if not isinstance(connection, millpond.Connection):
            raise TypeError(
                "stream must be a millpond.Connection or a trio.SSLStream over one, "
                f"not {type(stream).__name__}"
            )
        self._stream = stream
        self._connection = connection

    @property
    def stream(self) -> ServedStream:
        """The Trio stream this wraps (the ``Connection``, or the ``trio.SSLStream``)."""
        return self._stream

    @property
    def connection(self) -> millpond.Connection:
        """The millpond ``Connection`` underneath (for ``deadline``, byte counts, options)."""
        return self._connection

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_BYTES) -> bytes:
        """Return up to ``max_bytes`` bytes, waiting for at least one.

        Raises ``anyio.EndOfStream`` once the peer has closed its side (and at
        every call after), ``anyio.ClosedResourceError`` after ``aclose``,
        ``anyio.BrokenResourceError`` if the peer reset the connection,
        ``anyio.BusyResourceError`` if another task is receiving.
        """
        try:
            data = await self._stream.receive_some(max_bytes)
        except _TRIO_STREAM_ERRORS as exc:
            raise _anyio_error(exc, "receiving from") from exc
        if not data:
            raise anyio.EndOfStream
        # trio.SSLStream's is typed bytes | bytearray; anyio promises bytes.
        return data if type(data) is bytes else bytes(data)

    async def send(self, item: bytes) -> None:
        """Send all of ``item``, waiting while the peer is not reading.

        Raises ``anyio.ClosedResourceError`` after ``aclose`` or ``send_eof``,
        ``anyio.BrokenResourceError`` if the peer is gone,
        ``anyio.BusyResourceError`` if another task is sending.
        """
        try:
            await self._stream.send_all(item)
        except _TRIO_STREAM_ERRORS as exc:
            raise _anyio_error(exc, "sending to") from exc

    async def send_eof(self) -> None:
        """Close the sending direction; idempotent. Over TLS: ``NotImplementedError``.

        TLS (``trio.SSLStream``, and anyio's own ``TLSStream``) cannot close
        one direction and keep the other.
        """
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            raise NotImplementedError("send_eof() is not supported over TLS (no half-close)")
        try:
            await stream.send_eof()
        except _TRIO_STREAM_ERRORS as exc:
            raise _anyio_error(exc, "sending to") from exc

    async def aclose(self) -> None:
        """Close the stream (over TLS, after sending ``close_notify``); idempotent.

        The connection is closed even if this is cancelled; a peer that went
        away meanwhile is not an error.
        """
        try:
            await self._stream.aclose()
        except trio.BrokenResourceError:
            pass  # closing a connection the peer already broke: it is closed now

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's ``SocketAttribute`` keys, and ``TLSAttribute``'s over TLS.

        ``remote_address`` is the ``Connection``'s peer: behind a load balancer
        that sent a PROXY protocol header, the original client (the
        balancer's address is ``raw_socket.getpeername()``).
        """
        connection = self._connection
        attributes = _socket_attributes(connection.socket, connection.getpeername)
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            attributes.update(_tls_attributes(stream))
        return attributes


def _tls_attributes(stream: trio.SSLStream[millpond.Connection]) -> dict[Any, Callable[[], Any]]:
    # What trio.SSLStream forwards from its SSLObject (so not TLSAttribute.ssl_object,
    # nor standard_compatible, which trio keeps private).
    return {
        TLSAttribute.alpn_protocol: lambda: stream.selected_alpn_protocol(),
        TLSAttribute.channel_binding_tls_unique: lambda: stream.get_channel_binding(),
        TLSAttribute.cipher: lambda: stream.cipher(),
        TLSAttribute.peer_certificate: lambda: stream.getpeercert(False),
        TLSAttribute.peer_certificate_binary: lambda: stream.getpeercert(True),
        TLSAttribute.server_side: lambda: stream.server_side,
        TLSAttribute.shared_ciphers: lambda: (
            stream.shared_ciphers() if stream.server_side else None
        ),
        TLSAttribute.tls_version: lambda: stream.version(),
    }


class ServerOptions(TypedDict, total=False):
    """The ``millpond.Server`` arguments a ``Listener`` passes on (see ``docs/server.md``)."""

    max_connections: int | None
    idle_timeout: float | None
    read_timeout: float | None
    write_timeout: float | None
    ssl_context: ssl.SSLContext | None
    handshake_timeout: float | None
    proxy_protocol: str
    proxy_allow_from: Sequence[str]
    proxy_header_timeout: float | None
    poller: str
    limiter: millpond.BufferLimiter | None
    pool: millpond.BufferPool | None
    read_sizes: millpond.ReadSizes | None
    pooled: bool
    access_log: bool


AnyioHandler: TypeAlias = Callable[[ByteStream], Any]


class Listener(anyio.abc.Listener[ByteStream]):
    """millpond's server as an ``anyio.abc.Listener``: ``serve(handler)`` gets ``ByteStream``\\ s.

    Code written against anyio's listener interface runs on millpond
    unchanged, including anyio's wrappers around a listener::

        listener = await millpond.anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        tls = anyio.streams.tls.TLSListener(listener, ssl_context)
        await tls.serve(handler)   # handler(stream: anyio.streams.tls.TLSStream)

    ``sockets`` are listening sockets (``create_tcp_listener`` binds them, or
    bring your own: a Unix socket, systemd's); ``options`` are
    ``millpond.Server``'s (``max_connections``, the timeouts,
    ``ssl_context``, ``limiter``, ...), checked here, before anything runs.
    The listener owns the sockets from now on. It serves once: after
    ``serve()`` returns, or after ``aclose()``, it is closed.

    ``serve(handler, task_group)`` runs ``handler`` for each connection in the
    server's own nursery; ``task_group`` is accepted and not used (the module
    docstring says why, and what that changes). ``aclose()`` is a graceful
    shutdown (``Server.shutdown(grace)``): the listening sockets close and no
    new client is accepted, handlers get ``grace`` seconds (``None``: the
    server's default, 30 s) to finish, then the rest are cancelled, and then
    ``serve()`` returns. ``aclose()`` itself returns at once, so a handler may
    call it (a "shut down" command) without waiting for itself.
    """

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        *,
        grace: float | None = None,
        **options: Unpack[ServerOptions],
    ) -> None:
        if isinstance(grace, bool) or not isinstance(grace, int | float | None):
            raise TypeError(f"grace must be a number of seconds or None, not {grace!r}")
        if grace is not None and not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, not {grace!r}")
        # The server checks the sockets and every option now, and serves
        # self._serve_connection, which hands each connection on as a ByteStream.
        self._server = millpond.Server(self._serve_connection, sockets=sockets, **options)
        self._sockets = list(sockets)
        self._grace = grace
        self._handler: AnyioHandler | None = None
        self._serving = False
        self._closed = False

    @property
    def server(self) -> millpond.Server:
        """The ``millpond.Server`` behind this listener (statistics, ``shutting_down``)."""
        return self._server

    async def serve(
        self, handler: AnyioHandler, task_group: anyio.abc.TaskGroup | None = None
    ) -> None:
        """Run ``handler(ByteStream)`` for every connection until ``aclose()`` or cancellation.

        ``task_group`` is not used: the server's nursery owns every connection
        (see the class docstring). Returns once a graceful shutdown started
        by ``aclose()`` has finished; cancelling the caller closes every
        connection at once. A handler's exception is logged by millpond
        (logger ``millpond.server``) and closes only its connection; anyio's
        ``EndOfStream`` and ``BrokenResourceError`` count as the peer going
        away, not as handler errors. Raises ``anyio.ClosedResourceError`` if
        the listener is closed, ``anyio.BusyResourceError`` if it is serving.
        """
        # millpond's own rule (an async def, a bound async method, an object with
        # an async __call__, a partial of one; __wrapped__ followed, as anyio's
        # TLSListener sets it): a wrong handler is a TypeError now, not an
        # error per connection.
        millpond.server.check_handler(handler)
        if self._closed:
            raise anyio.ClosedResourceError("this listener is closed")
        if self._serving:
            raise anyio.BusyResourceError("serving")
        self._handler = handler
        self._serving = True
        try:
            await self._server.run()
        finally:
            # The server closed the sockets when it stopped: this listener is done.
            self._serving = False
            self._closed = True

    async def _serve_connection(self, stream: ServedStream) -> None:
        handler = self._handler
        assert handler is not None
        try:
            await handler(ByteStream(stream))
        except anyio.IncompleteRead as exc:
            # anyio raises it from receive_until/receive_exactly only at the
            # peer's EOF. The server counts anyio's EndOfStream as the peer
            # leaving (INFO, a "reset" close) but does not know this one: say
            # it in the words it knows rather than log a handler error.
            raise anyio.EndOfStream("the peer closed the connection in mid-read") from exc

    async def aclose(self) -> None:
        """Stop accepting and shut down gracefully (see the class docstring); idempotent."""
        if not self._closed:
            self._closed = True
            if self._serving:
                if self._grace is None:
                    self._server.shutdown()
                else:
                    self._server.shutdown(self._grace)
            else:
                for sock in self._sockets:
                    sock.close()
        await trio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's ``SocketAttribute`` keys for the first listening socket (``local_port``...)."""
        if not self._sockets:
            return {}
        sock = self._sockets[0]
        return _socket_attributes(sock, sock.getpeername)


async def create_tcp_listener(
    *,
    local_host: str | None = None,
    local_port: int = 0,
    backlog: int | None = None,
    reuse_port: bool = False,
    grace: float | None = None,
    **options: Unpack[ServerOptions],
) -> Listener:
    """Bind a TCP port and return a ``Listener`` for it: ``anyio.create_tcp_listener``'s twin.

    ``local_host=None`` binds every interface (IPv4 and IPv6, one port);
    ``local_port=0`` picks a free port (read it with
    ``listener.extra(anyio.abc.SocketAttribute.local_port)``). ``backlog``
    is the listen queue (None: as long as the kernel allows); ``reuse_port``
    sets ``SO_REUSEPORT`` (worker processes sharing a port). ``grace`` and
    ``options`` are ``Listener``'s. Outside a Trio run (anyio's asyncio
    backend) this raises millpond's ``RuntimeError`` before binding anything.
    """
    # First contact with the event loop: millpond's own check, which says what
    # to do under asyncio (and checks the poller's name), before any socket opens.
    millpond.get_poller(options.get("poller", "auto"))
    sockets = await millpond.open_listeners(
        local_port, host=local_host, backlog=backlog, reuse_port=reuse_port
    )
    try:
        return Listener(sockets, grace=grace, **options)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
