"""The server: the accept loop, and the nursery that owns every connection.

This module owns the life of a server: accepting on the listeners
(``listeners.py`` binds them), running one handler task per connection
inside one nursery, surviving handler errors and transient accept failures,
and closing everything when it is cancelled. It does not parse application
protocols.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import trio

from .._core.poller import Poller, Registration, get_poller, resolve_poller_name
from ..memory.buffers import BufferPool
from ..memory.limiter import BufferLimiter
from ..memory.readsize import ReadSizes
from ..stream import Connection, check_memory_arguments
from .listeners import check_backlog, check_host, check_port, open_listeners

__all__ = ["Handler", "Server", "ServerStatistics", "serve"]

logger = logging.getLogger("millpond.server")

Handler: TypeAlias = Callable[[Connection], Awaitable[object]]
SockAddr: TypeAlias = tuple[Any, ...]

# accept() errors that mean "the process or the system is out of some
# resource right now", not "this listener is broken": log, back off, retry.
# Same list as trio's ACCEPT_CAPACITY_ERRNOS.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

# accept() errors that concern only the one connection being accepted (it
# was reset or refused before we got to it): skip it and accept the next.
ACCEPT_IGNORED_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

# How long to back off after a capacity error. Trio's serve_listeners uses
# 100 ms: long enough that a busy process can close some fds, short enough
# that a client retrying its connect barely notices.
ACCEPT_BACKOFF_SECONDS: Final = 0.100

# Connections accepted in a row before the accept loop yields, so a connect
# flood cannot keep established connections from running.
ACCEPT_BATCH: Final = 16

# The default byte budget of a server's buffers: 1024 full-size (64 KiB)
# reads in flight at once, or 65536 minimum-size ones under pressure. Enough
# that a busy server rarely waits, small enough for a modest container.
DEFAULT_BUDGET_BYTES: Final = 64 * 1024 * 1024

# The default reserve, 1/16 of the budget: only connections that already hold
# buffer memory may use it, so one that needs a second buffer to finish (a
# proxy with an input and an output buffer) always can (HAProxy's
# tune.buffers.reserve).
DEFAULT_RESERVE_FRACTION: Final = 16

# How often a server gives idle buffer slabs back to the system. The pool
# unmaps a slab once it has been idle for its trim_after (5 s by default);
# checking at that pace keeps RSS within one period of the traffic.
TRIM_INTERVAL_SECONDS: Final = 5.0

# Name of every connection task (see Server._accept_loop).
CONNECTION_TASK_NAME: Final = "millpond.connection"



@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters of a running server.

    Attributes:
      addresses: the addresses the server listens on.
      connections_active: connections whose handler is running.
      connections_accepted: connections accepted since start.
      handler_errors: handlers that raised (each closed only its connection).
      accept_backoffs: times accept ran out of fds or memory and backed off.
      setup_errors: accepted connections dropped because setting them up
        failed (each logged; the server went on accepting).
    """

    addresses: tuple[SockAddr, ...]
    connections_active: int
    connections_accepted: int
    handler_errors: int
    accept_backoffs: int
    setup_errors: int


def _is_async_callable(handler: object) -> bool:
    # An async def function or method, through functools.partial and
    # decorators that set __wrapped__, or an object whose __call__ is one.
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(inspect.unwrap(handler)):  # type: ignore[arg-type]
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - we need the method itself
    return call is not None and inspect.iscoroutinefunction(inspect.unwrap(call))


def _check_handler(handler: object) -> None:
    if not callable(handler):
        raise TypeError(f"handler must be an async function, not {type(handler).__name__}")
    if not _is_async_callable(handler):
        raise TypeError(
            f"handler must be an async function (async def handler(stream)), not {handler!r}: "
            "it is called once per connection and its result awaited"
        )


