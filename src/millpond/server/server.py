"""The server: the accept loop, the nursery that owns every connection, and shutdown.

This module owns the life of a server: accepting on the listeners
(``listeners.py`` makes them), running one handler task per connection inside
one nursery, surviving handler errors and transient accept failures, pausing
at ``max_connections``, and stopping, either at once (its caller's scope is
cancelled) or gracefully (``Server.shutdown``). It does not parse application
protocols.

How a graceful shutdown is structured: ``run`` holds two nurseries, one
inside the other. The outer one owns every connection task; the inner one
owns the accept loops and housekeeping. ``shutdown(grace)`` wakes ``run``,
which cancels the inner nursery and closes the listeners (the kernel then
refuses new clients instead of leaving them in a backlog nobody reads), and
gives the outer nursery a cancel-scope deadline ``grace`` seconds away: the
nursery waits for the handlers that finish by then and cancels the rest.
Nothing waits for memory on the way: closing a connection releases what it
holds.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import trio

from .._core.poller import Poller, Registration, get_poller, resolve_poller_name
from ..memory.buffers import BufferPool
from ..memory.limiter import BufferLimiter
from ..memory.readsize import ReadSizes
from ..stream import Connection
from . import tls
from .arguments import check_count, check_handler, check_seconds, memory_of
from .listeners import (
    adopt_listeners,
    check_backlog,
    check_host,
    check_port,
    open_listeners,
    open_unix_listener,
    remove_unix_socket,
)
from .proxy_header import (
    DEFAULT_ALLOW_FROM,
    DEFAULT_PROXY_HEADER_TIMEOUT,
    ProxyProtocolError,
    check_allow_from,
    check_proxy_mode,
    read_header,
)
from .timeouts import TIMEOUT_KINDS, Reaper, Timeouts
from .tls import DEFAULT_HANDSHAKE_TIMEOUT, check_ssl_context

if TYPE_CHECKING:
    from ..debug.endpoint import DebugEndpoint

__all__ = [
    "CLOSE_REASONS",
    "ConnectionStatistics",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_GUARANTEED_READ",
    "Handler",
    "Server",
    "ServerStatistics",
    "current_server",
    "serve",
]

logger = logging.getLogger("millpond.server")

#: What ``serve`` calls per connection: with ``ssl_context`` the handler gets the
#: ``trio.SSLStream`` over the ``Connection``, without it the ``Connection``.
Handler: TypeAlias = (
    Callable[[Connection], Awaitable[object]]
    | Callable[[trio.SSLStream[Connection]], Awaitable[object]]
)
SockAddr: TypeAlias = Any

# accept() errors that mean "the process or the system is out of some
# resource right now", not "this listener is broken": log, back off, retry.
# Same list as trio's ACCEPT_CAPACITY_ERRNOS.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

# accept() errors that concern only the one connection being accepted (it
# was reset or refused before we got to it): skip it and accept the next.
ACCEPT_IGNORED_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

# How long to back off after a capacity error. Trio's serve_listeners uses
# 100 ms: long enough that a busy process can close some fds, short enough
# that a client retrying its connect barely notices.
ACCEPT_BACKOFF_SECONDS: Final = 0.100

# While accept keeps failing, the log says so once, then again at most this
# often (with the count), and once more when it succeeds: not ten lines a
# second for as long as the descriptors are out.
ACCEPT_FAILING_REMINDER_SECONDS = 60.0

# Connections accepted in a row before the accept loop yields, so a connect
# flood cannot keep established connections from running.
ACCEPT_BATCH: Final = 16

# How often a server gives idle buffer slabs back to the system. The pool
# unmaps a slab once it has been idle for its trim_after (5 s by default);
# checking at that pace keeps RSS within one period of the traffic.
TRIM_INTERVAL_SECONDS: Final = 5.0

# Name of every connection task (see Server._start_connection).
CONNECTION_TASK_NAME: Final = "millpond.connection"

# What each connection may read while the budget is spent, as long as it holds
# nothing of it (Linux's tcp_rmem[0]): one minimum read, so a client whose
# handler answers promptly is served while a flood holds the whole budget in
# handlers blocked on peers that never read. It costs at most this much per
# connection beyond the budget (docs/memory.md); 0 makes reads wait instead.
DEFAULT_GUARANTEED_READ: Final = 1024

# How long shutdown() lets handlers finish unless told otherwise: long enough
# for a request in flight, short enough for a deploy (uvicorn waits for ever
# by default, gunicorn 30 s, systemd sends SIGKILL after 90 s).
DEFAULT_GRACE_SECONDS: Final = 30.0

#: Why a connection closed, as counted in ``ServerStatistics.closed``.
CLOSE_REASONS: Final = (
    "eof",
    "done",
    "reset",
    *TIMEOUT_KINDS,
    "handshake_timeout",
    "tls_error",
    "proxy_error",
    "shutdown",
    "handler_error",
)

access_logger = logging.getLogger("millpond.access")

_CURRENT_SERVER: contextvars.ContextVar[Server] = contextvars.ContextVar("millpond_server")


def current_server() -> Server:
    """The ``Server`` whose handler is calling (``LookupError`` outside a handler).

    For handlers served by ``serve()`` or the ``millpond`` command, which do
    not hold the ``Server`` object: ``current_server().shutting_down``.
    """
    return _CURRENT_SERVER.get()


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """One open connection, as ``Server.connection_statistics()`` sees it.

    Attributes:
      peer: the client's address, as text.
      age_seconds: how long it has been open.
      bytes_received, bytes_sent: what it has moved.
      budget_held: bytes of the budget it holds now (its held chunk, leased
        buffers, a counted send tail).
      state: ``Connection.state``: reading, writing, waiting for memory, idle,
        in handler.
    """

    peer: str
    age_seconds: float
    bytes_received: int
    bytes_sent: int
    budget_held: int
    state: str


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters of a running server.

    Attributes:
      addresses: the addresses the server listens on.
      connections_active: connections accepted and not yet closed.
      connections_accepted: connections accepted since start.
      handler_errors: handlers that raised (each closed only its connection).
      accept_backoffs: times accept ran out of fds or memory and backed off.
      setup_errors: accepted connections dropped because setting them up
        failed (each logged; the server went on accepting). A client that
        reset while it waited in the backlog is not one: it counts as a
        ``reset`` close, logged at info.
      accept_pauses: times the accept loop paused at ``max_connections``.
      accept_paused_seconds: time spent paused there, in total.
      shutting_down: whether ``shutdown`` has been called.
      closed: connections closed so far, by reason (``CLOSE_REASONS``): the
        handler returned after the peer's EOF (``eof``) or before it
        (``done``), the peer vanished (``reset``), a timeout or the deadline
        expired (``idle_timeout``, ``read_timeout``, ``write_timeout``,
        ``deadline``, ``handshake_timeout``), the TLS handshake failed
        (``tls_error``), a refused PROXY header (``proxy_error``), shutdown
        or cancellation (``shutdown``), or the
        handler raised (``handler_error``).
    """

    addresses: tuple[SockAddr, ...]
    connections_active: int
    connections_accepted: int
    handler_errors: int
    accept_backoffs: int
    setup_errors: int
    accept_pauses: int
    accept_paused_seconds: float
    shutting_down: bool
    closed: dict[str, int]


