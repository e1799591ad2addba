"""Allocation failure injection (HAProxy's tune.fail-alloc): a pool made with LeaseFaults
refuses a share of its leases as a transient shortage; traffic keeps flowing, refused
operations wait or time out cleanly, and nothing is held afterwards."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from conftest import started_server, zero_copy_echo
from scenarios import echo_checked

import millpond

KIB = 1024
HOST = "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "name"),
    [
        (("0.5",), {}, TypeError, "ratio"),
        ((True,), {}, TypeError, "ratio"),
        ((-0.1,), {}, ValueError, "ratio"),
        ((1.5,), {}, ValueError, "ratio"),
        ((math.nan,), {}, ValueError, "ratio"),
        ((0.5,), {"seed": 1.5}, TypeError, "seed"),
        ((0.5,), {"retry_after": 0}, ValueError, "retry_after"),
        ((0.5,), {"retry_after": math.inf}, ValueError, "retry_after"),
        ((0.5,), {"retry_after": "1"}, TypeError, "retry_after"),
    ],
)
def test_bad_arguments_name_themselves(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        millpond.LeaseFaults(*args, **kwargs)  # type: ignore[arg-type]


def test_a_pool_takes_only_a_lease_faults_as_faults() -> None:
    with pytest.raises(TypeError, match="faults"):
        millpond.BufferPool(faults=0.5)  # type: ignore[arg-type]
    assert millpond.BufferPool().faults is None


def test_a_seed_replays_the_same_refusals() -> None:
    first, second = millpond.LeaseFaults(0.3, seed=42), millpond.LeaseFaults(0.3, seed=42)
    draws = [first.refuse() for _ in range(200)]
    assert draws == [second.refuse() for _ in range(200)]
    assert first.refused == sum(draws) and first.drawn == 200
    assert 30 < first.refused < 90  # about 60 of 200: a seeded draw, not luck


async def test_a_refused_lease_nowait_is_would_block_and_charges_nothing() -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    faults = millpond.LeaseFaults(0.5, seed=1)
    pool = millpond.BufferPool(limiter, faults=faults)
    granted = 0
    for _ in range(100):
        try:
            buffer = pool.lease_nowait(KIB)
        except trio.WouldBlock:
            assert limiter.bytes_in_use == 0
            continue
        granted += 1
        buffer.release()
    assert granted == 100 - faults.refused and 0 < faults.refused < 100
    assert pool.statistics().leases == granted


async def test_every_lease_refused_waits_until_cancelled_holding_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    faults = millpond.LeaseFaults(1.0, retry_after=0.5)
    pool = millpond.BufferPool(limiter, faults=faults)
    with trio.move_on_after(10) as scope:
        await pool.lease(KIB)
    assert scope.cancelled_caught
    assert faults.refused == faults.drawn == 20  # at 0, 0.5, ..., 9.5 s; cancelled at 10
    assert (limiter.bytes_in_use, pool.statistics().leases) == (0, 0)


async def test_a_refused_lease_waits_and_asks_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = millpond.LeaseFaults(0.5, seed=3, retry_after=1.0)
    pool = millpond.BufferPool(millpond.BufferLimiter(64 * KIB), faults=faults)
    for _ in range(20):
        start = trio.current_time()
        refused = faults.refused
        with await pool.lease(KIB):
            pass
        assert trio.current_time() - start == faults.refused - refused  # one second each
    assert faults.refused > 0 and faults.drawn == 20 + faults.refused


@pytest.mark.parametrize("ratio", [0.3, 0.9])
async def test_traffic_flows_while_leases_are_refused_and_nothing_is_held_after(
    poller_name: str, nursery: trio.Nursery, ratio: float
) -> None:
    limiter = millpond.BufferLimiter(256 * KIB)
    faults = millpond.LeaseFaults(ratio, seed=16)
    pool = millpond.BufferPool(limiter, faults=faults)
    server, port = await started_server(nursery, zero_copy_echo, poller_name, pool=pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            for seed in range(20):
                clients.start_soon(echo_checked, port, poller_name, seed, 64 * KIB)
        while server.statistics().connections_active:
            await trio.sleep(0.01)
    assert faults.refused > 0
    assert server.statistics().closed["eof"] == 20
    assert (limiter.bytes_in_use, pool.statistics().bytes_leased) == (0, 0)


async def test_a_read_refused_for_ever_ends_in_a_clean_read_timeout(
    poller_name: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limiter = millpond.BufferLimiter(256 * KIB)
    pool = millpond.BufferPool(limiter, faults=millpond.LeaseFaults(1.0))
    server, port = await started_server(
        nursery, zero_copy_echo, poller_name, pool=pool, read_timeout=5
    )
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    await client.send_all(b"never read")
    with trio.fail_after(60):
        try:
            assert await client.receive_some() == b""
        except trio.BrokenResourceError:
            pass
    await client.aclose()
    assert server.statistics().closed["read_timeout"] == 1
    assert (limiter.bytes_in_use, pool.statistics().bytes_leased) == (0, 0)
