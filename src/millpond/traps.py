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
recognise, ``FAST_TRAPS`` is ``False`` and callers use Trio's functions.

``WOKEN`` is one ``outcome.Value(None)`` that the dispatcher sends to every
task it wakes from a ``Park``, so a wake makes no new outcome. Pass it only
to tasks parked on a ``Park``: Trio's own ``wait_task_rescheduled`` unwraps
what it is sent, and an outcome can be unwrapped once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

import outcome
from trio.lowlevel import Abort, RaiseCancelT, cancel_shielded_checkpoint, wait_task_rescheduled

__all__ = ["FAST_TRAPS", "SCHEDULE_POINT", "WOKEN", "Park", "ScheduleYield", "TrioScheduleYield"]

AbortFunc = Callable[[RaiseCancelT], Abort]


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


_SAMPLE_WAIT: Final = _first_yield(wait_task_rescheduled(_abort_unused))
_SCHEDULE_MESSAGE: Final = _first_yield(cancel_shielded_checkpoint())

# True when Trio's trap messages look as this module expects: a wait message
# carries the abort function it was made with, and the schedule message is a
# constant (the same object from every call).
FAST_TRAPS: Final = (
    getattr(_SAMPLE_WAIT, "abort_func", None) is _abort_unused
    and _SCHEDULE_MESSAGE is not None
    and _first_yield(cancel_shielded_checkpoint()) is _SCHEDULE_MESSAGE
)

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
    """The same schedule point through Trio's own function (when ``FAST_TRAPS`` is false)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        return cancel_shielded_checkpoint().__await__()


# ``await SCHEDULE_POINT`` is ``await trio.lowlevel.cancel_shielded_checkpoint()``.
SCHEDULE_POINT: Final[ScheduleYield | TrioScheduleYield] = (
    ScheduleYield() if FAST_TRAPS else TrioScheduleYield()
)
