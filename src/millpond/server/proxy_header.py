"""The PROXY protocol on a served connection: who may send one, reading it, who the peer is.

This module owns the server's side of HAProxy's PROXY protocol: before the
handler starts, check that the connection comes from an allowed load
balancer, read the header under a timeout and a size bound, and record the
original client on the connection (``Connection.getpeername()`` then reports
it; the load balancer's own address stays ``connection.socket.getpeername()``,
and the whole header is ``connection.proxy_header``). Parsing is
``millpond.protocols``' (no I/O); this module wraps the I/O around it.

Why peek: the header often arrives in the same segment as the client's first
bytes, and those must reach the handler untouched and without delay. Reading
into a buffer and handing the leftover to the handler would need a way to
push bytes back into a ``Connection``; peeking (``MSG_PEEK``) lets the parser
see what is queued, and only the header's own bytes are then taken
(``Registration.take_peeked`` of exactly its length). The rest stays in the
kernel for the handler's first receive. A short peek clears readiness like a
short read, so the wait for the rest of an incomplete header is woken by the
next bytes (poller.py, rule 3); but when the header is complete and bytes
follow it, no edge will come for those, so taking the header marks the socket
readable again.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Final, Literal, TypeAlias

import trio

from .._core.poller import Registration
from ..protocols import DEFAULT_MAX_V2_LENGTH, Parsed, ProxyHeader, ProxyHeaderParser
from ..protocols import ProxyProtocolError as ProxyProtocolError
from ..stream import Connection

__all__ = [
    "DEFAULT_ALLOW_FROM",
    "DEFAULT_PROXY_HEADER_TIMEOUT",
    "PROXY_MODES",
    "ProxyProtocolError",
    "check_allow_from",
    "check_proxy_mode",
    "read_header",
]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
ProxyMode: TypeAlias = Literal["off", "v1", "v2", "auto"]

#: What ``proxy_protocol`` may be.
PROXY_MODES: Final = ("off", "v1", "v2", "auto")

# Load balancers usually sit on the same host or the same private network; a
# header from anywhere else would let any client claim any address. So by
# default only loopback may send one; a deployment names its balancers.
DEFAULT_ALLOW_FROM: Final = ("127.0.0.0/8", "::1/128")

# A balancer sends the header at once, in its first segment; a connection
# that has not finished it in this time is not from a balancer that works.
DEFAULT_PROXY_HEADER_TIMEOUT: Final = 5.0

# The most a header can be: a v1 line is at most 107 bytes, a v2 header 16
# plus its declared length, which the parser refuses beyond this bound.
_PEEK_BYTES: Final = 16 + DEFAULT_MAX_V2_LENGTH


def check_proxy_mode(mode: object) -> ProxyMode:
    """Return ``mode`` if it is one of ``PROXY_MODES``; raise naming ``proxy_protocol``."""
    if not isinstance(mode, str):
        raise TypeError(f"proxy_protocol must be a str, not {type(mode).__name__}")
    if mode not in PROXY_MODES:
        raise ValueError(f"proxy_protocol must be one of {PROXY_MODES}, not {mode!r}")
    return mode  # type: ignore[return-value]


def check_allow_from(networks: object) -> tuple[Network, ...]:
    """The allowed load balancer networks, parsed; raise naming ``proxy_allow_from``.

    Each entry is an address or a network in CIDR form (``"10.0.0.0/8"``,
    ``"::1"``); host bits set are an error (``"10.0.0.1/8"``), as a typo
    there would widen the list silently.
    """
    if isinstance(networks, str) or not isinstance(networks, Iterable):
        raise TypeError("proxy_allow_from must be a sequence of networks (str), not a str")
    parsed = []
    for network in networks:
        if not isinstance(network, str):
            raise TypeError(f"proxy_allow_from holds a {type(network).__name__}, not a str")
        try:
            parsed.append(ipaddress.ip_network(network))
        except ValueError as exc:
            raise ValueError(f"proxy_allow_from: {exc}") from None
    return tuple(parsed)


def _allowed(connection: Connection, networks: Sequence[Network]) -> bool:
    if connection.socket.family == socket.AF_UNIX:
        return True  # a local process: whoever may open the socket file may speak
    try:
        host = connection.socket.getpeername()[0]
    except OSError:
        return False
    return _host_allowed(host, tuple(networks))


# A server hears from a few balancers, again and again: remembering the answer
# per address spares each connection the ipaddress parse and the network
# tests (10 of the header's ~100 us on the benchmark VM). Bounded, so peers
# from everywhere cannot grow it.
@functools.lru_cache(maxsize=1024)
def _host_allowed(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def read_header(
    connection: Connection,
    mode: Literal["v1", "v2", "auto"],
    networks: Sequence[Network],
    timeout: float | None,
) -> ProxyHeader:
    """Read the PROXY header at the start of ``connection``, leaving what follows queued.

    Raises ``ProxyProtocolError`` (a ``ValueError``) with the reason to log:
    a peer outside ``networks``, a malformed header, end of file before the
    header, or none within ``timeout`` seconds. On success the connection's
    ``getpeername()`` reports the original client.
    """
    if not _allowed(connection, networks):
        raise ProxyProtocolError(
            "a PROXY header from a peer outside proxy_allow_from: "
            f"{connection.socket.getpeername()!r}"
        )
    parser = ProxyHeaderParser(mode)
    registration = connection.poller.registration(connection.socket)
    # Usually the whole header is queued by the time the connection's task
    # runs: then it is read with no timeout scope, which costs more than the
    # parse (a quarter of the header's cost on the benchmark VM). Only a
    # header still on its way is waited for, under the timeout.
    header, fed = _read_queued(parser, registration, 0)
    if header is None:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while header is None:
                if registration.readable:  # a full peek, and still not a header
                    await trio.lowlevel.checkpoint()
                else:  # EAGAIN or a short peek: wait for more bytes
                    await registration.wait_readable()
                header, fed = _read_queued(parser, registration, fed)
        if header is None:
            raise ProxyProtocolError(f"no complete PROXY header within {timeout:g} s")
    connection._set_proxy_header(header)
    return header


def _read_queued(
    parser: ProxyHeaderParser, registration: Registration, fed: int
) -> tuple[ProxyHeader | None, int]:
    """Feed ``parser`` what is queued beyond the ``fed`` bytes it saw; take a whole header.

    Returns the header (its bytes taken from the socket, what follows left
    queued) or None, and how many queued bytes the parser has now seen.
    """
    queued = registration.peek(_PEEK_BYTES)
    if queued is None:  # nothing queued: EAGAIN, the edge is consumed
        return None, fed
    if not queued:
        parser.feed_eof()  # raises: the peer closed before the header ended
    if len(queued) > fed:
        answer = parser.feed(queued[fed:])
        if isinstance(answer, Parsed):
            _take(registration, answer.consumed, len(queued))
            return answer.header, len(queued)
    return None, len(queued)


def _take(registration: Registration, nbytes: int, peeked: int) -> None:
    # The header's bytes are queued (the parser saw them): one recv takes them,
    # and marks the socket readable again if the client's bytes follow.
    received = registration.take_peeked(nbytes, peeked)
    if received != nbytes:  # pragma: no cover - the kernel dropped queued bytes
        raise ProxyProtocolError(f"could not take the {nbytes}-byte header back ({received})")
