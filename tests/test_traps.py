"""Specifications for millpond._core.traps: reusable parks and schedule points, and the fallback.

The fast objects speak Trio's trap protocol directly; these tests hold them
to what Trio's own ``wait_task_rescheduled`` and ``cancel_shielded_checkpoint``
do, and check that a connection still works when the fast path is off.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn

import outcome
import pytest
import trio
import trio.testing
from conftest import socket_pair
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
)

import millpond
from millpond._core import traps
from millpond._core.traps import SCHEDULE_POINT, WOKEN, Park, TrioScheduleYield

# Hang guard only, never a timing assertion.
HANG_GUARD_SECONDS = 10

# Far more than a loopback socket's send and receive buffers hold, so a
# send_all of it must park on wait_writable at least once.
BIG_SEND_BYTES = 16 * 1024 * 1024


class Sleeper:
    """A task parked on one reusable ``Park``, as a registration's reader is.

    Failures travel beside the park, as ``traps.Park`` asks: the abort (and
    ``fail``) store a function that raises, and the woken task calls it.
    """

    def __init__(self) -> None:
        self.task: Task | None = None
        self.park = Park(self._abort)
        self.failure: Callable[[], NoReturn] | None = None
        self.aborts = 0

    def _abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self.aborts += 1
        self.failure = raise_cancel
        self.wake(outcome.Value(None))
        return Abort.FAILED

    async def sleep(self) -> None:
        self.task = current_task()
        await self.park
        if self.failure is not None:
            failure, self.failure = self.failure, None
            failure()

    def wake(self, value: outcome.Outcome[None] = WOKEN) -> None:
        task, self.task = self.task, None
        assert task is not None
        reschedule(task, value)

    def fail(self, exc: BaseException) -> None:
        def raise_it() -> NoReturn:
            raise exc

        self.failure = raise_it
        self.wake()


fast_only = pytest.mark.skipif(
    not traps.FAST_TRAPS, reason=f"fast traps are off: {traps.FAST_TRAPS_REASON}"
)


@pytest.fixture
def unproven(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as it is before any run has proven the fast path (restored after)."""
    monkeypatch.setattr(traps, "PROVEN", False)
    monkeypatch.setattr(traps, "_FAILED", False)
    monkeypatch.setattr(SCHEDULE_POINT, "__class__", TrioScheduleYield)


async def prove_now() -> None:
    """Ask for the proof and give the probe the scheduler passes it needs."""
    traps.start_proof()
    for _ in range(4 * traps.PROBE_PASSES):
        await trio.lowlevel.cancel_shielded_checkpoint()


async def echo_once(poller_name: str, message: bytes) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await left.send_all(message)
            assert await right.receive_some() == message


@fast_only
def test_this_trio_gets_the_fast_path() -> None:
    # The suite exercises the fast objects only if Trio's messages were recognised.
    assert traps.FAST_TRAPS
    trio.run(prove_now)
    assert traps.PROVEN
    assert isinstance(SCHEDULE_POINT, traps.ScheduleYield)


def nonblocking_socket() -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    return sock


@fast_only
async def test_registrations_park_through_trio_until_the_proof_is_in(unproven: None) -> None:
    before = millpond.get_poller("epoll").register(nonblocking_socket())
    assert before.read_park is None  # type: ignore[attr-defined]
    assert type(SCHEDULE_POINT) is TrioScheduleYield
    await prove_now()
    assert traps.PROVEN
    assert type(SCHEDULE_POINT) is traps.ScheduleYield
    after = millpond.get_poller("epoll").register(nonblocking_socket())
    assert isinstance(after.read_park, Park)  # type: ignore[attr-defined]
    for registration in (before, after):
        millpond.get_poller("epoll").unregister(registration)
        registration.sock.close()
    await echo_once("epoll", b"after the proof")


