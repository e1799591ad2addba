"""Side-by-side HTTP benchmark: the millpond example against the servers a user would pick instead.

Usage:
    python benchmarks/http_compare.py [--rounds 5] [--duration 10] [--idle 5000]
                                      [--servers millpond-h11,millpond-httptools,...]

Every server answers ``GET /`` with the same "hello" (status 200, content-type,
content-length, date): ``examples/http_server.py`` with each parser, hypercorn's
Trio worker, a bare h11 loop on ``trio.serve_tcp`` and uvicorn on uvloop with
each of its parsers (``benchmarks/servers/``). Two measurements, each on a server
started fresh and pinned to one core (``taskset -c 0``):

* **rps**: ``wrk -t1 -c100 -d{duration}s --latency`` pinned to the other core
  (``taskset -c 1``), after a warm-up run: requests per second, p50 and p99
  latency, wrk's CPU% (its rusage) and the server's (``/proc/PID/stat``) over
  the run, and how busy each core was;
* **idle**: ``--idle`` connections that each make one request, read the
  response and stay open (keep-alive): (VmRSS after - VmRSS before) / connections.

Rounds interleave the servers, and the order rotates from round to round; the
table gives the median and range over rounds, and the per-round ratios of each
millpond server to its uvicorn counterpart. Every server gets a keep-alive
timeout longer than a round. Rows go to ``benchmarks/results/http_compare.jsonl``,
the table to ``benchmarks/results/http_latest.md``. Run it alone on the machine
(the project's convention: ``flock /work/notes/bench.lock python benchmarks/http_compare.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from echo_compare import (
    BenchError,
    RunningServer,
    append_jsonl,
    core_busy_pct,
    core_times,
    cpu_ticks,
    environment_info,
    fmt,
    free_port,
    git_commit,
    git_dirty_files,
    is_disturbed,
    log,
    markdown_table,
    med_range,
    package_version,
    raise_nofile,
    read_text,
    reset_signals,
    spawn_server,
    stop_process,
    vmrss_kib,
    wait_for_quiet_cores,
)

Row = dict[str, Any]

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LOG_DIR = BENCH_DIR / "build" / "logs"
RESULTS = BENCH_DIR / "results" / "http_compare.jsonl"
LATEST = BENCH_DIR / "results" / "http_latest.md"
PY = sys.executable
EXAMPLE = str(ROOT / "examples" / "http_server.py")
SERVERS_DIR = BENCH_DIR / "servers"

SERVERS: dict[str, list[str]] = {
    "millpond-h11": [PY, EXAMPLE, "--parser", "h11", "--poller", "epoll"],
    "millpond-httptools": [PY, EXAMPLE, "--parser", "httptools", "--poller", "epoll"],
    "hypercorn-trio": [PY, str(SERVERS_DIR / "hypercorn_hello.py")],
    "trio-h11": [PY, str(SERVERS_DIR / "trio_h11_hello.py")],
    "uvicorn-h11": [PY, str(SERVERS_DIR / "uvicorn_hello.py"), "--http", "h11"],
    "uvicorn-httptools": [PY, str(SERVERS_DIR / "uvicorn_hello.py"), "--http", "httptools"],
}
# Each millpond server against the server a user would otherwise deploy, same parser.
PAIRS = {"millpond-h11": "uvicorn-h11", "millpond-httptools": "uvicorn-httptools"}

# Longer than any round, so no server closes an idle client during a measurement
# (their defaults are 5 s: uvicorn, hypercorn and the example).
KEEP_ALIVE_SECONDS = "600"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# Connections the idle client has connecting at once: below every server's listen
# backlog (hypercorn's is 100), so no SYN is dropped and retried a second later.
CONNECTS_IN_FLIGHT = 64
STARTUP_TIMEOUT_S = 30.0
LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- servers


@contextmanager
def running_server(name: str, cpu: int, tag: str) -> Iterator[RunningServer]:
    """Start ``name`` pinned to ``cpu`` on a free port, check it says hello; stop it after."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"http-{name}-{tag}.log"
    port = free_port()
    argv = ["taskset", "-c", str(cpu), *SERVERS[name], "--host", HOST, "--port", str(port)]
    argv += ["--keep-alive-timeout", KEEP_ALIVE_SECONDS]
    proc = spawn_server(argv, log_path)
    server = RunningServer(name, proc, port, log_path)
    try:
        listening = f"listening on {HOST}:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while listening not in log_path.read_text(errors="replace"):
            server.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not print {listening!r}\n{server.log_tail()}")
            time.sleep(0.05)
        answer = fetch_once(port)
        if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b"\r\n\r\nhello"):
            raise BenchError(f"{name} answered {answer!r}, not hello")
        yield server
    finally:
        stop_process(proc)


