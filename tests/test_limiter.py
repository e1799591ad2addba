"""Specification of :class:`millpond.memory.limiter.BufferLimiter`, one behaviour per test."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from millpond.memory.limiter import (
    WAIT_SECONDS_BUCKETS,
    BufferLimiter,
    BufferLimiterStatistics,
    Pressure,
)


@dataclasses.dataclass
class Waiter:
    """A task blocked in acquire_on_behalf_of, with its own cancel scope."""

    owner: object
    nbytes: int
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    outcome: str = "waiting"

    async def run(self, limiter: BufferLimiter) -> None:
        with self.scope:
            try:
                await limiter.acquire_on_behalf_of(self.owner, self.nbytes)
            except ValueError:
                self.outcome = "refused"
                return
            self.outcome = "granted"
            return
        self.outcome = "cancelled"


async def queue_up(
    nursery: trio.Nursery, limiter: BufferLimiter, owner: object, nbytes: int
) -> Waiter:
    """Start a waiter and return once it is parked (or done)."""
    waiter = Waiter(owner, nbytes)
    nursery.start_soon(waiter.run, limiter)
    await wait_all_tasks_blocked()
    return waiter


# -- taking and giving back -----------------------------------------------------------------


async def test_acquire_and_release_count_bytes_per_owner() -> None:
    limiter = BufferLimiter(100)
    await limiter.acquire_on_behalf_of("a", 30)
    await limiter.acquire_on_behalf_of("a", 10)
    limiter.acquire_on_behalf_of_nowait("b", 20)
    assert (limiter.held_by("a"), limiter.held_by("b"), limiter.held_by("c")) == (40, 20, 0)
    assert (limiter.bytes_in_use, limiter.bytes_available) == (60, 40)
    limiter.release_on_behalf_of("a", 15)
    assert limiter.held_by("a") == 25
    assert limiter.bytes_in_use == 45


async def test_default_owner_is_the_current_task() -> None:
    limiter = BufferLimiter(100)
    await limiter.acquire(10)
    limiter.acquire_nowait(5)
    assert limiter.held_by(trio.lowlevel.current_task()) == 15
    limiter.release(15)
    assert limiter.bytes_in_use == 0


async def test_reserve_releases_on_exit_even_when_the_block_raises() -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(KeyError):
        async with limiter.reserve(40):
            assert limiter.held_by(trio.lowlevel.current_task()) == 40
            raise KeyError
    assert limiter.bytes_in_use == 0


async def test_reserve_on_behalf_of_counts_for_that_owner() -> None:
    limiter = BufferLimiter(100)
    async with limiter.reserve_on_behalf_of("conn", 40):
        assert limiter.held_by("conn") == 40
    assert limiter.held_by("conn") == 0


async def test_releasing_more_than_held_raises_runtime_error() -> None:
    limiter = BufferLimiter(100)
    await limiter.acquire_on_behalf_of("a", 10)
    with pytest.raises(RuntimeError, match="holds 10"):
        limiter.release_on_behalf_of("a", 11)
    with pytest.raises(RuntimeError, match="holds 0"):
        limiter.release_on_behalf_of("b", 1)
    assert limiter.held_by("a") == 10


async def test_acquire_in_a_cancelled_scope_takes_nothing() -> None:
    limiter = BufferLimiter(100)
    with trio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire_on_behalf_of("a", 10)
    assert scope.cancelled_caught
    assert limiter.bytes_in_use == 0


async def test_acquire_nowait_raises_would_block_when_full() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("a", 90)
    with pytest.raises(trio.WouldBlock):
        limiter.acquire_on_behalf_of_nowait("b", 11)
    assert limiter.held_by("b") == 0


# -- fairness ---------------------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = BufferLimiter(10)
    limiter.acquire_on_behalf_of_nowait("holder", 10)
    served = []
    async with trio.open_nursery() as nursery:
        for owner in ["first", "second", "third"]:
            await queue_up(nursery, limiter, owner, 10)
        previous = "holder"
        for _ in range(3):
            limiter.release_on_behalf_of(previous, 10)
            holders = [o for o in ["first", "second", "third"] if limiter.held_by(o)]
            if len(holders) != 1:
                break
            previous = holders[0]
            served.append(previous)
        nursery.cancel_scope.cancel()
    assert served == ["first", "second", "third"]


async def test_release_hands_capacity_to_the_waiter_inside_the_release_call() -> None:
    limiter = BufferLimiter(10)
    limiter.acquire_on_behalf_of_nowait("holder", 10)
    async with trio.open_nursery() as nursery:
        waiter = await queue_up(nursery, limiter, "waiter", 4)
        limiter.release_on_behalf_of("holder", 10)
        # No checkpoint since the release: the waiter has not run, yet it holds the bytes.
        assert limiter.held_by("waiter") == 4
        assert limiter.statistics().tasks_waiting == 0
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert waiter.outcome == "granted"


async def test_nowait_does_not_barge_past_waiter() -> None:
    # anyio #1170: a *_nowait acquire took capacity already promised to a woken waiter.
    limiter = BufferLimiter(10)
    limiter.acquire_on_behalf_of_nowait("holder", 10)
    async with trio.open_nursery() as nursery:
        waiter = await queue_up(nursery, limiter, "waiter", 10)
        limiter.release_on_behalf_of("holder", 10)
        with pytest.raises(trio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("newcomer", 10)
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert waiter.outcome == "granted"
    assert (limiter.held_by("waiter"), limiter.held_by("newcomer")) == (10, 0)


async def test_nowait_does_not_barge_even_when_its_request_would_fit() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 50)
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, limiter, "big", 60)
        with pytest.raises(trio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("small", 10)
        nursery.cancel_scope.cancel()


async def test_new_acquire_queues_behind_existing_waiters() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 50)
    async with trio.open_nursery() as nursery:
        big = await queue_up(nursery, limiter, "big", 60)
        small = await queue_up(nursery, limiter, "small", 10)
        assert (big.outcome, small.outcome) == ("waiting", "waiting")
        limiter.release_on_behalf_of("holder", 50)
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (big.outcome, small.outcome) == ("granted", "granted")


async def test_large_request_at_head_blocks_smaller_ones() -> None:
    # Head-of-line blocking is deliberate: if small requests could skip a large one, a steady
    # trickle of small requests would keep the large one waiting for ever.
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 50)
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, limiter, "large", 80)
        await queue_up(nursery, limiter, "small", 10)
        # 50 bytes are free and "small" wants 10, but it is behind "large".
        assert limiter.held_by("small") == 0
        assert limiter.statistics().tasks_waiting == 2
        limiter.release_on_behalf_of("holder", 50)
        assert (limiter.held_by("large"), limiter.held_by("small")) == (80, 10)
        nursery.cancel_scope.cancel()


# -- cancellation -----------------------------------------------------------------------------


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = BufferLimiter(10)
    limiter.acquire_on_behalf_of_nowait("holder", 10)
    async with trio.open_nursery() as nursery:
        waiter = await queue_up(nursery, limiter, "waiter", 5)
        assert limiter.statistics().tasks_waiting == 1
        waiter.scope.cancel()
    assert waiter.outcome == "cancelled"
    stats = limiter.statistics()
    assert (stats.tasks_waiting, stats.bytes_waited_for, stats.timeouts) == (0, 0, 1)
    limiter.release_on_behalf_of("holder", 10)
    assert limiter.bytes_in_use == 0


async def test_cancelled_waiter_passes_capacity_to_next() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 50)
    async with trio.open_nursery() as nursery:
        big = await queue_up(nursery, limiter, "big", 60)
        small = await queue_up(nursery, limiter, "small", 40)
        assert limiter.held_by("small") == 0
        big.scope.cancel()
        # The withdrawal happens inside cancel(): "small" no longer stands behind anybody.
        assert limiter.held_by("small") == 40
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (big.outcome, small.outcome) == ("cancelled", "granted")
    assert limiter.held_by("big") == 0


async def test_granted_then_cancelled_capacity_goes_to_next_waiter() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        first = await queue_up(nursery, limiter, "first", 60)
        second = await queue_up(nursery, limiter, "second", 50)
        # In one tick: the release hands 60 bytes to "first", then its scope is cancelled
        # before it could resume. Trio does not call the abort callback of a task that was
        # already rescheduled; "first" must notice on its own and pass the bytes on.
        limiter.release_on_behalf_of("holder", 100)
        assert limiter.held_by("first") == 60
        first.scope.cancel()
        assert limiter.held_by("second") == 0
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (first.outcome, second.outcome) == ("cancelled", "granted")
    assert (limiter.held_by("first"), limiter.held_by("second")) == (0, 50)
    stats = limiter.statistics()
    assert (stats.bytes_in_use, stats.grants, stats.timeouts) == (50, 2, 1)


async def test_cancelled_in_the_same_tick_before_the_release_is_simply_withdrawn() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        first = await queue_up(nursery, limiter, "first", 60)
        second = await queue_up(nursery, limiter, "second", 50)
        first.scope.cancel()
        limiter.release_on_behalf_of("holder", 100)
        assert limiter.held_by("second") == 50
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert (first.outcome, second.outcome) == ("cancelled", "granted")
    assert limiter.statistics().timeouts == 1


async def test_waiter_under_move_on_after_gives_up_on_time_and_next_is_served(
    idle_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 50)
    gave_up_at: list[float] = []
    served_at: list[float] = []

    async def impatient() -> None:
        with trio.move_on_after(5):
            await limiter.acquire_on_behalf_of("impatient", 60)
        gave_up_at.append(trio.current_time())

    async def patient() -> None:
        await limiter.acquire_on_behalf_of("patient", 40)
        served_at.append(trio.current_time())

    start = trio.current_time()
    with trio.move_on_after(100):  # if "patient" were never served
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient)
            await wait_all_tasks_blocked()
            nursery.start_soon(patient)
    assert gave_up_at == served_at == [start + 5]
    assert limiter.held_by("impatient") == 0
    assert limiter.statistics().timeouts == 1


async def test_waiting_does_not_extend_a_fail_after_deadline(
    idle_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(3):
            await limiter.acquire_on_behalf_of("waiter", 1)
    assert trio.current_time() == start + 3
    assert limiter.statistics().tasks_waiting == 0
    limiter.release_on_behalf_of("holder", 100)  # the leak-presence check: hold nothing


async def test_reserve_that_times_out_while_waiting_releases_nothing(
    idle_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    with trio.move_on_after(1):
        async with limiter.reserve(10):
            pytest.fail("the reservation cannot have been granted")  # pragma: no cover
    assert limiter.bytes_in_use == 100


# -- impossible requests --------------------------------------------------------------------


async def test_request_larger_than_total_raises() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 1)
    with pytest.raises(ValueError, match="total_bytes"):
        await limiter.acquire_on_behalf_of("holder", 101)
    with pytest.raises(ValueError, match="total_bytes"):
        limiter.acquire_on_behalf_of_nowait("other", 101)


async def test_ordinary_request_larger_than_the_unreserved_part_raises() -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)
    with pytest.raises(ValueError, match="reserved_bytes"):
        await limiter.acquire_on_behalf_of("newcomer", 81)
    limiter.acquire_on_behalf_of_nowait("holder", 1)
    limiter.acquire_on_behalf_of_nowait("holder", 99)  # a holder may use the reserve
    assert limiter.bytes_in_use == 100


async def test_shrinking_total_below_a_waiting_request_refuses_it() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        big = await queue_up(nursery, limiter, "big", 80)
        small = await queue_up(nursery, limiter, "small", 10)
        limiter.total_bytes = 50
        await wait_all_tasks_blocked()
        assert (big.outcome, small.outcome) == ("refused", "waiting")
        limiter.release_on_behalf_of("holder", 100)
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert small.outcome == "granted"


# -- resizing -------------------------------------------------------------------------------


async def test_shrinking_total_does_not_revoke() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 80)
    limiter.total_bytes = 50
    assert (limiter.held_by("holder"), limiter.bytes_in_use) == (80, 80)
    assert limiter.bytes_available == 0
    with pytest.raises(trio.WouldBlock):
        limiter.acquire_on_behalf_of_nowait("newcomer", 1)
    limiter.release_on_behalf_of("holder", 40)
    limiter.acquire_on_behalf_of_nowait("newcomer", 10)
    assert limiter.bytes_in_use == 50


async def test_growing_total_wakes_waiters() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        first = await queue_up(nursery, limiter, "first", 30)
        second = await queue_up(nursery, limiter, "second", 30)
        third = await queue_up(nursery, limiter, "third", 30)
        limiter.total_bytes = 160
        assert [limiter.held_by(o) for o in ["first", "second", "third"]] == [30, 30, 0]
        await wait_all_tasks_blocked()
        assert (first.outcome, second.outcome, third.outcome) == ("granted", "granted", "waiting")
        nursery.cancel_scope.cancel()


async def test_default_pressure_threshold_follows_the_total() -> None:
    limiter = BufferLimiter(1000)
    assert limiter.pressure_bytes == 750
    limiter.total_bytes = 2000
    assert limiter.pressure_bytes == 1500
    assert BufferLimiter(1000, reserved_bytes=500).pressure_bytes == 500
    assert BufferLimiter(1000, pressure_bytes=100).pressure_bytes == 100


# -- reserve: owners that hold bytes can always finish ----------------------------------------


async def test_reserve_lets_holder_finish() -> None:
    limiter = BufferLimiter(100, reserved_bytes=10)
    limiter.acquire_on_behalf_of_nowait("holder", 90)
    with pytest.raises(trio.WouldBlock):
        limiter.acquire_on_behalf_of_nowait("newcomer", 10)
    await limiter.acquire_on_behalf_of("holder", 10)
    assert limiter.held_by("holder") == 100


async def test_ordinary_waiter_at_the_head_does_not_block_a_holder() -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)
    limiter.acquire_on_behalf_of_nowait("holder", 70)
    async with trio.open_nursery() as nursery:
        newcomer = await queue_up(nursery, limiter, "newcomer", 40)
        holder = await queue_up(nursery, limiter, "holder", 25)
        assert (newcomer.outcome, holder.outcome) == ("waiting", "granted")
        nursery.cancel_scope.cancel()


async def test_holders_waiting_are_served_before_ordinary_waiters() -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)
    limiter.acquire_on_behalf_of_nowait("a", 50)
    limiter.acquire_on_behalf_of_nowait("b", 30)
    limiter.acquire_on_behalf_of_nowait("a", 20)  # full
    async with trio.open_nursery() as nursery:
        newcomer = await queue_up(nursery, limiter, "newcomer", 10)
        b_again = await queue_up(nursery, limiter, "b", 10)
        limiter.release_on_behalf_of("a", 10)
        assert (limiter.held_by("b"), limiter.held_by("newcomer")) == (40, 0)
        await wait_all_tasks_blocked()
        assert (newcomer.outcome, b_again.outcome) == ("waiting", "granted")
        nursery.cancel_scope.cancel()


async def test_holder_does_not_barge_past_waiting_holders() -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)
    limiter.acquire_on_behalf_of_nowait("a", 40)
    limiter.acquire_on_behalf_of_nowait("b", 40)
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, limiter, "b", 30)
        with pytest.raises(trio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("a", 10)  # would fit, but "b" came first
        nursery.cancel_scope.cancel()
    assert limiter.held_by("a") == 40


async def test_waiting_request_is_promoted_when_its_owner_becomes_a_holder() -> None:
    # Two requests for one connection queue up while it holds nothing. Once the first is
    # granted, the second is a request from a holder and may use the reserve.
    limiter = BufferLimiter(100, reserved_bytes=20)
    limiter.acquire_on_behalf_of_nowait("other", 80)
    limiter.acquire_on_behalf_of_nowait("other", 20)
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, limiter, "conn", 40)
        second = await queue_up(nursery, limiter, "conn", 30)
        limiter.release_on_behalf_of("other", 60)  # 40 in use: room for 40 more, 20 reserved
        assert limiter.held_by("conn") == 40
        # 70 in use: an ordinary request could not get 30 more (80 is its limit), a holder can.
        limiter.release_on_behalf_of("other", 10)
        await wait_all_tasks_blocked()
        assert second.outcome == "granted"
    assert limiter.held_by("conn") == 70


async def proxy_workload(limiter: BufferLimiter, connections: int, chunk: int) -> list[str]:
    """Every connection takes an input buffer; once all have one (the unreserved budget is
    gone) each needs an output buffer before it can give both back. A newcomer waits in the
    ordinary queue meanwhile. Returns who finished."""
    finished: list[str] = []
    everyone_has_input = trio.Event()
    holding = 0

    async def connection(name: str) -> None:
        nonlocal holding
        async with limiter.reserve(chunk):  # input buffer
            holding += 1
            if holding == connections:
                everyone_has_input.set()
            await everyone_has_input.wait()
            async with limiter.reserve(chunk):  # output buffer
                await trio.sleep(1)  # send
        finished.append(name)

    async def newcomer() -> None:
        await everyone_has_input.wait()
        async with limiter.reserve(chunk):
            pass
        finished.append("newcomer")

    with trio.fail_after(10 * connections):
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(connection, f"conn{i}")
            nursery.start_soon(newcomer)
    return finished


async def test_proxy_workload_completes_with_a_reserve(
    idle_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(8 * 1000 + 1000, reserved_bytes=1000)
    finished = await proxy_workload(limiter, connections=8, chunk=1000)
    assert sorted(finished) == sorted([f"conn{i}" for i in range(8)] + ["newcomer"])
    assert limiter.bytes_in_use == 0


async def test_proxy_workload_deadlocks_without_a_reserve(
    idle_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(8 * 1000 + 1000)
    with pytest.raises(trio.TooSlowError):
        await proxy_workload(limiter, connections=9, chunk=1000)


# -- pressure -------------------------------------------------------------------------------


async def test_pressure_levels() -> None:
    limiter = BufferLimiter(100, reserved_bytes=10, pressure_bytes=60)
    levels = [limiter.pressure]
    for nbytes in [59, 1, 29, 1]:
        limiter.acquire_on_behalf_of_nowait("a", nbytes)
        levels.append(limiter.pressure)
    limiter.release_on_behalf_of("a", 90)
    levels.append(limiter.pressure)
    assert levels == [
        Pressure.NONE,  # 0 in use
        Pressure.NONE,  # 59
        Pressure.PRESSURE,  # 60: pressure_bytes reached
        Pressure.PRESSURE,  # 89
        Pressure.HARD,  # 90: total_bytes - reserved_bytes, only holders get more
        Pressure.NONE,  # 0
    ]


async def test_read_takes_the_minimum_from_exactly_pressure_bytes_in_use() -> None:
    limiter = BufferLimiter(100, pressure_bytes=60)
    limiter.acquire_on_behalf_of_nowait("others", 59)
    below = limiter.acquire_read_nowait("reader", 20, 5)
    limiter.release_read("reader", below)
    limiter.acquire_on_behalf_of_nowait("others", 1)
    assert limiter.bytes_in_use == limiter.pressure_bytes
    at_the_mark = limiter.acquire_read_nowait("reader", 20, 5)
    assert (below, at_the_mark) == (20, 5)
    assert limiter.held_by("reader") == 5


async def test_pressure_levels_are_ordered() -> None:
    assert Pressure.NONE < Pressure.PRESSURE < Pressure.HARD


async def test_shrinking_total_can_put_the_limiter_under_hard_pressure() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("a", 50)
    before = limiter.pressure
    limiter.total_bytes = 50
    assert (before, limiter.pressure) == (Pressure.NONE, Pressure.HARD)


# -- threads --------------------------------------------------------------------------------


async def test_release_from_thread_hands_off_on_trio_thread() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        waiter = await queue_up(nursery, limiter, "waiter", 100)
        await trio.to_thread.run_sync(limiter.release_on_behalf_of, "holder", 100)
        # The handoff is complete when the thread's call returns.
        assert limiter.held_by("waiter") == 100
    assert waiter.outcome == "granted"


class ThreadRecordingOwner:
    """An owner that notes which threads look it up in the limiter's books."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def __hash__(self) -> int:
        self.threads.add(threading.get_ident())
        return id(self)


