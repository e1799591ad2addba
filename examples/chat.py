"""A line-based chat server with rooms, where one slow client can slow down nobody else.

Run it with ``python examples/chat.py --port 7001`` and talk with
``nc 127.0.0.1 7001`` from several terminals. Every client starts in the
room ``lobby``; a line is sent to everyone in your room (you too: you see
where it landed in the room's order). Commands: ``/join ROOM``,
``/nick NAME``, ``/who``, ``/quit``.

Fan-out never waits for a client. Each message is made once (one ``bytes``
object, shared) and put in every member's outbox (``outbox.py``), which the
member's own writer task drains into its socket. The outbox holds at most
``--high-water`` bytes; a message that does not fit makes the client "not
writable" (Netty's ``WriteBufferWaterMark``), and ``--slow-policy`` decides:

* ``drop-oldest`` (default): the client's oldest queued messages are dropped
  to make room, and it is told how many it missed;
* ``disconnect``: the new message is refused, and a client still not writable
  ``--slow-after`` seconds later is disconnected (the connection's millpond
  ``deadline``).

A client becomes writable again once its writer has brought its outbox down
to ``--low-water`` bytes. So the server holds at most ``--high-water`` bytes
per client whatever the clients do, and the room goes at the pace of the
server, not of its slowest reader. SIGINT/SIGTERM: every client is told, its
outbox flushed for up to ``--grace`` seconds, and the server exits 0 after a
summary line.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable

import trio
from outbox import Batch, Outbox, SlowPolicy, WaterMarks
from serving import add_server_arguments, serve_until_signalled

import millpond

DEFAULT_ROOM = b"lobby"

# Room names and nicknames: short and printable, so a line of the protocol
# can never be forged by a name (no spaces, no newlines, no "***").
NAME = re.compile(rb"[A-Za-z0-9_.-]{1,32}")
MAX_NAME_BYTES = 32

# How much a writer sends at once. The batch is one joined copy, so this also
# caps the extra memory a writer holds while the kernel takes it.
BATCH_BYTES = 16384

# After EOF or /quit, how long the writer may take to send what is still
# queued: a client that quits and never reads must not hold its connection.
FLUSH_SECONDS = 10.0

# /who lists this many names, then a count: a reply must fit under the high
# water mark whatever the room's size.
WHO_NAMES = 20

HELP = b"/join ROOM, /nick NAME, /who, /quit"


class Client:
    """One connection: its name, its room, its outbox, and the tasks' meeting points."""

    __slots__ = (
        "disconnect_at",
        "flush_by",
        "name",
        "outbox",
        "reading",
        "room",
        "stream",
        "wakeup",
    )

    def __init__(self, name: bytes, stream: millpond.Connection, outbox: Outbox) -> None:
        self.name = name
        self.stream = stream
        self.outbox = outbox
        self.room = DEFAULT_ROOM
        # Set while the writer waits for messages (deliver() wakes it).
        self.wakeup: trio.Event | None = None
        # Cancelled to stop reading this client (shutdown).
        self.reading = trio.CancelScope()
        # When the slow policy disconnects it, and when it must have flushed
        # after it stopped reading (inf: not set). The connection's deadline
        # is the earlier of the two.
        self.disconnect_at = math.inf
        self.flush_by = math.inf

    def set_deadline(self) -> None:
        """Give the connection the earlier of its two deadlines (millpond enforces it)."""
        self.stream.deadline = min(self.disconnect_at, self.flush_by)


