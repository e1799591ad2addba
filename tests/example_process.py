"""Running an example server as a user would: a child process, its output, a signal to stop it.

For the tests of ``examples/``: start ``python examples/NAME.py --port 0``,
wait for ``listening on 127.0.0.1:PORT``, talk to it, send it a signal, and
check how it exits. Every wait has a hang guard; none is a timing assertion.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parent.parent

# Hang guards only: starting Python and Trio takes well under a second here;
# reaching these means the example is stuck, not slow.
STARTUP_GUARD_SECONDS = 20
EXIT_GUARD_SECONDS = 20

LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")


class Example:
    """A running example: its pid, its port, and what it has printed so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.port = 0
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._printed = trio.Event()  # set (and replaced) whenever stdout grows
        self._stdout_closed = False

    async def wait_for_output(self, pattern: bytes, count: int = 1) -> list[re.Match[bytes]]:
        """Wait until stdout holds ``count`` matches of ``pattern``; return them."""
        regex = re.compile(pattern)
        while len(matches := list(regex.finditer(self.stdout))) < count:
            if self._stdout_closed:
                raise AssertionError(
                    f"the example closed its stdout before printing {pattern!r} x{count}:\n"
                    + self.output()
                )
            await self._printed.wait()
        return matches

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; return the exit status once the process and its output have ended."""
        self.process.send_signal(signum)
        with trio.fail_after(EXIT_GUARD_SECONDS):
            return await self.process.wait()

    def output(self) -> str:
        """Both streams, for an assertion's message."""
        return (
            f"stdout:\n{self.stdout.decode(errors='replace')}\n"
            f"stderr:\n{self.stderr.decode(errors='replace')}"
        )

    async def _collect(self, stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk
            if into is self.stdout:
                self._printed.set()
                self._printed = trio.Event()
        if into is self.stdout:
            self._stdout_closed = True
            self._printed.set()  # wake whoever waits: it will never be printed now


@asynccontextmanager
async def running_example(script: str, *args: str) -> AsyncIterator[Example]:
    """Run ``python examples/<script> --port 0 *args`` until the block ends; yield it listening.

    At the end the process is killed if still running; its output is kept on
    the ``Example`` for assertions after the block.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, f"examples/{script}", "--port", "0", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    example = Example(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(example._collect, process.stdout, example.stdout)
            nursery.start_soon(example._collect, process.stderr, example.stderr)
            with trio.fail_after(STARTUP_GUARD_SECONDS):
                listening = await example.wait_for_output(LISTENING.pattern)
            example.port = int(listening[0].group(1))
            yield example
            if process.returncode is None:
                process.kill()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """A process's ``Vm*`` lines from ``/proc/PID/status``, in KiB (``VmRSS``, ``VmHWM``...)."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.startswith("Vm"):
                fields[name] = int(value.split()[0])
    return fields
