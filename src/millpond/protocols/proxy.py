"""Reading a PROXY protocol header (v1 text or v2 binary): an incremental parser with no I/O.

This module owns the reading: the state machine that takes the bytes at the start of a
connection as they arrive and says when they make a header, and where it ends. The grammar of
each version is in ``_proxy_v1.py`` (the line) and ``_proxy_v2.py`` (the binary layout), the
values and TLV rules in ``proxy_header.py``; writing headers is ``proxy_build.py``. The
specification is HAProxy's ``doc/proxy-protocol.txt``; section numbers are its own.

The decision: a state machine, fed as the bytes arrive
------------------------------------------------------
A load balancer sends the header as the first bytes of the connection, often in the same
segment as the client's first data, and nothing forces it to arrive in one piece (section 2:
"TCP is a streaming protocol which may be processed one byte at a time"). So the parser is
an object the server feeds with whatever each read returned. Each ``feed`` answers one of:

* :class:`NeedMore`: the header is not complete. ``at_least`` more bytes are certainly part
  of it (a read of at most that many never reads past it), and it ends within ``at_most``
  more bytes or is refused.
* :class:`Parsed`: the header, how many bytes of the stream it took, and ``rest``, whatever
  the last feed carried after it: the application's first data, untouched.
* :class:`~millpond.protocols.proxy_header.ProxyProtocolError`, with a reason to log. Every
  later ``feed`` raises it again.

The state machine is written out as a table (``_TRANSITIONS``), after h11's ``_state.py``.
In ``"auto"`` mode the first byte decides: ``P`` starts a v1 line, ``\\r`` the v2 signature
(section 2.2, "both formats are easily distinguishable"); anything else fails at once, so an
HTTP request sent to a PROXY port is refused on its first byte.

Why this cannot hang, or hold much, or lose data
------------------------------------------------
* It never buffers more than the header: at most 107 bytes for v1 (section 2.1), and for v2
  16 bytes until the length is known, then exactly the declared length, which is refused at
  once, before waiting for it, if it exceeds ``max_v2_length``. A peer that sends nothing
  more is the caller's timeout; everything else is refused within those bounds.
* Errors are reported at the earliest byte that shows them (the signature byte by byte, the
  version, command and family bytes, the length, then the body), and the checks on a prefix
  are the same whatever the split, so the outcome of a byte sequence does not depend on how
  it was cut into reads (the tests check this for random splits).
* Bytes after the header are never looked at: ``rest`` is a copy of them as given.

What it costs: a v1 line is rescanned from its start on each feed (at most 107 bytes, with
C-speed ``bytes`` methods), and a header that arrives in pieces is copied into a small
``bytearray``. A whole header in one read is parsed from that read's bytes.

Prior art: HAProxy's ``conn_recv_proxy`` (``src/connection.c``) peeks at the socket
(``MSG_PEEK``) and refuses a partial header; this parser accepts any split, as the
specification recommends ("Recommendation is to be tolerant").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from . import _proxy_v1 as v1
from . import _proxy_v2 as v2
from .proxy_header import ProxyHeader, ProxyProtocolError

__all__ = [
    "DEFAULT_MAX_V2_LENGTH",
    "NeedMore",
    "Parsed",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "parse_header",
]


# The default bound on a whole v2 header. Addresses take at most 216 bytes (two UNIX paths),
# and the TLVs HAProxy sends (ALPN, authority, unique ID up to 128 bytes, SSL with its version,
# cipher and CN strings, netns, CRC32C) keep a real header under 1 KiB; the largest registered
# TLV, the client certificate in DER (sub-TLV 0x28), is 1 to 2 KiB. 4 KiB admits all of them,
# while a peer that claims 64 KiB is refused at its 16th byte instead of costing each pending
# connection 64 KiB before anything in the header was checked. Raise it for a proxy that
# sends more; HAProxy itself refuses any TLV over 1 KiB (HA_PP2_MAX_ALLOC).
DEFAULT_MAX_V2_LENGTH: Final = 4096

_CR: Final = 0x0D


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The header is not complete yet: feed more bytes.

    ``at_least``: this many more bytes are certainly header (a read of at most this many
    cannot take application data). ``at_most``: a valid header ends within this many more
    bytes (for v2, once its length is known, both are exact).
    """

    at_least: int
    at_most: int


@dataclass(frozen=True, slots=True)
class Parsed:
    """A complete header.

    ``consumed`` is its length in bytes, counted from the start of the stream; ``rest`` is
    what the last feed carried after it, the application's first data, exactly as given.
    """

    header: ProxyHeader
    consumed: int
    rest: bytes


