"""Cancellation storm: handlers cancelled at random await points while traffic flows
(issue 16). Hypothesis draws, for each handler, after how many of its task steps its
scope is cancelled: parked on the socket, queued for memory on a budget far below the
traffic, holding a lease, halfway through a send. Afterwards the budget in use is zero,
no lease is outstanding, and nothing else is left.
"""

from __future__ import annotations

import dataclasses

import trio
import trio.testing
from conftest import started_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenarios import HOST, Leftovers, payload_for, settled

import millpond
from millpond.server.server import CONNECTION_TASK_NAME

KIB = 1024
CLIENTS = 6


@dataclasses.dataclass
class Plan:
    """When one handler is cancelled: after ``steps`` of its task's steps."""

    scope: trio.CancelScope
    steps: int
    taken: int = 0


class Canceller(trio.abc.Instrument):
    """Counts each handler task's steps and cancels its scope at the drawn one.

    The cancellation is carried out by ``run_sync_soon`` (a hook must not run
    abort callbacks itself), so it lands where the handler is parked after that step.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.plans: dict[trio.lowlevel.Task, Plan] = {}
        self.fired = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        plan = self.plans.get(task)
        if plan is not None:
            plan.taken += 1
            if plan.taken == plan.steps:
                self.fired += 1
                self.token.run_sync_soon(plan.scope.cancel)


async def client(port: int, poller_name: str, seed: int) -> None:
    """Send and read until the server closes, whenever that is."""
    stream = await millpond.open_connection(HOST, port, poller=poller_name)
    payload = payload_for(seed, 48 * KIB)
    gone = (trio.BrokenResourceError, trio.ClosedResourceError)

    async def send() -> None:
        try:
            for _ in range(8):
                await stream.send_all(payload)
            await stream.send_eof()
        except gone:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        try:
            while await stream.receive_some():
                pass
        except gone:
            pass
        nursery.cancel_scope.cancel()  # closed by the server: stop sending too
    await stream.aclose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # A handler takes about 720 steps to echo its client's 384 KiB: most are cancelled
    # part-way, a few finish first.
    steps=st.lists(st.integers(1, 900), min_size=CLIENTS, max_size=CLIENTS),
    zero_copy=st.lists(st.booleans(), min_size=CLIENTS, max_size=CLIENTS),
)
async def test_handlers_cancelled_anywhere_leave_no_budget_and_no_lease(
    poller_name: str, steps: list[int], zero_copy: list[bool]
) -> None:
    limiter = millpond.BufferLimiter(32 * KIB)  # far below the traffic: reads wait
    canceller = Canceller(trio.lowlevel.current_trio_token())
    draws = iter(zip(steps, zero_copy, strict=True))

    async def handler(stream: millpond.Connection) -> None:
        task = trio.lowlevel.current_task()
        assert task.name == CONNECTION_TASK_NAME
        count, leases = next(draws)
        with trio.CancelScope() as scope:
            canceller.plans[task] = Plan(scope, count)
            while True:
                if leases:
                    async with stream.receive_buffer() as buffer:
                        if not buffer.nbytes:
                            return
                        await stream.send_all(buffer.view)
                else:
                    chunk = await stream.receive_some()
                    if not chunk:
                        return
                    await stream.send_all(chunk)

    trio.lowlevel.add_instrument(canceller)
    try:
        async with trio.open_nursery() as nursery:
            server, port = await started_server(nursery, handler, poller_name, limiter=limiter)
            before = await Leftovers.of(server)
            with trio.fail_after(20):
                async with trio.open_nursery() as clients:
                    for seed in range(CLIENTS):
                        clients.start_soon(client, port, poller_name, seed)
                await settled(server)
            assert server.statistics().handler_errors == 0
            assert await Leftovers.of(server) == before  # budget, leases, tasks, fds...
            pool = server.pool
            assert pool is not None
            pool_statistics = pool.statistics()
            assert pool_statistics.leases == pool_statistics.releases  # none outstanding
            limits = limiter.statistics()
            assert (limits.bytes_in_use, limits.tasks_waiting) == (0, 0)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(canceller)
