"""Coverage-guided fuzzing of the PROXY-protocol parser with atheris (libFuzzer), issue 16.

Every input is turned into a mode (``auto``, ``v1``, ``v2``), a v2 length bound, a cut
point and the bytes themselves, and fed whole, in two pieces and a byte at a time. What
must hold: each way ends the same, in a header (the bytes after it untouched), NeedMore
within its bounds, or ProxyProtocolError (which every later feed repeats); anything else
that escapes is a crash, and an input slower than libFuzzer's ``-timeout`` is a hang.

    python tests/fuzz_proxy_header.py CORPUS_DIR -max_total_time=600   # the long run
    python tests/fuzz_proxy_header.py --seed-corpus CORPUS_DIR         # write the seeds

``tests/test_proxy_fuzz.py`` runs a short bounded version; the seeds are HAProxy's
recorded headers (``haproxy_proxy_headers.json``) and headers the builder writes.
"""

from __future__ import annotations

import json
import pathlib

import atheris
from fuzzing import harness_main

with atheris.instrument_imports(include=["millpond.protocols"]):
    from millpond.protocols import (
        DEFAULT_MAX_V2_LENGTH,
        NeedMore,
        Parsed,
        ProxyHeaderParser,
        ProxyProtocolError,
        build_v1,
        build_v2,
    )

MODES = ["auto", "v1", "v2"]
BOUNDS = [DEFAULT_MAX_V2_LENGTH, 16, 40, 300]
HEADER_PROPERTIES = ("family", "alpn", "authority", "crc32c", "unique_id", "ssl", "netns")


def outcome(data: bytes, cuts: list[int], mode: str, bound: int) -> tuple[object, ...]:
    """Feed ``data`` cut at ``cuts``; what it ends in, as a comparable tuple."""
    parser = ProxyHeaderParser(mode, max_v2_length=bound)  # type: ignore[arg-type]
    start = 0
    try:
        for end in [*cuts, len(data)]:
            end = min(end, len(data))
            if end < start:
                continue
            answer = parser.feed(data[start:end])
            if isinstance(answer, Parsed):
                consumed = end - len(answer.rest)
                assert answer.rest == data[consumed:end]
                for name in HEADER_PROPERTIES:
                    getattr(answer.header, name)  # a parsed header never raises
                return ("parsed", repr(answer.header), consumed, data[consumed:])
            assert isinstance(answer, NeedMore) and 1 <= answer.at_least <= answer.at_most
            start = end
        return ("need", answer.at_least, answer.at_most)
    except ProxyProtocolError as error:
        for again in (b"", b"\r\n"):
            try:
                parser.feed(again)
            except ProxyProtocolError as repeated:
                assert str(repeated) == str(error)
            else:
                raise AssertionError("a feed after an error did not repeat it") from None
        return ("error", str(error))


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    mode = MODES[provider.ConsumeIntInRange(0, len(MODES) - 1)]
    bound = BOUNDS[provider.ConsumeIntInRange(0, len(BOUNDS) - 1)]
    cut = provider.ConsumeIntInRange(0, 300)
    body = provider.ConsumeBytes(provider.remaining_bytes())
    whole = outcome(body, [], mode, bound)
    assert outcome(body, [cut], mode, bound) == whole
    assert outcome(body, list(range(1, len(body))), mode, bound) == whole


def seeds() -> list[bytes]:
    """Inputs that reach deep at once: real headers, each behind the three choice bytes."""
    recorded = json.loads(
        pathlib.Path(__file__).with_name("haproxy_proxy_headers.json").read_text()
    )
    headers = [bytes.fromhex(record["received"]) for record in recorded["records"]]
    headers += [
        build_v1(("192.0.2.1", 5000), ("198.51.100.2", 443)),
        build_v1(("2001:db8::1", 5000), ("2001:db8::2", 443)),
        build_v1(None, None),
        build_v2(("192.0.2.1", 5000), ("198.51.100.2", 443), tlvs=[(0x01, b"h2")]),
        build_v2(None, None),
        build_v2(("2001:db8::1", 5000), ("2001:db8::2", 443), crc32c=True),
    ]
    return [bytes([mode, 0, 7]) + header for mode in (0, 1, 2) for header in headers]


def main() -> None:
    harness_main(seeds, test_one_input)


if __name__ == "__main__":
    main()
