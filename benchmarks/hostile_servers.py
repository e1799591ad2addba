"""The servers that benchmarks/hostile_scenarios.py attacks: millpond, trio.serve_tcp, uvloop.

Usage: python benchmarks/hostile_servers.py KIND HANDLER [--budget-kib N] [--nofile N]
KIND is ``millpond``, ``trio`` (``trio.serve_tcp`` + ``SocketStream``) or ``uvloop``
(asyncio streams on uvloop); HANDLER is ``echo`` (echo, except that ``BIG\\n`` first is
answered with 4 MiB) or ``line`` (one request line, which must arrive within
HEADER_SECONDS, answered with ``ok LINE``): each written the idiomatic way for its server.
Prints ``listening on HOST:PORT``; then reads commands on stdin: ``report`` prints one
JSON line of what the process holds (fds, tasks, RSS, CPU seconds, and for millpond the
server, limiter, pool and poller counters), ``quit`` stops it. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import resource
import sys
from typing import Any

import trio

import millpond

# The request line's deadline (what reaps a slowloris trickler) unless --header-seconds.
DEFAULT_HEADER_SECONDS = 10.0
HEADER_SECONDS = DEFAULT_HEADER_SECONDS
BIG_REQUEST = b"BIG\n"
BIG_BLOCK = b"x" * 65536
BIG_BLOCKS = 64
HOST = "127.0.0.1"


# A descriptor kept in reserve, so that a report can read /proc even when the server has
# run out of descriptors (the fds scenario): closed for the report, opened again after.
SPARE = [os.open(os.devnull, os.O_RDONLY)]


def process_figures() -> dict[str, Any]:
    """What any of the servers can say about itself from /proc and resource."""
    os.close(SPARE[0])  # nothing else runs until it is taken back: one thread, no await
    try:
        with open("/proc/self/status") as file:
            status = dict(line.split(":", 1) for line in file.read().splitlines() if ":" in line)
        fds = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    finally:
        SPARE[0] = os.open(os.devnull, os.O_RDONLY)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "fds": fds,
        "rss_kib": int(status["VmRSS"].split()[0]),
        "peak_rss_kib": int(status["VmHWM"].split()[0]),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "errors_logged": ERRORS[0],
    }


ERRORS = [0]  # handler exceptions that escaped to the server (logged), any server


# --- millpond ------------------------------------------------------------------------------


async def millpond_echo(stream: millpond.Connection) -> None:
    first = await stream.receive_some()
    if first == BIG_REQUEST:
        for _ in range(BIG_BLOCKS):
            await stream.send_all(BIG_BLOCK)
        return
    await stream.send_all(first)
    async for chunk in stream:
        await stream.send_all(chunk)


async def millpond_line(stream: millpond.Connection) -> None:
    stream.deadline = trio.current_time() + HEADER_SECONDS
    request = b""
    while b"\n" not in request:
        chunk = await stream.receive_some()
        if not chunk:
            return
        request += chunk
    stream.deadline = math.inf
    await stream.send_all(b"ok " + request.split(b"\n", 1)[0] + b"\n")


def all_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None  # called from inside trio.run
    stack, count = [root], 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def run_millpond(handler: str, budget_kib: int) -> None:
    limiter = millpond.BufferLimiter(budget_kib * 1024)
    server = millpond.Server(
        millpond_echo if handler == "echo" else millpond_line, 0, host=HOST, limiter=limiter
    )

    def report() -> dict[str, Any]:
        stats, limits = server.statistics(), limiter.statistics()
        pool, poller = server.pool, server.poller
        assert pool is not None and poller is not None
        pool_stats = pool.statistics()
        ERRORS[0] = stats.handler_errors
        return {
            **process_figures(),
            "tasks": all_tasks(),
            "connections": stats.connections_active,
            "accepted": stats.connections_accepted,
            "closed": {k: v for k, v in stats.closed.items() if v},
            "setup_errors": stats.setup_errors,
            "accept_backoffs": stats.accept_backoffs,
            "budget_in_use": limits.bytes_in_use,
            "budget_peak": limits.peak_bytes_in_use,
            "budget_waiting": limits.tasks_waiting,
            "leases_live": pool_stats.leases - pool_stats.releases,
            "registered": poller.statistics().registered,
        }

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print(f"listening on {HOST}:{server.addresses[0][1]}", flush=True)
        await commands(report)
        nursery.cancel_scope.cancel()


async def commands(report: Any) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() == "report":
            print(json.dumps(report()), flush=True)
        else:
            return


# --- trio.serve_tcp ------------------------------------------------------------------------


async def trio_echo(stream: trio.SocketStream) -> None:
    try:
        first = await stream.receive_some()
        if first == BIG_REQUEST:
            for _ in range(BIG_BLOCKS):
                await stream.send_all(BIG_BLOCK)
            return
        await stream.send_all(first)
        async for chunk in stream:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer reset: serve_tcp would otherwise crash on it


async def trio_line(stream: trio.SocketStream) -> None:
    try:
        request = b""
        with trio.move_on_after(HEADER_SECONDS):
            while b"\n" not in request:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                request += chunk
        if b"\n" in request:
            await stream.send_all(b"ok " + request.split(b"\n", 1)[0] + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def run_trio(handler: str) -> None:
    def report() -> dict[str, Any]:
        return {**process_figures(), "tasks": all_tasks()}

    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.serve_tcp, trio_echo if handler == "echo" else trio_line, 0, host=HOST
        )
        listeners = await nursery.start(serve)
        print(f"listening on {HOST}:{listeners[0].socket.getsockname()[1]}", flush=True)
        await commands(report)
        nursery.cancel_scope.cancel()


# --- asyncio streams on uvloop -------------------------------------------------------------


async def asyncio_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await reader.read(65536)
        if first == BIG_REQUEST:
            for _ in range(BIG_BLOCKS):
                writer.write(BIG_BLOCK)
                await writer.drain()
            return
        while first:
            writer.write(first)
            await writer.drain()
            first = await reader.read(65536)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def asyncio_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), HEADER_SECONDS)
        if line.endswith(b"\n"):
            writer.write(b"ok " + line[:-1] + b"\n")
            await writer.drain()
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()


async def run_asyncio(handler: str) -> None:
    loop = asyncio.get_running_loop()

    def count(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        ERRORS[0] += 1  # an exception that escaped a handler or a callback
        loop.default_exception_handler(context)

    loop.set_exception_handler(count)
    server = await asyncio.start_server(
        asyncio_echo if handler == "echo" else asyncio_line, HOST, 0
    )
    print(f"listening on {HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "report":
            break
        print(json.dumps({**process_figures(), "tasks": len(asyncio.all_tasks())}), flush=True)
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("millpond", "trio", "uvloop"))
    parser.add_argument("handler", choices=("echo", "line"))
    parser.add_argument("--budget-kib", type=int, default=8192)
    parser.add_argument("--nofile", type=int, default=None, help="RLIMIT_NOFILE (default: hard)")
    parser.add_argument("--header-seconds", type=float, default=DEFAULT_HEADER_SECONDS)
    args = parser.parse_args()
    global HEADER_SECONDS
    HEADER_SECONDS = args.header_seconds
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = hard if args.nofile is None else args.nofile
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    if args.kind == "millpond":
        trio.run(run_millpond, args.handler, args.budget_kib)
    elif args.kind == "trio":
        trio.run(run_trio, args.handler)
    else:
        import uvloop

        uvloop.run(run_asyncio(args.handler))
    return 0


if __name__ == "__main__":
    sys.exit(main())