class Server:
    """A TCP server that runs ``handler(connection)`` for every client.

    One nursery owns every connection task: when ``run`` is cancelled, every
    connection is closed and every handler has finished before it returns.
    A handler's exception is logged (logger ``millpond.server``, with the
    peer's address) and closes that connection only; so does a failure while
    a connection is set up (``statistics().setup_errors``). ``handler`` must
    be an async function: an ``async def``, a bound async method, an object
    with an ``async def __call__``, or a ``functools.partial`` of one (checked
    here, so a wrong one is a ``TypeError`` now, not an error per
    connection later). Most users call
    ``serve()``; keep a ``Server`` to read its statistics while it runs::

        server = millpond.Server(echo, 0, host="127.0.0.1")
        addresses = await nursery.start(server.run)
    """

    def __init__(
        self,
        handler: Handler,
        port: int,
        *,
        host: str | None = None,
        backlog: int | None = None,
        poller: str = "auto",
        limiter: BufferLimiter | None = None,
        pool: BufferPool | None = None,
        read_sizes: ReadSizes | None = None,
        pooled: bool = True,
    ) -> None:
        _check_handler(handler)
        check_port(port)
        check_host(host)
        check_backlog(backlog)
        self._poller_name = resolve_poller_name(poller)
        if limiter is not None and not isinstance(limiter, BufferLimiter):
            raise TypeError(
                f"limiter must be a BufferLimiter or None, not {type(limiter).__name__}"
            )
        check_memory_arguments(pool, read_sizes)
        if pool is not None and limiter is not None and pool.limiter is not limiter:
            raise ValueError("pool must charge the given limiter (pool.limiter is not limiter)")
        if not isinstance(pooled, bool):
            raise TypeError(f"pooled must be a bool, not {type(pooled).__name__}")
        if not pooled and (pool is not None or limiter is not None):
            raise ValueError("pooled=False reads without a pool: pass no pool or limiter")
        self._pooled = pooled
        if pool is not None:
            limiter = pool.limiter
        elif limiter is None and pooled:
            limiter = BufferLimiter(
                DEFAULT_BUDGET_BYTES,
                reserved_bytes=DEFAULT_BUDGET_BYTES // DEFAULT_RESERVE_FRACTION,
            )
        self._limiter = limiter
        self._pool = pool
        self._read_sizes = read_sizes
        self._handler = handler
        self._port = port
        self._host = host
        self._backlog = backlog
        self._addresses: tuple[SockAddr, ...] = ()
        self._connections_active = 0
        self._connections_accepted = 0
        self._handler_errors = 0
        self._accept_backoffs = 0
        self._setup_errors = 0
        self._running = False

    @property
    def limiter(self) -> BufferLimiter | None:
        """The byte budget every connection's buffers are charged to (None if unpooled)."""
        return self._limiter

    @property
    def pool(self) -> BufferPool | None:
        """The buffer pool connections read into (created when ``run`` starts)."""
        return self._pool

    @property
    def addresses(self) -> tuple[SockAddr, ...]:
        """The bound addresses (empty until ``run`` has started)."""
        return self._addresses

    def statistics(self) -> ServerStatistics:
        """Return a snapshot of this server's counters."""
        return ServerStatistics(
            addresses=self._addresses,
            connections_active=self._connections_active,
            connections_accepted=self._connections_accepted,
            handler_errors=self._handler_errors,
            accept_backoffs=self._accept_backoffs,
            setup_errors=self._setup_errors,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Bind, report the bound addresses to ``task_status``, serve until cancelled."""
        if self._running:
            raise RuntimeError("this Server is already running")
        self._running = True
        poller = get_poller(self._poller_name)
        if self._pool is None and self._pooled:
            self._pool = BufferPool(self._limiter)
        pool = self._pool
        listeners = await open_listeners(self._port, host=self._host, backlog=self._backlog)
        registrations: list[Registration] = []
        try:
            for sock in listeners:
                registrations.append(poller.register(sock))
            self._addresses = tuple(sock.getsockname() for sock in listeners)
            async with trio.open_nursery() as nursery:
                for registration in registrations:
                    nursery.start_soon(self._accept_loop, registration, poller, pool, nursery)
                if pool is not None:
                    nursery.start_soon(_trim_periodically, pool)
                task_status.started(list(self._addresses))
                await trio.sleep_forever()
        finally:
            for registration in registrations:
                poller.unregister(registration)
            for sock in listeners:
                sock.close()
            self._running = False
        raise AssertionError("unreachable")  # pragma: no cover

    async def _accept_loop(
        self,
        registration: Registration,
        poller: Poller,
        pool: BufferPool | None,
        nursery: trio.Nursery,
    ) -> None:
        accept = registration.accept
        accepted_in_a_row = 0
        while True:
            try:
                accepted = accept()  # None: EAGAIN, and the registration parks next
            except OSError as exc:
                if exc.errno in ACCEPT_IGNORED_ERRNOS:
                    continue
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._accept_backoffs += 1
                logger.error(
                    "accept failed (%s); backing off for %.0f ms",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    ACCEPT_BACKOFF_SECONDS * 1000,
                )
                # The backlog still holds its edge: nothing consumed it.
                accepted_in_a_row = 0
                await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            if accepted is None:
                accepted_in_a_row = 0
                await registration.wait_readable()
                continue
            self._connections_accepted += 1
            self._start_connection(accepted[0], poller, pool, nursery)
            accepted_in_a_row += 1
            if accepted_in_a_row >= ACCEPT_BATCH:
                accepted_in_a_row = 0
                await trio.lowlevel.checkpoint()

    def _start_connection(
        self, sock: socket.socket, poller: Poller, pool: BufferPool | None, nursery: trio.Nursery
    ) -> None:
        """Wrap an accepted socket and start its handler; a failure costs only this socket."""
        try:
            connection = Connection(sock, poller=poller, pool=pool, read_sizes=self._read_sizes)
        except Exception as exc:
            # Whatever it is (the client reset before setup, a budget or a
            # pool refusing, a bug in a constructor), it concerns this one
            # connection: the accept loop must go on serving the others.
            sock.close()
            self._setup_errors += 1
            logger.warning("dropped a connection during setup: %r", exc)
            return
        # A constant task name: Trio would otherwise format a new string per
        # connection, and an idle connection should cost little.
        nursery.start_soon(self._run_connection, connection, name=CONNECTION_TASK_NAME)

    async def _run_connection(self, connection: Connection) -> None:
        self._connections_active += 1
        try:
            await self._handler(connection)
        except trio.BrokenResourceError as exc:
            logger.info("connection from %s broke: %s", _peer(connection), exc)
        except Exception:
            self._handler_errors += 1
            logger.exception("handler failed for connection from %s", _peer(connection))
        finally:
            self._connections_active -= 1
            connection.close()


async def _trim_periodically(pool: BufferPool) -> NoReturn:
    # The pool trims lazily as buffers come and go; this covers a server that
    # went quiet after a burst, so its RSS falls without new traffic.
    while True:
        await trio.sleep(TRIM_INTERVAL_SECONDS)
        pool.trim()


def _peer(connection: Connection) -> str:
    # Asked only when there is something to log, so that no connection keeps
    # its address alive just in case. After a reset the kernel may not know.
    try:
        address = connection.getpeername()
    except OSError:
        return "an unknown peer (already closed or reset)"
    return f"{address[0]}:{address[1]}"


async def serve(
    handler: Handler,
    port: int,
    *,
    host: str | None = None,
    backlog: int | None = None,
    poller: str = "auto",
    limiter: BufferLimiter | None = None,
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
    pooled: bool = True,
    task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``handler`` on ``port`` until cancelled.

    ``handler`` is ``async def handler(stream: millpond.Connection)``; it runs
    in its own task, and the connection is closed when it returns or raises.
    ``host=None`` listens on every interface; ``port=0`` picks a free port.
    ``poller`` is ``"auto"``, ``"epoll"`` or ``"trio"``.

    Memory: every read leases a buffer from ``pool`` (a ``BufferPool``),
    charged to ``limiter`` (a ``BufferLimiter``); by default a 64 MiB budget
    with a 4 MiB reserve. ``read_sizes`` bounds the adaptive read size (1 KiB
    to 1 MiB by default, lowered to fit a smaller budget). ``pooled=False``
    reads with plain ``recv`` into new ``bytes`` objects, outside any budget
    (Trio's own behaviour). With
    ``await nursery.start(millpond.serve, handler, 0)`` the bound addresses
    are returned once the server is listening::

        trio.run(millpond.serve, echo, 7000)
    """
    server = Server(
        handler,
        port,
        host=host,
        backlog=backlog,
        poller=poller,
        limiter=limiter,
        pool=pool,
        read_sizes=read_sizes,
        pooled=pooled,
    )
    await server.run(task_status=task_status)
