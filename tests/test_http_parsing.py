"""The HTTP example's sans-I/O parts: the limit rules, and the two parsers behind one interface.

``examples/http_limits.py`` and ``examples/http_parsers.py`` do no I/O, so
they are checked here without sockets: the rules against their definitions
(hypothesis), the parsers against each other on any split of a client's
bytes. ``test_http_example.py`` runs the server itself.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from http_conversation import Conversation, agrees, conversation  # noqa: E402
from http_limits import (  # noqa: E402
    FIRST_CHUNKED_CAPACITY,
    Limits,
    Refusal,
    body_capacity,
    check_declared_body,
    check_head,
    check_received_body,
    head_size,
)
from http_parsers import END, PARSERS, Event, Parser, Request, render_head  # noqa: E402

sizes = st.integers(min_value=1, max_value=1 << 24)
limits_st = st.builds(
    Limits, max_head_bytes=sizes, max_headers=st.integers(1, 200), max_body_bytes=sizes
)
tokens = st.binary(min_size=1, max_size=12).map(
    lambda raw: bytes(b"abcdefghijklmnopqrstuvwxyz-"[byte % 27] for byte in raw).strip(b"-") or b"x"
)
values = st.binary(max_size=30).map(
    lambda raw: bytes(b"abcdefghij0123456789 ;=/"[byte % 24] for byte in raw).strip()
)
headers_st = st.lists(st.tuples(tokens, values), max_size=8)


# -- the limit rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_head_bytes", 0),
        ("max_headers", -1),
        ("max_body_bytes", 0),
        ("head_seconds", 0),
        ("body_seconds", math.inf),
        ("keep_alive_seconds", math.nan),
    ],
)
def test_limits_reject_values_that_cannot_be_limits(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, 1.5, "10"])
def test_limits_reject_sizes_that_are_not_ints(bad: object) -> None:
    with pytest.raises(TypeError, match="max_body_bytes"):
        Limits(max_body_bytes=bad)  # type: ignore[arg-type]


@given(size=st.integers(0, 1 << 25), count=st.integers(0, 300), limits=limits_st)
def test_check_head_refuses_with_431_exactly_past_either_limit(
    size: int, count: int, limits: Limits
) -> None:
    over = size > limits.max_head_bytes or count > limits.max_headers
    if over:
        with pytest.raises(Refusal) as refused:
            check_head(size, count, limits)
        assert refused.value.status == 431
    else:
        check_head(size, count, limits)


@given(length=st.none() | st.integers(0, 1 << 25), limits=limits_st)
def test_check_declared_body_refuses_with_413_exactly_past_the_limit(
    length: int | None, limits: Limits
) -> None:
    if length is not None and length > limits.max_body_bytes:
        with pytest.raises(Refusal) as refused:
            check_declared_body(length, limits)
        assert refused.value.status == 413
    else:
        check_declared_body(length, limits)


@given(received=st.integers(0, 1 << 25), limits=limits_st)
def test_check_received_body_refuses_with_413_exactly_past_the_limit(
    received: int, limits: Limits
) -> None:
    if received > limits.max_body_bytes:
        with pytest.raises(Refusal) as refused:
            check_received_body(received, limits)
        assert refused.value.status == 413
    else:
        check_received_body(received, limits)


@given(method=tokens, target=tokens, headers=headers_st)
def test_head_size_is_the_length_of_the_head_written_out(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    written = method + b" /" + target + b" HTTP/1.1\r\n"
    written += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    assert head_size(method, b"/" + target, headers) == len(written)


@given(pieces=st.lists(st.integers(1, 70_000), max_size=40), limits=limits_st)
def test_a_growing_body_fits_and_is_copied_less_than_twice(
    pieces: list[int], limits: Limits
) -> None:
    length = capacity = copied = 0
    for piece in pieces:
        needed = length + piece
        if needed > limits.max_body_bytes:
            break  # check_received_body refuses it first
        if needed > capacity:
            grown = body_capacity(needed, capacity, limits)
            assert needed <= grown <= max(needed, limits.max_body_bytes)
            assert grown >= min(max(2 * capacity, FIRST_CHUNKED_CAPACITY), limits.max_body_bytes)
            copied += length  # the old buffer's bytes move to the new one
            capacity = grown
        length = needed
    assert copied < 2 * max(length, 1)


# -- the parsers --------------------------------------------------------------------------


# Header names a generated request must not use: they change its framing or the connection.
RESERVED = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
    b"te",
    b"trailer",
    b"keep-alive",
}
plain_headers = st.lists(
    st.tuples(tokens.filter(lambda name: name not in RESERVED), values), max_size=6
)
requests_st = st.lists(
    st.tuples(
        st.sampled_from([b"GET", b"POST", b"PUT"]),
        tokens,
        plain_headers,
        st.binary(max_size=300),
        st.booleans(),  # chunked
    ),
    min_size=1,
    max_size=4,
)


def written(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, chunked: bool
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A request on the wire, and the header list a parser should report for it."""
    headers = [(b"host", b"test"), *headers]
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        framed = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
                for i in range(0, len(body), 100)
            )
            + b"0\r\n\r\n"
        )
    else:
        headers.append((b"content-length", b"%d" % len(body)))
        framed = body
    head = method + b" /" + target + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    return head + framed, headers


