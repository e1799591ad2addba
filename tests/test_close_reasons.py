"""Why each connection closed: counted by reason, logged at the right level, and the access log."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
import trio
import trio.testing
from conftest import echo, socket_pair, started_server

import millpond

HOST = "127.0.0.1"


async def one_exchange(port: int, poller_name: str, eof: bool) -> None:
    """Send hello (and EOF), read until the server closes; a reset counts as closed."""
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    try:
        await client.send_all(b"hello")
        if eof:
            await client.send_eof()
        with trio.fail_after(10):
            while await client.receive_some():
                pass
    except trio.BrokenResourceError:
        pass
    await client.aclose()


async def test_a_handler_that_returns_after_eof_or_before_it(
    poller_name: str, nursery: trio.Nursery
) -> None:
    async def answer_once(stream: millpond.Connection) -> None:
        await stream.send_all(await stream.receive_some())

    server, port = await started_server(nursery, echo, poller_name)
    await one_exchange(port, poller_name, eof=True)
    other, other_port = await started_server(nursery, answer_once, poller_name)
    await one_exchange(other_port, poller_name, eof=False)
    await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().closed["eof"] == 1
    assert other.statistics().closed["done"] == 1


class BrokenResourceError(Exception):
    """Stands for anyio's exception of that name (anyio is not a dependency)."""


BrokenResourceError.__module__ = "anyio._core._exceptions"


@pytest.mark.parametrize(
    "error",
    [
        trio.BrokenResourceError(),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenResourceError(),
    ],
    ids=["trio", "os", "anyio"],
)
async def test_a_peer_that_vanishes_is_logged_at_info_with_a_reason_not_as_a_handler_error(
    poller_name: str,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    async def handler(stream: millpond.Connection) -> None:
        await stream.receive_some()
        raise error

    server, port = await started_server(nursery, handler, poller_name)
    with caplog.at_level(logging.INFO, logger="millpond.server"):
        await one_exchange(port, poller_name, eof=False)
        await trio.testing.wait_all_tasks_blocked()
    statistics = server.statistics()
    assert (statistics.closed["reset"], statistics.handler_errors) == (1, 0)
    [record] = [r for r in caplog.records if "closed by the peer" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage().split("closed by the peer: ")[1]  # a reason, never empty


async def test_a_real_reset_mid_transfer_is_counted_as_reset(
    poller_name: str, nursery: trio.Nursery
) -> None:
    async def firehose(stream: millpond.Connection) -> None:
        while True:
            await stream.send_all(b"z" * 65536)

    server, port = await started_server(nursery, firehose, poller_name)
    with trio.socket.socket() as rude:
        await rude.connect((HOST, port))
        await rude.recv(1000)  # the handler is sending; now vanish with unread data
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with trio.fail_after(10):
        while server.statistics().closed["reset"] == 0:
            await trio.sleep(0.01)
    assert server.statistics().handler_errors == 0


async def test_a_handler_error_is_logged_with_a_traceback_and_counted(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def buggy(stream: millpond.Connection) -> None:
        raise KeyError("a bug")

    server, port = await started_server(nursery, buggy, poller_name)
    with caplog.at_level(logging.ERROR, logger="millpond.server"):
        await one_exchange(port, poller_name, eof=False)
        await trio.testing.wait_all_tasks_blocked()
    statistics = server.statistics()
    assert (statistics.closed["handler_error"], statistics.handler_errors) == (1, 1)
    assert "KeyError" in caplog.text


async def test_the_access_log_writes_one_line_per_connection_when_enabled(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await started_server(nursery, echo, poller_name, access_log=True)
    with caplog.at_level(logging.INFO, logger="millpond.access"):
        await one_exchange(port, poller_name, eof=True)
        await trio.testing.wait_all_tasks_blocked()
    [record] = [r for r in caplog.records if r.name == "millpond.access"]
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert line.startswith("127.0.0.1:")
    assert " in=5 out=5 eof" in line


async def test_the_access_log_is_off_by_default(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await started_server(nursery, echo, poller_name)
    with caplog.at_level(logging.DEBUG, logger="millpond.access"):
        await one_exchange(port, poller_name, eof=True)
        await trio.testing.wait_all_tasks_blocked()
    assert not [r for r in caplog.records if r.name == "millpond.access"]


async def test_connections_count_the_bytes_they_move(poller_name: str) -> None:
    left, right = await socket_pair(poller_name)
    async with left, right:
        await left.send_all(b"x" * 1000)
        received = 0
        while received < 1000:
            received += len(await right.receive_some())
        await left.send_eof()
        assert await right.receive_some() == b""
    assert (left.bytes_sent, right.bytes_received, right.eof_received) == (1000, 1000, True)
    assert (left.bytes_received, left.eof_received) == (0, False)


async def test_each_open_connection_reports_its_state_bytes_and_budget(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    in_handler = trio.Event()

    async def handler(stream: millpond.Connection) -> None:
        chunk = await stream.receive_some()  # holds its charge until it asks again
        await stream.send_all(chunk)
        in_handler.set()
        await trio.sleep_forever()

    server, port = await started_server(nursery, handler, poller_name, limiter=limiter)
    idle = await millpond.open_connection(HOST, port, poller=poller_name)
    busy = await millpond.open_connection(HOST, port, poller=poller_name)
    await busy.send_all(b"12345")
    assert await busy.receive_some() == b"12345"
    await in_handler.wait()
    await trio.testing.wait_all_tasks_blocked()
    by_state = {c.state: c for c in server.connection_statistics()}
    assert set(by_state) == {"idle", "in handler"}
    busy_info = by_state["in handler"]
    assert (busy_info.bytes_received, busy_info.bytes_sent) == (5, 5)
    assert busy_info.budget_held == millpond.DEFAULT_READ_SIZES.initial
    assert busy_info.peer.startswith("127.0.0.1:") and busy_info.age_seconds >= 0
    assert by_state["idle"].budget_held == 0
    for client in (idle, busy):
        await client.aclose()
