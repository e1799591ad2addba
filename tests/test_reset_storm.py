"""Reset storm: clients that close with RST (SO_LINGER 0) before, during and after the
server sends or receives. No exception escapes to the server, well-behaved clients lose no
byte meanwhile, and afterwards nothing is left: no fd, task, registration, lease or byte
of budget (issue 16; ``benchmarks/hostile_scenarios.py reset`` is the long version)."""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import started_server
from scenarios import HOST, Leftovers, echo_checked, settled

import millpond

KIB = 1024
# A request for a large answer, so that the client can reset while it is being sent.
BIG_REQUEST = b"BIG\n"
BIG_ANSWER_BLOCKS = 64  # of 64 KiB: far more than any socket buffer holds
# How the storm's clients reset: at once (maybe before the server accepts), while
# sending (the server is receiving and echoing to a client that does not read), while
# receiving (the server is in the middle of a large send_all).
KINDS = ("at_once", "mid_send", "mid_receive")
RESETS_PER_KIND = 60
AT_A_TIME = 30


async def storm_handler(stream: millpond.Connection) -> None:
    """Echo, except that BIG_REQUEST is answered with 4 MiB."""
    first = await stream.receive_some()
    if first == BIG_REQUEST:
        block = b"x" * (64 * KIB)
        for _ in range(BIG_ANSWER_BLOCKS):
            await stream.send_all(block)
        return
    await stream.send_all(first)
    async for chunk in stream:
        await stream.send_all(chunk)


def linger_zero(sock: trio.socket.SocketType) -> None:
    """Make close() send RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def resetting_client(port: int, kind: str) -> None:
    """Connect, do what ``kind`` says, close with RST."""
    sock = trio.socket.socket()
    try:
        await sock.connect((HOST, port))
        linger_zero(sock)
        if kind == "mid_send":
            data = b"y" * (64 * KIB)
            with trio.move_on_after(0.2):  # until the buffers on both sides are full
                while True:
                    await sock.send(data)
        elif kind == "mid_receive":
            await sock.send(BIG_REQUEST)
            got = 0
            while got < 16 * KIB:
                got += len(await sock.recv(4096))
    finally:
        sock.close()


async def run_storm(port: int, kinds: tuple[str, ...], per_kind: int) -> None:
    limit = trio.CapacityLimiter(AT_A_TIME)

    async def one(kind: str) -> None:
        async with limit:
            await resetting_client(port, kind)

    async with trio.open_nursery() as nursery:
        for _ in range(per_kind):
            for kind in kinds:
                nursery.start_soon(one, kind)


async def storm_server(
    nursery: trio.Nursery, poller_name: str
) -> tuple[millpond.Server, int, Leftovers]:
    """The storm's server (1 MiB budget), its port, and what it holds before the storm."""
    limiter = millpond.BufferLimiter(1024 * KIB)
    server, port = await started_server(nursery, storm_handler, poller_name, limiter=limiter)
    return server, port, await Leftovers.of(server)


@pytest.mark.time_limit(60)
async def test_a_reset_storm_leaves_nothing_behind_and_honest_clients_lose_nothing(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="millpond")
    server, port, before = await storm_server(nursery, poller_name)
    with trio.fail_after(40):
        async with trio.open_nursery() as clients:
            clients.start_soon(run_storm, port, KINDS, RESETS_PER_KIND)
            for seed in range(10):  # meanwhile: checked echoes of 256 KiB each
                clients.start_soon(echo_checked, port, poller_name, seed, 256 * KIB)
        await settled(server)
    statistics = server.statistics()
    assert statistics.handler_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Every client is one connection accepted and closed: the honest ones at their
    # EOF, every reset one as a reset, whether it came before setup or during a transfer.
    closed = statistics.closed
    assert statistics.connections_accepted == len(KINDS) * RESETS_PER_KIND + 10
    assert (closed["reset"], closed["eof"]) == (len(KINDS) * RESETS_PER_KIND, 10)
    assert statistics.setup_errors == 0
    assert await Leftovers.of(server) == before


@pytest.mark.parametrize("kind", KINDS)
async def test_each_kind_of_reset_closes_as_reset_and_holds_nothing(
    poller_name: str, nursery: trio.Nursery, kind: str
) -> None:
    server, port, before = await storm_server(nursery, poller_name)
    with trio.fail_after(20):
        await run_storm(port, (kind,), 10)
        await settled(server)
    statistics = server.statistics()
    assert (statistics.closed["reset"], statistics.setup_errors) == (10, 0)
    assert statistics.connections_accepted == sum(statistics.closed.values())
    assert await Leftovers.of(server) == before


async def test_a_client_reset_in_the_backlog_is_a_reset_not_a_setup_error(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="millpond")
    server, port = await started_server(nursery, storm_handler, poller_name, max_connections=1)
    first = await millpond.open_connection(HOST, port, poller=poller_name)
    await first.send_all(b"hold the only slot")
    assert await first.receive_some() == b"hold the only slot"
    await resetting_client(port, "at_once")  # waits in the backlog, reset there
    await first.aclose()  # frees the slot: the reset socket is accepted now
    with trio.fail_after(10):
        while server.statistics().connections_accepted < 2:
            await trio.sleep(0.01)
        await settled(server)
    statistics = server.statistics()
    assert (statistics.closed["reset"], statistics.closed["eof"]) == (1, 1)
    assert statistics.setup_errors == 0
    assert "reset by the peer before setup" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


STORM = Path(__file__).resolve().parent.parent / "benchmarks" / "hostile_storm.py"


@pytest.mark.time_limit(60)
async def test_the_benchmarks_storm_generator_resets_every_kind_and_leaves_nothing(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # benchmarks/hostile_storm.py, the long version's generator (one epoll loop, many
    # connections in flight, no Trio), for a second: far more resets at once than above.
    caplog.set_level(logging.WARNING, logger="millpond")
    server, port, before = await storm_server(nursery, poller_name)
    command = [sys.executable, str(STORM), str(port), "1", "128"]
    with trio.fail_after(40):
        done = await trio.run_process(command, capture_stdout=True)
        await settled(server, 30)
    counts = json.loads(done.stdout)
    assert counts["connect_failed"] == 0
    assert all(counts["resets_by_kind"][kind] > 0 for kind in KINDS), counts
    assert sum(counts["server_closed_first"].values()) == 0, counts
    statistics = server.statistics()
    assert (statistics.handler_errors, statistics.setup_errors) == (0, 0)
    assert statistics.closed["reset"] == statistics.connections_accepted > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert await Leftovers.of(server) == before
