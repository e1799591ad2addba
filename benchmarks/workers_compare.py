"""The 100 x 64 B echo through ``millpond serve --workers N``, and where the load generator runs.

Usage:
    flock /work/notes/bench.lock python benchmarks/workers_compare.py [--runs 3] [--duration 5]
        [--layouts single,w1-pinned,w2-gen1,w1-shared,w2-shared,w2-split] [--time-budget 220]

One Trio run uses one core, so N workers should serve up to N times as much, if
N cores are free for them. On a 2-core machine they are not: the C load
generator (benchmarks/loadgen.c) needs a core too. Each layout says who may run
where (``taskset``):

* ``single``: ``millpond serve`` without ``--workers`` (one process) on core 0, the
  generator on core 1: echo_compare.py's layout, the baseline;
* ``w1-pinned``: ``--workers 1`` (a supervisor and one worker) on core 0, the
  generator on core 1: what the supervisor costs (it should be nothing);
* ``w2-gen1``: ``--workers 2`` on cores 0-1 (unpinned), the generator pinned
  to core 1: two workers, one of which shares its core with the generator;
* ``w1-shared``: ``--workers 1`` on cores 0-1, the generator unpinned: the same
  freedom as w2-shared, one worker;
* ``w2-shared``: ``--workers 2`` on cores 0-1, the generator unpinned: two
  workers and the generator share two cores;
* ``w2-split``: ``--workers 2``, each worker pinned to a core of its own after
  it starts (``taskset -p``), the generator unpinned.

Every run starts the server fresh, waits for every worker to listen, and runs
``loadgen echo 127.0.0.1 PORT 100 64 DURATION WARMUP``; layouts are interleaved
(A B C A B C ...), and a new round starts only if it fits in --time-budget
seconds (so that a run under the shared lock stays short: fewer rounds, never
a layout left out of a round). Each row: msgs/s, latency p50/p99, the generator's CPU%
(its own getrusage), the workers' CPU% together (utime+stime from /proc over
the window; 100% = one core), cores 0 and 1 busy%, the kernel's softirq time
on them (loopback TCP's receive path, charged to no process), and the process
time other processes took of them (a run they disturbed is measured again, up
to --retries). The medians are
printed as a table; rows are appended to benchmarks/results/workers_compare.jsonl.
The runner prints ``uptime`` before and after. Other benchmarks must not run
at the same time: take ``/work/notes/bench.lock`` around it (``flock``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import echo_compare as ec  # noqa: E402  (the runner's helpers: loadgen, /proc sampling)

DEFAULT_RESULTS = ec.BENCH_DIR / "results" / "workers_compare.jsonl"
ECHO_TARGET = f"{ec.ROOT / 'examples' / 'echo.py'}:echo"
CONNS = 100
SIZE = 64
# A run in which other processes took more than this (% of one core, over the
# two cores) is measured again, up to --retries times, and marked if it stays so.
DISTURBED_PCT = 15.0
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@dataclass(frozen=True)
class Layout:
    """Who runs where: the server's cores, its workers, the generator's cores (None: any)."""

    name: str
    workers: int | None  # None: no --workers, one process
    server_cpus: str
    loadgen_cpus: str | None
    split: bool = False  # pin worker i to core i once it runs

    def describe(self) -> str:
        server = "1 process" if self.workers is None else f"--workers {self.workers}"
        cores = "cores" if "-" in self.server_cpus else "core"
        where = "a core each" if self.split else f"{cores} {self.server_cpus}"
        loadgen = "unpinned" if self.loadgen_cpus is None else f"core {self.loadgen_cpus}"
        return f"{server} on {where}, generator {loadgen}"


LAYOUTS = {
    "single": Layout("single", None, "0", "1"),
    "w1-pinned": Layout("w1-pinned", 1, "0", "1"),
    "w2-gen1": Layout("w2-gen1", 2, "0-1", "1"),
    "w1-shared": Layout("w1-shared", 1, "0-1", None),
    "w2-shared": Layout("w2-shared", 2, "0-1", None),
    "w2-split": Layout("w2-split", 2, "0-1", None, split=True),
}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    workers: list[int]  # worker pids (the process itself without --workers)
    log_path: Path


def core_jiffies(cpus: Sequence[int]) -> dict[int, tuple[int, int, int]]:
    """(tasks, interrupts, total) jiffies per CPU from /proc/stat.

    tasks = user + nice + system: what processes' utime and stime add up to.
    interrupts = irq + softirq: with IRQ time accounting no process is charged
    for it, and over loopback much of TCP's receive path runs there, on the
    sender's core. Splitting them keeps our own softirq out of "others".
    """
    out: dict[int, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, vals[:8])
                tasks, interrupts = user + nice + system, irq + softirq
                out[int(name[3:])] = (tasks, interrupts, tasks + interrupts + idle + iowait + steal)
    return out


def share(before: tuple[int, int, int], after: tuple[int, int, int], field: int) -> float:
    """Percent of one core that ``field`` (0: tasks, 1: interrupts) took between two readings."""
    total = after[2] - before[2]
    return 100.0 * (after[field] - before[field]) / total if total > 0 else 0.0


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextmanager
def running(layout: Layout, startup_timeout: float) -> Iterator[Server]:
    """Start the echo server of ``layout`` on a free port; stop it (SIGTERM, by pid) at the end."""
    ec.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = ec.LOG_DIR / f"workers-{layout.name}.log"
    port = ec.free_port()
    argv = ["taskset", "-c", layout.server_cpus, sys.executable, "-m", "millpond.cli", "serve"]
    argv += [ECHO_TARGET, "--host", ec.HOST, "--port", str(port)]
    if layout.workers is not None:
        argv += ["--workers", str(layout.workers)]
    process = ec.spawn_server(argv, log_path)
    try:
        workers = wait_for_workers(process, layout, log_path, startup_timeout)
        if layout.split:
            for core, pid in enumerate(workers):
                subprocess.run(
                    ["taskset", "-p", "-c", str(core), str(pid)], check=True, capture_output=True
                )
        yield Server(process, port, workers, log_path)
    finally:
        status = ec.stop_process(process, signal.SIGTERM)
        if status != 0:
            ec.log(f"note: {layout.name} server exited with status {status}")


def wait_for_workers(
    process: subprocess.Popen[bytes], layout: Layout, log_path: Path, timeout: float
) -> list[int]:
    ready = "serving " if layout.workers is None else f"all {layout.workers} worker(s) listening"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if ready in text:
            if layout.workers is None:
                return [process.pid]
            newest = {int(slot): int(pid) for slot, pid in STARTED.findall(text)}
            return [newest[slot] for slot in sorted(newest)]
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise ec.BenchError(f"{layout.name}: no {ready!r} in {timeout} s\n{text[-2000:]}")


def measure(layout: Layout, cfg: argparse.Namespace) -> dict[str, Any]:
    with running(layout, cfg.startup_timeout) as server:
        args = ["echo", ec.HOST, str(server.port), str(CONNS), str(SIZE)]
        args += [str(cfg.duration), str(cfg.warmup)]
        prefix = [] if layout.loadgen_cpus is None else ["taskset", "-c", layout.loadgen_cpus]
        process = subprocess.Popen(
            [*prefix, str(cfg.loadgen), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=ec.reset_signals,
        )
        deadline = time.monotonic() + cfg.warmup + cfg.duration + 60

        def sample() -> tuple[float, int, dict[int, tuple[int, int, int]]]:
            ticks = sum(ec.cpu_ticks(pid) for pid in server.workers)
            return time.monotonic(), ticks, core_jiffies((0, 1))

        status, result, first, last = ec.follow_loadgen(process, deadline, sample)
    if status != 0 or result is None or first is None or last is None:
        raise ec.BenchError(f"{layout.name}: loadgen failed with status {status}")
    (t0, ticks0, cores0), (t1, ticks1, cores1) = first, last
    window = t1 - t0
    workers_cpu = round(100.0 * (ticks1 - ticks0) / ec.CLK_TCK / window, 1)
    tasks = [share(cores0[cpu], cores1[cpu], 0) for cpu in (0, 1)]
    interrupts = [share(cores0[cpu], cores1[cpu], 1) for cpu in (0, 1)]
    return {
        "kind": "workers_echo",
        "layout": layout.name,
        "describe": layout.describe(),
        "msgs_per_s": result["msgs_per_s"],
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "errors": result["errors"],
        "loadgen_cpu_pct": result["cpu_pct"],
        "workers_cpu_pct": workers_cpu,
        "core0_busy_pct": round(tasks[0] + interrupts[0], 1),
        "core1_busy_pct": round(tasks[1] + interrupts[1], 1),
        "softirq_pct": round(sum(interrupts), 1),
        # Process time on the two cores that neither the workers nor the
        # generator explain: other processes (a test suite), which disturb
        # the figure.
        "other_pct": round(max(0.0, sum(tasks) - workers_cpu - result["cpu_pct"]), 1),
        "window_s": round(window, 3),
    }


COLUMNS = (
    ("msgs_per_s", "msgs/s", "{:,.0f}"),
    ("p50_us", "p50 us", "{:.0f}"),
    ("p99_us", "p99 us", "{:.0f}"),
    ("loadgen_cpu_pct", "generator CPU%", "{:.0f}"),
    ("workers_cpu_pct", "server CPU%", "{:.0f}"),
    ("core0_busy_pct", "core 0 busy%", "{:.0f}"),
    ("core1_busy_pct", "core 1 busy%", "{:.0f}"),
    ("softirq_pct", "softirq%", "{:.0f}"),
    ("other_pct", "others' CPU%", "{:.0f}"),
)


def table(rows: list[dict[str, Any]], layouts: Sequence[Layout]) -> str:
    lines = [
        "| layout | "
        + " | ".join(title for _key, title, _fmt in COLUMNS)
        + " | runs (disturbed) |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    base = None
    for layout in layouts:
        mine = [row for row in rows if row["layout"] == layout.name]
        if not mine:
            continue
        medians = {key: statistics.median(row[key] for row in mine) for key, _t, _f in COLUMNS}
        base = base or medians["msgs_per_s"]
        cells = [fmt.format(medians[key]) for key, _title, fmt in COLUMNS]
        cells[0] += f" ({medians['msgs_per_s'] / base:.2f}x)"
        lines.append(
            f"| {layout.name}: {layout.describe()} | "
            + " | ".join(cells)
            + f" | {len(mine)} ({sum(1 for row in mine if row.get('disturbed'))}) |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--quiet-wait", type=float, default=5.0)
    parser.add_argument("--time-budget", type=float, default=220.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("SKIPPED: needs two usable CPUs", file=sys.stderr)
        return 0
    loadgen = ec.compile_c(ec.LOADGEN_SRC, ec.LOADGEN_BIN)
    if loadgen is None:
        print("SKIPPED: no C compiler for benchmarks/loadgen.c", file=sys.stderr)
        return 0
    cfg.loadgen = loadgen
    ec.raise_nofile()
    layouts = [LAYOUTS[name] for name in cfg.layouts.split(",")]
    run_id = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = uptime()
    ec.log(f"before: {before}")
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    rounds = 0
    for run in range(1, cfg.runs + 1):
        elapsed = time.monotonic() - started
        if rounds and elapsed + elapsed / rounds > cfg.time_budget:
            ec.log(f"stopping after {rounds} round(s): another would pass --time-budget")
            break
        rounds += 1
        for layout in layouts:
            row = None
            for attempt in range(1 + cfg.retries):
                ec.wait_for_quiet_cores((0, 1), cfg.quiet_wait)
                ec.log(f"run {run}/{cfg.runs}: {layout.name} ({layout.describe()})")
                try:
                    row = measure(layout, cfg)
                except (ec.BenchError, OSError, subprocess.SubprocessError) as exc:
                    ec.log(f"FAILED {layout.name}: {exc}")
                    break
                row["attempt"] = attempt + 1
                if row["other_pct"] <= DISTURBED_PCT:
                    break
                row["disturbed"] = True
                ec.log(f"  disturbed: {row['other_pct']}% of the cores went to other processes")
            if row is None:
                continue
            row.update(run=run, run_id=run_id, commit=ec.git_commit())
            ec.log(
                f"  {row['msgs_per_s']:,.0f} msgs/s, generator {row['loadgen_cpu_pct']}% CPU, "
                f"workers {row['workers_cpu_pct']}%, cores {row['core0_busy_pct']}% "
                f"{row['core1_busy_pct']}%"
            )
            rows.append(row)
    after = uptime()
    ec.log(f"after: {after}")
    report = table(rows, layouts)
    print(f"{CONNS} connections x one {SIZE} B message in flight, medians of {rounds} runs")
    print(f"uptime before: {before}\nuptime after:  {after}\n")
    print(report)
    if not cfg.no_save:
        meta = {
            "kind": "meta",
            "run_id": run_id,
            "env": ec.environment_info(),
            "uptime_before": before,
            "uptime_after": after,
            "argv": sys.argv[1:],
        }
        ec.append_jsonl(cfg.results, [meta, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
