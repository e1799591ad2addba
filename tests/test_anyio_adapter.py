"""millpond.anyio: a served connection behaves as anyio's ByteStream, the server as its Listener.

The clients are anyio's own (``anyio.connect_tcp``, ``TLSStream``), run under
anyio's trio backend, which is what pytest-trio runs; the server-side code
uses only anyio's API, as code ported to millpond would.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.abc
import pytest
import trio
import trustme
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.text import TextStream
from anyio.streams.tls import TLSAttribute, TLSListener, TLSStream

import millpond
import millpond.anyio
from millpond.anyio import ByteStream, Listener, create_tcp_listener

# Hang guard only: every step here takes microseconds on loopback.
HANG_GUARD_SECONDS = 10

AnyioHandler = Callable[[ByteStream], Awaitable[None]]


async def start_listener(
    nursery: trio.Nursery, handler: Callable[..., Awaitable[None]], **options: object
) -> tuple[Listener, int]:
    """A millpond ``Listener`` on 127.0.0.1, serving ``handler`` in ``nursery``; and its port."""
    listener = await create_tcp_listener(local_host="127.0.0.1", **options)  # type: ignore[arg-type]
    nursery.start_soon(listener.serve, handler)
    return listener, listener.extra(anyio.abc.SocketAttribute.local_port)


async def served_stream(nursery: trio.Nursery) -> tuple[ByteStream, anyio.abc.SocketStream]:
    """One served ``ByteStream`` (server side, handed out of its handler) and its anyio client.

    The handler parks until the test's nursery is cancelled, so the stream
    stays open for the test to use from outside.
    """
    handed: list[ByteStream] = []
    got_one = trio.Event()

    async def keep(stream: ByteStream) -> None:
        handed.append(stream)
        got_one.set()
        await trio.sleep_forever()

    _listener, port = await start_listener(nursery, keep)
    client = await anyio.connect_tcp("127.0.0.1", port)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await got_one.wait()
    return handed[0], client


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[tuple[ByteStream, anyio.abc.SocketStream]]:
    """A served ``ByteStream`` and the anyio client connected to it."""
    stream, client = await served_stream(nursery)
    async with client:
        yield stream, client


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    """A throwaway CA for the TLS tests."""
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def tls_round_trip(port: int, ca: trustme.CA, payload: bytes) -> tuple[str, int]:
    """Send ``payload`` with anyio's TLS client (trusting ``ca``) and check it comes back;
    return the client's TLS version and local port."""
    client = await anyio.connect_tcp("127.0.0.1", port, tls=True, ssl_context=client_context(ca))
    async with client:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await client.send(payload)
            assert await client.receive() == payload
        return client.extra(TLSAttribute.tls_version), client.extra(
            anyio.abc.SocketAttribute.local_port
        )


# ByteStream: anyio's stream contract over a millpond Connection.


