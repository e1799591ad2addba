"""Listeners: the listening sockets a server accepts on, before it accepts anything.

This module owns where a server listens: turning "a port on a host" into
non-blocking listening sockets (every address family the host resolves to,
one port for all), binding a Unix domain socket path (clearing a stale one
first), and adopting listening sockets the caller brings (systemd socket
activation, ``--fd``, test fixtures). Accepting, and everything after, is the
server's.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import weakref
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import trio

__all__ = [
    "DEFAULT_BACKLOG",
    "adopt_listeners",
    "check_backlog",
    "check_host",
    "check_port",
    "open_listeners",
    "open_unix_listener",
    "remove_unix_socket",
]

SockAddr: TypeAlias = tuple[Any, ...]

# The kernel clamps the listen backlog to net.core.somaxconn (4096 on Linux
# since 5.4, 128 before); asking for the largest value lets the system
# administrator's setting decide, as Trio and nginx do. A long backlog is what
# holds the clients a server does not accept yet: during a burst, and while
# max_connections pauses the accept loop.
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
    port: int, *, host: str | None = None, backlog: int | None = None, reuse_port: bool = False
) -> list[socket.socket]:
    """Bind and listen like ``trio.open_tcp_listeners``; return non-blocking sockets.

    ``host=None`` binds every interface, IPv4 and IPv6 where available. With
    ``port=0`` the first socket picks a free port and the others reuse it
    where they can, so one number reaches the server on every family.
    ``reuse_port=True`` sets ``SO_REUSEPORT``, so that several processes (one
    worker per core) can each listen on the same address and the kernel
    spreads connections among them; ``ValueError`` where the platform has
    no ``SO_REUSEPORT``.
    """
    check_port(port)
    check_host(host)
    computed_backlog = check_backlog(backlog)
    if not isinstance(reuse_port, bool):
        raise TypeError(f"reuse_port must be a bool, not {type(reuse_port).__name__}")
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port=True needs SO_REUSEPORT, which this platform lacks")
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
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


async def open_unix_listener(
    path: str | os.PathLike[str], *, backlog: int | None = None, mode: int | None = None
) -> socket.socket:
    """Bind and listen on a Unix domain socket at ``path``; return it non-blocking.

    A socket file left at ``path`` by a server that is gone (nothing accepts
    on it) is removed first; a live one, or any other kind of file, is an
    ``OSError`` (``EADDRINUSE``), never deleted. ``mode`` (e.g. ``0o660``)
    is applied with ``chmod`` before the socket listens, so no client can
    connect under the permissions the umask gave it; ``None`` keeps those.
    """
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise TypeError(f"uds must be a non-empty path, not {path!r}")
    if mode is not None and (type(mode) is not int or not 0 <= mode <= 0o777):
        raise ValueError(f"uds_mode must be permission bits (0 to 0o777), not {mode!r}")
    computed_backlog = check_backlog(backlog)
    await _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        try:
            info = os.stat(path)
            _UNIX_FILES[sock] = (path, info.st_dev, info.st_ino)
            if mode is not None:
                os.chmod(path, mode)
            sock.listen(computed_backlog)
        except BaseException:
            os.unlink(path)
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# The file each Unix listener of ours was bound to, as (path, device, inode)
# right after bind: the socket itself cannot tell (fstat on it describes the
# socket, not the file), and only our own file may be removed at the end.
_UNIX_FILES: weakref.WeakKeyDictionary[socket.socket, tuple[str, int, int]] = (
    weakref.WeakKeyDictionary()
)


async def _remove_stale_unix_socket(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket; not removing it")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # a socket file nobody accepts on: stale
            return
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a live server")


def remove_unix_socket(sock: socket.socket) -> None:
    """Remove the socket file of a Unix listener ``open_unix_listener`` made.

    Only if the path still names the file it bound (a newer server may have
    replaced it since); a socket someone else bound is left alone.
    """
    bound = _UNIX_FILES.pop(sock, None)
    if bound is None:
        return
    path, device, inode = bound
    try:
        info = os.stat(path)
        if (info.st_dev, info.st_ino) == (device, inode):
            os.unlink(path)
    except OSError:
        pass


def adopt_listeners(sockets: object) -> list[socket.socket]:
    """Check sockets the caller brings (already bound and listening) and make them non-blocking.

    Raises ``TypeError``/``ValueError`` naming ``sockets`` unless each is an
    open, listening ``SOCK_STREAM`` socket. The server owns them from then
    on, and closes them when it stops (as ``trio.serve_listeners`` does).
    """
    if isinstance(sockets, socket.socket) or not isinstance(sockets, Sequence):
        raise TypeError(f"sockets must be a sequence of sockets, not {type(sockets).__name__}")
    adopted = []
    for sock in sockets:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sockets must hold socket.socket objects, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise ValueError("sockets holds a closed socket")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("sockets must be SOCK_STREAM sockets")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"socket {sock.getsockname()!r} is not listening (call listen())")
        adopted.append(sock)
    for sock in adopted:
        sock.setblocking(False)
    return adopted
