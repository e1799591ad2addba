"""Serving: listeners, the accept loop, and the nursery that owns every connection.

This module owns the life of a server: binding, accepting, running one
handler task per connection inside one nursery, surviving handler errors and
transient accept failures, and closing everything when it is cancelled. It
does not parse application protocols.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import trio

from .poller import Poller, Registration, get_poller, resolve_poller_name
from .stream import Connection

__all__ = ["Handler", "Server", "ServerStatistics", "open_listeners", "serve"]

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

# Name of every connection task (see Server._accept_loop).
CONNECTION_TASK_NAME: Final = "millpond.connection"

# The kernel clamps the listen backlog to net.core.somaxconn; asking for the
# largest value lets the system administrator's setting decide (as Trio does).
DEFAULT_BACKLOG: Final = 0xFFFF


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters of a running server.

    Attributes:
      addresses: the addresses the server listens on.
      connections_active: connections whose handler is running.
      connections_accepted: connections accepted since start.
      handler_errors: handlers that raised (each closed only its connection).
      accept_backoffs: times accept ran out of fds or memory and backed off.
    """

    addresses: tuple[SockAddr, ...]
    connections_active: int
    connections_accepted: int
    handler_errors: int
    accept_backoffs: int


def _check_port(port: object) -> int:
    if type(port) is not int:
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, not {port}")
    return port


def _check_backlog(backlog: object) -> int:
    if backlog is None:
        return DEFAULT_BACKLOG
    if type(backlog) is not int:
        raise TypeError(f"backlog must be an int or None, not {type(backlog).__name__}")
    if backlog < 1:
        raise ValueError(f"backlog must be >= 1, not {backlog}")
    return min(backlog, DEFAULT_BACKLOG)


async def open_listeners(
    port: int, *, host: str | None = None, backlog: int | None = None
) -> list[socket.socket]:
    """Bind and listen like ``trio.open_tcp_listeners``; return non-blocking sockets.

    ``host=None`` binds every interface, IPv4 and IPv6 where available. With
    ``port=0`` the first socket picks a free port and the others reuse it
    where they can, so one number reaches the server on every family.
    """
    _check_port(port)
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")
    computed_backlog = _check_backlog(backlog)
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    unsupported: list[OSError] = []
    chosen_port = port
    try:
        for family, type_, proto, _canonname, sockaddr in infos:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    unsupported.append(exc)
                    continue
                raise
            try:
                if sys.platform != "win32":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                _bind(sock, sockaddr, chosen_port)
                sock.listen(computed_backlog)
                sock.setblocking(False)
                if chosen_port == 0:
                    chosen_port = sock.getsockname()[1]
            except BaseException:
                sock.close()
                raise
            listeners.append(sock)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    if not listeners:
        raise OSError(f"could not bind to {host!r}:{port}: {unsupported or 'no addresses'}")
    return listeners


def _bind(sock: socket.socket, sockaddr: SockAddr, port: int) -> None:
    if port != 0 and sockaddr[1] == 0:
        try:
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    sock.bind(sockaddr)


class Server:
    """A TCP server that runs ``handler(connection)`` for every client.

    One nursery owns every connection task: when ``run`` is cancelled, every
    connection is closed and every handler has finished before it returns.
    A handler's exception is logged (logger ``millpond.server``, with the
    peer's address) and closes that connection only. Most users call
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
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        _check_port(port)
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not {type(host).__name__}")
        _check_backlog(backlog)
        self._poller_name = resolve_poller_name(poller)
        self._handler = handler
        self._port = port
        self._host = host
        self._backlog = backlog
        self._addresses: tuple[SockAddr, ...] = ()
        self._connections_active = 0
        self._connections_accepted = 0
        self._handler_errors = 0
        self._accept_backoffs = 0
        self._running = False

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
        )

    async def run(
        self, *, task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Bind, report the bound addresses to ``task_status``, serve until cancelled."""
        if self._running:
            raise RuntimeError("this Server is already running")
        self._running = True
        poller = get_poller(self._poller_name)
        listeners = await open_listeners(self._port, host=self._host, backlog=self._backlog)
        registrations: list[Registration] = []
        try:
            for sock in listeners:
                registrations.append(poller.register(sock))
            self._addresses = tuple(sock.getsockname() for sock in listeners)
            async with trio.open_nursery() as nursery:
                for registration in registrations:
                    nursery.start_soon(self._accept_loop, registration, poller, nursery)
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
        self, registration: Registration, poller: Poller, nursery: trio.Nursery
    ) -> None:
        accept = registration.sock.accept
        start_soon = nursery.start_soon
        run_connection = self._run_connection
        accepted_in_a_row = 0
        while True:
            registration.readable = False
            backoff = False
            try:
                sock, _address = accept()
            except BlockingIOError:
                sock = None
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
                sock = None
                backoff = True
            if sock is None:
                accepted_in_a_row = 0
                if backoff:
                    await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                else:
                    await registration.wait_readable()
                continue
            self._connections_accepted += 1
            try:
                connection = Connection(sock, poller=poller)
            except OSError as exc:
                # The client went away between accept and setup.
                sock.close()
                logger.info("dropped a connection during setup: %s", exc)
                continue
            # A constant task name: Trio would otherwise format a new string
            # per connection, and an idle connection should cost little.
            start_soon(run_connection, connection, name=CONNECTION_TASK_NAME)
            accepted_in_a_row += 1
            if accepted_in_a_row >= ACCEPT_BATCH:
                accepted_in_a_row = 0
                await trio.lowlevel.checkpoint()

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
    task_status: trio.TaskStatus[list[SockAddr]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``handler`` on ``port`` until cancelled.

    ``handler`` is ``async def handler(stream: millpond.Connection)``; it runs
    in its own task, and the connection is closed when it returns or raises.
    ``host=None`` listens on every interface; ``port=0`` picks a free port.
    ``poller`` is ``"auto"``, ``"epoll"`` or ``"trio"``. With
    ``await nursery.start(millpond.serve, handler, 0)`` the bound addresses
    are returned once the server is listening::

        trio.run(millpond.serve, echo, 7000)
    """
    server = Server(handler, port, host=host, backlog=backlog, poller=poller)
    await server.run(task_status=task_status)
