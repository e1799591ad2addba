"""examples/proxy.py, run as a user would: a subprocess in front of backends in this test.

The backends are millpond servers in the test's Trio run; clients are plain
blocking sockets in worker threads (as a user's client would be), so the
test process can push a GiB while the proxy's process moves it.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

import millpond

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="splice(2) and /proc: Linux")

REPO_ROOT = Path(__file__).resolve().parent.parent
PROXY = REPO_ROOT / "examples" / "proxy.py"

# Hang guards only (reaching one means stuck, not slow).
STARTUP_GUARD_SECONDS = 20
EXIT_GUARD_SECONDS = 20
SOCKET_TIMEOUT_SECONDS = 30

MIB = 1 << 20
GIB = 1 << 30

# What the proxy's RSS may reach while a GiB goes through it. The budget is
# 64 MiB (proxy.py's default), the pool keeps at most 8 MiB of idle slabs
# besides, and the interpreter with Trio and millpond loaded is about 30 MiB:
# about 105 MiB if every byte of the budget were in use at once. A proxied
# connection holds one chunk per direction (1 MiB at most), so the real figure
# is lower (peaks measured: 30 MiB spliced, whose pipes are kernel memory;
# without splice 31 MiB for 4 connections, 70 MiB for 100 connections with
# 128 KiB each in flight); the bound is what the budget implies.
RSS_BOUND_KIB = 150 * 1024

LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)\n")
STATISTICS = re.compile(rb"statistics (\{.*\})\n")


# ----------------------------------------------------------------------------- the proxy


@dataclass
class RunningProxy:
    """The proxy's process, its port, and what it printed."""

    process: trio.Process
    port: int
    stdout: bytearray
    stderr: bytearray
    statistics: dict[str, int] = field(default_factory=dict)
    returncode: int | None = None

    def status_kib(self, name: str) -> int:
        """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {name} in /proc/{self.process.pid}/status")


async def read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


@asynccontextmanager
async def running_proxy(*args: str) -> AsyncIterator[RunningProxy]:
    """Start examples/proxy.py with ``args``; on exit stop it with SIGINT and check that it
    exits 0 with no traceback, and collect the statistics it prints."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(PROXY), "--port", "0", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, process.stderr, stderr)
            with trio.fail_after(STARTUP_GUARD_SECONDS):
                while (match := LISTENING.search(stdout)) is None:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"proxy exited before listening: {bytes(stderr)!r}"
                    stdout += chunk
            proxy = RunningProxy(process, int(match.group(1)), stdout, stderr)
            nursery.start_soon(read_all, process.stdout, stdout)
            yield proxy
            process.send_signal(signal.SIGINT)
            with trio.fail_after(EXIT_GUARD_SECONDS):
                proxy.returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert proxy.returncode == 0, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    statistics = STATISTICS.search(stdout)
    assert statistics is not None, stdout.decode(errors="replace")
    proxy.statistics = json.loads(statistics.group(1))


# ----------------------------------------------------------------------------- backends

Handler = Callable[[millpond.Connection], Awaitable[object]]


async def start_backend(nursery: trio.Nursery, handler: Handler) -> int:
    """A millpond server on 127.0.0.1 in the test's nursery; returns its port."""
    server = millpond.Server(handler, 0, host="127.0.0.1")
    await nursery.start(server.run)
    return int(server.addresses[0][1])


async def echo(stream: millpond.Connection) -> None:
    """Echo, and pass the client's EOF on."""
    async for chunk in stream:
        await stream.send_all(chunk)
    await stream.send_eof()


def named(name: bytes) -> Handler:
    """A backend that says who it is, then closes."""

    async def handler(stream: millpond.Connection) -> None:
        await stream.send_all(name)
        await stream.send_eof()
        while await stream.receive_some():
            pass

    return handler


@contextmanager
def refused_port() -> Iterator[int]:
    """A port on which connects are refused: bound, never listening (kept bound so nobody
    else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose connects never complete: a listener with a full accept queue.

    With ``listen(0)`` Linux queues one connection nobody accepts; once the
    queue is full, further SYNs are dropped (counted in ListenOverflows), and
    a connect waits for SYN-ACKs that never come. Connect until one does not
    complete, to be independent of how many a kernel queues.
    """
    with ExitStack() as kept:
        listener = kept.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):
            filler = kept.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(address)
            _, writable, _ = select.select([], [filler], [], 0.5)
            if not writable:
                yield address[1]
                return
        raise AssertionError("the listener kept accepting connections into its queue")


# ----------------------------------------------------------------------------- clients


