"""Serving behind a load balancer that speaks the PROXY protocol (v1 and v2)."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trio.testing
import trustme
from conftest import started_server

import millpond
from millpond.protocols import build_v1, build_v2

HOST = "127.0.0.1"
CLIENT = ("203.0.113.7", 51234)  # TEST-NET-3: the original client, as the balancer saw it
SERVER = ("198.51.100.1", 443)


async def report_peer(stream: millpond.Connection) -> None:
    """Send back who the peer is, then what arrived first."""
    first = await stream.receive_some()
    host, port = stream.getpeername()[:2]
    balancer = stream.socket.getpeername()[0]
    await stream.send_all(f"{host} {port} {balancer} ".encode() + first)


async def ask(port: int, poller_name: str, *pieces: bytes) -> bytes:
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    async with client:
        for piece in pieces:
            await client.send_all(piece)
            await trio.sleep(0)
        await client.send_eof()
        received = b""
        with trio.fail_after(10):
            while chunk := await client.receive_some():
                received += chunk
    return received


@pytest.mark.parametrize("mode", ["v1", "v2", "auto"])
async def test_bytes_that_come_with_the_header_are_read_without_waiting_for_more(
    poller_name: str, nursery: trio.Nursery, mode: str
) -> None:
    # Header and request in one send, and the client then waits for the answer
    # without sending more or closing (as a client that speaks first does behind
    # HAProxy): the request is queued behind the header when the server peeks,
    # and its first receive must read it, not park for an edge that never comes.
    header = build_v1(CLIENT, SERVER) if mode == "v1" else build_v2(CLIENT, SERVER)
    _, port = await started_server(nursery, report_peer, poller_name, proxy_protocol=mode)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    async with client:
        await client.send_all(header + b"ping")
        expected = b"203.0.113.7 51234 127.0.0.1 ping"
        received = b""
        with trio.fail_after(10):  # a hang guard: the answer takes a millisecond
            while len(received) < len(expected):
                chunk = await client.receive_some()
                assert chunk, received
                received += chunk
    assert received == expected


@pytest.mark.parametrize(
    ("mode", "header"),
    [
        ("v1", build_v1(CLIENT, SERVER)),
        ("v2", build_v2(CLIENT, SERVER)),
        ("auto", build_v1(CLIENT, SERVER)),
        ("auto", build_v2(CLIENT, SERVER, crc32c=True)),
    ],
    ids=["v1", "v2", "auto-v1", "auto-v2-crc"],
)
async def test_the_handler_sees_the_original_client_and_its_first_bytes_untouched(
    poller_name: str, nursery: trio.Nursery, mode: str, header: bytes
) -> None:
    server, port = await started_server(nursery, report_peer, poller_name, proxy_protocol=mode)
    # Header and request in one segment, as balancers usually send them.
    answer = await ask(port, poller_name, header + b"GET / HTTP/1.1\r\n")
    assert answer == b"203.0.113.7 51234 127.0.0.1 GET / HTTP/1.1\r\n"
    assert server.statistics().closed["proxy_error"] == 0


async def test_a_header_in_many_pieces_is_still_read(
    poller_name: str, nursery: trio.Nursery
) -> None:
    _, port = await started_server(nursery, report_peer, poller_name, proxy_protocol="v2")
    header = build_v2(CLIENT, SERVER)
    pieces = [header[i : i + 3] for i in range(0, len(header), 3)] + [b"hello"]
    assert await ask(port, poller_name, *pieces) == b"203.0.113.7 51234 127.0.0.1 hello"


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x99",
    ],
    ids=["http", "bad-v1", "bad-v2"],
)
async def test_a_malformed_header_closes_that_connection_only(
    poller_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    server, port = await started_server(nursery, report_peer, poller_name, proxy_protocol="auto")
    with caplog.at_level(logging.INFO, logger="millpond.server"):
        try:
            assert await ask(port, poller_name, garbage) == b""
        except trio.BrokenResourceError:
            pass  # closed with unread bytes: a reset
        await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().closed["proxy_error"] == 1
    assert "PROXY header from" in caplog.text and "refused" in caplog.text
    # ...and the server keeps serving.
    answer = await ask(port, poller_name, build_v1(CLIENT, SERVER) + b"next")
    assert answer.endswith(b"next")


async def test_a_header_from_outside_the_allowed_networks_is_refused(
    poller_name: str, nursery: trio.Nursery
) -> None:
    server, port = await started_server(
        nursery, report_peer, poller_name, proxy_protocol="v1", proxy_allow_from=["10.0.0.0/8"]
    )
    try:
        assert await ask(port, poller_name, build_v1(CLIENT, SERVER) + b"x") == b""
    except trio.BrokenResourceError:
        pass
    await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().closed["proxy_error"] == 1


async def test_no_header_when_one_is_required_is_closed_at_the_timeout(
    poller_name: str, nursery: trio.Nursery, idle_clock: trio.testing.MockClock
) -> None:
    server, port = await started_server(
        nursery, report_peer, poller_name, proxy_protocol="v2", proxy_header_timeout=5
    )
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    opened = trio.current_time()
    with trio.fail_after(100):
        assert await client.receive_some() == b""
    assert trio.current_time() - opened == pytest.approx(5, abs=0.01)
    assert server.statistics().closed["proxy_error"] == 1
    await client.aclose()


async def test_local_command_keeps_the_real_peer(poller_name: str, nursery: trio.Nursery) -> None:
    # A balancer's health check: LOCAL, no addresses.
    _, port = await started_server(nursery, report_peer, poller_name, proxy_protocol="v2")
    answer = await ask(port, poller_name, build_v2() + b"ping")
    assert answer.startswith(b"127.0.0.1 ") and answer.endswith(b"ping")


async def test_tls_after_the_header(poller_name: str, nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def tls_report(stream: trio.SSLStream[millpond.Connection]) -> None:
        first = await stream.receive_some()
        host = stream.transport_stream.getpeername()[0]
        await stream.send_all(host.encode() + b" " + first)

    _, port = await started_server(
        nursery, tls_report, poller_name, proxy_protocol="v2", ssl_context=server_context
    )
    raw = await millpond.open_connection(HOST, port, poller=poller_name)
    await raw.send_all(build_v2(CLIENT, SERVER))
    secure = trio.SSLStream(raw, client_context, server_hostname="localhost")
    async with secure:
        await secure.send_all(b"over tls")
        with trio.fail_after(10):
            assert await secure.receive_some() == b"203.0.113.7 over tls"


def test_bad_proxy_arguments_name_themselves() -> None:
    async def echo(stream: millpond.Connection) -> None:
        pass

    with pytest.raises(ValueError, match="proxy_protocol"):
        millpond.Server(echo, 0, proxy_protocol="v3")
    with pytest.raises(TypeError, match="proxy_allow_from"):
        millpond.Server(echo, 0, proxy_allow_from="10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proxy_allow_from"):
        millpond.Server(echo, 0, proxy_allow_from=["10.0.0.1/8"])
    with pytest.raises(ValueError, match="proxy_header_timeout"):
        millpond.Server(echo, 0, proxy_header_timeout=-1)