async def test_release_from_a_foreign_thread_touches_the_books_only_on_the_trio_thread() -> None:
    limiter = BufferLimiter(100)
    owner = ThreadRecordingOwner()
    limiter.acquire_on_behalf_of_nowait(owner, 100)
    thread = threading.Thread(target=limiter.release_on_behalf_of, args=(owner, 100))
    thread.start()
    await trio.to_thread.run_sync(thread.join)
    assert limiter.bytes_in_use == 0
    assert owner.threads == {threading.get_ident()}


async def test_release_from_worker_thread_defaults_to_the_task_waiting_for_it() -> None:
    limiter = BufferLimiter(100)
    await limiter.acquire(40)
    await trio.to_thread.run_sync(limiter.release, 40)
    assert limiter.bytes_in_use == 0


async def test_release_errors_in_a_thread_are_raised_in_that_thread() -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(RuntimeError, match="holds 0"):
        await trio.to_thread.run_sync(limiter.release_on_behalf_of, "nobody", 1)


def test_release_outside_any_task_or_worker_thread_is_a_runtime_error() -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(RuntimeError, match="no current task"):
        limiter.release(1)


def test_release_from_a_thread_after_the_run_finished_is_made_in_that_thread() -> None:
    limiter = BufferLimiter(100)

    async def main() -> None:
        limiter.acquire_on_behalf_of_nowait("a", 10)

    trio.run(main)
    errors: list[BaseException] = []

    def release_in_thread() -> None:
        try:
            limiter.release_on_behalf_of("a", 10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=release_in_thread)
    thread.start()
    thread.join()
    assert errors == []
    assert limiter.bytes_in_use == 0


