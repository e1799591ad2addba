"""No lost edge: whatever stops a receive between wake-up and read, the bytes stay reachable.

Every test here ends the same way: the peer sends nothing more, and the next
receive must still return what was sent before. On the epoll poller a wake-up
used to consume the edge; a receive that then stopped before reading (a
timeout while it queued for memory, a refused request) left the bytes in the
kernel with nothing left to announce them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing
from conftest import socket_pair

import millpond

KIB = 1024
HOG = "another part of the program"


async def receive_exactly(stream: millpond.Connection, nbytes: int) -> bytes:
    """Receive until ``nbytes`` arrived; fails (instead of hanging) if they never do."""
    received = b""
    with trio.fail_after(5):
        while len(received) < nbytes:
            chunk = await stream.receive_some()
            assert chunk, "EOF before every byte arrived"
            received += chunk
    return received


class BackgroundReceive:
    """A ``receive_some`` running in a task of its own."""

    def __init__(self, stream: millpond.Connection) -> None:
        self.stream = stream
        self.done = trio.Event()
        self.data = b""

    async def run(self) -> None:
        self.data = await self.stream.receive_some()
        self.done.set()

    async def result(self) -> bytes:
        """What it received; fails (instead of hanging) if it never returns."""
        with trio.fail_after(5):
            await self.done.wait()
        return self.data


async def receive_in_background(
    nursery: trio.Nursery, stream: millpond.Connection
) -> BackgroundReceive:
    """Start a receive and return once it is parked."""
    pending = BackgroundReceive(stream)
    nursery.start_soon(pending.run)
    await trio.testing.wait_all_tasks_blocked()
    return pending


# The pairs starved_pair made in the current test, closed when it ends.
OPENED: list[tuple[millpond.Connection, millpond.Connection, millpond.BufferLimiter]] = []


@pytest.fixture(autouse=True)
def close_starved_pairs() -> Iterator[None]:
    """After each test (and its Trio run), close its pairs and give back HOG's bytes: the
    reading side then holds nothing (the suite's leak-presence check looks). Closing
    needs no run: ``close()`` is synchronous, and a finished run's poller has already
    unregistered every socket."""
    yield
    while OPENED:
        left, right, limiter = OPENED.pop()
        left.close()
        right.close()
        held = limiter.held_by(HOG)
        if held:
            limiter.release_on_behalf_of(HOG, held)


async def starved_pair(
    poller_name: str, budget: int = 64 * KIB
) -> tuple[millpond.Connection, millpond.Connection, millpond.BufferLimiter]:
    """A connected pair whose reading side has a budget that HOG holds entirely."""
    limiter = millpond.BufferLimiter(budget)
    left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
    limiter.acquire_on_behalf_of_nowait(HOG, budget)
    OPENED.append((left, right, limiter))
    return left, right, limiter


async def test_receive_woken_then_cancelled_in_the_memory_queue_keeps_the_edge(
    poller_name: str, nursery: trio.Nursery
) -> None:
    left, right, limiter = await starved_pair(poller_name)
    scope = trio.CancelScope()

    async def receive_until_cancelled() -> None:
        with scope:
            await right.receive_some()
        assert scope.cancelled_caught

    nursery.start_soon(receive_until_cancelled)
    await trio.testing.wait_all_tasks_blocked()  # parked on the socket: idle
    await left.send_all(b"request")  # wakes it; it queues for memory
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tasks_waiting == 1
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    assert await receive_exactly(right, 7) == b"request"


async def test_receive_granted_and_cancelled_in_the_same_tick_keeps_the_edge(
    poller_name: str, nursery: trio.Nursery
) -> None:
    left, right, limiter = await starved_pair(poller_name)
    scope = trio.CancelScope()
    nursery.start_soon(_receive_in, scope, right)
    await trio.testing.wait_all_tasks_blocked()
    await left.send_all(b"request")
    await trio.testing.wait_all_tasks_blocked()
    limiter.release_on_behalf_of(HOG, 64 * KIB)  # grants the queued read...
    scope.cancel()  # ...which is cancelled before it resumes
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.bytes_in_use == 0  # the grant went back
    assert await receive_exactly(right, 7) == b"request"


async def _receive_in(scope: trio.CancelScope, stream: millpond.Connection) -> None:
    with scope:
        await stream.receive_some()


async def test_receive_woken_then_timed_out_in_a_read_loop_answers_once_memory_is_back(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    # The issue's own scenario, with one client: a handler polls under a timeout.
    left, right, limiter = await starved_pair(poller_name)
    answered = trio.Event()

    async def handler() -> None:
        while True:
            with trio.move_on_after(0.3):
                request = await right.receive_some()
                await right.send_all(request.upper())
                answered.set()
                return

    nursery.start_soon(handler)
    await trio.testing.wait_all_tasks_blocked()
    await left.send_all(b"ping")
    await trio.sleep(1)  # several timeouts while the budget is held
    assert not answered.is_set()
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    assert await receive_exactly(left, 4) == b"PING"


async def test_receive_granted_memory_reads_at_once_instead_of_parking_again(
    poller_name: str, nursery: trio.Nursery
) -> None:
    left, right, limiter = await starved_pair(poller_name)
    pending = await receive_in_background(nursery, right)
    await left.send_all(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    assert await pending.result() == b"hello"


async def test_receive_buffer_woken_then_cancelled_in_the_memory_queue_keeps_the_edge(
    poller_name: str, nursery: trio.Nursery
) -> None:
    left, right, limiter = await starved_pair(poller_name)
    scope = trio.CancelScope()

    async def receive_buffer_until_cancelled() -> None:
        with scope:
            async with right.receive_buffer():
                raise AssertionError("received without memory")

    nursery.start_soon(receive_buffer_until_cancelled)
    await trio.testing.wait_all_tasks_blocked()
    await left.send_all(b"request")
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    with trio.fail_after(5):
        async with right.receive_buffer() as buf:
            assert bytes(buf.view) == b"request"


@pytest.mark.parametrize("total", [16 * KIB, 2 * KIB, 600])
async def test_budget_shrinking_under_a_queued_read_neither_raises_nor_loses_the_edge(
    poller_name: str, nursery: trio.Nursery, total: int
) -> None:
    left, right, limiter = await starved_pair(poller_name)
    pending = await receive_in_background(nursery, right)
    await left.send_all(b"x" * 5000)
    await trio.testing.wait_all_tasks_blocked()
    limiter.total_bytes = total  # refuses every queued request that cannot fit any more
    await trio.testing.wait_all_tasks_blocked()
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    first = await pending.result()
    assert 0 < len(first) <= min(total, 4 * KIB)
    assert first + await receive_exactly(right, 5000 - len(first)) == b"x" * 5000


async def test_receive_woken_and_cancelled_in_the_same_tick_keeps_the_bytes(
    poller_name: str, nursery: trio.Nursery
) -> None:
    pool = millpond.BufferPool(millpond.BufferLimiter(1 << 20))
    left, right = await socket_pair(poller_name, pool)
    scope = trio.CancelScope()
    nursery.start_soon(_receive_in, scope, right)
    await trio.testing.wait_all_tasks_blocked()
    left.socket.send(b"request")  # the edge is on its way...
    scope.cancel()  # ...and the receive is told to stop before it is delivered
    await trio.testing.wait_all_tasks_blocked()
    assert await receive_exactly(right, 7) == b"request"
    await left.aclose()
    await right.aclose()


async def test_wait_send_all_might_not_block_after_a_cancelled_wait_sees_the_drain(
    poller_name: str,
) -> None:
    left, right = await socket_pair(poller_name)
    registration = left.poller.registration(left.socket)
    filled = 0
    while sent := registration.send(b"f" * 65536):  # until the kernel says EAGAIN
        filled += sent
    # A wait cancelled while the queue is full, before the peer drains it,
    # must leave nothing to lose: the next wait sees the drain.
    with trio.CancelScope() as scope:
        scope.cancel()
        await left.wait_send_all_might_not_block()
    assert scope.cancelled_caught
    drained = 0
    with trio.fail_after(5):
        while drained < filled:
            drained += len(await right.receive_some())
        await left.wait_send_all_might_not_block()


async def test_a_request_arriving_during_a_shortage_is_answered_once_memory_is_back(
    poller_name: str, nursery: trio.Nursery
) -> None:
    # The review's scenario through serve(): 40 clients hold the whole budget
    # for a while; a handler that polls its client under a short timeout
    # must still answer a request that arrived during the shortage.
    limiter = millpond.BufferLimiter(64 * KIB)
    holders_release = trio.Event()

    async def handler(stream: millpond.Connection) -> None:
        first = await stream.receive_some(1)
        if first == b"H":  # a holder: keep a chunk (and its charge) for a while
            await stream.receive_some()
            await holders_release.wait()
            return
        while True:  # a requester: poll under a timeout, as handlers do
            with trio.move_on_after(0.05):
                request = await stream.receive_some()
                await stream.send_all(b"reply to " + request)
                return

    server = millpond.Server(handler, 0, host="127.0.0.1", poller=poller_name, limiter=limiter)
    await nursery.start(server.run)
    port = server.addresses[0][1]
    requester = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
    await requester.send_all(b"R")
    await trio.testing.wait_all_tasks_blocked()  # its handler polls, holding nothing
    holders = []
    for _ in range(40):
        holder = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
        await holder.send_all(b"H" + b"h" * 4000)
        holders.append(holder)
    with trio.fail_after(10):  # loopback delivery may lag on a busy machine
        while limiter.pressure is not millpond.Pressure.HARD:
            await trio.sleep(0.01)
    await requester.send_all(b"ping")  # arrives during the shortage
    await trio.sleep(0.3)  # several timeouts go by
    holders_release.set()
    assert await receive_exactly(requester, 13) == b"reply to ping"
    for stream in [*holders, requester]:
        await stream.aclose()


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "unpooled"])
async def test_a_short_read_clears_the_flag_so_a_ping_pong_makes_no_stale_read(
    poller_name: str, pooled: bool
) -> None:
    # A read shorter than asked for drained the socket (the peer has not hung
    # up): the receive clears ``readable`` itself, so the next one parks at
    # once. Left set, every next receive would first make a recv that says
    # EAGAIN, one syscall more per message, counted as a stale edge.
    pool = millpond.BufferPool() if pooled else None
    client, server_side = await socket_pair(poller_name, pool=pool)
    poller = millpond.get_poller(poller_name)

    async def echo() -> None:
        async for chunk in server_side:
            await server_side.send_all(chunk)

    async with server_side:
        before = poller.statistics().stale_read_edges
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                async with client:  # its close ends the echo
                    for number in range(20):
                        message = b"ping %d" % number
                        await client.send_all(message)
                        assert await client.receive_some() == message
        assert poller.statistics().stale_read_edges == before