def fetch_once(port: int) -> bytes:
    """One GET / on a connection of its own: the raw response."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(REQUEST)
        answer = b""
        while not answer.endswith(b"hello"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


# --------------------------------------------------------------------------- rps (wrk)


def start_wrk(port: int, cpu: int, seconds: float) -> subprocess.Popen[bytes]:
    """Start ``wrk -t1 -c100 --latency`` against ``port``, pinned to ``cpu``, for ``seconds``."""
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", "-c100", f"-d{seconds:g}s", "--latency"]
    return subprocess.Popen(
        [*argv, f"http://{HOST}:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=reset_signals,
    )


def finish_wrk(proc: subprocess.Popen[bytes], started: float) -> tuple[str, float, float]:
    """Wait for a wrk started at ``started``: its output, its CPU seconds, the wall seconds."""
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")  # a few hundred bytes, at the end
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{output}")
    return output, usage.ru_utime + usage.ru_stime, time.monotonic() - started


def run_wrk(port: int, cpu: int, seconds: float) -> tuple[str, float, float]:
    """wrk for ``seconds``: its output, CPU seconds and wall seconds."""
    started = time.monotonic()
    return finish_wrk(start_wrk(port, cpu, seconds), started)


def parse_wrk(output: str) -> Row:
    """Requests/s, latency percentiles (ms), and the errors wrk counted."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise BenchError(f"no Requests/sec in wrk's output:\n{output}")
    row: Row = {"rps": float(rps.group(1))}
    for percent, value, unit in LATENCY.findall(output):
        row[f"p{percent}_ms"] = float(value) * UNIT_MS[unit]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    row["socket_errors"] = sum(map(int, errors.groups())) if errors else 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    row["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return row


def measure_rps(args: argparse.Namespace, name: str, round_: int) -> Row:
    """One server, fresh: a warm-up run, then the measured run; again (up to ``--retries``
    times) while other processes took a share of either core."""
    for _attempt in range(args.retries):
        row = measure_rps_once(args, name, round_)
        if not is_disturbed(row):
            return row
        log(
            f"round {round_} {name}: disturbed ({row['server_core_other_pct']}% of the server's "
            f"core, {row['client_core_other_pct']}% of wrk's went to others); measuring again"
        )
    row = measure_rps_once(args, name, round_)
    row["disturbed"] = is_disturbed(row)
    return row


def measure_rps_once(args: argparse.Namespace, name: str, round_: int) -> Row:
    """One server, fresh: a warm-up run, then the measured run."""
    with running_server(name, args.server_cpu, "rps") as server:
        run_wrk(server.port, args.client_cpu, args.warmup)
        cpus = [args.server_cpu, args.client_cpu]
        wait_for_quiet_cores(cpus, args.quiet_wait)
        cores_before, ticks_before = core_times(cpus), cpu_ticks(server.pid)
        output, wrk_cpu_s, wall = run_wrk(server.port, args.client_cpu, args.duration)
        cores_after, ticks_after = core_times(cpus), cpu_ticks(server.pid)
        server.check_alive()
    row = parse_wrk(output)
    row.update(
        kind="rps",
        server=name,
        round=round_,
        wrk_cpu_pct=round(100 * wrk_cpu_s / wall, 1),
        server_cpu_pct=round(100 * (ticks_after - ticks_before) / CLK_TCK / wall, 1),
        server_core_busy_pct=core_busy_pct(cores_before[cpus[0]], cores_after[cpus[0]]),
        client_core_busy_pct=core_busy_pct(cores_before[cpus[1]], cores_after[cpus[1]]),
    )
    # Requests per second of the server's own CPU time: what a request costs it, even
    # when it did not have its core to itself.
    row["rps_per_cpu_s"] = round(100 * row["rps"] / max(row["server_cpu_pct"], 1.0))
    # What the pinned processes do not explain: other processes on those cores.
    row["server_core_other_pct"] = round(row["server_core_busy_pct"] - row["server_cpu_pct"], 1)
    row["client_core_other_pct"] = round(row["client_core_busy_pct"] - row["wrk_cpu_pct"], 1)
    return row


# --------------------------------------------------------------------------- idle RSS


def open_kept_alive(port: int, count: int, timeout: float) -> list[socket.socket]:
    """``count`` connections that each sent one request and read its "hello", left open."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    answered: list[socket.socket] = []
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(answered) < count:
            while started < count and len(received) < CONNECTS_IN_FLIGHT:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((HOST, port))
                selector.register(sock, selectors.EVENT_WRITE)
                received[sock] = bytearray()
                started += 1
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(answered)} of {count} clients answered in {timeout} s")
            for key, events in selector.select(timeout=1.0):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sock = ready
                if events & selectors.EVENT_WRITE:
                    if error := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise BenchError(f"connect failed: {os.strerror(error)}")
                    sock.send(REQUEST)  # 37 bytes into an empty send buffer
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(4096)
                if not chunk:
                    raise BenchError("the server closed a client before answering it")
                received[sock] += chunk
                if received[sock].endswith(b"hello"):
                    selector.unregister(sock)
                    del received[sock]
                    answered.append(sock)
    except BaseException:
        for sock in [*answered, *received]:
            sock.close()
        raise
    finally:
        selector.close()
    return answered


def closed_by_server(socks: Sequence[socket.socket]) -> int:
    """How many of ``socks`` the server has closed (they read as end of file)."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        ready = [key.fileobj for key, _ in selector.select(timeout=0)]
        return sum(1 for sock in ready if isinstance(sock, socket.socket) and not sock.recv(1))


def measure_idle(args: argparse.Namespace, name: str, round_: int) -> Row:
    """RSS per idle keep-alive connection, on a fresh server warmed by a few requests."""
    with running_server(name, args.server_cpu, "idle") as server:
        for _ in range(20):
            fetch_once(server.port)
        time.sleep(0.5)
        before = vmrss_kib(server.pid)
        socks = open_kept_alive(server.port, args.idle, timeout=120)
        try:
            time.sleep(1.0)
            after = vmrss_kib(server.pid)
            closed = closed_by_server(socks)
            server.check_alive()
        finally:
            for sock in socks:
                sock.close()
    return {
        "kind": "idle",
        "server": name,
        "round": round_,
        "conns": args.idle,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": (after - before) / args.idle,
        "closed_by_server": closed,
    }


# --------------------------------------------------------------------------- A/B at once


def measure_pair(args: argparse.Namespace, name: str, peer: str, round_: int) -> Row:
    """``name`` and ``peer`` at once on the server core, each with its own wrk on the client
    core: the kernel shares the core between them, so whatever else slows the machine slows
    both alike, and the ratio of their req/s is the ratio of what a request costs each."""
    with (
        running_server(name, args.server_cpu, "ab") as server,
        running_server(peer, args.server_cpu, "ab-peer") as other,
    ):
        for seconds in (args.warmup, args.duration):
            started = time.monotonic()
            procs = [start_wrk(s.port, args.client_cpu, seconds) for s in (server, other)]
            results = [finish_wrk(proc, started) for proc in procs]
        server.check_alive()
        other.check_alive()
    mine, theirs = (parse_wrk(output) for output, _, _ in results)
    return {
        "kind": "ab",
        "server": name,
        "peer": peer,
        "round": round_,
        "rps": mine["rps"],
        "peer_rps": theirs["rps"],
        "ratio": mine["rps"] / theirs["rps"],
        "wrk_cpu_pct": [round(100 * cpu_s / wall, 1) for _, cpu_s, wall in results],
        "errors": [r["socket_errors"] + r["non_2xx"] for r in (mine, theirs)],
    }


# --------------------------------------------------------------------------- report


def pair_values(rows: list[Row], server: str, peer: str, key: str) -> list[float]:
    """``key`` of every A/B row of ``server`` against ``peer``."""
    return [
        r[key] for r in rows if r["kind"] == "ab" and (r["server"], r["peer"]) == (server, peer)
    ]


def values(rows: list[Row], kind: str, server: str, key: str) -> list[float]:
    """``key`` of every ``kind`` row of ``server``."""
    return [r[key] for r in rows if r["kind"] == kind and r["server"] == server and key in r]


def paired_ratios(rows: list[Row], kind: str, server: str, peer: str, key: str) -> list[float]:
    """Per round, ``server``'s ``key`` over ``peer``'s: the two ran in the same round."""
    peers = {r["round"]: r[key] for r in rows if r["kind"] == kind and r["server"] == peer}
    return [
        r[key] / peers[r["round"]]
        for r in rows
        if r["kind"] == kind and r["server"] == server and peers.get(r["round"])
    ]


def report(args: argparse.Namespace, meta: Row, rows: list[Row]) -> str:
    """The markdown table, the ratios, and how the run went."""
    env = meta["env"]
    headers = ["server", "req/s", "p50 ms", "p99 ms", "wrk CPU%", "server CPU%", "req/CPU-s"]
    if args.idle:
        headers += ["KiB per idle conn", "RSS before MiB"]
    table = []
    for name in args.servers:
        line = [
            name,
            med_range(values(rows, "rps", name, "rps")),
            *(
                fmt(statistics.median(v), 2) if (v := values(rows, "rps", name, key)) else "-"
                for key in ("p50_ms", "p99_ms")
            ),
            *(
                fmt(statistics.median(v), 1) if (v := values(rows, "rps", name, key)) else "-"
                for key in ("wrk_cpu_pct", "server_cpu_pct")
            ),
            med_range(values(rows, "rps", name, "rps_per_cpu_s")),
        ]
        if args.idle:
            line.append(med_range(values(rows, "idle", name, "kib_per_conn"), 2))
            before = values(rows, "idle", name, "rss_before_kib")
            line.append(fmt(statistics.median(before) / 1024, 1) if before else "-")
        table.append(line)
    lines = [
        f"## http_compare run {meta['run_id']}",
        "",
        f"- commit `{meta['commit']}`; command: `{meta['command']}`",
        f"- {env['cpu_model']} ({env['ncpu']} CPUs), Linux {env['kernel']}, "
        f"Python {env['python']}; {meta['versions']}",
        f"- server on CPU {args.server_cpu}, wrk (`-t1 -c100 -d{args.duration:g}s --latency`, "
        f"after a {args.warmup:g} s warm-up) on CPU {args.client_cpu}; idle: {args.idle} "
        "connections, one request each, then held",
        f"- median [min–max] over {args.rounds} interleaved rounds; latency and CPU columns "
        "are medians",
        f"- load average (1, 5, 15 min) before: {meta['loadavg_before']}; after: "
        f"{meta['loadavg_after']}",
        "",
        *([markdown_table(headers, table), ""] if args.rps or args.idle else []),
    ]
    ab_rows = [r for r in rows if r["kind"] == "ab"]
    if ab_rows:
        lines += [
            "At once on one core (each with its own wrk; the ratio is what a request costs "
            "the peer over what it costs the server):",
            "",
            markdown_table(
                ["server", "peer", "req/s ratio", "server req/s", "peer req/s"],
                [
                    [
                        server,
                        peer,
                        med_range(pair_values(ab_rows, server, peer, "ratio"), 2),
                        fmt(statistics.median(pair_values(ab_rows, server, peer, "rps"))),
                        fmt(statistics.median(pair_values(ab_rows, server, peer, "peer_rps"))),
                    ]
                    for server, peer in args.pairs
                    if pair_values(ab_rows, server, peer, "ratio")
                ],
            ),
            "",
        ]
    for server, peer in args.pairs:
        if server in args.servers and peer in args.servers:
            rps = paired_ratios(rows, "rps", server, peer, "rps")
            kib = paired_ratios(rows, "idle", server, peer, "kib_per_conn") if args.idle else []
            if rps:
                text = f"- {server} / {peer}: req/s {med_range(rps, 2)}"
                if kib:
                    text += f", KiB per idle connection {med_range(kib, 2)}"
                lines.append(text + " (per-round ratios)")
    lines += [f"- {warning}" for warning in warnings(rows)]
    return "\n".join(lines) + "\n"


def warnings(rows: list[Row]) -> list[str]:
    """What makes a row less trustworthy than the others."""
    found = []
    for r in rows:
        where = f"round {r['round']} {r['server']}"
        if r["kind"] == "rps":
            if r["socket_errors"] or r["non_2xx"]:
                found.append(f"{where}: {r['socket_errors']} socket errors, {r['non_2xx']} non-2xx")
            if r["server_cpu_pct"] < 90:
                found.append(f"{where}: server at {r['server_cpu_pct']}% CPU (not saturated)")
            if r["wrk_cpu_pct"] > 90:
                found.append(f"{where}: wrk at {r['wrk_cpu_pct']}% CPU (wrk-bound?)")
            if r.get("disturbed"):
                found.append(
                    f"{where}: DISTURBED ({r['server_core_other_pct']}% of the server's core, "
                    f"{r['client_core_other_pct']}% of wrk's went to other processes)"
                )
        elif r["kind"] == "ab" and any(r["errors"]):
            found.append(f"{where} vs {r['peer']}: errors {r['errors']}")
        elif r["kind"] == "idle" and r["closed_by_server"]:
            found.append(f"{where}: {r['closed_by_server']} idle connections closed by the server")
    return found


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; servers interleave in each")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each run")
    parser.add_argument(
        "--idle", type=int, default=5000, help="idle keep-alive connections (0: skip)"
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated, of: {', '.join(SERVERS)}"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for wrk")
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds to wait for both cores to be idle"
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="measure again while other processes use the cores"
    )
    parser.add_argument(
        "--kinds",
        default="rps,idle,ab",
        help="what to measure: rps (wrk, one server at a time), idle (RSS per idle "
        "connection), ab (each millpond server at once with its uvicorn counterpart)",
    )
    parser.add_argument(
        "--pairs",
        default=",".join(f"{a}:{b}" for a, b in PAIRS.items()),
        help="comma-separated SERVER:PEER pairs compared at once on one core (ab)",
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="one more server: a command (--host, --port, --keep-alive-timeout appended), "
        "e.g. another checkout of the example; repeatable",
    )
    parser.add_argument("--no-save", action="store_true", help="write no results files")
    args = parser.parse_args(argv)
    kinds = {kind for kind in args.kinds.split(",") if kind}
    if not kinds or kinds - {"rps", "idle", "ab"}:
        parser.error(f"--kinds takes rps, idle and ab, not {args.kinds!r}")
    args.rps, args.ab = "rps" in kinds, "ab" in kinds
    if "idle" not in kinds:
        args.idle = 0
    for added in args.add:
        name, _, command = added.partition("=")
        if not name or not command:
            parser.error(f"--add takes NAME=COMMAND, not {added!r}")
        SERVERS[name] = shlex.split(command)
    args.servers = [name for name in args.servers.split(",") if name]
    args.pairs = [tuple(pair.split(":", 1)) for pair in args.pairs.split(",") if pair]
    if any(len(pair) != 2 for pair in args.pairs):
        parser.error(f"--pairs takes SERVER:PEER,..., not {args.pairs!r}")
    unknown = {name for pair in args.pairs for name in pair} | set(args.servers)
    unknown -= set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


