"""Listeners: binding and listening sockets for a server, before it accepts anything.

This module owns turning "a port on a host" into non-blocking listening
sockets (every address family the host resolves to, one port for all), and
checking those arguments. Accepting, and everything after, is the server's.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Final, TypeAlias

import trio

__all__ = ["DEFAULT_BACKLOG", "check_backlog", "check_host", "check_port", "open_listeners"]

SockAddr: TypeAlias = tuple[Any, ...]

# The kernel clamps the listen backlog to net.core.somaxconn; asking for the
# largest value lets the system administrator's setting decide (as Trio does).
DEFAULT_BACKLOG: Final = 0xFFFF


def check_port(port: object) -> int:
    """Return ``port`` if it is a port number (0 picks a free one); raise naming ``port``."""
    if type(port) is not int:
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, not {port}")
    return port


def check_host(host: object) -> None:
    """Raise ``TypeError`` naming ``host`` unless it is a str or None."""
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")


def check_backlog(backlog: object) -> int:
    """The listen backlog to ask for: ``backlog``, or the default for None; raise naming it."""
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
    check_port(port)
    check_host(host)
    computed_backlog = check_backlog(backlog)
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