class Chat:
    """The rooms, and the rules for delivering a message to a member."""

    def __init__(
        self, marks: WaterMarks, policy: SlowPolicy, slow_after: float, max_line: int
    ) -> None:
        self.marks = marks
        self.policy = policy
        self.slow_after = slow_after
        self.max_line = max_line
        self.rooms: dict[bytes, set[Client]] = {}
        self.names: dict[bytes, Client] = {}
        self.clients_served = 0
        self.messages = 0
        self.dropped = 0  # deliveries dropped, over every client that has left
        self.slow_clients: set[bytes] = set()
        self.disconnected = 0
        self.largest_outbox = 0
        # Set by deliver() when a writable client's outbox passes the low mark:
        # the reader fanning out a burst yields then, so that writers send
        # before anyone's outbox fills (see _read).
        self.backlogged = False

    async def serve_client(self, stream: millpond.Connection) -> None:
        """The handler: a reader (this task) and a writer, until EOF, /quit or shutdown."""
        self.clients_served += 1
        client = Client(self._free_name(), stream, Outbox(self.marks, self.policy))
        self.names[client.name] = client
        self._enter(client, DEFAULT_ROOM)
        self.deliver(
            client, b"*** welcome, %s: you are in %s. %s\n" % (client.name, client.room, HELP)
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, client)
                with client.reading:
                    await self._read(client)
                client.outbox.close()  # the writer sends what is queued, then stops
                client.flush_by = trio.current_time() + FLUSH_SECONDS
                client.set_deadline()
                self._wake(client)
        finally:
            self._leave(client)
            if client.disconnect_at <= trio.current_time():
                self.disconnected += 1
                print(
                    f"{client.name.decode()} disconnected: not writable for {self.slow_after:g} s",
                    flush=True,
                )

    def deliver(self, client: Client, message: bytes) -> None:
        """Queue ``message`` for ``client`` and wake its writer; apply the policy if it is full."""
        outbox = client.outbox
        if outbox.put(message):
            self.slow_clients.add(client.name)
            action = (
                "dropping its oldest messages"
                if self.policy is SlowPolicy.DROP_OLDEST
                else f"disconnecting it in {self.slow_after:g} s unless it catches up"
            )
            print(
                f"{client.name.decode()} is not writable ({outbox.pending_bytes} bytes queued, "
                f"high water {self.marks.high}): {action}",
                flush=True,
            )
            if self.policy is SlowPolicy.DISCONNECT:
                client.disconnect_at = trio.current_time() + self.slow_after
                client.set_deadline()
        elif outbox.writable and outbox.pending_bytes > self.marks.low:
            self.backlogged = True
        self._wake(client)

    def broadcast(self, members: Iterable[Client], message: bytes) -> None:
        """Deliver one message to every member: never waits, whoever is slow."""
        self.messages += 1
        deliver = self.deliver
        for member in members:
            deliver(member, message)

    def say_goodbye(self) -> None:
        """Shutdown: tell every client, stop reading, let the writers flush."""
        for room in self.rooms.values():
            for client in room:
                client.outbox.close(b"*** server shutting down\n")
                client.reading.cancel()
                self._wake(client)

    def summary(self) -> str:
        """One line for the end: what was served, what was dropped, the largest outbox."""
        return (
            f"chat: {self.clients_served} clients served, {self.messages} messages, "
            f"{self.dropped} deliveries dropped for {len(self.slow_clients)} slow clients, "
            f"{self.disconnected} disconnected as slow; largest outbox {self.largest_outbox} "
            f"bytes (high water {self.marks.high})"
        )

    async def _write(self, client: Client) -> None:
        outbox = client.outbox
        stream = client.stream
        try:
            while not outbox.finished:
                if not outbox.has_items():
                    client.wakeup = wakeup = trio.Event()
                    await wakeup.wait()
                    continue
                await stream.send_all(_render(outbox.take(BATCH_BYTES)))
                if outbox.sent():
                    print(f"{client.name.decode()} is writable again", flush=True)
                    client.disconnect_at = math.inf  # caught up in time
                    client.set_deadline()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            client.reading.cancel()  # the peer is gone: nothing more to read either

    async def _read(self, client: Client) -> None:
        pending = bytearray()
        try:
            async for chunk in client.stream:
                pending += chunk
                start = 0
                while (end := pending.find(b"\n", start)) >= 0:
                    line = bytes(pending[start:end]).rstrip(b"\r")
                    start = end + 1
                    if not self._command(client, line):
                        return
                    if self.backlogged:
                        # A burst of lines is fanned out a line at a time, but
                        # without a pause every outbox would take the whole
                        # burst before any writer ran, and a burst longer than
                        # the high mark would drop lines for clients that read
                        # as fast as they can. So when outboxes back up, let the
                        # writers run first.
                        self.backlogged = False
                        await trio.lowlevel.checkpoint()
                del pending[:start]
                if len(pending) > self.max_line:
                    self.deliver(client, b"*** line too long (at most %d bytes)\n" % self.max_line)
                    return
        except trio.BrokenResourceError:
            return  # a reset: the writer notices too

    def _command(self, client: Client, line: bytes) -> bool:
        """Act on one line; False ends the connection."""
        if len(line) > self.max_line:
            self.deliver(client, b"*** line too long (at most %d bytes)\n" % self.max_line)
            return False
        if not line.startswith(b"/"):
            if line:
                message = b"%s: %s\n" % (client.name, line)
                self.broadcast(self.rooms[client.room], message)
            return True
        command, _, argument = line.partition(b" ")
        argument = argument.strip()
        if command == b"/quit":
            self.deliver(client, b"*** bye\n")
            return False
        if command == b"/who":
            members = self.rooms[client.room]
            names = b", ".join(sorted(m.name for m in members)[:WHO_NAMES])
            more = b" and %d more" % (len(members) - WHO_NAMES) if len(members) > WHO_NAMES else b""
            reply = b"*** %s: %d here: %s%s\n" % (client.room, len(members), names, more)
        elif command in (b"/join", b"/nick") and not NAME.fullmatch(argument):
            reply = b"*** %s needs a name of 1 to 32 letters, digits, _ . -\n" % command
        elif command == b"/join":
            self._leave_room(client)
            self._enter(client, argument)
            reply = b"*** you are in %s (%d here)\n" % (argument, len(self.rooms[argument]))
        elif command == b"/nick":
            if argument in self.names:
                reply = b"*** %s is taken\n" % argument
            else:
                del self.names[client.name]
                client.name = argument
                self.names[argument] = client
                reply = b"*** you are %s\n" % argument
        else:
            reply = b"*** unknown command; try %s\n" % HELP
        self.deliver(client, reply)
        return True

    def _enter(self, client: Client, room: bytes) -> None:
        client.room = room
        self.rooms.setdefault(room, set()).add(client)

    def _leave_room(self, client: Client) -> None:
        members = self.rooms[client.room]
        members.discard(client)
        if not members:
            del self.rooms[client.room]

    def _leave(self, client: Client) -> None:
        self._leave_room(client)
        del self.names[client.name]
        self.dropped += client.outbox.dropped
        self.largest_outbox = max(self.largest_outbox, client.outbox.peak)

    def _wake(self, client: Client) -> None:
        wakeup = client.wakeup
        if wakeup is not None:
            client.wakeup = None
            wakeup.set()

    def _free_name(self) -> bytes:
        number = self.clients_served
        while (name := b"user%d" % number) in self.names:
            number += 1
        return name


