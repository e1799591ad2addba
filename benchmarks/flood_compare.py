"""Flooding clients: how much memory does an echo server take when clients never read?

Each scenario starts a fresh echo server pinned to one core, records its RSS,
lets N clients (the C load generator in ``flood`` mode, pinned to the other
core) connect and write 64 KiB chunks as fast as the server accepts them
while never reading, holds for a fixed time, and records the server's peak
RSS (``VmHWM``). Bounded in time, stops by itself, loopback only::

    python benchmarks/flood_compare.py                 # the issue's three scenarios
    python benchmarks/flood_compare.py --hold 10 --runs 3

Scenarios: millpond echo with an 8 MiB budget and 200 flooders, the same with
2000, and ``trio.serve_tcp`` echo with 2000. Results are printed as a table and
appended as JSON lines to ``benchmarks/results/flood_compare.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_SOURCE = ROOT / "benchmarks" / "loadgen.c"
LOADGEN = ROOT / "benchmarks" / "build" / "loadgen"
MILLPOND_ECHO = ROOT / "examples" / "echo.py"
TRIO_ECHO = ROOT / "benchmarks" / "servers" / "trio_echo.py"
RESULTS = ROOT / "benchmarks" / "results" / "flood_compare.jsonl"
LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")

# The budget for the flood: small enough that 200 flooders could
# exceed it many times over if nothing bounded them.
BUDGET_MIB = 8


@dataclass
class Scenario:
    """One server configuration and how many flooders it faces."""

    name: str
    command: list[str]
    clients: int
    budget_mib: int | None


@dataclass
class Result:
    """What one run of one scenario measured (KiB)."""

    scenario: str
    clients: int
    rss_start_kib: int
    rss_peak_kib: int
    clients_connected: int
    bytes_written: int
    closed_by_server: int

    @property
    def growth_kib(self) -> int:
        """Peak RSS minus RSS at start."""
        return self.rss_peak_kib - self.rss_start_kib


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_loadgen() -> bool:
    """Compile the C load generator; False (with a message) if there is no compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("SKIPPED: no C compiler to build benchmarks/loadgen.c", file=sys.stderr)
        return False
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SOURCE)],
        check=True,
    )
    return True


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def raise_nofile() -> None:
    """In the child: allow as many fds as the hard limit (2000 flooders need them)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_scenario(scenario: Scenario, hold: float, server_cpu: int, client_cpu: int) -> Result:
    """Start the server, flood it, read its RSS, stop it."""
    server = subprocess.Popen(
        ["taskset", "-c", str(server_cpu), sys.executable, *scenario.command, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                port = int(match.group(2))
        if port is None:
            raise RuntimeError(f"{scenario.name}: server did not start")
        time.sleep(0.5)
        rss_start = proc_status_kib(server.pid, "VmRSS")
        flood = subprocess.run(
            [
                "taskset", "-c", str(client_cpu), str(LOADGEN), "flood", "127.0.0.1",
                str(port), str(scenario.clients), str(hold),
            ],
            capture_output=True,
            text=True,
            timeout=hold + 120,
            preexec_fn=raise_nofile,
        )
        report = json.loads(flood.stdout.strip().splitlines()[-1])
        if server.poll() is not None:
            raise RuntimeError(f"{scenario.name}: server died: {server.stderr.read()[-2000:]}")
        rss_peak = proc_status_kib(server.pid, "VmHWM")
        return Result(
            scenario=scenario.name,
            clients=scenario.clients,
            rss_start_kib=rss_start,
            rss_peak_kib=rss_peak,
            clients_connected=int(report["connected"]),
            bytes_written=int(report.get("bytes_written", 0)),
            closed_by_server=int(report["closed_by_peer"]),
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    """Run every scenario ``--runs`` times, interleaved, and print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions, interleaved")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds of flooding per run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="don't append JSON lines")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20 or not 0.5 <= args.hold <= 120:
        parser.error("--runs must be 1..20 and --hold 0.5..120 seconds")
    if shutil.which("taskset") is None:
        print("SKIPPED: taskset not found; cannot pin processes", file=sys.stderr)
        return 0
    if not build_loadgen():
        return 0
    millpond = [str(MILLPOND_ECHO), "--host", "127.0.0.1", "--budget-mib", str(BUDGET_MIB)]
    scenarios = [
        Scenario("millpond (8 MiB budget)", millpond, 200, BUDGET_MIB),
        Scenario("millpond (8 MiB budget)", millpond, 2000, BUDGET_MIB),
        Scenario("trio.serve_tcp", [str(TRIO_ECHO), "--host", "127.0.0.1"], 2000, None),
    ]
    results: dict[tuple[str, int], list[Result]] = {}
    for run in range(1, args.runs + 1):
        for scenario in scenarios:
            log(f"run {run}/{args.runs}: {scenario.name}, {scenario.clients} flooders")
            result = run_scenario(scenario, args.hold, args.server_cpu, args.client_cpu)
            results.setdefault((scenario.name, scenario.clients), []).append(result)
            log(
                f"  RSS {result.rss_start_kib} -> peak {result.rss_peak_kib} KiB "
                f"(+{result.growth_kib}), {result.clients_connected} connected, "
                f"{result.bytes_written / 2**20:.0f} MiB written"
            )
            if not args.no_save:
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                with RESULTS.open("a") as out:
                    row = {**asdict(result), "growth_kib": result.growth_kib, "run": run}
                    row["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    out.write(json.dumps(row) + "\n")
    print(f"\nFlood: clients write 64 KiB chunks and never read; {args.hold:g} s per run, "
          f"median of {args.runs} [min-max], KiB")
    print("| server | flooders | RSS at start | RSS peak | growth | growth per flooder |")
    print("|---|---|---|---|---|---|")
    for (name, clients), rows in results.items():
        growth = [row.growth_kib for row in rows]
        print(
            f"| {name} | {clients} | {statistics.median(r.rss_start_kib for r in rows):,.0f} | "
            f"{statistics.median(r.rss_peak_kib for r in rows):,.0f} | "
            f"{statistics.median(growth):,.0f} [{min(growth):,}-{max(growth):,}] | "
            f"{statistics.median(growth) / clients:.2f} |"
        )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
