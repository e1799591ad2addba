"""millpond: network servers on Trio with bounded memory and a fast edge-triggered I/O core.

Write a handler, serve it::

    import millpond, trio

    async def echo(stream: millpond.Connection) -> None:
        async for chunk in stream:
            await stream.send_all(chunk)

    trio.run(millpond.serve, echo, 7000)
"""

from .poller import EpollPoller, Poller, PollerStatistics, Registration, TrioPoller, get_poller
from .server import Server, ServerStatistics, open_listeners, serve
from .stream import Connection, open_connection

__all__ = [
    "Connection",
    "EpollPoller",
    "Poller",
    "PollerStatistics",
    "Registration",
    "Server",
    "ServerStatistics",
    "TrioPoller",
    "get_poller",
    "open_connection",
    "open_listeners",
    "serve",
]
