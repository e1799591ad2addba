"""Reading a millpond process from outside, for the soak and the flood measurement.

Shared by ``soak.py`` and ``debug_under_flood.py``: start ``millpond serve``
with its debug endpoint on a free port and find the ports in its log, read a
process's resident memory and open descriptors from ``/proc``, and GET a
debug page with a plain socket (no HTTP library, one request per
connection, bounded in size and time), and pin the server and the load to
different cores and count the CPU each uses. Loopback only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Hang guard: the command logs its ports within a second or two.
START_GUARD_SECONDS = 30.0


# The server runs on CPU 0 and the load (this process) on CPU 1, so that neither
# steals the other's core (the machine has two; see benchmarks/README.md).
SERVER_CPU = 0
CLIENT_CPU = 1


def pin_this_process(cpu: int = CLIENT_CPU) -> None:
    """Run this process (the load generator) on ``cpu`` only, where the OS allows it."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def start_server(
    target: str, *flags: str, cpu: int = SERVER_CPU
) -> tuple[subprocess.Popen[bytes], int, int]:
    """``millpond serve TARGET --port 0 --debug-port 0 FLAGS`` pinned to ``cpu``.

    Returns the process and both ports (the service's and the debug endpoint's).
    """
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    pin = ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []
    process = subprocess.Popen(
        [*pin, sys.executable, "-m", "millpond.cli", "serve", target, "--port", "0",
         "--debug-port", "0", *flags],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=environment,
    )  # fmt: skip
    assert process.stderr is not None
    log = b""
    deadline = time.monotonic() + START_GUARD_SECONDS
    port = debug_port = None
    while port is None or debug_port is None:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"the server did not start: {log.decode(errors='replace')}")
        log += process.stderr.readline()
        if (found := re.search(rb"listening on 127\.0\.0\.1:(\d+)", log)) and port is None:
            port = int(found.group(1))
        if found := re.search(rb"debug endpoint: http://127\.0\.0\.1:(\d+)/", log):
            debug_port = int(found.group(1))
    # Keep draining its log, so that it never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=process.stderr, stdout=subprocess.DEVNULL)
    return process, port, debug_port


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds used so far by ``pid`` (None: this process, all threads)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(port: int, path: str, timeout: float = 10.0) -> tuple[float, bytes]:
    """GET ``path`` from 127.0.0.1:``port``: (seconds to the whole answer, body)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
            if len(answer) > 64 << 20:
                raise RuntimeError("answer too large")
    elapsed = time.perf_counter() - started
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {head[:80]!r}")
    return elapsed, body


def stats(port: int) -> dict[str, Any]:
    """The debug endpoint's ``stats`` page, as data."""
    return json.loads(get(port, "/debug/millpond/stats")[1])  # type: ignore[no-any-return]
