"""The guaranteed minimum read: a spent budget never starves a connection that holds none of it."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from conftest import echo, socket_pair, started_server

import millpond

HOST = "127.0.0.1"
KIB = 1024


async def round_trips(port: int, poller_name: str, count: int) -> None:
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    async with client:
        for n in range(count):
            message = b"ping %d" % n
            await client.send_all(message)
            received = b""
            with trio.fail_after(10):
                while len(received) < len(message):
                    received += await client.receive_some()
            assert received == message


async def test_a_prompt_client_is_served_while_the_whole_budget_is_held(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    server, port = await started_server(nursery, echo, poller_name, limiter=limiter)
    limiter.acquire_on_behalf_of_nowait("the flood", 64 * KIB)  # spent, and nobody releases
    await round_trips(port, poller_name, 50)
    assert limiter.statistics().tasks_waiting == 0
    guarantee = millpond.server.DEFAULT_GUARANTEED_READ
    assert limiter.statistics().peak_bytes_in_use <= 64 * KIB + guarantee
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.bytes_in_use == 64 * KIB  # the guaranteed chunk went back


async def test_flooders_blocked_on_peers_that_never_read_do_not_starve_a_prompt_client(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    server, port = await started_server(nursery, echo, poller_name, limiter=limiter)
    prompt = await millpond.open_connection(HOST, port, poller=poller_name)
    # The rest of the program holds most of the budget; the flood takes what is left.
    limiter.acquire_on_behalf_of_nowait("hog", 56 * KIB)
    flooders = []
    for _ in range(40):
        flooder = await millpond.open_connection(HOST, port, poller=poller_name)
        nursery.start_soon(_flood, flooder)  # writes for ever, never reads
        flooders.append(flooder)
    await _until_the_flood_is_stuck(server)
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)  # nothing is left
    await prompt.send_all(b"ping")
    with trio.fail_after(10):
        assert await prompt.receive_some() == b"ping"
    await prompt.aclose()
    await round_trips(port, poller_name, 20)
    # Beyond the budget, at most one guaranteed read per connection.
    ceiling = 64 * KIB + 42 * millpond.server.DEFAULT_GUARANTEED_READ
    assert limiter.statistics().peak_bytes_in_use <= ceiling
    for flooder in flooders:
        await flooder.aclose()


@pytest.mark.parametrize("guaranteed", [True, False], ids=["guaranteed", "waiting"])
async def test_a_flood_leaves_the_budget_above_the_pressure_mark_to_prompt_clients(
    poller_name: str, nursery: trio.Nursery, guaranteed: bool
) -> None:
    limiter = millpond.BufferLimiter(32 * KIB)
    extra = {} if guaranteed else {"guaranteed_read": 0}
    server, port = await started_server(nursery, echo, poller_name, limiter=limiter, **extra)
    prompt = await millpond.open_connection(HOST, port, poller=poller_name)
    flooders = []
    for _ in range(40):  # together they could hold the budget many times over
        flooder = await millpond.open_connection(HOST, port, poller=poller_name)
        nursery.start_soon(_flood, flooder)
        flooders.append(flooder)
    await _until_the_flood_is_stuck(server)
    # The flood's reads of what was already waiting stop at the pressure mark: the
    # quarter above it is left for reads of what a peer has just sent.
    assert limiter.bytes_in_use <= limiter.pressure_bytes
    assert limiter.statistics().tasks_waiting >= 1  # flooders, waiting below the mark
    await prompt.aclose()
    await round_trips(port, poller_name, 20)  # served, with or without the guarantee
    for flooder in flooders:
        await flooder.aclose()


async def _until_the_flood_is_stuck(server: millpond.Server) -> None:
    """Wait until every flooder's handler is blocked (sending, or waiting for memory)."""
    with trio.fail_after(30):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            states = [c.state for c in server.connection_statistics()]
            if states.count("idle") == 1 and all(
                state in ("idle", "writing", "waiting for memory") for state in states
            ):
                return
            await trio.sleep(0.01)


async def _flood(stream: millpond.Connection) -> None:
    chunk = b"f" * (64 * KIB)
    try:
        while True:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_without_the_guarantee_a_read_waits_for_the_budget(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    limiter.acquire_on_behalf_of_nowait("hog", 64 * KIB)
    await left.send_all(b"waits")
    with trio.move_on_after(1) as scope:
        await right.receive_some()
    assert scope.cancelled_caught
    assert limiter.statistics().timeouts == 1
    await left.aclose()
    await right.aclose()


async def test_a_connection_that_holds_budget_gets_no_guarantee(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    listeners = await millpond.open_listeners(0, host=HOST)
    # A connection with the guarantee, built by hand: its own lease holds budget.
    async with trio.open_nursery() as nursery:
        server = millpond.Server(echo, sockets=listeners, limiter=limiter, poller=poller_name)
        await nursery.start(server.run)
        server.shutdown(0)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    right._guaranteed_read = KIB  # what a server connection gets
    held = await millpond.BufferPool(limiter).lease(KIB, owner=right)
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)
    await left.send_all(b"x")
    with trio.move_on_after(1) as scope:
        await right.receive_some()
    assert scope.cancelled_caught  # it holds a lease: it waits like any holder
    held.release()
    await left.aclose()
    await right.aclose()


def test_a_negative_guarantee_is_refused() -> None:
    with pytest.raises(ValueError, match="guaranteed_read"):
        millpond.Server(echo, 0, guaranteed_read=-1)
    with pytest.raises(TypeError, match="guaranteed_read"):
        millpond.Server(echo, 0, guaranteed_read=1.5)  # type: ignore[arg-type]
