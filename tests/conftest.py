"""Shared fixtures: every stream and server test runs against both pollers.

Every test also runs under a time limit (time_limits.py, whose hooks are
imported here), so a test that hangs fails with a clear message instead of
stopping the whole run; and under a leak-presence check (Netty's
``LeakPresenceDetector``): every lease is tracked, and a test fails if it
ends with a buffer leased or leaked, or a byte of a budget held, in any pool
or limiter made during it (``no_memory_left``). A test that means to leave
something held says so with ``@pytest.mark.allow_leaks("why")``.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

# pytest finds hooks by name in this module: the time limits live in their own.
from time_limits import (  # noqa: F401
    pytest_addoption,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
from time_limits import pytest_configure as configure_time_limits

import millpond
from millpond.memory.census import Census
from millpond.memory.leaks import LEAK_DETECTION_ENV_VAR

# Every lease records where it was made (Netty's "paranoid" level), here and in
# the servers that tests start as subprocesses (they inherit the environment).
os.environ.setdefault(LEAK_DETECTION_ENV_VAR, "all")

POLLERS = ["epoll", "trio"] if sys.platform == "linux" else ["trio"]


def pytest_configure(config: pytest.Config) -> None:
    configure_time_limits(config)
    config.addinivalue_line(
        "markers",
        "allow_leaks(reason): this test means to end with memory held; skip the "
        "leak-presence check (conftest.no_memory_left)",
    )


@pytest.fixture(autouse=True)
def no_memory_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a pool or limiter made during it still holds anything at its end.

    Runs around the whole test, Trio run and async fixtures included, so it
    looks once every task is gone: a leased buffer, a leaked one (found by the
    garbage collector, even though the pool reclaimed it), a quarantined slot,
    or a byte of budget held by anybody is a failure, named with where it was
    leased.
    """
    if request.node.get_closest_marker("allow_leaks") is not None:
        yield
        return
    with Census() as census:
        yield
    held = census.held()
    if held:
        pytest.fail(
            "memory still held at the end of the test (leak-presence check):\n  "
            + "\n  ".join(held),
            pytrace=False,
        )


@pytest.fixture(params=POLLERS)
def poller_name(request: pytest.FixtureRequest) -> str:
    """The name of the poller under test ("epoll" or "trio")."""
    return str(request.param)


Handler = Callable[[millpond.Connection], Awaitable[object]]


@pytest.fixture
async def start_server(
    poller_name: str, nursery: trio.Nursery
) -> AsyncIterator[Callable[[Handler], Awaitable[millpond.Server]]]:
    """Start a ``millpond.Server`` on 127.0.0.1:0 in the test's nursery."""

    async def start(handler: Handler) -> millpond.Server:
        server = millpond.Server(handler, 0, host="127.0.0.1", poller=poller_name)
        await nursery.start(server.run)
        return server

    yield start


async def started_server(
    nursery: trio.Nursery, handler: Handler, poller_name: str, **kwargs: object
) -> tuple[millpond.Server, int]:
    """``millpond.Server(handler, **kwargs)`` on 127.0.0.1, started in ``nursery``; and its port."""
    server = millpond.Server(handler, 0, host="127.0.0.1", poller=poller_name, **kwargs)  # type: ignore[arg-type]
    await nursery.start(server.run)
    return server, server_port(server)


def server_port(server: millpond.Server) -> int:
    """The port a started server listens on."""
    return int(server.addresses[0][1])


async def connect(server: millpond.Server, poller_name: str) -> millpond.Connection:
    """A client connection to ``server`` over loopback."""
    return await millpond.open_connection("127.0.0.1", server_port(server), poller=poller_name)


async def echo(stream: millpond.Connection) -> None:
    """The echo handler most tests serve."""
    async for chunk in stream:
        await stream.send_all(chunk)


async def zero_copy_echo(stream: millpond.Connection) -> None:
    """Echo through ``receive_buffer``: every read is a lease of the pool."""
    while True:
        async with stream.receive_buffer() as buffer:
            if not buffer.nbytes:
                return
            await stream.send_all(buffer.view)


def open_fds() -> set[int]:
    """The fd numbers this process has open (Linux: /proc/self/fd).

    Listing the directory opens an fd of its own, closed again by the time
    the listing returns: only numbers still open afterwards count.
    """
    open_now = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        open_now.add(int(name))
    return open_now


async def socket_pair(
    poller_name: str,
    pool: millpond.BufferPool | None = None,
    read_sizes: millpond.ReadSizes | None = None,
) -> tuple[millpond.Connection, millpond.Connection]:
    """Two connected ``Connection``s over a real loopback TCP connection.

    The second (the accepted side) reads through ``pool`` when one is given,
    with ``read_sizes``.
    """
    listeners = await millpond.open_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    try:
        port = listener.getsockname()[1]
        client = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
        poller = millpond.get_poller(poller_name)
        registration = poller.register(listener)
        try:
            while (accepted := registration.accept()) is None:
                await registration.wait_readable()
            sock = accepted[0]
        finally:
            poller.unregister(registration)
        return client, millpond.Connection(sock, poller=poller, pool=pool, read_sizes=read_sizes)
    finally:
        listener.close()


# How long (real time) a run must be idle before the idle clock jumps. Loopback
# I/O in flight completes in microseconds, so a tenth of a second never jumps
# over a reply that is on its way, and a test still takes a fraction of a second.
IDLE_JUMP_SECONDS = 0.1


@pytest.fixture
def idle_clock() -> trio.testing.MockClock:
    """Trio's mock clock, jumping to the next deadline once the run has been idle 0.1 s.

    For timeouts over real sockets: ``autojump_clock`` jumps as soon as every
    task waits, even for a loopback reply a few microseconds away; this one
    waits that long in real time first.
    """
    return trio.testing.MockClock(autojump_threshold=IDLE_JUMP_SECONDS)


async def settle_kernel_queue(sock: socket.socket, max_seconds: float = 5.0) -> int:
    """Wait until the bytes queued to be read on ``sock`` stop growing; return them.

    ``wait_all_tasks_blocked`` says every task waits, not that the kernel has
    delivered what was sent: on a busy machine loopback delivery runs in
    ksoftirqd a moment later. A test that needs the receive queue full (the
    sender blocked on a closed window) waits here too: three looks in a row,
    5 ms apart, that find the same count (bounded by ``max_seconds``).
    """
    queued = array.array("i", [0])
    last, same = -1, 0
    with trio.move_on_after(max_seconds):
        while same < 3:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
            same = same + 1 if queued[0] == last else 0
            last = queued[0]
            await trio.sleep(0.005)
    return last


__all__ = [
    "connect",
    "echo",
    "open_fds",
    "server_port",
    "settle_kernel_queue",
    "socket_pair",
    "started_server",
    "zero_copy_echo",
]
