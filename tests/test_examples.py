"""The examples run as documented: start, serve, stop cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

REPO_ROOT = Path(__file__).resolve().parent.parent

# Hang guards only: starting Python and Trio takes well under a second here;
# reaching these means the example is stuck, not slow.
STARTUP_GUARD_SECONDS = 20
EXIT_GUARD_SECONDS = 20
SOCKET_TIMEOUT_SECONDS = 10

LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child")


async def read_until_listening(stdout: trio.abc.ReceiveStream, seen: bytearray) -> int:
    """Read the child's stdout until it prints where it listens; return the port."""
    while (match := LISTENING.search(seen)) is None:
        chunk = await stdout.receive_some()
        if not chunk:
            raise AssertionError(f"echo.py closed stdout before listening: {bytes(seen)!r}")
        seen += chunk
    return int(match.group(1))


async def read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    """Read ``stream`` to EOF."""
    while chunk := await stream.receive_some():
        into += chunk


def echo_round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` over a plain blocking socket; return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


@pytest.mark.time_limit(60)
async def test_echo_example_echoes_and_exits_cleanly_on_sigint(poller_name: str) -> None:
    payload = b"hello millpond\n" * 1000
    process = await trio.lowlevel.open_process(
        [sys.executable, "examples/echo.py", "--port", "0", "--poller", poller_name],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stdout = bytearray()
    stderr = bytearray()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, process.stderr, stderr)
            with trio.fail_after(STARTUP_GUARD_SECONDS):
                port = await read_until_listening(process.stdout, stdout)
            echoed = await trio.to_thread.run_sync(echo_round_trip, port, payload)
            process.send_signal(signal.SIGINT)
            with trio.fail_after(EXIT_GUARD_SECONDS):
                await read_all(process.stdout, stdout)
                returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert echoed == payload
    assert returncode == 0, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    assert b"SIGINT: stopping" in stdout
