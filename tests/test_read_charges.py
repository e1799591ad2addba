"""What a connection holds in the budget, read by read: each rule with a test that needs it."""

from __future__ import annotations

import trio
import trio.testing
from conftest import socket_pair

import millpond

KIB = 1024


async def test_a_receive_cancelled_at_its_first_checkpoint_gives_back_the_last_chunk(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    initial = millpond.DEFAULT_READ_SIZES.initial
    await left.send_all(b"c" * (3 * initial))
    assert len(await right.receive_some(initial)) == initial  # a full read: more is there
    assert limiter.held_by(right) == initial
    with trio.CancelScope() as scope:
        scope.cancel()
        await right.receive_some(initial)  # cancelled before it reads
    assert scope.cancelled_caught
    assert limiter.held_by(right) == limiter.bytes_in_use == 0
    await left.aclose()
    await right.aclose()


async def test_a_blocked_echo_is_charged_its_chunk_once(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    peer, conn = await socket_pair(poller_name, millpond.BufferPool(limiter))
    async with trio.open_nursery() as nursery:

        async def echo() -> None:
            async for chunk in conn:
                await conn.send_all(chunk)

        nursery.start_soon(peer.send_all, b"p" * (64 << 20))  # and never reads
        nursery.start_soon(echo)
        await trio.testing.wait_all_tasks_blocked()  # both sends are blocked
        # The unsent tail is (part of) the chunk it holds: counted once.
        held = limiter.held_by(conn)
        assert 0 < held <= millpond.readsize.MAX_READ_BYTES
        assert held in millpond.readsize.READ_SIZE_CLASSES
        nursery.cancel_scope.cancel()
    await conn.aclose()
    assert limiter.bytes_in_use == 0
    await peer.aclose()