HIDDEN = ("kind", "server", "peer", "round", "run_id")


def round_jobs(args: argparse.Namespace) -> list[tuple[str, Callable[[int], Row]]]:
    """What one round measures, in order (each round starts one further along)."""
    jobs: list[tuple[str, Callable[[int], Row]]] = []
    for name in args.servers:
        if args.rps:
            jobs.append((f"{name} rps", functools.partial(measure_rps, args, name)))
        if args.idle:
            jobs.append((f"{name} idle", functools.partial(measure_idle, args, name)))
    if args.ab:
        for name, peer in args.pairs:
            if name in args.servers and peer in args.servers:
                jobs.append(
                    (f"{name} vs {peer}", functools.partial(measure_pair, args, name, peer))
                )
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds, print the table, save the results."""
    args = parse_args(argv)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"SKIPPED: {tool} is not installed (apt-get install wrk util-linux)")
            return 0
    nofile = raise_nofile()
    if args.idle + 64 > nofile:
        print(f"--idle {args.idle} needs more descriptors than RLIMIT_NOFILE allows ({nofile})")
        return 2
    run_id = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta: Row = {
        "kind": "meta",
        "run_id": run_id,
        "commit": git_commit(),
        "dirty": git_dirty_files(),
        "command": "python benchmarks/http_compare.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "env": environment_info(),
        "versions": ", ".join(
            f"{package} {package_version(package)}"
            for package in ("h11", "httptools", "uvicorn", "uvloop", "hypercorn", "trio")
        ),
        "loadavg_before": " ".join(read_text("/proc/loadavg").split()[:3]),
    }
    log(f"load average before: {meta['loadavg_before']}")
    rows: list[Row] = []
    jobs = round_jobs(args)
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(jobs)
        for label, measure in jobs[shift:] + jobs[:shift]:
            try:
                row = measure(round_)
            except BenchError as exc:
                log(f"round {round_} {label} failed: {exc}")
                continue
            row["run_id"] = run_id
            rows.append(row)
            shown = (f"{key} {value}" for key, value in row.items() if key not in HIDDEN)
            log(f"round {round_} {label}: " + ", ".join(shown))
    meta["loadavg_after"] = " ".join(read_text("/proc/loadavg").split()[:3])
    log(f"load average after: {meta['loadavg_after']}")
    text = report(args, meta, rows)
    print(text)
    if not args.no_save:
        append_jsonl(RESULTS, [meta, *rows])
        LATEST.write_text(text)
        log(f"wrote {RESULTS.relative_to(ROOT)} and {LATEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