def test_a_limiter_can_serve_one_trio_run_after_another() -> None:
    limiter = BufferLimiter(100)

    async def main() -> None:
        await limiter.acquire_on_behalf_of("a", 10)
        await trio.to_thread.run_sync(limiter.release_on_behalf_of, "a", 10)

    trio.run(main)
    trio.run(main)
    assert limiter.statistics().grants == 2


def test_a_limiter_held_in_a_running_trio_run_refuses_another_run() -> None:
    limiter = BufferLimiter(100)
    holding, done = threading.Event(), threading.Event()

    async def first_run() -> None:
        limiter.acquire_on_behalf_of_nowait("a", 10)
        holding.set()
        await trio.to_thread.run_sync(done.wait)
        limiter.release_on_behalf_of("a", 10)

    async def second_run() -> None:
        with pytest.raises(RuntimeError, match="another Trio run"):
            await limiter.acquire_on_behalf_of("b", 10)

    thread = threading.Thread(target=trio.run, args=(first_run,))
    thread.start()
    try:
        assert holding.wait(timeout=30)
        trio.run(second_run)
    finally:
        done.set()
        thread.join()
    assert limiter.bytes_in_use == 0


# -- statistics -----------------------------------------------------------------------------


async def test_statistics_report_usage_waiters_and_top_holders() -> None:
    limiter = BufferLimiter(1000, reserved_bytes=100, pressure_bytes=500)
    for i in range(12):
        limiter.acquire_on_behalf_of_nowait(f"owner{i}", 10 * (i + 1))  # 10..120, 780 total
    limiter.release_on_behalf_of("owner11", 120)
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, limiter, "big", 300)
        stats = limiter.statistics()
        nursery.cancel_scope.cancel()
    assert stats == BufferLimiterStatistics(
        total_bytes=1000,
        reserved_bytes=100,
        pressure_bytes=500,
        bytes_in_use=660,
        bytes_available=340,
        peak_bytes_in_use=780,
        tasks_waiting=1,
        bytes_waited_for=300,
        grants=12,
        timeouts=0,
        pressure=Pressure.PRESSURE,
        top_holders=tuple((repr(f"owner{i}"), 10 * (i + 1)) for i in range(10, 0, -1)),
        pressure_seconds=stats.pressure_seconds,  # time: tested on its own clock below
        pressure_changes=1,
    )


