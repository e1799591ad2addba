"""Moving bytes one way between two connections: the two data paths of examples/proxy.py.

This module owns one direction of a proxied connection (read from ``source``,
write to ``sink``, pass on the end of file) and nothing else: choosing the
upstream, counting connections and the command line are proxy.py's.

Backpressure is the same on both paths: a direction never reads more than it
can write. It holds at most one chunk (one read, or one pipe's worth), and
it does not read again until ``sink`` has taken all of it. A sink that stops
reading therefore stops its direction, the kernel's socket buffers fill, and
TCP's window closes on the sender: the slow side pauses the fast side, end
to end, with nothing piling up in the proxy.

Two ways to move a chunk
------------------------
* ``forward_pooled`` (any two Trio streams, TLS included): ``receive_some``
  (on a millpond ``Connection``, a read charged to the server's budget until
  the next one) and ``send_all``. Two copies per byte, kernel to Python to
  kernel.
* ``forward_spliced`` (both sides plain TCP sockets, Linux): ``splice(2)``
  from the source socket into a pipe and from the pipe into the sink socket,
  as HAProxy does. The bytes never enter Python, and on Linux the pipe takes
  references to the socket's pages rather than copies, so a chunk costs two
  syscalls and no copy in this process. A pipe holds what one ``splice``
  brought in until it is all written out.

Readiness for splice
--------------------
millpond's poller is edge-triggered, and its rule 3 (``_core/poller.py``)
says that only an EAGAIN consumes readiness: ``Registration.readable`` and
``writable`` stay set until a non-blocking call on the socket says EAGAIN,
and a task may park only after that. ``splice`` is such a call, but not one
of the registration's own, so this module clears the flags itself, and only
at the one moment the rule allows: right after a splice that said EAGAIN on
that socket's side. Which side said it is never in doubt, because the pipe
is empty whenever we splice into it (the previous chunk was written out
completely first) and holds data whenever we splice out of it: an EAGAIN
from socket-to-pipe means the socket had nothing, one from pipe-to-socket
means the socket's send buffer is full. A short splice clears nothing (it
may have stopped because the pipe ran out of slots, not because the socket
was drained), which costs one extra splice that says EAGAIN per burst, and
never a lost edge.

The budget
----------
A pipe's contents are kernel memory the proxy chose to hold, so they are
charged like a read: before splicing in, the direction takes a read's charge
from the server's ``BufferLimiter`` (``acquire_read_nowait``, or waiting in
line with ``acquire_read``), splices at most that many bytes, and gives the
charge back once the pipe is drained. Under memory pressure reads shrink to
the minimum, as a ``Connection``'s do. So a pipe never holds more than the
budget granted, and an idle direction holds neither budget nor a pipe: pipes
go back to a ``PipePool`` when empty (HAProxy keeps a pool of pipes too).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from typing import Final

import trio

import millpond

__all__ = ["Pipe", "PipePool", "Tally", "can_splice", "forward_pooled", "forward_spliced"]

# splice() without blocking on the pipe (the sockets are non-blocking already);
# SPLICE_F_MOVE is a hint the kernel may use to move pages rather than copy.
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

# What a pipe holds unless told otherwise: 1 MiB, the most an unprivileged
# process may ask for (/proc/sys/fs/pipe-max-size) and millpond's largest read.
# Moving a GiB through 64 KiB pipes (the kernel's default, 16 pages) took
# twice the CPU (0.79 s per GiB against 0.36, benchmarks/proxy_compare.py
# --pipe-size). What a pipe actually holds is charged to the budget, whatever
# its size; the size only sets how much one splice may move.
DEFAULT_PIPE_SIZE: Final = 1 << 20

# The smallest charge a spliced read takes (and every one under memory
# pressure): one page, the unit a pipe holds.
MIN_SPLICE_BYTES: Final = 4096

# The first chunk's charge, before the size adapts: a Connection's first read
# is 4 KiB; 16 KiB is HAProxy's buffer, and reaches 1 MiB in six full chunks.
FIRST_SPLICE_BYTES: Final = 16384

# Errors from splice() that mean the peer or the network broke the connection.
_BROKEN_ERRNOS: Final = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN}
)


class Tally:
    """Bytes moved in one direction, for the proxy's statistics (a plain counter)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def can_splice(a: object, b: object) -> bool:
    """Whether bytes between ``a`` and ``b`` can go through ``splice(2)``: both are
    ``millpond.Connection`` objects over TCP sockets, on Linux with ``os.splice``."""
    if sys.platform != "linux" or not hasattr(os, "splice"):
        return False
    for stream in (a, b):
        if not isinstance(stream, millpond.Connection):
            return False  # a trio.SSLStream: the bytes must be decrypted in Python
        sock = stream.socket
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
    return True