async def test_receive_raises_end_of_stream_at_eof_and_after(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    await client.send(b"last words")
    await client.send_eof()
    assert await stream.receive() == b"last words"
    for _ in range(2):
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_async_iteration_stops_at_eof(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    await client.send(b"a" * 100_000)
    await client.send_eof()
    received = bytearray()
    async for chunk in stream:
        assert 0 < len(chunk) <= 65536  # anyio's ceiling for a receive with no argument
        received += chunk
    assert received == b"a" * 100_000


async def test_send_eof_half_closes_and_the_other_direction_still_works(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    await stream.send(b"from the server")
    await stream.send_eof()
    await stream.send_eof()  # idempotent
    assert await client.receive() == b"from the server"
    with pytest.raises(anyio.EndOfStream):
        await client.receive()
    await client.send(b"still listening")
    assert await stream.receive() == b"still listening"


async def test_use_after_aclose_raises_anyio_closed_resource_error(pair) -> None:  # type: ignore[no-untyped-def]
    stream, _client = pair
    await stream.aclose()
    await stream.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError) as receiving:
        await stream.receive()
    assert isinstance(receiving.value.__cause__, trio.ClosedResourceError)
    with pytest.raises(anyio.ClosedResourceError):
        await stream.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await stream.send_eof()


async def test_receive_from_a_reset_peer_raises_anyio_broken_resource_error(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await client.aclose()  # linger 0: the close sends a reset
    with pytest.raises(anyio.BrokenResourceError) as broken:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await stream.receive()
    assert isinstance(broken.value.__cause__, trio.BrokenResourceError)


async def test_two_receivers_at_once_raise_anyio_busy_resource_error(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError, match="receiving from"):
            await stream.receive()
        await client.send(b"for the first receiver")


async def test_receive_checks_max_bytes(pair) -> None:  # type: ignore[no-untyped-def]
    stream, _client = pair
    with pytest.raises(ValueError):
        await stream.receive(0)


async def test_extra_gives_the_socket_and_both_addresses(pair) -> None:  # type: ignore[no-untyped-def]
    stream, client = pair
    attribute = anyio.abc.SocketAttribute
    assert stream.extra(attribute.raw_socket) is stream.connection.socket
    assert stream.extra(attribute.family) == socket.AF_INET
    assert stream.extra(attribute.local_address) == client.extra(attribute.remote_address)
    assert stream.extra(attribute.remote_address) == client.extra(attribute.local_address)
    assert stream.extra(attribute.local_port) == client.extra(attribute.remote_port)
    assert stream.extra(attribute.remote_port) == client.extra(attribute.local_port)
    assert stream.stream is stream.connection


async def test_remote_address_is_the_client_a_proxy_protocol_header_names(
    nursery: trio.Nursery,
) -> None:
    seen = []

    async def note_peer(stream: ByteStream) -> None:
        seen.append(stream.extra(anyio.abc.SocketAttribute.remote_address))
        seen.append(stream.extra(anyio.abc.SocketAttribute.remote_port))
        await stream.send(b"noted")

    _listener, port = await start_listener(nursery, note_peer, proxy_protocol="v1")
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        await client.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n")
        with trio.fail_after(HANG_GUARD_SECONDS):
            assert await client.receive() == b"noted"
    assert seen == [("203.0.113.7", 56324), 56324]


async def test_anyio_buffered_and_text_streams_run_on_a_served_connection(
    nursery: trio.Nursery, poller_name: str
) -> None:
    async def greet(stream: ByteStream) -> None:
        # Only anyio's API from here on.
        buffered = BufferedByteReceiveStream(stream)
        text = TextStream(stream)
        while True:
            try:
                name = await buffered.receive_until(b"\n", 1024)
            except anyio.IncompleteRead:
                return
            await text.send(f"hello, {name.decode()}\n")

    _listener, port = await start_listener(nursery, greet, poller=poller_name)
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        replies = BufferedByteReceiveStream(client)
        for name in ("ada", "grace", "émilie"):
            await client.send(name.encode() + b"\n")
            with trio.fail_after(HANG_GUARD_SECONDS):
                assert await replies.receive_until(b"\n", 1024) == f"hello, {name}".encode()


def test_bytestream_wraps_only_a_millpond_connection() -> None:
    with pytest.raises(TypeError, match="millpond.Connection"):
        ByteStream(object())  # type: ignore[arg-type]


# TLS: anyio's TLSListener over millpond's listener, and millpond's TLS under ByteStream.


async def test_anyio_tls_listener_wraps_a_millpond_listener(
    nursery: trio.Nursery, certificate_authority: trustme.CA
) -> None:
    async def echo(stream: TLSStream) -> None:
        async with stream:  # anyio's idiom: closing sends close_notify, which the client awaits
            async for chunk in stream:
                await stream.send(chunk)

    listener = await create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    nursery.start_soon(TLSListener(listener, server_context(certificate_authority)).serve, echo)
    await tls_round_trip(port, certificate_authority, b"over anyio's TLS")


async def test_millpond_tls_under_bytestream_gives_tls_attributes(
    nursery: trio.Nursery, certificate_authority: trustme.CA
) -> None:
    seen: dict[str, object] = {}

    async def inspect(stream: ByteStream) -> None:
        seen["version"] = stream.extra(TLSAttribute.tls_version)
        seen["server_side"] = stream.extra(TLSAttribute.server_side)
        seen["remote_port"] = stream.extra(anyio.abc.SocketAttribute.remote_port)
        seen["wrapped"] = type(stream.stream).__name__
        with pytest.raises(NotImplementedError, match="TLS"):
            await stream.send_eof()
        await stream.send(await stream.receive())

    _listener, port = await start_listener(
        nursery, inspect, ssl_context=server_context(certificate_authority)
    )
    version, port_used = await tls_round_trip(port, certificate_authority, b"over millpond's TLS")
    assert seen == {
        "version": version,
        "server_side": True,
        "remote_port": port_used,
        "wrapped": "SSLStream",
    }


# Listener: serve(), aclose(), task_group, errors.


async def test_listener_serves_every_connection_at_once(nursery: trio.Nursery) -> None:
    clients = 50
    all_in = trio.Event()
    arrived = 0

    async def wait_for_everyone(stream: ByteStream) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == clients:
            all_in.set()
        await all_in.wait()
        await stream.send(b"all here")

    _listener, port = await start_listener(nursery, wait_for_everyone)

    async def client() -> None:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            assert await stream.receive() == b"all here"

    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as clients_nursery:
            for _ in range(clients):
                clients_nursery.start_soon(client)


async def test_aclose_lets_running_handlers_finish_and_refuses_new_clients() -> None:
    may_finish = trio.Event()
    finished = []

    async def slow(stream: ByteStream) -> None:
        await stream.send(b"started")
        await may_finish.wait()
        await stream.send(b"finished")
        finished.append(stream)

    listener = await create_tcp_listener(local_host="127.0.0.1", grace=HANG_GUARD_SECONDS)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, slow)
            client = await anyio.connect_tcp("127.0.0.1", port)
            assert await client.receive() == b"started"
            await listener.aclose()
            assert listener.server.shutting_down.is_set()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", port)
            may_finish.set()
            assert await client.receive() == b"finished"
            await client.aclose()
        # serve() returned by itself: the graceful shutdown is over.
    assert len(finished) == 1
    with pytest.raises(anyio.ClosedResourceError):
        await listener.serve(slow)


async def test_handlers_never_outlive_serve_even_with_a_task_group() -> None:
    cancelled = []

    async def forever(stream: ByteStream) -> None:
        try:
            await stream.send(b"running")
            await trio.sleep_forever()
        finally:
            cancelled.append(stream)

    listener = await create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with anyio.create_task_group() as outer:
            with trio.CancelScope() as serving:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(listener.serve, forever, outer)
                    client = await anyio.connect_tcp("127.0.0.1", port)
                    assert await client.receive() == b"running"
                    serving.cancel()
            # serve() is gone and so is its handler, though `outer` is still open.
            assert len(cancelled) == 1
            with pytest.raises(anyio.EndOfStream):
                await client.receive()
            await client.aclose()


async def test_a_handler_error_closes_only_its_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(stream: ByteStream) -> None:
        request = await stream.receive()
        if request == b"break":
            raise RuntimeError("the handler broke")
        await stream.send(request)

    listener, port = await start_listener(nursery, fragile)
    with caplog.at_level(logging.ERROR, logger="millpond.server"):
        async with await anyio.connect_tcp("127.0.0.1", port) as breaking:
            await breaking.send(b"break")
            with trio.fail_after(HANG_GUARD_SECONDS):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await breaking.receive()
    async with await anyio.connect_tcp("127.0.0.1", port) as fine:
        await fine.send(b"still serving")
        with trio.fail_after(HANG_GUARD_SECONDS):
            assert await fine.receive() == b"still serving"
    assert "the handler broke" in caplog.text
    assert listener.server.statistics().handler_errors == 1


async def test_a_peer_gone_mid_receive_until_is_not_a_handler_error(
    nursery: trio.Nursery,
) -> None:
    done = trio.Event()

    async def wants_a_line(stream: ByteStream) -> None:
        try:
            await BufferedByteReceiveStream(stream).receive_until(b"\n", 1024)
        finally:
            done.set()

    listener, port = await start_listener(nursery, wants_a_line)
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        await client.send(b"no newline")
    with trio.fail_after(HANG_GUARD_SECONDS):
        await done.wait()
        while listener.server.statistics().connections_active:
            await trio.sleep(0)
    statistics = listener.server.statistics()
    assert statistics.handler_errors == 0
    assert statistics.closed["reset"] == 1  # anyio's IncompleteRead after EOF: the peer left


async def test_serve_rejects_a_handler_that_is_not_async() -> None:
    listener = await create_tcp_listener(local_host="127.0.0.1")
    async with listener:

        def not_async(stream: ByteStream) -> None:
            pass

        with pytest.raises(TypeError, match="handler must be an async function"):
            await listener.serve(not_async)  # type: ignore[arg-type]


async def test_serve_takes_async_callables_of_every_kind(nursery: trio.Nursery) -> None:
    class Greeter:
        async def __call__(self, stream: ByteStream, greeting: bytes = b"hi") -> None:
            await stream.send(greeting)

    async def greet(greeting: bytes, stream: ByteStream) -> None:
        await stream.send(greeting)

    for handler, expected in [
        (Greeter(), b"hi"),
        (functools.partial(greet, b"partial"), b"partial"),
    ]:
        _listener, port = await start_listener(nursery, handler)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            with trio.fail_after(HANG_GUARD_SECONDS):
                assert await client.receive() == expected


async def test_serving_twice_at_once_is_busy(nursery: trio.Nursery) -> None:
    async def nothing(stream: ByteStream) -> None:
        pass

    listener, _port = await start_listener(nursery, nothing)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(anyio.BusyResourceError):
        await listener.serve(nothing)


async def test_aclose_before_serve_closes_the_sockets() -> None:
    listener = await create_tcp_listener(local_host="127.0.0.1")
    raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    await listener.aclose()
    assert raw.fileno() == -1


async def test_options_are_checked_when_the_listener_is_made() -> None:
    with pytest.raises(TypeError, match="max_connections"):
        await create_tcp_listener(local_host="127.0.0.1", max_connections="many")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        await create_tcp_listener(local_host="127.0.0.1", grace=-1)


def test_listener_rejects_a_socket_that_is_not_listening() -> None:
    with pytest.raises(ValueError, match="not listening"):
        with socket.socket() as unbound:
            Listener([unbound])


# Outside Trio: the asyncio backend, and no anyio at all.


def test_asyncio_backend_gets_millpond_clear_error() -> None:
    async def main() -> None:
        await create_tcp_listener(local_host="127.0.0.1")

    with pytest.raises(RuntimeError, match=r"needs a running Trio event loop.*backend='trio'"):
        anyio.run(main, backend="asyncio")


def test_asyncio_backend_serving_a_listener_gets_millpond_clear_error() -> None:
    async def handler(stream: ByteStream) -> None:
        pass

    sock = socket.create_server(("127.0.0.1", 0))
    listener = Listener([sock])
    with pytest.raises(RuntimeError, match=r"needs a running Trio event loop.*backend='trio'"):
        anyio.run(listener.serve, handler, backend="asyncio")
    sock.close()


def test_import_without_anyio_says_what_to_install() -> None:
    code = "import sys; sys.modules['anyio'] = None; import millpond.anyio"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "millpond.anyio needs anyio: pip install 'millpond[anyio]'" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ModuleNotFoundError")


def test_the_adapter_module_is_importable_as_documented() -> None:
    assert millpond.anyio.ByteStream is ByteStream