async def test_statistics_are_frozen() -> None:
    stats = BufferLimiter(100).statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.bytes_in_use = 1  # type: ignore[misc]


async def test_repr_shows_usage() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("a", 30)
    assert "30/100 bytes in use, 0 waiting" in repr(limiter)


# -- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"total_bytes": 1.5}, TypeError, "total_bytes"),
        ({"total_bytes": True}, TypeError, "total_bytes"),
        ({"total_bytes": 0}, ValueError, "total_bytes"),
        ({"total_bytes": 100, "reserved_bytes": "1"}, TypeError, "reserved_bytes"),
        ({"total_bytes": 100, "reserved_bytes": -1}, ValueError, "reserved_bytes"),
        ({"total_bytes": 100, "reserved_bytes": 100}, ValueError, "reserved_bytes"),
        ({"total_bytes": 100, "pressure_bytes": 50.0}, TypeError, "pressure_bytes"),
        ({"total_bytes": 100, "pressure_bytes": -1}, ValueError, "pressure_bytes"),
        ({"total_bytes": 100, "reserved_bytes": 10, "pressure_bytes": 91}, ValueError, "pressure"),
    ],
)
def test_bad_constructor_arguments_are_rejected_by_name(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        BufferLimiter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("nbytes", "error"),
    [(0, ValueError), (-5, ValueError), (1.0, TypeError), (False, TypeError), ("8", TypeError)],
)
async def test_bad_nbytes_is_rejected_by_every_method(
    nbytes: object, error: type[Exception]
) -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(error, match="nbytes"):
        limiter.acquire_on_behalf_of_nowait("a", nbytes)  # type: ignore[arg-type]
    with pytest.raises(error, match="nbytes"):
        limiter.release_on_behalf_of("a", nbytes)  # type: ignore[arg-type]
    with pytest.raises(error, match="nbytes"):
        limiter.reserve(nbytes)  # type: ignore[arg-type]
    with pytest.raises(error, match="nbytes"):
        await limiter.acquire_on_behalf_of("a", nbytes)  # type: ignore[arg-type]


