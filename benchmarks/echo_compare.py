"""Side-by-side echo benchmark: millpond's examples/echo.py vs the echo servers a Python user
would write instead (``trio.serve_tcp``, asyncio streams and protocols, uvloop, AnyIO) and a
C reference server.

Usage:
    python benchmarks/echo_compare.py [--runs 5] [--duration 5] [--conns 100] [--idle 5000]
                                      [--servers millpond,millpond-trio,trio]

Servers (``--servers``): millpond, millpond-trio, millpond-unpooled, trio, asyncio-streams,
asyncio-protocol, uvloop-streams, uvloop-protocol, anyio, c-ref (see benchmarks/README.md).

For every run, each server is started fresh (pinned with ``taskset -c 0``) and measured with
the C load generator (pinned with ``taskset -c 1``), servers interleaved A B C A B C ...:

* echo: CONNS connections each keeping one SIZE-byte message in flight -> msgs/s, latency
  percentiles, client CPU% (getrusage of the load generator) and server CPU% (utime+stime
  from /proc/PID/stat over the same measurement window);
* idle: IDLE connected-but-silent clients -> (VmRSS after - VmRSS before) / IDLE in KiB.

Progress goes to stderr; per-run rows and a summary table go to stdout; every row is also
appended as a JSON line to benchmarks/results/echo_compare.jsonl.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
LOG_DIR = BUILD_DIR / "logs"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BUILD_DIR / "loadgen"
DEFAULT_RESULTS = BENCH_DIR / "results" / "echo_compare.jsonl"
DEFAULT_MILLPOND_ECHO = ROOT / "examples" / "echo.py"
SERVERS_DIR = BENCH_DIR / "servers"
TRIO_ECHO = SERVERS_DIR / "trio_echo.py"
ASYNCIO_STREAMS_ECHO = SERVERS_DIR / "asyncio_streams_echo.py"
ASYNCIO_PROTOCOL_ECHO = SERVERS_DIR / "asyncio_protocol_echo.py"
ANYIO_ECHO = SERVERS_DIR / "anyio_echo.py"
ECHO_REF_SRC = SERVERS_DIR / "echo_ref.c"
ECHO_REF_BIN = BUILD_DIR / "echo_ref"
SERVER_NAMES = (
    "millpond",
    "millpond-trio",
    "millpond-unpooled",
    "trio",
    "asyncio-streams",
    "asyncio-protocol",
    "uvloop-streams",
    "uvloop-protocol",
    "anyio",
    "c-ref",
)
DEFAULT_SERVERS = "millpond,millpond-trio,trio"
BASELINE = "trio"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 5.0

Row = dict[str, Any]


class BenchError(Exception):
    """A single measurement failed; the run continues with the next one."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def compile_c(src: Path, out: Path) -> Path | None:
    """Build `src` into `out` with the system compiler unless `out` is up to date; None if
    there is no compiler. A failed build raises CalledProcessError."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(out), str(src)]
    log("compiling: " + " ".join(cmd))
    subprocess.run(cmd, check=True, timeout=120)
    return out


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; children (servers, loadgen) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty_files() -> list[str]:
    """Uncommitted changes: the measured code may differ from `commit`."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line[3:] for line in out.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return []


