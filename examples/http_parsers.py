"""Two HTTP/1.1 request parsers behind one interface: h11 and httptools (llhttp), sans I/O.

This module owns turning bytes from a client into requests, and responses
into bytes, for ``http_server.py``. Neither parser does I/O: the server
feeds what it read and takes events out, so the reading, the deadlines and
the memory stay the server's, whichever parser it runs.

Events, in the order the client sent them:

* a ``Request``: a request head, checked against the head limits;
* ``bytes`` (or a ``bytearray``, from h11): a piece of that request's body,
  already de-chunked;
* ``END``: the end of that request;
* ``None``: nothing more until more bytes are fed.

A request the parser or a limit rejects raises ``http_limits.Refusal`` from
``next_event``, in order too: the requests that came before it on a
pipelined connection are answered first.

Why two. h11 is the reference: a pure-Python state machine that checks both
directions (its ``Connection`` decides keep-alive, rejects a response that
breaks framing). llhttp (Node's parser, through httptools, as uvicorn uses
it) is C and much faster, which matters because for a small request parsing
is most of the cost; it checks only the request, so responses are written
here (``render_head``). Two differences show through, and both are the
parsers' own: h11 closes HTTP/1.0 connections (llhttp keeps them alive when
asked), and h11 answers 501 to a transfer coding it does not know (llhttp:
400).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Protocol, TypeAlias

import h11
import httptools
from http_limits import (
    HEADER_LINE_FRAMING,
    REQUEST_LINE_FRAMING,
    Limits,
    Refusal,
    check_head,
    head_size,
)

__all__ = [
    "END",
    "PARSERS",
    "EndOfMessage",
    "Event",
    "H11Parser",
    "HttptoolsParser",
    "Parser",
    "Request",
    "render_head",
]


@dataclass(slots=True)
class Request:
    """A request as the application sees it: head fields as received, names lower-case.

    ``body`` is set by the server once the whole body is in: a view of a
    pooled buffer that stays valid until the response has been sent (copy
    it with ``bytes(request.body)`` to keep it longer).
    """

    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    #: The declared body size; None without ``Content-Length`` (chunked, or no body).
    content_length: int | None = None
    #: The client sent ``Expect: 100-continue`` and waits for a 100 before the body.
    expects_continue: bool = False
    #: The client allows another request after this one (its version and ``Connection``).
    keep_alive: bool = True
    body: bytes | memoryview = field(default=b"", repr=False)


class EndOfMessage:
    """The type of ``END``: the current request's body is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfMessage()

Event: TypeAlias = Request | bytes | bytearray | EndOfMessage | None


class Parser(Protocol):
    """What the server needs from a parser (``H11Parser`` and ``HttptoolsParser`` have it)."""

    def __init__(self, limits: Limits) -> None: ...

    @property
    def idle(self) -> bool:
        """No byte of a next request has arrived (valid after ``next_event`` returned None)."""

    def feed(self, data: bytes) -> None:
        """Take bytes read from the client (never empty: the server handles EOF itself)."""

    def next_event(self) -> Event:
        """The next event, None if more bytes are needed; raises ``Refusal`` in its turn."""

    def continue_response(self) -> bytes:
        """``100 Continue`` on the wire: the client may send the body."""

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | memoryview,
        close: bool,
    ) -> tuple[bytes, bool]:
        """The response head on the wire (``body`` is sent after it, as it is), and whether
        the connection stays open after it. ``close``: end the connection after this one."""

    def next_request(self) -> None:
        """Start on the next request (the last one was answered and the connection stays)."""


# Status lines, built once: "HTTP/1.1 200 OK\r\n".
REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
STATUS_LINES: Final = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# llhttp reports the version as a str; these are the ones a request can have.
VERSIONS: Final = {"1.0": b"1.0", "1.1": b"1.1"}


