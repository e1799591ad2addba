"""Serving: listeners, the accept loop, and the nursery that owns every connection.

``server.py`` holds ``Server`` and ``serve`` (accepting, running handlers,
surviving their errors); ``listeners.py`` binds the listening sockets. The
public names are importable from ``millpond``.
"""

from .listeners import DEFAULT_BACKLOG, open_listeners
from .server import Handler, Server, ServerStatistics, serve

__all__ = ["DEFAULT_BACKLOG", "Handler", "Server", "ServerStatistics", "open_listeners", "serve"]
