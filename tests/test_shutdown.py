"""Graceful shutdown: stop accepting at once, let handlers finish for a while, cancel the rest."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from conftest import echo, open_fds

import millpond

HOST = "127.0.0.1"


async def start(
    nursery: trio.Nursery, handler: millpond.server.Handler, poller_name: str, **kwargs: object
) -> tuple[millpond.Server, trio.Event]:
    """Start a server; the event is set when its run() has returned."""
    server = millpond.Server(handler, 0, host=HOST, poller=poller_name, **kwargs)  # type: ignore[arg-type]
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        await server.run(task_status=task_status)
        returned.set()

    await nursery.start(run)
    return server, returned


async def stubborn(stream: millpond.Connection) -> None:
    """A handler that never ends by itself."""
    await trio.sleep_forever()


def port_of(server: millpond.Server) -> int:
    return int(server.addresses[0][1])


async def test_a_transfer_in_flight_completes_and_new_clients_are_refused(
    poller_name: str, nursery: trio.Nursery
) -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB, more than the socket buffers hold
    server, returned = await start(nursery, echo, poller_name)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    received = bytearray()
    async with trio.open_nursery() as transfer:
        transfer.start_soon(client.send_all, payload)
        while len(received) < 65536:
            received += await client.receive_some()
        server.shutdown(grace=30)
        await trio.testing.wait_all_tasks_blocked()
        assert server.shutting_down.is_set()
        with pytest.raises(OSError):  # the listener is closed: refused, not queued
            await millpond.open_connection(HOST, port_of(server), poller=poller_name)
        while len(received) < len(payload):
            received += await client.receive_some()
    assert received == payload
    assert not returned.is_set()  # the handler still runs until the client is done
    await client.send_eof()
    with trio.fail_after(10):
        await returned.wait()
    await client.aclose()
    statistics = server.statistics()
    assert statistics.closed["eof"] == 1 and statistics.closed["shutdown"] == 0


async def test_a_handler_still_running_at_the_deadline_is_cancelled_and_closed(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    cancelled = trio.Event()

    async def stubborn(stream: millpond.Connection) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server, returned = await start(nursery, stubborn, poller_name)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    server.shutdown(grace=5)
    await returned.wait()
    assert cancelled.is_set()
    assert trio.current_time() - started == pytest.approx(5)
    with trio.fail_after(5):
        try:
            assert await client.receive_some() == b""  # closed by the server
        except trio.BrokenResourceError:
            pass
    await client.aclose()
    assert server.statistics().closed["shutdown"] == 1


async def test_handlers_see_the_shutdown_and_wind_down(
    poller_name: str, nursery: trio.Nursery
) -> None:
    async def polite(stream: millpond.Connection) -> None:
        await millpond.current_server().shutting_down.wait()
        await stream.send_all(b"going away")

    server, returned = await start(nursery, polite, poller_name)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    await trio.testing.wait_all_tasks_blocked()
    server.shutdown(grace=30)
    with trio.fail_after(10):
        assert await client.receive_some() == b"going away"
        await returned.wait()
    await client.aclose()
    assert server.statistics().closed["done"] == 1


async def test_a_second_shutdown_cancels_what_is_left_at_once(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, returned = await start(nursery, stubborn, poller_name)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    server.shutdown(grace=600)
    await trio.sleep(1)
    assert not returned.is_set()
    server.shutdown(grace=0)  # the second Ctrl-C
    await returned.wait()
    assert trio.current_time() - started == pytest.approx(1)
    await client.aclose()


async def test_a_later_shutdown_never_extends_the_deadline(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, returned = await start(nursery, stubborn, poller_name)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    server.shutdown(grace=2)
    server.shutdown(grace=100)
    await returned.wait()
    assert trio.current_time() - started == pytest.approx(2)
    await client.aclose()


async def test_shutdown_never_waits_for_memory(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    limiter = millpond.BufferLimiter(64 * 1024)
    # Reads wait for memory (no guaranteed minimum), so one is waiting at the shutdown.
    server, returned = await start(nursery, echo, poller_name, limiter=limiter, guaranteed_read=0)
    client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
    limiter.acquire_on_behalf_of_nowait("hog", 64 * 1024)
    await client.send_all(b"this read must wait for memory")
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tasks_waiting == 1
    server.shutdown(grace=1)
    await returned.wait()
    assert limiter.statistics().tasks_waiting == 0
    assert limiter.bytes_in_use == 64 * 1024  # the hog's only
    await client.aclose()


async def test_nothing_outlives_a_shutdown(poller_name: str) -> None:
    poller = millpond.get_poller(poller_name)  # its own epoll fd lives as long as the run
    before_fds = open_fds()
    before_registered = poller.registered_fds()
    limiter = millpond.BufferLimiter(1 << 20)
    async with trio.open_nursery() as nursery:
        server, returned = await start(nursery, echo, poller_name, limiter=limiter)
        clients = []
        for _ in range(5):
            client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
            await client.send_all(b"held")
            clients.append(client)
        await trio.testing.wait_all_tasks_blocked()
        server.shutdown(grace=0)
        with trio.fail_after(10):
            await returned.wait()
        for client in clients:
            await client.aclose()
    assert poller.registered_fds() == before_registered
    assert open_fds() == before_fds
    assert limiter.bytes_in_use == 0
    assert server.statistics().connections_active == 0


async def test_shutdown_before_the_server_starts_stops_it_once_it_has(
    poller_name: str, nursery: trio.Nursery
) -> None:
    server = millpond.Server(echo, 0, host=HOST, poller=poller_name)
    server.shutdown(grace=0)
    with trio.fail_after(10):
        await server.run()
    assert server.statistics().connections_accepted == 0


async def test_shutdown_rejects_a_bad_grace() -> None:
    server = millpond.Server(echo, 0)
    with pytest.raises(ValueError, match="grace"):
        server.shutdown(grace=-1)
    with pytest.raises(TypeError, match="grace"):
        server.shutdown(grace="soon")  # type: ignore[arg-type]
    assert not server.shutting_down.is_set()


async def test_cancelling_the_caller_still_stops_everything(
    poller_name: str,
) -> None:
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            server, _ = await start(nursery, echo, poller_name)
            client = await millpond.open_connection(HOST, port_of(server), poller=poller_name)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        socket.create_connection((HOST, port_of(server)), timeout=5)
    await client.aclose()
    assert server.statistics().closed["shutdown"] == 1