def environment_info() -> Row:
    cpu_model = ""
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    try:
        import trio

        trio_version = trio.__version__
    except ImportError:
        trio_version = "missing"
    return {
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "ncpu": os.cpu_count(),
        "python": platform.python_version(),
        "trio": trio_version,
        "anyio": package_version("anyio"),
        "uvloop": package_version("uvloop"),
        "loadavg": read_text("/proc/loadavg"),
        "somaxconn": read_text("/proc/sys/net/core/somaxconn"),
        "ip_local_port_range": read_text("/proc/sys/net/ipv4/ip_local_port_range"),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


# --------------------------------------------------------------------------- /proc sampling


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def core_times(cpus: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat; busy = user+nice+system+irq+softirq."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            cpu = int(name[3:])
            if cpu in cpus:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, vals[:8])
                busy = user + nice + system + irq + softirq
                out[cpu] = (busy, busy + idle + iowait + steal)
    return out


def core_busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return round(100.0 * (after[0] - before[0]) / total, 1) if total > 0 else 0.0


def wait_for_quiet_cores(cpus: Sequence[int], max_wait: float, limit: float = 15.0) -> float:
    """Wait (up to max_wait s) until every CPU in `cpus` is below `limit` % busy over a
    0.25 s sample, so a measurement doesn't start while e.g. a test suite runs there.
    Returns the seconds waited (max_wait if the cores never went quiet)."""
    start = time.monotonic()
    warned = False
    while True:
        before = core_times(cpus)
        time.sleep(0.25)
        after = core_times(cpus)
        busy = {c: core_busy_pct(before[c], after[c]) for c in cpus}
        waited = time.monotonic() - start
        if all(b < limit for b in busy.values()):
            if warned:
                log(f"cores quiet after {waited:.1f} s")
            return waited
        if waited >= max_wait:
            log(f"cores still busy after {max_wait:g} s ({busy}); measuring anyway")
            return waited
        if not warned:
            log(f"waiting for quiet cores: busy% {busy}")
            warned = True


def is_disturbed(row: Row) -> bool:
    """Other processes used the benchmark cores during an echo window."""
    return bool(row["server_core_other_pct"] > 5 or row["client_core_other_pct"] > 20)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- processes


class LineReader:
    """Read complete lines from a subprocess pipe with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.eof = False

    def readline(self, deadline: float) -> str | None:
        """Next line (without newline), or None at EOF; BenchError on timeout."""
        while b"\n" not in self.buf:
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("timed out waiting for load generator output")
            if self.sel.select(timeout=left):
                chunk = os.read(self.fd, 65536)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def close(self) -> None:
        self.sel.close()


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGINT) -> int:
    """Stop one process we started, by its pid: `sig`, then SIGKILL after a timeout."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored signal {sig} for {STOP_TIMEOUT_S}s; sending SIGKILL")
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class RunningServer:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    | " + line for line in lines[-n:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            kept = self.log_path.with_name(
                f"crashed-{time.strftime('%Y%m%dT%H%M%S')}-{self.log_path.name}"
            )
            shutil.copyfile(self.log_path, kept)
            raise BenchError(
                f"(log kept in {kept.relative_to(ROOT)}) "
                f"server {self.name} exited with status {self.proc.returncode}\n" + self.log_tail()
            )


@dataclass
class Config:
    servers: dict[str, list[str]]  # name -> command (without --host/--port)
    loadgen: Path
    runs: int
    duration: float
    warmup: float
    conns: int
    size: int
    idle: int
    idle_rate: int
    server_cpu: int
    client_cpu: int
    startup_timeout: float
    settle: float
    results: Path | None
    quiet_wait: float = 30.0
    retries: int = 2


def reset_signals() -> None:
    """In the child before exec: undo an inherited SIG_IGN (e.g. when the runner itself was
    started as a background job of a non-interactive shell), so SIGINT/SIGTERM stop it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running_server(cfg: Config, name: str, scenario: str) -> Iterator[RunningServer]:
    """Start `name` pinned to the server core on a free port; stop it (by pid) on exit."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}-{scenario}.log"
    server: RunningServer | None = None
    for _attempt in range(3):  # the free port may be grabbed by someone else meanwhile
        port = free_port()
        argv = ["taskset", "-c", str(cfg.server_cpu), *cfg.servers[name]]
        argv += ["--host", HOST, "--port", str(port)]
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=server_env(),
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C of the runner must not hit it directly
                preexec_fn=reset_signals,
            )
        server = RunningServer(name, proc, port, log_path)
        if wait_listening(cfg, server):
            break
        stop_process(proc)
        if "Address already in use" not in log_path.read_text(errors="replace"):
            raise BenchError(f"server {name} did not start\n{server.log_tail()}")
        server = None
    if server is None:
        raise BenchError(f"server {name} could not bind a port after 3 attempts")
    try:
        yield server
    finally:
        rc = stop_process(server.proc)
        if rc not in (0, -signal.SIGINT):
            log(f"note: server {name} exited with status {rc} after SIGINT")