# The parser's states and the events that move it, as plain strings: module constants are
# read at C speed, where an Enum member costs a Python-level __hash__ in every table lookup
# (it tripled the cost of parsing a whole header).
_START: Final = "start"  # "auto", no byte yet: the first byte picks the version
_V1_LINE: Final = "v1-line"  # reading a v1 line up to its CRLF
_V2_FIXED: Final = "v2-fixed"  # reading v2's first 16 bytes
_V2_BODY: Final = "v2-body"  # v2's length is known: reading addresses and TLVs
_DONE: Final = "done"  # a header was parsed; later bytes are the application's
_FAILED: Final = "failed"  # refused; every later feed raises the same error

_SAW_P: Final = "first byte 'P'"
_SAW_CR: Final = "first byte CR"
_GOT_LENGTH: Final = "v2's 16 fixed bytes are valid"
_GOT_HEADER: Final = "a whole valid header"
_MALFORMED: Final = "malformed, too long, or the stream ended"

# Every move the parser can make; anything else is a bug (the tests walk this table).
_TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    _START: {
        _SAW_P: _V1_LINE,
        _SAW_CR: _V2_FIXED,
        _MALFORMED: _FAILED,
    },
    _V1_LINE: {_GOT_HEADER: _DONE, _MALFORMED: _FAILED},
    _V2_FIXED: {_GOT_LENGTH: _V2_BODY, _MALFORMED: _FAILED},
    _V2_BODY: {_GOT_HEADER: _DONE, _MALFORMED: _FAILED},
    _DONE: {},
    _FAILED: {},
}

_INITIAL: Final[dict[str, str]] = {
    "auto": _START,
    "v1": _V1_LINE,
    "v2": _V2_FIXED,
}


# --- the parser ----------------------------------------------------------------------------


