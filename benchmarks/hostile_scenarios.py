"""Hostile clients, long versions with figures (issue 16): what each scenario costs a server.

The tests (tests/test_slowloris.py, test_reset_storm.py, test_half_close.py, test_limits.py,
test_memory_exhaustion.py, test_cancellation_storm.py, test_lease_faults.py) run short
versions of each scenario in CI; this script runs them at scale and prints the figures for
docs/reliability.md. Loopback only, every loop bounded in count and time::

    python benchmarks/hostile_scenarios.py slowloris   # 5000 tricklers; rate and p99 beside
    python benchmarks/hostile_scenarios.py reset       # RST storm beside checked echoes
    python benchmarks/hostile_scenarios.py halfclose   # EOF first, then read the whole echo
    python benchmarks/hostile_scenarios.py fds         # at RLIMIT_NOFILE: CPU while exhausted
    python benchmarks/hostile_scenarios.py memory      # 1000 clients through a 1 MiB budget
    python benchmarks/hostile_scenarios.py cancel      # handlers cancelled at random (millpond)
    python benchmarks/hostile_scenarios.py faults      # leases refused (LeaseFaults, millpond)

The first five run each server (``--servers millpond,trio,uvloop``: millpond, trio.serve_tcp,
asyncio streams on uvloop; benchmarks/hostile_servers.py) as a process pinned to core 0,
while this process, the load generator, is pinned to core 1 and reports its own CPU share.
``cancel`` and ``faults`` concern millpond alone and run it in this process. Each row is
printed and appended as a JSON line to benchmarks/results/hostile_scenarios.jsonl.
``--runs N``: N rounds, every server's (poller's) interleaved with the others', then one
summary per server: medians and [min–max], leftovers as the maximum (hostile_summary.py).
The reset storm runs in a process of its own (hostile_storm.py), the slowloris tricklers
too (``_trickle`` below), both on this process's core.
(The lead folds this into benchmarks/hostile.py as its subcommands.)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing
from echo_compare import core_busy_pct, core_times
from hostile_servers import all_tasks
from hostile_summary import describe, summarize

import millpond

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "benchmarks" / "hostile_servers.py"
STORM = ROOT / "benchmarks" / "hostile_storm.py"
RESULTS = ROOT / "benchmarks" / "results" / "hostile_scenarios.jsonl"
HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB
SERVER_CORE, CLIENT_CORE = 0, 1

Figures = dict[str, Any]


# --- the server process ----------------------------------------------------------------------


class ServerProcess:
    """One of benchmarks/hostile_servers.py's servers, pinned to SERVER_CORE."""

    def __init__(self, kind: str, handler: str, *options: str) -> None:
        self.kind = kind
        command = [sys.executable, str(SERVERS), kind, handler, *options]
        if os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
            command = ["taskset", "-c", str(SERVER_CORE), *command]
        environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        # What the server logs (Python's last-resort handler: WARNING and up) is counted:
        # a line per reset would be a finding.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env=environment,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def report(self) -> Figures:
        """Ask the server what it holds now (blocking: call through trio.to_thread)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("report\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    async def areport(self) -> Figures:
        return await trio.to_thread.run_sync(self.report)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, from /proc (no request to the server)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_lines(self) -> list[str]:
        """What the server has written to stderr so far, by line."""
        self.log.seek(0)
        return self.log.read().splitlines()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        try:
            if self.process.stdin is not None and self.alive():
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.process.kill()
            self.process.wait()
            self.log.close()


class LoadCpu:
    """This process's CPU share (the load generator's) over a stretch of wall time."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def share(self) -> float:
        return (time.process_time() - self.cpu) / max(time.monotonic() - self.wall, 1e-9)


async def settled(server: ServerProcess, before: Figures, seconds: float = 20) -> Figures:
    """The server's report once its fds and tasks are back to ``before``'s (or ``seconds``
    have passed: then what is left shows in the figures)."""
    deadline = trio.current_time() + seconds
    while True:
        report = await server.areport()
        if (
            report["fds"] <= before["fds"]
            and report["tasks"] <= before["tasks"]
            and report.get("connections", 0) == 0
        ):
            return report
        if trio.current_time() > deadline:
            return report
        await trio.sleep(0.2)


