"""What one park-and-wake and one schedule point cost in Python, Trio's way and millpond's.

Each coroutine is driven by hand (``coro.send``), the way Trio's run loop steps a
task, so the figures are the coroutine side of a task step only: the awaitables,
the trap message and the outcome, without the run loop around them. For the
performance notes (docs/performance.md, "Optimisations").

    taskset -c 0 python benchmarks/probes/trap_cost.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Coroutine
from typing import Any

import outcome
from trio.lowlevel import Abort, RaiseCancelT, cancel_shielded_checkpoint, wait_task_rescheduled

from millpond._core.traps import WOKEN, Park, ScheduleYield


def _abort(_raise_cancel: RaiseCancelT) -> Abort:
    return Abort.SUCCEEDED


def _loop(step: Callable[[], Any], count: int) -> Callable[[], Coroutine[Any, Any, None]]:
    async def run() -> None:
        for _ in range(count):
            await step()

    return run


def drive(run: Callable[[], Coroutine[Any, Any, None]], count: int, shared_wake: bool) -> float:
    """µs per step: send what Trio would send after each yield until ``run`` ends."""
    coro = run()
    send = coro.send
    value = outcome.Value
    started = time.perf_counter()
    send(None)
    try:
        if shared_wake:
            while True:
                send(WOKEN)
        else:
            while True:
                send(value(None))  # Trio makes a fresh Value(None) per wake
    except StopIteration:
        pass
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    """Print the four costs, several rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300_000, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count = args.count
    park = Park(_abort)
    point = ScheduleYield()
    cases = [
        (
            "park+wake, Trio's wait_task_rescheduled",
            _loop(lambda: wait_task_rescheduled(_abort), count),
            False,
        ),
        ("park+wake, millpond Park + WOKEN", _loop(lambda: park, count), True),
        (
            "schedule point, Trio's cancel_shielded_checkpoint",
            _loop(cancel_shielded_checkpoint, count),
            False,
        ),
        # SCHEDULE_POINT is Trio's until a run proves the fast one: measure that one.
        ("schedule point, millpond ScheduleYield", _loop(lambda: point, count), False),
    ]
    for round_number in range(1, args.rounds + 1):
        for name, run, shared in cases:
            print(f"round {round_number}  {name:52} {drive(run, count, shared):6.2f} µs")


if __name__ == "__main__":
    main()
