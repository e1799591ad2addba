"""Client connections: ``open_connection`` dials ``host:port`` and returns a ``Connection``.

This module owns the connect itself (address resolution, non-blocking
``connect``, waiting for it on the poller); everything after that is the
``Connection``'s job (stream.py).
"""

from __future__ import annotations

import errno
import socket

import trio
from trio.lowlevel import checkpoint

from ._core.poller import Poller, get_poller
from .memory.buffers import BufferPool
from .memory.readsize import ReadSizes
from .stream import Connection, check_memory_arguments

__all__ = ["open_connection"]


async def open_connection(
    host: str,
    port: int,
    *,
    poller: Poller | str = "auto",
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
) -> Connection:
    """Connect to ``host:port`` over TCP and return a ``Connection``.

    With a ``pool``, reads are budgeted as on a server connection (a proxy's
    upstream connection should share its server's pool).

    Tries each address ``getaddrinfo`` returns, in order, and raises the last
    ``OSError`` if none accepts.
    """
    if not isinstance(host, str | bytes):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if type(port) is not int:
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    check_memory_arguments(pool, read_sizes)
    if isinstance(poller, str):
        poller = get_poller(poller)
    elif not isinstance(poller, Poller):
        raise TypeError(f"poller must be a Poller or a name, not {type(poller).__name__}")
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no addresses for {host!r}")
    last_error: OSError | None = None
    for family, type_, proto, _canonname, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await _connect(sock, sockaddr, poller)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            return Connection(sock, poller=poller, pool=pool, read_sizes=read_sizes)
        except BaseException:
            sock.close()  # Connection registers nothing when it fails
            raise
    assert last_error is not None
    raise last_error


async def _connect(sock: socket.socket, sockaddr: tuple[object, ...], poller: Poller) -> None:
    err = sock.connect_ex(sockaddr)
    if err == 0:
        await checkpoint()
        return
    if err not in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
        raise _connect_failed(err, sockaddr)
    registration = poller.register(sock)
    try:
        await registration.wait_writable()
    finally:
        poller.unregister(registration)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise _connect_failed(err, sockaddr)


def _connect_failed(err: int, sockaddr: tuple[object, ...]) -> OSError:
    return OSError(err, f"connect to {sockaddr!r} failed: {errno.errorcode.get(err, err)}")