class Server:
    """A server that runs ``handler(connection)`` for every client.

    One nursery owns every connection task: when ``run`` returns or raises,
    every connection is closed and every handler has finished. A handler's
    exception is logged (logger ``millpond.server``, with the peer's address)
    and closes that connection only; so does a failure while a connection is
    set up (``statistics().setup_errors``). ``handler`` must be an async
    function: an ``async def``, a bound async method, an object with an
    ``async def __call__``, or a ``functools.partial`` of one (checked here,
    so a wrong one is a ``TypeError`` now, not an error per connection later).
    Most users call ``serve()``; keep a ``Server`` to read its statistics or
    to shut it down gracefully::

        server = millpond.Server(echo, 0, host="127.0.0.1")
        addresses = await nursery.start(server.run)
        ...
        server.shutdown(grace=10)  # run() returns once the handlers are done

    Where it listens (any combination, at least one): ``port`` on ``host``
    (``None``: every interface; ``port=0`` picks a free port), ``uds`` (a
    Unix domain socket path; a stale socket file there is removed first, a
    live one is an error; ``uds_mode`` sets its permissions, e.g. ``0o660``),
    and ``sockets`` (listening sockets you bind yourself, e.g. from systemd;
    the server closes them when it stops). ``backlog`` is the listen queue
    (default: as long as the kernel allows, see ``listeners.DEFAULT_BACKLOG``);
    ``reuse_port=True`` sets ``SO_REUSEPORT`` on the TCP listeners, so that
    worker processes can share one address (the ``millpond`` command's
    ``--workers``).

    Behind a load balancer that speaks HAProxy's PROXY protocol,
    ``proxy_protocol="v1"``, ``"v2"`` or ``"auto"`` reads its header before the
    handler starts (within ``proxy_header_timeout`` seconds), and only from
    ``proxy_allow_from`` (networks; loopback by default). A refused or
    malformed header closes that connection (logged, counted
    ``proxy_error``). The handler then sees the original client in
    ``getpeername()``, the header in ``connection.proxy_header``, and the
    client's first bytes untouched.

    ``max_connections`` caps the connections open at once: at the cap the
    accept loop pauses and the kernel's backlog holds the next clients,
    until a connection closes (nginx's ``worker_connections``, HAProxy's
    ``maxconn``).

    ``debug_address=("127.0.0.1", 6060)`` also serves the debug endpoint
    there (statistics, Prometheus metrics, heap profiles, the task tree:
    docs/debugging.md), outside the budget; off by default, and it needs
    h11 (``pip install 'millpond[debug]'``). ``debug_sockets`` serves it on
    listening sockets bound elsewhere instead (a ``--workers`` supervisor
    holds one per worker slot, so that a replacement serves the same port).
    """

    def __init__(
        self,
        handler: Handler,
        port: int | None = None,
        *,
        host: str | None = None,
        uds: str | os.PathLike[str] | None = None,
        uds_mode: int | None = None,
        sockets: Sequence[socket.socket] | None = None,
        backlog: int | None = None,
        reuse_port: bool = False,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        proxy_protocol: str = "off",
        proxy_allow_from: Sequence[str] = DEFAULT_ALLOW_FROM,
        proxy_header_timeout: float | None = DEFAULT_PROXY_HEADER_TIMEOUT,
        poller: str = "auto",
        limiter: BufferLimiter | None = None,
        pool: BufferPool | None = None,
        read_sizes: ReadSizes | None = None,
        pooled: bool = True,
        guaranteed_read: int = DEFAULT_GUARANTEED_READ,
        access_log: bool = False,
        debug_address: tuple[str | None, int] | None = None,
        debug_sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        check_handler(handler)
        if port is not None:
            check_port(port)
        check_host(host)
        if uds is not None and not isinstance(uds, str | os.PathLike):
            raise TypeError(f"uds must be a path (str) or None, not {type(uds).__name__}")
        if uds_mode is not None and (type(uds_mode) is not int or not 0 <= uds_mode <= 0o777):
            raise ValueError(f"uds_mode must be permission bits (0 to 0o777), not {uds_mode!r}")
        adopted = None if sockets is None else adopt_listeners(sockets)
        if port is None and uds is None and not adopted:
            raise ValueError("give the server somewhere to listen: port, uds or sockets")
        check_backlog(backlog)
        if not isinstance(reuse_port, bool):
            raise TypeError(f"reuse_port must be a bool, not {type(reuse_port).__name__}")
        self._reuse_port = reuse_port
        self._max_connections = check_count("max_connections", max_connections)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self._read_timeout = check_seconds("read_timeout", read_timeout)
        self._write_timeout = check_seconds("write_timeout", write_timeout)
        self._ssl_context = check_ssl_context(ssl_context)
        self._handshake_timeout = check_seconds("handshake_timeout", handshake_timeout)
        self._proxy_protocol = check_proxy_mode(proxy_protocol)
        self._proxy_allow_from = check_allow_from(proxy_allow_from)
        self._proxy_header_timeout = check_seconds("proxy_header_timeout", proxy_header_timeout)
        if type(guaranteed_read) is not int:
            raise TypeError(f"guaranteed_read must be an int, not {type(guaranteed_read).__name__}")
        if guaranteed_read < 0:
            raise ValueError(f"guaranteed_read must be >= 0, not {guaranteed_read}")
        self._guaranteed_read = guaranteed_read
        if not isinstance(access_log, bool):
            raise TypeError(f"access_log must be a bool, not {type(access_log).__name__}")
        self._access_log = access_log
        self._debug_where: tuple[str | None, int] | list[socket.socket] | None = None
        if debug_address is not None and debug_sockets is not None:
            raise ValueError("give debug_address or debug_sockets, not both")
        if debug_address is not None:
            from ..debug.address import check_debug_address  # the debug layer sits above

            self._debug_where = check_debug_address(debug_address)
        elif debug_sockets is not None:
            from ..debug.address import check_debug_sockets

            self._debug_where = check_debug_sockets(debug_sockets)
        self._debug: DebugEndpoint | None = None
        timeouts = Timeouts(self._idle_timeout, self._read_timeout, self._write_timeout)
        # One timer task for every connection's timeouts and deadline. Always
        # there: a handler may set a deadline whatever the server's timeouts.
        self._reaper = Reaper(timeouts)
        self._poller_name = resolve_poller_name(poller)
        self._limiter, self._pool = memory_of(limiter, pool, read_sizes, pooled)
        self._pooled = pooled
        self._read_sizes = read_sizes
        self._handler = handler
        self._port = port
        self._host = host
        self._uds = uds
        self._uds_mode = uds_mode
        self._sockets = adopted or []
        self._backlog = backlog
        self._addresses: tuple[SockAddr, ...] = ()
        self._connections_active = 0
        self._connections_accepted = 0
        self._handler_errors = 0
        self._accept_backoffs = 0
        self._setup_errors = 0
        self._closed: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)
        self._accept_pauses = 0
        self._accept_paused_seconds = 0.0
        # Set by the connection that frees a slot while the accept loop waits for one.
        self._slot_freed: trio.Event | None = None
        self._running = False
        self._shutting_down = trio.Event()
        self._shutdown_deadline = math.inf
        # The nursery that owns every connection task, while run() is serving.
        self._connections: trio.Nursery | None = None
        # Every open connection and when it opened (connection_statistics()).
        self._open: dict[Connection, float] = {}
        self._poller: Poller | None = None

    @property
    def limiter(self) -> BufferLimiter | None:
        """The byte budget every connection's buffers are charged to (None if unpooled)."""
        return self._limiter

    @property
    def pool(self) -> BufferPool | None:
        """The buffer pool connections read into (created when ``run`` starts)."""
        return self._pool

    @property
    def poller(self) -> Poller | None:
        """The poller connections park on (None until ``run`` has started)."""
        return self._poller

    def connection_statistics(self) -> tuple[ConnectionStatistics, ...]:
        """One ``ConnectionStatistics`` per open connection (costs a syscall each: on request)."""
        now = trio.current_time()
        limiter = self._limiter
        return tuple(
            ConnectionStatistics(
                peer=_peer(connection),
                age_seconds=now - opened_at,
                bytes_received=connection.bytes_received,
                bytes_sent=connection.bytes_sent,
                budget_held=0 if limiter is None else limiter.held_by(connection),
                state=connection.state,
            )
            for connection, opened_at in list(self._open.items())
        )

    @property
    def addresses(self) -> tuple[SockAddr, ...]:
        """The bound addresses (empty until ``run`` has started)."""
        return self._addresses

    @property
    def debug_addresses(self) -> tuple[SockAddr, ...]:
        """Where the debug endpoint listens (empty without ``debug_address``, or not running)."""
        return () if self._debug is None else self._debug.addresses

    @property
    def shutting_down(self) -> trio.Event:
        """Set when ``shutdown`` is called: handlers that see it should wind down.

        An HTTP handler stops keeping connections alive, a WebSocket handler
        sends close code 1001 ("going away"). From a handler that does not
        hold the server: ``millpond.current_server().shutting_down``.
        """
        return self._shutting_down

    def statistics(self) -> ServerStatistics:
        """Return a snapshot of this server's counters."""
        return ServerStatistics(
            addresses=self._addresses,
            connections_active=self._connections_active,
            connections_accepted=self._connections_accepted,
            handler_errors=self._handler_errors,
            accept_backoffs=self._accept_backoffs,
            setup_errors=self._setup_errors,
            accept_pauses=self._accept_pauses,
            accept_paused_seconds=self._accept_paused_seconds,
            shutting_down=self._shutting_down.is_set(),
            closed=dict(self._closed),
        )

    def shutdown(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Stop gracefully: stop accepting at once, let handlers finish for ``grace`` seconds.

        The listeners are closed right away (new clients are refused), the
        ``shutting_down`` event is set, and ``run`` returns once every handler
        has finished; those still running ``grace`` seconds from now are
        cancelled and their connections closed. Calling it again can only
        bring the deadline nearer: ``shutdown(0)`` after a graceful one
        cancels what is left at once (a second Ctrl-C). Call it from the
        server's Trio run (a signal handler task, a handler, a test). If the
        server has not started yet, it stops as soon as it has.
        """
        grace = check_seconds("grace", grace, optional=False)  # type: ignore[assignment]
        self._shutdown_deadline = min(self._shutdown_deadline, trio.current_time() + grace)
        if not self._shutting_down.is_set():
            logger.info(
                "shutting down: accepting no more connections, %s for handlers",
                "all the time they need" if grace == math.inf else f"{grace:g} s",
            )
            self._shutting_down.set()
        elif self._connections is not None:
            logger.info(
                "shutting down: %d connection(s) left, cancelling them in %g s",
                self._connections_active,
                grace,
            )
        connections = self._connections
        if connections is not None:
            connections.cancel_scope.deadline = min(
                connections.cancel_scope.deadline, self._shutdown_deadline
            )

    async def run(
        self, *, task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report the bound addresses to ``task_status``, serve until shut down.

        Returns after a graceful ``shutdown`` once every connection is closed;
        cancelling the caller's scope stops the server at once, closing every
        connection. Either way nothing of it is left: no task, socket or byte
        of budget.
        """
        if self._running:
            raise RuntimeError("this Server is already running")
        self._running = True
        try:
            await self._run(task_status)
        finally:
            self._running = False

    async def _run(self, task_status: trio.TaskStatus[list[SockAddr]]) -> None:
        poller = self._poller = get_poller(self._poller_name)
        if self._pool is None and self._pooled:
            self._pool = BufferPool(self._limiter)
        pool = self._pool
        listeners = await self._open_listeners()
        registrations: list[Registration] = []
        token = _CURRENT_SERVER.set(self)
        try:
            for sock in listeners:
                registrations.append(poller.register(sock))
            self._addresses = tuple(sock.getsockname() for sock in listeners)
            if self._debug_where is not None:
                # Imported only when asked for: the endpoint needs h11.
                from ..debug.endpoint import DebugEndpoint

                self._debug = DebugEndpoint(self, self._debug_where)
                await self._debug.bind()
            logger.info("listening on %s", ", ".join(_address_text(a) for a in self._addresses))
            async with trio.open_nursery() as service:
                # The reaper outlives accepting: timeouts hold during the grace period too.
                service.start_soon(self._reaper.run)
                if self._debug is not None:  # outside the budget, until the very end
                    service.start_soon(self._debug.run)
                async with trio.open_nursery() as connections:
                    self._connections = connections
                    async with trio.open_nursery() as accepting:
                        for registration in registrations:
                            accepting.start_soon(
                                self._accept_loop, registration, poller, pool, connections
                            )
                        if pool is not None:
                            accepting.start_soon(_trim_periodically, pool)
                        task_status.started(list(self._addresses))
                        await self._shutting_down.wait()
                        accepting.cancel_scope.cancel()
                    # Refuse new clients now, not when the last handler is done.
                    _close_listeners(poller, registrations, listeners)
                    connections.cancel_scope.deadline = self._shutdown_deadline
                    if self._connections_active:
                        logger.info("waiting for %d connection(s)", self._connections_active)
                service.cancel_scope.cancel()
            logger.info("shut down")
        finally:
            self._connections = None
            _CURRENT_SERVER.reset(token)
            _close_listeners(poller, registrations, listeners)
            if self._debug is not None:
                self._debug.close()
                self._debug = None

    async def _open_listeners(self) -> list[socket.socket]:
        listeners: list[socket.socket] = []
        try:
            if self._port is not None:
                listeners += await open_listeners(
                    self._port, host=self._host, backlog=self._backlog, reuse_port=self._reuse_port
                )
            if self._uds is not None:
                listeners.append(
                    await open_unix_listener(self._uds, backlog=self._backlog, mode=self._uds_mode)
                )
        except BaseException:
            _close_listeners(None, [], listeners)
            _close_listeners(None, [], self._sockets)
            raise
        return listeners + self._sockets

    async def _accept_loop(
        self,
        registration: Registration,
        poller: Poller,
        pool: BufferPool | None,
        connections: trio.Nursery,
    ) -> None:
        accept = registration.accept
        accepted_in_a_row = 0
        # An episode of capacity errors: when it began, its back-offs, its last log line.
        failing_since: float | None = None
        failing_backoffs = 0
        failing_logged = 0.0
        while True:
            if self._max_connections is not None:
                await self._wait_for_a_slot(self._max_connections)
            try:
                accepted = accept()  # None: EAGAIN, and the registration parks next
            except OSError as exc:
                if exc.errno in ACCEPT_IGNORED_ERRNOS:
                    continue
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._accept_backoffs += 1
                failing_backoffs += 1
                now = trio.current_time()
                name = errno.errorcode.get(exc.errno or 0, exc.errno)
                if failing_since is None:
                    failing_since = failing_logged = now
                    logger.error(
                        "accept failed (%s); backing off %.0f ms at a time until it succeeds",
                        name,
                        ACCEPT_BACKOFF_SECONDS * 1000,
                    )
                elif now - failing_logged >= ACCEPT_FAILING_REMINDER_SECONDS:
                    failing_logged = now
                    logger.error(
                        "accept still failing (%s): %d back-offs in %.0f s",
                        name,
                        failing_backoffs,
                        now - failing_since,
                    )
                # The backlog still holds its edge: nothing consumed it.
                accepted_in_a_row = 0
                await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            if failing_since is not None:
                logger.warning(
                    "accepting again after %d back-off(s) over %.1f s",
                    failing_backoffs,
                    trio.current_time() - failing_since,
                )
                failing_since, failing_backoffs = None, 0
            if accepted is None:
                accepted_in_a_row = 0
                await registration.wait_readable()
                continue
            self._connections_accepted += 1
            self._start_connection(accepted[0], poller, pool, connections)
            accepted_in_a_row += 1
            if accepted_in_a_row >= ACCEPT_BATCH:
                accepted_in_a_row = 0
                await trio.lowlevel.checkpoint()

    async def _wait_for_a_slot(self, limit: int) -> None:
        """Pause accepting while ``limit`` connections are open; the backlog holds the rest."""
        if self._connections_active < limit:
            return
        self._accept_pauses += 1
        paused_at = trio.current_time()
        try:
            while self._connections_active >= limit:
                if self._slot_freed is None:
                    self._slot_freed = trio.Event()
                await self._slot_freed.wait()
        finally:
            self._accept_paused_seconds += trio.current_time() - paused_at

    def _start_connection(
        self,
        sock: socket.socket,
        poller: Poller,
        pool: BufferPool | None,
        connections: trio.Nursery,
    ) -> None:
        """Wrap an accepted socket and start its handler; a failure costs only this socket."""
        try:
            connection = Connection(
                sock,
                poller=poller,
                pool=pool,
                read_sizes=self._read_sizes,
                guaranteed_read=self._guaranteed_read,
            )
        except Exception as exc:
            # Whatever it is (the client reset before setup, a budget or a
            # pool refusing, a bug in a constructor), it concerns this one
            # connection: the accept loop must go on serving the others.
            gone = _gone_before_setup(sock)
            sock.close()
            if gone:
                # Not a setup error: a client that reset while it waited in the
                # backlog (a reset storm makes thousands a second, and a warning
                # each would flood the log). Counted and logged as any reset.
                self._closed["reset"] += 1
                logger.info("a connection was reset by the peer before setup: %r", exc)
                return
            self._setup_errors += 1
            logger.warning("dropped a connection during setup: %r", exc)
            return
        self._connections_active += 1
        self._open[connection] = trio.current_time()
        # A constant task name: Trio would otherwise format a new string per
        # connection, and an idle connection should cost little.
        connections.start_soon(self._run_connection, connection, name=CONNECTION_TASK_NAME)

    async def _run_connection(self, connection: Connection) -> None:
        """One connection's life: TLS, the handler under its timeouts, the close, the log."""
        opened_at = self._open.get(connection, trio.current_time())
        reason = "shutdown"  # unless the handler ends by itself, below
        scope = trio.CancelScope()
        watch = self._reaper.watch(connection, scope)
        try:
            with scope:
                # The handler is awaited here, not in a helper: every frame
                # between the task and the handler is resumed at each of its
                # wake-ups (two per echoed message).
                stream = await self._open_stream(connection)
                if isinstance(stream, str):
                    reason = stream
                else:
                    try:
                        await self._handler(stream)  # type: ignore[arg-type]
                    except Exception as exc:
                        reason = self._handler_failed(connection, exc)
                    else:
                        reason = await self._handler_returned(connection, stream)
            if watch.fired is not None:
                reason = watch.fired
                logger.info("closed the connection from %s: %s", _peer(connection), reason)
        finally:
            self._reaper.unwatch(watch)
            self._connections_active -= 1
            self._open.pop(connection, None)
            self._closed[reason] += 1
            if self._access_log:  # before the close: the peer's address goes with it
                _log_access(connection, self._ssl_context is not None, opened_at, reason)
            connection.close()
            slot_freed, self._slot_freed = self._slot_freed, None
            if slot_freed is not None:
                slot_freed.set()

    async def _open_stream(self, connection: Connection) -> trio.abc.Stream | str:
        """The PROXY header and the TLS handshake: the handler's stream, or why it ends here."""
        mode = self._proxy_protocol
        if mode != "off":
            try:
                await read_header(
                    connection, mode, self._proxy_allow_from, self._proxy_header_timeout
                )
            except ProxyProtocolError as exc:
                logger.info("PROXY header from %s refused: %s", _peer(connection), exc)
                return "proxy_error"
        if self._ssl_context is None:
            return connection
        try:
            secured = await tls.handshake(connection, self._ssl_context, self._handshake_timeout)
        except trio.BrokenResourceError as exc:
            logger.info("TLS handshake with %s failed: %s", _peer(connection), _why(exc))
            return "tls_error"
        if secured is None:
            logger.info("TLS handshake with %s timed out", _peer(connection))
            return "handshake_timeout"
        return secured

    def _handler_failed(self, connection: Connection, exc: Exception) -> str:
        """Log and count what the handler raised; return the close reason."""
        gone = _peer_gone(exc)
        if gone is None:
            self._handler_errors += 1
            logger.exception(
                "handler failed for connection from %s", _peer(connection), exc_info=exc
            )
            return "handler_error"
        logger.info("connection from %s closed by the peer: %s", _peer(connection), gone)
        return "reset"

    @staticmethod
    async def _handler_returned(connection: Connection, stream: trio.abc.Stream) -> str:
        """Close TLS cleanly after a handler that returned; ``eof`` or ``done``."""
        eof = connection.eof_received
        if isinstance(stream, trio.SSLStream):
            eof = eof or tls.peer_closed(stream)
            await tls.close(stream)
        return "eof" if eof else "done"


def _gone_before_setup(sock: socket.socket) -> bool:
    """Whether an accepted socket's peer is gone already (it reset in the backlog)."""
    try:
        sock.getpeername()
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNRESET, errno.EINVAL)
    return False