async def forward_pooled(
    source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, tally: Tally
) -> None:
    """Move bytes from ``source`` to ``sink`` until EOF, then ``send_eof`` on ``sink``.

    One chunk at a time: the next read waits until ``send_all`` has handed the
    whole chunk to the kernel. On a ``millpond.Connection`` the chunk is read
    under the server's budget and stays charged until the next read.

    ``receive_some`` rather than ``receive_buffer``: measured, a lent buffer
    cost 1.35-1.44 s of CPU per GiB where ``receive_some`` costs 0.77, because
    a read above 64 KiB (a bulk stream's reads grow to 1 MiB) is lent a fresh
    dedicated mapping each time, and its page faults made ``recv_into`` take
    ~680 us per MiB (docs/proxy.md, "What the library could do better").
    """
    async for chunk in source:
        await sink.send_all(chunk)
        tally.bytes += len(chunk)
    await sink.send_eof()


class Pipe:
    """A kernel pipe, both ends non-blocking: where ``forward_spliced`` keeps a chunk."""

    __slots__ = ("read_fd", "size", "write_fd")

    def __init__(self, size: int = DEFAULT_PIPE_SIZE) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            # Over pipe-max-size, or over a hard quota of pipe pages
            # (/proc/sys/fs/pipe-user-pages-hard): keep what the kernel gave.
            self.size = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        """Close both ends (what the pipe still holds is dropped)."""
        os.close(self.read_fd)
        os.close(self.write_fd)


class PipePool:
    """Empty pipes kept for reuse, so a connection does not pay ``pipe2`` + ``fcntl`` per burst.

    ``take`` hands out a pipe (a new one if none is idle); ``give_back`` keeps
    an *empty* pipe for the next taker, up to ``max_idle`` of them, and closes
    the rest. A pipe that may hold data (a direction that failed mid-chunk)
    must be closed instead, never given back.

    Every user has a soft quota of pipe pages (/proc/sys/fs/pipe-user-pages-soft,
    64 MiB of pipes by default, counted at their full size); past it the kernel
    makes new pipes small. 16 idle 1 MiB pipes use a quarter of it.
    """

    def __init__(self, pipe_size: int = DEFAULT_PIPE_SIZE, max_idle: int = 16) -> None:
        self.pipe_size = pipe_size
        self.max_idle = max_idle
        self._idle: list[Pipe] = []
        self.created = 0

    def take(self) -> Pipe:
        """An empty pipe."""
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return Pipe(self.pipe_size)

    def give_back(self, pipe: Pipe) -> None:
        """Keep an empty pipe for reuse (or close it if enough are kept)."""
        if len(self._idle) < self.max_idle:
            self._idle.append(pipe)
        else:
            pipe.close()

    def close(self) -> None:
        """Close every idle pipe."""
        while self._idle:
            self._idle.pop().close()


