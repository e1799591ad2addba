"""``examples/http_server.py`` as a process, and the clients its tests talk to it with.

Shared by ``test_http_example.py`` (curl, raw sockets, wrk) and
``test_http_fuzz.py`` (malformed input): start the example on a free port
with a parser and flags, stop it as Ctrl-C does and check it exits cleanly,
and read its responses with h11 as a client. Every wait has a hang guard;
none is a timing assertion.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h11
import pytest
from example_process import EXIT_GUARD_SECONDS, LISTENING, REPO_ROOT, STARTUP_GUARD_SECONDS

EXAMPLE = REPO_ROOT / "examples" / "http_server.py"
PARSER_NAMES = ["h11", "httptools"]
# Hang guard for one exchange: the server answers in milliseconds.
IO_GUARD_SECONDS = 10
HELLO = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


# -- the server, as a process -------------------------------------------------------------


@dataclass
class Example:
    """A running ``http_server.py``: its process, port, and output files."""

    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT`` + ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for_output(self, text: str) -> None:
        """Wait until the server has printed ``text``."""
        deadline = time.monotonic() + IO_GUARD_SECONDS
        while text not in self.stdout.read_text():
            assert time.monotonic() < deadline, f"never printed {text!r}"
            time.sleep(0.02)


def start_example(parser: str, directory: Path, *flags: str) -> Example:
    """Start the example on a free port with ``parser`` and ``flags``; return once it listens."""
    stdout, stderr = directory / "stdout", directory / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", "--parser", parser, *flags],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + STARTUP_GUARD_SECONDS
    while (match := LISTENING.search(stdout.read_bytes())) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the example never listened: {stderr.read_text()}")
        time.sleep(0.02)
    return Example(process, int(match.group(1)), stdout, stderr)


def example_per_parser(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, flags: list[str]
) -> Iterator[Example]:
    """The body of a module fixture parametrized by parser: one example with ``flags``,
    stopped (and checked to exit cleanly) after the module's tests."""
    directory = tmp_path_factory.mktemp(f"http-{request.param}")
    started = start_example(request.param, directory, *flags)
    yield started
    stop_example(started)


def stop_example(example: Example) -> None:
    """Stop it as Ctrl-C does; it must exit 0 with no traceback."""
    example.process.send_signal(signal.SIGINT)
    assert_exits_cleanly(example)


def assert_exits_cleanly(example: Example) -> None:
    """Wait for the example to exit (killing it past the guard): status 0, no traceback."""
    try:
        returncode = example.process.wait(timeout=EXIT_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        example.process.kill()
        example.process.wait()
        raise
    errors = example.stderr.read_text()
    assert returncode == 0, errors
    assert "Traceback" not in errors, errors


# -- clients ------------------------------------------------------------------------------


def curl(*args: str) -> bytes:
    """Run curl (it must be installed: a real client, not ours) and return what it printed."""
    path = shutil.which("curl")
    if path is None:
        pytest.fail(
            "curl is not installed: these tests use it as a real HTTP client "
            "(apt-get install curl; the README's test command installs it)"
        )
    done = subprocess.run(
        [path, "--silent", "--show-error", "--max-time", str(IO_GUARD_SECONDS), *args],
        capture_output=True,
        timeout=IO_GUARD_SECONDS + 5,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


class Answer(NamedTuple):
    """A response as a client read it."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Client:
    """A raw socket that writes exactly what a test says, and reads responses with h11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_GUARD_SECONDS)
        self._h11 = h11.Connection(h11.CLIENT)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Write ``data`` as it is."""
        self.sock.sendall(data)

    def answer(self, method: bytes = b"GET") -> Answer:
        """The next response (a 100 Continue counts) to a request made with ``method``."""
        if self._h11.our_state is h11.IDLE:
            # h11 frames a response by the request it answers: tell it the method.
            self._h11.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"test")]))
            self._h11.send(h11.EndOfMessage())
        head = self._next_event()
        assert isinstance(head, h11.InformationalResponse | h11.Response), head
        body = bytearray()
        if isinstance(head, h11.Response):
            while isinstance(event := self._next_event(), h11.Data):
                body += event.data
            assert isinstance(event, h11.EndOfMessage), event
            if self._h11.our_state is self._h11.their_state is h11.DONE:
                self._h11.start_next_cycle()
        return Answer(head.status_code, dict(head.headers), bytes(body))

    def at_eof(self) -> bool:
        """Whether the server has closed the connection (waits for it to, or for the guard)."""
        return self.sock.recv(65536) == b""

    def _next_event(self) -> object:
        while (event := self._h11.next_event()) is h11.NEED_DATA:
            self._h11.receive_data(self.sock.recv(65536))
        return event


def wait_until_refused(port: int) -> None:
    """Connect until the server refuses: it stops accepting when a shutdown begins."""
    deadline = time.monotonic() + IO_GUARD_SECONDS
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=IO_GUARD_SECONDS).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the server still accepts connections")
