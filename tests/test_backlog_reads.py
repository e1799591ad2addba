"""Backlog reads: a flood cannot take the budget above the pressure mark.

A read of data that was already waiting (the connection read more than
``BACKLOG_ALLOWANCE`` since its socket last drained: a bulk upload, or a flood
that never reads its answers) from an owner that holds nothing is the lowest
class of request: it is granted only while use stays within the pressure mark,
after every other waiter, and gets no guaranteed read. The ledger's rules
first (pure, no I/O), then the limiter's wait, then connections over loopback.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from conftest import socket_pair
from hypothesis import given, settings

import millpond
from millpond.memory.ledger import _Ledger
from millpond.stream import BACKLOG_ALLOWANCE

KIB = 1024


def ledger_at_the_mark() -> _Ledger:
    """100 bytes, pressure mark at 75, 75 in use by "others"."""
    ledger = _Ledger(100, 0, None)
    assert ledger.pressure_bytes == 75
    ledger.force("others", 75)
    return ledger


def test_a_backlog_read_is_refused_above_the_pressure_mark_while_an_ordinary_read_fits() -> None:
    ledger = ledger_at_the_mark()
    assert not ledger.take("flooder", 10, backlog=True)
    assert ledger.take("prompt", 10)
    assert ledger.held == {"others": 75, "prompt": 10}


def test_a_backlog_read_is_granted_below_the_pressure_mark() -> None:
    ledger = _Ledger(100, 0, None)
    ledger.force("others", 65)
    assert ledger.take("bulk", 10, backlog=True)  # exactly up to the mark
    assert not ledger.take("bulk2", 1, backlog=True)


def test_a_holder_is_never_held_to_the_mark() -> None:
    ledger = ledger_at_the_mark()
    ledger.force("holder", 1)
    assert ledger.take("holder", 20, backlog=True)  # privileged: may use the whole budget


def test_backlog_waiters_do_not_hold_back_ordinary_requests() -> None:
    ledger = ledger_at_the_mark()
    waiter = ledger.enqueue("flooder", 10, backlog=True)
    assert waiter.backlog
    assert ledger.take("prompt", 10)  # no barging rule: backlog waiters are the lowest class
    assert not ledger.take("bulk", 1, backlog=True)  # but backlog requests queue behind them


def test_backlog_waiters_are_served_after_ordinary_ones_and_only_below_the_mark() -> None:
    ledger = _Ledger(100, 0, None)
    ledger.force("others", 100)
    first = ledger.enqueue("flooder", 10, backlog=True)
    second = ledger.enqueue("flooder2", 10, backlog=True)
    ordinary = ledger.enqueue("prompt", 10)
    assert ledger.put_back("others", 10) == [ordinary]  # 90 in use: above the mark
    assert ledger.put_back("others", 20) == []  # 80 in use: 80 + 10 > 75
    assert ledger.put_back("others", 5) == []  # 75: still no room below the mark
    assert ledger.put_back("others", 10) == [first]  # 65 + 10 = 75
    assert ledger.put_back("others", 10) == [second]  # FIFO among backlog waiters
    assert ledger.waiters == 0


def test_a_backlog_read_is_granted_into_an_empty_budget_whatever_the_mark() -> None:
    ledger = _Ledger(100, 0, 0)  # always under pressure
    assert ledger.take("bulk", 10, backlog=True)  # nothing in use: no deadlock
    assert not ledger.take("bulk2", 10, backlog=True)
    waiter = ledger.enqueue("bulk2", 10, backlog=True)
    assert ledger.put_back("bulk", 10) == [waiter]


def test_a_backlog_waiter_is_promoted_when_its_owner_becomes_a_holder() -> None:
    ledger = ledger_at_the_mark()
    waiter = ledger.enqueue("conn", 10, backlog=True)
    ledger.transfer("others", "conn", 1)
    assert waiter.privileged and not waiter.backlog
    assert list(ledger.privileged) == [] and list(ledger.backlog) == []  # served at once
    assert ledger.held["conn"] == 11


def test_a_withdrawn_backlog_waiter_leaves_its_queue() -> None:
    ledger = ledger_at_the_mark()
    waiter = ledger.enqueue("flooder", 10, backlog=True)
    ledger.withdraw(waiter)
    assert ledger.waiters == 0 and ledger.bytes_waited_for == 0 and ledger.idle is False
    assert "flooder" not in ledger.ordinary_by_owner


def test_shrinking_the_total_refuses_a_backlog_waiter_that_can_never_fit() -> None:
    ledger = ledger_at_the_mark()
    waiter = ledger.enqueue("flooder", 60, backlog=True)
    granted, refused = ledger.resize(50)
    assert (granted, refused) == ([], [waiter])
    assert ledger.waiters == 0


# Random steps against the rules: every grant to a backlog request keeps use within the
# mark (or starts from nothing), backlog waiters are served in order and never before an
# ordinary one, and the books always add up.
@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["take", "take backlog", "release"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(1, 40),
        ),
        max_size=60,
    )
)
def test_backlog_rules_hold_under_random_steps(steps: list[tuple[str, str, int]]) -> None:
    ledger = _Ledger(100, 10, None)
    served_backlog: list[object] = []
    for action, owner, nbytes in steps:
        if action == "release":
            held = ledger.held.get(owner, 0)
            if not held:
                continue
            before = ledger.in_use - min(nbytes, held)
            granted = ledger.put_back(owner, min(nbytes, held))
            in_use = before
            for waiter in granted:
                in_use += waiter.nbytes
                if waiter.backlog:
                    assert in_use <= ledger.pressure_bytes or in_use == waiter.nbytes
                    assert not ledger.ordinary  # never ahead of an ordinary waiter
                    served_backlog.append(waiter)
            continue
        backlog = action == "take backlog"
        if owner in ledger.ordinary_by_owner or nbytes > ledger.ordinary_limit:
            continue  # one waiting request per owner, as a connection makes
        already, before = ledger.held.get(owner, 0), ledger.in_use
        if ledger.take(owner, nbytes, backlog):
            if backlog and not already:
                assert before + nbytes <= ledger.pressure_bytes or not before
        else:
            ledger.enqueue(owner, nbytes, backlog)
        assert ledger.in_use == sum(ledger.held.values())
        order = [w.owner for w in ledger.backlog]
        assert len(order) == len(set(order))
    assert all(w.state.value == "granted" for w in served_backlog)


async def test_acquire_read_waits_in_the_backlog_queue_until_use_falls_below_the_mark() -> None:
    limiter = millpond.BufferLimiter(100 * KIB)
    limiter.acquire_on_behalf_of_nowait("others", 80 * KIB)
    assert limiter.acquire_read_nowait("flooder", 4 * KIB, KIB, backlog=True) == 0
    assert limiter.acquire_read_nowait("prompt", 4 * KIB, KIB) == KIB  # above the mark
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(limiter.acquire_read, "flooder", KIB, backlog=True))
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        limiter.release_on_behalf_of("others", 5 * KIB)  # 76 KiB in use (prompt's 1 KiB too)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.held_by("flooder") == 0  # 76 + 1 is above the mark (75 KiB)
        limiter.release_on_behalf_of("others", 2 * KIB)
    assert limiter.held_by("flooder") == KIB


async def test_acquire_read_rejects_a_backlog_flag_that_is_not_a_bool() -> None:
    limiter = millpond.BufferLimiter(100 * KIB)
    with pytest.raises(TypeError, match="backlog"):
        await limiter.acquire_read("reader", KIB, backlog=1)  # type: ignore[arg-type]


async def _read_exactly(stream: millpond.Connection, nbytes: int, piece: int) -> bytes:
    received = b""
    while len(received) < nbytes:
        received += await stream.receive_some(min(piece, nbytes - len(received)))
    return received


async def test_a_connection_reading_a_backlog_waits_below_the_pressure_mark(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    await left.send_all(b"b" * (64 * KIB))  # more than the allowance, waiting at once
    await trio.sleep(0.05)
    assert await _read_exactly(right, BACKLOG_ALLOWANCE + KIB, KIB) == b"b" * (
        BACKLOG_ALLOWANCE + KIB
    )
    # Fill up to the mark with what right holds (its last chunk) given back.
    up_to_the_mark = limiter.pressure_bytes - limiter.bytes_in_use + limiter.held_by(right)
    limiter.acquire_on_behalf_of_nowait("others", up_to_the_mark)
    assert limiter.bytes_available > KIB  # room above the mark, but not for a backlog
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.receive_some, KIB)
        await trio.testing.wait_all_tasks_blocked()
        assert right.state == "waiting for memory"
        assert limiter.statistics().tasks_waiting == 1
        limiter.release_on_behalf_of("others", KIB)
    assert right.state == "in handler"
    await left.aclose()
    await right.aclose()


async def test_a_request_within_the_allowance_is_read_above_the_pressure_mark(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    limiter.acquire_on_behalf_of_nowait("others", limiter.pressure_bytes)
    for round_trip in range(3):
        request = bytes([round_trip]) * BACKLOG_ALLOWANCE
        await left.send_all(request)
        await trio.sleep(0.02)  # all of it waits in the kernel: read in 1 KiB pieces
        with trio.fail_after(5):
            assert await _read_exactly(right, len(request), KIB) == request
        with trio.move_on_after(0.02):  # drains the socket: the next request is fresh
            await right.receive_some(KIB)
    assert limiter.statistics().tasks_waiting == 0
    await left.aclose()
    await right.aclose()


async def test_a_connection_reading_a_backlog_gets_no_guaranteed_read(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    right._guaranteed_read = KIB  # what a server connection gets
    await left.send_all(b"b" * (64 * KIB))
    await trio.sleep(0.05)
    await _read_exactly(right, BACKLOG_ALLOWANCE + KIB, KIB)
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)
    with trio.move_on_after(0.5) as scope:
        await right.receive_some(KIB)  # gives its last chunk back, then waits
    assert scope.cancelled_caught
    assert limiter.held_by(right) == 0
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)  # what right gave back
    # A connection that has drained its socket still gets it, on a spent budget.
    other_left, other_right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    other_right._guaranteed_read = KIB
    await other_left.send_all(b"ping")
    with trio.fail_after(5):
        assert await other_right.receive_some() == b"ping"
    assert limiter.statistics().peak_bytes_in_use > limiter.total_bytes  # past the total
    for stream in (left, right, other_left, other_right):
        await stream.aclose()


async def test_closing_a_connection_ends_its_wait_for_memory(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    limiter.acquire_on_behalf_of_nowait("hog", 64 * KIB)
    await left.send_all(b"x")

    async def receive() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await right.receive_some()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            assert right.state == "waiting for memory"
            right.close()  # from another task, as a server's timeouts do
    assert limiter.statistics().tasks_waiting == 0
    assert limiter.held_by(right) == 0
    limiter.release_on_behalf_of("hog", 64 * KIB)
    assert limiter.bytes_in_use == 0
    await left.aclose()