async def test_unhashable_owner_is_a_type_error_naming_owner() -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(TypeError, match="owner"):
        limiter.acquire_on_behalf_of_nowait([], 1)
    with pytest.raises(TypeError, match="owner"):
        limiter.release_on_behalf_of([], 1)
    with pytest.raises(TypeError, match="owner"):
        limiter.held_by([])


@pytest.mark.parametrize(
    ("total", "error"), [(1.5, TypeError), (True, TypeError), (0, ValueError), (10, ValueError)]
)
async def test_bad_total_bytes_assignment_is_rejected(
    total: object, error: type[Exception]
) -> None:
    limiter = BufferLimiter(100, reserved_bytes=10)
    with pytest.raises(error, match="total_bytes"):
        limiter.total_bytes = total  # type: ignore[assignment]
    assert limiter.total_bytes == 100


# -- charges for memory that already exists ---------------------------------------------------


async def test_charge_is_granted_past_the_total_and_ahead_of_waiters(
    nursery: trio.Nursery,
) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 90)
    waiter = await queue_up(nursery, limiter, "waiter", 60)
    limiter.charge_on_behalf_of("tail", 50)
    assert (limiter.held_by("tail"), limiter.bytes_in_use) == (50, 140)
    assert limiter.pressure is Pressure.HARD
    assert limiter.statistics().peak_bytes_in_use == 140
    limiter.release_on_behalf_of("holder", 90)
    await wait_all_tasks_blocked()
    assert waiter.outcome == "waiting"  # 50 charged + 60 asked > 100
    limiter.release_on_behalf_of("tail", 50)
    await wait_all_tasks_blocked()
    assert waiter.outcome == "granted"
    assert limiter.bytes_in_use == 60


