"""Whole connections under random traffic, budget shortages, resizes and cancellations.

Hypothesis drives one budgeted connection through a random interleaving of
peer writes, budget shortages and resizes, receives (``receive_some`` and
``receive_buffer``) that complete or are cancelled wherever they happen to be
(parked on the socket, queued for memory, granted in the same tick), and
checks, at the end of every example, on both pollers:

* every byte the peer sent is received, in order, *without the peer sending
  again* (a lost edge would leave the last bytes in the kernel for ever);
* a cancelled receive holds no budget, and once both ends are closed nothing
  is held or waiting.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import trio
import trio.testing
from conftest import socket_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millpond

KIB = 1024
HOG = "the rest of the program"
RESERVE = 8 * KIB
FULL_BUDGET = 1024 * KIB

Send = tuple[Literal["send"], int]
Starve = tuple[Literal["starve"]]
Feed = tuple[Literal["feed"]]
Resize = tuple[Literal["resize"], int]
Begin = tuple[Literal["begin"], bool, int | None]
Cancel = tuple[Literal["cancel"]]
FeedAndCancel = tuple[Literal["feed_and_cancel"]]
Operation = Send | Starve | Feed | Resize | Begin | Cancel | FeedAndCancel

operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 40_000)),
        st.tuples(st.just("starve")),
        st.tuples(st.just("feed")),
        st.tuples(
            st.just("resize"),
            st.sampled_from([RESERVE + 1, RESERVE + 600, 12 * KIB, 64 * KIB, FULL_BUDGET]),
        ),
        st.tuples(st.just("begin"), st.booleans(), st.none() | st.integers(1, 70_000)),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("feed_and_cancel")),
    ),
    max_size=30,
)


@dataclasses.dataclass
class PendingReceive:
    scope: trio.CancelScope
    done: trio.Event


class Run:
    """One example: a budgeted connection, its peer, and what has moved so far."""

    def __init__(
        self,
        limiter: millpond.BufferLimiter,
        peer: millpond.Connection,
        conn: millpond.Connection,
        nursery: trio.Nursery,
    ) -> None:
        self.limiter, self.peer, self.conn, self.nursery = limiter, peer, conn, nursery
        self.sent = bytearray()
        self.received = bytearray()
        self.pending: PendingReceive | None = None
        self.counter = 0

    async def apply(self, operation: Operation) -> None:
        kind = operation[0]
        if kind == "send":
            payload = bytes((self.counter + i) % 251 for i in range(operation[1]))  # type: ignore[misc]
            self.counter += len(payload)
            self.sent += payload
            # The peer never waits on us: what the kernel cannot take now is
            # sent by a task of its own.
            self.nursery.start_soon(self.peer_send, payload)
        elif kind == "starve":
            room = self.limiter.ordinary_bytes - self.limiter.bytes_in_use
            if room > 0:
                try:
                    self.limiter.acquire_on_behalf_of_nowait(HOG, room)
                except trio.WouldBlock:
                    pass  # somebody waits already: the budget is short anyway
        elif kind == "feed":
            self.feed()
        elif kind == "resize":
            self.limiter.total_bytes = operation[1]  # type: ignore[misc]
        elif kind == "begin" and self.pending is None:
            self.begin(zero_copy=operation[1], max_bytes=operation[2])  # type: ignore[misc]
        elif kind == "cancel" and self.pending is not None:
            self.pending.scope.cancel()
        elif kind == "feed_and_cancel" and self.pending is not None:
            self.feed()  # may grant a queued read...
            self.pending.scope.cancel()  # ...which is cancelled in the same tick
        await trio.testing.wait_all_tasks_blocked()
        if self.pending is not None and self.pending.done.is_set():
            self.pending = None

    peer_sends: trio.Lock | None = None

    async def peer_send(self, payload: bytes) -> None:
        if self.peer_sends is None:
            self.peer_sends = trio.Lock()
        async with self.peer_sends:  # in order, one at a time
            await self.peer.send_all(payload)

    def feed(self) -> None:
        held = self.limiter.held_by(HOG)
        if held:
            self.limiter.release_on_behalf_of(HOG, held)

    def begin(self, zero_copy: bool, max_bytes: int | None) -> None:
        pending = self.pending = PendingReceive(trio.CancelScope(), trio.Event())

        async def receive() -> None:
            with pending.scope:
                if zero_copy:
                    async with self.conn.receive_buffer(max_bytes) as buf:
                        self.received += buf.view
                else:
                    self.received += await self.conn.receive_some(max_bytes)
            if pending.scope.cancelled_caught:
                # A cancelled receive gives back the last chunk's charge and
                # holds nothing of its own.
                assert self.limiter.held_by(self.conn) == 0
            pending.done.set()

        self.nursery.start_soon(receive)

    async def finish(self) -> None:
        if self.pending is not None:
            self.pending.scope.cancel()
            await self.pending.done.wait()
        self.feed()
        self.limiter.total_bytes = FULL_BUDGET
        with trio.fail_after(10):
            while len(self.received) < len(self.sent):
                chunk = await self.conn.receive_some()
                assert chunk, "EOF before every byte arrived"
                self.received += chunk
        assert self.received == self.sent


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=operations)
async def test_every_byte_arrives_and_nothing_stays_charged(
    poller_name: str, script: list[Operation]
) -> None:
    limiter = millpond.BufferLimiter(FULL_BUDGET, reserved_bytes=RESERVE)
    pool = millpond.BufferPool(limiter)
    peer, conn = await socket_pair(poller_name, pool)
    async with trio.open_nursery() as nursery:
        run = Run(limiter, peer, conn, nursery)
        for operation in script:
            await run.apply(operation)
        await run.finish()
    await conn.aclose()
    await peer.aclose()
    statistics = limiter.statistics()
    assert (statistics.bytes_in_use, statistics.tasks_waiting) == (0, 0)
    assert pool.statistics().bytes_leased == 0
