"""Time limits for tests: a test that hangs fails with a clear message, and the run goes on.

The hooks are imported into conftest.py, where pytest looks for them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import pytest
import trio

# Each phase of a test (setup, call, teardown) gets a wall-clock time limit,
# kept by SIGALRM, so that it also holds for sync tests, for a test stuck in a
# blocking syscall, and for tests on a MockClock (whose deadlines never come
# while nothing advances the clock). When the alarm goes off:
#
# * inside a Trio run (pytest-trio runs the test and its fixtures in one run,
#   each hypothesis example in a run of its own), the run's main task is
#   cancelled through the run's token; the test fails with TimeLimitExceeded,
#   chained to the Cancelled that shows where it was parked;
# * if that run is still going a grace period later (a blocking call, a
#   swallowed cancellation), or outside Trio (a sync test), the signal handler
#   raises TimeLimitExceeded in whatever the main thread is doing.
#
# The second way is pytest-timeout's signal method, and it is the last resort
# for a reason: raised inside a Trio run it makes a TrioInternalError, or it
# leaves the run half-open, and the run's abandoned tasks are finalized later,
# in some other test. So after it the session stops, as with -x, with the
# report of everything so far. No dependency added.

# The slowest test here takes about 6 s (the limiter's state machine, which
# asks for more) and every other under 1 s; 30 s leaves a wide margin for CI's
# two slow cores, and a hung test costs the run half a minute, not all of it.
DEFAULT_TIME_LIMIT_SECONDS = 30.0

# How long a cancelled Trio run may take to end before the alarm raises
# wherever it lands: as long again as the limit, at most this.
MAX_CANCEL_GRACE_SECONDS = 5.0


class TimeLimitExceeded(BaseException):
    """A test ran past its time limit.

    A ``BaseException``, like ``KeyboardInterrupt``: hypothesis does not try to
    shrink it (which would run the hang again), and no ``except Exception`` in
    the code under test swallows it.
    """


@dataclass
class _Alarm:
    """The time limit of the test phase that is running now."""

    test: str
    seconds: float
    expired: bool = False
    cancelled_run: trio.lowlevel.TrioToken | None = None
    broke_a_trio_run: bool = False

    def failure(self) -> TimeLimitExceeded:
        return TimeLimitExceeded(
            f"{self.test} still running after its time limit of {self.seconds:g} s: "
            f"it hangs, or it needs @pytest.mark.time_limit(seconds) "
            f"(default {DEFAULT_TIME_LIMIT_SECONDS:g} s; --time-limit=0 turns limits off)"
        )


_alarm: _Alarm | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_SECONDS,
        metavar="SECONDS",
        help="wall-clock limit of each test phase, unless marked time_limit; 0: no limits",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "time_limit(seconds): let each phase of this test run for up to `seconds` "
        f"(wall clock) before it fails as hung; default {DEFAULT_TIME_LIMIT_SECONDS:g}",
    )


def _cancel_main_task() -> None:
    # Trio's root task opens three nurseries, outer to inner (Task.child_nurseries):
    # the run_sync_soon task's, the system tasks', and the main task's alone.
    # Cancelling the last cancels the test and its fixtures, not Trio's machinery.
    nurseries = trio.lowlevel.current_root_task().child_nurseries
    if nurseries:
        nurseries[-1].cancel_scope.cancel()


def _on_alarm(signum: int, frame: object) -> None:
    alarm = _alarm
    if alarm is None:
        return
    alarm.expired = True
    if trio.lowlevel.in_trio_run():
        token = trio.lowlevel.current_trio_token()
        if token is not alarm.cancelled_run:  # a later hypothesis example is a new run
            alarm.cancelled_run = token
            try:
                # The one Trio call that is safe in a signal handler.
                token.run_sync_soon(_cancel_main_task)
            except trio.RunFinishedError:
                pass
            else:
                signal.setitimer(signal.ITIMER_REAL, min(alarm.seconds, MAX_CANCEL_GRACE_SECONDS))
                return
    alarm.broke_a_trio_run = trio.lowlevel.in_trio_run()
    raise alarm.failure()


@contextlib.contextmanager
def _time_limit(item: pytest.Item, phase: str) -> Iterator[None]:
    global _alarm
    marker = item.get_closest_marker("time_limit")
    if marker is not None:
        seconds = float(marker.args[0] if marker.args else marker.kwargs["seconds"])
    else:
        seconds = item.config.getoption("time_limit")
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return
    alarm = _alarm = _Alarm(f"{item.nodeid} ({phase})", seconds)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except BaseException as exc:
        if alarm.expired and not isinstance(exc, TimeLimitExceeded):
            raise alarm.failure() from exc
        raise
    else:
        if alarm.expired:  # it swallowed the cancellation and passed, too late
            raise alarm.failure()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _alarm = None
        if alarm.broke_a_trio_run:
            item.session.shouldstop = (
                f"{item.nodeid} blocked or ignored the cancellation of its Trio run, "
                "which its time limit then broke: later tests would fail for it"
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _time_limit(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _time_limit(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _time_limit(item, "teardown"):
        return (yield)
