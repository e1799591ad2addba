"""Unsent tails: counted once, never waited for, and a proxy on one budget cannot deadlock."""

from __future__ import annotations

import trio
import trio.testing
from conftest import socket_pair

import millpond
from millpond.memory.readsize import MAX_READ_BYTES

KIB = 1024


async def send_then_eof(stream: millpond.Connection, payload: bytes) -> None:
    await stream.send_all(payload)
    await stream.send_eof()


async def receive_all(stream: millpond.Connection) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some():
        received += chunk
    return bytes(received)


async def forward(source: millpond.Connection, sink: millpond.Connection) -> None:
    """The proxy loop open_connection's docstring has in mind, both sides on one pool."""
    async for chunk in source:
        await sink.send_all(chunk)
    await sink.send_eof()


def fill_kernel_send_buffer(stream: millpond.Connection) -> int:
    """Send filler until the kernel says EAGAIN; returns how many bytes it took."""
    filled = 0
    while sent := stream.poller.registration(stream.socket).send(b"\0" * 65536):
        filled += sent
    return filled


async def test_forwarders_sharing_one_budget_finish_once_their_upstreams_read(
    poller_name: str,
) -> None:
    # The reserve is there and never used: no holder ever asks for more.
    limiter = millpond.BufferLimiter(64 * KIB, reserved_bytes=32 * KIB)
    pool = millpond.BufferPool(limiter)
    chunk = millpond.ReadSizes(minimum=8 * KIB, initial=8 * KIB, maximum=8 * KIB)
    payloads = [bytes([65 + i]) * (256 * KIB) for i in range(4)]
    received: dict[int, bytes] = {}
    routes = []
    for payload in payloads:
        client, downstream = await socket_pair(poller_name, pool, chunk)
        upstream_peer, upstream = await socket_pair(poller_name, pool, chunk)
        await client.send_all(payload[: 64 * KIB])  # waiting to be read before anyone runs
        filler = fill_kernel_send_buffer(upstream)
        routes.append((client, downstream, upstream, upstream_peer, filler))
    upstreams_may_read = trio.Event()

    async def slow_upstream(index: int, peer: millpond.Connection, filler: int) -> None:
        await upstreams_may_read.wait()
        received[index] = (await receive_all(peer))[filler:]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index, (client, downstream, upstream, peer, filler) in enumerate(routes):
                nursery.start_soon(forward, downstream, upstream)
                nursery.start_soon(slow_upstream, index, peer, filler)
                nursery.start_soon(send_then_eof, client, payloads[index][64 * KIB :])
            await trio.testing.wait_all_tasks_blocked()
            # Chunks held (the whole ordinary budget), sends stuck on full
            # sockets: their tails are counted at once, never queued for, so
            # whoever waits in the limiter is a reader, and readers wait for
            # the forwarders, which wait only for their upstreams.
            assert sum(limiter.held_by(route[2]) for route in routes) > 0
            assert limiter.pressure is millpond.Pressure.HARD
            upstreams_may_read.set()
    assert [received[index] for index in range(4)] == payloads
    for route in routes:
        for stream in route[:4]:
            await stream.aclose()
    assert limiter.bytes_in_use == 0


async def receive_buffer_echo(stream: millpond.Connection) -> None:
    """The echo receive_buffer's docstring shows, with no copy."""
    while True:
        async with stream.receive_buffer() as buf:
            if not buf.nbytes:
                await stream.send_eof()
                return
            await stream.send_all(buf.view)


async def test_a_receive_buffer_echo_to_a_peer_that_does_not_read_holds_one_maximum_read(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(8 << 20)
    pool = millpond.BufferPool(limiter)
    peer, server_side = await socket_pair(
        poller_name, pool, millpond.ReadSizes(initial=MAX_READ_BYTES)
    )
    payload = b"z" * (16 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof, peer, payload)
        nursery.start_soon(receive_buffer_echo, server_side)
        await trio.testing.wait_all_tasks_blocked()  # the echo's send_all is blocked
        assert 0 < limiter.held_by(server_side) <= MAX_READ_BYTES
        with trio.fail_after(30):
            assert await receive_all(peer) == payload
    assert limiter.statistics().peak_bytes_in_use <= MAX_READ_BYTES
    assert limiter.bytes_in_use == 0
    await peer.aclose()
    await server_side.aclose()


async def test_two_receive_buffer_echoes_on_a_small_budget_without_reserve_finish(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(128 * KIB)
    pool = millpond.BufferPool(limiter)
    payload = b"e" * (4 << 20)
    peers_may_read = trio.Event()
    pairs = [await socket_pair(poller_name, pool) for _ in range(2)]
    echoed: list[bytes] = []

    async def late_reader(peer: millpond.Connection) -> None:
        await peers_may_read.wait()
        echoed.append(await receive_all(peer))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for peer, server_side in pairs:
                nursery.start_soon(send_then_eof, peer, payload)
                nursery.start_soon(receive_buffer_echo, server_side)
                nursery.start_soon(late_reader, peer)
            await trio.testing.wait_all_tasks_blocked()
            peers_may_read.set()
    assert echoed == [payload, payload]
    assert limiter.bytes_in_use == 0
    for connections in pairs:
        for stream in connections:
            await stream.aclose()
