"""The budget may change at any time: no reader, writer or accept loop raises for it."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from conftest import echo

import millpond
import millpond.server.server

KIB = 1024
MIB = 1024 * KIB


async def echo_round_trip(port: int, poller_name: str, payload: bytes) -> list[int]:
    """Send ``payload`` to an echo server and read it back; returns the chunk sizes."""
    client = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
    sizes = []
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        received = bytearray()
        with trio.fail_after(20):
            while len(received) < len(payload):
                chunk = await client.receive_some()
                assert chunk, "EOF before the echo was complete"
                received += chunk
                sizes.append(len(chunk))
    assert received == payload
    return sizes


async def test_a_running_server_follows_its_budget_down_and_up_again(
    poller_name: str, nursery: trio.Nursery
) -> None:
    chunk_sizes: list[int] = []

    async def recording_echo(stream: millpond.Connection) -> None:
        async for chunk in stream:
            chunk_sizes.append(len(chunk))
            await stream.send_all(chunk)

    server = millpond.Server(recording_echo, 0, host="127.0.0.1", poller=poller_name)
    await nursery.start(server.run)
    port = server.addresses[0][1]
    limiter = server.limiter
    assert limiter is not None
    reserve = limiter.reserved_bytes
    # About 4.5 MB: below one maximum read above the reserve. Used to make
    # the next connection's constructor raise inside the accept loop.
    limiter.total_bytes = 4_500_000
    await echo_round_trip(port, poller_name, b"a" * (2 * MIB))
    assert max(chunk_sizes) <= limiter.ordinary_bytes
    # Less than one minimum read: reads get smaller still, never an error.
    limiter.total_bytes = reserve + 600
    chunk_sizes.clear()
    await echo_round_trip(port, poller_name, b"b" * 5000)
    assert max(chunk_sizes) <= 600
    # Grown back: reads grow back to the full sizes.
    limiter.total_bytes = 64 * MIB
    chunk_sizes.clear()
    await echo_round_trip(port, poller_name, b"c" * (8 * MIB))
    assert max(chunk_sizes) > 64 * KIB
    statistics = server.statistics()
    assert (statistics.setup_errors, statistics.handler_errors) == (0, 0)
    assert limiter.bytes_in_use == 0


async def test_a_connection_whose_setup_fails_is_dropped_and_the_server_serves_on(
    poller_name: str,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [RuntimeError("a bug in a constructor")]
    real_connection = millpond.server.server.Connection

    def failing_once(*args: object, **kwargs: object) -> millpond.Connection:
        if failures:
            raise failures.pop()
        return real_connection(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(millpond.server.server, "Connection", failing_once)
    server = millpond.Server(echo, 0, host="127.0.0.1", poller=poller_name)
    await nursery.start(server.run)
    port = server.addresses[0][1]
    with caplog.at_level(logging.WARNING, logger="millpond.server"):
        dropped = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
        with trio.fail_after(10):
            try:
                assert await dropped.receive_some() == b""  # closed by the server
            except trio.BrokenResourceError:
                pass
        await dropped.aclose()
        await echo_round_trip(port, poller_name, b"still serving")
    statistics = server.statistics()
    assert (statistics.connections_accepted, statistics.setup_errors) == (2, 1)
    assert "dropped a connection during setup" in caplog.text
    assert "a bug in a constructor" in caplog.text


async def test_shrinking_the_budget_while_a_handler_waits_for_memory_neither_raises_nor_hangs(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB, reserved_bytes=8 * KIB)
    server = millpond.Server(  # reads wait for memory: no guaranteed minimum
        echo, 0, host="127.0.0.1", poller=poller_name, limiter=limiter, guaranteed_read=0
    )
    await nursery.start(server.run)
    limiter.acquire_on_behalf_of_nowait("hog", 56 * KIB)  # the whole ordinary budget
    client = await millpond.open_connection("127.0.0.1", server.addresses[0][1], poller=poller_name)
    async with client:
        await client.send_all(b"q" * 3000)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1  # the handler's read
        limiter.total_bytes = 8 * KIB + 500  # its queued request no longer fits
        await trio.testing.wait_all_tasks_blocked()
        limiter.release_on_behalf_of("hog", 56 * KIB)
        received = b""
        with trio.fail_after(10):
            while len(received) < 3000:
                received += await client.receive_some()
    assert received == b"q" * 3000
    assert server.statistics().handler_errors == 0