def test_charge_checks_its_arguments() -> None:
    limiter = BufferLimiter(100)
    with pytest.raises(ValueError, match="nbytes"):
        limiter.charge_on_behalf_of("a", 0)
    with pytest.raises(TypeError, match="nbytes"):
        limiter.charge_on_behalf_of("a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="owner"):
        limiter.charge_on_behalf_of([], 1)
    assert limiter.bytes_in_use == 0


# -- transfers: memory that changes hands -----------------------------------------------------


def test_transfer_moves_bytes_between_owners_without_changing_what_is_in_use() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("pool", 60)
    grants = limiter.statistics().grants
    limiter.transfer("pool", "conn", 40)
    assert (limiter.held_by("pool"), limiter.held_by("conn"), limiter.bytes_in_use) == (20, 40, 60)
    limiter.transfer("pool", "conn", 20)
    assert (limiter.held_by("pool"), limiter.held_by("conn")) == (0, 60)
    assert limiter.statistics().grants == grants  # nothing new was granted


async def test_transfer_frees_nothing_for_waiters(nursery: trio.Nursery) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("pool", 100)
    waiter = await queue_up(nursery, limiter, "other", 10)
    limiter.transfer("pool", "conn", 100)
    await wait_all_tasks_blocked()
    assert waiter.outcome == "waiting"
    limiter.release_on_behalf_of("conn", 10)
    await wait_all_tasks_blocked()
    assert waiter.outcome == "granted"


async def test_transfer_makes_the_taker_a_holder_whose_waiters_may_use_the_reserve(
    nursery: trio.Nursery,
) -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)
    limiter.acquire_on_behalf_of_nowait("pool", 80)
    waiter = await queue_up(nursery, limiter, "conn", 10)  # ordinary: the reserve is not its
    assert waiter.outcome == "waiting"
    limiter.transfer("pool", "conn", 5)
    await wait_all_tasks_blocked()
    assert waiter.outcome == "granted"
    assert limiter.held_by("conn") == 15


