"""Bounded connections: reads and send tails charged to a budget, over loopback."""

from __future__ import annotations

import functools
import logging

import pytest
import trio
import trio.testing
from conftest import echo, settle_kernel_queue, socket_pair, zero_copy_echo

import millpond
from millpond.memory.ledger import _Ledger, read_request
from millpond.memory.readsize import ReadSizes, adapt

KIB = 1024
HOG = "another part of the program"


def pooled_server(
    handler: millpond.server.Handler, poller_name: str, limiter: millpond.BufferLimiter
) -> millpond.Server:
    return millpond.Server(handler, 0, host="127.0.0.1", poller=poller_name, limiter=limiter)


async def test_idle_connections_hold_no_buffer(poller_name: str, nursery: trio.Nursery) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    server = pooled_server(echo, poller_name, limiter)
    await nursery.start(server.run)
    port = server.addresses[0][1]
    clients = [
        await millpond.open_connection("127.0.0.1", port, poller=poller_name) for _ in range(50)
    ]
    for client in clients:  # one round trip each, then idle
        await client.send_all(b"x" * 3000)
        received = b""
        while len(received) < 3000:
            received += await client.receive_some()
    await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().connections_active == 50
    assert limiter.bytes_in_use == 0
    assert server.pool is not None and server.pool.statistics().bytes_leased == 0
    for client in clients:
        await client.aclose()


