"""BufferLimiter against a reference model, driven by random steps.

A Trio run (with a MockClock, so no step depends on wall time) lives in a background thread;
Hypothesis' thread drives it: it starts waiter tasks, cancels them, lets deadlines expire,
releases bytes (sometimes from its own thread, which the limiter must carry over to the Trio
thread), and resizes the budget. After every step the run is settled with
``wait_all_tasks_blocked`` and the limiter is compared with a plain, list-based model of the
policy: who holds what, who was granted, refused or cancelled, who waits in which order, and
the statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from millpond.memory.limiter import BufferLimiter, BufferLimiterStatistics, Pressure

T = TypeVar("T")

OWNERS = ("a", "b", "c")
MAX_TOTAL = 100


@dataclasses.dataclass(eq=False)
class ModelWaiter:
    wid: int
    owner: str
    nbytes: int
    privileged: bool
    deadline: float
    outcome: str = "waiting"  # or "granted", "cancelled", "refused"


@dataclasses.dataclass
class Snapshot:
    stats: BufferLimiterStatistics
    held: dict[str, int]
    privileged: list[tuple[object, int]]
    ordinary: list[tuple[object, int]]
    outcomes: dict[int, str]


class Model:
    """The queueing policy of docs/limiter.md, written as plainly as possible."""

    def __init__(self, total: int, reserved: int) -> None:
        self.total = total
        self.reserved = reserved
        self.held: dict[str, int] = {}
        self.privileged: list[ModelWaiter] = []
        self.ordinary: list[ModelWaiter] = []
        self.grants = 0
        self.timeouts = 0
        self.peak = 0

    @property
    def in_use(self) -> int:
        return sum(self.held.values())

    @property
    def waiting(self) -> list[ModelWaiter]:
        return self.privileged + self.ordinary

    def _give(self, owner: str, nbytes: int) -> None:
        self.held[owner] = self.held.get(owner, 0) + nbytes
        self.grants += 1
        self.peak = max(self.peak, self.in_use)

    def take(self, owner: str, nbytes: int) -> str:
        """'granted', 'wait' or 'refused' (ValueError) for a new request."""
        if self.held.get(owner):
            if nbytes > self.total:
                return "refused"
            if self.privileged or self.in_use + nbytes > self.total:
                return "wait"
        else:
            if nbytes > self.total - self.reserved:
                return "refused"
            if self.waiting or self.in_use + nbytes > self.total - self.reserved:
                return "wait"
        self._give(owner, nbytes)
        return "granted"

    def enqueue(self, waiter: ModelWaiter) -> None:
        if waiter.privileged:
            self.privileged.append(waiter)
        else:
            self.ordinary.append(waiter)

    def serve(self) -> None:
        while True:
            if self.privileged:
                waiter = self.privileged[0]
                if self.in_use + waiter.nbytes > self.total:
                    return
                self.privileged.pop(0)
            elif self.ordinary:
                waiter = self.ordinary[0]
                if self.in_use + waiter.nbytes > self.total - self.reserved:
                    return
                self.ordinary.pop(0)
            else:
                return
            new_holder = not self.held.get(waiter.owner)
            self._give(waiter.owner, waiter.nbytes)
            waiter.outcome = "granted"
            if new_holder:
                promoted = [w for w in self.ordinary if w.owner == waiter.owner]
                self.ordinary = [w for w in self.ordinary if w.owner != waiter.owner]
                for w in promoted:
                    w.privileged = True
                self.privileged += promoted

    def release(self, owner: str, nbytes: int) -> None:
        assert nbytes <= self.held.get(owner, 0)
        self.held[owner] -= nbytes
        if not self.held[owner]:
            del self.held[owner]
        self.serve()

    def transfer(self, giver: str, taker: str, nbytes: int) -> None:
        assert nbytes <= self.held.get(giver, 0)
        self.held[giver] -= nbytes
        if not self.held[giver]:
            del self.held[giver]
        new_holder = not self.held.get(taker)
        self.held[taker] = self.held.get(taker, 0) + nbytes
        if new_holder:
            promoted = [w for w in self.ordinary if w.owner == taker]
            self.ordinary = [w for w in self.ordinary if w.owner != taker]
            for w in promoted:
                w.privileged = True
            self.privileged += promoted
            self.serve()

    def withdraw(self, waiter: ModelWaiter) -> None:
        (self.privileged if waiter.privileged else self.ordinary).remove(waiter)
        waiter.outcome = "cancelled"
        self.timeouts += 1
        self.serve()

    def give_back(self, waiter: ModelWaiter) -> None:
        waiter.outcome = "cancelled"
        self.grants -= 1
        self.timeouts += 1
        self.release(waiter.owner, waiter.nbytes)

    def resize(self, total: int) -> None:
        self.total = total
        for waiter in self.waiting:
            limit = total if waiter.privileged else total - self.reserved
            if waiter.nbytes > limit:
                (self.privileged if waiter.privileged else self.ordinary).remove(waiter)
                waiter.outcome = "refused"
        self.serve()


class LimiterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = trio.testing.MockClock()
        self.crash: BaseException | None = None
        self.outcomes: dict[int, str] = {}  # written by waiter tasks
        self.scopes: dict[int, trio.CancelScope] = {}
        self.waiters: list[ModelWaiter] = []
        self.deadlines: set[float] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run_trio, args=(started,), daemon=True)
        self.thread.start()
        started.wait()
        assert self.crash is None, self.crash

    def _run_trio(self, started: threading.Event) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                started.set()
                await trio.sleep_forever()

        try:
            trio.run(main, clock=self.clock)
        except BaseException as exc:  # reported by teardown
            self.crash = exc
            started.set()

    def in_trio(self, action: Callable[[], T]) -> T:
        """Run ``action`` on the Trio thread, let every task run until all are blocked, and
        take a snapshot for the invariant: one round trip per step keeps the machine fast."""
        result: list[T] = []

        async def step() -> None:
            result.append(action())
            await trio.testing.wait_all_tasks_blocked()
            self.snapshot = self.take_snapshot()

        trio.from_thread.run(step, trio_token=self.token)
        return result[0]

    def settle(self) -> None:
        self.in_trio(lambda: None)

    def take_snapshot(self) -> Snapshot:
        limiter = self.limiter
        ledger = limiter._ledger  # queue order is not public; the model checks it
        return Snapshot(
            stats=limiter.statistics(),
            held={owner: limiter.held_by(owner) for owner in OWNERS},
            privileged=[(w.owner, w.nbytes) for w in ledger.privileged],
            ordinary=[(w.owner, w.nbytes) for w in ledger.ordinary],
            outcomes=dict(self.outcomes),
        )

    def teardown(self) -> None:
        if hasattr(self, "nursery"):
            try:
                trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
            except trio.RunFinishedError:
                pass
        self.thread.join()
        if self.crash is not None:
            raise self.crash
        if hasattr(self, "limiter"):
            # Every owner gives back what it holds (the run is over: the waiters withdrew):
            # then nothing may be in use, and the suite's leak-presence check agrees.
            for owner in OWNERS:
                held = self.limiter.held_by(owner)
                if held:
                    self.limiter.release_on_behalf_of(owner, held)
            assert self.limiter.bytes_in_use == 0

    # -- steps ----------------------------------------------------------------------------

    @initialize(total=st.integers(1, MAX_TOTAL), reserved_share=st.integers(0, 3))
    def create(self, total: int, reserved_share: int) -> None:
        reserved = min(total - 1, total * reserved_share // 10)
        self.model = Model(total, reserved)
        self.ceiling = total

        def create() -> None:
            # Created inside Trio, so the limiter knows its home thread from the start.
            self.limiter = BufferLimiter(total, reserved_bytes=reserved)

        self.in_trio(create)

    def draw_nbytes(self, data: st.DataObject) -> int:
        # Mostly requests that fit a few times over, so that queues form; sometimes large
        # ones, up to impossible.
        total = self.model.total
        return data.draw(st.integers(1, max(1, total // 3)) | st.integers(1, total + 5))

    @rule(data=st.data(), owner=st.sampled_from(OWNERS), timeout=st.none() | st.integers(1, 20))
    def acquire(self, data: st.DataObject, owner: str, timeout: int | None) -> None:
        self.start_waiters([(owner, self.draw_nbytes(data), timeout)])

    @precondition(lambda self: bool(set(OWNERS) - set(self.model.held)))
    @rule(data=st.data())
    def acquire_twice_for_an_owner_that_holds_nothing(self, data: st.DataObject) -> None:
        # Like a connection whose reader and writer both ask for a buffer: once one is
        # granted, the other is a request from a holder.
        owner = data.draw(st.sampled_from(sorted(set(OWNERS) - set(self.model.held))))
        self.start_waiters(
            [(owner, self.draw_nbytes(data), None), (owner, self.draw_nbytes(data), None)]
        )

    def start_waiters(self, requests: list[tuple[str, int, int | None]]) -> None:
        for owner, nbytes, timeout in requests:
            wid = len(self.waiters)
            deadline = float("inf")
            if timeout is not None:
                # Distinct deadlines (exact binary fractions), so that each jump of the
                # clock expires exactly one waiter. (With rate 0 the clock only moves when
                # this thread makes it jump.)
                deadline = self.clock.current_time() + timeout
                while deadline in self.deadlines:
                    deadline += 1 / 1024
                self.deadlines.add(deadline)
            waiter = ModelWaiter(wid, owner, nbytes, bool(self.model.held.get(owner)), deadline)
            self.waiters.append(waiter)
            verdict = self.model.take(owner, nbytes)
            if verdict == "wait":
                self.model.enqueue(waiter)
            else:
                waiter.outcome = verdict
            self.scopes[wid] = trio.CancelScope(deadline=deadline)
            self.outcomes[wid] = "waiting"
            # One step per waiter: Trio does not promise to run new tasks in spawn order.
            run = functools.partial(self.wait_for_bytes, wid, owner, nbytes)
            self.in_trio(lambda: self.nursery.start_soon(run))  # noqa: B023 (runs at once)

    async def wait_for_bytes(self, wid: int, owner: str, nbytes: int) -> None:
        with self.scopes[wid]:
            try:
                await self.limiter.acquire_on_behalf_of(owner, nbytes)
            except ValueError:
                self.outcomes[wid] = "refused"
                return
            self.outcomes[wid] = "granted"
            return
        self.outcomes[wid] = "cancelled"

    @rule(data=st.data(), owner=st.sampled_from(OWNERS), from_thread=st.booleans())
    def acquire_nowait(self, data: st.DataObject, owner: str, from_thread: bool) -> None:
        nbytes = self.draw_nbytes(data)

        def attempt() -> str:
            try:
                self.limiter.acquire_on_behalf_of_nowait(owner, nbytes)
            except trio.WouldBlock:
                return "wait"
            except ValueError:
                return "refused"
            return "granted"

        if from_thread:
            actual = attempt()
            self.settle()
        else:
            actual = self.in_trio(attempt)
        assert actual == self.model.take(owner, nbytes)

    @precondition(lambda self: self.model.held)
    @rule(data=st.data(), from_thread=st.booleans())
    def release(self, data: st.DataObject, from_thread: bool) -> None:
        owner = data.draw(st.sampled_from(sorted(self.model.held)))
        nbytes = data.draw(st.integers(1, self.model.held[owner]))
        self.model.release(owner, nbytes)
        if from_thread:
            # Called right here, in Hypothesis' thread: the limiter carries it over.
            self.limiter.release_on_behalf_of(owner, nbytes)
            self.settle()
        else:
            self.in_trio(lambda: self.limiter.release_on_behalf_of(owner, nbytes))

    @precondition(lambda self: self.model.held)
    @rule(data=st.data(), taker=st.sampled_from(OWNERS), from_thread=st.booleans())
    def transfer(self, data: st.DataObject, taker: str, from_thread: bool) -> None:
        giver = data.draw(st.sampled_from(sorted(self.model.held)))
        nbytes = data.draw(st.integers(1, self.model.held[giver]))
        self.model.transfer(giver, taker, nbytes)
        if from_thread:
            self.limiter.transfer(giver, taker, nbytes)
            self.settle()
        else:
            self.in_trio(lambda: self.limiter.transfer(giver, taker, nbytes))

    @rule(owner=st.sampled_from(OWNERS), extra=st.integers(1, 5), from_thread=st.booleans())
    def release_too_much(self, owner: str, extra: int, from_thread: bool) -> None:
        nbytes = self.model.held.get(owner, 0) + extra

        def attempt() -> bool:
            try:
                self.limiter.release_on_behalf_of(owner, nbytes)
            except RuntimeError:
                return True
            return False

        if from_thread:
            assert attempt()
            self.settle()
        else:
            assert self.in_trio(attempt)

    @precondition(lambda self: self.model.waiting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(self.model.waiting))
        self.model.withdraw(waiter)
        self.in_trio(self.scopes[waiter.wid].cancel)

    @precondition(lambda self: any(w.deadline < float("inf") for w in self.model.waiting))
    @rule()
    def expire_next_deadline(self) -> None:
        waiter = min(self.model.waiting, key=lambda w: w.deadline)
        self.model.withdraw(waiter)
        self.in_trio(lambda: self.clock.jump(waiter.deadline - trio.current_time()))

    @precondition(lambda self: self.model.held and self.model.waiting)
    @rule(data=st.data())
    def release_and_cancel_in_the_same_tick(self, data: st.DataObject) -> None:
        # If the release grants the waiter, it is cancelled before it resumes.
        owner = data.draw(st.sampled_from(sorted(self.model.held)))
        nbytes = data.draw(st.integers(1, self.model.held[owner]))
        waiter = data.draw(st.sampled_from(self.model.waiting))
        self.model.release(owner, nbytes)
        if waiter.outcome == "granted":
            self.model.give_back(waiter)
        else:
            self.model.withdraw(waiter)

        def release_then_cancel() -> None:
            self.limiter.release_on_behalf_of(owner, nbytes)
            self.scopes[waiter.wid].cancel()

        self.in_trio(release_then_cancel)

    @rule(data=st.data(), from_thread=st.booleans())
    def resize(self, data: st.DataObject, from_thread: bool) -> None:
        total = data.draw(st.integers(self.model.reserved + 1, MAX_TOTAL))
        self.model.resize(total)
        self.ceiling = max(total, self.model.in_use)

        def assign() -> None:
            self.limiter.total_bytes = total

        if from_thread:
            assign()
            self.settle()
        else:
            self.in_trio(assign)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def limiter_matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        model, now = self.model, self.snapshot
        stats, held = now.stats, now.held
        assert held == {owner: model.held.get(owner, 0) for owner in OWNERS}
        assert stats.bytes_in_use == sum(held.values()) == model.in_use
        assert now.outcomes == {w.wid: w.outcome for w in self.waiters}
        assert now.privileged == [(w.owner, w.nbytes) for w in model.privileged]
        assert now.ordinary == [(w.owner, w.nbytes) for w in model.ordinary]
        assert stats.tasks_waiting == len(model.waiting)
        assert stats.bytes_waited_for == sum(w.nbytes for w in model.waiting)
        assert (stats.grants, stats.timeouts) == (model.grants, model.timeouts)
        assert stats.peak_bytes_in_use == model.peak
        assert stats.total_bytes == model.total
        # Bounded: only bytes held before a shrink can exceed the total.
        assert stats.bytes_in_use <= self.ceiling
        self.ceiling = max(model.total, stats.bytes_in_use)
        # Nothing lost.
        if stats.bytes_in_use <= stats.total_bytes:
            assert stats.bytes_in_use + stats.bytes_available == stats.total_bytes
        else:
            assert stats.bytes_available == 0
        hard = stats.bytes_in_use >= model.total - model.reserved
        assert (stats.pressure is Pressure.HARD) == hard
        # The level tracked for the time statistics is the level computed now.
        assert self.limiter._ledger.level == self.limiter.pressure
        # An ordinary waiter's owner holds nothing (else it would have been promoted).
        assert not any(model.held.get(w.owner) for w in model.ordinary)


LimiterMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# About 6 s here, by far the slowest test: room for CI's slow cores past the default limit.
test_limiter_state_machine = pytest.mark.time_limit(120)(LimiterMachine.TestCase)
