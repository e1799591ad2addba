"""examples/outbox.py: the chat's per-client queue, bounded by water marks (pure code).

A hypothesis state machine drives one outbox through puts, batches taken and
sent, and a close, and checks after every step that it never holds more than
``high`` bytes, that writability follows the two marks, and that what it
delivers, with its drop markers expanded, accounts for every message put, in
order. The unit tests below it pin each policy's choice on a small example.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from outbox import Batch, Outbox, SlowPolicy, WaterMarks  # noqa: E402


def message(size: int) -> bytes:
    """A new ``size``-byte message, told apart from the others by identity (``is``).

    Sizes of 2 and up: CPython shares one object per single byte.
    """
    assert size >= 2
    return bytes(bytearray(size))


class OutboxMachine(RuleBasedStateMachine):
    """One outbox, a producer and a writer, in every order hypothesis finds."""

    @initialize(
        # Small numbers, so that sizes land exactly on the marks often.
        high=st.integers(min_value=2, max_value=40),
        low_fraction=st.floats(min_value=0, max_value=1),
        policy=st.sampled_from(SlowPolicy),
    )
    def make(self, high: int, low_fraction: float, policy: SlowPolicy) -> None:
        self.marks = WaterMarks(low=int(high * low_fraction), high=high)
        self.policy = policy
        self.outbox = Outbox(self.marks, policy)
        self.put_order: list[bytes] = []  # every message put before close, in order
        self.delivered: Batch = []  # every item of every batch sent
        self.in_flight: Batch = []  # the batch taken and not sent yet
        self.writable = True  # the spec's own account of writability
        self.farewell: bytes | None = None

    @rule(size=st.integers(min_value=2, max_value=40))
    def put(self, size: int) -> None:
        size = min(size, self.marks.high)
        item = message(size)
        before = list(self.outbox._items)
        pending = self.outbox.pending_bytes
        became_unwritable = self.outbox.put(item)
        if self.outbox.closed:
            assert not became_unwritable
            assert list(self.outbox._items) == before
            return
        self.put_order.append(item)
        fits = pending + size <= self.marks.high
        assert became_unwritable == (not fits and self.writable)
        if not fits:
            self.writable = False
        queued_messages = [i for i in self.outbox._items if type(i) is bytes]
        if fits:
            assert queued_messages[-1] is item
        elif self.policy is SlowPolicy.DISCONNECT:
            # Refused: the queue is as it was, but for a marker at its end.
            assert list(map(id, queued_messages)) == [id(i) for i in before if type(i) is bytes]
            assert type(self.outbox._items[-1]) is int
        elif len(b"".join(self.in_flight_messages())) + size <= self.marks.high:
            # DROP_OLDEST keeps the newest whenever the batch in flight leaves room.
            assert queued_messages[-1] is item

    def in_flight_messages(self) -> list[bytes]:
        return [i for i in self.in_flight if type(i) is bytes]

    @precondition(lambda self: not self.in_flight)
    @rule(max_bytes=st.integers(min_value=1, max_value=80))
    def take(self, max_bytes: int) -> None:
        batch = self.outbox.take(max_bytes)
        messages = [i for i in batch if type(i) is bytes]
        if len(messages) > 1:
            assert sum(map(len, messages)) <= max_bytes
        assert bool(batch) or not self.outbox.has_items()
        self.in_flight = batch

    @rule()
    def sent(self) -> None:
        self.delivered += self.in_flight
        self.in_flight = []
        became_writable = self.outbox.sent()
        should = not self.writable and self.outbox.pending_bytes <= self.marks.low
        assert became_writable == should
        if should:
            self.writable = True

    @precondition(lambda self: self.farewell is None)
    @rule(size=st.integers(min_value=1, max_value=10))
    def close(self, size: int) -> None:
        self.farewell = b"!" * size
        self.outbox.close(self.farewell)

    @invariant()
    def never_above_high_but_for_the_farewell(self) -> None:
        allowance = len(self.farewell) if self.farewell else 0
        assert self.outbox.pending_bytes <= self.marks.high + allowance
        assert self.outbox.peak <= self.marks.high + allowance
        assert self.outbox.pending_bytes == sum(
            len(i) for i in [*self.in_flight, *self.outbox._items] if type(i) is bytes
        )

    @invariant()
    def writability_follows_the_marks(self) -> None:
        assert self.outbox.writable == self.writable

    @invariant()
    def every_message_is_delivered_in_order_or_counted_where_it_was_dropped(self) -> None:
        stream = [*self.delivered, *self.in_flight, *self.outbox._items]
        if self.farewell is not None and stream and stream[-1] is self.farewell:
            stream.pop()
        position = 0
        markers = 0
        for item in stream:
            if type(item) is bytes:
                assert self.put_order[position] is item
                position += 1
            else:
                assert item >= 1
                position += item  # type: ignore[operator]
                markers += item  # type: ignore[operator]
        assert position == len(self.put_order)
        assert markers == self.outbox.dropped

    @invariant()
    def markers_in_the_queue_are_never_adjacent(self) -> None:
        items = list(self.outbox._items)
        for first, second in zip(items, items[1:], strict=False):
            assert not (type(first) is int and type(second) is int)


OutboxMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_outbox_state_machine = OutboxMachine.TestCase


def filled(policy: SlowPolicy) -> Outbox:
    """An outbox with marks 4/10 holding three 3-byte messages (9 bytes)."""
    outbox = Outbox(WaterMarks(low=4, high=10), policy)
    for text in (b"aa\n", b"bb\n", b"cc\n"):
        assert not outbox.put(text)
    return outbox


def test_drop_oldest_keeps_the_newest_and_marks_the_gap() -> None:
    outbox = filled(SlowPolicy.DROP_OLDEST)
    assert outbox.put(b"dd\n")  # 12 > 10: not writable, "aa" goes
    assert not outbox.writable
    assert outbox.take(100) == [1, b"bb\n", b"cc\n", b"dd\n"]
    assert outbox.dropped == 1


def test_disconnect_refuses_the_new_message_and_marks_the_gap() -> None:
    outbox = filled(SlowPolicy.DISCONNECT)
    assert outbox.put(b"dd\n")
    assert not outbox.put(b"ee\n")  # already not writable: no new transition
    assert outbox.take(100) == [b"aa\n", b"bb\n", b"cc\n", 2]


def test_drop_oldest_never_drops_the_batch_being_sent() -> None:
    outbox = filled(SlowPolicy.DROP_OLDEST)
    assert outbox.take(6) == [b"aa\n", b"bb\n"]
    outbox.put(b"dd\n")  # 6 in flight + 3 + 3 > 10: "cc" goes
    outbox.put(b"ee\n")  # and then "dd": the batch in flight stays
    assert outbox.sent()  # 3 bytes queued, below low
    assert outbox.take(100) == [2, b"ee\n"]


def test_writable_again_only_at_the_low_mark() -> None:
    outbox = filled(SlowPolicy.DISCONNECT)
    outbox.put(b"dd\n")
    outbox.take(3)
    assert not outbox.sent()  # 6 bytes queued, low is 4
    assert not outbox.writable
    outbox.take(3)
    assert outbox.sent()  # 3 bytes: writable
    assert outbox.writable


def test_a_batch_holds_at_least_one_message_whatever_its_size() -> None:
    outbox = filled(SlowPolicy.DISCONNECT)
    assert outbox.take(1) == [b"aa\n"]


def test_take_twice_without_sent_is_an_error() -> None:
    outbox = filled(SlowPolicy.DISCONNECT)
    outbox.take(3)
    with pytest.raises(RuntimeError):
        outbox.take(3)


def test_a_message_larger_than_high_can_never_fit() -> None:
    with pytest.raises(ValueError, match="never fit"):
        Outbox(WaterMarks(low=1, high=2), SlowPolicy.DROP_OLDEST).put(b"abc")


def test_close_queues_the_farewell_past_high_and_refuses_the_rest() -> None:
    outbox = filled(SlowPolicy.DISCONNECT)
    outbox.close(b"bye\n")
    assert not outbox.put(b"late\n")
    assert outbox.pending_bytes == 13
    assert outbox.take(100) == [b"aa\n", b"bb\n", b"cc\n", b"bye\n"]
    outbox.sent()
    assert outbox.finished


@given(low=st.integers(-5, 20), high=st.integers(-5, 20))
def test_water_marks_need_low_at_most_high(low: int, high: int) -> None:
    if 0 <= low <= high and high >= 1:
        assert WaterMarks(low=low, high=high).high == high
    else:
        with pytest.raises(ValueError):
            WaterMarks(low=low, high=high)
