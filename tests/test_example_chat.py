"""examples/chat.py, run as a user would: 500 clients in one room, 10 of them never read.

One fast client says ``MESSAGES`` numbered lines; the test checks that each of
the 490 clients that read gets every one of them, in order and with no drop
notice; that the 10 that never read were dropped from (``drop-oldest``) or
disconnected (``disconnect``) as the policy says, and nobody else; that no
outbox ever held more than the high water mark; and that the server's peak
RSS stayed within ``RSS_GROWTH_BOUND_KIB`` of what it was once the clients
were in. Then SIGTERM: every reader is told and the server exits 0.

Why the numbers make this deterministic (no timing involved): a slow client
shrinks its receive buffer to the minimum before connecting, so the kernel
takes about 17 KiB for it (its 2.3 KiB window, plus millpond's 16 KiB
``TCP_NOTSENT_LOWAT``) before the server's sends would block; the
``MESSAGES`` lines come to 47 KiB, more than that plus the 8 KiB high water
mark, so every slow client overflows. A fast client keeps the default buffer
(about 160 KiB before a send blocks, measured with Linux's default
``tcp_rmem``), so even a fast client this process never got round to reading
would take all 47 KiB without its outbox filling: the test cannot make a fast
client look slow by being slow itself. The sender writes ``BURST`` lines at a
time and stays at most two bursts ahead of its own echo, so the server is
never flooded faster than it fans out.
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable

import pytest
import trio
from example_process import memory_kib, running_example

CLIENTS = 500
SLOW = 10
MESSAGES = 160
BURST = 16  # lines the sender writes at once
HIGH_WATER = 8192
SHUTDOWN_NOTICE = b"*** server shutting down\n"  # what chat.py queues on close
LOW_WATER = 4096
ROOM = b"test"

# The peak RSS (VmHWM) may exceed the RSS measured once every client has
# joined by at most this much. What the design allows: every outbox full
# (500 x 8 KiB = 4 MiB) and every writer's joined copy of it in flight (4 MiB
# more), plus 8 MiB for the allocator's slack and the read buffers.
# Measured: about 2.3 MiB.
RSS_GROWTH_BOUND_KIB = 16 * 1024

# Hang guard only: the whole exchange takes a few seconds on two cores.
EXCHANGE_GUARD_SECONDS = 100


def line(number: int) -> bytes:
    """The sender's line ``number``: about 300 bytes once the server prefixes the name."""
    return b"message %06d %s" % (number, b"." * 278)


class ChatClient:
    """One client connection, and the lines it has read so far (all, or the unscanned ones)."""

    def __init__(self, name: bytes, stream: trio.SocketStream, keep_lines: bool) -> None:
        self.name = name
        self.stream = stream
        self.keep_lines = keep_lines
        self.pending = b""
        self.lines: list[bytes] = []
        self.scanned = 0  # lines before this index were looked at by read_until

    async def read_until(self, wanted: bytes) -> None:
        """Read until a line after the last one found starts with ``wanted``."""
        while True:
            lines = self.lines
            for index in range(self.scanned, len(lines)):
                if lines[index].startswith(wanted):
                    self.scanned = index + 1
                    return
            self.scanned = len(lines)
            if not self.keep_lines:
                lines.clear()
                self.scanned = 0
            assert await self.read_more(), f"{self.name!r}: EOF before {wanted!r}"

    async def read_more(self) -> bool:
        """Read one chunk and split it into lines; False at EOF."""
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            return False
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        self.lines += complete
        return True

    def lines_from(self, sender: bytes) -> list[bytes]:
        """The lines ``sender`` said in the room, in the order they arrived here."""
        return [seen for seen in self.lines if seen.startswith(sender + b": ")]


async def connect(port: int, name: bytes, slow: bool, keep_lines: bool = True) -> ChatClient:
    """Connect, take ``name``, join the room; a slow client shrinks its receive buffer first."""
    sock = trio.socket.socket()
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    await sock.connect(("127.0.0.1", port))
    client = ChatClient(name, trio.SocketStream(sock), keep_lines)
    await client.stream.send_all(b"/nick %s\n/join %s\n" % (name, ROOM))
    await client.read_until(b"*** you are in " + ROOM)  # a slow client reads nothing after this
    return client


async def say_everything(
    sender: ChatClient, count: int, make_line: Callable[[int], bytes], burst: int
) -> None:
    """Say ``make_line(n)`` for every n below ``count``, ``burst`` lines at a time, and
    at most two bursts ahead of the room.

    The sender is in the room too: before its next burst it reads until the
    burst before last has come back, so the server is never flooded faster
    than it fans out.
    """
    echo = b""
    for first in range(0, count, burst):
        numbers = range(first, min(first + burst, count))
        await sender.stream.send_all(b"".join(make_line(n) + b"\n" for n in numbers))
        if echo:
            await sender.read_until(echo)
        echo = b"%s: %s" % (sender.name, make_line(numbers[-1]))
    await sender.read_until(echo)