@fast_only
async def test_a_connection_made_before_the_proof_parks_the_fast_way_once_it_is_in(
    unproven: None,
) -> None:
    # A server accepts its first clients in the run's first ticks, before the
    # probe has passed; those connections must not park through Trio's
    # wait_task_rescheduled for their whole life (a 4 % echo cost, measured).
    left, right = await socket_pair("epoll")
    async with left, right:
        registration = right._registration
        with trio.fail_after(HANG_GUARD_SECONDS):
            await left.send_all(b"before")
            assert await right.receive_some() == b"before"  # no park: data was there
            async with trio.open_nursery() as nursery:
                nursery.start_soon(right.receive_some)  # parks the slow way
                await trio.testing.wait_all_tasks_blocked()
                assert registration.read_park is None  # type: ignore[attr-defined]
                await left.send_all(b"x")
        await prove_now()
        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(right.receive_some)  # parks again, now on a Park
                await trio.testing.wait_all_tasks_blocked()
                assert isinstance(registration.read_park, Park)  # type: ignore[attr-defined]
                await left.send_all(b"after")
            await left.send_all(b"and again")
            assert await right.receive_some() == b"and again"


@fast_only
async def test_a_trio_that_resumes_parked_tasks_with_none_keeps_trios_functions(
    unproven: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(traps, "_probe_wake_value", None)
    with caplog.at_level(logging.WARNING, logger="millpond._core.traps"):
        await prove_now()
    assert not traps.PROVEN and traps._FAILED
    assert "send(None)" in caplog.text
    assert type(SCHEDULE_POINT) is TrioScheduleYield
    left, right = await socket_pair("epoll")
    assert left._registration.read_park is None  # type: ignore[attr-defined]
    await left.aclose()
    await right.aclose()
    await echo_once("epoll", b"on Trio's functions")


@fast_only
async def test_a_probe_that_raises_keeps_trios_functions(
    unproven: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_round_trip() -> str | None:
        raise AttributeError("a Trio without something the probe needs")

    monkeypatch.setattr(traps, "_round_trip", broken_round_trip)
    with caplog.at_level(logging.WARNING, logger="millpond._core.traps"):
        await prove_now()
    assert not traps.PROVEN and traps._FAILED
    assert "a Trio without something the probe needs" in caplog.text


@fast_only
def test_the_observer_records_a_throw_instead_of_passing_it_on() -> None:
    observed = traps._Observed(Park(lambda raise_cancel: Abort.FAILED))
    steps = observed.__await__()
    assert type(steps.send(None)).__name__ == "WaitTaskRescheduled"
    with pytest.raises(StopIteration):
        steps.throw(RuntimeError("what a Trio cancelling by throw() would do"))
    assert observed.how == "resumed by throw(RuntimeError)"


@fast_only
def test_the_observer_records_send_none() -> None:
    observed = traps._Observed(Park(lambda raise_cancel: Abort.FAILED))
    steps = observed.__await__()
    steps.send(None)
    with pytest.raises(StopIteration):
        steps.send(None)
    assert "send(None)" in observed.how


def test_asking_trio_for_its_messages_may_fail_without_failing_the_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def raising(*args: object) -> NoReturn:
        raise RuntimeError("outside a run")

    monkeypatch.delenv(traps.FAST_TRAPS_ENV_VAR, raising=False)
    monkeypatch.setattr(traps, "wait_task_rescheduled", raising)
    message, reason = traps._recognise_trio()
    assert message is None and reason is not None and "outside a run" in reason


@pytest.mark.parametrize(("value", "fast"), [("0", False), ("1", True)])
def test_the_environment_can_turn_the_fast_traps_off(value: str, fast: bool) -> None:
    environment = {**os.environ, traps.FAST_TRAPS_ENV_VAR: value}
    printed = subprocess.run(
        [sys.executable, "-c", "import millpond._core.traps as t; print(t.FAST_TRAPS)"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed.strip() == str(fast)


@fast_only
def test_park_needs_a_callable_abort() -> None:
    with pytest.raises(TypeError, match="abort_func must be callable"):
        Park(None)  # type: ignore[arg-type]


@fast_only
async def test_one_park_serves_many_sleeps_woken_by_the_shared_outcome() -> None:
    sleeper = Sleeper()
    woken = 0

    async def sleep_three_times() -> None:
        nonlocal woken
        for _ in range(3):
            await sleeper.sleep()
            woken += 1

    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleep_three_times)
            for expected in range(3):
                await trio.testing.wait_all_tasks_blocked()
                assert woken == expected
                sleeper.wake()
    assert woken == 3


@fast_only
async def test_a_park_ends_whatever_it_is_sent() -> None:
    # The contract that makes a Park fast: it never looks at the outcome, so
    # an error sent to it is not raised. Failures must travel beside it.
    sleeper = Sleeper()
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper.sleep)
            await trio.testing.wait_all_tasks_blocked()
            sleeper.wake(outcome.Error(trio.ClosedResourceError("closed")))


@fast_only
async def test_a_failure_stored_beside_the_park_is_raised_by_the_woken_task() -> None:
    sleeper = Sleeper()
    raised: list[BaseException] = []

    async def sleep() -> None:
        try:
            await sleeper.sleep()
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleep)
            await trio.testing.wait_all_tasks_blocked()
            sleeper.fail(trio.ClosedResourceError("closed"))
    assert len(raised) == 1
    assert sleeper.failure is None


@fast_only
async def test_cancelled_sleeper_is_aborted_and_can_park_again() -> None:
    sleeper = Sleeper()
    with trio.move_on_after(0) as scope:
        await sleeper.sleep()
    assert scope.cancelled_caught
    assert sleeper.aborts == 1
    assert sleeper.task is None
    assert sleeper.failure is None
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper.sleep)
            await trio.testing.wait_all_tasks_blocked()
            sleeper.wake()


