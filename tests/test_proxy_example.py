"""examples/proxy.py, run as a user would: a subprocess in front of backends in this test.

The backends are millpond servers in the test's Trio run; clients are plain
blocking sockets in worker threads (as a user's client would be), so the
test process can push a GiB while the proxy's process moves it. Most tests
run in both modes (``MODES``), so they cover both data paths of
examples/proxy_forward.py, the module proxy.py moves its bytes with:
``forward_spliced`` (``splice(2)``) and ``forward_pooled`` (``--no-splice``).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from example_process import REPO_ROOT, Example, memory_kib, running_example

import millpond
from millpond.memory.buffers import DEFAULT_MAX_IDLE_BYTES

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="splice(2) and /proc: Linux")

# Hang guards only (reaching one means stuck, not slow).
SOCKET_TIMEOUT_SECONDS = 30
CLOSE_GUARD_SECONDS = 20

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# The budget the tests give the proxy (--budget-mib): every byte of reads and
# pipes it may hold at once.
BUDGET_MIB = 16

# What the proxy's RSS may grow by once it is listening, whatever goes through
# it: the budget; the pool's idle slabs kept between bursts (DEFAULT_MAX_IDLE_BYTES);
# and 16 MiB for what the budget does not see: a received chunk is a fresh bytes
# object from malloc whose charge ends at the next read (so two may be alive per
# direction for a moment), and malloc keeps freed chunks for reuse. A proxy that
# buffered what it cannot pass on would pass this bound within the GiB.
RSS_GROWTH_BOUND_KIB = (BUDGET_MIB * MIB + DEFAULT_MAX_IDLE_BYTES + 16 * MIB) // KIB

STATISTICS = re.compile(rb"statistics (\{.*\})\n")


def kernel_hop_bytes() -> int:
    """The most one direction of a loopback TCP connection can hold in the kernel: the
    sender's send buffer and the receiver's receive buffer at their autotuning maxima."""
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return wmem + rmem


# ----------------------------------------------------------------------------- the proxy


@dataclass
class RunningProxy:
    """The proxy's process (``example``), and the statistics it printed at exit."""

    example: Example
    port: int
    pid: int
    statistics: dict[str, int]


@asynccontextmanager
async def running_proxy(*args: str) -> AsyncIterator[RunningProxy]:
    """Run examples/proxy.py with ``args`` (and ``--budget-mib BUDGET_MIB``); at the end
    stop it with SIGINT, check that it exits 0 with no traceback, and read the statistics
    it prints."""
    async with running_example("proxy.py", "--budget-mib", str(BUDGET_MIB), *args) as example:
        proxy = RunningProxy(example, example.port, example.pid, {})
        yield proxy
        returncode = await example.stop(signal.SIGINT)
        assert returncode == 0, example.output()
        await example.wait_for_output(STATISTICS.pattern)
    assert b"Traceback" not in example.stderr, example.output()
    statistics = STATISTICS.search(example.stdout)
    assert statistics is not None, example.output()
    proxy.statistics.update(json.loads(statistics.group(1)))


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


