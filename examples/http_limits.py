"""What an HTTP/1.1 request may cost the server, as pure rules: numbers in, a verdict out.

This module owns the limits of ``http_server.py`` and nothing else: how large
a request head may be, how many header lines it may have, how large a body
may be, how long each part may take to arrive, and how a body's buffer grows.
It does no I/O, so every rule is tested on its own
(``tests/test_http_example.py`` checks them with hypothesis); the server asks
the rules and does the reading, the answering and the closing.

A request over a limit is refused with the status RFC 9110 gives it, and the
connection is closed after the answer (what follows on it cannot be trusted
to be a new request):

==================================  ======  =================================
what                                status  decided by
==================================  ======  =================================
head over ``max_head_bytes``        431     ``check_head`` (and the parsers,
                                            while the head is incomplete)
more than ``max_headers`` lines     431     ``check_head``
``Content-Length`` over the limit   413     ``check_declared_body``, before a
                                            byte of the body is read
chunked body growing over it        413     ``check_received_body``
malformed request                   400     the parser (h11 or llhttp)
==================================  ======  =================================

The head's size is measured the same way whichever parser read it: the
request line and the header lines as ``head_size`` writes them out. Time
limits are not verdicts: the server turns them into its connection's
deadline (``Connection.deadline``), which closes the connection when it
passes, answered or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

# Defaults, and where they come from.
# 16 KiB of head: h11's max_incomplete_event_size and Node's --max-http-header-size.
DEFAULT_MAX_HEAD_BYTES: Final = 16 * 1024
# 100 header lines: Apache's LimitRequestFields, and what h11's default size allows
# for lines of a typical length anyway.
DEFAULT_MAX_HEADERS: Final = 100
# 1 MiB of body: nginx's client_max_body_size. A body is held in the server's
# memory budget until the response is sent, so this is also what one request may
# take of it.
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
# 5 s for the first byte of a request on an open connection: uvicorn's keep-alive
# timeout. Idle clients (browsers keep connections for minutes) cost a socket each.
DEFAULT_KEEP_ALIVE_SECONDS: Final = 5.0
# 10 s for the whole head once its first byte came: a client that trickles a byte a
# second keeps every inactivity timeout happy, not a total (the slowloris attack).
DEFAULT_HEAD_SECONDS: Final = 10.0
# 60 s for the whole body: nginx's client_body_timeout (which is per read there; a
# total is the stricter defence, and 1 MiB in 60 s is 17 KiB/s).
DEFAULT_BODY_SECONDS: Final = 60.0
# First buffer of a body of unknown length (chunked): 16 KiB, a size class of the
# pool, so a small chunked upload takes one lease and a large one doubles from there.
FIRST_CHUNKED_CAPACITY: Final = 16 * 1024


class Refusal(Exception):
    """A request the server answers with an error ``status`` and then closes the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {HTTPStatus(status).phrase}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """How much a request may cost: sizes in bytes, times in seconds.

    Checked when made, so a bad command-line value is an error at start, not
    at the first request::

        limits = Limits(max_body_bytes=64 * 1024, head_seconds=5)
    """

    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS
    head_seconds: float = DEFAULT_HEAD_SECONDS
    body_seconds: float = DEFAULT_BODY_SECONDS

    def __post_init__(self) -> None:
        for name in ("max_head_bytes", "max_headers", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, not {value}")
        for name in ("keep_alive_seconds", "head_seconds", "body_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, not {value}")


# What a head takes besides its method, target, names and values (see head_size).
REQUEST_LINE_FRAMING: Final = len(b"  HTTP/1.1\r\n\r\n")  # two spaces, version, two line ends
HEADER_LINE_FRAMING: Final = len(b": \r\n")


def head_size(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> int:
    """Bytes of ``METHOD target HTTP/1.1\\r\\n``, one ``name: value\\r\\n`` per header, ``\\r\\n``.

    The measure ``max_head_bytes`` applies to, the same for every parser: what
    the head takes once parsed (optional white space and line folding, which
    parsers drop, are not counted). A parser that sees the head piece by piece
    may add it up as it goes (``HttptoolsParser`` does): the same sum.
    """
    size = len(method) + len(target) + REQUEST_LINE_FRAMING
    for name, value in headers:
        size += len(name) + len(value) + HEADER_LINE_FRAMING
    return size


def check_head(size: int, header_count: int, limits: Limits) -> None:
    """Refuse (431) a head over ``max_head_bytes`` or with over ``max_headers`` lines."""
    if size > limits.max_head_bytes:
        raise Refusal(431, f"request head over {limits.max_head_bytes} bytes")
    if header_count > limits.max_headers:
        raise Refusal(431, f"more than {limits.max_headers} header lines")


def check_declared_body(content_length: int | None, limits: Limits) -> None:
    """Refuse (413) a ``Content-Length`` over ``max_body_bytes``, before reading the body."""
    if content_length is not None and content_length > limits.max_body_bytes:
        raise Refusal(413, f"body of {content_length} bytes, over {limits.max_body_bytes}")


def check_received_body(received: int, limits: Limits) -> None:
    """Refuse (413) a body that has grown over ``max_body_bytes`` (chunked: no length ahead)."""
    if received > limits.max_body_bytes:
        raise Refusal(413, f"body over {limits.max_body_bytes} bytes")


def body_capacity(needed: int, current: int, limits: Limits) -> int:
    """The size of the next buffer for a body that needs ``needed`` bytes and has ``current``.

    At least ``needed``; otherwise double (a chunked body of n bytes is copied
    less than 2n bytes in all while it grows), from ``FIRST_CHUNKED_CAPACITY``,
    never beyond ``max_body_bytes`` (``needed`` has passed
    ``check_received_body``).
    """
    return max(needed, min(max(2 * current, FIRST_CHUNKED_CAPACITY), limits.max_body_bytes))