@pytest.mark.parametrize("policy", ["drop-oldest", "disconnect"])
@pytest.mark.time_limit(120)
async def test_chat_delivers_everything_to_readers_and_drops_only_the_slow(policy: str) -> None:
    arguments = ["--high-water", str(HIGH_WATER), "--low-water", str(LOW_WATER)]
    arguments += ["--max-line", "512", "--slow-policy", policy, "--slow-after", "1"]
    async with running_example("chat.py", *arguments, "--grace", "20") as chat:
        with trio.fail_after(EXCHANGE_GUARD_SECONDS):
            fast: list[ChatClient] = []
            slow: list[ChatClient] = []

            async def join(name: bytes, is_slow: bool) -> None:
                client = await connect(chat.port, name, is_slow)
                (slow if is_slow else fast).append(client)

            async with trio.open_nursery() as nursery:
                for number in range(CLIENTS - SLOW):
                    nursery.start_soon(join, b"fast%d" % number, False)
                for number in range(SLOW):
                    nursery.start_soon(join, b"slow%d" % number, True)
            joined_kib = memory_kib(chat.pid)["VmRSS"]

            sender = fast[0]
            last = b"%s: %s" % (sender.name, line(MESSAGES - 1))
            async with trio.open_nursery() as nursery:
                for client in fast[1:]:
                    nursery.start_soon(client.read_until, last)
                nursery.start_soon(say_everything, sender, MESSAGES, line, BURST)
            peak_kib = memory_kib(chat.pid)["VmHWM"]

            if policy == "disconnect":
                await chat.wait_for_output(rb"slow\d+ disconnected", count=SLOW)
            for client in slow:  # done with them; a reset ends each one's blocked writer
                await client.stream.aclose()
            returncode = await chat.stop(signal.SIGTERM)
            async with trio.open_nursery() as nursery:
                for client in fast:
                    nursery.start_soon(read_to_eof, client)

    expected = [b"%s: %s" % (sender.name, line(number)) for number in range(MESSAGES)]
    for client in fast:
        assert client.lines_from(sender.name) == expected, client.name
        assert not any(b"messages dropped" in seen for seen in client.lines), client.name
        assert SHUTDOWN_NOTICE.rstrip(b"\n") in client.lines, client.name
    output = chat.stdout.decode()
    assert returncode == 0, chat.output()
    assert "Traceback" not in chat.stderr.decode(), chat.output()
    not_writable = set(re.findall(r"(\w+) is not writable", output))
    assert not_writable == {f"slow{number}" for number in range(SLOW)}, output
    summary = re.search(
        r"(\d+) deliveries dropped for (\d+) slow clients, (\d+) disconnected as slow; "
        r"largest outbox (\d+) bytes",
        output,
    )
    assert summary is not None, output
    dropped, slow_clients, disconnected, largest = map(int, summary.groups())
    assert dropped > 0 and slow_clients == SLOW
    assert disconnected == (SLOW if policy == "disconnect" else 0)
    # The outbox's promise: at most HIGH_WATER, or the shutdown notice more
    # (close() queues it whatever the marks say; it may meet a full outbox).
    assert largest <= HIGH_WATER + len(SHUTDOWN_NOTICE)
    assert peak_kib - joined_kib <= RSS_GROWTH_BOUND_KIB, (joined_kib, peak_kib)
    print(f"chat RSS: {joined_kib} KiB with every client in, peak {peak_kib} KiB ({policy})")


async def read_to_eof(client: ChatClient) -> None:
    """Read what is left (the shutdown notice) until the server closes the connection."""
    while await client.read_more():
        pass


# A sharper test of the memory bound: one client that never reads, and a
# talker who says 40 MB. An outbox that grew would hold nearly all of it.
BULK_LINES = 80_000
BULK_BURST = 64  # 64 lines of 500 bytes: half the default 64 KiB high water mark
BULK_RSS_GROWTH_BOUND_KIB = 16 * 1024  # measured: under 0.1 MiB


def bulk_line(number: int) -> bytes:
    """The talker's line ``number``: 500 bytes, 509 once the server prefixes the name."""
    return b"%08d %s" % (number, b"-" * 491)


@pytest.mark.time_limit(60)
async def test_chat_memory_stays_flat_while_a_client_that_never_reads_is_sent_40_mb() -> None:
    async with running_example("chat.py") as chat:  # defaults: 64 KiB high water, drop-oldest
        with trio.fail_after(EXCHANGE_GUARD_SECONDS):
            talker = await connect(chat.port, b"talker", slow=False, keep_lines=False)
            sleeper = await connect(chat.port, b"sleeper", slow=True)
            before_kib = memory_kib(chat.pid)["VmRSS"]
            await say_everything(talker, BULK_LINES, bulk_line, BULK_BURST)
            peak_kib = memory_kib(chat.pid)["VmHWM"]
            await sleeper.stream.aclose()
            await talker.stream.aclose()
            returncode = await chat.stop(signal.SIGTERM)
    assert returncode == 0, chat.output()
    summary = re.search(rb"(\d+) deliveries dropped for 1 slow clients", chat.stdout)
    assert summary is not None, chat.output()
    # Everything but what its socket and its outbox took (about 17 KiB and 64 KiB).
    delivery_bytes = len(b"talker: " + bulk_line(0) + b"\n")
    assert int(summary.group(1)) * delivery_bytes >= BULK_LINES * delivery_bytes - 2**20
    assert peak_kib - before_kib <= BULK_RSS_GROWTH_BOUND_KIB, (before_kib, peak_kib)
    print(f"chat RSS: {before_kib} KiB before the 40 MB, peak {peak_kib} KiB")
