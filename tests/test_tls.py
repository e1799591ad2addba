"""TLS: the server's handshake, its timeout and its failures, and TLS clients.

Certificates come from ``trustme`` (a throwaway CA; the server's certificate
names ``localhost`` and ``127.0.0.1``). Server tests dial with Trio's own
client (``trio.open_tcp_stream`` and ``trio.SSLStream``), so a failure there
is the server's; client tests use ``open_connection(..., ssl_context=...)``
against the millpond server and against a plain ``trio.serve_tcp`` one.
``openssl s_client`` is the peer that is neither Trio nor millpond.
Everything is over loopback; timeouts run on a mock clock that jumps only
after the run has been idle for a while in real time (``idle_clock``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from conftest import echo, open_fds, started_server

import millpond

HOST = "127.0.0.1"
NAME = "localhost"
MIB = 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0

# A handler of TLS streams (the echo from conftest serves them too: any Trio stream).
Handler = Callable[[Any], Awaitable[object]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for these tests."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """What a server presents: a certificate for localhost and 127.0.0.1, signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME, HOST).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """What a client trusts: ``ca`` only (hostname checks on, as by default)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def tls_server(
    nursery: trio.Nursery, handler: Handler, poller_name: str, context: ssl.SSLContext
) -> tuple[millpond.Server, int]:
    """A millpond server with TLS on 127.0.0.1 (``handshake_timeout`` 5 s): it, and its port."""
    return await started_server(
        nursery, handler, poller_name, ssl_context=context, handshake_timeout=HANDSHAKE_TIMEOUT
    )


async def trio_client(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    """A TLS client made of Trio's parts only, handshake done."""
    stream = trio.SSLStream(await trio.open_tcp_stream(HOST, port), context, server_hostname=NAME)
    await stream.do_handshake()
    return stream


@pytest.fixture
async def echo_server(
    poller_name: str, nursery: trio.Nursery, server_context: ssl.SSLContext
) -> tuple[millpond.Server, int]:
    """A millpond TLS echo server (``tls_server``), and its port."""
    return await tls_server(nursery, echo, poller_name, server_context)


async def echo_once(port: int, context: ssl.SSLContext) -> None:
    """One TLS client (Trio's): its message echoed, then a clean close."""
    with trio.fail_after(10):
        client = await trio_client(port, context)
        assert await echoes(client) == b"through TLS"
        await client.aclose()


async def echoes(stream: trio.abc.Stream, message: bytes = b"through TLS") -> bytes:
    """Send ``message`` and read back as many bytes."""
    await stream.send_all(message)
    received = b""
    while len(received) < len(message):
        chunk = await stream.receive_some()
        assert chunk, "EOF before the echo"
        received += chunk
    return received


async def closed_by_server(stream: trio.abc.ReceiveStream) -> None:
    """Read until the server closes (EOF or reset); fails if it never does."""
    with trio.fail_after(3600):  # server time: the idle clock gets there when all wait
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass


async def stalled_client(port: int, context: ssl.SSLContext) -> trio.SocketStream:
    """A client that begins a handshake and never finishes it: half a real ClientHello."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    stalled = await trio.open_tcp_stream(HOST, port)
    await stalled.send_all(hello[: len(hello) // 2])
    return stalled


# -- the server -----------------------------------------------------------------------------


async def test_echo_through_tls(
    echo_server: tuple[millpond.Server, int], client_context: ssl.SSLContext
) -> None:
    _server, port = echo_server
    await echo_once(port, client_context)


async def test_a_tls_client_that_closes_is_counted_as_eof(
    echo_server: tuple[millpond.Server, int], client_context: ssl.SSLContext
) -> None:
    server, port = echo_server
    await echo_once(port, client_context)
    await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().closed["eof"] == 1


async def test_the_handler_gets_the_tls_stream_over_a_connection(
    poller_name: str,
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    handed: list[object] = []

    async def keep(stream: trio.SSLStream[millpond.Connection]) -> None:
        handed.append(stream)

    _server, port = await tls_server(nursery, keep, poller_name, server_context)
    with trio.fail_after(10):
        client = await trio_client(port, client_context)
        await closed_by_server(client)
        await client.aclose()
    [stream] = handed
    assert isinstance(stream, trio.SSLStream)
    assert isinstance(stream.transport_stream, millpond.Connection)


async def test_a_client_that_never_finishes_the_handshake_is_reaped_at_handshake_timeout(
    idle_clock: trio.testing.MockClock,
    echo_server: tuple[millpond.Server, int],
    client_context: ssl.SSLContext,
) -> None:
    server, port = echo_server
    opened = trio.current_time()
    stalled = await stalled_client(port, client_context)
    await closed_by_server(stalled)
    assert trio.current_time() - opened == pytest.approx(HANDSHAKE_TIMEOUT, abs=0.01)
    await trio.testing.wait_all_tasks_blocked()
    statistics = server.statistics()
    assert statistics.closed["handshake_timeout"] == 1
    assert statistics.connections_active == 0
    assert statistics.handler_errors == 0
    await stalled.aclose()


async def test_a_stalled_handshake_does_not_hold_up_other_clients(
    idle_clock: trio.testing.MockClock,
    echo_server: tuple[millpond.Server, int],
    client_context: ssl.SSLContext,
) -> None:
    server, port = echo_server
    opened = trio.current_time()
    stalled = await stalled_client(port, client_context)
    with trio.fail_after(HANDSHAKE_TIMEOUT / 2):
        other = await trio_client(port, client_context)
        assert await echoes(other) == b"through TLS"
    assert server.statistics().connections_active == 2  # the stalled one is still there
    await other.aclose()
    await closed_by_server(stalled)
    assert trio.current_time() - opened == pytest.approx(HANDSHAKE_TIMEOUT, abs=0.01)
    await stalled.aclose()


async def test_garbage_instead_of_a_handshake_is_closed_and_logged_at_info(
    echo_server: tuple[millpond.Server, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="millpond.server")
    server, port = echo_server
    with trio.fail_after(10):
        plain = await trio.open_tcp_stream(HOST, port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await closed_by_server(plain)
        await plain.aclose()
    await trio.testing.wait_all_tasks_blocked()
    statistics = server.statistics()
    assert statistics.closed["tls_error"] == 1
    assert statistics.handler_errors == 0
    records = [r for r in caplog.records if r.name == "millpond.server"]
    assert any(r.levelno == logging.INFO and "TLS handshake" in r.getMessage() for r in records), [
        r.getMessage() for r in records
    ]
    assert all(r.levelno < logging.WARNING for r in records), [r.getMessage() for r in records]


async def test_the_server_keeps_serving_after_a_client_sent_garbage(
    echo_server: tuple[millpond.Server, int], client_context: ssl.SSLContext
) -> None:
    _server, port = echo_server
    with trio.fail_after(10):
        plain = await trio.open_tcp_stream(HOST, port)
        await plain.send_all(os.urandom(600))
        await closed_by_server(plain)
        await plain.aclose()
    await echo_once(port, client_context)


async def test_a_mebibyte_each_way_through_tls(
    echo_server: tuple[millpond.Server, int], client_context: ssl.SSLContext
) -> None:
    _server, port = echo_server
    payload = os.urandom(MIB)
    received = bytearray()
    with trio.fail_after(30):
        client = await trio_client(port, client_context)

        async def send() -> None:
            await client.send_all(payload)

        async with trio.open_nursery() as transfer:
            transfer.start_soon(send)  # while the echo comes back: neither side's buffers fill
            while len(received) < MIB:
                chunk = await client.receive_some()
                assert chunk, f"EOF after {len(received)} bytes"
                received += chunk
        await client.aclose()
    assert received == payload


async def test_openssl_s_client_is_served(
    poller_name: str,
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "openssl is not installed: this test runs `openssl s_client` as a real TLS peer "
            "(Debian: apt-get install openssl; the README's test command installs it)"
        )

    async def greet(stream: trio.SSLStream[millpond.Connection]) -> None:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                return
            line += chunk
        await stream.send_all(b"hello, " + line)

    server, port = await tls_server(nursery, greet, poller_name, server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    command = [
        openssl, "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME,
        "-CAfile", str(ca_file), "-verify_return_error",
        "-quiet",  # only the application data on stdout; exits when the server closes
    ]  # fmt: skip
    with trio.fail_after(20):
        result = await trio.run_process(
            command, stdin=b"s_client\n", capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == b"hello, s_client\n"
    await trio.testing.wait_all_tasks_blocked()
    assert server.statistics().closed["done"] == 1


# -- clients: open_connection(..., ssl_context=...) -----------------------------------------


@pytest.fixture
async def trio_echo_port(nursery: trio.Nursery, server_context: ssl.SSLContext) -> int:
    """A plain Trio TLS echo server (``trio.serve_tcp`` + ``trio.SSLStream``) on 127.0.0.1:
    its port."""

    async def serve_one(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_context, server_side=True)
        try:
            await echo(stream)  # type: ignore[arg-type]
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_one, 0, host=HOST))
    return int(listeners[0].socket.getsockname()[1])


async def test_open_connection_with_tls_to_the_millpond_server(
    poller_name: str, echo_server: tuple[millpond.Server, int], client_context: ssl.SSLContext
) -> None:
    _server, port = echo_server
    with trio.fail_after(10):
        stream = await millpond.open_connection(
            HOST, port, ssl_context=client_context, server_hostname=NAME, poller=poller_name
        )
        assert isinstance(stream.transport_stream, millpond.Connection)
        assert await echoes(stream) == b"through TLS"
        await stream.aclose()
    assert stream.transport_stream.closed


async def test_open_connection_with_tls_to_a_trio_server(
    poller_name: str, trio_echo_port: int, client_context: ssl.SSLContext
) -> None:
    port = trio_echo_port
    with trio.fail_after(10):
        stream = await millpond.open_connection(
            HOST, port, ssl_context=client_context, server_hostname=NAME, poller=poller_name
        )
        assert await echoes(stream) == b"through TLS"
        await stream.aclose()


@pytest.mark.parametrize("host", [NAME, HOST])
async def test_server_hostname_defaults_to_the_host_dialled(
    host: str, poller_name: str, trio_echo_port: int, client_context: ssl.SSLContext
) -> None:
    # "localhost" may resolve to ::1 first, where nothing listens: Happy Eyeballs moves on.
    port = trio_echo_port
    with trio.fail_after(10):
        stream = await millpond.open_connection(
            host, port, ssl_context=client_context, poller=poller_name
        )
        assert stream.server_hostname == host
        assert await echoes(stream) == b"through TLS"
        await stream.aclose()


async def test_a_certificate_for_another_name_fails_the_handshake_and_closes_the_socket(
    poller_name: str, trio_echo_port: int, client_context: ssl.SSLContext
) -> None:
    port = trio_echo_port
    millpond.get_poller(poller_name)
    before = open_fds()
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
        await millpond.open_connection(
            HOST,
            port,
            ssl_context=client_context,
            server_hostname="example.org",
            poller=poller_name,
        )
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    await trio.testing.wait_all_tasks_blocked()  # the Trio server closes its side too
    assert open_fds() == before


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A listener that completes TCP connects (the kernel's backlog) and never says a word."""
    with socket.create_server((HOST, 0)) as listener:
        yield listener.getsockname()[1]


async def test_connect_timeout_covers_the_tls_handshake(
    poller_name: str, idle_clock: trio.testing.MockClock, client_context: ssl.SSLContext
) -> None:
    millpond.get_poller(poller_name)
    before = open_fds()
    with silent_listener() as port:
        opened = trio.current_time()
        with pytest.raises(trio.TooSlowError, match="the TLS handshake with 127.0.0.1"):
            await millpond.open_connection(
                HOST,
                port,
                ssl_context=client_context,
                server_hostname=NAME,
                connect_timeout=3,
                poller=poller_name,
            )
        assert trio.current_time() - opened == pytest.approx(3)
    assert open_fds() == before
