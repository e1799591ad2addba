"""What a connection holds in the budget, read by read: each rule with a test that needs it."""

from __future__ import annotations

import trio
import trio.testing
from conftest import socket_pair
from hypothesis import example, given, settings
from hypothesis import strategies as st

import millpond
from millpond.memory.ledger import _Ledger, read_request, take_read

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
        assert 0 < held <= millpond.memory.readsize.MAX_READ_BYTES
        assert held in millpond.memory.readsize.READ_SIZE_CLASSES
        nursery.cancel_scope.cancel()
    await conn.aclose()
    assert limiter.bytes_in_use == 0
    await peer.aclose()


# take_read carries read_request() and _Ledger.take() inlined for its hot path
# (ledger.py says so); this holds the copy to the rules it stands in for.
@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(2, 200_000),
    reserve_fraction=st.floats(0, 0.9),
    pressure_fraction=st.none() | st.floats(0, 1),
    others=st.integers(0, 250_000) | st.sampled_from(["at the pressure mark", "one below it"]),
    own=st.integers(0, 50_000),
    waiter=st.none() | st.tuples(st.booleans(), st.integers(1, 100_000)),
    preferred_shift=st.integers(10, 20),
    minimum_shift=st.integers(10, 20),
    backlog=st.booleans(),
    backlog_waiter=st.booleans(),
)
@example(100_000, 0.0, None, "at the pressure mark", 0, None, 12, 10, False, False)
@example(100_000, 0.0, None, "one below it", 0, None, 12, 10, False, False)
@example(100_000, 0.5, 0.5, "at the pressure mark", 4096, None, 12, 10, False, False)
@example(100_000, 0.0, None, "one below it", 0, None, 10, 10, True, False)
@example(100_000, 0.0, None, "one below it", 0, None, 10, 10, False, True)
def test_take_read_agrees_with_the_rules_it_stands_in_for(
    total: int,
    reserve_fraction: float,
    pressure_fraction: float | None,
    others: int | str,
    own: int,
    waiter: tuple[bool, int] | None,
    preferred_shift: int,
    minimum_shift: int,
    backlog: bool,
    backlog_waiter: bool,
) -> None:
    minimum = 1 << min(preferred_shift, minimum_shift)
    preferred = 1 << max(preferred_shift, minimum_shift)

    def ledger() -> _Ledger:
        reserved = min(int(total * reserve_fraction), total - 1)
        pressure = None
        if pressure_fraction is not None:
            pressure = int((total - reserved) * pressure_fraction)
        made = _Ledger(total, reserved, pressure)
        in_use = others
        if isinstance(others, str):  # the edges, which random sizes rarely hit
            in_use = made.pressure_bytes - own - (others == "one below it")
        if in_use > 0:
            made.force("others", in_use)
        if own:
            made.force("reader", own)
        if waiter is not None:
            holder, nbytes = waiter
            made.enqueue("reader" if holder and own else "somebody", nbytes)
        if backlog_waiter:
            made.enqueue("bulk", 1, backlog=True)
        return made

    fast, reference = ledger(), ledger()
    granted = take_read(fast, "reader", preferred, minimum, backlog)
    nbytes = read_request(reference, preferred, minimum, "reader", backlog)
    expected = nbytes if reference.take("reader", nbytes, backlog) else 0
    assert granted == expected
    assert (fast.in_use, fast.held, fast.peak, fast.grants) == (
        reference.in_use,
        reference.held,
        reference.peak,
        reference.grants,
    )


def test_a_read_larger_than_the_free_budget_halves_to_fit_what_is_free_now() -> None:
    ledger = _Ledger(total=1024 * KIB, reserved=64 * KIB, pressure=None)  # 960 KiB ordinary
    assert read_request(ledger, 1024 * KIB, KIB) == 512 * KIB  # the cap: halved to fit 960
    ledger.force("others", 500 * KIB)
    # 460 KiB free for a reader that holds nothing: not 512 KiB, which could only wait.
    assert read_request(ledger, 1024 * KIB, KIB) == 256 * KIB
    assert read_request(ledger, 1024 * KIB, KIB, "new reader") == 256 * KIB
    ledger.force("holder", 4 * KIB)
    # A reader that holds bytes may use the reserve too: 520 KiB free for it.
    assert read_request(ledger, 1024 * KIB, KIB, "holder") == 512 * KIB
    assert take_read(ledger, "new reader", 1024 * KIB, KIB) == 256 * KIB


async def test_reads_that_outgrew_the_free_budget_still_read_large_chunks(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(1024 * KIB)
    limiter.acquire_on_behalf_of_nowait("somebody else", 8 * KIB)  # the budget is never empty
    peer, connection = await socket_pair(poller_name, millpond.BufferPool(limiter))
    payload = bytes(range(256)) * (16 * KIB)  # 4 MiB
    received, receives = bytearray(), 0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send_all, payload)
            while len(received) < len(payload):
                received += await connection.receive_some()
                receives += 1
    assert received == payload
    # Reads grow to 1 MiB, which never fits while 8 KiB are held elsewhere: they must
    # halve to what is free, not fall to the 1 KiB minimum (thousands of receives).
    assert receives < 200
    await peer.aclose()
    await connection.aclose()
    limiter.release_on_behalf_of("somebody else", 8 * KIB)
