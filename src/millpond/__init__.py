"""millpond: network servers on Trio with bounded memory and a fast edge-triggered I/O core.

Write a handler, serve it::

    import millpond, trio

    async def echo(stream: millpond.Connection) -> None:
        async for chunk in stream:
            await stream.send_all(chunk)

    trio.run(millpond.serve, echo, 7000)
"""

from ._core.poller import (
    POLLER_NAMES,
    EpollPoller,
    Poller,
    PollerStatistics,
    Registration,
    TrioPoller,
    get_poller,
)
from .connect import DEFAULT_HAPPY_EYEBALLS_DELAY, open_connection
from .memory.buffers import Buffer, BufferPool, BufferPoolStatistics, SizeClassStatistics
from .memory.faults import LeaseFaults
from .memory.leaks import BufferLeakWarning, LeakReport
from .memory.limiter import BufferLimiter, BufferLimiterStatistics, Pressure
from .memory.readsize import DEFAULT_READ_SIZES, ReadSizes
from .memory.sizeclasses import SIZE_CLASSES
from .server import Server, ServerStatistics, current_server, open_listeners, serve
from .stream import Connection

__all__ = [
    "DEFAULT_HAPPY_EYEBALLS_DELAY",
    "DEFAULT_READ_SIZES",
    "POLLER_NAMES",
    "SIZE_CLASSES",
    "Buffer",
    "BufferLeakWarning",
    "BufferLimiter",
    "BufferLimiterStatistics",
    "BufferPool",
    "BufferPoolStatistics",
    "Connection",
    "LeakReport",
    "LeaseFaults",
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
    "current_server",
    "get_poller",
    "open_connection",
    "open_listeners",
    "serve",
]
