"""millpond: network servers on Trio with bounded memory and a fast edge-triggered I/O core.

Write a handler, serve it::

    import millpond, trio

    async def echo(stream: millpond.Connection) -> None:
        async for chunk in stream:
            await stream.send_all(chunk)

    trio.run(millpond.serve, echo, 7000)
"""

from .buffers import Buffer, BufferPool, BufferPoolStatistics, SizeClassStatistics
from .connect import open_connection
from .leaks import BufferLeakWarning, LeakReport
from .limiter import BufferLimiter, BufferLimiterStatistics, Pressure
from .poller import EpollPoller, Poller, PollerStatistics, Registration, TrioPoller, get_poller
from .readsize import DEFAULT_READ_SIZES, ReadSizes
from .server import Server, ServerStatistics, open_listeners, serve
from .sizeclasses import SIZE_CLASSES
from .stream import Connection

__all__ = [
    "DEFAULT_READ_SIZES",
    "SIZE_CLASSES",
    "Buffer",
    "BufferLeakWarning",
    "BufferLimiter",
    "BufferLimiterStatistics",
    "BufferPool",
    "BufferPoolStatistics",
    "Connection",
    "LeakReport",
    "Pressure",
    "ReadSizes",
    "SizeClassStatistics",
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
