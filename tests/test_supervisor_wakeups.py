"""The ``--workers`` supervisor's loop (``millpond.cli.supervisor``) never sleeps on a signal.

The supervisor learns of a signal two ways: its handler writes the signal
down (``_SignalInbox.take`` hands it over) and CPython writes a byte to the
wake-up socket, which wakes the loop's ``select``. The loop must empty that
socket before it takes the signals: a signal that comes after the take must
leave its byte, or the loop sleeps with a SIGTERM written down and nobody to
wake it. These tests play the signal's arrival by hand, at the moment that
matters, so nothing depends on timing and no handler is installed in the
test process.
"""

from __future__ import annotations

import math
import selectors
import signal
from collections.abc import Iterator

import pytest

from millpond.cli.supervisor import _SignalInbox, _Supervisor


class QuietRoster:
    """A roster with nothing to do but note the signals it is told of."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def next_deadline(self) -> float:
        return math.inf

    def tick(self, now: float) -> list[object]:
        return []

    def signal(self, signum: int, now: float) -> list[object]:
        self.signals.append(signum)
        return []


def arrive(inbox: _SignalInbox, signum: int) -> None:
    """What a signal does: the handler writes it down, CPython writes the wake-up byte."""
    inbox._received(signum, None)
    inbox._writer.send(b"\0")


@pytest.fixture
def loop() -> Iterator[tuple[_SignalInbox, QuietRoster, _Supervisor]]:
    """A supervisor's loop over a fresh inbox (no handler installed) and a quiet roster."""
    inbox = _SignalInbox()
    roster = QuietRoster()
    supervisor = _Supervisor(roster, [], None, inbox)  # type: ignore[arg-type]
    try:
        yield inbox, roster, supervisor
    finally:
        supervisor._selector.close()
        inbox.reader.close()
        inbox._writer.close()


def woken(inbox: _SignalInbox) -> bool:
    """Whether the wake-up socket holds a byte: the next select returns at once."""
    with selectors.DefaultSelector() as probe:
        probe.register(inbox.reader, selectors.EVENT_READ)
        return bool(probe.select(0))


def test_a_signal_that_comes_just_after_the_take_still_wakes_the_loop(
    loop: tuple[_SignalInbox, QuietRoster, _Supervisor],
) -> None:
    inbox, roster, supervisor = loop
    taken_once = inbox.take

    def take_then_sigterm() -> list[int]:
        taken = taken_once()
        arrive(inbox, signal.SIGTERM)  # in the loop, right after the take
        return taken

    inbox.take = take_then_sigterm  # type: ignore[method-assign]
    arrive(inbox, signal.SIGCHLD)  # a worker changed state: the loop wakes
    assert supervisor._next_events() is None
    assert roster.signals == []  # the SIGTERM came too late for this round...
    inbox.take = taken_once  # type: ignore[method-assign]
    # ...so its byte must still be there, for the next select to return at once.
    assert woken(inbox), "the wake-up byte was drained: the loop would sleep"
    assert supervisor._next_events() is None
    assert roster.signals == [signal.SIGTERM]


def test_a_signal_before_the_select_is_taken_in_that_round(
    loop: tuple[_SignalInbox, QuietRoster, _Supervisor],
) -> None:
    inbox, roster, supervisor = loop
    arrive(inbox, signal.SIGTERM)
    arrive(inbox, signal.SIGCHLD)  # woken, not written down
    assert supervisor._next_events() is None
    assert roster.signals == [signal.SIGTERM]
    assert not woken(inbox)  # both bytes drained: nothing left to wake for