def _close_listeners(
    poller: Poller | None, registrations: list[Registration], listeners: list[socket.socket]
) -> None:
    # Unregister before close (poller.py, rule 1); both are idempotent.
    for registration in registrations:
        assert poller is not None
        poller.unregister(registration)
    for sock in listeners:
        if sock.fileno() >= 0:
            if sock.family == socket.AF_UNIX:
                remove_unix_socket(sock)
            sock.close()


async def _trim_periodically(pool: BufferPool) -> None:
    # The pool trims lazily as buffers come and go; this covers a server that
    # went quiet after a burst, so its RSS falls without new traffic.
    while True:
        await trio.sleep(TRIM_INTERVAL_SECONDS)
        pool.trim()


# Errors that mean "the peer went away", not "the handler is wrong": Trio's,
# the OS's, and anyio's (matched by name: anyio is not a dependency).
_ANYIO_PEER_GONE: Final = frozenset({"BrokenResourceError", "EndOfStream"})


def _peer_gone(exc: BaseException) -> str | None:
    """Why the peer is gone, if ``exc`` says it is (else None: a handler error)."""
    if isinstance(exc, trio.BrokenResourceError | ConnectionError | ssl.SSLEOFError):
        return _why(exc)
    kind = type(exc)
    if kind.__module__.split(".")[0] == "anyio" and kind.__name__ in _ANYIO_PEER_GONE:
        return _why(exc)
    return None


