"""Slowloris: hundreds of connections trickling a byte at a time never finish a request; the
handler's deadline (``Connection.deadline``) reaps them, which no inactivity timeout can,
while well-behaved clients are served meanwhile (issue 16; ``benchmarks/hostile_scenarios.py
slowloris`` is the long version, 5000 tricklers with the well-behaved clients' rate and p99)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from conftest import started_server
from scenarios import HOST, Leftovers, settled

import millpond

TRICKLERS = 300
TRICKLE_EVERY = 0.5  # seconds between bytes: the scaled-down "byte a second"
HEADER_SECONDS = 2.0  # the handler's deadline for a complete request line
KIB = 1024


async def request_line_handler(stream: millpond.Connection) -> None:
    """Answer one request line, which must arrive within HEADER_SECONDS (then no deadline)."""
    stream.deadline = trio.current_time() + HEADER_SECONDS
    request = b""
    while b"\n" not in request:
        chunk = await stream.receive_some()
        if not chunk:
            return
        request += chunk
    stream.deadline = math.inf
    await stream.send_all(b"ok " + request.split(b"\n", 1)[0] + b"\n")


async def trickler(port: int, reaped: list[float]) -> None:
    """Send one byte every TRICKLE_EVERY seconds, never a newline, until the server closes."""
    sock = trio.socket.socket()
    with sock:
        await sock.connect((HOST, port))
        opened = trio.current_time()
        while True:
            try:
                await sock.send(b"G")
                with trio.move_on_after(TRICKLE_EVERY):
                    if await sock.recv(1) == b"":
                        break
            except OSError:  # reset: the server is gone too
                break
        reaped.append(trio.current_time() - opened)


async def well_behaved(port: int, poller_name: str, number: int) -> None:
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    await client.send_all(b"GET /%d\n" % number)
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = await client.receive_some()
        assert chunk, "closed before the answer"
        answer += chunk
    assert answer == b"ok GET /%d\n" % number
    await client.aclose()


@pytest.mark.time_limit(60)
async def test_tricklers_are_reaped_at_their_deadline_while_others_are_served(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(256 * KIB)
    # An idle timeout shorter than the trickle would catch them; one longer does
    # not: only the deadline does.
    server, port = await started_server(
        nursery, request_line_handler, poller_name, limiter=limiter, idle_timeout=30
    )
    await trio.testing.wait_all_tasks_blocked()
    before = await Leftovers.of(server)
    reaped: list[float] = []
    with trio.fail_after(40):
        async with trio.open_nursery() as clients:
            for _ in range(TRICKLERS):
                clients.start_soon(trickler, port, reaped)
            while server.statistics().connections_active < TRICKLERS:
                await trio.sleep(0.01)
            served = 0
            while server.statistics().connections_active >= TRICKLERS:  # all still there
                await well_behaved(port, poller_name, served)
                served += 1
        await settled(server)
    statistics = server.statistics()
    assert served > 0
    assert statistics.closed["deadline"] == TRICKLERS
    assert statistics.closed["idle_timeout"] == 0
    assert len(reaped) == TRICKLERS
    # None was reaped before its deadline: the trickle kept it alive till then.
    assert min(reaped) >= HEADER_SECONDS
    assert await Leftovers.of(server) == before
