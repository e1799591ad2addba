"""Connection: bytes, errors and socket options over real loopback sockets."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing
from conftest import connect, echo, socket_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millpond


async def test_round_trip_returns_the_same_bytes(poller_name: str, start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(echo)
    client = await connect(server, poller_name)
    async with client:
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"


@pytest.mark.time_limit(120)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.binary(min_size=1, max_size=300_000),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
    receive_size=st.one_of(st.none(), st.integers(min_value=1, max_value=100_000)),
)
async def test_echo_returns_every_byte_in_order_whatever_the_chunking(
    poller_name: str, payload: bytes, chunk_sizes: list[int], receive_size: int | None
) -> None:
    async with trio.open_nursery() as nursery:
        server = millpond.Server(echo, 0, host="127.0.0.1", poller=poller_name)
        await nursery.start(server.run)
        client = await connect(server, poller_name)

        async def send_in_chunks() -> None:
            position = 0
            index = 0
            while position < len(payload):
                size = chunk_sizes[index % len(chunk_sizes)]
                await client.send_all(payload[position : position + size])
                position += size
                index += 1
            await client.send_eof()

        received = bytearray()
        with trio.fail_after(60):
            nursery.start_soon(send_in_chunks)
            while chunk := await client.receive_some(receive_size):
                if receive_size is not None:
                    assert len(chunk) <= receive_size
                received += chunk
        assert bytes(received) == payload
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_send_all_accepts_memoryview_and_bytearray(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        await left.send_all(bytearray(b"ab"))
        await left.send_all(memoryview(b"xcdx")[1:3])
        await left.send_all(memoryview(struct.pack("<2H", 0x6665, 0x6867)).cast("H"))
        await left.send_eof()
        received = b""
        while chunk := await right.receive_some():
            received += chunk
        assert received == b"abcdefgh"


async def test_large_send_completes_across_many_partial_sends(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    payload = bytes(range(256)) * 40_000  # 10 MiB: far beyond the socket buffers
    async with left, right:
        received = bytearray()

        async def reader() -> None:
            while chunk := await right.receive_some():
                received.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await left.send_all(payload)
            await left.send_eof()
        assert received == payload


async def test_receive_after_peer_eof_keeps_returning_empty(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        await left.send_eof()
        assert await right.receive_some() == b""
        assert await right.receive_some() == b""


async def test_two_receivers_raise_busy(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(right.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await right.receive_some()
            nursery.cancel_scope.cancel()


async def test_use_after_close_raises_closed(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    await left.aclose()
    await left.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await left.send_eof()
    await right.aclose()


async def test_send_after_send_eof_raises_closed(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        await left.send_eof()
        await left.send_eof()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"x")


async def test_reset_by_peer_raises_broken(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    left.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await left.aclose()
    async with right:
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(10):
                await right.receive_some()


async def test_send_to_reset_peer_raises_broken(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await left.aclose()
    async with right:
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(10):
                while True:
                    await right.send_all(b"x" * 65536)


async def test_socket_defaults_match_trio_socket_stream(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        assert left.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        notsent_lowat = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
        assert left.getsockopt(socket.IPPROTO_TCP, notsent_lowat) == 16384
        assert not left.socket.getblocking()


async def test_addresses_and_options_are_exposed(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        assert left.getpeername() == right.getsockname()
        assert left.getsockname() == right.getpeername()
        left.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert len(left.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == 8
        with pytest.raises(TypeError):
            left.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, None)  # type: ignore[call-overload]


async def test_async_iteration_stops_at_eof(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        await left.send_all(b"abc")
        await left.send_eof()
        chunks = [chunk async for chunk in right]
        assert b"".join(chunks) == b"abc"


async def test_bad_arguments_raise_naming_the_argument(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        with pytest.raises(ValueError, match="max_bytes"):
            await left.receive_some(0)
        with pytest.raises(TypeError, match="max_bytes"):
            await left.receive_some(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="data"):
            await left.send_all("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sock"):
        millpond.Connection("not a socket")  # type: ignore[arg-type]
    near, far = socket.socketpair()
    with near, far, pytest.raises(TypeError, match="poller"):
        millpond.Connection(near, poller=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        await millpond.open_connection("127.0.0.1", 0)
    with pytest.raises(TypeError, match="port"):
        await millpond.open_connection("127.0.0.1", "80")  # type: ignore[arg-type]


async def test_open_connection_to_closed_port_raises_oserror(poller_name: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(OSError):
        await millpond.open_connection("127.0.0.1", port, poller=poller_name)


async def test_connection_over_ipv6_loopback(poller_name: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listeners = await millpond.open_listeners(0, host="::1")
    except OSError:
        pytest.skip("::1 not available")
    async with trio.open_nursery() as nursery:
        for sock in listeners:
            sock.close()
        server = millpond.Server(echo, 0, host="::1", poller=poller_name)
        await nursery.start(server.run)
        port = server.addresses[0][1]
        client = await millpond.open_connection("::1", port, poller=poller_name)
        async with client:
            await client.send_all(b"six")
            assert await client.receive_some() == b"six"
        nursery.cancel_scope.cancel()


def test_a_connection_closed_after_its_run_ended_closes_and_gives_back_its_charge(
    poller_name: str,
) -> None:
    kept: dict[str, object] = {}

    async def main() -> None:
        limiter = millpond.BufferLimiter(64 * 1024)
        left, right = await socket_pair(poller_name, millpond.BufferPool(limiter))
        await left.send_all(b"x")
        assert await right.receive_some() == b"x"  # right holds the chunk's charge
        kept.update(left=left, right=right, limiter=limiter)

    trio.run(main)
    limiter, left, right = kept["limiter"], kept["left"], kept["right"]
    assert isinstance(limiter, millpond.BufferLimiter) and limiter.bytes_in_use > 0
    assert isinstance(left, millpond.Connection) and isinstance(right, millpond.Connection)
    right.close()  # no run, no poller to tell: closes all the same
    left.close()
    assert limiter.bytes_in_use == 0
    assert right.socket.fileno() == left.socket.fileno() == -1