async def test_receive_cancelled_while_waiting_for_memory_loses_nothing(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    limiter.acquire_on_behalf_of_nowait(HOG, 64 * KIB)  # the whole budget
    await left.send_all(b"hello")
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def receive_until_cancelled() -> None:
            with scope:
                await right.receive_some()
                raise AssertionError("received without memory")

        nursery.start_soon(receive_until_cancelled)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        scope.cancel()
    statistics = limiter.statistics()
    assert statistics.tasks_waiting == 0 and statistics.timeouts == 1
    assert limiter.bytes_in_use == 64 * KIB  # nothing granted to the cancelled read
    limiter.release_on_behalf_of(HOG, 64 * KIB)
    await left.send_all(b" world")
    received = b""
    with trio.fail_after(10):
        while len(received) < 11:
            received += await right.receive_some()
    assert received == b"hello world"
    await left.aclose()
    await right.aclose()


async def test_read_waits_in_line_and_proceeds_when_memory_is_released(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    limiter.acquire_on_behalf_of_nowait(HOG, 64 * KIB)
    await left.send_all(b"queued")
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def receive() -> None:
            received.append(await right.receive_some())

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert not received
        limiter.release_on_behalf_of(HOG, 64 * KIB)
    assert received == [b"queued"]
    # The chunk stays charged (one minimum read) until the handler asks for more.
    assert limiter.held_by(right) == limiter.bytes_in_use == millpond.DEFAULT_READ_SIZES.minimum
    await right.aclose()
    assert limiter.bytes_in_use == 0
    await left.aclose()
    await right.aclose()


async def test_handler_timing_out_while_waiting_for_memory_is_closed_cleanly(
    poller_name: str,
    nursery: trio.Nursery,
    idle_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    limiter.acquire_on_behalf_of_nowait(HOG, 64 * KIB)

    async def impatient(stream: millpond.Connection) -> None:
        with trio.fail_after(1):
            await stream.receive_some()

    server = millpond.Server(  # reads wait for memory: no guaranteed minimum
        impatient, 0, host="127.0.0.1", poller=poller_name, limiter=limiter, guaranteed_read=0
    )
    await nursery.start(server.run)
    client = await millpond.open_connection("127.0.0.1", server.addresses[0][1], poller=poller_name)
    with caplog.at_level(logging.ERROR, logger="millpond.server"):
        await client.send_all(b"please")
        with trio.fail_after(30):
            # The server closed it, with our bytes unread: a reset, or EOF.
            try:
                assert await client.receive_some() == b""
            except trio.BrokenResourceError:
                pass
    assert server.statistics().handler_errors == 1
    assert "TooSlowError" in caplog.text
    statistics = limiter.statistics()
    assert statistics.tasks_waiting == 0 and statistics.timeouts == 1
    assert limiter.held_by(HOG) == limiter.bytes_in_use == 64 * KIB
    await client.aclose()
    limiter.release_on_behalf_of(HOG, 64 * KIB)


async def test_closing_needs_no_memory(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    limiter.acquire_on_behalf_of_nowait(HOG, 64 * KIB)
    await left.send_all(b"data nobody can afford to read")
    async with trio.open_nursery() as nursery:

        async def receive_expecting_closed() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await right.receive_some()

        nursery.start_soon(receive_expecting_closed)
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()  # while the budget is spent and a read waits for it
    assert limiter.statistics().tasks_waiting == 0
    assert limiter.bytes_in_use == 64 * KIB
    await left.aclose()


async def test_receive_buffer_lends_the_pooled_buffer_and_takes_it_back(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    await left.send_all(b"zero copy")
    async with right.receive_buffer() as buffer:
        assert bytes(buffer.view) == b"zero copy"
        assert limiter.held_by(right) == buffer.capacity
    assert buffer.released
    assert limiter.bytes_in_use == 0
    await left.send_eof()
    async with right.receive_buffer() as buffer:
        assert buffer.nbytes == 0  # EOF
    assert limiter.bytes_in_use == 0
    await left.aclose()
    await right.aclose()


async def test_receive_buffer_echo_server(poller_name: str, nursery: trio.Nursery) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    server = pooled_server(zero_copy_echo, poller_name, limiter)
    await nursery.start(server.run)
    client = await millpond.open_connection("127.0.0.1", server.addresses[0][1], poller=poller_name)
    payload = bytes(range(256)) * 1000
    async with trio.open_nursery() as inner:

        async def send() -> None:
            await client.send_all(payload)
            await client.send_eof()

        inner.start_soon(send)
        received = bytearray()
        while chunk := await client.receive_some():
            received += chunk
    assert received == payload
    await client.aclose()


async def test_unsent_tail_is_charged_up_to_one_maximum_read_and_released(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    reader, writer = await socket_pair(poller_name, pool)
    payload = b"t" * (8 << 20)  # far more than the kernel buffers hold
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.send_all, payload)
        await trio.testing.wait_all_tasks_blocked()
        # The peer does not read: the writer is parked with a charged tail.
        assert limiter.held_by(writer) == millpond.DEFAULT_READ_SIZES.maximum
        received = 0
        while received < len(payload):
            received += len(await reader.receive_some())
    assert limiter.held_by(writer) == 0
    assert limiter.bytes_in_use == 0
    await reader.aclose()
    await writer.aclose()


async def test_reads_grow_while_they_fill_the_buffer(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await left.send_all(b"g" * (4 << 20))
            await left.send_eof()

        nursery.start_soon(send)
        sizes = []
        while True:
            # Read only once the sender is blocked on a full window: how much
            # each read finds must not depend on how the two tasks interleave.
            await trio.testing.wait_all_tasks_blocked()
            await settle_kernel_queue(right.socket)
            chunk = await right.receive_some()
            if not chunk:
                break
            sizes.append(len(chunk))
    assert sizes[0] <= millpond.DEFAULT_READ_SIZES.initial
    assert max(sizes) == millpond.DEFAULT_READ_SIZES.maximum
    await left.aclose()
    await right.aclose()


async def test_reads_use_the_minimum_size_under_pressure(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    limiter.acquire_on_behalf_of_nowait(HOG, 800 * KIB)  # above the 75 % pressure mark
    assert limiter.pressure is millpond.Pressure.PRESSURE
    await left.send_all(b"p" * 10_000)
    await trio.testing.wait_all_tasks_blocked()
    assert len(await right.receive_some()) == millpond.DEFAULT_READ_SIZES.minimum
    limiter.release_on_behalf_of(HOG, 800 * KIB)
    assert len(await right.receive_some()) > millpond.DEFAULT_READ_SIZES.minimum
    await left.aclose()
    await right.aclose()


def test_adapt_grows_on_a_full_read_and_shrinks_after_two_small_ones() -> None:
    sizes = ReadSizes()
    low, high = sizes.minimum_index, sizes.maximum_index
    index = sizes.initial_index  # 4 KiB
    assert adapt(index, 4096, False, low, high) == (index + 1, False)
    assert adapt(high, sizes.maximum, False, low, high) == (high, False)  # capped
    assert adapt(index, 100, False, low, high) == (index, True)  # first small read
    assert adapt(index, 100, True, low, high) == (index - 1, False)  # second: shrink
    assert adapt(low, 1, True, low, high) == (low, False)  # floored
    assert adapt(index, 3000, True, low, high) == (index, False)  # not small: reset


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"minimum": 1000}, ValueError),
        ({"initial": 512}, ValueError),
        ({"minimum": 8192, "initial": 4096}, ValueError),
        ({"maximum": 65536.0}, TypeError),
    ],
)
def test_bad_read_sizes_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ReadSizes(**kwargs)  # type: ignore[arg-type]


def test_read_requests_follow_the_budget_as_it_is_now() -> None:
    ledger = _Ledger(total=64 * KIB, reserved=16 * KIB, pressure=None)  # 48 KiB ordinary
    assert read_request(ledger, 4 * KIB, 1 * KIB) == 4 * KIB
    assert read_request(ledger, 1024 * KIB, 1 * KIB) == 32 * KIB  # halved until it fits
    ledger.resize(18 * KIB)  # 2 KiB ordinary
    assert read_request(ledger, 1024 * KIB, 1 * KIB) == 2 * KIB
    ledger.resize(16 * KIB + 600)  # less than one minimum read: what there is
    assert read_request(ledger, 4 * KIB, 1 * KIB) == 600
    ledger.resize(2 << 20)  # grown back: the sizes asked for
    assert read_request(ledger, 1024 * KIB, 1 * KIB) == 1024 * KIB


def test_read_request_takes_the_minimum_from_the_pressure_mark_on() -> None:
    ledger = _Ledger(total=100 * KIB, reserved=0, pressure=50 * KIB)
    assert ledger.take("hog", 50 * KIB - 1)
    assert read_request(ledger, 8 * KIB, 1 * KIB) == 8 * KIB
    assert ledger.take("hog", 1)  # exactly at the mark
    assert read_request(ledger, 8 * KIB, 1 * KIB) == 1 * KIB


async def test_a_server_with_a_budget_below_the_read_sizes_serves_within_it(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(48 * KIB)
    sizes = ReadSizes(initial=64 * KIB, maximum=1024 * KIB)  # neither fits 48 KiB
    server = millpond.Server(
        echo, 0, host="127.0.0.1", poller=poller_name, limiter=limiter, read_sizes=sizes
    )
    await nursery.start(server.run)
    client = await millpond.open_connection("127.0.0.1", server.addresses[0][1], poller=poller_name)
    payload = b"b" * (256 * KIB)
    async with trio.open_nursery() as senders:
        senders.start_soon(client.send_all, payload)
        received = 0
        with trio.fail_after(10):
            while received < len(payload):
                received += len(await client.receive_some())
                assert limiter.statistics().peak_bytes_in_use <= 48 * KIB
    await client.aclose()


async def test_bad_memory_arguments_raise_naming_the_argument(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    other = millpond.BufferLimiter(1 << 20)
    with pytest.raises(ValueError, match="pool"):
        millpond.Server(echo, 0, limiter=other, pool=millpond.BufferPool(limiter))
    with pytest.raises(TypeError, match="limiter"):
        millpond.Server(echo, 0, limiter=64)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool"):
        millpond.Server(echo, 0, pool="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooled"):
        millpond.Server(echo, 0, limiter=limiter, pooled=False)
    with pytest.raises(TypeError, match="read_sizes"):
        millpond.Server(echo, 0, read_sizes=4096)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool"):
        await millpond.open_connection("127.0.0.1", 1, pool=3)  # type: ignore[arg-type]
    left, right = await socket_pair(poller_name)
    with pytest.raises(RuntimeError, match="BufferPool"):
        async with right.receive_buffer():
            pass
    await left.aclose()
    await right.aclose()


@pytest.mark.time_limit(150)
async def test_flooding_clients_stay_within_budget_and_others_are_served(
    poller_name: str, nursery: trio.Nursery
) -> None:
    budget = 8 << 20
    limiter = millpond.BufferLimiter(budget)
    server = pooled_server(echo, poller_name, limiter)
    await nursery.start(server.run)
    port = server.addresses[0][1]
    connect = functools.partial(millpond.open_connection, "127.0.0.1", port, poller=poller_name)
    flooders = [await connect() for _ in range(200)]

    async def flood(stream: millpond.Connection) -> None:
        chunk = b"f" * 65536
        try:
            while True:  # writes, never reads: it stalls once the buffers fill
                await stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as flood_nursery:
        for stream in flooders:
            flood_nursery.start_soon(flood, stream)
        well_behaved = await connect()
        with trio.fail_after(120):
            for i in range(100):
                message = b"round trip %d" % i
                await well_behaved.send_all(message)
                received = b""
                while len(received) < len(message):
                    received += await well_behaved.receive_some()
                assert received == message
                assert limiter.bytes_in_use <= budget
        with trio.fail_after(30):  # loopback delivery may lag on a busy machine
            while limiter.bytes_in_use == 0:  # the flood really holds memory
                await trio.sleep(0.01)
        statistics = limiter.statistics()
        assert statistics.peak_bytes_in_use <= budget
        flood_nursery.cancel_scope.cancel()
    for stream in [*flooders, well_behaved]:
        await stream.aclose()


async def test_a_blocked_send_charges_its_tail_without_waiting_for_budget(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    pool = millpond.BufferPool(limiter)
    reader, writer = await socket_pair(poller_name, pool)
    limiter.acquire_on_behalf_of_nowait(HOG, 64 * KIB)  # no budget left for the tail
    async with trio.open_nursery() as nursery:

        async def send_expecting_closed() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await writer.send_all(b"s" * (8 << 20))

        nursery.start_soon(send_expecting_closed)
        await trio.testing.wait_all_tasks_blocked()
        # Parked on the socket, not in the limiter: the tail exists already,
        # so it is counted at once (past the budget) and new reads wait.
        assert limiter.statistics().tasks_waiting == 0
        assert limiter.held_by(writer) == 1024 * KIB  # one maximum read
        assert limiter.pressure is millpond.Pressure.HARD
        await writer.aclose()
    assert limiter.held_by(writer) == 0
    assert limiter.bytes_in_use == 64 * KIB
    await reader.aclose()


async def test_a_connection_reading_on_keeps_its_charge_while_nobody_waits(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    initial = millpond.DEFAULT_READ_SIZES.initial
    await left.send_all(b"k" * (3 * initial))  # three full reads queued
    await trio.testing.wait_all_tasks_blocked()
    assert len(await right.receive_some(initial)) == initial
    grants = limiter.statistics().grants
    assert len(await right.receive_some(initial)) == initial
    assert len(await right.receive_some(initial)) == initial
    # The charge went from chunk to chunk: no new grant, still one read held.
    assert limiter.statistics().grants == grants
    assert limiter.held_by(right) == limiter.bytes_in_use == initial
    # Asking for more with the kernel queue empty parks the reader, holding nothing.
    with trio.move_on_after(0.05):
        await right.receive_some(initial)
    assert limiter.bytes_in_use == 0
    await left.aclose()
    await right.aclose()


async def test_a_kept_charge_does_not_jump_the_queue(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    pool = millpond.BufferPool(limiter)
    left, right = await socket_pair(poller_name, pool)
    initial = millpond.DEFAULT_READ_SIZES.initial
    await left.send_all(b"w" * (2 * initial))
    await trio.testing.wait_all_tasks_blocked()
    assert len(await right.receive_some(initial)) == initial
    limiter.acquire_on_behalf_of_nowait(HOG, 600 * KIB)  # below the pressure mark
    order: list[str] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await limiter.acquire_on_behalf_of("waiter", 512 * KIB)  # more than is free
            order.append("waiter")

        async def reader() -> None:
            await right.receive_some(initial)
            order.append("reader")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.pressure is millpond.Pressure.NONE
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        # A task waits first: the reader gives its charge back and queues behind it.
        assert order == []
        assert limiter.held_by(right) == 0
        assert limiter.statistics().tasks_waiting == 2
        limiter.release_on_behalf_of(HOG, 600 * KIB)  # serves both, in arrival order
    assert sorted(order) == ["reader", "waiter"]
    limiter.release_on_behalf_of("waiter", 512 * KIB)
    await left.aclose()
    await right.aclose()


async def send_then_eof(sender: millpond.Connection, payload: bytes) -> None:
    await sender.send_all(payload)
    await sender.send_eof()


async def receive_to_eof(receiver: millpond.Connection, zero_copy: bool) -> list[bytes]:
    """Every chunk until EOF, through receive_buffer() or receive_some()."""
    chunks = []
    while True:
        if zero_copy:
            async with receiver.receive_buffer() as buffer:
                chunk = bytes(buffer.view)
        else:
            chunk = await receiver.receive_some()
        if not chunk:
            return chunks
        chunks.append(chunk)


async def test_reads_above_the_pooled_classes_keep_every_byte(poller_name: str) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    sizes = ReadSizes(minimum=1 * KIB, initial=256 * KIB, maximum=1024 * KIB)
    payload = bytes(range(256)) * (12 * KIB)  # 3 MiB, every byte position distinct mod 256
    for zero_copy in (False, True):
        left, right = await socket_pair(poller_name, pool, sizes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, left, payload)
            await trio.testing.wait_all_tasks_blocked()
            await settle_kernel_queue(right.socket)  # the kernel buffers are full
            chunks = await receive_to_eof(right, zero_copy)
        assert b"".join(chunks) == payload
        assert max(map(len, chunks)) > 64 * KIB  # reads beyond the largest pooled class
        await right.aclose()
        await left.aclose()
        assert limiter.bytes_in_use == 0


async def test_a_budget_shrunk_below_the_read_size_makes_reads_smaller_not_errors(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    sizes = ReadSizes(minimum=1 * KIB, initial=1024 * KIB, maximum=1024 * KIB)
    payload = b"s" * (4 << 20)
    for zero_copy in (False, True):
        limiter.total_bytes = 8 << 20
        left, right = await socket_pair(poller_name, pool, sizes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, left, payload)
            await trio.testing.wait_all_tasks_blocked()
            # Shrinking never revokes, it only stops new grants: the next reads
            # must fit the new budget (256 KiB) instead of raising.
            limiter.total_bytes = 256 * KIB
            chunks = await receive_to_eof(right, zero_copy)
        assert b"".join(chunks) == payload
        assert max(map(len, chunks)) <= 256 * KIB
        await right.aclose()
        await left.aclose()
        assert limiter.bytes_in_use == 0


async def test_a_budget_shrunk_below_one_maximum_read_still_charges_unsent_tails(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    reader, writer = await socket_pair(poller_name, pool)
    limiter.total_bytes = 256 * KIB  # below one maximum read (1 MiB)
    payload = b"u" * (8 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.send_all, payload)
        await trio.testing.wait_all_tasks_blocked()
        # Parked with its tail charged: what exists is counted, budget or not.
        assert limiter.held_by(writer) == 1024 * KIB
        received = 0
        while received < len(payload):
            received += len(await reader.receive_some())
    assert limiter.held_by(writer) == 0
    await reader.aclose()
    await writer.aclose()
