"""Soak: does a millpond server's memory stay flat under hours of churn and echo traffic?

Starts ``millpond serve benchmarks/soak.py:echo_both_ways`` (every other
connection echoes with ``receive_some``, the others with the pooled
``receive_buffer``, so the pool's slabs are exercised too) with its debug
endpoint,
then for ``--minutes`` (default 10) runs two kinds of clients at once, all on
loopback: ``--churners`` tasks that each connect, echo a few messages of
random sizes (64 B to 64 KiB), and close, over and over; and
``--steady`` connections that stay open and echo without pause. Every
second it samples the server's RSS and open descriptors (``/proc``) and, from
the debug endpoint, the budget in use, the pool's slabs and the Trio tasks.
When the time is up the clients stop, the server is left alone for
``--settle`` seconds (its pool trims idle slabs every 5 s), and it is sampled
once more against the baseline taken before the first client.

Writes ``soak.csv`` and ``soak.png`` into ``--out`` (default
``benchmarks/results``) and prints the RSS slope over the second half of the
run (a least-squares line), as bytes per minute and as a share of RSS per
10 minutes, plus descriptors and tasks at the baseline and after settling, and the CPU
the server (pinned to CPU 0) and the clients (this process, CPU 1) used::

    flock /work/notes/bench.lock python benchmarks/soak.py --minutes 30

Needs matplotlib for the chart (the ``bench`` extra); without it the CSV is
still written.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import statistics
import time
from pathlib import Path

import trio
from debugwatch import ROOT, cpu_seconds, open_fds, pin_this_process, rss_bytes, start_server, stats

import millpond

_connections = itertools.count()


async def echo_both_ways(stream: millpond.Connection) -> None:
    """The soak's server: echo with receive_some, or (every other connection) receive_buffer."""
    if next(_connections) % 2:
        async for chunk in stream:
            await stream.send_all(chunk)
        return
    while True:
        async with stream.receive_buffer() as buffer:
            if not buffer.nbytes:
                return
            await stream.send_all(buffer.view)


COLUMNS = ("seconds", "rss_bytes", "budget_bytes_in_use", "pool_slabs", "open_fds", "tasks",
           "connections_open", "messages")  # fmt: skip


async def churn(port: int, stop: trio.Event, counter: list[int], rng: random.Random) -> None:
    """Connect, echo 1 to 8 messages of random size, close; until ``stop``."""
    while not stop.is_set():
        try:
            async with await millpond.open_connection("127.0.0.1", port) as stream:
                for _ in range(rng.randint(1, 8)):
                    await echo_once(stream, rng.randint(64, 65536))
                    counter[0] += 1
        except (OSError, trio.BrokenResourceError):
            await trio.sleep(0.01)  # a refused connect (backlog full): try again


async def steady(port: int, stop: trio.Event, counter: list[int], rng: random.Random) -> None:
    """One connection that echoes small messages until ``stop``."""
    async with await millpond.open_connection("127.0.0.1", port) as stream:
        while not stop.is_set():
            await echo_once(stream, rng.randint(16, 4096))
            counter[0] += 1


async def echo_once(stream: millpond.Connection, size: int) -> None:
    """Send ``size`` bytes and read them all back."""
    await stream.send_all(b"s" * size)
    received = 0
    while received < size:
        chunk = await stream.receive_some()
        if not chunk:
            raise trio.BrokenResourceError("the server closed")
        received += len(chunk)


def sample(pid: int, debug_port: int, started: float, messages: int) -> dict[str, float]:
    """One row: the process from /proc, the rest from the debug endpoint."""
    snap = stats(debug_port)
    return {
        "seconds": round(time.monotonic() - started, 2),
        "rss_bytes": rss_bytes(pid),
        "budget_bytes_in_use": snap["limiter"]["bytes_in_use"],
        "pool_slabs": sum(c["slabs"] for c in snap["pool"]["size_classes"]),
        "open_fds": open_fds(pid),
        "tasks": snap["process"]["tasks"],
        "connections_open": snap["connections"]["open"],
        "messages": messages,
    }


