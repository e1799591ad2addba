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

* echo: N connections each keeping one (or, for echo-1m, two) message(s) in flight ->
  msgs/s, latency percentiles, client CPU% (getrusage of the load generator) and server CPU%
  (utime+stime from /proc/PID/stat over the same measurement window); echo-64 uses --conns
  and --size, echo-64-c1 / echo-64-c1000 are 1 / 1000 connections with 64 B messages;
* idle: IDLE connected-but-silent clients -> (VmRSS after - VmRSS before) / IDLE in KiB.

Progress goes to stderr; per-run rows and a summary table go to stdout; every row is also
appended as a JSON line to benchmarks/results/echo_compare.jsonl.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
T = TypeVar("T")  # what follow_loadgen samples at the markers


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


def status_kib(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


def vmrss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


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


@dataclass(frozen=True)
class Scenario:
    """One measurement type with its parameters (see SCENARIO_NAMES)."""

    name: str
    kind: str  # "echo", "idle" or "churn"
    conns: int = 0  # echo connections, idle connections or churn slots
    size: int = 0  # echo message size
    inflight: int = 1  # echo messages in flight per connection

    def describe(self) -> str:
        if self.kind == "echo":
            size = f"{self.size // 1024} KiB" if self.size % 1024 == 0 else f"{self.size} B"
            conns = "1 connection" if self.conns == 1 else f"{self.conns} connections"
            return f"{conns} x {self.inflight} message(s) of {size} in flight"
        if self.kind == "idle":
            return f"{self.conns} connected-but-silent clients; server RSS growth per connection"
        if self.kind == "churn":
            return (
                f"{self.conns} parallel slots, each: connect, one 64 B echo, close, repeat; "
                "msgs/s = connections/s"
            )
        raise ValueError(f"unknown scenario kind {self.kind!r}")


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
    scenarios: list[Scenario] = field(default_factory=list)
    churn_parallel: int = 100
    loadgen_prefix: Sequence[str] = ()  # e.g. ("nice", "-n", "-5") before taskset


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


def spawn_server(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server process from the repository's root, its output to ``log_path``."""
    with open(log_path, "wb") as logf:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C of the runner must not hit it directly
            preexec_fn=reset_signals,
        )


@contextmanager
def running_server(
    cfg: Config, name: str, scenario: str, extra: Sequence[str] = ()
) -> Iterator[RunningServer]:
    """Start `name` (plus `extra` arguments) pinned to the server core on a free port; stop
    it (by pid) on exit."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}-{scenario}.log"
    server: RunningServer | None = None
    for _attempt in range(3):  # the free port may be grabbed by someone else meanwhile
        port = free_port()
        argv = ["taskset", "-c", str(cfg.server_cpu), *cfg.servers[name], *extra]
        argv += ["--host", HOST, "--port", str(port)]
        proc = spawn_server(argv, log_path)
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
            [*cfg.loadgen_prefix, "taskset", "-c", str(cfg.client_cpu), str(cfg.loadgen), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=errf,
            start_new_session=True,
            preexec_fn=reset_signals,
        )


def loadgen_stderr(mode: str) -> str:
    text = read_text(str(LOG_DIR / f"loadgen-{mode}.stderr"))
    return "\n".join("    | " + line for line in text.splitlines()[-20:])


def server_commands(echo_script: Path) -> dict[str, list[str]]:
    """Every server by name (SERVER_NAMES), as the command that starts it (without --host and
    --port); ``echo_script`` is the millpond echo. c-ref's binary is built by the caller."""
    py = sys.executable
    commands = {
        "millpond": [py, str(echo_script), "--poller", "epoll"],
        "millpond-trio": [py, str(echo_script), "--poller", "trio"],
        "millpond-unpooled": [py, str(echo_script), "--poller", "epoll", "--unpooled"],
        "trio": [py, str(TRIO_ECHO)],
        "asyncio-streams": [py, str(ASYNCIO_STREAMS_ECHO)],
        "asyncio-protocol": [py, str(ASYNCIO_PROTOCOL_ECHO)],
        "uvloop-streams": [py, str(ASYNCIO_STREAMS_ECHO), "--uvloop"],
        "uvloop-protocol": [py, str(ASYNCIO_PROTOCOL_ECHO), "--uvloop"],
        "anyio": [py, str(ANYIO_ECHO)],
        "c-ref": [str(ECHO_REF_BIN)],
    }
    assert tuple(commands) == SERVER_NAMES
    return commands


def select_servers(names: str, echo_script: Path) -> dict[str, list[str]] | None:
    """The servers named in the comma-separated ``names`` that can run here, in that order,
    with their commands; skipped ones are logged. None (with a message) for an unknown name
    or when none is left."""
    available = server_commands(echo_script)
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    servers: dict[str, list[str]] = {}
    for name in filter(None, (s.strip() for s in names.split(","))):
        if name not in available:
            print(f"unknown server {name!r}; choose from {', '.join(available)}", file=sys.stderr)
            return None
        if name.startswith("millpond") and not echo_script.exists():
            log(f"SKIPPING {name}: {echo_script} does not exist (yet)")
            continue
        if name.startswith("uvloop") and not has_uvloop:
            log(
                f"SKIPPING {name}: uvloop is not importable by {sys.executable} "
                '(python -m pip install -e ".[bench]")'
            )
            continue
        servers[name] = available[name]
    if not servers:
        print("no servers to benchmark", file=sys.stderr)
        return None
    return servers


def prepare_machine(server_cpu: int, client_cpu: int) -> Path | int:
    """Check for taskset and two distinct usable CPUs, build the load generator; its path,
    or the exit status to stop with (0: skipped, with a message; 2: wrong CPUs)."""
    if shutil.which("taskset") is None:
        print("SKIPPED: taskset not found (util-linux); cannot pin processes", file=sys.stderr)
        return 0
    allowed = os.sched_getaffinity(0)
    if not {server_cpu, client_cpu} <= allowed or server_cpu == client_cpu:
        print(
            f"need two distinct usable CPUs (server {server_cpu}, client {client_cpu}); "
            f"usable: {sorted(allowed)}",
            file=sys.stderr,
        )
        return 2
    loadgen = compile_c(LOADGEN_SRC, LOADGEN_BIN)
    if loadgen is None:
        print("SKIPPED: no C compiler (cc/gcc) to build benchmarks/loadgen.c", file=sys.stderr)
        return 0
    return loadgen


def stop_holding(proc: subprocess.Popen[bytes], reader: LineReader) -> Row | None:
    """Close the stdin of an idle or flood load generator (it stops holding) and return the
    JSON line it prints last (None if it printed none)."""
    assert proc.stdin is not None
    proc.stdin.close()
    result: Row | None = None
    end = time.monotonic() + 30
    while (line := reader.readline(end)) is not None:
        if line.startswith("{"):
            result = json.loads(line)
    proc.wait(timeout=max(1.0, end - time.monotonic()))
    return result


# --------------------------------------------------------------------------- scenarios

SCENARIO_NAMES = (
    "echo-64",
    "echo-64-c1",
    "echo-64-c1000",
    "echo-16k",
    "echo-1m",
    "idle",
    "churn",
)
DEFAULT_SCENARIOS = "echo-64,idle"


def build_scenarios(names: Sequence[str], args: argparse.Namespace) -> list[Scenario]:
    table = {
        "echo-64": Scenario("echo-64", "echo", args.conns, args.size),
        # The connection counts either side of echo-64: one connection measures per-message
        # latency with no queueing; 1000 measures the cost of scheduling many connections.
        "echo-64-c1": Scenario("echo-64-c1", "echo", 1, 64),
        "echo-64-c1000": Scenario("echo-64-c1000", "echo", 1000, 64),
        "echo-16k": Scenario("echo-16k", "echo", 100, 16 * 1024),
        "echo-1m": Scenario("echo-1m", "echo", 10, 1024 * 1024, inflight=2),
        "idle": Scenario("idle", "idle", args.idle),
        "churn": Scenario("churn", "churn", args.churn_parallel),
    }
    return [table[n] for n in names]


def follow_loadgen(
    proc: subprocess.Popen[bytes], deadline: float, sample: Callable[[], T]
) -> tuple[int, Row | None, T | None, T | None]:
    """Read the load generator's output until it exits (stopping it at ``deadline``).

    ``sample()`` is taken at its '# measure start' and '# measure end' lines.
    Returns its exit status, its JSON line (None if it printed none) and the
    two samples (None for a marker it never printed).
    """
    reader = LineReader(proc)
    result: Row | None = None
    first: T | None = None
    last: T | None = None
    try:
        while (line := reader.readline(deadline)) is not None:
            if line == "# measure start":
                first = sample()
            elif line == "# measure end":
                last = sample()
            elif line.startswith("{"):
                result = json.loads(line)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        reader.close()
        if proc.poll() is None:
            stop_process(proc, signal.SIGTERM)
    return rc, result, first, last


def measure_window(cfg: Config, server: RunningServer, args: Sequence[str], timeout: float) -> Row:
    """Run the load generator in a mode that prints '# measure start' / '# measure end' and a
    JSON line (echo, churn); sample the server's CPU time, both cores and the server's RSS at
    the markers. Returns the figures common to echo and churn rows."""
    mode = args[0]
    proc = start_loadgen(cfg, args, subprocess.DEVNULL)
    cores = (cfg.server_cpu, cfg.client_cpu)

    def sample() -> tuple[float, int, dict[int, tuple[int, int]], int, int]:
        rss, hwm = vmrss_kib(server.pid), status_kib(server.pid, "VmHWM")
        return time.monotonic(), cpu_ticks(server.pid), core_times(cores), rss, hwm

    rc, result, first, last = follow_loadgen(proc, time.monotonic() + timeout, sample)
    server.check_alive()
    if rc == 2:
        raise BenchError(f"ECHO MISMATCH against {server.name}\n{loadgen_stderr(mode)}")
    if rc != 0 or result is None or first is None or last is None:
        raise BenchError(f"loadgen {mode} failed (status {rc})\n{loadgen_stderr(mode)}")
    (t0, ticks0, cores0, _rss, _hwm), (t1, ticks1, cores1, rss, hwm) = first, last
    window = t1 - t0
    server_cpu_s = (ticks1 - ticks0) / CLK_TCK
    server_cpu_pct = round(100.0 * server_cpu_s / window, 1) if window > 0 else 0.0
    client_core = core_busy_pct(cores0[cfg.client_cpu], cores1[cfg.client_cpu])
    server_core = core_busy_pct(cores0[cfg.server_cpu], cores1[cfg.server_cpu])
    return {
        "client_cpu_pct": result["cpu_pct"],
        "server_cpu_pct": server_cpu_pct,
        "server_cpu_s": server_cpu_s,
        "client_core_busy_pct": client_core,
        "server_core_busy_pct": server_core,
        # busy time on each core not explained by the process pinned there: other load
        "client_core_other_pct": round(max(0.0, client_core - result["cpu_pct"]), 1),
        "server_core_other_pct": round(max(0.0, server_core - server_cpu_pct), 1),
        "rss_kib": rss,
        "hwm_kib": hwm,
        "window_s": round(window, 3),
        "loadgen": result,
    }


def rates_and_latency(report: dict[str, Any]) -> dict[str, Any]:
    """The throughput and latency fields every echo and churn row copies from the load generator."""
    keys = ("msgs_per_s", "mb_per_s", "p50_us", "p99_us", "p999_us", "max_us")
    return {key: report[key] for key in keys}


def run_echo(cfg: Config, name: str, sc: Scenario) -> Row:
    with running_server(cfg, name, sc.name) as server:
        args = ["echo", HOST, str(server.port), str(sc.conns), str(sc.size)]
        args += [str(cfg.duration), str(cfg.warmup)]
        if sc.inflight != 1:
            args.append(str(sc.inflight))
        w = measure_window(cfg, server, args, cfg.warmup + cfg.duration + 90)
    r = w["loadgen"]
    return {
        "kind": "echo",
        "server": name,
        "conns": sc.conns,
        "size": sc.size,
        "inflight": sc.inflight,
        **rates_and_latency(r),
        "msgs": r["msgs"],
        "errors": r["errors"],
        **w,
    }


def run_churn(cfg: Config, name: str, sc: Scenario) -> Row:
    with running_server(cfg, name, sc.name) as server:
        args = ["churn", HOST, str(server.port), str(sc.conns)]
        args += [str(cfg.duration), str(cfg.warmup)]
        w = measure_window(cfg, server, args, cfg.warmup + cfg.duration + 90)
    r = w["loadgen"]
    return {
        "kind": "churn",
        "server": name,
        "parallel": sc.conns,
        "conns_per_s": r["conns_per_s"],
        **rates_and_latency(r),
        "connections": r["conns"],
        "conn_failures": r["failures"],
        "errors": r["failures"],
        **w,
    }


def run_idle(cfg: Config, name: str, sc: Scenario) -> Row:
    with running_server(cfg, name, sc.name) as server:
        time.sleep(cfg.settle)
        server.check_alive()
        rss0, fds0 = vmrss_kib(server.pid), fd_count(server.pid)
        args = ["idle", HOST, str(server.port), str(sc.conns), "600", str(cfg.idle_rate)]
        proc = start_loadgen(cfg, args, subprocess.PIPE)
        reader = LineReader(proc)
        connect_budget = sc.conns / cfg.idle_rate + 70  # loadgen itself gives up after 60 s
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
            result = stop_holding(proc, reader)
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
        "rss_kib": rss1,
        "kib_per_conn": round((rss1 - rss0) / connected, 3),
        "server_fds_added": fds1 - fds0,
        "closed_by_peer": closed,
        "connect_s": result["connect_s"] if result else None,
    }


