"""examples/http_server.py, run as a user runs it: a subprocess, curl, and raw sockets.

Each parser gets one server for most tests, started once with small limits
and a one-second head deadline so that every limit and the slowloris defence
are quick to reach, and a server of its own for the shutdown test, which
stops it. Every server must exit with status 0 and print no traceback. The
rules and the parsers are tested without sockets in ``test_http_parsing.py``.
"""

from __future__ import annotations

import random
import re
import select
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

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "http_server.py"
PARSER_NAMES = ["h11", "httptools"]

# Hang guards only: the server starts in about a second and answers in
# milliseconds; reaching these means it is stuck, not slow.
STARTUP_GUARD_SECONDS = 20
EXIT_GUARD_SECONDS = 20
IO_GUARD_SECONDS = 10

# The shared servers' limits: small, so that a test reaches each quickly.
MAX_HEAD_BYTES = 4096
MAX_HEADERS = 20
MAX_BODY_BYTES = 150_000
SHARED_FLAGS = [
    "--max-head-bytes", str(MAX_HEAD_BYTES),
    "--max-headers", str(MAX_HEADERS),
    "--max-body-bytes", str(MAX_BODY_BYTES),
    "--head-timeout", "1",
    "--keep-alive-timeout", "60",  # longer than the trickle: only the head deadline can end it
    "--access-log",
]  # fmt: skip

# The slowloris client sends a byte every TRICKLE_SECONDS, at most TRICKLE_BYTES of
# them: twenty seconds, far past the one-second head deadline.
TRICKLE_SECONDS = 0.1
TRICKLE_BYTES = 200

LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")
HELLO = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child")


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


@pytest.fixture(scope="module", params=PARSER_NAMES)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    """The example with small limits, shared by this module's tests, one per parser."""
    directory = tmp_path_factory.mktemp(f"http-{request.param}")
    started = start_example(request.param, directory, *SHARED_FLAGS)
    yield started
    stop_example(started)


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


# -- with curl ----------------------------------------------------------------------------


def test_curl_fetches_two_urls_over_one_kept_alive_connection(example: Example) -> None:
    printed = curl(
        "--write-out", " %{num_connects} %{http_code}\n", example.url("/"), example.url("/")
    )
    assert printed == b"hello 1 200\nhello 0 200\n"


def test_curl_uploads_a_chunked_body_and_gets_it_back(example: Example, tmp_path: Path) -> None:
    payload = random.Random(13).randbytes(100_000)
    upload = tmp_path / "upload"
    upload.write_bytes(payload)
    echoed = curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", example.url("/echo")
    )
    assert echoed == payload


def test_curl_gets_413_for_a_body_over_the_limit(example: Example, tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b"x" * (MAX_BODY_BYTES + 1))
    printed = curl(
        "--output", "/dev/null", "--write-out", "%{http_code}",
        "--data-binary", f"@{upload}", example.url("/echo"),
    )  # fmt: skip
    assert printed == b"413"


def test_each_request_gets_an_access_log_line(example: Example) -> None:
    assert curl(example.url("/access-log-check")) == b"not found\n"
    example.wait_for_output('"GET /access-log-check HTTP/1.1" 404 10 ')


# -- with raw sockets ---------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(example: Example) -> None:
    with Client(example.port) as client:
        client.send(
            HELLO
            + b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nabcde"
            + b"HEAD / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
        )
        assert client.answer().body == b"hello"
        assert client.answer(b"POST").body == b"abcde"
        last = client.answer(b"HEAD")
        assert (last.status, last.headers[b"content-length"], last.body) == (200, b"5", b"")
        assert last.headers[b"connection"] == b"close"
        assert client.at_eof()


@pytest.mark.parametrize(
    ("chunks", "body"), [(b"5\r\nhello\r\n0\r\n\r\n", b"hello"), (b"0\r\n\r\n", b"")]
)
def test_a_chunked_body_sent_after_100_continue_is_echoed(
    example: Example, chunks: bytes, body: bytes
) -> None:
    with Client(example.port) as client:
        client.send(
            b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        assert client.answer(b"POST").status == 100  # the body is not sent yet
        client.send(chunks + HELLO)
        echoed = client.answer(b"POST")
        assert (echoed.status, echoed.body) == (200, body)
        assert client.answer().body == b"hello"  # and the connection goes on


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nhost: test\r\n" + b"x-a: b\r\n" * MAX_HEADERS + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
         413),
        (b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
         + (b"ffff\r\n" + b"x" * 0xFFFF + b"\r\n") * 3, 413),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: ten\r\n\r\n", 400),
    ],
    ids=["head-bytes", "header-count", "content-length", "chunked-body", "request-line",
         "bad-content-length"],
)  # fmt: skip
def test_a_request_over_a_limit_or_malformed_is_refused_and_the_connection_closed(
    example: Example, request_bytes: bytes, status: int
) -> None:
    with Client(example.port) as client:
        client.send(request_bytes)
        refused = client.answer()
        assert refused.status == status
        assert refused.headers[b"connection"] == b"close"
        assert client.at_eof()


def test_a_client_trickling_its_head_is_closed_at_the_deadline(example: Example) -> None:
    # The slowloris attack: every byte arrives well within any inactivity timeout,
    # but the head never ends. The head deadline (one second here) closes it.
    with Client(example.port) as client:
        client.send(b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: ")
        for _ in range(TRICKLE_BYTES):
            try:
                client.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([client.sock], [], [], TRICKLE_SECONDS)
            if readable:
                assert client.at_eof(), "the server answered instead of closing"
                break
        else:
            raise AssertionError(
                f"still open after {TRICKLE_BYTES} bytes, one every {TRICKLE_SECONDS} s"
            )


@pytest.mark.parametrize("parser", PARSER_NAMES)
def test_shutdown_finishes_the_request_in_flight_with_connection_close(
    parser: str, tmp_path: Path
) -> None:
    # A keep-alive timeout longer than the guards: only the shutdown can close ``idle``.
    example = start_example(parser, tmp_path, "--keep-alive-timeout", "60")
    try:
        with Client(example.port) as idle, Client(example.port) as slow:
            idle.send(HELLO)
            assert idle.answer().body == b"hello"  # kept alive: now it waits for a request
            slow.send(
                b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n"
                b"expect: 100-continue\r\n\r\n"
            )
            assert slow.answer(b"POST").status == 100  # the server waits for this body
            slow.send(b"01234")
            example.process.send_signal(signal.SIGINT)
            example.wait_for_output("SIGINT: draining")
            assert idle.at_eof()  # nothing to finish: closed at once
            wait_until_refused(example.port)
            slow.send(b"56789")
            finished = slow.answer(b"POST")
            assert (finished.status, finished.body) == (200, b"0123456789")
            assert finished.headers[b"connection"] == b"close"
            assert slow.at_eof()
        assert_exits_cleanly(example)  # drained: it stops by itself
    finally:
        if example.process.poll() is None:
            example.process.kill()
            example.process.wait()
