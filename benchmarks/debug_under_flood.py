"""Does the debug endpoint answer while the server is flooded and its budget is spent?

Starts ``millpond serve examples/echo.py:echo --budget 8M --debug-port 0``,
connects ``--clients`` (default 1000) clients that write 64 KiB chunks as
fast as the server takes them and never read (so every echo's send blocks
and its tail is charged: the budget is spent and reads queue for memory),
waits ``--ramp`` seconds, then GETs debug pages ``--requests`` times each,
one at a time, and prints the latency of each page (median and worst) with
the budget's state as the stats page reported it. Loopback only; bounded in
time; stops by itself::

    flock /work/notes/bench.lock python benchmarks/debug_under_flood.py
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

from debugwatch import ROOT, get, rss_bytes, start_server, stats

PAGES = ("/debug/millpond/stats", "/metrics", "/debug/millpond/connections",
         "/debug/millpond/", "/debug/millpond/tasks")  # fmt: skip


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
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass  # the server closed it: leave it
            time.sleep(0.05)

    threading.Thread(target=write, daemon=True).start()
    return sockets


def main() -> None:
    """Flood, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--budget", default="8M")
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=20)
    arguments = parser.parse_args()
    process, port, debug_port = start_server(
        str(ROOT / "examples" / "echo.py") + ":echo", "--budget", arguments.budget
    )
    stop = threading.Event()
    try:
        sockets = flood(port, arguments.clients, stop)
        time.sleep(arguments.ramp)
        before = stats(debug_port)
        latencies: dict[str, list[float]] = {page: [] for page in PAGES}
        for _ in range(arguments.requests):
            for page in PAGES:
                latencies[page].append(get(debug_port, page)[0])
            time.sleep(0.2)
        after = stats(debug_port)
        rss = rss_bytes(process.pid)
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=60)
    for sock in sockets:
        sock.close()
    for snap, when in ((before, "before"), (after, "after")):
        budget = snap["limiter"]
        print(f"{when}: {snap['connections']['open']} connections open, budget "
              f"{budget['bytes_in_use'] / 2**20:.2f} of {budget['total_bytes'] / 2**20:.0f} MiB "
              f"in use, pressure {budget['pressure']}, {budget['waiting']} reads waiting for "
              f"memory")  # fmt: skip
    print(f"server RSS {rss / 2**20:.1f} MiB; {arguments.requests} GETs of each page, one at a "
          "time:")  # fmt: skip
    for page, times in latencies.items():
        print(f"  {page:32} median {statistics.median(times) * 1000:7.1f} ms   "
              f"worst {max(times) * 1000:7.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