async def sample_rss(pid: int, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the highest VmRSS seen, sampling until cancelled."""
    while True:
        peak[0] = max(peak[0], memory_kib(pid)["VmRSS"])
        await trio.sleep(0.01)


@pytest.mark.time_limit(120)
@pytest.mark.parametrize("mode", MODES)
async def test_a_gib_each_way_arrives_intact_with_the_proxy_rss_bounded(
    mode: str, nursery: trio.Nursery
) -> None:
    backend = await start_backend(nursery, echo)
    stream = Stream(GIB)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        baseline = memory_kib(proxy.pid)["VmRSS"]
        peak = [baseline]
        async with trio.open_nursery() as sampling:
            sampling.start_soon(sample_rss, proxy.pid, peak)
            sent_crc, received, received_crc = await echo_through(proxy.port, stream)
            sampling.cancel_scope.cancel()
        high_water = memory_kib(proxy.pid)["VmHWM"]  # the kernel's peak, between samples too
    assert (received, received_crc) == (GIB, sent_crc)
    assert peak[0] - baseline < RSS_GROWTH_BOUND_KIB
    assert high_water - baseline < RSS_GROWTH_BOUND_KIB
    assert proxy.statistics["bytes_upstream"] == GIB
    assert proxy.statistics["bytes_downstream"] == GIB
    assert proxy.statistics["spliced"] == (1 if mode == "splice" else 0)


def echo_on(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` on an open connection and read exactly as many bytes back."""
    sock.sendall(payload)
    received = bytearray()
    while len(received) < len(payload):
        chunk = sock.recv(len(payload) - len(received))
        assert chunk, "the proxy closed a connection that should be served"
        received += chunk
    return bytes(received)


async def send_until_stalled(sock: socket.socket, stream: Stream) -> tuple[int, int, memoryview]:
    """Send ``stream`` on a non-blocking socket until nobody has taken a byte for 2 s;
    returns (bytes sent, their CRC-32, the rest of the chunk that did not go)."""
    sent = sent_crc = 0
    for chunk in stream.chunks():
        pending = chunk
        while pending:
            try:
                nbytes = sock.send(pending)
            except BlockingIOError:
                _, writable, _ = await trio.to_thread.run_sync(select.select, [], [sock], [], 2.0)
                if not writable:
                    return sent, sent_crc, pending
                continue
            sent_crc = zlib.crc32(pending[:nbytes], sent_crc)
            sent += nbytes
            pending = pending[nbytes:]
    raise AssertionError(f"the whole stream ({sent} bytes) went through: no stall came")


@pytest.mark.time_limit(60)
@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_stops_reading_stalls_its_upstream_not_other_clients(
    mode: str, poller_name: str, nursery: trio.Nursery
) -> None:
    backend = await start_backend(nursery, echo)
    stream = Stream(GIB, chunk=64 * KIB)
    async with running_proxy(
        "--upstream", f"127.0.0.1:{backend}", "--poller", poller_name, *MODES[mode]
    ) as proxy:
        with connect(proxy.port) as steady, connect(proxy.port) as stalled:
            assert await trio.to_thread.run_sync(echo_on, steady, b"before") == b"before"
            baseline = memory_kib(proxy.pid)["VmRSS"]
            # This client reads nothing, so the proxy stops reading from the backend,
            # the backend's echo stops reading from the proxy, and the proxy stops
            # reading from this client: its sends stop being taken.
            stalled.setblocking(False)
            sent, sent_crc, pending = await send_until_stalled(stalled, stream)
            # What went in is held by the chain's four loopback hops (socket buffers,
            # the kernel's) and at most a budget's worth in the proxy and one read in
            # the echo backend (1 MiB): the proxy did not buffer what it could not pass on.
            assert sent <= 4 * kernel_hop_bytes() + BUDGET_MIB * MIB + MIB
            # Meanwhile, a client connected before goes on getting its echoes, and new
            # clients are accepted and served.
            for index in range(20):
                payload = b"steady %d " % index * 100
                assert await trio.to_thread.run_sync(echo_on, steady, payload) == payload
            for index in range(5):
                payload = b"round trip %d " % index * 100
                assert await trio.to_thread.run_sync(round_trip, proxy.port, payload) == payload
            assert memory_kib(proxy.pid)["VmRSS"] - baseline < RSS_GROWTH_BOUND_KIB
            # Reading again releases the stall: every byte sent comes back, in order.
            stalled.setblocking(True)
            stalled.settimeout(SOCKET_TIMEOUT_SECONDS)

            def finish_sending() -> None:
                stalled.sendall(pending)
                stalled.shutdown(socket.SHUT_WR)

            async with trio.open_nursery() as senders:
                senders.start_soon(trio.to_thread.run_sync, finish_sending)
                received, received_crc = await trio.to_thread.run_sync(receive_stream, stalled)
    assert (received, received_crc) == (sent + len(pending), zlib.crc32(pending, sent_crc))
    assert proxy.statistics["connections"] == 7


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


def request_then_read(port: int, request: bytes) -> bytes:
    """Send ``request`` without half-closing, as an HTTP client does, and read until the
    proxy's EOF (a reset raises ConnectionResetError)."""
    with connect(port) as sock:
        sock.sendall(request)
        return receive_stream_bytes(sock)


async def test_a_refused_upstream_closes_the_client_cleanly_and_the_proxy_serves_on() -> None:
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        port = upstream.getsockname()[1]
        async with running_proxy("--upstream", f"127.0.0.1:{port}") as proxy:
            # The request went in before the proxy gave up; it reads and drops it, so its
            # close is a FIN (an EOF here), not a reset.
            assert await trio.to_thread.run_sync(request_then_read, proxy.port, b"GET /\r\n") == b""
            assert await trio.to_thread.run_sync(request_then_read, proxy.port, b"again") == b""
            # The upstream comes up: the next client is served.
            upstream.listen()
            listener = trio.socket.from_stdlib_socket(upstream)

            async def answer_once() -> None:
                accepted, _ = await listener.accept()
                with accepted:
                    await accepted.send(b"up")

            async with trio.open_nursery() as serving:
                serving.start_soon(answer_once)
                assert await trio.to_thread.run_sync(round_trip, proxy.port, b"") == b"up"
    assert proxy.statistics["no_upstream"] == 2
    assert proxy.statistics["upstream_failures"] == 2
    assert proxy.statistics["connections"] == 3


def reset(stream: millpond.Connection) -> None:
    """Close with SO_LINGER 0: the peer gets a reset (RST), not a FIN."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Read until the connection ends, by an EOF or by a reset; return what came before."""
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_reset_closes_the_client_and_the_proxy_serves_on(
    mode: str, nursery: trio.Nursery
) -> None:
    connections = 0

    async def resets_the_first_then_echoes(stream: millpond.Connection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await stream.send_all(b"partial")
            await stream.receive_some()  # the client has said something: now break
            reset(stream)
            return
        await echo(stream)

    def client(port: int) -> bytes:
        with connect(port) as sock:
            assert sock.recv(7) == b"partial"
            sock.sendall(b"more")
            return read_until_closed(sock)  # not left open: a hang fails on the timeout

    backend = await start_backend(nursery, resets_the_first_then_echoes)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        assert await trio.to_thread.run_sync(client, proxy.port) == b""
        assert await trio.to_thread.run_sync(round_trip, proxy.port, b"next") == b"next"
    assert proxy.statistics["resets"] == 1
    assert proxy.statistics["connections"] == 2


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_reset_closes_the_upstream_and_the_proxy_serves_on(
    mode: str, nursery: trio.Nursery
) -> None:
    ended: list[bytes] = []
    ended_event = trio.Event()

    async def records_how_it_ended(stream: millpond.Connection) -> None:
        received = bytearray()
        try:
            async for chunk in stream:
                received += chunk
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            received += b" (reset)"
        ended.append(bytes(received))
        ended_event.set()

    def resetting_client(port: int) -> None:
        with connect(port) as sock:
            assert echo_on(sock, b"hello") == b"hello"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    backend = await start_backend(nursery, records_how_it_ended)
    async with running_proxy("--upstream", f"127.0.0.1:{backend}", *MODES[mode]) as proxy:
        await trio.to_thread.run_sync(resetting_client, proxy.port)
        with trio.fail_after(CLOSE_GUARD_SECONDS):
            await ended_event.wait()  # the proxy closed its upstream connection too
        assert await trio.to_thread.run_sync(round_trip, proxy.port, b"next") == b"next"
    assert ended[0] == b"hello"  # the proxy closed it: an EOF, not a reset passed on
    assert proxy.statistics["resets"] == 1
    assert proxy.statistics["connections"] == 2


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


async def test_a_client_for_which_every_upstream_fails_is_closed_cleanly() -> None:
    with unanswered_port() as silent, refused_port() as refused:
        upstreams = ("--upstream", f"127.0.0.1:{silent}", "--upstream", f"127.0.0.1:{refused}")
        async with running_proxy(*upstreams, "--connect-timeout", "0.5") as proxy:
            reply = await trio.to_thread.run_sync(request_then_read, proxy.port, b"hello?")
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
            # A blocking call in a thread: the backend runs in this Trio run.
            assert await trio.to_thread.run_sync(echo_on, idle, b"x") == b"x"  # proxied, idle
            proxy.example.process.send_signal(signal.SIGINT)  # graceful: would wait for `idle`
            await proxy.example.wait_for_output(rb"SIGINT: stopping")
            # running_proxy's own SIGINT, the second, closes `idle` at once.
        assert await trio.to_thread.run_sync(receive_stream_bytes, idle) == b""
    finally:
        if idle is not None:
            idle.close()
    assert proxy.statistics["connections"] == 1
    assert proxy.statistics["active"] == 0


def run_proxy_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "examples/proxy.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SOCKET_TIMEOUT_SECONDS,
    )


def test_help_names_every_flag() -> None:
    result = run_proxy_command("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--upstream HOST:PORT", "--connect-timeout", "--no-splice"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "--upstream"),
        (("--upstream", "localhost"), "expected HOST:PORT"),
        (("--upstream", "localhost:0"), "expected HOST:PORT"),
        (("--upstream", "h:1", "--connect-timeout", "0"), "--connect-timeout must be > 0"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(args: tuple[str, ...], complaint: str) -> None:
    result = run_proxy_command(*args)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
