"""Coverage-guided fuzzing of the HTTP example's two parsers with atheris (libFuzzer), issue 16.

Every input is turned into a parser (h11 or httptools), a set of limits (the
defaults, or small ones that the input can pass), a cut point and the bytes
a client sends. The bytes are fed whole, in two pieces and a byte at a time,
and the server's side of the conversation is played: each request's events
are taken, a complete request is answered (200, keep-alive if the parser
allows it), and the conversation ends at a refusal or a close
(``http_conversation.py``). What must hold: the three ways end in the same
conversation (the same requests with the same bodies, then a refusal, a
close or the same waiting), a refusal is a 4xx (or h11's 501 for a transfer
coding it does not know), and nothing but a ``Refusal`` escapes; anything
else is a crash, and an input slower than libFuzzer's ``-timeout`` is a
hang. Which refusal may depend on how the bytes arrive: a line of garbage
longer than the head limit is a 400 when it comes whole and a 431 when it
comes a byte at a time (the limit is passed before the line ends), so the
statuses are checked one by one, not compared. And whether: the guard on an
unfinished head counts the raw bytes held, so the same bytes in finer
pieces may be refused (431) where coarser ones pass or wait, after the same
requests (``agrees`` says why; CI's runs found both parsers doing it).

    python tests/fuzz_http_parser.py CORPUS_DIR -max_total_time=600   # the long run
    python tests/fuzz_http_parser.py --seed-corpus CORPUS_DIR         # write the seeds

``tests/test_http_fuzz.py`` runs a short bounded version.
"""

from __future__ import annotations

import pathlib
import sys

import atheris
from fuzzing import harness_main

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))

with atheris.instrument_imports(include=["http_parsers", "http_limits", "h11"]):
    from http_limits import Limits
    from http_parsers import PARSERS
from http_conversation import agrees, conversation  # the parsers above, instrumented

PARSER_NAMES = sorted(PARSERS)
LIMITS = [
    Limits(),
    Limits(max_head_bytes=64, max_headers=4, max_body_bytes=32),
    Limits(max_head_bytes=256, max_headers=8, max_body_bytes=1024),
]


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    name = PARSER_NAMES[provider.ConsumeIntInRange(0, len(PARSER_NAMES) - 1)]
    limits = LIMITS[provider.ConsumeIntInRange(0, len(LIMITS) - 1)]
    cut = provider.ConsumeIntInRange(0, 300)
    sent = provider.ConsumeBytes(provider.remaining_bytes())
    whole = conversation(name, limits, [sent])
    in_two = conversation(name, limits, [sent[:cut], sent[cut:]])
    assert agrees(whole, in_two), (name, cut, whole, in_two)
    byte_by_byte = conversation(name, limits, [sent[at : at + 1] for at in range(len(sent))])
    assert agrees(in_two, byte_by_byte), (name, cut, in_two, byte_by_byte)


def seeds() -> list[bytes]:
    """Requests that reach deep at once, each behind the three choice bytes."""
    requests = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nTrailer: t\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ]
    return [bytes([parser, limits, 7]) + request for parser in (0, 1) for limits in (0, 1, 2)
            for request in requests]  # fmt: skip


def main() -> None:
    harness_main(seeds, test_one_input)


if __name__ == "__main__":
    main()
