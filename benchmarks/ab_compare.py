"""Simultaneous A/B: two echo servers share one core, each driven by its own load generator.

On a noisy machine (a VM whose speed drifts by tens of percent from one minute to the
next) two servers measured one after the other compare their minutes as much as their
code. Here both run *at the same time*, pinned to the same core, so whatever slows the
machine slows both alike; the kernel's scheduler shares the core between them, and each
server, saturated, echoes in proportion to how cheap a message is for it. The ratio of
the two message rates is the ratio of their costs per message.

    python benchmarks/ab_compare.py \\
        --a "python examples/echo.py --unpooled" --b "python examples/echo.py" --runs 10

Each command gets ``--host 127.0.0.1 --port <free port>`` appended. Every run starts both
servers fresh, starts both load generators (C, pinned to ``--client-cpu``) together, and
stops the servers by pid. Printed: per run, both rates, ``B/A``, each server's CPU% (about
50 % each when both are saturated), its CPU time per message (per connection in churn) and
the load generators' CPU%; then the median ratio and the median difference in CPU time per
message, B minus A, each with its range. Nothing is written to disk.

``--mode churn`` runs the load generator's churn scenario instead of echo (``--conns``
slots, each: connect, one 64-byte echo, close): then a "message" is a whole connection.
``--a-proxy v2`` (or ``v1``; also ``--b-proxy``) makes that side's load generator start every
connection with a PROXY protocol header, for a server run with ``--proxy-protocol``:

    python benchmarks/ab_compare.py --mode churn \\
        --a "python -m millpond.cli serve examples/echo.py:echo" \\
        --b "python -m millpond.cli serve examples/echo.py:echo --proxy-protocol v2" --b-proxy v2
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from echo_compare import (
    HOST,
    LOADGEN_BIN,
    LOADGEN_SRC,
    compile_c,
    cpu_ticks,
    free_port,
    raise_nofile,
    stop_process,
)

TICKS_PER_S = 100  # USER_HZ, what /proc/<pid>/stat counts in
LISTEN_TIMEOUT_S = 15.0


def wait_accepting(port: int, deadline: float) -> bool:
    """Wait until something accepts TCP connections on HOST:port, or the deadline."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_server(command: str, port: int, cpu: int) -> subprocess.Popen[bytes]:
    """Start one server pinned to ``cpu``, listening on HOST:port."""
    argv = ["taskset", "-c", str(cpu), *shlex.split(command), "--host", HOST, "--port", str(port)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_run(args: argparse.Namespace, b_first: bool) -> tuple[dict[str, float], ...]:
    """Both servers, both load generators at once; one result dict per server (A, B)."""
    commands = (args.a, args.b)
    ports = (free_port(), free_port())
    servers = [start_server(c, p, args.server_cpu) for c, p in zip(commands, ports, strict=True)]
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        if not all(wait_accepting(port, deadline) for port in ports):
            raise SystemExit("a server did not start listening; run its command by hand")
        order = (1, 0) if b_first else (0, 1)
        loadgens: dict[int, subprocess.Popen[bytes]] = {}
        proxies = (args.a_proxy, args.b_proxy)
        for i in order:
            loadgens[i] = subprocess.Popen(
                [
                    "taskset", "-c", str(args.client_cpu), str(LOADGEN_BIN),
                    *loadgen_arguments(args, ports[i], proxies[i]),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(args.warmup)
        ticks_before = [cpu_ticks(s.pid) for s in servers]
        time.sleep(args.duration)
        ticks_after = [cpu_ticks(s.pid) for s in servers]
        results = []
        for i in (0, 1):
            out, _ = loadgens[i].communicate(timeout=args.duration + args.warmup + 60)
            lines = [line for line in out.decode().splitlines() if line.startswith("{")]
            if loadgens[i].returncode != 0 or not lines:
                raise SystemExit(f"load generator for server {'AB'[i]} failed")
            row = json.loads(lines[-1])
            server_pct = 100 * (ticks_after[i] - ticks_before[i]) / TICKS_PER_S / args.duration
            results.append(
                {"msgs_per_s": row["msgs_per_s"], "client_pct": row["cpu_pct"],
                 "server_pct": server_pct, "failures": row.get("failures", 0),
                 "server_us": server_pct / 100 / row["msgs_per_s"] * 1e6
                 if row["msgs_per_s"] else float("nan")}
            )  # fmt: skip
        return tuple(results)
    finally:
        for server in servers:
            stop_process(server)


def loadgen_arguments(args: argparse.Namespace, port: int, proxy: str) -> list[str]:
    """The load generator's command line (after its path) for one server."""
    header = [] if proxy == "off" else ["--proxy", proxy]
    window = [str(args.duration), str(args.warmup)]
    if args.mode == "churn":
        return [*header, "churn", HOST, str(port), str(args.conns), *window]
    sizes = [str(args.conns), str(args.size)]
    return [*header, "echo", HOST, str(port), *sizes, *window, str(args.inflight)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="command of server A (the baseline)")
    parser.add_argument("--b", required=True, help="command of server B")
    parser.add_argument("--runs", type=int, default=10, help="runs, each with fresh servers")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--conns", type=int, default=100, help="connections per server")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--inflight", type=int, default=1, help="messages in flight per conn")
    parser.add_argument("--server-cpu", type=int, default=0, help="core both servers share")
    parser.add_argument("--client-cpu", type=int, default=1, help="core of the load generators")
    parser.add_argument(
        "--mode", choices=("echo", "churn"), default="echo",
        help="echo: --conns connections, --size B messages; churn: --conns slots of "
        "connect, one 64 B echo, close (--size and --inflight do not apply)",
    )  # fmt: skip
    for side in ("a", "b"):
        parser.add_argument(
            f"--{side}-proxy", choices=("off", "v1", "v2"), default="off",
            help=f"server {side.upper()}'s load generator starts each connection with a "
            "PROXY header of this version",
        )  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("runs", "conns", "size", "inflight"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the per-run rows and the median ratio."""
    args = parse_args(argv)
    if compile_c(LOADGEN_SRC, LOADGEN_BIN) is None:
        print("SKIPPED: no C compiler for the load generator")
        return 0
    raise_nofile()
    print(f"A: {args.a} (PROXY header: {args.a_proxy})\nB: {args.b} (PROXY header: {args.b_proxy})")
    if args.mode == "churn":
        print(f"churn: {args.conns} slots of connect, one 64 B echo, close")
        unit = "conns/s"
    else:
        print(f"{args.conns} connections x {args.size} B, {args.inflight} in flight each")
        unit = "msgs/s"
    ratios, extra_us = [], []
    for run in range(args.runs):
        a, b = one_run(args, b_first=run % 2 == 1)
        ratio = b["msgs_per_s"] / a["msgs_per_s"]
        ratios.append(ratio)
        extra_us.append(b["server_us"] - a["server_us"])
        failures = f"  failures {a['failures']}+{b['failures']}" if args.mode == "churn" else ""
        print(
            f"run {run + 1:2d}  A {a['msgs_per_s']:9,.0f}  B {b['msgs_per_s']:9,.0f} {unit}  "
            f"B/A {ratio:.3f}  server CPU% A {a['server_pct']:.0f} B {b['server_pct']:.0f}  "
            f"server us each A {a['server_us']:.1f} B {b['server_us']:.1f}  "
            f"client CPU% {a['client_pct']:.0f}+{b['client_pct']:.0f}{failures}",
            flush=True,
        )
    print(
        f"B/A median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] "
        f"over {len(ratios)} runs"
    )
    print(
        f"B-A server CPU us per {unit.removesuffix('/s')[:-1]}: median "
        f"{statistics.median(extra_us):+.1f} [{min(extra_us):+.1f} to {max(extra_us):+.1f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
