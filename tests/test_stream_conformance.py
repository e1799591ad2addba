"""Connection honours Trio's whole HalfCloseableStream contract, on both pollers.

``trio.testing.check_half_closeable_stream`` is the suite Trio runs against its
own ``SocketStream``; here it runs against millpond's ``Connection`` over real
loopback TCP connections. A "clogged" pair is one whose send queues are full in
both directions, so ``send_all`` and ``wait_send_all_might_not_block`` must
wait until the peer reads.
"""

from __future__ import annotations

import select
import socket

import pytest
import trio
import trio.testing
from conftest import settle_kernel_queue, socket_pair

import millpond

# Each raw send offers this much; the loop stops at the first EAGAIN.
FILL_CHUNK = b"x" * 65536

# A loopback connection whose reader never reads absorbs a few MiB at most
# (send buffer plus receive window); 1000 chunks of 64 KiB is far beyond that,
# so hitting the bound means the kernel never said EAGAIN: fail, do not hang.
MAX_FILL_SENDS = 1000

# Small enough that a send_all started while the kernel reports the socket
# writable (unsent bytes below half of TCP_NOTSENT_LOWAT) completes at once.
SMALL_CHUNK = b"x" * 4096


def fill_kernel_queue(sock: socket.socket) -> None:
    """Send on a non-blocking socket until the kernel says EAGAIN."""
    for _ in range(MAX_FILL_SENDS):
        try:
            sock.send(FILL_CHUNK)
        except BlockingIOError:
            return
    raise AssertionError(f"{sock!r} accepted {MAX_FILL_SENDS} chunks without EAGAIN")


async def clog_kernel_queue(sock: socket.socket, peer: socket.socket) -> None:
    """Fill until nothing more can move: ``sock`` unwritable with ``peer``'s queue settled.

    One fill to EAGAIN is not enough on a busy machine: loopback delivery runs
    in ksoftirqd a moment later and the peer's window may not be full yet, so
    the socket turns writable on its own, which Trio's clogged-stream check
    would take for a wake-up without a reader. So fill, wait until the peer's
    receive queue stops growing, and fill again until it stays unwritable.
    """
    for _ in range(MAX_FILL_ATTEMPTS):
        fill_kernel_queue(sock)
        await settle_kernel_queue(peer)
        if not kernel_says_writable(sock):
            return
    raise AssertionError(f"{sock!r} kept draining after {MAX_FILL_ATTEMPTS} fills")


async def fill_through_stream(stream: millpond.Connection) -> None:
    """Fill the send queue with ``send_all`` until it parks, then cancel it.

    This is how Trio's own tests clog a ``SocketStream`` (``fill_stream`` in
    ``trio/_tests/test_highlevel_socket.py``).
    """

    async def sender() -> None:
        while True:
            await stream.send_all(b"x" * 10000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def kernel_says_writable(sock: socket.socket) -> bool:
    """Whether poll() reports ``sock`` writable right now (zero timeout)."""
    return bool(select.select([], [sock], [], 0)[1])


@pytest.mark.time_limit(60)
async def test_connection_passes_trio_suite_when_clogged_through_send_all(
    poller_name: str,
) -> None:
    async def stream_maker() -> tuple[millpond.Connection, millpond.Connection]:
        return await socket_pair(poller_name)

    async def clogged_stream_maker() -> tuple[millpond.Connection, millpond.Connection]:
        left, right = await stream_maker()
        await fill_through_stream(left)
        await fill_through_stream(right)
        return left, right

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


@pytest.mark.time_limit(60)
async def test_connection_passes_trio_suite_when_clogged_through_raw_socket(
    poller_name: str,
) -> None:
    # Fails in check_one_way_stream's first clogged check: the waiter's
    # wait_send_all_might_not_block returns before the receiver starts, so
    # record == ["waiter sleeping", "waiter wokeup"].
    async def stream_maker() -> tuple[millpond.Connection, millpond.Connection]:
        return await socket_pair(poller_name)

    async def clogged_stream_maker() -> tuple[millpond.Connection, millpond.Connection]:
        left, right = await stream_maker()
        await clog_kernel_queue(left.socket, right.socket)
        await clog_kernel_queue(right.socket, left.socket)
        return left, right

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


# Each fill brings the peer's window closer to full, after which the kernel
# cannot transmit on its own: a few attempts always suffice.
MAX_FILL_ATTEMPTS = 20


async def test_wait_send_all_might_not_block_waits_while_unsent_queue_is_long(
    poller_name: str,
) -> None:
    # Only the Connection writes here: small send_alls, each started while the
    # kernel still reports the socket writable, so none of them parks. The
    # peer never reads, so the unsent queue grows past half of
    # TCP_NOTSENT_LOWAT and the kernel stops reporting it writable.
    # trio.SocketStream.wait_send_all_might_not_block parks in that state.
    # On a busy machine the kernel may still transmit some of that queue a
    # moment later (the peer's window is not full yet), and the socket turns
    # writable on its own: then returning is right, so fill again.
    client, server = await socket_pair(poller_name)
    async with client, server:
        returned = trio.Event()

        async def waiter() -> None:
            await client.wait_send_all_might_not_block()
            returned.set()

        async with trio.open_nursery() as nursery:
            for _attempt in range(MAX_FILL_ATTEMPTS):
                with trio.fail_after(10):  # hang guard: a send_all that parked
                    while kernel_says_writable(client.socket):
                        await client.send_all(SMALL_CHUNK)
                returned = trio.Event()
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                if not returned.is_set():
                    break  # parked while the kernel says the queue is long
                assert kernel_says_writable(client.socket), "returned while not writable"
            else:
                raise AssertionError("the kernel drained the queue on its own every time")
            with trio.fail_after(10):
                while not returned.is_set():
                    await server.receive_some()
                    await trio.testing.wait_all_tasks_blocked()