def wait_listening(cfg: Config, server: RunningServer) -> bool:
    pattern = re.compile(rf"listening on {re.escape(HOST)}:{server.port}\b")
    deadline = time.monotonic() + cfg.startup_timeout
    while time.monotonic() < deadline:
        if pattern.search(server.log_path.read_text(errors="replace")):
            return True
        if server.proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise BenchError(
        f"server {server.name} printed no 'listening on {HOST}:{server.port}' within "
        f"{cfg.startup_timeout}s\n{server.log_tail()}"
    )


def start_loadgen(cfg: Config, args: Sequence[str], stdin: int) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"loadgen-{args[0]}.stderr", "wb") as errf:
        return subprocess.Popen(
            ["taskset", "-c", str(cfg.client_cpu), str(cfg.loadgen), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=errf,
            start_new_session=True,
            preexec_fn=reset_signals,
        )


def loadgen_stderr(mode: str) -> str:
    text = read_text(str(LOG_DIR / f"loadgen-{mode}.stderr"))
    return "\n".join("    | " + line for line in text.splitlines()[-20:])


# --------------------------------------------------------------------------- scenarios


def run_echo(cfg: Config, name: str) -> Row:
    with running_server(cfg, name, "echo") as server:
        args = ["echo", HOST, str(server.port), str(cfg.conns), str(cfg.size)]
        args += [str(cfg.duration), str(cfg.warmup)]
        proc = start_loadgen(cfg, args, subprocess.DEVNULL)
        reader = LineReader(proc)
        deadline = time.monotonic() + cfg.warmup + cfg.duration + 60
        t0 = t1 = 0.0
        ticks0 = ticks1 = 0
        cores = (cfg.server_cpu, cfg.client_cpu)
        cores0 = cores1 = {c: (0, 0) for c in cores}
        result: Row | None = None
        try:
            while (line := reader.readline(deadline)) is not None:
                if line == "# measure start":
                    t0, ticks0 = time.monotonic(), cpu_ticks(server.pid)
                    cores0 = core_times(cores)
                elif line == "# measure end":
                    t1, ticks1 = time.monotonic(), cpu_ticks(server.pid)
                    cores1 = core_times(cores)
                elif line.startswith("{"):
                    result = json.loads(line)
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            reader.close()
            if proc.poll() is None:
                stop_process(proc, signal.SIGTERM)
        server.check_alive()
        if rc == 2:
            raise BenchError(f"ECHO MISMATCH against {name}\n{loadgen_stderr('echo')}")
        if rc != 0 or result is None or not t0 or not t1:
            raise BenchError(f"loadgen echo failed (status {rc})\n{loadgen_stderr('echo')}")
    window = t1 - t0
    server_cpu_s = (ticks1 - ticks0) / CLK_TCK
    server_cpu_pct = round(100.0 * server_cpu_s / window, 1) if window > 0 else 0.0
    client_core = core_busy_pct(cores0[cfg.client_cpu], cores1[cfg.client_cpu])
    server_core = core_busy_pct(cores0[cfg.server_cpu], cores1[cfg.server_cpu])
    return {
        "kind": "echo",
        "server": name,
        "msgs_per_s": result["msgs_per_s"],
        "mb_per_s": result["mb_per_s"],
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "p999_us": result["p999_us"],
        "max_us": result["max_us"],
        "msgs": result["msgs"],
        "errors": result["errors"],
        "client_cpu_pct": result["cpu_pct"],
        "server_cpu_pct": server_cpu_pct,
        "server_cpu_s": server_cpu_s,
        "client_core_busy_pct": client_core,
        "server_core_busy_pct": server_core,
        # busy time on each core not explained by the process pinned there: other load
        "client_core_other_pct": round(max(0.0, client_core - result["cpu_pct"]), 1),
        "server_core_other_pct": round(max(0.0, server_core - server_cpu_pct), 1),
        "window_s": round(window, 3),
        "loadgen": result,
    }


def run_idle(cfg: Config, name: str) -> Row:
    with running_server(cfg, name, "idle") as server:
        time.sleep(cfg.settle)
        server.check_alive()
        rss0, fds0 = vmrss_kib(server.pid), fd_count(server.pid)
        args = ["idle", HOST, str(server.port), str(cfg.idle), "600", str(cfg.idle_rate)]
        proc = start_loadgen(cfg, args, subprocess.PIPE)
        reader = LineReader(proc)
        connect_budget = cfg.idle / cfg.idle_rate + 70  # loadgen itself gives up after 60 s
        result: Row | None = None
        try:
            line = reader.readline(time.monotonic() + connect_budget)
            if line is None or not line.startswith("connected "):
                raise BenchError(f"loadgen idle: {line!r}\n{loadgen_stderr('idle')}")
            connected = int(line.split()[1])
            # The client's connect() completes before the server accept()s; wait until the
            # server really holds the sockets, then let it settle.
            accept_deadline = time.monotonic() + 30
            while fd_count(server.pid) < fds0 + connected:
                server.check_alive()
                if time.monotonic() > accept_deadline:
                    raise BenchError(
                        f"server {name} holds only {fd_count(server.pid) - fds0}/{connected} "
                        "extra fds 30 s after the clients connected"
                    )
                time.sleep(0.05)
            time.sleep(1.0)
            server.check_alive()
            rss1, fds1 = vmrss_kib(server.pid), fd_count(server.pid)
            assert proc.stdin is not None
            proc.stdin.close()  # tells loadgen to stop holding
            end = time.monotonic() + 30
            while (line := reader.readline(end)) is not None:
                if line.startswith("{"):
                    result = json.loads(line)
            proc.wait(timeout=max(1.0, end - time.monotonic()))
        finally:
            reader.close()
            if proc.poll() is None:
                stop_process(proc, signal.SIGTERM)
    closed = result["closed_by_peer"] if result else None
    return {
        "kind": "idle",
        "server": name,
        "idle_conns": connected,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_conn": round((rss1 - rss0) / connected, 3),
        "server_fds_added": fds1 - fds0,
        "closed_by_peer": closed,
        "connect_s": result["connect_s"] if result else None,
    }


# --------------------------------------------------------------------------- reporting


def fmt(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def print_echo_row(run: int, row: Row) -> None:
    print(
        f"run {run}  echo  {row['server']:<14} {fmt(row['msgs_per_s']):>9} msg/s  "
        f"p50 {fmt(row['p50_us']):>6} us  p99 {fmt(row['p99_us']):>6} us  "
        f"client {row['client_cpu_pct']:5.1f}% (core {row['client_core_busy_pct']:5.1f}%)  "
        f"server {row['server_cpu_pct']:5.1f}% (core {row['server_core_busy_pct']:5.1f}%)  "
        f"errors {row['errors']}" + ("  DISTURBED" if row.get("disturbed") else ""),
        flush=True,
    )


def print_idle_row(run: int, row: Row) -> None:
    print(
        f"run {run}  idle  {row['server']:<14} {row['kib_per_conn']:7.2f} KiB/conn  "
        f"(RSS {row['rss_before_kib']} -> {row['rss_after_kib']} KiB, "
        f"{row['idle_conns']} conns, {row['closed_by_peer']} closed by server)",
        flush=True,
    )


def med_range(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return (
        f"{fmt(statistics.median(values), digits)} "
        f"[{fmt(min(values), digits)}-{fmt(max(values), digits)}]"
    )


def summarize(
    cfg: Config, rows: list[Row], failures: dict[str, int], interrupted: bool
) -> list[Row]:
    def values(kind: str, server: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["kind"] == kind and r["server"] == server]

    base_mps = values("echo", BASELINE, "msgs_per_s")
    base_kib = values("idle", BASELINE, "kib_per_conn")
    summary: list[Row] = []
    for name in cfg.servers:
        mps = values("echo", name, "msgs_per_s")
        kib = values("idle", name, "kib_per_conn")
        s: Row = {
            "kind": "summary",
            "server": name,
            "echo_runs": len(mps),
            "idle_runs": len(kib),
            "failures": failures.get(name, 0),
            "disturbed_runs": sum(
                1 for r in rows if r["server"] == name and r.get("disturbed", False)
            ),
            "interrupted": interrupted,
        }
        for key in ("msgs_per_s", "p50_us", "p99_us", "client_cpu_pct", "server_cpu_pct"):
            vs = values("echo", name, key)
            if vs:
                s[key] = {"median": statistics.median(vs), "min": min(vs), "max": max(vs)}
        if kib:
            s["kib_per_conn"] = {
                "median": statistics.median(kib),
                "min": min(kib),
                "max": max(kib),
            }
        if mps and base_mps:
            s["msgs_per_s_vs_trio"] = statistics.median(mps) / statistics.median(base_mps)
        if kib and base_kib and statistics.median(base_kib) > 0:
            s["kib_per_conn_vs_trio"] = statistics.median(kib) / statistics.median(base_kib)
        summary.append(s)
    return summary


def print_table(headers: Sequence[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in table:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print()


def print_summary(cfg: Config, rows: list[Row], summary: list[Row]) -> None:
    def values(kind: str, server: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["kind"] == kind and r["server"] == server]

    def ratio(s: Row, key: str) -> str:
        return f"{s[key]:.2f}x" if key in s else "-"

    def failed(s: Row) -> str:
        notes = [f"{s['failures']} FAILED"] if s["failures"] else []
        notes += [f"{s['disturbed_runs']} DISTURBED"] if s["disturbed_runs"] else []
        return f" ({', '.join(notes)})" if notes else ""

    print()
    print(
        f"Summary of {cfg.runs} run(s): median [min-max] over runs; 'vs trio' = ratio of medians."
    )
    print(
        f"Echo: {cfg.conns} connections x 1 message of {cfg.size} B in flight, "
        f"{cfg.duration:g} s window after {cfg.warmup:g} s warmup; "
        f"server on CPU {cfg.server_cpu}, load generator on CPU {cfg.client_cpu}."
    )
    print()
    print_table(
        ["server", "msgs/s", "vs trio", "p50 us", "p99 us", "runs"],
        [
            [
                s["server"],
                med_range(values("echo", s["server"], "msgs_per_s")),
                ratio(s, "msgs_per_s_vs_trio"),
                med_range(values("echo", s["server"], "p50_us")),
                med_range(values("echo", s["server"], "p99_us")),
                str(s["echo_runs"]) + failed(s),
            ]
            for s in summary
        ],
    )
    print("CPU during the echo window (process = utime+stime / wall; core = /proc/stat busy):")
    print_table(
        ["server", "client CPU%", "client core%", "server CPU%", "server core%"],
        [
            [
                s["server"],
                med_range(values("echo", s["server"], "client_cpu_pct"), 1),
                med_range(values("echo", s["server"], "client_core_busy_pct"), 1),
                med_range(values("echo", s["server"], "server_cpu_pct"), 1),
                med_range(values("echo", s["server"], "server_core_busy_pct"), 1),
            ]
            for s in summary
        ],
    )
    if cfg.idle > 0:
        print(f"Idle: server VmRSS growth per connection with {cfg.idle} idle connections:")
        print_table(
            ["server", "KiB/idle conn", "vs trio", "RSS before KiB", "RSS after KiB", "runs"],
            [
                [
                    s["server"],
                    med_range(values("idle", s["server"], "kib_per_conn"), 2),
                    ratio(s, "kib_per_conn_vs_trio"),
                    med_range(values("idle", s["server"], "rss_before_kib")),
                    med_range(values("idle", s["server"], "rss_after_kib")),
                    str(s["idle_runs"]),
                ]
                for s in summary
            ],
        )
    echo_rows = [r for r in rows if r["kind"] == "echo"]
    busy_clients = [
        r for r in echo_rows if max(r["client_cpu_pct"], r["client_core_busy_pct"]) > 80
    ]
    idle_servers = [r for r in echo_rows if r["server_cpu_pct"] < 90]
    if busy_clients:
        print(
            f"WARNING: load generator (or its core) above 80% busy in {len(busy_clients)} echo "
            "run(s): the client may be the bottleneck there."
        )
    disturbed = [r for r in echo_rows if is_disturbed(r)]
    if disturbed:
        print(
            f"WARNING: other processes used the benchmark cores in {len(disturbed)} echo run(s) "
            "(core busy% well above the pinned process's CPU%); see *_core_other_pct in the "
            "JSON rows and rerun on a quiet machine."
        )
    if idle_servers:
        print(
            f"note: server below 90% CPU in {len(idle_servers)} echo run(s): it was not "
            "saturated (client-bound, latency-bound, or sharing its core)."
        )


def append_jsonl(path: Path, records: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="millpond echo vs peer echo servers: msgs/s and RSS per idle connection",
    )
    p.add_argument("--runs", type=int, default=5, help="rounds; servers interleaved per round")
    p.add_argument("--duration", type=float, default=5.0, help="echo measurement window, s")
    p.add_argument("--warmup", type=float, default=1.0, help="echo warmup before the window, s")
    p.add_argument("--conns", type=int, default=100, help="echo connections")
    p.add_argument("--size", type=int, default=64, help="echo message size, bytes")
    p.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip)")
    p.add_argument("--idle-rate", type=int, default=5000, help="idle connects per second")
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help="comma-separated, in this order, from: " + ", ".join(SERVER_NAMES),
    )
    p.add_argument(
        "--millpond-echo",
        type=Path,
        default=DEFAULT_MILLPOND_ECHO,
        help="millpond echo script (default: examples/echo.py)",
    )
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--startup-timeout", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=0.5, help="idle: wait before RSS baseline")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON lines output")
    p.add_argument("--no-save", action="store_true", help="don't append to the results file")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="max seconds to wait for both cores to be idle before each measurement",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-measure an echo run disturbed by other load on the cores up to N times",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    echo_script = args.millpond_echo.resolve()
    py = sys.executable
    available = {
        "millpond": [py, str(echo_script), "--poller", "epoll"],
        "millpond-trio": [py, str(echo_script), "--poller", "trio"],
        "millpond-unpooled": [py, str(echo_script), "--poller", "epoll", "--unpooled"],
        "trio": [py, str(TRIO_ECHO)],
        "asyncio-streams": [py, str(ASYNCIO_STREAMS_ECHO)],
        "asyncio-protocol": [py, str(ASYNCIO_PROTOCOL_ECHO)],
        "uvloop-streams": [py, str(ASYNCIO_STREAMS_ECHO), "--uvloop"],
        "uvloop-protocol": [py, str(ASYNCIO_PROTOCOL_ECHO), "--uvloop"],
        "anyio": [py, str(ANYIO_ECHO)],
        "c-ref": [str(ECHO_REF_BIN)],  # built below, once we know there is a compiler
    }
    assert tuple(available) == SERVER_NAMES
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    servers: dict[str, list[str]] = {}
    for name in filter(None, (s.strip() for s in args.servers.split(","))):
        if name not in available:
            print(f"unknown server {name!r}; choose from {', '.join(available)}", file=sys.stderr)
            return 2
        if name.startswith("millpond") and not echo_script.exists():
            log(f"SKIPPING {name}: {echo_script} does not exist (yet)")
            continue
        if name.startswith("uvloop") and not has_uvloop:
            log(
                f"SKIPPING {name}: uvloop is not importable by {py} "
                '(python -m pip install -e ".[bench]")'
            )
            continue
        servers[name] = available[name]
    if not servers:
        print("no servers to benchmark", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None:
        print("SKIPPED: taskset not found (util-linux); cannot pin processes", file=sys.stderr)
        return 0
    allowed = os.sched_getaffinity(0)
    if not {args.server_cpu, args.client_cpu} <= allowed or args.server_cpu == args.client_cpu:
        print(
            f"need two distinct usable CPUs (server {args.server_cpu}, client "
            f"{args.client_cpu}); usable: {sorted(allowed)}",
            file=sys.stderr,
        )
        return 2

    loadgen = compile_c(LOADGEN_SRC, LOADGEN_BIN)
    if loadgen is None:
        print("SKIPPED: no C compiler (cc/gcc) to build benchmarks/loadgen.c", file=sys.stderr)
        return 0
    if "c-ref" in servers:
        try:
            built = compile_c(ECHO_REF_SRC, ECHO_REF_BIN)
        except subprocess.SubprocessError as exc:
            built = None
            log(f"SKIPPING c-ref: building {ECHO_REF_SRC.relative_to(ROOT)} failed: {exc}")
        else:
            if built is None:
                log("SKIPPING c-ref: no C compiler (cc/gcc) to build echo_ref.c")
        if built is None:
            del servers["c-ref"]
            if not servers:
                print("no servers to benchmark", file=sys.stderr)
                return 2
    nofile = raise_nofile()
    if args.idle + 64 > nofile:
        log(f"warning: RLIMIT_NOFILE hard limit {nofile} is below --idle {args.idle} + slack")

    cfg = Config(
        servers=servers,
        loadgen=loadgen,
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        conns=args.conns,
        size=args.size,
        idle=args.idle,
        idle_rate=args.idle_rate,
        server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
        startup_timeout=args.startup_timeout,
        settle=args.settle,
        results=None if args.no_save else args.results,
        quiet_wait=args.quiet_wait,
        retries=args.retries,
    )
    run_id = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {"run_id": run_id, "commit": git_commit()}
    meta: Row = {
        **common,
        "kind": "meta",
        "config": {
            "runs": cfg.runs,
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "conns": cfg.conns,
            "size": cfg.size,
            "idle": cfg.idle,
            "idle_rate": cfg.idle_rate,
            "server_cpu": cfg.server_cpu,
            "client_cpu": cfg.client_cpu,
            "quiet_wait_s": cfg.quiet_wait,
            "retries": cfg.retries,
            "servers": dict(servers),
        },
        "env": environment_info(),
        "dirty_files": git_dirty_files(),
    }
    log(f"run {run_id}: servers {', '.join(servers)}; loadavg {meta['env']['loadavg']}")
    if cfg.results:
        append_jsonl(cfg.results, [meta])

    rows: list[Row] = []
    failures: dict[str, int] = {}
    interrupted = False
    cores = (cfg.server_cpu, cfg.client_cpu)
    scenarios = [("echo", run_echo)] + ([("idle", run_idle)] if cfg.idle > 0 else [])
    try:
        for run in range(1, cfg.runs + 1):
            for scenario, func in scenarios:
                for name in servers:
                    for attempt in range(cfg.retries + 1):
                        log(f"run {run}/{cfg.runs}: {scenario} {name} ...")
                        quiet = wait_for_quiet_cores(cores, cfg.quiet_wait)
                        try:
                            row = func(cfg, name)
                        except (BenchError, OSError, subprocess.SubprocessError) as exc:
                            failures[name] = failures.get(name, 0) + 1
                            log(f"FAILED run {run} {scenario} {name}: {exc}")
                            row = {"kind": f"{scenario}_error", "server": name, "error": str(exc)}
                            break
                        row["quiet_wait_s"] = round(quiet, 2)
                        row["attempt"] = attempt + 1
                        if scenario != "echo" or not is_disturbed(row):
                            break
                        row["disturbed"] = True
                        log(
                            f"run {run} echo {name} disturbed by other load on the cores "
                            f"(server core +{row['server_core_other_pct']}%, client core "
                            f"+{row['client_core_other_pct']}%)"
                            + ("; retrying" if attempt < cfg.retries else "; keeping it")
                        )
                    row = {**common, "run": run, **row}
                    if row["kind"] == "echo":
                        print_echo_row(run, row)
                    elif row["kind"] == "idle":
                        print_idle_row(run, row)
                    rows.append(row)
                    if cfg.results:
                        append_jsonl(cfg.results, [row])
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; summarizing what was measured so far")

    summary = summarize(cfg, rows, failures, interrupted)
    print_summary(cfg, rows, summary)
    if cfg.results:
        append_jsonl(cfg.results, [{**common, **s} for s in summary])
        log(f"appended results to {cfg.results}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
