"""Client connections: ``open_connection`` dials ``host:port`` and returns a ``Connection``.

This module owns the connect itself: resolving the name, racing the
addresses it resolves to (Happy Eyeballs), the non-blocking ``connect`` on
the poller, the TLS handshake when asked for one, and one time limit over all
of it. Everything after that is the ``Connection``'s job (stream.py), or
``trio.SSLStream``'s on top of it.

Happy Eyeballs: our own, on the caller's poller
-----------------------------------------------
A name often resolves to several addresses (an IPv6 and an IPv4 one at
least), and some of them may not work: a host that thinks it has IPv6 and
does not, a route that is down. Trying them one after the other waits out a
black-holed address's whole TCP timeout (a minute or more) before the next;
trying them all at once loads the server. RFC 8305 (Happy Eyeballs v2) sits
between: start with the first address; whenever an attempt has failed or has
been running ``happy_eyeballs_delay`` seconds (250 ms by default), start the
next one too; the first to connect wins, and every other attempt is
cancelled and its socket closed. The addresses are tried in the order the
resolver gives, with the families interleaved (RFC 8305 section 4: IPv6,
IPv4, IPv6, ... when IPv6 comes first), so a broken family costs one delay,
not one per address.

``trio.open_tcp_stream`` runs the same race (Chrome's algorithm, RFC 6555),
and reusing it was the alternative: open a ``trio.SocketStream`` with it and
adopt its socket (``detach()``, then a ``socket.socket`` on the fd) into a
``Connection``. This module writes the algorithm again instead, in the same
shape (a chain of attempts in one nursery, each started when the one before
failed or ``happy_eyeballs_delay`` passed), because that is the more robust
choice here:

* The errors stay what they were. With one address (an IP literal, the
  common case) the caller gets that connect's own ``OSError``
  (``ConnectionRefusedError``, with its errno), as ``open_connection`` always
  did; ``trio.open_tcp_stream`` wraps even a single failure in an errno-less
  ``OSError("all attempts to connect ... failed")``. With several addresses
  both raise that one, its ``__cause__`` an ``ExceptionGroup`` of each
  attempt's error.
* Every wait is on the caller's ``poller``, through a registration that is
  unregistered before its socket is closed (poller.py, rule 1), like every
  other millpond socket. No fd passes from Trio's socket objects and I/O
  manager to ours, so there is no hand-over to get wrong (a socket closed
  twice, or a custom ``trio.socket`` factory's object that has no fd to
  detach).
* ``happy_eyeballs_delay=None`` means one attempt at a time, as Trio's
  documentation says; ``trio.open_tcp_stream`` itself (0.29 to 0.35) reads
  None as the default delay.

What it costs: about sixty lines of concurrency that Trio already tests.
They are kept in Trio's shape so the two can be read side by side, and
tests/test_connect.py covers the race: the loser's sockets closed, a
black-holed address overtaken, every failure path leaving no fd behind.

The time limit
--------------
``connect_timeout`` bounds the whole call (resolving, every attempt, the TLS
handshake) and raises ``trio.TooSlowError``, what ``trio.fail_after`` around
``trio.open_tcp_stream`` raises, so code moving from Trio catches the same
thing; an ``OSError`` keeps meaning "an address said no". Whatever had been
opened by then is closed.
"""

from __future__ import annotations

import errno
import math
import socket
import ssl
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any, Final, TypeAlias, overload

import trio
from trio.lowlevel import checkpoint

from ._core.poller import Poller, get_poller
from .memory.buffers import BufferPool
from .memory.readsize import ReadSizes
from .stream import Connection, check_memory_arguments

__all__ = ["DEFAULT_HAPPY_EYEBALLS_DELAY", "interleave_families", "open_connection"]