def render_head(status: int, headers: Sequence[tuple[bytes, bytes]], close: bool) -> bytes:
    """A response head on the wire: the status line, the headers, ``Connection: close`` if
    ``close``, the blank line. Headers are the application's: a CR or LF in one would let
    it write another header or a second response, so that is a ``ValueError`` (h11 checks
    the same)."""
    parts = [STATUS_LINES[status]]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a name or a value shows as one line end too many: counting them
    # in the whole head is two passes of C, three times faster than checking each header.
    lines = len(headers) + 2 + close
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError(f"CR or LF in a response header: {head!r}")
    return head


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    # Both parsers have checked it already: digits, and one value however often sent.
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


class H11Parser:
    """h11's server-side ``Connection``, in this module's events.

    h11 buffers at most ``max_head_bytes`` of an incomplete head (its
    ``max_incomplete_event_size``) and answers 431 past it; the complete head
    is then checked by ``check_head`` like llhttp's.
    """

    __slots__ = ("_conn", "_limits")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)

    @property
    def idle(self) -> bool:
        """No byte of a next request has arrived (valid after ``next_event`` returned None)."""
        conn = self._conn
        # After None the buffer holds at most an incomplete head: a short copy.
        return conn.their_state is h11.IDLE and not conn.trailing_data[0]

    def feed(self, data: bytes) -> None:
        """Take bytes read from the client."""
        self._conn.receive_data(data)

    def next_event(self) -> Event:
        """The next event, None if more bytes are needed; raises ``Refusal`` in its turn."""
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise Refusal(exc.error_status_hint, str(exc)) from None
        if isinstance(event, h11.Data):
            return event.data
        if isinstance(event, h11.Request):
            return self._request(event)
        if isinstance(event, h11.EndOfMessage):
            return END
        # NEED_DATA, or PAUSED (a pipelined request waits for our response). h11 makes
        # ConnectionClosed only from an EOF, and the server never feeds one.
        return None

    def _request(self, event: h11.Request) -> Request:
        headers = list(event.headers)
        check_head(head_size(event.method, event.target, headers), len(headers), self._limits)
        return Request(
            event.method,
            event.target,
            event.http_version,
            headers,
            _declared_length(headers),
            self._conn.they_are_waiting_for_100_continue,
            _h11_keeps_alive(event.http_version, headers),
        )

    def continue_response(self) -> bytes:
        """``100 Continue`` on the wire."""
        continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        return self._conn.send(continue_)

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | memoryview,
        close: bool,
    ) -> tuple[bytes, bool]:
        """The response head, and whether h11 keeps the connection open after it."""
        conn = self._conn
        if close:
            headers.append((b"connection", b"close"))
        head = conn.send(h11.Response(status_code=status, headers=headers, reason=REASONS[status]))
        if body:
            # Passed through, not joined: h11 counts the bytes against Content-Length.
            conn.send_with_data_passthrough(h11.Data(data=body))  # type: ignore[arg-type]
        conn.send(h11.EndOfMessage())
        return head, conn.our_state is h11.DONE

    def next_request(self) -> None:
        """Start on the next request."""
        self._conn.start_next_cycle()