async def run_load(
    pid: int, port: int, debug_port: int, seconds: float, churners: int, steady_count: int
) -> list[dict[str, float]]:
    """The clients for ``seconds``, sampling once a second; the rows."""
    rows: list[dict[str, float]] = []
    counter = [0]
    stop = trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(churners):
            nursery.start_soon(churn, port, stop, counter, random.Random(i))
        for i in range(steady_count):
            nursery.start_soon(steady, port, stop, counter, random.Random(-1 - i))
        while time.monotonic() - started < seconds:
            await trio.sleep(1.0)
            row = await trio.to_thread.run_sync(sample, pid, debug_port, started, counter[0])
            rows.append(row)
            if len(rows) % 60 == 0:
                print(f"{row['seconds']:7.0f} s  rss {row['rss_bytes'] / 2**20:6.1f} MiB  "
                      f"fds {row['open_fds']}  tasks {row['tasks']}  "
                      f"messages {row['messages']}", flush=True)  # fmt: skip
        stop.set()
        with trio.move_on_after(30):  # the clients finish their exchange in flight
            while nursery.child_tasks:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return rows


def slope(rows: list[dict[str, float]], column: str) -> float:
    """Least-squares slope of ``column`` per second over ``rows``."""
    xs = [r["seconds"] for r in rows]
    ys = [r[column] for r in rows]
    return statistics.linear_regression(xs, ys).slope


def chart(rows: list[dict[str, float]], path: Path, title: str) -> bool:
    """A PNG of the four series against time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [r["seconds"] / 60 for r in rows]
    panels = (("rss_bytes", "RSS (MiB)", 2**20), ("budget_bytes_in_use", "budget in use (MiB)",
              2**20), ("pool_slabs", "pool slabs", 1), ("open_fds", "open fds", 1),
              ("tasks", "Trio tasks", 1))  # fmt: skip
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 10), sharex=True)
    for axis, (column, label, scale) in zip(axes, panels, strict=True):
        axis.plot(minutes, [r[column] / scale for r in rows], linewidth=0.8)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return True


def main() -> None:
    """Run the soak and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--churners", type=int, default=50)
    parser.add_argument("--steady", type=int, default=50)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--budget", default="64M")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    arguments = parser.parse_args()
    pin_this_process()
    process, port, debug_port = start_server(
        str(ROOT / "benchmarks" / "soak.py") + ":echo_both_ways", "--budget", arguments.budget,
        "--log-level", "info",
    )  # fmt: skip
    try:
        time.sleep(1.0)
        baseline = sample(process.pid, debug_port, time.monotonic(), 0)
        server_cpu, client_cpu, started = cpu_seconds(process.pid), cpu_seconds(), time.monotonic()
        rows = trio.run(
            run_load, process.pid, port, debug_port, arguments.minutes * 60,
            arguments.churners, arguments.steady,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        server_share = (cpu_seconds(process.pid) - server_cpu) / elapsed * 100
        client_share = (cpu_seconds() - client_cpu) / elapsed * 100
        time.sleep(arguments.settle)
        settled = sample(process.pid, debug_port, time.monotonic(), 0)
    finally:
        process.terminate()
        process.wait(timeout=60)
    arguments.out.mkdir(parents=True, exist_ok=True)
    with open(arguments.out / "soak.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    half = rows[len(rows) // 2 :]
    per_second = slope(half, "rss_bytes")
    mean_rss = statistics.fmean(r["rss_bytes"] for r in half)
    share = per_second * 600 / mean_rss * 100
    title = (f"millpond echo soak: {arguments.minutes:g} min, {arguments.churners} churning + "
             f"{arguments.steady} steady clients, budget {arguments.budget}")  # fmt: skip
    drew = chart(rows, arguments.out / "soak.png", title)
    messages = rows[-1]["messages"]
    print(f"messages echoed: {messages:.0f} ({messages / (arguments.minutes * 60):.0f}/s); "
          f"the server used {server_share:.0f} % of CPU 0, the clients {client_share:.0f} % "
          "of CPU 1")  # fmt: skip
    print(f"RSS: baseline {baseline['rss_bytes'] / 2**20:.1f} MiB, second half mean "
          f"{mean_rss / 2**20:.1f} MiB, peak {max(r['rss_bytes'] for r in rows) / 2**20:.1f} MiB, "
          f"after settling {settled['rss_bytes'] / 2**20:.1f} MiB")  # fmt: skip
    print(f"RSS slope over the second half: {per_second * 60 / 1024:+.1f} KiB/min = "
          f"{share:+.3f} % of RSS per 10 minutes")  # fmt: skip
    for column in ("open_fds", "tasks", "budget_bytes_in_use", "pool_slabs", "connections_open"):
        print(f"{column}: baseline {baseline[column]:.0f}, after settling {settled[column]:.0f}")
    print(f"wrote {arguments.out / 'soak.csv'}" + (f" and {arguments.out / 'soak.png'}" if drew
          else " (no chart: matplotlib is missing)"))  # fmt: skip


if __name__ == "__main__":
    main()