def _render(batch: Batch) -> bytes:
    """A batch as bytes to send: messages as they are, drop markers as a notice."""
    return b"".join(
        item
        if type(item) is bytes
        else b"*** %d messages dropped: you were not reading fast enough\n" % item
        for item in batch
    )


async def main(args: argparse.Namespace) -> None:
    """Serve the chat until SIGINT/SIGTERM, then print a summary."""
    chat = Chat(
        WaterMarks(low=args.low_water, high=args.high_water),
        SlowPolicy(args.slow_policy),
        args.slow_after,
        args.max_line,
    )
    server = millpond.Server(chat.serve_client, args.port, host=args.host)
    await serve_until_signalled(server, args.grace, on_stopping=chat.say_goodbye)
    print(chat.summary(), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Protocol: one line a message; commands " + HELP.decode() + ".",
    )
    add_server_arguments(parser, port=7001)
    parser.add_argument(
        "--high-water",
        type=int,
        default=65536,
        metavar="BYTES",
        help="most bytes queued for one client; past it the client is not writable (default 65536)",
    )
    parser.add_argument(
        "--low-water",
        type=int,
        default=16384,
        metavar="BYTES",
        help="a client that was not writable is writable again at this many (default 16384)",
    )
    parser.add_argument(
        "--slow-policy",
        choices=[policy.value for policy in SlowPolicy],
        default=SlowPolicy.DROP_OLDEST.value,
        help="for a client that is not writable: drop its oldest messages (default), "
        "or disconnect it after --slow-after seconds",
    )
    parser.add_argument(
        "--slow-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --slow-policy disconnect: how long a client may stay not writable (default 10)",
    )
    parser.add_argument(
        "--max-line",
        type=int,
        default=1024,
        metavar="BYTES",
        help="longest line a client may send (default 1024)",
    )
    args = parser.parse_args(argv)
    if args.max_line < 1:
        parser.error("--max-line must be >= 1")
    if not 0 <= args.low_water <= args.high_water:
        parser.error("need 0 <= --low-water <= --high-water")
    # The largest message is a name, ": ", a line and a newline; the longest
    # reply is /who's. Either must fit in an empty outbox.
    largest = max(MAX_NAME_BYTES + 3 + args.max_line, 64 + (MAX_NAME_BYTES + 2) * WHO_NAMES)
    if args.high_water < largest:
        parser.error(f"--high-water must be at least {largest} (the largest message)")
    if args.slow_after < 0:
        parser.error("--slow-after must be >= 0")
    if args.grace < 0:
        parser.error("--grace must be >= 0")
    return args


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
