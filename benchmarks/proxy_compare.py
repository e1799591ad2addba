"""Side-by-side TCP proxy benchmark: examples/proxy.py vs HAProxy and a uvloop ``Protocol`` proxy.

Usage:
    flock /work/notes/bench.lock python benchmarks/proxy_compare.py [--rounds 5]
        [--duration 4] [--proxies millpond,millpond-no-splice,haproxy,haproxy-splice,uvloop]
        [--scenarios bulk,echo-64] [--proxies millpond,millpond-b --b-proxy OTHER/proxy.py]

Every proxy forwards to the same backend, the C echo server (benchmarks/servers/echo_ref.c),
and is driven by the same C load generator (benchmarks/loadgen.c), both pinned to one core
(``--client-cpu``, 1) while the proxy has the other (``--proxy-cpu``, 0) to itself:

* bulk: ``--bulk-conns`` (4) connections, each keeping ``--bulk-inflight`` (4) messages of
  1 MiB in flight through the proxy to the echo server and back, every byte compared by the
  load generator. Each message crosses the proxy twice (up, and back down), so the proxy
  moves 2 MiB per echoed message: GiB/s below counts both directions.
* echo-64: 100 connections each keeping one 64-byte message in flight (ping-pong): msgs/s
  and latency through the proxy.

For each measurement the proxy is started fresh (pinned with ``taskset``); its CPU time
(utime + stime from /proc/PID/stat) is read at the load generator's window markers, which
gives the proxy's CPU seconds per GiB moved. Proxies are interleaved within each round
(A B C A B C ...) and the table reports medians over the rounds.

Proxies: millpond (examples/proxy.py: splice(2) where both sides are TCP),
millpond-no-splice (``--no-splice``: receive_some and send_all), haproxy (``mode tcp``,
``nbthread 1``, its defaults: 16 KiB buffers, recv/send), haproxy-splice (the same,
splicing whenever it can: ``option splice-request``, ``option splice-response``, and
``tune.pipesize`` as millpond's pipes), uvloop (benchmarks/servers/uvloop_proxy.py).
HAProxy comes from the distribution (``apt-get install haproxy``); without it those rows
are skipped with a message.

Writes benchmarks/results/proxy_compare.md (the table, the command, the load averages
before and after) and appends every row to benchmarks/results/proxy_compare.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_compare import (
    ECHO_REF_BIN,
    ECHO_REF_SRC,
    LOADGEN_BIN,
    LOADGEN_SRC,
    LOG_DIR,
    BenchError,
    RunningServer,
    compile_c,
    environment_info,
    free_port,
    git_commit,
    git_dirty_files,
    log,
    measure_window,
    reset_signals,
    server_env,
    stop_process,
    wait_for_quiet_cores,
)
from echo_compare import Config as EchoConfig

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PROXY = ROOT / "examples" / "proxy.py"
UVLOOP_PROXY = BENCH_DIR / "servers" / "uvloop_proxy.py"
PROXY_NAMES = (
    "millpond",
    "millpond-no-splice",
    "millpond-b",
    "haproxy",
    "haproxy-splice",
    "uvloop",
)
DEFAULT_PROXIES = "millpond,millpond-no-splice,haproxy,haproxy-splice,uvloop"
SCENARIO_NAMES = ("bulk", "echo-64")
MIB = 1 << 20
GIB = 1 << 30
STARTUP_TIMEOUT_S = 20.0

Row = dict[str, Any]

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
    tune.pipesize {pipe_size}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{splice}
listen proxy
    bind {host}:{port}
    server backend {host}:{backend_port}
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    conns: int
    size: int
    inflight: int


@dataclass
class Config:
    proxy_cpu: int
    client_cpu: int
    duration: float
    warmup: float
    loadgen: Path
    backend_port: int
    haproxy: str | None
    tmp: Path
    pipe_size: int
    quiet_wait: float
    b_proxy: Path | None

    @property
    def echo_config(self) -> EchoConfig:
        """echo_compare's settings for its measure_window (the proxy in the server's place)."""
        return EchoConfig(
            servers={},
            loadgen=self.loadgen,
            runs=0,
            duration=self.duration,
            warmup=self.warmup,
            conns=0,
            size=0,
            idle=0,
            idle_rate=0,
            server_cpu=self.proxy_cpu,
            client_cpu=self.client_cpu,
            startup_timeout=STARTUP_TIMEOUT_S,
            settle=0,
            results=None,
        )


# --------------------------------------------------------------------------- processes


def proxy_command(cfg: Config, name: str, port: int) -> list[str] | None:
    """The command line of proxy `name` listening on `port`; None if it is not installed."""
    upstream = f"{HOST}:{cfg.backend_port}"
    if name in ("millpond", "millpond-no-splice", "millpond-b"):
        script = cfg.b_proxy if name == "millpond-b" else PROXY
        command = [sys.executable, str(script), "--host", HOST, "--port", str(port)]
        command += ["--upstream", upstream]
        if name == "millpond-no-splice":
            return command + ["--no-splice"]
        return command + ["--pipe-size", str(cfg.pipe_size)]
    if name == "uvloop":
        command = [sys.executable, str(UVLOOP_PROXY), "--host", HOST, "--port", str(port)]
        return command + ["--upstream", upstream]
    if cfg.haproxy is None:
        return None
    config = cfg.tmp / f"{name}.cfg"
    # tune.pipesize (global) gives haproxy-splice millpond's pipe size (HAProxy's
    # default is the kernel's, 64 KiB); plain haproxy does not splice.
    # splice-request and splice-response splice whenever possible, as millpond does
    # (splice-auto only once HAProxy's heuristics call a stream a "streamer").
    splice = (
        "    option splice-request\n    option splice-response" if name == "haproxy-splice" else ""
    )
    config.write_text(
        HAPROXY_CONFIG.format(
            splice=splice,
            host=HOST,
            port=port,
            backend_port=cfg.backend_port,
            pipe_size=cfg.pipe_size,
        )
    )
    return [cfg.haproxy, "-f", str(config), "-db"]  # -db: foreground


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts connections on `port` (HAProxy prints no banner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing accepted on {HOST}:{port} within {timeout} s")


@contextmanager
def running(
    argv: list[str], cpu: int, port: int, log_name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` pinned to `cpu`; wait until `port` accepts; stop it by pid afterwards."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / log_name, "wb") as logf:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=reset_signals,
        )
    try:
        wait_accepting(port, proc, STARTUP_TIMEOUT_S)
        yield proc
    finally:
        # HAProxy stops at once on SIGTERM; the Python proxies exit cleanly on either.
        stop_process(proc, signal.SIGTERM)


def user_system_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of process `pid` (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def measure(cfg: Config, name: str, sc: Scenario) -> Row:
    """One window of `sc` through proxy `name`: echo_compare's measurement, with the proxy
    in the server's place."""
    port = free_port()
    argv = proxy_command(cfg, name, port)
    assert argv is not None
    wait_for_quiet_cores((cfg.proxy_cpu, cfg.client_cpu), cfg.quiet_wait)
    log_name = f"proxy-{name}-{sc.name}.log"
    with running(argv, cfg.proxy_cpu, port, log_name) as proc:
        args = ["echo", HOST, str(port), str(sc.conns), str(sc.size)]
        args += [str(cfg.duration), str(cfg.warmup), str(sc.inflight)]
        user0, system0 = user_system_ticks(proc.pid)
        window = measure_window(
            cfg.echo_config, RunningServer(name, proc, port, LOG_DIR / log_name), args, 90
        )
        user1, system1 = user_system_ticks(proc.pid)
    result = window["loadgen"]
    seconds = window["window_s"]
    moved = 2 * result["msgs"] * sc.size  # up to the backend and back down
    # Over warm-up and window together (the window's markers only give the sum).
    busy = (user1 - user0) + (system1 - system0)
    return {
        "proxy": name,
        "scenario": sc.name,
        "msgs_per_s": result["msgs_per_s"],
        "gib_per_s": moved / GIB / seconds,
        "proxy_cpu_s": window["server_cpu_s"],
        "proxy_cpu_pct": window["server_cpu_pct"],
        "cpu_s_per_gib": window["server_cpu_s"] / (moved / GIB) if moved else None,
        "cpu_us_per_msg": 1e6 * window["server_cpu_s"] / result["msgs"] if result["msgs"] else None,
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "proxy_system_share_pct": round(100.0 * (system1 - system0) / busy, 1) if busy else None,
        "loadgen_cpu_pct": window["client_cpu_pct"],
        "proxy_core_busy_pct": window["server_core_busy_pct"],
        "client_core_busy_pct": window["client_core_busy_pct"],
        # busy time on the proxy's core not explained by the proxy: other load
        "proxy_core_other_pct": window["server_core_other_pct"],
        "proxy_hwm_kib": window["hwm_kib"],
        "window_s": seconds,
    }


