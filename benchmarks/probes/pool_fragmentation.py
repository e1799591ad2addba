"""How much memory a pool maps when leases of mixed size classes outlive their neighbours.

The scenario of issue 11 (point 8) without sockets: a 16 MiB budget; for each size
class below 64 KiB in turn (as adaptive read sizes move between classes), lease as
many buffers as the budget grants at once, write every byte, then release all but the
first buffer of each slab, so each slab stays pinned by one small lease. Then force a
trim. Prints, after each class and at the end, what the limiter is charged, what the
pool maps and the process's RSS (Linux ``/proc/self/statm``), in MiB. For
docs/buffers.md ("The memory bound").

    python benchmarks/probes/pool_fragmentation.py [--budget-mib 16]
"""

from __future__ import annotations

import argparse
import os

import trio

from millpond.memory.buffers import Buffer, BufferPool
from millpond.memory.limiter import BufferLimiter
from millpond.memory.sizeclasses import SIZE_CLASSES, SLAB_BYTES

MiB = 1 << 20


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mapped(pool: BufferPool) -> int:
    """Bytes the pool maps: its slabs and its dedicated buffers."""
    stats = pool.statistics()
    return stats.bytes_reserved_by_slabs + stats.bytes_dedicated


def row(label: str, limiter: BufferLimiter, pool: BufferPool, start: int) -> None:
    """One line of figures, in MiB."""
    print(
        f"{label:>16}  charged {limiter.bytes_in_use / MiB:6.2f}  "
        f"mapped {mapped(pool) / MiB:6.2f}  RSS +{(rss() - start) / MiB:6.2f}"
    )


async def main(budget: int) -> None:
    """Pin one slab per few leases in every small class, then trim."""
    limiter = BufferLimiter(budget)
    pool = BufferPool(limiter)
    start = rss()
    kept: list[Buffer] = []
    for size in SIZE_CLASSES[:-1]:
        leased: list[Buffer] = []
        while True:
            try:
                buf = pool.lease_nowait(size)
            except trio.WouldBlock:
                break
            buf.view[:] = b"\x5a" * size  # touch every page
            leased.append(buf)
        per_slab = SLAB_BYTES // size
        for i, buf in enumerate(leased):
            if i % per_slab:
                buf.release()
            else:
                kept.append(buf)
        row(f"{size // 1024} KiB class", limiter, pool, start)
    freed = pool.trim(force=True)
    row(f"trim freed {freed / MiB:.2f}", limiter, pool, start)
    stats = pool.statistics()
    print(f"{len(kept)} leases kept, {stats.bytes_leased / MiB:.2f} MiB leased")
    for buf in kept:
        buf.release()
    pool.trim(force=True)
    row("all released", limiter, pool, start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-mib", type=int, default=16)
    trio.run(main, parser.parse_args().budget_mib * MiB)
