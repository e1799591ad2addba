"""Does the debug endpoint answer while 1000 clients flood the server and fill its budget?

Each of ``--runs`` (default 3) runs starts a fresh ``millpond serve
examples/echo.py:echo --budget 8M --debug-port 0`` pinned to CPU 0 (this
process, the load, runs on CPU 1), then measures the debug pages twice, side
by side: **idle**, with no client connected, and **flooded**, after
``--clients`` (default 1000) clients have been writing 64 KiB chunks as fast
as the server takes them, never reading, for ``--ramp`` seconds (every
echo's send blocks with its tail charged: with 8 MiB the connections hold
6.1-6.4 MiB, at the pressure level; with ``--budget 2M``, 1.6-1.9 MiB, at
the pressure or hard level. No read waits for memory: every handler is stuck
in ``send_all``, and one that holds nothing has its guaranteed read; so it was
before backlog reads waited below the pressure mark, docs/memory.md). Each
time it GETs each page ``--requests`` times, one at a time, on a new
connection each (connect, request, whole answer), and keeps the latencies.
It prints, per run and as the median over the runs, each page's median and
worst latency idle and flooded and their ratio, the budget's state as the
stats page reported it, and the CPU the server and the load used while
flooded. Loopback only; bounded in time; stops by itself::

    flock /work/notes/bench.lock python benchmarks/debug_under_flood.py
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from typing import Any

from debugwatch import ROOT, cpu_seconds, get, pin_this_process, rss_bytes, start_server, stats

PAGES = ("/debug/millpond/stats", "/metrics", "/debug/millpond/connections",
         "/debug/millpond/", "/debug/millpond/buffers", "/debug/millpond/tasks")  # fmt: skip

# The most a page may take under the flood: the promise.
PROMISE_SECONDS = 1.0


def flood(port: int, clients: int, stop: threading.Event) -> list[socket.socket]:
    """Connect ``clients`` sockets and keep writing to them until ``stop``; never read."""
    sockets = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setblocking(False)
        sockets.append(sock)
    chunk = b"f" * 65536

    def write() -> None:
        while not stop.is_set():
            for sock in sockets:
                try:
                    sock.send(chunk)
                except OSError:
                    pass  # full (EAGAIN), or the server closed it: leave it
            time.sleep(0.05)

    threading.Thread(target=write, daemon=True).start()
    return sockets


def measure(debug_port: int, requests: int) -> dict[str, list[float]]:
    """Each page ``requests`` times, one GET at a time: the latencies, in seconds."""
    latencies: dict[str, list[float]] = {page: [] for page in PAGES}
    for _ in range(requests):
        for page in PAGES:
            latencies[page].append(get(debug_port, page)[0])
        time.sleep(0.1)
    return latencies


def one_run(arguments: argparse.Namespace) -> dict[str, Any]:
    """A fresh server: idle latencies, then flooded ones, the budget's state and CPU used."""
    process, port, debug_port = start_server(
        str(ROOT / "examples" / "echo.py") + ":echo", "--budget", arguments.budget
    )
    stop = threading.Event()
    sockets: list[socket.socket] = []
    try:
        idle = measure(debug_port, arguments.requests)
        sockets = flood(port, arguments.clients, stop)
        time.sleep(arguments.ramp)
        before = stats(debug_port)
        server_cpu, client_cpu, started = cpu_seconds(process.pid), cpu_seconds(), time.monotonic()
        flooded = measure(debug_port, arguments.requests)
        elapsed = time.monotonic() - started
        server_share = (cpu_seconds(process.pid) - server_cpu) / elapsed * 100
        client_share = (cpu_seconds() - client_cpu) / elapsed * 100
        after = stats(debug_port)
        rss = rss_bytes(process.pid)
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=60)
        for sock in sockets:
            sock.close()
    return {"idle": idle, "flooded": flooded, "before": before, "after": after, "rss": rss,
            "server_cpu": server_share, "client_cpu": client_share}  # fmt: skip


def budget_line(snap: dict[str, Any], when: str) -> str:
    """What the stats page said about connections and the budget."""
    budget = snap["limiter"]
    return (f"{when}: {snap['connections']['open']} connections open, budget "
            f"{budget['bytes_in_use'] / 2**20:.2f} of {budget['total_bytes'] / 2**20:.0f} MiB "
            f"in use, pressure {budget['pressure']}, {budget['waiting']} reads waiting for "
            f"memory ({budget['bytes_waited_for'] / 2**20:.1f} MiB)")  # fmt: skip


def report(runs: list[dict[str, Any]], requests: int) -> None:
    """Per page: medians over the runs of each run's median, and the worst of all."""
    print(f"\n{len(runs)} runs; each page GET {requests} times per run, idle and flooded "
          "(ms; median over runs of each run's median; worst of all GETs):")  # fmt: skip
    print(f"  {'page':30} {'idle med':>9} {'flood med':>9} {'ratio':>6} {'flood worst':>11}")
    worst_of_all = 0.0
    for page in PAGES:
        idle = statistics.median(statistics.median(r["idle"][page]) for r in runs)
        flooded = statistics.median(statistics.median(r["flooded"][page]) for r in runs)
        worst = max(max(r["flooded"][page]) for r in runs)
        worst_of_all = max(worst_of_all, worst)
        print(f"  {page:30} {idle * 1000:9.1f} {flooded * 1000:9.1f} {flooded / idle:6.1f} "
              f"{worst * 1000:11.1f}")  # fmt: skip
    verdict = "within" if worst_of_all < PROMISE_SECONDS else "NOT within"
    print(f"slowest page under the flood: {worst_of_all * 1000:.0f} ms: {verdict} "
          f"{PROMISE_SECONDS:g} s")  # fmt: skip


def main() -> None:
    """Flood, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--budget", default="8M")
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    pin_this_process()
    runs = []
    for number in range(1, arguments.runs + 1):
        run = one_run(arguments)
        runs.append(run)
        print(f"run {number}:")
        print("  " + budget_line(run["before"], "flooded, before"))
        print("  " + budget_line(run["after"], "flooded, after"))
        print(f"  server RSS {run['rss'] / 2**20:.1f} MiB; while flooded the server used "
              f"{run['server_cpu']:.0f} % of CPU 0, the load (flood writer and requests) "
              f"{run['client_cpu']:.0f} % of CPU 1", flush=True)  # fmt: skip
    report(runs, arguments.requests)


if __name__ == "__main__":
    main()