def _h11_keeps_alive(http_version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """h11's rule (it keeps no HTTP/1.0 connection): 1.1, and no ``close`` in ``Connection``."""
    if http_version < b"1.1":
        return False
    for name, value in headers:
        if name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
            return False
    return True


class HttptoolsParser:
    """llhttp through httptools: its callbacks build this module's events as it parses.

    httptools parses every byte fed at once, so a read holding several
    pipelined requests yields all their events; they wait here, in order,
    until the server takes them. Its buffer is bounded by what one read
    brings.

    llhttp has no head limit of its own, and httptools joins the pieces of a
    header line before it calls ``on_header``. So the head is counted twice:
    exactly, adding up ``head_size`` as ``on_url`` and ``on_header`` come,
    against ``check_head``; and, for a header line that never ends (whose
    pieces httptools is holding), every read that made no callback in the
    middle of a request is counted whole. Either over ``max_head_bytes`` is a
    431. Trailer fields (after a chunked body) are counted the same way, from
    zero, and dropped, as h11 counts them.

    The callbacks run for every request, so they do little: the head's
    fields are found when it is complete.
    """

    __slots__ = (
        "_events",
        "_head_bytes",
        "_progressed",
        "_headers",
        "_in_message",
        "_limits",
        "_parser",
        "_target",
        "_unseen_head_bytes",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        # Events parsed and not yet taken. A list, not a deque: a deque costs
        # 600 bytes per idle connection, and this list holds a request's two
        # events at most, but for pipelining.
        self._events: list[Event | Refusal] = []
        self._in_message = False
        # The head being parsed (None after it), and its size so far; after the
        # head, the size of the trailer fields so far.
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._target = b""
        self._head_bytes = 0
        # Whether the last read made a callback, and what reads that made none brought.
        self._progressed = False
        self._unseen_head_bytes = 0

    @property
    def idle(self) -> bool:
        """No byte of a next request has arrived (valid after ``next_event`` returned None)."""
        return not self._in_message

    def feed(self, data: bytes) -> None:
        """Parse ``data``; the events (or a Refusal) wait for ``next_event``."""
        self._progressed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # An Upgrade this server does not speak (h2c, websocket): ignore it,
            # as RFC 9110 (7.8) allows and h11 does, and parse on.
            self.feed(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, Refusal):
                raise
            self._events.append(exc.__context__)
            return
        except httptools.HttpParserError as exc:
            self._events.append(Refusal(400, str(exc)))
            return
        if self._in_message:
            # Reads that made no callback may be pieces of a header or trailer line
            # that httptools is holding: they count. Checked here for the request
            # line too, which on_url may bring piece by piece.
            if self._progressed:
                self._unseen_head_bytes = 0
            else:
                self._unseen_head_bytes += len(data)
            limit = self._limits.max_head_bytes
            if self._head_bytes + self._unseen_head_bytes > limit:
                self._events.append(Refusal(431, f"request head over {limit} bytes"))

    def next_event(self) -> Event:
        """The next event, None if more bytes are needed; raises ``Refusal`` in its turn."""
        events = self._events
        if not events:
            return None
        event = events.pop(0)
        if isinstance(event, Refusal):
            raise event
        return event

    # -- httptools callbacks: build the events --------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._progressed = True
        self._headers = []
        self._target = b""
        self._head_bytes = REQUEST_LINE_FRAMING  # and the method's length, once known

    def on_url(self, piece: bytes) -> None:
        self._progressed = True
        self._target += piece
        self._head_bytes += len(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progressed = True
        self._head_bytes = size = self._head_bytes + len(name) + len(value) + HEADER_LINE_FRAMING
        headers = self._headers
        if headers is None:
            # A trailer field, after a chunked body: counted against the head limit
            # (as h11 counts it), then dropped (the application sees no trailers).
            check_head(size, 0, self._limits)
            return
        headers.append((name.lower(), value))
        limits = self._limits
        # check_head's rule, compared here first: it runs for every header line.
        if size > limits.max_head_bytes or len(headers) > limits.max_headers:
            check_head(size, len(headers), limits)

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        assert headers is not None
        method: bytes = parser.get_method()
        check_head(self._head_bytes + len(method), len(headers), self._limits)  # head_size
        said = parser.get_http_version()
        version = VERSIONS.get(said) or said.encode()
        self._headers = None
        self._head_bytes = 0  # now the trailers' size
        # _declared_length and _expects_continue in one pass (llhttp checked the length).
        length = None
        expects_continue = False
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                expects_continue = version == b"1.1"
        self._events.append(
            Request(
                method,
                self._target,
                version,
                headers,
                length,
                expects_continue,
                parser.should_keep_alive(),
            )
        )

    def on_body(self, piece: bytes) -> None:
        self._progressed = True
        self._events.append(piece)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._progressed = True
        self._events.append(END)

    # -- responses ----------------------------------------------------------------------

    def continue_response(self) -> bytes:
        """``100 Continue`` on the wire."""
        return CONTINUE

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | memoryview,
        close: bool,
    ) -> tuple[bytes, bool]:
        """The response head, and ``not close`` (the server decides keep-alive here)."""
        return render_head(status, headers, close), not close

    def next_request(self) -> None:
        """Start on the next request (its events may be here already)."""


#: The parsers by their command-line names.
PARSERS: Final[dict[str, type[H11Parser] | type[HttptoolsParser]]] = {
    "h11": H11Parser,
    "httptools": HttptoolsParser,
}