class Stream:
    """A deterministic byte stream: windows of a random pool at offsets that change from
    chunk to chunk, so a lost, repeated or reordered chunk changes the checksum."""

    def __init__(self, total: int, chunk: int = MIB) -> None:
        self.total = total
        self.chunk = chunk
        self.pool = memoryview(os.urandom(2 * chunk))

    def chunks(self) -> Iterator[memoryview]:
        sent = 0
        index = 0
        while sent < self.total:
            offset = (index * 104729) % self.chunk
            size = min(self.chunk, self.total - sent)
            yield self.pool[offset : offset + size]
            sent += size
            index += 1


def send_stream(sock: socket.socket, stream: Stream) -> int:
    """Send every chunk of ``stream``, then EOF; returns the CRC-32 of what was sent."""
    crc = 0
    for chunk in stream.chunks():
        sock.sendall(chunk)
        crc = zlib.crc32(chunk, crc)
    sock.shutdown(socket.SHUT_WR)
    return crc


def receive_stream(sock: socket.socket) -> tuple[int, int]:
    """Read to EOF; returns (bytes, CRC-32)."""
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    crc = received = 0
    while nbytes := sock.recv_into(buffer):
        crc = zlib.crc32(view[:nbytes], crc)
        received += nbytes
    return received, crc


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS)


async def echo_through(port: int, stream: Stream) -> tuple[int, int, int]:
    """Send ``stream`` through the proxy at ``port`` to an echo backend while reading the
    echo; returns (sent CRC, received bytes, received CRC)."""
    with connect(port) as sock:
        async with trio.open_nursery() as nursery:
            sent: list[int] = []

            async def sender() -> None:
                sent.append(await trio.to_thread.run_sync(send_stream, sock, stream))

            nursery.start_soon(sender)
            received, crc = await trio.to_thread.run_sync(receive_stream, sock)
    return sent[0], received, crc