RUNNERS = {"echo": run_echo, "idle": run_idle, "churn": run_churn}


# --------------------------------------------------------------------------- reporting

# Per kind: (header, row key, scale, digits); the first column is the headline figure,
# shown as median [min-max] with a ratio against the baseline; the others as medians.
MIB = 1 / 1024
COLUMNS: dict[str, list[tuple[str, str, float, int]]] = {
    "echo": [
        ("msgs/s", "msgs_per_s", 1, 0),
        ("MB/s", "mb_per_s", 1, 1),
        ("p50 µs", "p50_us", 1, 0),
        ("p99 µs", "p99_us", 1, 0),
        ("p99.9 µs", "p999_us", 1, 0),
        ("server CPU%", "server_cpu_pct", 1, 1),
        ("client CPU%", "client_cpu_pct", 1, 1),
        ("RSS MiB", "rss_kib", MIB, 1),
    ],
    "churn": [
        ("conns/s", "conns_per_s", 1, 0),
        ("failed conns", "conn_failures", 1, 0),
        ("p50 µs", "p50_us", 1, 0),
        ("p99 µs", "p99_us", 1, 0),
        ("p99.9 µs", "p999_us", 1, 0),
        ("server CPU%", "server_cpu_pct", 1, 1),
        ("client CPU%", "client_cpu_pct", 1, 1),
        ("RSS MiB", "rss_kib", MIB, 1),
    ],
    "idle": [
        ("KiB/conn", "kib_per_conn", 1, 2),
        ("RSS before MiB", "rss_before_kib", MIB, 1),
        ("RSS after MiB", "rss_after_kib", MIB, 1),
        ("closed by server", "closed_by_peer", 1, 0),
    ],
}
# What the headline figure means, for "vs trio": True if more is better.
MORE_IS_BETTER = {"echo": True, "churn": True, "idle": False}


