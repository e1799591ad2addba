"""One client's outgoing queue, bounded by high and low water marks in bytes: pure code, no I/O.

A broadcast server (``chat.py``) must never let one client that stops reading
slow the others down or make the server's memory grow. So it never waits for
a client: it puts each message in that client's ``Outbox`` and moves on, and
the client's own writer task drains the outbox into its socket. The outbox is
where the limit lives, with Netty's two marks (``WriteBufferWaterMark``):

* **high**: the outbox never holds more than ``high`` bytes (queued, plus the
  batch its writer is sending). A message that would take it past ``high``
  makes the client **not writable**, and the policy decides what gives:
  ``DROP_OLDEST`` drops the oldest queued messages until the new one fits
  (the client keeps the newest), ``DISCONNECT`` refuses the new one (the
  caller then gives the client a while to catch up before it disconnects it).
* **low**: a client that is not writable becomes writable again only once its
  writer has brought the outbox down to ``low`` bytes or fewer. The gap
  between the marks is hysteresis: a client hovering at the limit does not
  flip state with every message.

Dropped messages are not silent: the outbox leaves a marker where they were
(an ``int``, how many), merged with any marker next to it, and the writer
turns it into a notice. The markers count no bytes; there is at most one per
queued message, plus one.

The outbox never reads a clock and never blocks: ``put`` and ``sent`` return
whether the client's writability changed, and the caller (the I/O code) acts
on it, for instance by setting a deadline. That keeps every rule here
testable without sockets (``tests/test_outbox.py`` runs a hypothesis state
machine over it), as ``h11`` and millpond's own ``ledger.py`` do.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Batch", "Outbox", "SlowPolicy", "WaterMarks"]

#: What ``take`` returns: messages in order, and ``int`` markers where that
#: many messages were dropped.
Batch = list[bytes | int]


class SlowPolicy(enum.Enum):
    """What happens to a message for a client whose outbox is full."""

    #: Drop the oldest queued messages to make room: the client keeps up with
    #: the newest, and is told how many it missed.
    DROP_OLDEST = "drop-oldest"
    #: Refuse the new message: the client is behind, and should be
    #: disconnected if it stays behind (the caller's deadline).
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class WaterMarks:
    """Netty's ``WriteBufferWaterMark``: not writable above ``high``, writable again at ``low``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"{name} must be an int (bytes), not {type(value).__name__}")
        if not 0 <= self.low <= self.high or self.high < 1:
            raise ValueError(
                f"need 0 <= low <= high and high >= 1, not low={self.low} high={self.high}"
            )


class Outbox:
    """A client's queue of outgoing messages, never more than ``marks.high`` bytes.

    The producer calls ``put``; the client's writer calls ``take`` for a
    batch, sends it, and calls ``sent``::

        outbox = Outbox(WaterMarks(low=16384, high=65536), SlowPolicy.DROP_OLDEST)
        became_unwritable = outbox.put(b"alice: hello\\n")
        batch = outbox.take(65536)     # [b"alice: hello\\n"]
        ...                            # send it
        became_writable = outbox.sent()

    ``close(farewell)`` queues a last message (past ``high`` if need be) and
    refuses every later ``put``; the writer stops once ``finished``.
    """

    __slots__ = (
        "_closed",
        "_in_flight",
        "_items",
        "_policy",
        "_queued",
        "_writable",
        "dropped",
        "high",
        "low",
        "peak",
    )

    def __init__(self, marks: WaterMarks, policy: SlowPolicy) -> None:
        if not isinstance(marks, WaterMarks):
            raise TypeError(f"marks must be WaterMarks, not {type(marks).__name__}")
        if not isinstance(policy, SlowPolicy):
            raise TypeError(f"policy must be a SlowPolicy, not {type(policy).__name__}")
        self.high = marks.high
        self.low = marks.low
        self._policy = policy
        self._items: deque[bytes | int] = deque()
        self._queued = 0  # bytes of the messages in _items
        self._in_flight = 0  # bytes of the batch the writer took and has not sent yet
        self._writable = True
        self._closed = False
        #: Messages dropped so far.
        self.dropped = 0
        #: The most bytes this outbox has held at once (at most ``high``, or one farewell more).
        self.peak = 0

    @property
    def writable(self) -> bool:
        """False from a message that did not fit until the outbox is down to ``low`` bytes."""
        return self._writable

    @property
    def pending_bytes(self) -> int:
        """Bytes held: queued messages plus the batch being sent."""
        return self._queued + self._in_flight

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    @property
    def finished(self) -> bool:
        """Closed, and nothing left to take: the writer is done."""
        return self._closed and not self._items

    def has_items(self) -> bool:
        """Whether ``take`` would return anything (messages or a drop marker)."""
        return bool(self._items)

    def put(self, message: bytes) -> bool:
        """Queue ``message``, or drop what the policy says; return True if it made the
        client not writable. A closed outbox ignores it."""
        size = len(message)
        if size > self.high:
            raise ValueError(f"a {size}-byte message can never fit under high={self.high}")
        if self._closed:
            return False
        if self._queued + self._in_flight + size <= self.high:
            self._append(message, size)
            return False
        became_unwritable = self._writable
        self._writable = False
        items = self._items
        if self._policy is SlowPolicy.DROP_OLDEST:
            # Oldest first, never the batch in flight (it may be half sent
            # already). Markers met on the way merge into the new front one.
            missed = 0
            while items and self._queued + self._in_flight + size > self.high:
                oldest = items.popleft()
                if type(oldest) is bytes:
                    self._queued -= len(oldest)
                    self.dropped += 1
                    missed += 1
                else:
                    missed += oldest  # type: ignore[operator]
            if missed:
                # Markers sit only at the front here (this policy drops nothing
                # else), and the loop took that one: no neighbour to merge with.
                items.appendleft(missed)
            if self._queued + self._in_flight + size <= self.high:
                self._append(message, size)
                return became_unwritable
        # DISCONNECT, or no room even with the queue empty (the batch in flight
        # is too large): this message is the one dropped.
        self.dropped += 1
        if items and type(items[-1]) is int:
            items[-1] += 1  # type: ignore[operator]
        else:
            items.append(1)
        return became_unwritable

    def _append(self, message: bytes, size: int) -> None:
        self._items.append(message)
        self._queued += size
        pending = self._queued + self._in_flight
        if pending > self.peak:
            self.peak = pending

    def take(self, max_bytes: int) -> Batch:
        """The next batch for the writer, oldest first: messages of up to ``max_bytes`` in all
        (at least one message, whatever its size), with any drop markers among them.

        The batch stays counted until ``sent``; one batch at a time.
        """
        if self._in_flight:
            raise RuntimeError("take() before the last batch was sent()")
        items = self._items
        batch: Batch = []
        taken = 0
        while items:
            item = items[0]
            if type(item) is bytes:
                size = len(item)
                if taken and taken + size > max_bytes:
                    break
                taken += size
            batch.append(items.popleft())
        self._queued -= taken
        self._in_flight = taken
        return batch

    def sent(self) -> bool:
        """The last batch is sent; return True if that made the client writable again."""
        self._in_flight = 0
        if not self._writable and self._queued <= self.low:
            self._writable = True
            return True
        return False

    def close(self, farewell: bytes | None = None) -> None:
        """Queue ``farewell`` (whatever the marks say) and accept nothing more; idempotent."""
        if self._closed:
            return
        self._closed = True
        if farewell:
            self._append(farewell, len(farewell))
