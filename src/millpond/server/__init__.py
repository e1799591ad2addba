"""Serving: listeners, the accept loop, and the nursery that owns every connection.

``server.py`` holds ``Server`` and ``serve`` (accepting, running handlers,
surviving their errors, shutting down); ``listeners.py`` binds the listening
sockets (TCP, Unix, or ones you bring); ``arguments.py`` checks every
argument first. The public names are importable from ``millpond``.
"""

from .arguments import DEFAULT_BUDGET_BYTES, DEFAULT_RESERVE_FRACTION, check_handler
from .listeners import DEFAULT_BACKLOG, open_listeners, open_unix_listener
from .proxy_header import DEFAULT_ALLOW_FROM, DEFAULT_PROXY_HEADER_TIMEOUT, PROXY_MODES
from .server import (
    CLOSE_REASONS,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_GUARANTEED_READ,
    ConnectionStatistics,
    Handler,
    Server,
    ServerStatistics,
    current_server,
    serve,
)
from .tls import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = [
    "CLOSE_REASONS",
    "DEFAULT_ALLOW_FROM",
    "DEFAULT_PROXY_HEADER_TIMEOUT",
    "PROXY_MODES",
    "DEFAULT_BACKLOG",
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_GUARANTEED_READ",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_RESERVE_FRACTION",
    "ConnectionStatistics",
    "Handler",
    "Server",
    "ServerStatistics",
    "check_handler",
    "current_server",
    "open_listeners",
    "open_unix_listener",
    "serve",
]