def leftovers(before: Figures, after: Figures) -> Figures:
    """What the server holds after a scenario beyond what it held before it."""
    left = {
        "fds_left": after["fds"] - before["fds"],
        "tasks_left": after["tasks"] - before["tasks"],
    }
    for key in ("connections", "budget_in_use", "budget_waiting", "leases_live"):
        if key in after:
            left[f"{key}_left"] = after[key]
    if "registered" in after:
        left["registered_left"] = after["registered"] - before["registered"]
    left["errors_escaped"] = after["errors_logged"] - before["errors_logged"]
    return left


def listen_counters() -> dict[str, int]:
    """The kernel's count of connections its listen queues dropped (full accept queue) and
    of SYN cookies sent (full SYN queue), from /proc/net/netstat: loopback-wide."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    names, values = (line.split()[1:] for line in lines if line.startswith("TcpExt:"))
    counters = dict(zip(names, map(int, values), strict=True))
    return {"listen_overflows": counters["ListenOverflows"],
            "syncookies_sent": counters["SyncookiesSent"]}  # fmt: skip


def percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def payload_for(seed: int, size: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


# How a checked echo ended: every byte back (SHA-256), the connection reset (by the server
# or its kernel), or bytes lost (an early EOF or a wrong byte).
WHOLE, RESET, LOST = "whole", "reset", "lost"


async def all_at_once(
    one: Callable[[int], Awaitable[None]], count: int, limit_seconds: float
) -> None:
    """Run ``one(seed)`` for seeds 0 to ``count - 1`` at once; fail after ``limit_seconds``."""
    with trio.fail_after(limit_seconds):
        async with trio.open_nursery() as nursery:
            for seed in range(count):
                nursery.start_soon(one, seed)


async def checked_echo(port: int, seed: int, size: int, gaps: list[float] | None = None) -> str:
    """Send ``size`` bytes and EOF, read the echo; WHOLE, RESET or LOST.

    With ``gaps``, appends the longest time this client waited for its next bytes.
    """
    payload = payload_for(seed, size)
    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return RESET  # refused or reset while connecting (a full accept queue)
    digest, count = hashlib.sha256(), 0
    last, longest = trio.current_time(), 0.0
    gone = (trio.BrokenResourceError, trio.ClosedResourceError)

    async def send() -> None:
        try:
            for offset in range(0, size, 64 * KIB):
                await stream.send_all(payload[offset : offset + 64 * KIB])
            await stream.send_eof()
        except gone:
            pass  # the server reset us: the receive below sees it too

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        try:
            while chunk := await stream.receive_some(256 * KIB):
                now = trio.current_time()
                longest, last = max(longest, now - last), now
                digest.update(chunk)
                count += len(chunk)
        except gone:
            count = -1  # reset by the server: a failed echo
            nursery.cancel_scope.cancel()
    if gaps is not None:
        gaps.append(longest)
    if count == -1:
        return RESET
    return WHOLE if count == size and digest.digest() == hashlib.sha256(payload).digest() else LOST


# --- slowloris ---------------------------------------------------------------------------------


async def one_request(port: int, number: int) -> float:
    started = trio.current_time()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(b"GET /%d\n" % number)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                raise RuntimeError("closed before the answer")
            answer += chunk
    return trio.current_time() - started


async def well_behaved_for(port: int, seconds: float) -> tuple[float, float]:
    """Sequential requests for ``seconds``: (requests per second, p99 latency in ms)."""
    latencies: list[float] = []
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        latencies.append(await one_request(port, len(latencies)))
    return len(latencies) / seconds, percentile(latencies, 0.99) * 1000


async def open_raw(port: int) -> socket.socket:
    """A connected non-blocking socket (plain, not Trio's: the trickle loop uses it raw)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex((HOST, port))
    await trio.lowlevel.wait_writable(sock)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        sock.close()
        raise OSError(error, os.strerror(error))
    return sock


async def trickle(port: int, count: int, limit: float) -> Figures:
    """Open ``count`` connections, then send each one byte a second (never a newline) until
    the server closes it or ``limit`` seconds pass. One loop for all of them, a slice of
    the sockets at a time, so that 5000 tricklers cost this process a few % of a core."""
    socks: dict[socket.socket, float] = {}
    failed = [0]

    async def connect() -> None:
        try:
            socks[await open_raw(port)] = trio.current_time()
        except OSError:
            failed[0] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(connect)
    print(f"connected {len(socks)}", flush=True)
    reaped: list[float] = []
    slices = 20
    end = trio.current_time() + limit
    while socks and trio.current_time() < end:
        for number, sock in enumerate(list(socks)):
            if number % (len(socks) // slices + 1) == 0:
                await trio.sleep(1 / slices)
            try:
                gone = sock.recv(1, socket.MSG_DONTWAIT) == b""
                if not gone:
                    continue  # the server never answers a trickler: not expected
            except BlockingIOError:
                try:
                    sock.send(b"G", socket.MSG_DONTWAIT)
                    continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
            except OSError:
                pass
            reaped.append(trio.current_time() - socks.pop(sock))
            sock.close()
    for sock in socks:
        sock.close()
    return {"connected": len(reaped) + len(socks), "connect_failures": failed[0],
            "reaped": len(reaped), "never_reaped": len(socks),
            "reaped_after_s_max": round(max(reaped, default=math.nan), 2)}  # fmt: skip


async def slowloris(server: ServerProcess, args: argparse.Namespace) -> Figures:
    before = await server.areport()
    alone_rate, alone_p99 = await well_behaved_for(server.port, args.measure)
    # The tricklers run in a process of their own (on this core too), so that their loop
    # never stalls the well-behaved client measured here.
    command = [sys.executable, __file__, "_trickle", str(server.port), str(args.tricklers),
               str(args.header_seconds * 3 + 30)]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    tricklers = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert tricklers.stdout is not None
        started = trio.current_time()
        line = await trio.to_thread.run_sync(tricklers.stdout.readline)
        connect_seconds = trio.current_time() - started
        load = LoadCpu()
        under_rate, under_p99 = await well_behaved_for(server.port, args.measure)
        load_share = load.share()
        during = await server.areport()
        result = json.loads(await trio.to_thread.run_sync(tricklers.stdout.readline))
        tricklers.wait(timeout=30)
    finally:
        tricklers.kill()
        tricklers.wait()
    after = await settled(server, before)
    return {
        "tricklers": args.tricklers,
        "trickling_while_measured": int(line.split()[1]),
        **result,
        "alone_rate": round(alone_rate, 1),
        "under_rate": round(under_rate, 1),
        "rate_kept": round(under_rate / alone_rate, 3),
        "alone_p99_ms": round(alone_p99, 2),
        "under_p99_ms": round(under_p99, 2),
        "connect_seconds": round(connect_seconds, 1),
        "load_cpu": round(load_share, 2),
        "server_fds_during": during["fds"],
        "peak_rss_growth_kib": after["peak_rss_kib"] - before["rss_kib"],
        **leftovers(before, after),
    }


# --- reset storm -------------------------------------------------------------------------------


async def reset(server: ServerProcess, args: argparse.Namespace) -> Figures:
    before = await server.areport()
    checked, lost, reset_ = [0], [0], [0]
    load = LoadCpu()
    end = trio.current_time() + args.seconds
    # The storm runs in a process of its own on this core (benchmarks/hostile_storm.py: one
    # epoll loop with --concurrency connections in flight), so that the server, not a
    # Python client awaiting each connect, sets the rate.
    command = [sys.executable, str(STORM), str(server.port), str(args.seconds),
               str(args.concurrency)]  # fmt: skip
    server_cpu, wall = server.cpu_seconds(), time.monotonic()
    listen = listen_counters()
    cores = core_times((SERVER_CORE, CLIENT_CORE))
    storm = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    async def honest(seed: int) -> None:
        while trio.current_time() < end:
            outcome = await checked_echo(server.port, seed, MIB)
            checked[0] += MIB
            lost[0] += outcome == LOST
            reset_[0] += outcome == RESET
            seed += 1000

    try:
        with trio.fail_after(args.seconds + 60):
            async with trio.open_nursery() as nursery:
                for seed in range(8):
                    nursery.start_soon(honest, seed)
            assert storm.stdout is not None
            line = await trio.to_thread.run_sync(storm.stdout.readline)
        server_cpu = (server.cpu_seconds() - server_cpu) / (time.monotonic() - wall)
        cores_after = core_times((SERVER_CORE, CLIENT_CORE))
        storm.wait(timeout=10)
    finally:
        storm.kill()
        storm.wait()
    load_share = load.share()
    figures = json.loads(line)
    after = await settled(server, before)
    return {
        "resets": figures["resets"],
        "resets_per_s": round(figures["resets"] / figures["seconds"]),
        **{f"{kind}_resets": count for kind, count in figures["resets_by_kind"].items()},
        "server_closed_first": sum(figures["server_closed_first"].values()),
        "connect_failed": figures["connect_failed"],
        "in_flight": args.concurrency,
        "checked_mib": checked[0] // MIB,
        "echoes_with_bytes_lost": lost[0],
        "echoes_reset": reset_[0],
        **{key: value - listen[key] for key, value in listen_counters().items()},
        "storm_cpu": figures["storm_cpu"],
        "load_cpu": round(load_share, 2),
        "server_cpu": round(server_cpu, 2),
        # Whole cores, kernel included (loopback TCP's softirq work lands there too).
        **{
            f"{name}_core_busy": round(core_busy_pct(cores[core], cores_after[core]) / 100, 2)
            for name, core in (("server", SERVER_CORE), ("client", CLIENT_CORE))
        },  # fmt: skip
        "server_alive": server.alive(),
        # A leak per reset would show here, not only in the counts: RSS once it settled.
        "rss_growth_kib": after["rss_kib"] - before["rss_kib"],
        **{key: after[key] for key in ("accepted", "closed", "setup_errors") if key in after},
        **leftovers(before, after),
    }


# --- half-close --------------------------------------------------------------------------------


async def halfclose(server: ServerProcess, args: argparse.Namespace) -> Figures:
    before = await server.areport()
    results: list[bool] = []
    load = LoadCpu()

    async def one(seed: int) -> None:
        results.append(await checked_echo(server.port, seed, args.size_mib * MIB) == WHOLE)

    await all_at_once(one, args.clients, 120)
    seconds = time.monotonic() - load.wall
    load_share = load.share()
    after = await settled(server, before)
    return {
        "clients": args.clients,
        "mib_each": args.size_mib,
        "whole_answers": sum(results),
        "answers_with_bytes_lost": len(results) - sum(results),
        "seconds": round(seconds, 2),
        "load_cpu": round(load_share, 2),
        **leftovers(before, after),
    }


# --- descriptor exhaustion ---------------------------------------------------------------------


async def fds(server: ServerProcess, args: argparse.Namespace) -> Figures:
    before = await server.areport()
    socks: list[trio.socket.SocketType] = []
    for _ in range(args.clients):
        sock = trio.socket.socket()
        await sock.connect((HOST, server.port))  # the kernel completes it; accept may not
        socks.append(sock)
    await trio.sleep(0.5)
    cpu, wall = server.cpu_seconds(), time.monotonic()
    await trio.sleep(args.exhausted)
    cpu_share = (server.cpu_seconds() - cpu) / (time.monotonic() - wall)
    during = await server.areport()

    async def served(sock: trio.socket.SocketType, number: int) -> str:
        message = b"echo %d" % number
        with trio.move_on_after(20):
            try:
                await sock.send(message)
                answer = await sock.recv(100)
            except OSError:
                return "closed"
            return "served" if answer == message else "closed" if not answer else "wrong"
        return "unanswered"

    first_served = await served(socks[0], 0) == "served"
    for sock in socks[: args.clients // 2]:
        sock.close()
    later = [await served(sock, n) for n, sock in enumerate(socks[args.clients // 2 :])]
    for sock in socks:
        sock.close()
    after = await settled(server, before)
    return {
        "nofile": args.nofile,
        "clients": args.clients,
        "accepted_while_exhausted": during.get("accepted", math.nan),
        "cpu_share_while_exhausted": round(cpu_share, 3),
        "accept_backoffs": during.get("accept_backoffs", math.nan),
        "early_client_served_during": first_served,
        "waiting_clients": len(later),
        "served_after": later.count("served"),
        "closed_unserved": later.count("closed"),
        "unanswered_in_20s": later.count("unanswered"),
        **leftovers(before, after),
    }


# --- memory exhaustion -------------------------------------------------------------------------


async def memory(server: ServerProcess, args: argparse.Namespace) -> Figures:
    before = await server.areport()
    gaps: list[float] = []
    results: list[bool] = []
    load = LoadCpu()

    async def one(seed: int) -> None:
        results.append(await checked_echo(server.port, seed, args.each_kib * KIB, gaps) == WHOLE)

    await all_at_once(one, args.clients, 180)
    seconds = time.monotonic() - load.wall
    load_share = load.share()
    after = await settled(server, before)
    return {
        "clients": args.clients,
        "kib_each": args.each_kib,
        "budget_kib": args.budget_kib if server.kind == "millpond" else None,
        "finished": len(results),
        "echoes_failed": len(results) - sum(results),  # a byte lost or a reset
        "seconds": round(seconds, 2),
        "longest_wait_max_s": round(max(gaps), 3),
        "longest_wait_p50_s": round(percentile(gaps, 0.5), 3),
        "longest_wait_p99_s": round(percentile(gaps, 0.99), 3),
        "peak_rss_growth_kib": after["peak_rss_kib"] - before["rss_kib"],
        "budget_peak_kib": after.get("budget_peak", 0) // KIB or None,
        "load_cpu": round(load_share, 2),
        **leftovers(before, after),
    }


# --- millpond only, in this process ------------------------------------------------------------


async def in_process_counts(server: millpond.Server) -> Figures:
    await trio.testing.wait_all_tasks_blocked()
    limiter, pool, poller = server.limiter, server.pool, server.poller
    assert limiter is not None and pool is not None and poller is not None
    pool_stats = pool.statistics()
    return {
        "fds": len(os.listdir("/proc/self/fd")) - 1,
        "tasks": all_tasks(),
        "connections": server.statistics().connections_active,
        "budget_in_use": limiter.bytes_in_use,
        "budget_waiting": limiter.statistics().tasks_waiting,
        "leases_live": pool_stats.leases - pool_stats.releases,
        "registered": poller.statistics().registered,
        "errors_logged": server.statistics().handler_errors,
    }


async def in_process(
    poller: str,
    handler: Callable[[millpond.Connection], Awaitable[None]],
    drive: Callable[[millpond.Server], Awaitable[Figures]],
    **server_options: Any,
) -> Figures:
    async with trio.open_nursery() as nursery:
        server = millpond.Server(handler, 0, host=HOST, poller=poller, **server_options)
        await nursery.start(server.run)
        before = await in_process_counts(server)
        figures = await drive(server)
        with trio.fail_after(30):
            while server.statistics().connections_active:
                await trio.sleep(0.01)
        after = await in_process_counts(server)
        nursery.cancel_scope.cancel()
    return {"poller": poller, **figures, **leftovers(before, after)}


async def cancel(poller: str, args: argparse.Namespace) -> Figures:
    scopes: dict[millpond.Connection, trio.CancelScope] = {}

    async def handler(stream: millpond.Connection) -> None:
        with trio.CancelScope() as scope:
            scopes[stream] = scope
            try:
                async with stream.receive_buffer() as first:
                    await stream.send_all(first.view)
                async for chunk in stream:
                    await stream.send_all(chunk)
            finally:
                del scopes[stream]

    async def drive(server: millpond.Server) -> Figures:
        cancelled, moved, gave_up = [0], [0], [0]
        end = trio.current_time() + args.seconds
        rng = random.Random(16)

        gone = (trio.BrokenResourceError, trio.ClosedResourceError)

        async def send(stream: trio.SocketStream, payload: bytes) -> None:
            try:
                for _ in range(16):
                    await stream.send_all(payload)
                await stream.send_eof()
            except gone:
                pass

        async def client(seed: int) -> None:
            payload = payload_for(seed, 256 * KIB)
            while trio.current_time() < end:
                stream = await trio.open_tcp_stream(HOST, server.addresses[0][1])
                # Each connection is bounded: under the budget's pressure reads are 1 KiB,
                # and a connection the canceller never picks may take a while.
                with trio.move_on_after(10) as bounded:
                    async with stream, trio.open_nursery() as nursery:
                        nursery.start_soon(send, stream, payload)
                        try:
                            while chunk := await stream.receive_some():
                                moved[0] += len(chunk)
                        except gone:
                            pass
                        nursery.cancel_scope.cancel()
                gave_up[0] += bounded.cancelled_caught

        async def canceller() -> None:
            while trio.current_time() < end:
                await trio.sleep(args.every_ms / 1000)
                if scopes:
                    rng.choice(list(scopes.values())).cancel()
                    cancelled[0] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(canceller)
            for seed in range(args.clients):
                nursery.start_soon(client, seed)
        return {"clients": args.clients, "seconds": args.seconds, "handlers_cancelled":
                cancelled[0], "mib_moved": moved[0] // MIB,
                "connections_given_up_by_client": gave_up[0]}  # fmt: skip

    return await in_process(
        poller, handler, drive, limiter=millpond.BufferLimiter(args.budget_kib * KIB)
    )


async def faults(poller: str, args: argparse.Namespace, ratio: float) -> Figures:
    async def zero_copy_echo(stream: millpond.Connection) -> None:
        while True:
            async with stream.receive_buffer() as buffer:
                if not buffer.nbytes:
                    return
                await stream.send_all(buffer.view)

    injector = millpond.LeaseFaults(ratio, seed=16)
    limiter = millpond.BufferLimiter(args.budget_kib * KIB)

    async def drive(server: millpond.Server) -> Figures:
        results: list[bool] = []
        started = trio.current_time()

        async def one(seed: int) -> None:
            port = server.addresses[0][1]
            results.append(await checked_echo(port, seed, args.each_kib * KIB) == WHOLE)

        await all_at_once(one, args.clients, 120)
        return {
            "ratio": ratio,
            "clients": args.clients,
            "kib_each": args.each_kib,
            "leases_drawn": injector.drawn,
            "leases_refused": injector.refused,
            "echoes_whole": sum(results),
            "echoes_failed": len(results) - sum(results),  # a byte lost or a reset
            "seconds": round(trio.current_time() - started, 2),
        }

    pool = millpond.BufferPool(limiter, faults=injector)
    return await in_process(poller, zero_copy_echo, drive, pool=pool)


# --- the command line --------------------------------------------------------------------------

SERVER_SCENARIOS: dict[str, tuple[str, Callable[[ServerProcess, argparse.Namespace], Any]]] = {
    "slowloris": ("line", slowloris),
    "reset": ("echo", reset),
    "halfclose": ("echo", halfclose),
    "fds": ("echo", fds),
    "memory": ("echo", memory),
}


def record(scenario: str, server: str, figures: Figures, command: str) -> None:
    row = {"scenario": scenario, "server": server, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "load": os.getloadavg()[0], "command": command, **figures}  # fmt: skip
    print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps(row) + "\n")


def runs_of(args: argparse.Namespace) -> list[tuple[str, Callable[[], Figures]]]:
    """One round of the scenario: (the row's name, what runs it) per server or poller."""
    if args.scenario in SERVER_SCENARIOS:
        handler, run = SERVER_SCENARIOS[args.scenario]
        budget = args.budget_kib if args.scenario == "memory" else 8192
        options = ["--budget-kib", str(budget), "--header-seconds", str(args.header_seconds)]
        if args.scenario == "fds":
            options += ["--nofile", str(args.nofile)]

        def on_server(kind: str) -> Figures:
            server = ServerProcess(kind, handler, *options)
            try:
                figures: Figures = trio.run(run, server, args)
                logged = server.log_lines()
            finally:
                server.stop()
            if logged:
                print(f"{kind} logged {len(logged)} lines, the first: {logged[:3]}", flush=True)
            return {**figures, "server_log_lines": len(logged)}

        return [(kind, functools.partial(on_server, kind)) for kind in args.servers.split(",")]
    pollers = args.pollers.split(",")
    if args.scenario == "cancel":
        return [(f"millpond/{p}", functools.partial(trio.run, cancel, p, args)) for p in pollers]
    ratios = [float(r) for r in args.ratios.split(",")]
    return [
        (f"millpond/{p} {ratio:.0%}", functools.partial(trio.run, faults, p, args, ratio))
        for p in pollers
        for ratio in ratios
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SERVER_SCENARIOS, "cancel", "faults"])
    parser.add_argument("--servers", default="millpond,trio,uvloop")
    parser.add_argument("--runs", type=int, default=1, help="rounds, interleaved; medians")
    parser.add_argument("--pollers", default="epoll,trio", help="cancel and faults")
    parser.add_argument("--tricklers", type=int, default=5000)
    parser.add_argument("--header-seconds", type=float, default=10.0)
    parser.add_argument("--measure", type=float, default=5.0, help="seconds per rate sample")
    parser.add_argument("--seconds", type=float, default=10.0, help="reset and cancel: length")
    parser.add_argument("--concurrency", type=int, default=1024, help="reset: in flight")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--size-mib", type=int, default=4, help="halfclose: bytes per client")
    parser.add_argument("--nofile", type=int, default=256, help="fds: the server's RLIMIT_NOFILE")
    parser.add_argument("--exhausted", type=float, default=3.0, help="fds: seconds measured")
    parser.add_argument("--budget-kib", type=int, default=1024)
    parser.add_argument("--each-kib", type=int, default=64)
    parser.add_argument("--every-ms", type=float, default=2.0, help="cancel: between cancels")
    parser.add_argument("--ratios", default="0.1,0.5,0.9", help="faults: shares refused")
    if sys.argv[1:2] == ["_trickle"]:  # the tricklers' own process (see slowloris)
        port, count, limit = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(json.dumps(trio.run(trickle, port, count, limit)), flush=True)
        return 0
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    default_clients = {"halfclose": 50, "fds": 400, "memory": 1000, "cancel": 100, "faults": 200}
    if args.clients is None:
        args.clients = default_clients.get(args.scenario, 100)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 5000 tricklers need fds
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    command = " ".join(["python", "benchmarks/hostile_scenarios.py", *sys.argv[1:]])
    rows: dict[str, list[Figures]] = {}
    # Rounds interleaved: round 1 of every server (poller, ratio), then round 2, ..., so
    # that a stretch of other load on the VM spreads over all of them.
    for round_ in range(1, args.runs + 1):
        for name, run_once in runs_of(args):
            figures = {"round": round_, **run_once()}
            record(args.scenario, name, figures, command)
            rows.setdefault(name, []).append(figures)
    if args.runs > 1:
        for name, mine in rows.items():
            summary = summarize(mine)
            print(f"{args.scenario} {name}: {describe(summary)}", flush=True)
            record(args.scenario, name, {"summary": True, **summary}, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