# --------------------------------------------------------------------------- report


def median(rows: list[Row], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row], proxies: Sequence[str], scenarios: Sequence[Scenario]) -> str:
    lines = []
    names = [sc.name for sc in scenarios]
    if "bulk" in names:
        lines += [
            "| proxy | bulk GiB/s (both ways) | proxy CPU s per GiB | proxy CPU % "
            "| of which kernel % | p99 ms | load generator CPU % "
            "| load generator + backend core busy % "
            "| other load on the proxy's core % | rounds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in proxies:
            mine = [r for r in rows if r["proxy"] == name and r["scenario"] == "bulk"]
            if mine:
                p99 = median(mine, "p99_us")
                lines.append(
                    f"| {name} | {fmt(median(mine, 'gib_per_s'), 2)} "
                    f"| {fmt(median(mine, 'cpu_s_per_gib'), 3)} "
                    f"| {fmt(median(mine, 'proxy_cpu_pct'), 0)} "
                    f"| {fmt(median(mine, 'proxy_system_share_pct'), 0)} "
                    f"| {fmt(None if p99 is None else p99 / 1000, 1)} "
                    f"| {fmt(median(mine, 'loadgen_cpu_pct'), 0)} "
                    f"| {fmt(median(mine, 'client_core_busy_pct'), 0)} "
                    f"| {fmt(median(mine, 'proxy_core_other_pct'), 0)} | {len(mine)} |"
                )
        lines.append("")
    if "echo-64" in names:
        lines += [
            "| proxy | 64 B echo msgs/s | proxy CPU µs per msg | proxy CPU % "
            "| of which kernel % | p50 µs | p99 µs | load generator CPU % "
            "| load generator + backend core busy % "
            "| other load on the proxy's core % | rounds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in proxies:
            mine = [r for r in rows if r["proxy"] == name and r["scenario"] == "echo-64"]
            if mine:
                lines.append(
                    f"| {name} | {fmt(median(mine, 'msgs_per_s'), 0)} "
                    f"| {fmt(median(mine, 'cpu_us_per_msg'), 2)} "
                    f"| {fmt(median(mine, 'proxy_cpu_pct'), 0)} "
                    f"| {fmt(median(mine, 'proxy_system_share_pct'), 0)} "
                    f"| {fmt(median(mine, 'p50_us'), 0)} | {fmt(median(mine, 'p99_us'), 0)} "
                    f"| {fmt(median(mine, 'loadgen_cpu_pct'), 0)} "
                    f"| {fmt(median(mine, 'client_core_busy_pct'), 0)} "
                    f"| {fmt(median(mine, 'proxy_core_other_pct'), 0)} | {len(mine)} |"
                )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds; proxies interleaved per round")
    p.add_argument("--duration", type=float, default=4.0, help="measured window, s")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before the window, s")
    p.add_argument("--proxies", default=DEFAULT_PROXIES, help="from: " + ", ".join(PROXY_NAMES))
    p.add_argument(
        "--b-proxy",
        type=Path,
        default=None,
        help="millpond-b: another proxy.py (a change under test), run like millpond",
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIO_NAMES), help="from: " + ", ".join(SCENARIO_NAMES)
    )
    p.add_argument("--bulk-conns", type=int, default=4)
    p.add_argument("--bulk-inflight", type=int, default=4, help="1 MiB messages per connection")
    p.add_argument(
        "--pipe-size",
        type=int,
        default=1 << 20,
        help="examples/proxy.py --pipe-size, and HAProxy's tune.pipesize",
    )
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1, help="load generator and backend")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="max seconds to wait for both cores to be idle before each measurement",
    )
    p.add_argument("--no-save", action="store_true", help="print only")
    return p.parse_args(argv)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def interrupt(signum: int, frame: object) -> None:
    """SIGINT or SIGTERM: unwind, so every process started is stopped by the finally blocks
    (even when started in the background by a shell that ignores SIGINT)."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    args = parse_args(argv)
    command = "python benchmarks/proxy_compare.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    proxies = [p for p in args.proxies.split(",") if p]
    unknown = set(proxies) - set(PROXY_NAMES)
    if unknown:
        raise SystemExit(f"unknown proxies: {sorted(unknown)}")
    if "millpond-b" in proxies and args.b_proxy is None:
        raise SystemExit("millpond-b needs --b-proxy PATH")
    table_of = {
        "bulk": Scenario("bulk", args.bulk_conns, MIB, args.bulk_inflight),
        "echo-64": Scenario("echo-64", 100, 64, 1),
    }
    scenarios = [table_of[s] for s in args.scenarios.split(",") if s]
    loadgen = compile_c(LOADGEN_SRC, LOADGEN_BIN)
    echo_ref = compile_c(ECHO_REF_SRC, ECHO_REF_BIN)
    if loadgen is None or echo_ref is None:
        print("SKIPPED: no C compiler for the load generator and the backend")
        return 0
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if haproxy is None and any(p.startswith("haproxy") for p in proxies):
        log("haproxy is not installed (apt-get install -y haproxy): skipping its rows")
        proxies = [p for p in proxies if not p.startswith("haproxy")]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if "uvloop" in proxies:
            log("uvloop is not installed (pip install -e '.[bench]'): skipping its rows")
            proxies.remove("uvloop")
    load_before = loadavg()
    env = environment_info()
    haproxy_version = (
        subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        if haproxy
        else "missing"
    )
    rows: list[Row] = []
    failures = 0
    backend_port = free_port()
    with tempfile.TemporaryDirectory(prefix="proxy_compare-") as tmp:
        backend_argv = [str(echo_ref), "--host", HOST, "--port", str(backend_port)]
        with running(backend_argv, args.client_cpu, backend_port, "backend-echo_ref.log"):
            cfg = Config(
                args.proxy_cpu,
                args.client_cpu,
                args.duration,
                args.warmup,
                loadgen,
                backend_port,
                haproxy,
                Path(tmp),
                args.pipe_size,
                args.quiet_wait,
                args.b_proxy,
            )
            for round_ in range(1, args.rounds + 1):
                for sc in scenarios:
                    for name in proxies:
                        try:
                            row = measure(cfg, name, sc)
                        except BenchError as exc:
                            failures += 1
                            log(f"round {round_} {sc.name} {name}: FAILED: {exc}")
                            continue
                        row["round"] = round_
                        rows.append(row)
                        log(
                            f"round {round_} {sc.name:8} {name:16} "
                            f"{row['gib_per_s']:6.2f} GiB/s {row['msgs_per_s']:10.0f} msgs/s "
                            f"proxy CPU {row['proxy_cpu_pct']:5.1f}% "
                            f"({row['cpu_s_per_gib'] or 0:.3f} s/GiB, "
                            f"{row['cpu_us_per_msg'] or 0:.2f} µs/msg), "
                            f"load generator CPU {row['loadgen_cpu_pct']}%, "
                            f"other load on proxy core {row['proxy_core_other_pct']}%"
                        )
    load_after = loadavg()
    report = table(rows, proxies, scenarios)
    header = [
        "# TCP proxies side by side (benchmarks/proxy_compare.py)",
        "",
        f"Command: `flock /work/notes/bench.lock {command}`",
        "",
        f"Load average before: {load_before}; after: {load_after}. "
        f"Commit {git_commit()}"
        + (f" (uncommitted: {', '.join(git_dirty_files())})" if git_dirty_files() else "")
        + ".",
        f"{env['cpu_model']}, {env['ncpu']} CPUs, Linux {env['kernel']}, Python "
        f"{env['python']}, trio {env['trio']}, uvloop {env['uvloop']}, {haproxy_version}.",
        f"Proxy on core {args.proxy_cpu}; load generator and backend (echo_ref.c) on core "
        f"{args.client_cpu}. Pipes (millpond, haproxy-splice): {args.pipe_size} bytes. "
        f"Medians of {args.rounds} interleaved rounds, "
        f"{args.duration:g} s windows after {args.warmup:g} s warm-up. bulk: "
        f"{args.bulk_conns} connections x {args.bulk_inflight} x 1 MiB in flight, echoed "
        "(GiB/s counts both directions through the proxy); echo-64: 100 connections x one "
        "64 B message.",
        "",
    ]
    text = "\n".join(header) + "\n" + report + "\n"
    print(text)
    if failures:
        print(f"{failures} measurement(s) failed; see the log above")
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "proxy_compare.md").write_text(text)
        with open(RESULTS_DIR / "proxy_compare.jsonl", "a") as f:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            for row in rows:
                f.write(json.dumps({"time": stamp, "command": command, **row}) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