def next_event(parser: Parser, pieces: list[bytes]) -> Event:
    """The parser's next event, feeding it the next piece while it needs more."""
    while (event := parser.next_event()) is None:
        parser.feed(pieces.pop(0))
    return event


def parse_all(parser_name: str, pieces: list[bytes], count: int) -> list[tuple[object, ...]]:
    """Run ``count`` requests through a parser, answering each; what it reported for each."""
    parser: Parser = PARSERS[parser_name](Limits())
    pieces = list(pieces)
    seen = []
    for _ in range(count):
        request = next_event(parser, pieces)
        assert isinstance(request, Request), request
        body = b""
        while (event := next_event(parser, pieces)) is not END:
            assert isinstance(event, bytes | bytearray), event
            body += event
        seen.append(
            (
                request.method,
                request.target,
                request.headers,
                request.content_length,
                request.keep_alive,
                request.expects_continue,
                body,
            )
        )
        parser.respond(200, [(b"content-length", b"0")], b"", close=False)
        parser.next_request()
    return seen


@settings(max_examples=200)
@given(requests=requests_st, data=st.data())
def test_both_parsers_report_pipelined_requests_as_sent_however_the_bytes_are_split(
    requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]],
    data: st.DataObject,
) -> None:
    stream = b""
    expected = []
    for method, target, headers, body, chunked in requests:
        wire, reported = written(method, target, headers, body, chunked)
        stream += wire
        length = None if chunked else len(body)
        expected.append((method, b"/" + target, reported, length, True, False, body))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    for name in PARSERS:
        assert parse_all(name, pieces, len(requests)) == expected, name


@pytest.fixture(params=sorted(PARSERS))
def parser_name(request: pytest.FixtureRequest) -> str:
    """The name of the parser under test ("h11" or "httptools")."""
    return str(request.param)


def refusal_for(parser_name: str, limits: Limits, *pieces: bytes) -> Refusal:
    """Feed ``pieces`` until the parser refuses; the refusal (fails if it never does)."""
    parser = PARSERS[parser_name](limits)
    for piece in pieces:
        parser.feed(piece)
        try:
            while parser.next_event() is not None:
                pass
        except Refusal as refusal:
            return refusal
    raise AssertionError("the parser took it all")


def test_a_complete_head_over_the_limit_is_431(parser_name: str) -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n"
    assert refusal_for(parser_name, Limits(max_head_bytes=1024), head).status == 431


def test_a_head_line_that_never_ends_is_431_once_over_the_limit(parser_name: str) -> None:
    # What the parser buffers of an unfinished head stays bounded.
    start = b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: "
    refusal = refusal_for(parser_name, Limits(max_head_bytes=1024), start, *[b"a" * 100] * 30)
    assert refusal.status == 431


def test_a_request_line_that_never_ends_is_431_once_over_the_limit(parser_name: str) -> None:
    # llhttp hands the target over piece by piece: each piece counts.
    refusal = refusal_for(parser_name, Limits(max_head_bytes=1024), b"GET /", *[b"a" * 100] * 30)
    assert refusal.status == 431


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


