"""What the hostile-client scenarios share: a well-behaved client that checks every byte it
gets back, and a count of everything a server can leave behind (issue 16).

A scenario takes ``await Leftovers.of(server)`` once the server is up, lets its hostile clients
loose, and then asserts that a second count equals the first: no descriptor, task, poller
registration, connection, lease or byte of budget more than before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import trio
import trio.testing
from conftest import open_fds

import millpond

HOST = "127.0.0.1"


def all_tasks() -> Iterator[trio.lowlevel.Task]:
    """Every task of the current run, walking the task tree from the root."""
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        yield task
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)


@dataclass(frozen=True)
class Leftovers:
    """What a running server holds now, counted every way it can be counted."""

    fds: frozenset[int]
    tasks: int
    registered: int
    connections: int
    budget_in_use: int
    budget_waiters: int
    bytes_leased: int

    @classmethod
    async def of(cls, server: millpond.Server) -> Leftovers:
        """Once every task is blocked, count: /proc/self/fd, the run's tasks, the poller's
        registrations, the server's connections, the limiter and the pool."""
        await trio.testing.wait_all_tasks_blocked()
        limiter, pool, poller = server.limiter, server.pool, server.poller
        assert limiter is not None and pool is not None and poller is not None
        limits = limiter.statistics()
        return cls(
            fds=frozenset(open_fds()),
            tasks=sum(1 for _ in all_tasks()),
            registered=poller.statistics().registered,
            connections=server.statistics().connections_active,
            budget_in_use=limits.bytes_in_use,
            budget_waiters=limits.tasks_waiting,
            bytes_leased=pool.statistics().bytes_leased,
        )


async def settled(server: millpond.Server, seconds: float = 10) -> None:
    """Wait (at most ``seconds``) until the server has closed every connection."""
    with trio.fail_after(seconds):
        while server.statistics().connections_active:
            await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()


def payload_for(seed: int, size: int) -> bytes:
    """``size`` bytes that differ from client to client (SHA-256 of the seed, repeated)."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


async def echo_checked(port: int, poller_name: str, seed: int, size: int) -> None:
    """Send ``size`` bytes and EOF, and check that the same bytes come back (SHA-256)."""
    payload = payload_for(seed, size)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    received = hashlib.sha256()
    count = 0
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await client.send_all(payload)
            await client.send_eof()

        nursery.start_soon(send)
        while chunk := await client.receive_some():
            received.update(chunk)
            count += len(chunk)
    assert (count, received.hexdigest()) == (len(payload), hashlib.sha256(payload).hexdigest())
    await client.aclose()