def round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read the reply to EOF."""
    with connect(port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return receive_stream_bytes(sock)


def receive_stream_bytes(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


MODES = {"splice": (), "no-splice": ("--no-splice",)}


# ----------------------------------------------------------------------------- tests


@pytest.mark.time_limit(180)
@pytest.mark.parametrize("mode", MODES)
async def test_a_gib_each_way_arrives_intact_with_the_proxy_rss_bounded(
    mode: str, nursery: trio.Nursery
) -> None:
    backend = await start_backend(nursery, echo)
    stream = Stream(GIB)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        sent_crc, received, received_crc = await echo_through(proxy.port, stream)
        peak_rss = proxy.status_kib("VmHWM")
    assert (received, received_crc) == (GIB, sent_crc)
    assert peak_rss < RSS_BOUND_KIB
    assert proxy.statistics["bytes_upstream"] == GIB
    assert proxy.statistics["bytes_downstream"] == GIB
    assert proxy.statistics["spliced"] == (1 if mode == "splice" else 0)


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_stops_reading_stalls_its_upstream_not_other_clients(
    mode: str, poller_name: str, nursery: trio.Nursery
) -> None:
    backend = await start_backend(nursery, echo)
    # More than every socket buffer on the way can hold (a few MiB each).
    stream = Stream(GIB, chunk=64 * 1024)
    async with running_proxy(
        "--upstream", f"127.0.0.1:{backend}", "--poller", poller_name, *MODES[mode]
    ) as proxy:
        with connect(proxy.port) as stalled:
            # Send until the chain backs up to this client: it reads nothing, so the
            # proxy stops reading from the backend, the backend's echo stops reading
            # from the proxy, and the proxy stops reading from this client.
            stalled.setblocking(False)
            sent = sent_crc = 0
            pending = memoryview(b"")
            for chunk in stream.chunks():
                sent_crc = zlib.crc32(chunk, sent_crc)
                pending = chunk
                while pending:
                    try:
                        nbytes = stalled.send(pending)
                    except BlockingIOError:
                        _, writable, _ = await trio.to_thread.run_sync(
                            select.select, [], [stalled], [], 2.0
                        )
                        if not writable:
                            break  # nobody has taken a byte from us for a while
                        continue
                    sent += nbytes
                    pending = pending[nbytes:]
                if pending:
                    break
            assert pending, "the stall never came"
            # Meanwhile another client's round trips go through.
            for index in range(20):
                payload = b"round trip %d " % index * 100
                assert await trio.to_thread.run_sync(round_trip, proxy.port, payload) == payload
            assert proxy.status_kib("VmRSS") < RSS_BOUND_KIB
            # Reading again releases the stall: every byte sent comes back, in order.
            stalled.setblocking(True)
            stalled.settimeout(SOCKET_TIMEOUT_SECONDS)

            def finish_sending() -> None:
                stalled.sendall(pending)
                stalled.shutdown(socket.SHUT_WR)

            async with trio.open_nursery() as senders:
                senders.start_soon(trio.to_thread.run_sync, finish_sending)
                received, received_crc = await trio.to_thread.run_sync(receive_stream, stalled)
    assert (received, received_crc) == (sent + len(pending), sent_crc)
    assert proxy.statistics["connections"] == 21


@pytest.mark.parametrize("mode", MODES)
async def test_the_client_half_closes_and_the_upstream_still_answers(
    mode: str, nursery: trio.Nursery
) -> None:
    async def answers_after_eof(stream: millpond.Connection) -> None:
        request = bytearray()
        while chunk := await stream.receive_some():
            request += chunk
        await stream.send_all(b"got " + bytes(request))
        await stream.send_eof()

    backend = await start_backend(nursery, answers_after_eof)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        reply = await trio.to_thread.run_sync(round_trip, proxy.port, b"question")
    assert reply == b"got question"


@pytest.mark.parametrize("mode", MODES)
async def test_the_upstream_half_closes_and_the_client_still_sends(
    mode: str, nursery: trio.Nursery
) -> None:
    heard = trio.Event()
    received = bytearray()

    async def speaks_first_then_listens(stream: millpond.Connection) -> None:
        await stream.send_all(b"banner")
        await stream.send_eof()
        while chunk := await stream.receive_some():
            received.extend(chunk)
        heard.set()

    def client(port: int) -> bytes:
        with connect(port) as sock:
            banner = receive_stream_bytes(sock)  # the upstream's EOF reached us
            sock.sendall(b"still talking")  # and our direction is still open
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
            return banner

    backend = await start_backend(nursery, speaks_first_then_listens)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        assert await trio.to_thread.run_sync(client, proxy.port) == b"banner"
        with trio.fail_after(SOCKET_TIMEOUT_SECONDS):
            await heard.wait()
    assert received == b"still talking"


async def test_an_upstream_that_refuses_is_skipped_and_round_robin_goes_on(
    nursery: trio.Nursery,
) -> None:
    first = await start_backend(nursery, named(b"first"))
    second = await start_backend(nursery, named(b"second"))
    with refused_port() as refused:
        upstreams = [f"127.0.0.1:{port}" for port in (first, refused, second)]
        async with running_proxy(*(arg for u in upstreams for arg in ("--upstream", u))) as proxy:
            names = [await trio.to_thread.run_sync(round_trip, proxy.port, b"") for _ in range(4)]
    # first; refused, so second; first; refused again, so second.
    assert names == [b"first", b"second", b"first", b"second"]
    assert proxy.statistics["upstream_failures"] == 2
    assert proxy.statistics["no_upstream"] == 0


async def test_an_upstream_that_never_answers_times_out_and_the_next_one_serves(
    nursery: trio.Nursery,
) -> None:
    serving = await start_backend(nursery, named(b"serving"))
    with unanswered_port() as silent:
        upstreams = ("--upstream", f"127.0.0.1:{silent}", "--upstream", f"127.0.0.1:{serving}")
        async with running_proxy(*upstreams, "--connect-timeout", "0.5") as proxy:
            name = await trio.to_thread.run_sync(round_trip, proxy.port, b"")
    assert name == b"serving"
    assert proxy.statistics["upstream_failures"] == 1


async def test_a_client_for_which_every_upstream_fails_is_closed() -> None:
    with unanswered_port() as silent, refused_port() as refused:
        upstreams = ("--upstream", f"127.0.0.1:{silent}", "--upstream", f"127.0.0.1:{refused}")
        async with running_proxy(*upstreams, "--connect-timeout", "0.5") as proxy:
            # Nothing sent: a client whose unread bytes are closed on gets a reset instead.
            reply = await trio.to_thread.run_sync(round_trip, proxy.port, b"")
    assert reply == b""
    assert proxy.statistics["upstream_failures"] == 2
    assert proxy.statistics["no_upstream"] == 1


async def test_sigint_exits_zero_and_a_second_one_closes_open_connections(
    nursery: trio.Nursery,
) -> None:
    backend = await start_backend(nursery, echo)
    idle: socket.socket | None = None
    try:
        async with running_proxy("--upstream", f"127.0.0.1:{backend}", "--grace", "60") as proxy:
            idle = connect(proxy.port)
            idle.sendall(b"x")
            # A blocking call in a thread: the backend runs in this Trio run.
            assert await trio.to_thread.run_sync(idle.recv, 1) == b"x"  # proxied, now idle
            proxy.process.send_signal(signal.SIGINT)  # graceful: would wait for `idle`
            with trio.fail_after(STARTUP_GUARD_SECONDS):
                while b"SIGINT: stopping" not in proxy.stdout:
                    await trio.sleep(0.01)
            # running_proxy's own SIGINT, the second, closes `idle` at once.
        assert await trio.to_thread.run_sync(receive_stream_bytes, idle) == b""
    finally:
        if idle is not None:
            idle.close()
    assert proxy.statistics["connections"] == 1
    assert proxy.statistics["active"] == 0