@pytest.mark.parametrize("point", [SCHEDULE_POINT, TrioScheduleYield()], ids=["fast", "trio"])
async def test_schedule_point_completes_a_checkpoint_and_ignores_cancellation(
    point: traps.ScheduleYield | TrioScheduleYield,
) -> None:
    # checkpoint_if_cancelled() is the cancel point; without the schedule
    # point assert_checkpoints would fail.
    with trio.testing.assert_checkpoints():
        await checkpoint_if_cancelled()
        await point
    with trio.CancelScope() as scope:
        scope.cancel()
        for _ in range(3):
            await point  # not a cancel point: no Cancelled
    assert not scope.cancelled_caught


async def test_connection_works_without_the_fast_path(
    unproven: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a Trio whose messages are not recognised (or not proven) gets:
    # Trio's own waits, and the dispatcher waking with a fresh outcome each time.
    monkeypatch.setattr(traps, "_FAILED", True)  # no proof in this run
    monkeypatch.setattr(traps, "FAST_TRAPS", False)
    a, b = await socket_pair("epoll")
    async with a, b:
        assert a._registration.read_park is None  # type: ignore[attr-defined]
        received: list[bytes] = []

        async def receive() -> None:
            received.append(await b.receive_some())

        with trio.fail_after(HANG_GUARD_SECONDS):
            for message in (b"one", b"two", b"three"):
                async with trio.open_nursery() as nursery:
                    # b parks in receive_some before a sends: the wake comes
                    # from the dispatcher.
                    nursery.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    await a.send_all(message)
        assert received == [b"one", b"two", b"three"]

        # A send larger than the socket buffers parks a on wait_writable until
        # b drains: the write side's wake-up comes from the dispatcher too.
        payload = bytes(range(256)) * (BIG_SEND_BYTES // 256)
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(payload):
                got.extend(await b.receive_some())

        with trio.fail_after(HANG_GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await a.send_all(payload)
        assert got == payload
        assert a._registration.write_park is None  # type: ignore[attr-defined]


# -- cancel_pending: checkpoint_if_cancelled without a coroutine ----------------------------


async def test_cancel_pending_answers_true_until_the_proof_is_in(unproven: None) -> None:
    # Unproven, Trio's own function decides: the caller always awaits it.
    task = current_task()
    before = task._cancel_points
    assert traps.cancel_pending() is True
    assert task._cancel_points == before


@fast_only
async def test_cancel_pending_is_checkpoint_if_cancelled_once_proven() -> None:
    await prove_now()
    assert traps.PROVEN
    task = current_task()
    before = task._cancel_points
    assert traps.cancel_pending() is False
    assert task._cancel_points == before + 1  # counted, as Trio's function counts it
    with trio.testing.assert_checkpoints():
        if traps.cancel_pending():
            await checkpoint_if_cancelled()  # pragma: no cover - not cancelled
        await SCHEDULE_POINT
    with trio.CancelScope() as scope:
        scope.cancel()
        assert traps.cancel_pending() is True
        await checkpoint_if_cancelled()
    assert scope.cancelled_caught
    with trio.CancelScope(shield=True):
        with trio.CancelScope() as outer:
            outer.cancel()
            with trio.CancelScope(shield=True):
                assert traps.cancel_pending() is False  # a shield hides it, as in Trio


@fast_only
async def test_a_send_all_in_a_cancelled_scope_sends_nothing_and_raises(
    poller_name: str,
) -> None:
    await prove_now()
    left, right = await socket_pair(poller_name)
    async with left, right:
        with trio.CancelScope() as scope:
            scope.cancel()
            await left.send_all(b"never sent")
        assert scope.cancelled_caught
        await left.send_all(b"sent")
        with trio.fail_after(HANG_GUARD_SECONDS):
            assert await right.receive_some() == b"sent"


@pytest.mark.parametrize("break_it", ["no_cancel_status", "never_cancelled", "uncounted"])
async def test_the_proof_checks_the_task_attributes_cancel_pending_reads(break_it: str) -> None:
    class NeverCancelled:
        effectively_cancelled = False

    class Disguised:
        """The current task as a differently built Trio might show it."""

        def __init__(self, task: Task) -> None:
            self._task = task
            self._runner = task._runner
            self._frozen_points = task._cancel_points
            if break_it == "never_cancelled":
                self._cancel_status: object = NeverCancelled()
            elif break_it == "uncounted":
                self._cancel_status = task._cancel_status

        @property
        def _cancel_points(self) -> int:
            if break_it == "uncounted":
                return self._frozen_points
            return self._task._cancel_points

    found = await traps._check_cancel_attributes(Disguised(current_task()))  # type: ignore[arg-type]
    expected = {
        "no_cancel_status": "missing",
        "never_cancelled": "does not show",
        "uncounted": "does not count",
    }[break_it]
    assert expected in found
    assert await traps._check_cancel_attributes(current_task()) == "cancel attributes as expected"


@fast_only
async def test_a_trio_whose_cancel_attributes_differ_keeps_trios_functions(
    unproven: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def differs(task: Task) -> str:
        return "a task's cancel attributes look different"

    monkeypatch.setattr(traps, "_check_cancel_attributes", differs)
    with caplog.at_level(logging.WARNING, logger="millpond._core.traps"):
        await prove_now()
    assert not traps.PROVEN and traps._FAILED
    assert "cancel attributes look different" in caplog.text
    assert traps.cancel_pending() is True
    await echo_once("epoll", b"on Trio's functions")


@fast_only
def test_cancel_pending_sees_a_keyboard_interrupt_pending_for_the_main_task() -> None:
    # Trio delivers a pending KeyboardInterrupt to the main task at its next
    # cancel point; so must the check that stands in for it.
    async def main() -> tuple[bool, bool]:
        await prove_now()
        runner = current_task()._runner
        runner.ki_pending = True
        try:
            pending = traps.cancel_pending()
        finally:
            runner.ki_pending = False
        return pending, traps.cancel_pending()

    assert trio.run(main) == (True, False)


async def test_fast_reschedule_is_trios_function_until_the_proof_is_in(unproven: None) -> None:
    assert traps.fast_reschedule() is trio.lowlevel.reschedule
    if not traps.FAST_TRAPS:
        return
    await prove_now()
    fast = traps.fast_reschedule()
    assert fast is not trio.lowlevel.reschedule
    # It wakes a parked task as Trio's function does.
    sleeper = Sleeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper.sleep)
        await trio.testing.wait_all_tasks_blocked()
        task, sleeper.task = sleeper.task, None
        fast(task, WOKEN)
