"""Memory exhaustion: a budget far below what the clients ask for (issue 16).

Hundreds of clients echo 64 KiB each through a 64 KiB budget: every one of them
finishes with every byte (no deadlock, no starvation), with and without the guaranteed
minimum read, and through ``receive_buffer`` leases too. When the budget is held
elsewhere for good, the read timeout gives up cleanly. ``benchmarks/hostile_scenarios.py
memory`` is the long version (1 MiB for 1000 clients, the longest wait per client).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from conftest import echo, started_server, zero_copy_echo
from scenarios import HOST, Leftovers, echo_checked, settled

import millpond

KIB = 1024
BUDGET = 64 * KIB
CLIENTS = 200
EACH = 64 * KIB  # 200 x 64 KiB asked for at once: 200 times the budget
HOG = "the rest of the program"


@pytest.mark.time_limit(90)
@pytest.mark.parametrize(
    ("handler", "guaranteed_read"),
    [(echo, 1024), (echo, 0), (zero_copy_echo, 1024)],
    ids=["receive_some", "no_guaranteed_read", "receive_buffer"],
)
async def test_every_client_finishes_on_a_budget_far_below_demand(
    poller_name: str,
    nursery: trio.Nursery,
    handler: millpond.server.Handler,
    guaranteed_read: int,
) -> None:
    limiter = millpond.BufferLimiter(BUDGET)
    server, port = await started_server(
        nursery, handler, poller_name, limiter=limiter, guaranteed_read=guaranteed_read
    )
    before = await Leftovers.of(server)
    with trio.fail_after(80):
        async with trio.open_nursery() as clients:
            for seed in range(CLIENTS):
                clients.start_soon(echo_checked, port, poller_name, seed, EACH)
        await settled(server)
    statistics = server.statistics()
    assert statistics.closed["eof"] == CLIENTS
    limits = limiter.statistics()
    assert limits.peak_bytes_in_use >= BUDGET // 2  # it really was short
    assert await Leftovers.of(server) == before


async def test_a_read_that_never_gets_memory_ends_in_a_clean_read_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    limiter = millpond.BufferLimiter(BUDGET)
    server, port = await started_server(
        nursery, echo, poller_name, limiter=limiter, guaranteed_read=0, read_timeout=5
    )
    before = await Leftovers.of(server)
    limiter.acquire_on_behalf_of_nowait(HOG, BUDGET)  # held elsewhere, for good
    clients = [await millpond.open_connection(HOST, port, poller=poller_name) for _ in range(20)]
    for client in clients:
        await client.send_all(b"waits for memory")
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tasks_waiting == 20
    await trio.sleep(10)  # the mock clock: at once once the 5 s timeouts are all that is due
    await settled(server)
    assert server.statistics().closed["read_timeout"] == 20
    limits = limiter.statistics()
    assert (limits.tasks_waiting, limits.timeouts, limiter.held_by(HOG)) == (0, 20, BUDGET)
    limiter.release_on_behalf_of(HOG, BUDGET)
    for client in clients:
        await client.aclose()
    assert await Leftovers.of(server) == before