def test_trailer_fields_are_read_and_dropped(parser_name: str) -> None:
    parser = PARSERS[parser_name](Limits())
    parser.feed(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nx-checksum: 1\r\nx-more: 2\r\n\r\n")
    request = parser.next_event()
    assert isinstance(request, Request)
    assert request.headers == [(b"host", b"x"), (b"transfer-encoding", b"chunked")]
    assert bytes(next_event(parser, [])) == b"abc"  # type: ignore[arg-type]
    assert parser.next_event() is END


def test_a_trailer_line_that_never_ends_is_431_once_over_the_limit(parser_name: str) -> None:
    pieces = [CHUNKED_HEAD + b"0\r\nx-endless: ", *[b"a" * 100] * 30]
    assert refusal_for(parser_name, Limits(max_head_bytes=1024), *pieces).status == 431


# Inputs CI's atheris runs found (tests/fuzz_http_parser.py), with a 64-byte head limit:
# an unfinished head over the limit, whose last line came in the same read as lines that
# completed (httptools), and a complete head whose optional white space puts its raw
# bytes, but not its parsed size, over the limit (h11).
SMALL_HEAD_LIMIT = Limits(max_head_bytes=64, max_headers=4, max_body_bytes=32)
ARRIVAL_DEPENDENT_HEADS = [
    ("httptools", b"GET /xx HTTP/1.1\r\nHoEost:s HTTP/1.1\r\nHoEost:st: a\r\nt:  a\r\nHoEost: a\r"),
    ("httptools", b"\r\nGET /[[{[[[[[l[[[[[[[[[[{[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\r\n"),
    ("h11", b"GET / HTTP/1.1\r\nHost:" + b" " * 40 + b"a\r\n\r\n"),
]


@pytest.mark.parametrize(("parser_name", "sent"), ARRIVAL_DEPENDENT_HEADS)
def test_a_head_over_the_raw_limit_is_refused_in_fine_pieces_and_may_pass_whole(
    parser_name: str, sent: bytes
) -> None:
    # The allowance the fuzzers' ``agrees`` makes, on the inputs that showed it is needed:
    # whole, the head passes or waits; a byte at a time, the unfinished-head guard sees
    # more than 64 bytes held and refuses with 431, before any request.
    whole = conversation(parser_name, SMALL_HEAD_LIMIT, [sent])
    byte_by_byte = conversation(parser_name, SMALL_HEAD_LIMIT, [bytes([b]) for b in sent])
    assert whole.ending != "refused"
    assert (byte_by_byte.ending, byte_by_byte.status, byte_by_byte.requests) == ("refused", 431, ())
    assert agrees(whole, byte_by_byte)


def test_agrees_allows_only_an_earlier_431_in_finer_pieces() -> None:
    first = ((b"GET", b"/", (), None, True, False), b"")
    second = ((b"GET", b"/b", (), None, True, False), b"")
    waiting = Conversation("waiting", (first, second))
    assert agrees(waiting, Conversation("waiting", (first, second)))
    assert agrees(waiting, Conversation("refused", (first,), status=431))
    assert agrees(
        Conversation("refused", (first,), status=400), Conversation("refused", (first,), status=431)
    )
    # Any other difference is a fault: another status, other requests, the other direction.
    assert not agrees(waiting, Conversation("refused", (first,), status=400))
    assert not agrees(waiting, Conversation("refused", (second,), status=431))
    assert not agrees(waiting, Conversation("waiting", (first,)))
    assert not agrees(waiting, Conversation("waiting", (first, second), pending=first))
    assert not agrees(Conversation("refused", (first,), status=431), waiting)
    assert not agrees(Conversation("closed", (first,)), Conversation("waiting", (first,)))


def test_more_header_lines_than_allowed_is_431(parser_name: str) -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 20 + b"\r\n"
    assert refusal_for(parser_name, Limits(max_headers=10), head).status == 431


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
    ],
    ids=["request-line", "content-length", "header-line"],
)
def test_a_malformed_request_is_400(parser_name: str, request_bytes: bytes) -> None:
    assert refusal_for(parser_name, Limits(), request_bytes).status == 400


def test_a_refusal_comes_after_the_requests_pipelined_before_it(parser_name: str) -> None:
    parser = PARSERS[parser_name](Limits(max_headers=3))
    parser.feed(
        b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /second HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 5 + b"\r\n"
    )
    first = parser.next_event()
    assert isinstance(first, Request)
    assert first.target == b"/first"
    assert parser.next_event() is END
    parser.respond(200, [(b"content-length", b"0")], b"", close=False)
    parser.next_request()
    with pytest.raises(Refusal) as refused:
        parser.next_event()
    assert refused.value.status == 431


def test_an_upgrade_the_server_does_not_speak_is_ignored(parser_name: str) -> None:
    parser = PARSERS[parser_name](Limits())
    pieces = [
        b"GET /a HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
        b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"
    ]
    for target in (b"/a", b"/b"):
        request = next_event(parser, pieces)
        assert isinstance(request, Request)
        assert request.target == target
        assert parser.next_event() is END
        parser.respond(200, [(b"content-length", b"0")], b"", close=False)
        parser.next_request()


def test_expect_100_continue_is_reported_and_answered(parser_name: str) -> None:
    parser = PARSERS[parser_name](Limits())
    parser.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    request = parser.next_event()
    assert isinstance(request, Request)
    assert request.expects_continue
    assert parser.continue_response() == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", b"", True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, Close", False),
        (b"1.0", b"", False),
    ],
)
def test_keep_alive_is_what_the_client_asked_for(
    parser_name: str, version: bytes, connection: bytes, keep_alive: bool
) -> None:
    parser = PARSERS[parser_name](Limits())
    header = b"connection: " + connection + b"\r\n" if connection else b""
    parser.feed(b"GET / HTTP/" + version + b"\r\nhost: x\r\n" + header + b"\r\n")
    request = parser.next_event()
    assert isinstance(request, Request)
    assert request.keep_alive is keep_alive


# -- the response writer ------------------------------------------------------------------


@given(
    status=st.sampled_from([200, 201, 204, 301, 400, 404, 413, 431, 500, 503]),
    headers=plain_headers,
    close=st.booleans(),
)
def test_render_head_is_read_back_by_h11_as_written(
    status: int, headers: list[tuple[bytes, bytes]], close: bool
) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    headers = [*headers, (b"content-length", b"0")]
    client.receive_data(render_head(status, headers, close))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    expected = [*headers, (b"connection", b"close")] if close else headers
    assert list(response.headers) == expected


@pytest.mark.parametrize("value", [b"a\r\nx-injected: 1", b"a\nb"])
def test_render_head_refuses_a_header_that_would_write_another(value: bytes) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        render_head(200, [(b"x-a", value)], close=False)