# How long an attempt runs before the next address is tried beside it. RFC
# 8305 section 5 recommends 250 ms ("Connection Attempt Delay"), and Trio's
# open_tcp_stream uses the same: about one slow round trip, so a working
# first address almost always wins alone, and a black-holed one costs a
# quarter of a second instead of a TCP timeout.
DEFAULT_HAPPY_EYEBALLS_DELAY: Final = 0.250

# One getaddrinfo entry: family, type, proto, canonical name, socket address.
AddressInfo: TypeAlias = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


@overload
async def open_connection(
    host: str,
    port: int,
    *,
    ssl_context: None = None,
    server_hostname: None = None,
    connect_timeout: float | None = None,
    happy_eyeballs_delay: float | None = DEFAULT_HAPPY_EYEBALLS_DELAY,
    poller: Poller | str = "auto",
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
) -> Connection: ...


@overload
async def open_connection(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None = None,
    connect_timeout: float | None = None,
    happy_eyeballs_delay: float | None = DEFAULT_HAPPY_EYEBALLS_DELAY,
    poller: Poller | str = "auto",
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
) -> trio.SSLStream[Connection]: ...


async def open_connection(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float | None = None,
    happy_eyeballs_delay: float | None = DEFAULT_HAPPY_EYEBALLS_DELAY,
    poller: Poller | str = "auto",
    pool: BufferPool | None = None,
    read_sizes: ReadSizes | None = None,
) -> Connection | trio.SSLStream[Connection]:
    """Connect to ``host:port`` over TCP and return a ``Connection``, or a TLS stream over one.

    ``host`` is a name or an IP address. A name that resolves to several
    addresses is dialled the Happy Eyeballs way (RFC 8305): the next address
    is tried beside the last one whenever that one failed or has been trying
    for ``happy_eyeballs_delay`` seconds (default 0.25; ``None``: one at a
    time), and the first to connect wins; the others are closed.

    With an ``ssl_context`` (``ssl.create_default_context()`` for a public
    server) the connection is wrapped in ``trio.SSLStream``, the handshake is
    done before this returns, and the ``trio.SSLStream`` is returned (its
    ``transport_stream`` is the ``Connection``). ``server_hostname`` is the
    name the certificate must carry and the one sent as SNI; it defaults to
    ``host`` (for an IP address, the certificate must list that address, and
    no SNI is sent). A failed handshake (a certificate that does not verify,
    a peer that is not speaking TLS) raises ``trio.BrokenResourceError``, its
    ``__cause__`` the ``ssl.SSLError``.

    ``connect_timeout`` (seconds; ``None``: no limit) bounds all of it:
    resolving, every attempt, the handshake. Past it, ``trio.TooSlowError``
    (as ``trio.fail_after`` would raise). A connect refused or unreachable is
    an ``OSError``: with one address, that connect's own (e.g.
    ``ConnectionRefusedError``); with several, an ``OSError`` whose
    ``__cause__`` is an ``ExceptionGroup`` of every attempt's. Whatever
    fails, every socket this call opened is closed.

    With a ``pool``, reads are budgeted as on a server connection (a proxy's
    upstream connection should share its server's pool).
    """
    if not isinstance(host, str | bytes):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if type(port) is not int:
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        kind = type(ssl_context).__name__
        raise TypeError(f"ssl_context must be an ssl.SSLContext or None, not {kind}")
    if server_hostname is not None:
        if not isinstance(server_hostname, str):
            kind = type(server_hostname).__name__
            raise TypeError(f"server_hostname must be a str or None, not {kind}")
        if ssl_context is None:
            raise ValueError("server_hostname is only meaningful with an ssl_context")
    timeout = _seconds("connect_timeout", connect_timeout)
    delay = _seconds("happy_eyeballs_delay", happy_eyeballs_delay)
    check_memory_arguments(pool, read_sizes)
    if isinstance(poller, str):
        poller = get_poller(poller)
    elif not isinstance(poller, Poller):
        raise TypeError(f"poller must be a Poller or a name, not {type(poller).__name__}")
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if ssl_context is not None and server_hostname is None:
        server_hostname = name

    with trio.move_on_after(math.inf if timeout is None else timeout):
        stage = "resolving"
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:  # getaddrinfo raises instead, but a custom resolver might not
            raise OSError(f"no addresses for {_host_port(name, port)}")
        stage = "connecting to"
        sock = await _dial(
            interleave_families(infos), math.inf if delay is None else delay, poller, name, port
        )
        try:
            connection = Connection(sock, poller=poller, pool=pool, read_sizes=read_sizes)
        except BaseException:
            sock.close()  # Connection registers nothing when it fails
            raise
        if ssl_context is None:
            return connection
        stage = "the TLS handshake with"
        return await _handshake(connection, ssl_context, server_hostname)
    raise trio.TooSlowError(
        f"{stage} {_host_port(name, port)} took longer than connect_timeout ({timeout:g} s)"
    )