def test_transfer_of_more_than_the_giver_holds_is_a_runtime_error() -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("pool", 10)
    with pytest.raises(RuntimeError, match="holds 10"):
        limiter.transfer("pool", "conn", 11)
    with pytest.raises(TypeError, match="owner"):
        limiter.transfer("pool", [], 1)
    with pytest.raises(ValueError, match="nbytes"):
        limiter.transfer("pool", "conn", 0)
    assert (limiter.held_by("pool"), limiter.held_by("conn")) == (10, 0)


def test_time_at_each_pressure_level_is_counted() -> None:
    limiter = BufferLimiter(100, reserved_bytes=20)  # pressure at 75, hard at 80
    now = [1000.0]
    limiter._ledger.clock = lambda: now[0]
    limiter._ledger.level_since = now[0]
    now[0] += 5  # 5 s at NONE
    limiter.acquire_on_behalf_of_nowait("a", 75)
    now[0] += 3  # 3 s at PRESSURE
    limiter.acquire_on_behalf_of_nowait("a", 5)
    now[0] += 2  # 2 s at HARD
    limiter.release_on_behalf_of("a", 80)  # back to NONE
    now[0] += 1
    statistics = limiter.statistics()
    assert statistics.pressure_seconds == (6.0, 3.0, 2.0)
    assert statistics.pressure_changes == 3


