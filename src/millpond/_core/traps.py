"""Yielding to Trio's scheduler without allocating: reusable park and yield awaitables.

This module owns one thing: the two ways a hot-path task gives control back
to Trio (park until woken, or yield once) done with objects made once and
reused, instead of Trio's ``wait_task_rescheduled``/``cancel_shielded_checkpoint``
coroutines.

Why
---
Every echoed message parks once (the receive) and yields once (the send's
schedule point). Through Trio's functions each of those creates a coroutine,
a generator (``_async_yield``), a trap message and an ``outcome.Value``, and
unwraps it: on this project's benchmark VM, doing without them made a
64-byte echo server 8 % faster (docs/performance.md). A parked idle
connection also kept the coroutine, the generator and the message alive:
540 bytes of its ~2.7 KiB.

How
---
Trio's run loop speaks a tiny protocol with the coroutine it steps
(``trio/_core/_traps.py``: "the only functions that ever yield back to the
task runner"): the innermost awaitable *yields a message* (a
``WaitTaskRescheduled`` carrying an abort function, or the
``CancelShieldedCheckpoint`` sentinel), and is later *sent an Outcome* that it
unwraps. Any awaitable can take part. ``Park`` is its own iterator:
``__next__`` yields the message, ``send`` ends the await, and nothing is
kept between parks, so one instance per registration serves every park.
A ``Park`` runs no Python at all, so it does not look at what it is sent:
failures (cancellation, a closed socket) travel beside it (see ``Park``).
The schedule point's ``__await__`` is a two-line generator, and one
``SCHEDULE_POINT`` is shared by all tasks.

The messages are not built from Trio's private classes: they are captured
from Trio's own public functions at import (start the coroutine, take what
it yields, close it). If a future Trio yields something this module does not
recognise (or raises while it is asked), ``FAST_TRAPS`` is ``False`` and
callers use Trio's functions. ``MILLPOND_FAST_TRAPS=0`` in the environment
forces that too (CI runs the whole suite once that way).

Proving it, not assuming it
---------------------------
The messages looking right says nothing about how Trio *resumes* a task, and
a ``Park`` depends on that: it ends its await only when the run loop
sends it a value. A Trio that resumed with ``send(None)`` would make
the coroutine call ``next()`` on the Park instead, which parks again (a
hang); one that cancelled by ``throw()`` would raise through the Park while
the registration still named the task (a later wake-up of a task that is not
parked). So the fast path proves itself in the first Trio run that uses
millpond (``start_proof``, called by ``get_poller``): a system task parks a
probe task on a real ``Park`` and drives it through a wake-up, a
cancellation, a close and a schedule point, watching how the run loop
resumes it. Until that round trip has passed, everything uses Trio's own
functions (``PROVEN`` is False and ``SCHEDULE_POINT`` is Trio's); if it
differs anywhere, millpond keeps Trio's functions for good and logs why
(logger ``millpond.traps``). The probe cannot hang the run: it awaits the
Park's first step through an observer that yields exactly once, whatever the
run loop does, and the driver gives up after a bounded number of scheduler
passes.

``cancel_pending`` is the third hot-path step: ``send_all`` must check for
cancellation before it sends, and Trio's ``checkpoint_if_cancelled`` makes a
coroutine to do it (0.55 µs a call here, against 0.34 µs for a plain call
that reads the same task attributes). Those attributes are Trio's private
ones, so the round trip checks them too (``_check_cancel_attributes``: the
cancel status as a scope cancels and ends, the cancel point count), and
until it has passed ``cancel_pending`` leaves the decision to Trio's
function.

``WOKEN`` is one ``outcome.Value(None)`` that the dispatcher sends to every
task it wakes from a ``Park``, so a wake makes no new outcome. Pass it only
to tasks parked on a ``Park``: Trio's own ``wait_task_rescheduled`` unwraps
what it is sent, and an outcome can be unwrapped once.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, NoReturn

import outcome
import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    cancel_shielded_checkpoint,
    current_task,
    reschedule,
    spawn_system_task,
    wait_task_rescheduled,
)

__all__ = [
    "FAST_TRAPS",
    "FAST_TRAPS_ENV_VAR",
    "SCHEDULE_POINT",
    "WOKEN",
    "Park",
    "ScheduleYield",
    "TrioScheduleYield",
    "cancel_pending",
    "fast_reschedule",
    "start_proof",
]

logger = logging.getLogger("millpond.traps")

AbortFunc = Callable[[RaiseCancelT], Abort]

# Set to "0" to use Trio's own functions everywhere (for comparison, and for
# the CI run that checks the fallback).
FAST_TRAPS_ENV_VAR: Final = "MILLPOND_FAST_TRAPS"


def _first_yield(coro: Coroutine[Any, Any, Any]) -> object:
    """Start ``coro``, return the message it yields to the run loop, close it."""
    try:
        return coro.send(None)
    except StopIteration:  # pragma: no cover - a Trio that does not yield here
        return None
    finally:
        coro.close()


def _abort_unused(_raise_cancel: RaiseCancelT) -> Abort:  # pragma: no cover - never called
    return Abort.SUCCEEDED


def _recognise_trio() -> tuple[object, str | None]:
    """The schedule message, and why the fast path is off (None: it may be on).

    Any failure of the check itself means "off": importing millpond must
    never fail because a Trio behaves differently here.
    """
    if os.environ.get(FAST_TRAPS_ENV_VAR, "1") == "0":
        return None, f"{FAST_TRAPS_ENV_VAR}=0"
    try:
        sample_wait = _first_yield(wait_task_rescheduled(_abort_unused))
        schedule = _first_yield(cancel_shielded_checkpoint())
        again = _first_yield(cancel_shielded_checkpoint())
    except Exception as exc:  # any failure: Trio's functions it is
        return None, f"asking Trio for its trap messages raised {exc!r}"
    if getattr(sample_wait, "abort_func", None) is not _abort_unused:
        return None, "Trio's wait message does not carry its abort function"
    if schedule is None or again is not schedule:
        return None, "Trio's schedule message is not one constant object"
    return schedule, None


_SCHEDULE_MESSAGE, FAST_TRAPS_REASON = _recognise_trio()

# True when Trio's trap messages look as this module expects (and the
# environment does not forbid it). Necessary, not sufficient: see PROVEN.
FAST_TRAPS: Final = FAST_TRAPS_REASON is None

# True once the round trip (start_proof) passed in a real run: only then do
# new registrations park on a Park and does SCHEDULE_POINT skip Trio's
# function. False until then, and for good if the round trip failed.
PROVEN = False
_FAILED = False

# The outcome the dispatcher sends to wake a task parked on a Park.
WOKEN: Final[outcome.Value[None]] = outcome.Value(None)


def _wait_message(abort_func: AbortFunc) -> object:
    """A ``WaitTaskRescheduled`` message for ``abort_func``, made by Trio itself."""
    return _first_yield(wait_task_rescheduled(abort_func))


def _finished() -> Generator[None, None, None]:
    return
    yield  # pragma: no cover - makes this a generator


# A generator that has run to its end. Its ``send`` (written in C) raises
# StopIteration whatever it is sent, without making the exception object:
# that is how a Park ends its await without running any Python.
_FINISHED: Final = _finished()
next(_FINISHED, None)


class Park(itertools.repeat):  # type: ignore[type-arg]
    """A reusable ``await trio.lowlevel.wait_task_rescheduled(abort_func)``, minus the outcome.

    Make one per waiting slot (a socket's read side), await it each time the
    slot's task must sleep; wake the task with ``reschedule(task, WOKEN)``.
    Only one task may await a given ``Park`` at a time: the caller's own
    bookkeeping (the registration's ``read_task``) ensures it.

    **The await ignores what the task is sent.** Unlike
    ``wait_task_rescheduled`` it never raises, so a failure must travel beside
    it: ``abort_func`` stores Trio's ``raise_cancel`` where the woken task will
    look, reschedules the task itself and returns ``Abort.FAILED`` (never
    ``SUCCEEDED``, whose error outcome would be dropped); whoever wakes a task
    to fail does the same. Trio documents this way of cancelling in
    ``wait_task_rescheduled``: the woken task calls ``raise_cancel()``.

    Why: nothing of it is Python. ``itertools.repeat`` yields the message from
    C, its ``__iter__`` (returning itself) serves as ``__await__``, and
    ``send`` is a finished generator's, which raises StopIteration from C.
    With a Python ``send`` that raised StopIteration, a park and wake took
    1.18 µs; now 0.55 µs (``benchmarks/probes/trap_cost.py``).
    """

    __slots__ = ()

    def __new__(cls, abort_func: AbortFunc) -> Park:
        if not callable(abort_func):
            raise TypeError(f"abort_func must be callable, not {type(abort_func).__name__}")
        if not FAST_TRAPS:  # pragma: no cover - guarded by callers
            raise RuntimeError("this Trio's trap messages are not recognised; use Trio's functions")
        return super().__new__(cls, _wait_message(abort_func))

    # First step of the await: ``__next__`` hands the run loop the wait
    # message; the wake's ``send`` ends the await.
    if TYPE_CHECKING:

        def __await__(self) -> Generator[Any, Any, None]: ...

    else:
        __await__ = itertools.repeat.__iter__
    send = _FINISHED.send


class ScheduleYield:
    """A reusable ``await trio.lowlevel.cancel_shielded_checkpoint()``: a schedule point.

    Stateless, so one instance (``SCHEDULE_POINT``) serves every task.
    """

    __slots__ = ()

    # A generator, unlike Park: a yield is never idle, and finishing a
    # generator is cheaper than raising StopIteration from ``send``. No
    # unwrap: for this message Trio's run loop itself reschedules the task
    # with a fresh ``Value(None)``, and nothing else can wake it.
    def __await__(self) -> Generator[Any, Any, None]:
        yield _SCHEDULE_MESSAGE


class TrioScheduleYield:
    """The same schedule point through Trio's own function (until the fast one is proven)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        return cancel_shielded_checkpoint().__await__()


# ``await SCHEDULE_POINT`` is ``await trio.lowlevel.cancel_shielded_checkpoint()``.
# One object for everybody; the proof switches its class to ScheduleYield
# (both are empty-slotted, so the switch is allowed and atomic), which lets
# hot paths keep it in a local name.
SCHEDULE_POINT: Final[ScheduleYield | TrioScheduleYield] = TrioScheduleYield()


def cancel_pending() -> bool:
    """Would ``await trio.lowlevel.checkpoint_if_cancelled()`` raise now? If not, count it.

    For hot paths, in place of that await, which makes a coroutine each
    time (about 0.55 µs against 0.34 µs for this call)::

        if cancel_pending():
            await checkpoint_if_cancelled()  # raises Cancelled (or KeyboardInterrupt)

    The test is Trio's own (``trio/_core/_run.py``): the task's cancel
    status, or a KeyboardInterrupt pending for the main task. When it is
    false this counts the cancel point, as Trio's function does (so
    ``trio.testing.assert_checkpoints`` still sees one). It reads Trio's
    private task attributes, so until the proof has checked them in a real
    run (``_check_cancel_attributes``) it answers True and Trio's function
    decides.
    """
    if not PROVEN:
        return True
    task = current_task()
    if task._cancel_status.effectively_cancelled or (
        task is task._runner.main_task and task._runner.ki_pending
    ):
        return True
    task._cancel_points += 1
    return False


def fast_reschedule() -> Callable[..., None]:
    """``trio.lowlevel.reschedule``, or once proven the run's own method it calls.

    Trio's public function is a wrapper that looks the run up and calls
    ``Runner.reschedule``; a dispatcher that wakes a task per message asks
    once per wake-up of its own and saves that Python frame per message. The
    probe is woken through the same method, so the proof covers it. Call
    it from inside a Trio run (a system task: Trio's wrapper protects the
    call from KeyboardInterrupt, and a system task is protected already).
    """
    if not PROVEN:
        return reschedule
    method: Callable[..., None] = current_task()._runner.reschedule
    return method


# -- the proof -------------------------------------------------------------------------------

# How many scheduler passes the driver waits for the probe task to take one
# step. A step needs one pass; the margin covers other tasks scheduled in
# between (the run loop shuffles each batch), and stays a small constant.
PROBE_PASSES: Final = 64

# What the driver wakes the probe with: the dispatcher's WOKEN. A test sets
# it to None to stand for a Trio that resumes parked tasks with send(None).
_probe_wake_value: object = WOKEN

_PROOF_STARTED: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("millpond_traps_proof")


def start_proof() -> None:
    """Prove the fast path in this Trio run, once per process (see the module docstring).

    Cheap to call often: it does nothing once the proof is in (or failed),
    and starts at most one probe per run. Call it from inside a Trio run.
    """
    if PROVEN or _FAILED or not FAST_TRAPS:
        return
    try:
        if _PROOF_STARTED.get():
            return
    except LookupError:
        pass
    _PROOF_STARTED.set(True)
    spawn_system_task(_prove, name="millpond.traps.proof")


async def _prove() -> None:
    # A system task: nothing may escape it (Trio would call that an internal
    # error). A run that ends before the proof did proves nothing either way.
    try:
        reason = await _round_trip()
    except BaseException as exc:
        if _cancellation_in(exc):
            return
        reason = f"the probe raised {exc!r}"
    _conclude(reason)


def _cancellation_in(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)


def _conclude(reason: str | None) -> None:
    global PROVEN, _FAILED
    if reason is None:
        PROVEN = True
        SCHEDULE_POINT.__class__ = ScheduleYield
    else:
        _FAILED = True
        logger.warning("millpond keeps Trio's own park and checkpoint functions: %s", reason)


class _Observed:
    """Awaits a ``Park``'s step itself and records how the run loop resumes it.

    It yields the Park's message exactly once, so whatever the run loop does
    (send a value, send None, throw), the await ends: the probe cannot hang.
    """

    __slots__ = ("how", "park")

    def __init__(self, park: Park) -> None:
        self.park = park
        self.how = "not resumed"

    def __await__(self) -> Generator[Any, Any, None]:
        message = next(self.park)
        try:
            value = yield message
        except BaseException as exc:  # noqa: B036 - recorded, not swallowed: see _round_trip
            self.how = f"resumed by throw({type(exc).__name__})"
            return
        if value is None:
            self.how = "resumed by send(None), which would park a Park again"
            return
        try:
            self.park.send(value)
        except StopIteration:
            self.how = "sent"
            return
        self.how = "a Park did not end its await when sent its wake-up"  # pragma: no cover


def _raise_closed() -> NoReturn:
    raise trio.ClosedResourceError("probe: closed")


class _ProbeSlot:
    """What a registration's read side is to a Park: a task, a failure, an abort."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.failure: Callable[[], NoReturn] | None = None
        self.aborts = 0
        self.park = Park(self._abort)
        self.step = 0
        self.results: list[str] = []
        self.scope = trio.CancelScope()

    def _abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self.aborts += 1
        self.fail(raise_cancel)
        return Abort.FAILED

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:  # else Trio's abort woke it already (the run is ending)
            # The run's own method, as fast_reschedule hands it to the dispatcher.
            current_task()._runner.reschedule(task, _probe_wake_value)  # type: ignore[arg-type]

    def fail(self, failure: Callable[[], NoReturn]) -> None:
        self.failure = failure
        self.wake()

    def close(self) -> None:
        self.fail(_raise_closed)

    async def park_as(self, step: int) -> str:
        self.task = current_task()
        self.step = step
        observed = _Observed(self.park)
        await observed
        return observed.how

    def raise_failure(self) -> None:
        failure, self.failure = self.failure, None
        if failure is not None:
            failure()

    async def run(self) -> None:
        # Step 0: the task attributes cancel_pending reads mean what it needs.
        self.results.append(await _check_cancel_attributes(current_task()))
        # Step 1: the fast schedule point returns.
        await ScheduleYield()
        self.results.append("schedule point passed")
        # Step 2: a wake-up.
        how = await self.park_as(2)
        self.results.append(f"wake: {how}, failure {self.failure is not None}")
        # Step 3: a cancellation, which must arrive through the abort.
        with self.scope:
            how = await self.park_as(3)
            self.results.append(f"cancel: {how}, aborts {self.aborts}")
            self.raise_failure()
        self.results.append(f"cancel raised: {self.scope.cancelled_caught}")
        # Step 4: a close, travelling beside the park.
        how = await self.park_as(4)
        self.results.append(f"close: {how}")
        try:
            self.raise_failure()
        except trio.ClosedResourceError:
            self.results.append("close raised: True")
        self.step = 5


_EXPECTED: Final = [
    "cancel attributes as expected",
    "schedule point passed",
    "wake: sent, failure False",
    "cancel: sent, aborts 1",
    "cancel raised: True",
    "close: sent",
    "close raised: True",
]


async def _check_cancel_attributes(task: Task) -> str:
    """What cancel_pending reads, checked on ``task`` (the current one): cancelled and not."""
    try:
        runner = task._runner
        if task is runner.main_task or runner.ki_pending is not False:
            return "the probe is the main task, or a KeyboardInterrupt is pending"
        before = task._cancel_points
        if type(before) is not int or task._cancel_status.effectively_cancelled is not False:
            return "a task's cancel attributes look different"
        await trio.lowlevel.checkpoint_if_cancelled()
        if task._cancel_points != before + 1:
            return "checkpoint_if_cancelled does not count the task's cancel points"
        with trio.CancelScope() as scope:
            scope.cancel()
            if task._cancel_status.effectively_cancelled is not True:
                return "a cancelled scope does not show in the task's cancel status"
        if task._cancel_status.effectively_cancelled is not False:
            return "the task's cancel status stays cancelled after its scope"
    except AttributeError as exc:
        return f"a task's cancel attributes are missing ({exc})"
    return "cancel attributes as expected"


async def _round_trip() -> str | None:
    """Drive a probe task through wake, cancel, close; None if all went as a Park needs."""
    slot = _ProbeSlot()

    async def until_step(step: int) -> bool:
        for _ in range(PROBE_PASSES):
            await cancel_shielded_checkpoint()
            if slot.step >= step:
                return True
        return False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slot.run)
        actions: dict[int, Callable[[], None]] = {
            2: slot.wake,
            3: slot.scope.cancel,
            4: slot.close,
        }
        for step, act in actions.items():
            if not await until_step(step):
                nursery.cancel_scope.cancel()
                return f"the probe task never parked for step {step} ({slot.results})"
            act()
        if not await until_step(5):
            nursery.cancel_scope.cancel()
            return f"the probe task did not finish ({slot.results})"
    if slot.results != _EXPECTED:
        return f"the round trip went {slot.results}, expected {_EXPECTED}"
    return None
