"""Timeouts and deadlines: each kind closes the connection it should, when it should; counted."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from conftest import echo, started_server

import millpond

HOST = "127.0.0.1"


async def closed_by_server(client: millpond.Connection) -> None:
    """Read until the server closes (EOF or reset); fails if it never does."""
    with trio.fail_after(3600):  # server time: the autojump clock gets there at once
        try:
            while await client.receive_some():
                pass
        except trio.BrokenResourceError:
            pass


async def test_an_idle_connection_is_closed_after_idle_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, port = await started_server(nursery, echo, poller_name, idle_timeout=30)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    opened = trio.current_time()
    await closed_by_server(client)
    assert trio.current_time() - opened == pytest.approx(30, abs=0.01)
    assert server.statistics().closed["idle_timeout"] == 1
    await client.aclose()


async def test_traffic_keeps_a_connection_alive_past_idle_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, port = await started_server(nursery, echo, poller_name, idle_timeout=30)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    for _ in range(10):  # 200 s in all, never 30 s quiet
        await trio.sleep(20)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
    last = trio.current_time()
    await closed_by_server(client)
    assert trio.current_time() - last == pytest.approx(30, abs=0.01)
    assert server.statistics().closed["idle_timeout"] == 1


async def test_a_receive_waiting_too_long_is_a_read_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, port = await started_server(nursery, echo, poller_name, read_timeout=5)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    opened = trio.current_time()
    await closed_by_server(client)
    assert trio.current_time() - opened == pytest.approx(5, abs=0.01)
    assert server.statistics().closed["read_timeout"] == 1
    await client.aclose()


async def test_a_handler_busy_elsewhere_is_not_a_read_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    async def slow_thinker(stream: millpond.Connection) -> None:
        request = await stream.receive_some()
        await trio.sleep(60)  # twelve read timeouts, but no receive is waiting
        await stream.send_all(request.upper())

    server, port = await started_server(nursery, slow_thinker, poller_name, read_timeout=5)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    await client.send_all(b"think")
    with trio.fail_after(3600):
        assert await client.receive_some() == b"THINK"
    assert server.statistics().closed["read_timeout"] == 0
    await client.aclose()


async def test_a_client_that_stops_reading_is_a_write_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    async def firehose(stream: millpond.Connection) -> None:
        while True:
            await stream.send_all(b"w" * 65536)

    server, port = await started_server(
        nursery, firehose, poller_name, write_timeout=10, idle_timeout=600
    )
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    await trio.testing.wait_all_tasks_blocked()  # the handler's send_all is blocked
    blocked = trio.current_time()
    with trio.fail_after(3600):
        while server.statistics().closed["write_timeout"] == 0:
            await trio.sleep(1)
    assert trio.current_time() - blocked == pytest.approx(10, abs=1.01)
    await client.aclose()


async def test_a_deadline_stops_a_client_that_trickles(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    # Slowloris: a byte a second keeps any inactivity timeout happy; a
    # deadline for the whole request does not.
    async def headers_within_ten_seconds(stream: millpond.Connection) -> None:
        stream.deadline = trio.current_time() + 10
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some()
        await stream.send_all(b"never reached")

    server, port = await started_server(
        nursery, headers_within_ten_seconds, poller_name, idle_timeout=5, read_timeout=5
    )
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    opened = trio.current_time()

    async def trickle() -> None:
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
                await client.send_all(bytes([byte]))
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(trickle)
    await closed_by_server(client)
    assert trio.current_time() - opened == pytest.approx(10, abs=1.01)
    assert server.statistics().closed["deadline"] == 1
    await client.aclose()


async def test_a_deadline_moved_earlier_fires_at_the_new_time(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    async def changes_its_mind(stream: millpond.Connection) -> None:
        stream.deadline = trio.current_time() + 1000
        await trio.sleep(1)
        stream.deadline = trio.current_time() + 2
        await trio.sleep_forever()

    server, port = await started_server(nursery, changes_its_mind, poller_name)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    opened = trio.current_time()
    await closed_by_server(client)
    assert trio.current_time() - opened == pytest.approx(3, abs=0.01)
    assert server.statistics().closed["deadline"] == 1
    await client.aclose()


async def test_a_deadline_moved_later_is_honoured(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    async def extends(stream: millpond.Connection) -> None:
        stream.deadline = trio.current_time() + 5
        await trio.sleep(4)
        stream.deadline = trio.current_time() + 20  # the body may take longer
        await trio.sleep(15)
        await stream.send_all(b"made it")

    server, port = await started_server(nursery, extends, poller_name)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    with trio.fail_after(3600):
        assert await client.receive_some() == b"made it"
    assert server.statistics().closed["deadline"] == 0
    await client.aclose()


async def test_a_connection_past_its_deadline_is_closed_without_memory(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    limiter = millpond.BufferLimiter(64 * 1024)

    async def read_with_a_deadline(stream: millpond.Connection) -> None:
        stream.deadline = trio.current_time() + 3
        await stream.receive_some()

    server, port = await started_server(  # reads wait for memory: no guaranteed minimum
        nursery, read_with_a_deadline, poller_name, limiter=limiter, guaranteed_read=0
    )
    limiter.acquire_on_behalf_of_nowait("hog", 64 * 1024)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    await client.send_all(b"cannot be afforded")
    await closed_by_server(client)
    assert server.statistics().closed["deadline"] == 1
    assert limiter.bytes_in_use == 64 * 1024 and limiter.statistics().tasks_waiting == 0
    await client.aclose()


async def test_timeouts_apply_to_many_connections_each_on_its_own_clock(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, port = await started_server(nursery, echo, poller_name, idle_timeout=10)
    clients = []
    for _ in range(20):
        clients.append(await millpond.open_connection(HOST, port, poller=poller_name))
        await trio.sleep(1)
    # Opened at 0, 1, ..., 19 s; now it is 20.5 s: those opened at 0 to 10 s
    # are past their 10 s, the other nine are not.
    await trio.sleep(0.5)
    assert server.statistics().closed["idle_timeout"] == 11
    for client in clients:
        await closed_by_server(client)
        await client.aclose()
    assert server.statistics().closed["idle_timeout"] == 20


async def test_closed_connections_leave_no_timer_entries_behind(
    poller_name: str, nursery: trio.Nursery
) -> None:
    server, port = await started_server(nursery, echo, poller_name, idle_timeout=3600)
    for _ in range(300):  # closed long before their timers would come due
        client = await millpond.open_connection(HOST, port, poller=poller_name)
        await client.send_all(b"x")
        assert await client.receive_some() == b"x"
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert len(server._reaper._heap) <= 2 * 64 + 1
    assert server.statistics().closed["eof"] == 300


def test_a_deadline_must_be_a_number() -> None:
    async def check() -> None:
        near, far = __import__("socket").socketpair()
        with far:
            connection = millpond.Connection(near)
            with pytest.raises(TypeError, match="deadline"):
                connection.deadline = "soon"  # type: ignore[assignment]
            with pytest.raises(ValueError, match="NaN"):
                connection.deadline = float("nan")
            connection.deadline = 5
            assert connection.deadline == 5.0
            connection.close()

    trio.run(check)


async def test_connections_read_the_clock_trio_current_time_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reaper hands each connection the run clock's own current_time, a shortcut
    # for trio.current_time() on the hot path: the two must agree (here on a MockClock).
    from millpond.server.timeouts import Reaper, Timeouts

    clocks = []

    class Timed:
        deadline = math.inf
        _last_activity = 0.0
        _receive_waiting_since = None
        _send_blocked_since = None

        def _start_timing(self, clock: object, deadline_changed: object) -> None:
            clocks.append(clock)

    Reaper(Timeouts(read=1.0)).watch(Timed(), trio.CancelScope())  # type: ignore[arg-type]
    await trio.sleep(5)
    assert callable(clocks[0])
    assert clocks[0]() == trio.current_time()