def interleave_families(infos: Sequence[AddressInfo]) -> list[AddressInfo]:
    """Order addresses as RFC 8305 section 4 says: families alternate, the first one first.

    The resolver's order is kept within each family. ``[v6a, v6b, v4a, v4b]``
    becomes ``[v6a, v4a, v6b, v4b]``: if one family is broken, the second
    attempt (started at most one delay later) already uses the other.
    """
    first_family = infos[0][0]
    preferred = [info for info in infos if info[0] == first_family]
    others = [info for info in infos if info[0] != first_family]
    return [info for pair in zip_longest(preferred, others) for info in pair if info is not None]


async def _dial(
    targets: list[AddressInfo], delay: float, poller: Poller, host: str, port: int
) -> socket.socket:
    """Connect to one of ``targets``, racing them (see the module's header); return the socket.

    Each attempt owns its socket until it returns it connected, and closes it
    on any failure or cancellation; the one that wins hands it over here with
    no checkpoint in between, so exactly one socket comes out and every other
    is closed.
    """
    if len(targets) == 1:
        # Nothing to race: no task, and that connect's own error as it is.
        return await _connect_one(targets[0], poller)
    winner: socket.socket | None = None
    errors: list[OSError] = []

    async def attempt(target: AddressInfo, failed: trio.Event) -> None:
        nonlocal winner
        try:
            sock = await _connect_one(target, poller)
        except OSError as exc:
            errors.append(exc)
            failed.set()  # the next address need not wait out the delay
            return
        # No checkpoint since the connect completed, so of two attempts that
        # connect in the same scheduler pass only the first sees no winner.
        if winner is None:
            winner = sock
            nursery.cancel_scope.cancel()
        else:
            sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for target in targets:
                failed = trio.Event()
                nursery.start_soon(attempt, target, failed)
                with trio.move_on_after(delay):
                    await failed.wait()
    except BaseException:
        # Cancelled from outside (the caller, connect_timeout) after a win.
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        message = f"all attempts to connect to {_host_port(host, port)} failed"
        raise OSError(message) from ExceptionGroup(message, errors)
    return winner


async def _connect_one(target: AddressInfo, poller: Poller) -> socket.socket:
    """One attempt: a new socket connected to ``target``, or closed again and an exception."""
    family, type_, proto, _canonname, sockaddr = target
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        await _connect(sock, sockaddr, poller)
    except BaseException:
        sock.close()  # _connect has unregistered it
        raise
    return sock


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


async def _handshake(
    connection: Connection, context: ssl.SSLContext, server_hostname: str | None
) -> trio.SSLStream[Connection]:
    """Wrap ``connection`` in TLS and finish the handshake; close it if that fails."""
    try:
        stream = trio.SSLStream(connection, context, server_hostname=server_hostname)
        await stream.do_handshake()
    except BaseException:
        connection.close()
        raise
    return stream


def _seconds(name: str, value: object) -> float | None:
    """``None``, or a duration in seconds (``>= 0``, infinity allowed); raise naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