def _why(exc: BaseException) -> str:
    # Trio's BrokenResourceError often has no message of its own: the cause says it.
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text


def _log_access(connection: Connection, secure: bool, opened_at: float, reason: str) -> None:
    access_logger.info(
        "%s %.3fs in=%d out=%d %s%s",
        _peer(connection),
        trio.current_time() - opened_at,
        connection.bytes_received,
        connection.bytes_sent,
        reason,
        " tls" if secure else "",
    )


def _address_text(address: SockAddr) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(connection: Connection) -> str:
    # Asked only when there is something to log, so that no connection keeps
    # its address alive just in case. After a reset the kernel may not know.
    try:
        address = connection.getpeername()
    except OSError:
        return "an unknown peer (already closed or reset)"
    if isinstance(address, str):
        return address or "a Unix socket peer"
    return f"{address[0]}:{address[1]}"


async def serve(
    handler: Handler,
    port: int | None = None,
    *,
    host: str | None = None,
    uds: str | os.PathLike[str] | None = None,
    uds_mode: int | None = None,
    sockets: Sequence[socket.socket] | None = None,
    backlog: int | None = None,
    reuse_port: bool = False,
    max_connections: int | None = None,
    idle_timeout: float | None = None,
    read_timeout: float | None = None,
    write_timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    proxy_protocol: str = "off",
    proxy_allow_from: Sequence[str] = DEFAULT_ALLOW_FROM,
    proxy_header_timeout: float | None = DEFAULT_PROXY_HEADER_TIMEOUT,
    poller: str = "auto",
    limiter: BufferLimiter | None = None,
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
    pooled: bool = True,
    guaranteed_read: int = DEFAULT_GUARANTEED_READ,
    access_log: bool = False,
    debug_address: tuple[str | None, int] | None = None,
    task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` until cancelled (or shut down through ``current_server()``).

    ``handler`` is ``async def handler(stream: millpond.Connection)``; it runs
    in its own task, and the connection is closed when it returns or raises.
    Where to listen and how many connections to take: see ``Server``
    (``port`` and ``host``, ``uds``, ``sockets``, ``backlog``,
    ``max_connections``). ``poller`` is ``"auto"``, ``"epoll"`` or ``"trio"``.

    Memory: every read is charged to ``limiter`` (a ``BufferLimiter``; by
    default a 64 MiB budget with a 4 MiB reserve) through ``pool`` (a
    ``BufferPool``). ``read_sizes`` bounds the adaptive read size (1 KiB to
    1 MiB by default; each read also follows the budget as it is).
    ``pooled=False`` reads with plain ``recv`` into new ``bytes`` objects,
    outside any budget (Trio's own behaviour). ``debug_address`` serves the
    debug endpoint (see ``Server``). With
    ``await nursery.start(millpond.serve, handler, 0)`` the bound addresses
    are returned once the server is listening::

        trio.run(millpond.serve, echo, 7000)
    """
    server = Server(
        handler,
        port,
        host=host,
        uds=uds,
        uds_mode=uds_mode,
        sockets=sockets,
        backlog=backlog,
        reuse_port=reuse_port,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        ssl_context=ssl_context,
        handshake_timeout=handshake_timeout,
        proxy_protocol=proxy_protocol,
        proxy_allow_from=proxy_allow_from,
        proxy_header_timeout=proxy_header_timeout,
        poller=poller,
        limiter=limiter,
        pool=pool,
        read_sizes=read_sizes,
        pooled=pooled,
        guaranteed_read=guaranteed_read,
        access_log=access_log,
        debug_address=debug_address,
    )
    await server.run(task_status=task_status)
