"""Timeouts and deadlines for every connection of a server, from one timer task.

This module owns when a connection has been idle, waiting to read, blocked
writing or alive for too long, and cancelling its handler's scope when it
has. Four kinds, each counted:

* ``idle_timeout``: no byte received or sent for that long;
* ``read_timeout``: one receive has waited that long for data (or memory);
* ``write_timeout``: one ``send_all`` has been blocked that long (a client
  that stopped reading);
* ``deadline``: the absolute time a handler set on its connection
  (``Connection.deadline``), the slowloris defence: a client trickling a byte
  a second defeats every inactivity timeout, not a deadline for the headers.

Why one task and not a cancel scope per connection
--------------------------------------------------
A cancel scope's deadline is the natural Trio timer, and this module's task
sleeps on exactly one. But an inactivity timeout moves at every byte, and
moving a scope's deadline costs a heap update in Trio's run loop (about a
microsecond): twice per echoed message that is 5 to 10 % of the server's
time. Here a connection only notes the time of its I/O (a clock read, only
when a timeout is configured) and the reaper keeps one heap entry per
connection, due no later than the earliest moment any of its timers could
fire. When an entry comes due the reaper recomputes from the connection's
notes: if nothing expired it pushes the new due time (a connection that was
active simply moves on), otherwise it cancels the handler's scope and records
why. The due time is never later than the true expiry (a wait that starts
later can only expire later; a deadline moved earlier pushes a new entry),
so a timeout fires when it should, not a period late, and an idle server
wakes once per timeout period per connection at most.

Closing needs no memory: the handler's scope is cancelled, and the server's
connection task closes the connection, which releases what it holds.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Final

import trio

from ..stream import Connection

__all__ = ["TIMEOUT_KINDS", "Reaper", "Timeouts", "Watch"]

# Stale heap entries tolerated before a compaction is considered (below this
# a rebuild costs more than the entries do).
COMPACT_AT_STALE: Final = 64

#: The reasons a watch can fire, as counted in the server's statistics.
TIMEOUT_KINDS: Final = ("idle_timeout", "read_timeout", "write_timeout", "deadline")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The timeouts a server applies to each connection (seconds; None: none)."""

    idle: float | None = None
    read: float | None = None
    write: float | None = None


class Watch:
    """One connection under the reaper's eye: its handler's scope, and why it fired."""

    __slots__ = ("active", "connection", "due", "fired", "scope", "seq")

    def __init__(self, connection: Connection, scope: trio.CancelScope) -> None:
        self.connection = connection
        self.scope = scope
        self.active = True
        # The due time and sequence number of its live heap entry (-1: none).
        self.due = math.inf
        self.seq = -1
        #: The kind that expired (one of TIMEOUT_KINDS), or None.
        self.fired: str | None = None


class Reaper:
    """Enforces a server's timeouts and every connection's deadline; run ``run`` in a task.

    ``watch`` a connection when its handler starts (inside the scope to
    cancel) and ``unwatch`` it when it ends. ``fired`` counts what expired.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._heap: list[tuple[float, int, Watch]] = []
        # Entries left in the heap by watches that ended or moved: dropped
        # when they come due, or all at once when they outnumber the live ones.
        self._stale = 0
        self._seq = itertools.count()
        # The scope the reaper sleeps in; its deadline is the earliest due entry.
        self._sleep: trio.CancelScope | None = None
        self.fired: dict[str, int] = dict.fromkeys(TIMEOUT_KINDS, 0)

    @property
    def needs_clock(self) -> bool:
        """Whether connections must note the time of their I/O (any timeout is set)."""
        timeouts = self._timeouts
        return timeouts.idle is not None or timeouts.read is not None or timeouts.write is not None

    def watch(self, connection: Connection, scope: trio.CancelScope) -> Watch:
        """Start enforcing on ``connection``; expiry cancels ``scope``."""
        watch = Watch(connection, scope)
        # The run's clock itself: trio.current_time() returns exactly its
        # current_time(), through two more Python calls, and a connection with
        # timeouts reads the clock at every receive and send.
        clock = trio.lowlevel.current_clock().current_time if self.needs_clock else None
        connection._start_timing(clock, lambda: self._reschedule(watch))
        self._reschedule(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop enforcing (the handler is done); its heap entry goes stale."""
        watch.active = False
        self._forget_entry(watch)
        watch.connection._start_timing(None, None)

    def _forget_entry(self, watch: Watch) -> None:
        if watch.seq != -1:
            watch.seq = -1
            self._stale += 1
            if self._stale > COMPACT_AT_STALE and self._stale * 2 > len(self._heap):
                # Closed connections must not pile up until their old due
                # times (an idle timeout of minutes, thousands of closes a
                # second): keep only the live entries.
                self._heap = [entry for entry in self._heap if entry[1] == entry[2].seq]
                heapq.heapify(self._heap)
                self._stale = 0

    def _reschedule(self, watch: Watch) -> None:
        # Called when the watch starts and whenever its deadline is set: an
        # entry due later than the new expiry would fire late.
        if not watch.active:
            return
        due, _ = self._next_expiry(watch.connection, trio.current_time())
        if watch.seq == -1 or due < watch.due:
            self._push(watch, due)

    def _push(self, watch: Watch, due: float) -> None:
        self._forget_entry(watch)
        watch.due = due
        if due == math.inf:
            return  # nothing to enforce (yet): no entry
        watch.seq = next(self._seq)
        heapq.heappush(self._heap, (due, watch.seq, watch))
        sleep = self._sleep
        if sleep is not None and due < sleep.deadline:
            sleep.deadline = due

    def _next_expiry(self, connection: Connection, now: float) -> tuple[float, str | None]:
        """When the connection's earliest timer can expire, and which, if it already has."""
        timeouts = self._timeouts
        candidates: list[tuple[float, str]] = []
        if timeouts.idle is not None:
            candidates.append((connection._last_activity + timeouts.idle, "idle_timeout"))
        if timeouts.read is not None:
            since = connection._receive_waiting_since
            # Not waiting now: a wait that starts later expires later still.
            candidates.append(((now if since is None else since) + timeouts.read, "read_timeout"))
        if timeouts.write is not None:
            since = connection._send_blocked_since
            candidates.append(((now if since is None else since) + timeouts.write, "write_timeout"))
        deadline = connection.deadline
        if deadline != math.inf:
            candidates.append((deadline, "deadline"))
        if not candidates:
            return math.inf, None
        for expiry, kind in candidates:
            if expiry <= now and (
                kind in ("idle_timeout", "deadline")
                or (kind == "read_timeout" and connection._receive_waiting_since is not None)
                or (kind == "write_timeout" and connection._send_blocked_since is not None)
            ):
                return expiry, kind
        return min(expiry for expiry, _ in candidates), None

    async def run(self) -> None:
        """Sleep until the next entry is due, enforce, repeat; until cancelled."""
        while True:
            now = trio.current_time()
            # self._heap, not a local: a push may compact it into a new list.
            while self._heap and self._heap[0][0] <= now:
                _, seq, watch = heapq.heappop(self._heap)
                if seq != watch.seq:
                    self._stale -= 1
                    continue  # superseded, or unwatched
                watch.seq = -1  # popped: no live entry until pushed again
                due, expired = self._next_expiry(watch.connection, now)
                if expired is None:
                    self._push(watch, due)
                else:
                    self._fire(watch, expired)
            heap = self._heap
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None

    def _fire(self, watch: Watch, kind: str) -> None:
        watch.fired = kind
        watch.active = False
        self.fired[kind] += 1
        watch.scope.cancel()