def fmt(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def print_row(run: int, sc: Scenario, row: Row) -> None:
    header, key, scale, digits = COLUMNS[sc.kind][0]
    figure = fmt(row[key] * scale, digits)
    width = max(map(len, SCENARIO_NAMES))
    text = f"run {run}  {sc.name:<{width}} {row['server']:<17} {figure:>10} {header}"
    if sc.kind in ("echo", "churn"):
        text += (
            f"  p50 {fmt(row['p50_us']):>7} us  p99 {fmt(row['p99_us']):>7} us  "
            f"client {row['client_cpu_pct']:5.1f}% (core {row['client_core_busy_pct']:5.1f}%)  "
            f"server {row['server_cpu_pct']:5.1f}% (core {row['server_core_busy_pct']:5.1f}%)  "
            f"errors {row['errors']}" + ("  DISTURBED" if row.get("disturbed") else "")
        )
    else:
        text += (
            f"  (RSS {row['rss_before_kib']} -> {row['rss_after_kib']} KiB, "
            f"{row['idle_conns']} conns, {row['closed_by_peer']} closed by server)"
        )
    print(text, flush=True)


def med_range(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return (
        f"{fmt(statistics.median(values), digits)} "
        f"[{fmt(min(values), digits)}–{fmt(max(values), digits)}]"
    )


def scenario_rows(rows: list[Row], sc: Scenario, server: str, key: str) -> list[Row]:
    return [
        r
        for r in rows
        if r.get("scenario") == sc.name
        and r["kind"] == sc.kind
        and r["server"] == server
        and r.get(key) is not None
    ]


def scenario_values(rows: list[Row], sc: Scenario, server: str, key: str) -> list[float]:
    return [r[key] for r in scenario_rows(rows, sc, server, key)]


def summarize(
    cfg: Config, rows: list[Row], failures: dict[tuple[str, str], int], interrupted: bool
) -> list[Row]:
    summary: list[Row] = []
    for sc in cfg.scenarios:
        head_key = COLUMNS[sc.kind][0][1]
        for name in cfg.servers:
            s: Row = {
                "kind": "summary",
                "scenario": sc.name,
                "server": name,
                "runs": len(scenario_values(rows, sc, name, head_key)),
                "failures": failures.get((sc.name, name), 0),
                "disturbed_runs": sum(
                    1
                    for r in rows
                    if r.get("scenario") == sc.name and r["server"] == name and r.get("disturbed")
                ),
                "interrupted": interrupted,
            }
            for _header, key, _scale, _digits in COLUMNS[sc.kind]:
                vs = scenario_values(rows, sc, name, key)
                if vs:
                    s[key] = {"median": statistics.median(vs), "min": min(vs), "max": max(vs)}
            ratios = paired_ratios(rows, sc, name, head_key)
            if ratios:
                s[f"{head_key}_vs_{BASELINE}"] = statistics.median(ratios)
                s[f"{head_key}_vs_{BASELINE}_range"] = [min(ratios), max(ratios)]
            summary.append(s)
    return summary


def paired_ratios(rows: list[Row], sc: Scenario, server: str, key: str) -> list[float]:
    """Per round, ``server``'s value over the baseline's: the two ran back to back.

    A ratio within one round cancels the slow drift of a VM's speed that a
    ratio of medians over the whole run keeps.
    """
    base = {r["run"]: r[key] for r in scenario_rows(rows, sc, BASELINE, key)}
    return [
        r[key] / base[r["run"]]
        for r in scenario_rows(rows, sc, server, key)
        if base.get(r["run"], 0) > 0
    ]


def markdown_table(headers: Sequence[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def scenario_markdown(cfg: Config, sc: Scenario, rows: list[Row], summary: list[Row]) -> str:
    cols = COLUMNS[sc.kind]
    head_header, head_key, head_scale, head_digits = cols[0]
    with_ratio = BASELINE in cfg.servers
    headers = ["server", head_header + " (median [min–max])"]
    headers += [f"vs {BASELINE}"] if with_ratio else []
    headers += [c[0] for c in cols[1:]] + ["runs"]
    table: list[list[str]] = []
    for s in (s for s in summary if s["scenario"] == sc.name):
        name = s["server"]
        head = [v * head_scale for v in scenario_values(rows, sc, name, head_key)]
        line = [name, med_range(head, head_digits)]
        if with_ratio:
            ratio = s.get(f"{head_key}_vs_{BASELINE}")
            if ratio is None:
                line.append("-")
            elif name == BASELINE:
                line.append("1.00×")
            else:
                low, high = s[f"{head_key}_vs_{BASELINE}_range"]
                line.append(f"{ratio:.2f}× [{low:.2f}–{high:.2f}]")
        for _header, key, scale, digits in cols[1:]:
            vs = scenario_values(rows, sc, name, key)
            line.append(fmt(statistics.median(vs) * scale, digits) if vs else "-")
        notes = [f"{s['failures']} FAILED"] if s["failures"] else []
        notes += [f"{s['disturbed_runs']} DISTURBED"] if s["disturbed_runs"] else []
        line.append(str(s["runs"]) + (f" ({', '.join(notes)})" if notes else ""))
        table.append(line)
    title = f"### {sc.name}: {sc.describe()}"
    if sc.kind in ("echo", "churn"):
        title += f"; {cfg.duration:g} s window after {cfg.warmup:g} s warmup"
    return title + "\n\n" + markdown_table(headers, table) + "\n"


def warnings_text(rows: list[Row]) -> list[str]:
    out: list[str] = []
    windowed = [r for r in rows if r["kind"] in ("echo", "churn")]
    busy = [r for r in windowed if max(r["client_cpu_pct"], r["client_core_busy_pct"]) > 80]
    if busy:
        where = sorted({f"{r['scenario']} {r['server']}" for r in busy})
        out.append(
            f"WARNING: load generator (or its core) above 80% busy in {len(busy)} run(s) "
            f"({', '.join(where)}): the client may be the bottleneck there."
        )
    disturbed = [r for r in windowed if is_disturbed(r)]
    if disturbed:
        out.append(
            f"WARNING: other processes used the benchmark cores in {len(disturbed)} run(s) "
            "(core busy% well above the pinned process's CPU%); see *_core_other_pct in the "
            "JSON rows and rerun on a quiet machine."
        )
    unsat = [r for r in windowed if r["server_cpu_pct"] < 90]
    if unsat:
        where = sorted({f"{r['scenario']} {r['server']}" for r in unsat})
        out.append(
            f"note: server below 90% CPU in {len(unsat)} run(s) ({', '.join(where)}): it was "
            "not saturated (client-bound, latency-bound, or sharing its core)."
        )
    return out


def report_markdown(
    cfg: Config, meta: Row, rows: list[Row], summary: list[Row], command: str
) -> str:
    env = meta["env"]
    parts = [
        f"## echo_compare run {meta['run_id']}",
        "",
        f"- commit `{meta['commit']}`; command: `{command}`",
        f"- machine: {env['cpu_model']} ({env['ncpu']} CPUs), Linux {env['kernel']}, "
        f"Python {env['python']}, Trio {env['trio']}, AnyIO {env['anyio']}, "
        f"uvloop {env['uvloop']}",
        f"- server pinned to CPU {cfg.server_cpu}, load generator to CPU {cfg.client_cpu}; "
        f"median [min–max] over {cfg.runs} interleaved run(s); `vs {BASELINE}` = median "
        "[min–max] of the per-round ratios (in each round the servers run back to back); "
        "other columns are medians",
        "",
    ]
    for sc in cfg.scenarios:
        parts.append(scenario_markdown(cfg, sc, rows, summary))
    parts += warnings_text(rows)
    return "\n".join(parts).rstrip() + "\n"


def write_charts(cfg: Config, rows: list[Row], out_dir: Path) -> list[Path]:
    """One PNG bar chart per scenario: headline median per server, min-max error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log('matplotlib is not importable: no charts (python -m pip install -e ".[bench]")')
        return []
    written: list[Path] = []
    for sc in cfg.scenarios:
        header, key, scale, _digits = COLUMNS[sc.kind][0]
        names, med, lo, hi = [], [], [], []
        for name in cfg.servers:
            vs = [v * scale for v in scenario_values(rows, sc, name, key)]
            if vs:
                m = statistics.median(vs)
                names.append(name)
                med.append(m)
                lo.append(m - min(vs))
                hi.append(max(vs) - m)
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.2))
        colors = ["#1f77b4" if n.startswith("millpond") else "#999999" for n in names]
        bars = ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=4, color=colors)
        # Hatched: the load generator (or its core) was above 80 % in some run: "at least".
        busy = {
            r["server"]
            for r in rows
            if r.get("scenario") == sc.name
            and r["kind"] in ("echo", "churn")
            and max(r["client_cpu_pct"], r["client_core_busy_pct"]) > 80
        }
        for bar, name in zip(bars, names, strict=True):
            if name in busy:
                bar.set_hatch("//")
        if busy:
            ax.text(
                0.99,
                0.97,
                "hatched: load generator > 80 % busy (client-bound)",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
            )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        better = "higher is better" if MORE_IS_BETTER[sc.kind] else "lower is better"
        ax.set_ylabel(f"{header} ({better})")
        ax.set_title(f"{sc.name}: {sc.describe()}", fontsize=8, wrap=True)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{sc.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def append_jsonl(path: Path, records: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="millpond echo vs peer echo servers: throughput, latency, connection "
        "churn and memory scenarios",
    )
    p.add_argument("--runs", type=int, default=5, help="rounds; servers interleaved per round")
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help="comma-separated, in this order, from: " + ", ".join(SCENARIO_NAMES),
    )
    p.add_argument("--duration", type=float, default=5.0, help="echo/churn window, s")
    p.add_argument("--warmup", type=float, default=1.0, help="echo/churn warmup, s")
    p.add_argument(
        "--conns", type=int, default=100, help="echo-64 connections (the other echo-* are fixed)"
    )
    p.add_argument(
        "--size", type=int, default=64, help="echo-64 message size, bytes (others are fixed)"
    )
    p.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip idle)")
    p.add_argument("--idle-rate", type=int, default=5000, help="idle connects per second")
    p.add_argument("--churn-parallel", type=int, default=100, help="churn: parallel slots")
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
    p.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="JSON lines output; latest.md and the charts go to the same directory",
    )
    p.add_argument("--no-save", action="store_true", help="write no results, table or charts")
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
        help="re-measure an echo/churn run disturbed by other load on the cores up to N times",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/echo_compare.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    echo_script = args.millpond_echo.resolve()
    scenario_names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for sname in scenario_names:
        if sname not in SCENARIO_NAMES:
            print(
                f"unknown scenario {sname!r}; choose from {', '.join(SCENARIO_NAMES)}",
                file=sys.stderr,
            )
            return 2
    if "idle" in scenario_names and args.idle <= 0:
        log("skipping idle: --idle 0")
        scenario_names.remove("idle")
    if not scenario_names:
        print("no scenarios to run", file=sys.stderr)
        return 2
    servers = select_servers(args.servers, echo_script)
    if servers is None:
        return 2
    loadgen = prepare_machine(args.server_cpu, args.client_cpu)
    if isinstance(loadgen, int):
        return loadgen
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
    scenarios = build_scenarios(scenario_names, args)
    most_fds = max(sc.conns for sc in scenarios)
    if most_fds + 64 > nofile:
        log(f"warning: RLIMIT_NOFILE hard limit {nofile} is below {most_fds} connections + slack")

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
        scenarios=scenarios,
        churn_parallel=args.churn_parallel,
    )
    run_id = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {"run_id": run_id, "commit": git_commit()}
    meta: Row = {
        **common,
        "kind": "meta",
        "command": command,
        "config": {
            "runs": cfg.runs,
            "scenarios": [dataclasses.asdict(sc) for sc in scenarios],
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "conns": cfg.conns,
            "size": cfg.size,
            "idle": cfg.idle,
            "idle_rate": cfg.idle_rate,
            "churn_parallel": cfg.churn_parallel,
            "server_cpu": cfg.server_cpu,
            "client_cpu": cfg.client_cpu,
            "quiet_wait_s": cfg.quiet_wait,
            "retries": cfg.retries,
            "servers": dict(servers),
        },
        "env": environment_info(),
        "dirty_files": git_dirty_files(),
    }
    log(
        f"run {run_id}: scenarios {', '.join(scenario_names)}; servers {', '.join(servers)}; "
        f"loadavg {meta['env']['loadavg']}"
    )
    if cfg.results:
        append_jsonl(cfg.results, [meta])

    rows: list[Row] = []
    failures: dict[tuple[str, str], int] = {}
    interrupted = False
    cores = (cfg.server_cpu, cfg.client_cpu)
    total = cfg.runs * len(scenarios) * len(servers)
    done = 0
    started = time.monotonic()
    try:
        for run in range(1, cfg.runs + 1):
            for sc in scenarios:
                for name in servers:
                    eta = ""
                    if done:
                        left = (time.monotonic() - started) / done * (total - done)
                        eta = f", ~{left / 60:.1f} min left"
                    for attempt in range(cfg.retries + 1):
                        log(f"[{done + 1}/{total}{eta}] run {run}/{cfg.runs}: {sc.name} {name} ...")
                        quiet = wait_for_quiet_cores(cores, cfg.quiet_wait)
                        try:
                            row = RUNNERS[sc.kind](cfg, name, sc)
                        except (BenchError, OSError, subprocess.SubprocessError) as exc:
                            key = (sc.name, name)
                            failures[key] = failures.get(key, 0) + 1
                            log(f"FAILED run {run} {sc.name} {name}: {exc}")
                            row = {"kind": f"{sc.kind}_error", "server": name, "error": str(exc)}
                            break
                        row["quiet_wait_s"] = round(quiet, 2)
                        row["attempt"] = attempt + 1
                        if sc.kind not in ("echo", "churn") or not is_disturbed(row):
                            break
                        row["disturbed"] = True
                        log(
                            f"run {run} {sc.name} {name} disturbed by other load on the cores "
                            f"(server core +{row['server_core_other_pct']}%, client core "
                            f"+{row['client_core_other_pct']}%)"
                            + ("; retrying" if attempt < cfg.retries else "; keeping it")
                        )
                    done += 1
                    row = {**common, "run": run, "scenario": sc.name, **row}
                    if row["kind"] == sc.kind:
                        print_row(run, sc, row)
                    rows.append(row)
                    if cfg.results:
                        append_jsonl(cfg.results, [row])
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; summarizing what was measured so far")

    summary = summarize(cfg, rows, failures, interrupted)
    report = report_markdown(cfg, meta, rows, summary, command)
    print()
    print(report)
    if cfg.results:
        append_jsonl(cfg.results, [{**common, **s} for s in summary])
        log(f"appended results to {cfg.results}")
        out_dir = cfg.results.parent
        (out_dir / "latest.md").write_text(report)
        log(f"wrote {out_dir / 'latest.md'}")
        for path in write_charts(cfg, rows, out_dir):
            log(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
