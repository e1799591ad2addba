"""TLS for served connections: the handshake under its timeout, and a bounded close.

This module owns wrapping an accepted ``Connection`` in ``trio.SSLStream``
(server side) and the two moments TLS adds to a connection's life: the
handshake, which must finish within ``handshake_timeout`` (a client that
connects and never finishes it is reaped), and the close, which sends
``close_notify`` without letting a peer that stopped reading hold the
server. Everything between is ``trio.SSLStream``'s.
"""

from __future__ import annotations

import ssl

import trio

from ..stream import Connection

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLS_CLOSE_TIMEOUT",
    "check_ssl_context",
    "close",
    "handshake",
    "peer_closed",
]

# How long a client may take to finish the TLS handshake. A real client needs
# a few round trips (milliseconds, or a second on a bad mobile link); ten
# seconds leaves room for that and still reaps clients that connect and stall,
# as nginx's ssl_handshake_timeout (60 s) and HAProxy's timeout client do.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# How long closing may spend sending close_notify to a peer that may not read.
TLS_CLOSE_TIMEOUT = 1.0


def check_ssl_context(context: object) -> ssl.SSLContext | None:
    """Raise ``TypeError`` naming ``ssl_context`` unless it is an ``ssl.SSLContext`` or None."""
    if context is not None and not isinstance(context, ssl.SSLContext):
        kind = type(context).__name__
        raise TypeError(f"ssl_context must be an ssl.SSLContext or None, not {kind}")
    return context


async def handshake(
    connection: Connection, context: ssl.SSLContext, timeout: float | None
) -> trio.SSLStream[Connection] | None:
    """Wrap ``connection`` in TLS and finish the handshake; None if it took over ``timeout``.

    A handshake that fails (garbage, a protocol the context refuses, a peer
    that went away) raises ``trio.BrokenResourceError`` from Trio, with the
    ``ssl.SSLError`` as its cause.
    """
    stream = trio.SSLStream(connection, context, server_side=True)
    with trio.move_on_after(timeout if timeout is not None else float("inf")):
        await stream.do_handshake()
        return stream
    return None


async def close(stream: trio.SSLStream[Connection]) -> None:
    """Send ``close_notify`` and close, within ``TLS_CLOSE_TIMEOUT``; never raises for the peer."""
    with trio.move_on_after(TLS_CLOSE_TIMEOUT):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    stream.transport_stream.close()


def peer_closed(stream: trio.SSLStream[Connection]) -> bool:
    """Whether the peer has closed its side of TLS (sent ``close_notify``), for the close reason.

    A handler that stops at the TLS end of file returns before the TCP one
    arrives, so ``Connection.eof_received`` cannot tell. Trio does not say
    either, so this asks the stream's ``ssl.SSLObject`` (a private attribute
    of Trio's): once ``close_notify`` is in, a read returns ``b""`` at once;
    otherwise it would need more data. A Trio without that attribute, or any
    surprise, answers False (the connection then counts as ``done``, not
    ``eof``); ``tests/test_tls.py`` notices if that ever happens.
    """
    ssl_object = getattr(stream, "_ssl_object", None)
    if not isinstance(ssl_object, ssl.SSLObject):
        return False
    try:
        return ssl_object.read(1) == b""
    except (ssl.SSLError, ValueError):
        return False
