"""The HTTP example under malformed input: issue 16's "Malformed input", its HTTP half.

Hypothesis writes what a broken or hostile client sends, and the example
(``examples/http_server.py``, one process per parser, as a user runs it)
must answer every bad request with a 4xx (or close the connection), never
hang, never fail a handler, and go on serving: after each input a fresh
connection still gets its hello, and the server has printed nothing on
stderr (a handler that raised would have logged there).

Two properties:

* a complete request that is surely malformed or over a limit, after any
  number of good pipelined ones, is answered with its 4xx and
  ``Connection: close``, and the connection is closed, while the client
  keeps its side open (so the close is the answer, not a timeout: the
  example's timeouts here are longer than the guards);
* any bytes at all (good requests cut, spliced, with bytes flipped, or plain
  noise), followed by the client's end of file: the server answers what it
  answers, no 5xx but h11's 501 for an unknown transfer coding, and closes.
"""

from __future__ import annotations

import pathlib
import re
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from fuzzing import run_short
from http_example_process import (
    HELLO,
    IO_GUARD_SECONDS,
    PARSER_NAMES,
    Client,
    Example,
    example_per_parser,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child")

MAX_HEAD_BYTES = 2048
MAX_HEADERS = 16
MAX_BODY_BYTES = 4096
FLAGS = [
    "--max-head-bytes", str(MAX_HEAD_BYTES),
    "--max-headers", str(MAX_HEADERS),
    "--max-body-bytes", str(MAX_BODY_BYTES),
    # Longer than every guard: a close the client sees within one is the server's answer.
    "--keep-alive-timeout", "60",
    "--head-timeout", "60",
    "--body-timeout", "60",
]  # fmt: skip

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,  # each example is a real exchange over loopback, as slow as the machine
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module", params=PARSER_NAMES)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    """The example with small limits and long timeouts, one per parser."""
    yield from example_per_parser(request, tmp_path_factory, FLAGS)


def assert_still_serving(example: Example, stderr_before: int) -> None:
    """A new client gets its hello, the process lives, and it has logged no error."""
    with Client(example.port) as client:
        client.send(HELLO)
        assert client.answer().body == b"hello"
    assert example.process.poll() is None, "the server exited"
    errors = example.stderr.read_bytes()
    assert len(errors) == stderr_before, errors[stderr_before:].decode(errors="replace")


# -- complete requests that are surely bad -----------------------------------------------

GOOD_REQUESTS = [
    HELLO,
    b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 3\r\n\r\nabc",
    b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nhost: test\r\n\r\n",
]
# Bytes no token (a method, a header name) may hold, for both parsers.
NOT_TOKEN = st.sampled_from(list(b'()<>@,;:\\"/[]?={} \x00\x01\x7f'))
# Bytes no request target may hold.
NOT_IN_TARGET = st.sampled_from(list(b" \x00\x01\x7f\x80\xff"))


def bad_method() -> st.SearchStrategy[tuple[bytes, int]]:
    return st.tuples(st.text("GETPOS", min_size=1, max_size=5), NOT_TOKEN, st.booleans()).map(
        lambda t: (
            (t[0].encode() + bytes([t[1]]) if t[2] else bytes([t[1]]) + t[0].encode())
            + b" / HTTP/1.1\r\nhost: test\r\n\r\n",
            400,
        )
    )


def bad_header_name() -> st.SearchStrategy[tuple[bytes, int]]:
    # Not a colon: "x:a: b" is the header "x" with the value "a: b".
    not_in_name = NOT_TOKEN.filter(lambda byte: byte != ord(":"))
    return st.tuples(st.text("xyz-", min_size=1, max_size=8), not_in_name).map(
        lambda t: (
            b"GET / HTTP/1.1\r\nhost: test\r\n" + t[0].encode() + bytes([t[1]]) + b"a: b\r\n\r\n",
            400,
        )
    )


def bad_target() -> st.SearchStrategy[tuple[bytes, int]]:
    return st.tuples(st.text("abc/", max_size=8), NOT_IN_TARGET).map(
        lambda t: (
            b"GET /" + t[0].encode() + bytes([t[1]]) + b"x HTTP/1.1\r\nhost: test\r\n\r\n",
            400,
        )
    )


SURELY_BAD = [
    (b"GET / HTTP/1.1x\r\nhost: test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: test\r\nno-colon-here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost : test\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: test\r\nx-a: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\rhost: test\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: -1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", 400),
    (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 1x\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXX\r\n", 400),
]


def over_a_limit() -> st.SearchStrategy[tuple[bytes, int]]:
    return st.one_of(
        st.integers(MAX_HEAD_BYTES, 2 * MAX_HEAD_BYTES).map(
            lambda n: (b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * n + b"\r\n\r\n", 431)
        ),
        st.integers(MAX_HEAD_BYTES, 2 * MAX_HEAD_BYTES).map(
            lambda n: (b"GET /" + b"a" * n + b" HTTP/1.1\r\nhost: test\r\n\r\n", 431)
        ),
        st.integers(MAX_HEADERS, 2 * MAX_HEADERS).map(
            lambda n: (b"GET / HTTP/1.1\r\nhost: test\r\n" + b"x-a: b\r\n" * n + b"\r\n", 431)
        ),
        st.integers(MAX_BODY_BYTES + 1, 1 << 40).map(
            lambda n: (b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % n, 413)
        ),
        st.integers(1, 0x7FF).map(
            lambda n: (
                b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
                + (b"%x\r\n%s\r\n" % (n, b"x" * n)) * (MAX_BODY_BYTES // n + 1),
                413,
            )
        ),
    )


surely_bad = st.one_of(
    st.sampled_from(SURELY_BAD), bad_method(), bad_header_name(), bad_target(), over_a_limit()
)


@pytest.mark.time_limit(120)
@FUZZ_SETTINGS
@given(
    good=st.lists(st.sampled_from(range(len(GOOD_REQUESTS))), max_size=3),
    bad=surely_bad,
    cuts=st.lists(st.floats(0, 1), max_size=3),
)
def test_a_bad_request_after_good_ones_gets_its_4xx_and_a_close(
    example: Example, good: list[int], bad: tuple[bytes, int], cuts: list[float]
) -> None:
    stderr_before = len(example.stderr.read_bytes())
    bad_request, status = bad
    wire = b"".join(GOOD_REQUESTS[i] for i in good) + bad_request
    with Client(example.port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bounds = sorted({0, len(wire), *(int(cut * len(wire)) for cut in cuts)})
        try:
            for start, end in zip(bounds, bounds[1:], strict=False):
                client.send(wire[start:end])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the client had sent it all: the answer is still there
        for i in good:
            method = GOOD_REQUESTS[i].split(b" ", 1)[0]
            assert client.answer(method).status in (200, 404)
        refused = client.answer()
        assert refused.status == status, refused
        assert refused.headers[b"connection"] == b"close"
        assert client.at_eof()
    assert_still_serving(example, stderr_before)


# -- any bytes, then the client's end of file --------------------------------------------

STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ")
# What the server may say: the app's answers, 100 Continue, the refusals, and h11's
# 501 for a transfer coding it does not know. Never a 500: that would be a failure.
ALLOWED_STATUSES = {100, 200, 404, 405, 400, 413, 431, 501}

TEMPLATES = [
    *GOOD_REQUESTS,
    b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello",
    b"HEAD / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\ntrailer: x\r\n\r\n",
]
SNIPPETS = [
    b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"0", b"-1", b"ffffffffffffffff",
    b"content-length: 7\r\n", b"transfer-encoding: chunked\r\n", b"transfer-encoding: gzip\r\n",
    b"expect: 100-continue\r\n", b"connection: close\r\n",
    b"upgrade: h2c\r\nconnection: upgrade\r\n",
    b"HTTP/1.1", b"HTTP/2.0", b" HTTP/1.1\r\n", b"\r\n\r\n", b"x-a: " + b"a" * 3000 + b"\r\n",
]  # fmt: skip


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Good requests cut, spliced and altered, or plain noise."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=400))
    wire = bytearray(b"".join(draw(st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut", "repeat"]))
        if action == "flip" and at < len(wire):
            wire[at] = draw(st.integers(0, 255))
        elif action == "insert":
            wire[at:at] = draw(st.one_of(st.sampled_from(SNIPPETS), st.binary(max_size=8)))
        elif action == "delete":
            del wire[at : at + draw(st.integers(1, 8))]
        elif action == "cut":
            del wire[at:]
        elif action == "repeat":
            wire[at:at] = wire[at : at + draw(st.integers(1, 40))]
    return bytes(wire) or b"\r\n"


@pytest.mark.time_limit(120)
@FUZZ_SETTINGS
@given(wire=mangled())
def test_any_bytes_then_eof_get_answers_and_a_close_never_a_hang(
    example: Example, wire: bytes
) -> None:
    stderr_before = len(example.stderr.read_bytes())
    received = bytearray()
    with socket.create_connection(("127.0.0.1", example.port), timeout=IO_GUARD_SECONDS) as sock:
        try:
            sock.sendall(wire)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed before the client had sent it all
        deadline = time.monotonic() + IO_GUARD_SECONDS
        try:
            while chunk := sock.recv(65536):
                received += chunk
                assert time.monotonic() < deadline, "the server never closed"
        except ConnectionResetError:
            pass  # closed with bytes unread: a close all the same
        except TimeoutError:
            raise AssertionError(
                f"no close in {IO_GUARD_SECONDS} s; got {bytes(received)!r}"
            ) from None
    statuses = {int(code) for code in STATUS_LINE.findall(received)}
    assert statuses <= ALLOWED_STATUSES, received
    assert_still_serving(example, stderr_before)


@pytest.mark.time_limit(90)
def test_atheris_finds_no_crash_and_no_hang_in_either_parser(tmp_path: pathlib.Path) -> None:
    # tests/fuzz_http_parser.py: each input fed whole, cut once and a byte at a
    # time must make the same conversation (finer pieces may only be refused
    # earlier, with a 431: http_conversation.agrees), refuse only with a 4xx
    # (or h11's 501) and raise nothing else; an input slower than 5 s is a hang.
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    run_short(pathlib.Path(__file__).with_name("fuzz_http_parser.py"), tmp_path)
