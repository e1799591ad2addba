"""What one Trio schedule point costs on this machine: the floor under any Trio server.

100 tasks each yield 2000 times (``cancel_shielded_checkpoint``, then ``checkpoint``);
printed is the CPU time per task step. Run it pinned to one core, as the servers are:

    taskset -c 0 python benchmarks/probes/trio_step_cost.py
"""

from __future__ import annotations

import time

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint

TASKS = 100
STEPS = 2000


async def _yield_repeatedly(step: object) -> None:
    for _ in range(STEPS):
        await step()  # type: ignore[operator]


async def main() -> None:
    """Time both kinds of schedule point."""
    for step in (cancel_shielded_checkpoint, checkpoint):
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(TASKS):
                nursery.start_soon(_yield_repeatedly, step)
        elapsed = time.process_time() - started
        print(f"{step.__name__:28s} {elapsed / (TASKS * STEPS) * 1e6:6.2f} us per task step")


if __name__ == "__main__":
    trio.run(main)
