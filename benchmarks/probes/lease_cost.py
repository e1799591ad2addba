"""What one ``lease_nowait`` + ``release`` costs, and how two versions of millpond compare.

On a noisy VM two versions timed one after the other compare their minutes as much
as their code, so each round runs both at once, pinned to one CPU, and times CPU
time (``time.thread_time``) rather than wall time: whatever slows the machine slows
both alike. Printed per size class: each side's best and median µs per lease +
release (with a limiter, ``leak_detection="sampled"``, three other leases held),
and the median [min-max] of the per-round ratios B/A. For docs/buffers.md ("Cost").

    python benchmarks/probes/lease_cost.py --a /tmp/base/src --b src --rounds 7
    python benchmarks/probes/lease_cost.py --a src --b src --guard-b     # guard_views

``--a``/``--b`` are source directories put first on ``PYTHONPATH`` (extract an older
version with ``git archive <commit> src | tar -x -C /tmp/base``). ``--one`` times
the installed or ``PYTHONPATH`` version alone and prints JSON (what each side runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

SIZES = (1024, 4096, 65536)
LEASES = 10_000  # per timing
REPEATS = 15  # timings per size; the best counts


def time_one(guard: bool) -> dict[str, float]:
    """µs of CPU time per lease_nowait + release, best of REPEATS, per size."""
    import trio

    from millpond.memory.buffers import BufferPool
    from millpond.memory.limiter import BufferLimiter

    results: dict[str, float] = {}

    async def main() -> None:
        for size in SIZES:
            # Only when asked: the tree compared may predate guard_views.
            extra: dict[str, Any] = {"guard_views": True} if guard else {}
            pool = BufferPool(BufferLimiter(1 << 26), leak_detection="sampled", **extra)
            held = [pool.lease_nowait(size) for _ in range(3)]
            lease = pool.lease_nowait
            best = float("inf")
            for _ in range(REPEATS):
                start = time.thread_time()
                for _ in range(LEASES):
                    lease(size).release()
                best = min(best, time.thread_time() - start)
            results[str(size)] = best / LEASES * 1e6
            for buf in held:
                buf.release()

    trio.run(main)
    return results


def side(source: str, guard: bool, cpu: str | None) -> subprocess.Popen[str]:
    """Start one timing process for *source*."""
    command = [sys.executable, __file__, "--one"] + (["--guard"] if guard else [])
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", cpu, *command]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(source)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def compare(args: argparse.Namespace) -> None:
    """Run the rounds and print the table."""
    rows: list[tuple[dict[str, float], dict[str, float]]] = []
    for _ in range(args.rounds):
        a = side(args.a, args.guard_a, args.cpu)
        b = side(args.b, args.guard_b, args.cpu)
        out_a, _ = a.communicate(timeout=600)
        out_b, _ = b.communicate(timeout=600)
        rows.append((json.loads(out_a), json.loads(out_b)))
    for size in map(str, SIZES):
        a_values = [a[size] for a, _ in rows]
        b_values = [b[size] for _, b in rows]
        ratios = [b / a for a, b in zip(a_values, b_values, strict=True)]
        print(
            f"{size:>6} B: A best {min(a_values):.2f} median {statistics.median(a_values):.2f} µs"
            f" | B best {min(b_values):.2f} median {statistics.median(b_values):.2f} µs"
            f" | B/A {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", default="src", help="source directory of version A")
    parser.add_argument("--b", default="src", help="source directory of version B")
    parser.add_argument("--guard-a", action="store_true", help="A uses guard_views=True")
    parser.add_argument("--guard-b", action="store_true", help="B uses guard_views=True")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu", default="1", help="CPU both sides share (taskset)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--guard", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one:
        print(json.dumps(time_one(arguments.guard)))
    else:
        compare(arguments)
