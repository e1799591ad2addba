"""Where the debug endpoint listens: checking the address, loopback or not, a worker's port.

This module owns the rules about the debug endpoint's address, apart from
the endpoint itself so that checking them needs no HTTP library: the
address is a ``(host, port)`` pair (``host`` None for every interface, as
``open_listeners`` takes it; ``port`` 0 for a free one); the endpoint needs
h11, which is the ``debug`` extra's dependency; and with ``--workers N``
worker ``i`` listens on ``port + i``. ``Server`` calls
:func:`check_debug_address` when it is made, so a bad address or a missing
h11 is an error before anything binds.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from ..server.listeners import adopt_listeners, check_host, check_port

__all__ = [
    "DebugAddress",
    "check_debug_address",
    "check_debug_sockets",
    "is_loopback",
    "worker_debug_address",
    "worker_debug_listing",
]

#: ``(host, port)``: where the debug endpoint listens (host None: every interface).
DebugAddress = tuple[str | None, int]


def check_debug_address(address: object) -> DebugAddress:
    """Return ``address`` as a ``(host, port)`` tuple, or raise naming ``debug_address``.

    Raises ``TypeError``/``ValueError`` for anything but a (str or None, port)
    pair, and ``ImportError`` when h11, which the endpoint speaks HTTP with,
    is not installed (``pip install 'millpond[debug]'``).
    """
    if not isinstance(address, tuple | list) or len(address) != 2:
        raise TypeError(
            f"debug_address must be a (host, port) pair, such as ('127.0.0.1', 6060), "
            f"not {address!r}"
        )
    host, port = address
    try:
        check_host(host)
        check_port(port)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"debug_address: {exc}") from None
    _check_h11("debug_address")
    return host, port


def check_debug_sockets(sockets: object) -> list[socket.socket]:
    """Adopt listening sockets bound elsewhere for the debug endpoint, or raise naming them.

    What a ``--workers`` supervisor passes each worker, so that the worker
    replacing another (SIGHUP) serves the same debug port at once, from the
    same socket, instead of finding it taken. The checks are
    ``Server(sockets=...)``'s, and h11 must be installed.
    """
    try:
        adopted = adopt_listeners(sockets)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"debug_sockets: {exc}") from None
    if not adopted:
        raise ValueError("debug_sockets must hold at least one listening socket")
    _check_h11("debug_sockets")
    return adopted


def _check_h11(argument: str) -> None:
    if importlib.util.find_spec("h11") is None:
        raise ImportError(
            f"{argument} needs h11, which the debug endpoint speaks HTTP with: "
            "pip install 'millpond[debug]'"
        )


def is_loopback(sockaddr: Any) -> bool:
    """Whether a bound address (``getsockname()``) is reachable from this machine only."""
    if isinstance(sockaddr, str):  # a Unix socket path
        return True
    host = str(sockaddr[0]).split("%", 1)[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_debug_address(address: DebugAddress, index: int) -> DebugAddress:
    """Worker ``index``'s debug address under ``--workers``: the base port plus the index.

    Port 0 stays 0 (a free port for each). The ``--workers`` supervisor binds
    these and hands each worker its own (``Server(debug_sockets=...)``).
    """
    host, port = address
    return host, port + index if port else 0


def worker_debug_listing(addresses: Sequence[Sequence[Any]]) -> str:
    """What a supervisor logs at start: each worker's debug page, from the sockets it bound.

    ``addresses[i]`` are worker ``i``'s bound debug addresses (``getsockname()``):
    ``worker 0: http://127.0.0.1:6060/debug/millpond/, worker 1: http://127.0.0.1:6061/...``.
    """
    if isinstance(addresses, str) or not isinstance(addresses, Sequence):
        raise TypeError(f"addresses must be a sequence per worker, not {addresses!r}")
    return ", ".join(
        f"worker {i}: " + " and ".join(f"http://{_host_port(a)}/debug/millpond/" for a in bound)
        for i, bound in enumerate(addresses)
    )


def _host_port(sockaddr: Any) -> str:
    host, port = str(sockaddr[0]), sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