class _Charge:
    """The budget owner for one spliced direction (its repr names it in the limiter's
    list of top holders)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<proxy pipe {self.name}>"


def _broken(exc: OSError) -> BaseException:
    if exc.errno in _BROKEN_ERRNOS:
        return trio.BrokenResourceError(f"connection broken: {exc}")
    return exc


async def forward_spliced(
    source: millpond.Connection,
    sink: millpond.Connection,
    pipes: PipePool,
    limiter: millpond.BufferLimiter | None,
    tally: Tally,
) -> None:
    """Move bytes from ``source`` to ``sink`` with ``splice(2)`` until EOF, then ``send_eof``.

    Both must be ``millpond.Connection`` objects over TCP (``can_splice``),
    used by nobody else in this direction (this bypasses their ``receive_*``
    and ``send_all``). With a ``limiter``, what the pipe holds is charged to
    it (module docstring); without one it is bounded by the pipe's size.
    """
    # Hot path: one loop per chunk, attributes bound to locals.
    reader = source.poller.registration(source.socket)
    writer = sink.poller.registration(sink.socket)
    source_fd = source.socket.fileno()
    sink_fd = sink.socket.fileno()
    splice = os.splice
    flags = _SPLICE_FLAGS
    checkpoint = trio.lowlevel.checkpoint
    owner = _Charge(f"fd {source_fd} -> fd {sink_fd}")
    pipe: Pipe | None = None
    want = FIRST_SPLICE_BYTES  # what the next chunk is charged: adapts, as reads do
    charged = 0
    in_pipe = 0  # bytes spliced in and not yet out
    yielded = True  # parked or checkpointed since the last chunk
    try:
        while True:
            if not reader.readable:
                # Idle: hold no budget and no pipe while waiting for the peer.
                if charged and limiter is not None:
                    limiter.release_read(owner, charged)
                charged = 0
                if pipe is not None:
                    pipes.give_back(pipe)
                    pipe = None
                await reader.wait_readable()
                yielded = True
            if pipe is None:
                pipe = pipes.take()
            # Readable first, memory second (as Connection does): the bytes wait
            # in the kernel until the budget can hold them.
            if not charged:
                if limiter is None:
                    charged = want
                else:
                    charged = limiter.acquire_read_nowait(owner, want, MIN_SPLICE_BYTES)
                    if not charged:
                        charged = await limiter.acquire_read(owner, MIN_SPLICE_BYTES)
                        yielded = True
            asked = min(charged, pipe.size)
            try:
                spliced = splice(source_fd, pipe.write_fd, asked, flags=flags)
            except BlockingIOError:
                # The pipe is empty, so the EAGAIN is the socket's: it is drained.
                # This is the only place the source's readiness is consumed, with
                # no await since the splice (poller.py, rule 3): an edge that came
                # after it is in the poller's queue, and will set the flag again.
                reader.readable = False
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            if not spliced:
                break  # EOF from the source
            in_pipe = spliced
            # Netty's adaptive reads, simplified: a full chunk doubles the next
            # charge, one that used half of it or less halves it.
            if spliced == asked:
                want = min(want * 2, pipe.size)
            elif spliced <= asked // 2:
                want = max(want // 2, MIN_SPLICE_BYTES)
            if not yielded:
                # Fairness: one chunk per turn. Taken here rather than after the
                # chunk is out, so that a direction about to park (the next
                # splice says EAGAIN) does not pay for a schedule point as well.
                await checkpoint()
            yielded = False
            while in_pipe:
                try:
                    in_pipe -= splice(pipe.read_fd, sink_fd, in_pipe, flags=flags)
                except BlockingIOError:
                    # The pipe holds data, so the EAGAIN is the sink's: its send
                    # buffer is full. Same rule: cleared right after the EAGAIN.
                    writer.writable = False
                    await writer.wait_writable()
                    yielded = True
                except OSError as exc:
                    raise _broken(exc) from exc
            tally.bytes += spliced
            if limiter is not None:
                # Give the charge back at every chunk, so waiters in the
                # limiter's line are served between our chunks.
                limiter.release_read(owner, charged)
            charged = 0
    finally:
        if charged and limiter is not None:
            limiter.release_read(owner, charged)
        if pipe is not None:
            if in_pipe:
                pipe.close()  # interrupted mid-chunk: never reuse a pipe with data
            else:
                pipes.give_back(pipe)
    await sink.send_eof()
