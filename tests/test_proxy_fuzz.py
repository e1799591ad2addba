"""Malformed PROXY headers against a real server, and the parser under coverage-guided
fuzzing (issue 16). The parser's own hypothesis properties (random bytes, truncations,
mutated headers, every split) are in test_proxy_protocol.py; here the same inputs go over
loopback to a server: every one ends in the handler (a header) or a close counted as
``proxy_error``, never a hang and never a handler error."""

from __future__ import annotations

import pathlib

import pytest
import trio
from conftest import started_server
from fuzzing import run_short
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_proxy_protocol import mutated

import millpond
from millpond.protocols import NeedMore, ProxyHeaderParser, ProxyProtocolError

HOST = "127.0.0.1"
HERE = pathlib.Path(__file__).parent


async def everything_after_the_header(stream: millpond.Connection) -> None:
    """Read to EOF, then answer ``OK`` and every byte after the header (nothing is left
    unread at the close, so the answer is not lost to a reset)."""
    received = b""
    async for chunk in stream:
        received += chunk
    await stream.send_all(b"OK " + received)


def parsed_by_itself(data: bytes, mode: str) -> bytes | None:
    """The bytes after the header if ``data`` holds one (the parser, no I/O), else None."""
    try:
        answer = ProxyHeaderParser(mode).feed(data)  # type: ignore[arg-type]
    except ProxyProtocolError:
        return None
    return None if isinstance(answer, NeedMore) else answer.rest


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.binary(max_size=300) | mutated(),
    cut=st.integers(0, 300),
    mode=st.sampled_from(["auto", "v1", "v2"]),
)
async def test_any_bytes_then_eof_end_in_the_handler_or_a_proxy_error_close(
    poller_name: str, data: bytes, cut: int, mode: str
) -> None:
    async with trio.open_nursery() as nursery:
        server, port = await started_server(
            nursery, everything_after_the_header, poller_name, proxy_protocol=mode
        )
        client = await millpond.open_connection(HOST, port, poller=poller_name)
        answer = b""
        with trio.fail_after(10):  # a hang fails here
            try:
                await client.send_all(data[:cut])
                await trio.sleep(0)
                await client.send_all(data[cut:])
                await client.send_eof()  # a truncated header ends here
                while chunk := await client.receive_some():
                    answer += chunk
            except trio.BrokenResourceError:  # refused early: closed with bytes unread
                pass
            while server.statistics().connections_active:
                await trio.sleep(0.01)
        await client.aclose()
        statistics = server.statistics()
        rest = parsed_by_itself(data, mode)
        if rest is None:
            assert answer == b""
            assert statistics.closed["proxy_error"] == 1
        else:
            assert answer == b"OK " + rest
            assert statistics.closed["proxy_error"] == 0
        assert statistics.handler_errors == 0
        nursery.cancel_scope.cancel()


@pytest.mark.time_limit(90)
def test_atheris_finds_no_crash_and_no_hang_in_a_short_run(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    run_short(pathlib.Path(__file__).with_name("fuzz_proxy_header.py"), tmp_path)