async def test_each_queued_request_is_counted_in_the_wait_histogram_when_it_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = BufferLimiter(100)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        granted = await queue_up(nursery, limiter, "a", 50)
        cancelled = await queue_up(nursery, limiter, "b", 50)
        await trio.sleep(0.3)
        cancelled.scope.cancel()
        await trio.sleep(0.7)
        limiter.release_on_behalf_of("holder", 100)
    assert (granted.outcome, cancelled.outcome) == ("granted", "cancelled")
    statistics = limiter.statistics()
    bounds = (*WAIT_SECONDS_BUCKETS, math.inf)
    counts = dict(zip(bounds, statistics.wait_seconds_buckets, strict=True))
    assert counts[0.5] == 1  # the cancelled one waited 0.3 s
    assert counts[1.0] == 1  # the granted one waited 1.0 s
    assert sum(statistics.wait_seconds_buckets) == 2
    assert statistics.wait_seconds_total == pytest.approx(1.3)


async def test_requests_granted_at_once_are_not_in_the_wait_histogram() -> None:
    limiter = BufferLimiter(100)
    await limiter.acquire_on_behalf_of("a", 10)
    limiter.acquire_on_behalf_of_nowait("b", 10)
    statistics = limiter.statistics()
    assert statistics.grants == 2
    assert statistics.wait_seconds_buckets == (0,) * (len(WAIT_SECONDS_BUCKETS) + 1)
