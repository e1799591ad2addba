"""The server's side of an HTTP conversation, played over one parser, for the fuzzers.

``conversation`` feeds a parser the bytes a client sent, in the pieces
given, takes each request's events, answers a complete request (200,
keep-alive if the parser allows it) and stops at a refusal or a close.
``agrees`` says whether the same bytes, arriving in finer pieces, made a
conversation that the parsers' promises allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from http_limits import Limits, Refusal
from http_parsers import END, PARSERS, Request

# A refusal's status: what the example promises for bad input.
REFUSALS = {400, 413, 414, 417, 431, 501}
# Requests answered per conversation at most: enough for pipelining, bounded in time.
MAX_REQUESTS = 20


@dataclass(frozen=True, slots=True)
class Conversation:
    """How a conversation ended, and the complete requests (each with its body) before that."""

    ending: str  # "closed", "refused" or "waiting"
    requests: tuple[object, ...]
    pending: object = None  # waiting: the request whose head came, if any
    status: int = 0  # refused: the status, which may depend on how the bytes arrived


def conversation(name: str, limits: Limits, pieces: list[bytes]) -> Conversation:
    """Play the server's side over ``pieces`` with the parser called ``name``."""
    parser = PARSERS[name](limits)
    seen: list[object] = []
    request: tuple[object, ...] | None = None
    body = bytearray()
    try:
        for piece in pieces:
            if not piece:
                continue
            parser.feed(piece)
            while (event := parser.next_event()) is not None:
                if isinstance(event, Request):
                    assert request is None, "a request inside a request"
                    request = (
                        event.method,
                        event.target,
                        tuple(event.headers),
                        event.content_length,
                        event.keep_alive,
                        event.expects_continue,
                    )
                elif event is END:
                    assert request is not None, "an end without a request"
                    seen.append((request, bytes(body)))
                    request, body = None, bytearray()
                    _, stays = parser.respond(200, [(b"content-length", b"0")], b"", close=False)
                    if not stays or len(seen) >= MAX_REQUESTS:
                        return Conversation("closed", tuple(seen))
                    parser.next_request()
                else:
                    assert isinstance(event, bytes | bytearray), event
                    assert request is not None, "a body without a request"
                    body += event
                    assert len(body) <= limits.max_body_bytes, "a body past its limit"
    except Refusal as refusal:
        assert refusal.status in REFUSALS, refusal
        return Conversation("refused", tuple(seen), status=refusal.status)
    return Conversation("waiting", tuple(seen), request)


def agrees(coarse: Conversation, fine: Conversation) -> bool:
    """Whether ``fine`` (the same bytes in more pieces) may follow from ``coarse``.

    The same conversation, but for one allowance. Both parsers guard an
    unfinished head by the raw bytes they hold (h11's
    ``max_incomplete_event_size``; ``HttptoolsParser`` counts the reads that
    made no callback), and a complete head by its parsed size. In more
    pieces a head is seen unfinished more often, so the guard may refuse it
    (431) where the same bytes in fewer pieces pass or wait: a head whose
    optional white space pushes its raw bytes over the limit, or one whose
    unfinished last line came in the same read as lines that completed. The
    requests before that refusal are still the same.
    """
    if (coarse.ending, coarse.requests, coarse.pending) == (
        fine.ending,
        fine.requests,
        fine.pending,
    ):
        return True
    return (
        fine.ending == "refused"
        and fine.status == 431
        and coarse.requests[: len(fine.requests)] == fine.requests
    )
