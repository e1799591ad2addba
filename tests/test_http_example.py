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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_example_process import (
    HELLO,
    IO_GUARD_SECONDS,
    PARSER_NAMES,
    Client,
    Example,
    assert_exits_cleanly,
    curl,
    example_per_parser,
    start_example,
    wait_until_refused,
)

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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child")


@pytest.fixture(scope="module", params=PARSER_NAMES)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    """The example with small limits, shared by this module's tests, one per parser."""
    yield from example_per_parser(request, tmp_path_factory, SHARED_FLAGS)


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


def test_curl_gets_431_for_more_header_lines_than_allowed(example: Example) -> None:
    headers = [arg for i in range(MAX_HEADERS) for arg in ("-H", f"x-extra-{i}: {i}")]
    printed = curl(
        "--output", "/dev/null", "--write-out", "%{http_code}", *headers, example.url("/")
    )
    assert printed == b"431"


def test_curl_gets_400_for_a_header_line_that_is_not_one(example: Example) -> None:
    # A space in a header name: no field-name token, so no header at all.
    printed = curl(
        "--output", "/dev/null", "--write-out", "%{http_code}",
        "-H", "bad header: x", example.url("/"),
    )  # fmt: skip
    assert printed == b"400"


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("parser", PARSER_NAMES)
def test_shutdown_finishes_the_request_in_flight_with_connection_close(
    parser: str, signum: signal.Signals, tmp_path: Path
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
            example.process.send_signal(signum)
            example.wait_for_output(f"{signum.name}: stopping")
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


# -- with wrk ------------------------------------------------------------------------------

WRK_STATUS = re.compile(rb"(\d+) requests in ")
WRK_PROBLEMS = re.compile(rb"Socket errors|Non-2xx or 3xx responses")


def test_wrk_gets_only_hellos(example: Example) -> None:
    # A functional check under load, never a timed one: every response is a 2xx and no
    # socket errs (wrk prints those lines only when it saw some).
    path = shutil.which("wrk")
    if path is None:
        pytest.fail("wrk is not installed (apt-get install wrk; the README's test command does)")
    done = subprocess.run(
        [path, "-t1", "-c20", "-d1s", "--timeout", "5s", example.url("/")],
        capture_output=True,
        timeout=IO_GUARD_SECONDS + 10,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    made = WRK_STATUS.search(done.stdout)
    assert made is not None and int(made.group(1)) > 0, done.stdout.decode()
    assert WRK_PROBLEMS.search(done.stdout) is None, done.stdout.decode()