class ProxyHeaderParser:
    """Reads the PROXY protocol header at the start of a connection, from bytes fed to it.

    A server behind a load balancer (HAProxy's ``send-proxy`` / ``send-proxy-v2``) reads the
    header before anything else and feeds it here, however the reads split it::

        parser = ProxyHeaderParser("auto")
        while True:
            answer = parser.feed(await stream.receive_some())   # raises ProxyProtocolError
            if isinstance(answer, Parsed):
                break
        header, first_data = answer.header, answer.rest

    ``version``: ``"v1"``, ``"v2"``, or ``"auto"`` (either; the first byte tells). The
    specification asks the receiver to be configured for the protocol, never to guess whether
    a header is there: a connection without one fails here.

    ``max_v2_length``: the longest v2 header accepted, fixed part included (default
    :data:`DEFAULT_MAX_V2_LENGTH`, 4096); a longer one is refused as soon as its length field
    arrives. A v1 line is at most 107 bytes, always.

    The parser does no I/O and holds at most one header's bytes. After a header, further
    ``feed`` calls return the same header with the new bytes as ``rest`` (they are the
    application's); after an error, they raise the same error.
    """

    __slots__ = ("_buffer", "_max_v2_length", "_reason", "_result", "_state", "_total")

    def __init__(
        self,
        version: Literal["v1", "v2", "auto"] = "auto",
        *,
        max_v2_length: int = DEFAULT_MAX_V2_LENGTH,
    ) -> None:
        if version not in _INITIAL:
            raise ValueError(f"version must be 'v1', 'v2' or 'auto', not {version!r}")
        if not isinstance(max_v2_length, int) or isinstance(max_v2_length, bool):
            raise TypeError(f"max_v2_length must be an int, not {type(max_v2_length).__name__}")
        if not v2.FIXED_LENGTH <= max_v2_length <= v2.LONGEST:
            raise ValueError(
                f"max_v2_length must be from {v2.FIXED_LENGTH} to {v2.LONGEST}, not {max_v2_length}"
            )
        self._state = _INITIAL[version]
        self._max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._total = 0  # a v2 header's whole length, once known
        self._reason = ""
        self._result: Parsed | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> NeedMore | Parsed:
        """Take the next bytes of the connection; say what is known so far.

        Returns :class:`NeedMore` or :class:`Parsed`; raises
        :class:`~millpond.protocols.proxy_header.ProxyProtocolError` for a malformed or refused
        header. Empty ``data`` changes nothing (the end of the stream is :meth:`feed_eof`).
        """
        state = self._state
        if state is _DONE:
            assert self._result is not None
            return Parsed(self._result.header, self._result.consumed, bytes(data))
        if state is _FAILED:
            raise ProxyProtocolError(self._reason)
        view = memoryview(data).cast("B")
        if not view:
            return self._need_more()
        try:
            if state is _START:
                self._start(view[0])
            if self._state is _V1_LINE:
                return self._feed_v1(view)
            return self._feed_v2(view)
        except ProxyProtocolError as error:
            self._fail(str(error))
            raise

    def feed_eof(self) -> Parsed:
        """The connection ended (a read returned no bytes).

        Returns the header if it was complete (with empty ``rest``); otherwise the header is
        truncated, and this raises :class:`~millpond.protocols.proxy_header.ProxyProtocolError`
        (section 2.2: "The receiver must also reject incoming connections containing partial
        protocol headers").
        """
        if self._state is _DONE:
            assert self._result is not None
            return Parsed(self._result.header, self._result.consumed, b"")
        if self._state is not _FAILED:
            received = len(self._buffer)
            self._fail(
                f"the connection ended after {received} bytes of a PROXY header"
                if received
                else "the connection ended before a PROXY header"
            )
        raise ProxyProtocolError(self._reason)

    # -- the moves

    def _move(self, event: str) -> None:
        self._state = _TRANSITIONS[self._state][event]

    def _fail(self, reason: str) -> None:
        self._move(_MALFORMED)
        self._reason = reason
        self._buffer = bytearray()

    def _start(self, first: int) -> None:
        if first == v1.SIGNATURE[0]:
            self._move(_SAW_P)
        elif first == v2.SIGNATURE[0]:
            self._move(_SAW_CR)
        else:
            raise ProxyProtocolError(
                f"not a PROXY header: the first byte is 0x{first:02x}, neither 'P' (v1) nor "
                "0x0d (v2)"
            )

    def _complete(self, header: ProxyHeader, consumed: int, rest: memoryview) -> Parsed:
        self._move(_GOT_HEADER)
        self._result = Parsed(header, consumed, bytes(rest))
        self._buffer = bytearray()
        return self._result

    def _need_more(self) -> NeedMore:
        received = len(self._buffer)
        state = self._state
        if state is _START:
            return NeedMore(v1.MIN_LENGTH, max(v1.MAX_LENGTH, self._max_v2_length))
        if state is _V1_LINE:
            # A trailing CR may be one LF away from the end; otherwise a CRLF is still to come.
            pending = 1 if received and self._buffer[-1] == _CR else 2
            return NeedMore(max(pending, v1.MIN_LENGTH - received), v1.MAX_LENGTH - received)
        if state is _V2_FIXED:
            return NeedMore(v2.FIXED_LENGTH - received, self._max_v2_length - received)
        remaining = self._total - received
        return NeedMore(remaining, remaining)

    def _feed_v1(self, view: memoryview) -> NeedMore | Parsed:
        buffer = self._buffer
        held = len(buffer)
        buffer += view[: v1.MAX_LENGTH - held]
        if held < 6:
            # No CR or LF belongs in "PROXY ", so its bytes are checked as they come, before
            # looking for the end of the line.
            v1.check_signature(bytes(buffer[:6]))
        end = buffer.find(b"\r\n", max(held - 1, 0))
        if end >= 0:
            line = bytes(buffer[:end])
            v1.check_prefix(line, complete=True)
            return self._complete(v1.decode(line), end + 2, view[end + 2 - held :])
        # A trailing CR may be the start of the CRLF; whatever comes before it is the line so
        # far. The CRLF must end by byte 107, so the line has at most 105 bytes: the first 106
        # are checked (as a split into shorter reads would have checked them) before that.
        content = bytes(buffer[:-1] if buffer[-1] == _CR else buffer)
        v1.check_prefix(content[: v1.MAX_LENGTH - 1], complete=False)
        if len(content) > v1.MAX_LENGTH - 2:
            raise ProxyProtocolError(f"v1: no CRLF in the first {v1.MAX_LENGTH} bytes")
        return self._need_more()

    def _feed_v2(self, view: memoryview) -> NeedMore | Parsed:
        buffer = self._buffer
        taken = 0
        if self._state is _V2_FIXED:
            taken = min(v2.FIXED_LENGTH - len(buffer), len(view))
            buffer += view[:taken]
            v2.check_fixed(bytes(buffer), self._max_v2_length)
            if len(buffer) < v2.FIXED_LENGTH:
                return self._need_more()
            self._total = v2.FIXED_LENGTH + (buffer[14] << 8 | buffer[15])
            self._move(_GOT_LENGTH)
        more = self._total - len(buffer)
        buffer += view[taken : taken + more]
        if len(buffer) < self._total:
            return self._need_more()
        return self._complete(v2.decode(bytes(buffer)), self._total, view[taken + more :])


def parse_header(
    data: bytes | bytearray | memoryview,
    version: Literal["v1", "v2", "auto"] = "auto",
    *,
    max_v2_length: int = DEFAULT_MAX_V2_LENGTH,
) -> Parsed:
    """Parse a header that must be complete in ``data``: one read, or one datagram.

    Section 2: "the receiver MUST parse the header independently for each received
    datagram". Raises :class:`~millpond.protocols.proxy_header.ProxyProtocolError` if
    ``data`` holds a malformed header or only part of one.
    """
    parser = ProxyHeaderParser(version, max_v2_length=max_v2_length)
    answer = parser.feed(data)
    if isinstance(answer, Parsed):
        return answer
    return parser.feed_eof()
