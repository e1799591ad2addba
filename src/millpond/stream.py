"""Connections: a Trio ``HalfCloseableStream`` over a non-blocking TCP socket.

This module owns moving bytes between one socket and its handler: receive,
send, half-close and close, parking on the poller when the kernel says
EAGAIN. It does not accept connections (that is the server's job).

Checkpoints follow Trio's rule for operations that may not block
(``trio/_socket.py``, ``_nonblocking_helper``): check for cancellation first,
try the syscall, and if it succeeded without parking, finish with
``cancel_shielded_checkpoint()`` so every call is a full checkpoint. That
schedule point is also what keeps a connection that always finds data from
starving the others: it can do at most one operation before yielding.

With a ``BufferPool`` (every server connection has one) reads are budgeted:
readiness first, memory second, every chunk charged to the pool's limiter
until the handler asks for more, unsent send tails charged too. The rules and
defaults are in ``docs/memory.md``.
"""

from __future__ import annotations

import errno
import math
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn, TypeAlias, TypeVar, overload

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._core.poller import Poller, Registration, get_poller
from ._core.traps import SCHEDULE_POINT, cancel_pending
from .memory.buffers import Buffer, BufferPool
from .memory.ledger import _Ledger, keep_read, read_request, return_read, take_read
from .memory.readsize import DEFAULT_READ_SIZES, MAX_READ_BYTES, READ_SIZE_CLASSES, ReadSizes, adapt
from .memory.sizeclasses import MAX_CLASS_BYTES, capacity_for
from .protocols import ProxyHeader

T = TypeVar("T")

SockOptValue: TypeAlias = int | bytes | bytearray | memoryview

__all__ = ["DEFAULT_RECEIVE_SIZE", "Connection"]

# Same default as trio.SocketStream: large enough that bulk transfers take
# few syscalls; the kernel returns only what it has, so small messages stay
# small (CPython shrinks the bytes object to the received length).
DEFAULT_RECEIVE_SIZE: Final = 65536

# Trio's SocketStream sets TCP_NOTSENT_LOWAT to 16 KiB: the kernel keeps at
# most that much unsent data queued, so wait_send_all_might_not_block means
# "the queue is short", not "the 4 MiB send buffer has a byte free".
NOTSENT_LOWAT: Final = 16384

# How much a connection may read without its socket draining before its reads
# count as a backlog (data that was waiting before the handler asked: a bulk
# upload, or a flood that never reads its answers), which under memory pressure
# waits for the budget below the pressure mark (docs/memory.md). 4 KiB is
# Linux's tcp_rmem[0], what every socket may buffer even at the hard limit: a
# request up to that size, read in any number of pieces, counts as what the
# peer just sent. Larger, the flood's reads before it parks cost task steps
# (16 KiB kept a well-behaved client at ~1 % of its rate for 4 s of a flood
# of 1000, 4 KiB for about 1 s).
BACKLOG_ALLOWANCE: Final = 4096

# Linux's value, for Pythons whose socket module does not export it.
_TCP_NOTSENT_LOWAT: Final = getattr(
    socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform == "linux" else None
)

# errnos that mean the peer or the network broke the connection.
_BROKEN_ERRNOS: Final = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN}
)


def configure_socket(sock: socket.socket) -> None:
    """Apply the same defaults as ``trio.SocketStream``, non-blocking mode included."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_NOTSENT_LOWAT is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            except OSError:  # pragma: no cover - kernels without it
                pass


def check_memory_arguments(pool: object, read_sizes: object) -> None:
    """Raise ``TypeError`` naming ``pool`` or ``read_sizes`` if either is the wrong type."""
    if pool is not None and not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool or None, not {type(pool).__name__}")
    if read_sizes is not None and not isinstance(read_sizes, ReadSizes):
        raise TypeError(f"read_sizes must be a ReadSizes or None, not {type(read_sizes).__name__}")


def _check_connected_stream(sock: object) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``sock`` unless it is an open, connected
    stream socket (one a ``Connection`` can own)."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if sock.fileno() < 0:
        raise ValueError("sock is closed")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("sock must be a SOCK_STREAM socket")
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ValueError("sock must be connected (or accepted) first") from None
        raise


def _broken(exc: OSError) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"connection broken: {exc}")


class Connection(trio.abc.HalfCloseableStream):
    """A TCP connection as a Trio stream: what a millpond handler receives.

    It behaves like ``trio.SocketStream`` (same errors, same checkpoints, same
    socket options: ``TCP_NODELAY`` on, ``TCP_NOTSENT_LOWAT`` 16 KiB) but parks
    on millpond's poller, so an idle connection costs one registration and no
    syscalls. It composes with anything that takes a Trio stream, such as
    ``trio.SSLStream`` or h11::

        async def echo(stream: millpond.Connection) -> None:
            async for chunk in stream:
                await stream.send_all(chunk)

    The socket must be connected and not used by anyone else; the connection
    owns it from now on and closes it in ``aclose``.
    """

    __slots__ = (
        "_run_bytes",
        "_bytes_received",
        "_bytes_sent",
        "_clock",
        "_closed",
        "_deadline",
        "_deadline_changed",
        "_eof_received",
        "_guaranteed_read",
        "_last_activity",
        "_proxy_header",
        "_receive_waiting_since",
        "_send_blocked_since",
        "_eof_sent",
        "_held_read",
        "_ledger",
        "_limiter",
        "_poller",
        "_pool",
        "_preferred_read",
        "_read_index",
        "_read_maximum_index",
        "_read_minimum",
        "_read_minimum_index",
        "_receive_memory_wait",
        "_waiting_for_memory",
        "_receiving",
        "_registration",
        "_scratch",
        "_sending",
        "_shrink_below",
        "_shrink_pending",
        "_sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        poller: Poller | str = "auto",
        pool: BufferPool | None = None,
        read_sizes: ReadSizes | None = None,
        guaranteed_read: int = 0,
    ) -> None:
        # Validate and prepare everything first, register last: a failure
        # leaves nothing registered, and the socket is still the caller's.
        _check_connected_stream(sock)
        if type(guaranteed_read) is not int or guaranteed_read < 0:
            raise ValueError(f"guaranteed_read must be an int >= 0, not {guaranteed_read!r}")
        if isinstance(poller, str):
            poller = get_poller(poller)
        elif not isinstance(poller, Poller):
            raise TypeError(f"poller must be a Poller or a name, not {type(poller).__name__}")
        check_memory_arguments(pool, read_sizes)
        if read_sizes is None:
            read_sizes = DEFAULT_READ_SIZES
        # Receive memory: with a pool, every read is charged to the pool's
        # limiter only once the socket is readable, so an idle connection
        # holds nothing. The read size adapts (see readsize.py) and follows
        # the budget as it is at each read (ledger.read_request).
        limiter = None if pool is None else pool.limiter
        # The limiter's bookkeeping, reached directly: the receive path
        # charges reads with one plain call each way (ledger.py's read rules).
        self._ledger = None if limiter is None else limiter.read_ledger()
        self._scratch = None if pool is None else pool.scratch()
        configure_socket(sock)
        self._registration: Registration = poller.register(sock)
        self._sock = sock
        self._poller = poller
        self._pool = pool
        self._limiter = limiter
        self._closed = False
        self._receiving = False
        self._sending = False
        self._eof_sent = False
        self._read_minimum_index = read_sizes.minimum_index
        self._read_minimum = read_sizes.minimum
        self._read_maximum_index = read_sizes.maximum_index
        self._read_index = read_sizes.initial_index
        self._shrink_pending = False
        # Derived from _read_index by _adapt(), kept for the hot path.
        self._preferred_read = read_sizes.initial
        self._shrink_below = self._shrink_threshold()
        # Bytes of the last chunk receive_some returned, still charged to the
        # limiter: the handler holds them until it asks for more (see
        # _receive), so they count against the budget until then.
        self._held_read = 0
        # What a read may take beyond a spent budget (see _read_now): 0 waits instead.
        self._guaranteed_read = guaranteed_read
        # Bytes read since the socket last drained (a read that did not fill its
        # buffer): beyond BACKLOG_ALLOWANCE the connection reads a backlog (data that
        # was waiting before it asked: a bulk upload, or a flood), and such a read
        # yields the budget above the pressure mark and gets no guaranteed read
        # (docs/memory.md, "A flood cannot crowd out a prompt client").
        self._run_bytes = 0
        # The cancel scope around a wait for memory, so that close() can end
        # it (a task waiting in the limiter is not parked on the socket).
        self._receive_memory_wait: trio.CancelScope | None = None
        # A receive_some waiting in the limiter for a read's charge (see _receive).
        self._waiting_for_memory = False
        # Counted always (statistics, the access log); cheap integer adds.
        self._bytes_received = 0
        self._bytes_sent = 0
        self._eof_received = False
        # Timing notes for a server's timeouts (server/timeouts.py): kept only
        # while _clock is set, so a connection without timeouts reads no clock.
        self._clock: Callable[[], float] | None = None
        self._last_activity = 0.0
        self._receive_waiting_since: float | None = None
        self._send_blocked_since: float | None = None
        self._deadline = math.inf
        self._deadline_changed: Callable[[], None] | None = None
        # The PROXY protocol header a server read before the handler (server/proxy_header.py).
        self._proxy_header: ProxyHeader | None = None

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (for options; do not read or write it)."""
        return self._sock

    @property
    def poller(self) -> Poller:
        """The poller this connection parks on."""
        return self._poller

    @property
    def bytes_received(self) -> int:
        """Bytes received so far (what ``receive_some``/``receive_buffer`` returned)."""
        return self._bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes the kernel has taken from ``send_all`` so far."""
        return self._bytes_sent

    @property
    def eof_received(self) -> bool:
        """Whether a receive has returned the peer's end of file."""
        return self._eof_received

    @property
    def state(self) -> str:
        """What the connection is doing right now, for statistics and debugging.

        ``"waiting for memory"`` (a receive queued in the budget),
        ``"writing"`` (inside ``send_all``), ``"reading"`` (inside a receive
        that may find data), ``"idle"`` (a receive parked until the peer
        sends), ``"in handler"`` (none of these: the handler is busy
        elsewhere) or ``"closed"``.
        """
        if self._closed:
            return "closed"
        if self._receive_memory_wait is not None or self._waiting_for_memory:
            return "waiting for memory"
        if self._sending:
            return "writing"
        if self._receiving:
            return "reading" if self._registration.readable else "idle"
        return "in handler"

    @property
    def deadline(self) -> float:
        """When a server closes this connection, in ``trio.current_time()`` terms (inf: never).

        The per-connection deadline for protocols on top, and the defence
        against a client that trickles a byte a second (which no inactivity
        timeout catches): give the request headers ten seconds in all, then
        move the deadline on for the body::

            stream.deadline = trio.current_time() + 10
            headers = await read_headers(stream)
            stream.deadline = trio.current_time() + 60

        Past it, the server cancels the handler and closes the connection
        (no memory needed), and counts a ``deadline`` close. Setting it on a
        connection no server watches (``open_connection``'s) stores it and
        enforces nothing: use ``trio.fail_at`` there.
        """
        return self._deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise TypeError(f"deadline must be a number (trio.current_time() terms), not {when!r}")
        if math.isnan(when):
            raise ValueError("deadline must not be NaN")
        self._deadline = float(when)
        if self._deadline_changed is not None:
            self._deadline_changed()

    def _start_timing(
        self, clock: Callable[[], float] | None, deadline_changed: Callable[[], None] | None
    ) -> None:
        """For the server's timeouts: note I/O times with ``clock`` (None: stop)."""
        self._clock = clock
        self._deadline_changed = deadline_changed
        if clock is not None:
            self._last_activity = clock()

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has been called."""
        return self._closed

    # receive_some is a plain method that returns the coroutine of _receive,
    # and __anext__ is _receive itself: one coroutine frame per receive instead
    # of two (Trio's ReceiveStream.__anext__ awaits receive_some). On an idle
    # connection, parked inside ``async for``, that is 270 bytes less.
    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes]:
        """Return up to ``max_bytes`` bytes, waiting for at least one; ``b""`` at EOF."""
        return self._receive(max_bytes, False)

    def _start_receiving(self, max_bytes: int | None) -> int:
        """Checks shared by every receive; returns ``max_bytes`` resolved.

        Asking for more also means the handler is done with the last chunk:
        the caller releases its charge before any park (an idle connection
        holds nothing), or hands it on to the next read (see _receive).
        """
        if max_bytes is None:
            # With a pool the adaptive read size decides (up to 1 MiB).
            max_bytes = DEFAULT_RECEIVE_SIZE if self._pool is None else MAX_READ_BYTES
        elif type(max_bytes) is not int:
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        elif max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, not {max_bytes}")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was closed")
        self._receiving = True
        return max_bytes

    # The frame of _receive is what a parked idle connection keeps, so it
    # holds only what the park needs; the read itself is _read_now's.
    async def _receive(
        self, max_bytes: int | None = None, eof_stops_iteration: bool = True
    ) -> bytes:
        """Next chunk for ``async for``; stops at EOF (as ``__anext__``)."""
        if max_bytes is None and not (self._receiving or self._closed):
            # Hot path (``async for``): nothing to validate.
            max_bytes = DEFAULT_RECEIVE_SIZE if self._pool is None else MAX_READ_BYTES
            self._receiving = True
        else:
            max_bytes = self._start_receiving(max_bytes)
        try:
            registration = self._registration
            if registration.readable and cancel_pending():
                # Not about to park (a park is a cancel point of its own).
                await checkpoint_if_cancelled()
            parked = False
            granted = 0
            while True:
                # Wait for readiness first, memory second: an idle connection
                # holds no buffer, and bytes stay in the kernel until we can
                # afford them. A wake-up does not consume the edge (poller.py,
                # rule 3): only the read's EAGAIN does, so stopping anywhere
                # between the two (a cancelled wait for memory) loses nothing.
                if not registration.readable:
                    if self._held_read:  # a parked connection holds nothing
                        ledger = self._ledger
                        if ledger is not None and return_read(ledger, self, self._held_read):
                            self._held_read = 0
                        else:
                            self._release_held_read()
                    if self._clock is not None:
                        self._note_receive_waiting()
                    await registration.park_readable()
                    if registration.read_failure is not None:
                        registration.raise_read_failure()
                    parked = True
                data = self._read_now(max_bytes, granted)
                if isinstance(data, bytes):
                    break
                granted = 0
                if data:
                    # The budget is spent or others wait first: queue (FIFO, cancellable;
                    # the bytes wait in the kernel meanwhile) until a read is charged.
                    # Awaited right here, with no frame or cancel scope of its own: a
                    # flood parks a thousand connections in this wait (close() ends it
                    # through the limiter).
                    if self._clock is not None:
                        self._note_receive_waiting()
                    self._waiting_for_memory = True
                    try:
                        granted = await self._limiter.acquire_read(  # type: ignore[union-attr]
                            self, data, backlog=self._run_bytes > BACKLOG_ALLOWANCE
                        )
                    finally:
                        self._waiting_for_memory = False
                    parked = True
            if not parked:
                await SCHEDULE_POINT
        except BaseException:
            if self._held_read:  # stopped before the read: hold nothing meanwhile
                self._release_held_read()
            raise
        finally:
            self._receiving = False
            if self._receive_waiting_since is not None:
                self._receive_waiting_since = None
        if not data and eof_stops_iteration:
            raise StopAsyncIteration
        return data

    # ``async for`` calls _receive itself, with its defaults: no call in between.
    __anext__ = _receive

    def _read_now(self, max_bytes: int, granted: int) -> bytes | int:
        """One read without waiting: the bytes (``b""`` at EOF) or, as an int, what to wait for.

        ``0`` means the kernel said EAGAIN (the registration now parks the
        next receive); a positive int is the bytes the limiter must grant
        first (``granted`` then says how many it did). Every byte returned
        stays charged (``_held_read``) until the next receive.
        """
        registration = self._registration
        ledger = self._ledger
        if self._pool is None:
            try:
                data = registration.recv(max_bytes)
            except OSError as exc:
                raise self._stream_error(exc) from exc
            if data is None:
                return 0
            if data:
                self._note_received(len(data))
            else:
                self._eof_received = True
            return data
        # Hot path: sizes kept in slots by _adapt(), the ledger's read rules
        # called directly, adapt() called only when it would act.
        size = granted
        if not size:
            preferred = self._preferred_read
            minimum = self._read_minimum
            if max_bytes < preferred:
                preferred = max_bytes
                if max_bytes < minimum:
                    minimum = max_bytes
            held = self._held_read
            if held:
                self._held_read = 0
                if ledger is not None and keep_read(ledger, held, preferred):
                    size = held
                else:
                    self._give_back_read(held)
            if not size:
                if ledger is None:  # a pool that charges no limiter
                    size = preferred
                else:
                    size = take_read(
                        ledger, self, preferred, minimum, self._run_bytes > BACKLOG_ALLOWANCE
                    )
                    if not size:
                        size = self._guaranteed(ledger, minimum)
                        if not size:
                            return minimum
        # The lease of the pool's scratch buffer lasts one syscall: the bytes
        # are copied out before anything else can run (see
        # BufferPool.scratch). The charge stays (_held_read).
        #
        # The syscall is Registration.recv_into/recv inlined (one Python call less
        # per message): an EAGAIN, or a short read while the peer has not hung up,
        # clears ``readable``, exactly as there (poller.py, rule 3).
        scratch = self._scratch
        try:
            if size <= MAX_CLASS_BYTES:
                received = self._sock.recv_into(scratch, size)  # type: ignore[arg-type]
                data = scratch[:received]  # type: ignore[index]
            else:
                # Beyond the scratch buffer (a bulk stream's large reads):
                # straight into the bytes returned, no copy.
                data = self._sock.recv(size)
                received = len(data)
        except BlockingIOError:
            registration.found_nothing_to_read()
            received = -1
        except OSError as exc:
            self._give_back_read(size)
            raise self._stream_error(exc) from exc
        if received > 0:
            self._bytes_received += received
            if self._clock is not None:
                self._last_activity = self._clock()
            if ledger is not None:
                self._held_read = size
            # adapt() acts on a read of the preferred size that filled it or
            # was small (below _shrink_below); any other read ends a pending shrink.
            if received < size:
                if not registration.hangup:
                    registration.readable = False
                self._run_bytes = 0
                if received < self._shrink_below and size == self._preferred_read:
                    self._adapt(received)
                elif self._shrink_pending:
                    self._shrink_pending = False
            else:
                self._run_bytes += received
                if size == self._preferred_read:
                    self._adapt(received)
                elif self._shrink_pending:
                    self._shrink_pending = False
            return data  # type: ignore[return-value]
        self._give_back_read(size)  # EAGAIN or EOF: nothing is held after all
        self._run_bytes = 0  # drained: the next bytes are what the peer sends next
        if received < 0:
            return 0
        self._eof_received = True
        return b""

    def _guaranteed(self, ledger: _Ledger, minimum: int) -> int:
        """The guaranteed minimum read, charged past the budget; 0 if there is none.

        Linux guarantees every socket ``tcp_rmem[0]`` of receive memory even
        at its hard limit, so that each can always make progress; this is
        the same promise for a connection that holds nothing of the budget
        (it gave its last chunk back before asking). Without it, a budget
        held entirely by handlers blocked on peers that never read (a flood)
        would keep a well-behaved client waiting for memory that nobody will
        release. The charge is counted at once (``charge_on_behalf_of``), so
        the budget's bound becomes ``total_bytes`` plus ``guaranteed_read``
        per connection reading at once (docs/memory.md).
        """
        guaranteed = self._guaranteed_read
        if not guaranteed or self._run_bytes > BACKLOG_ALLOWANCE or self in ledger.held:
            return 0
        size = min(guaranteed, minimum)
        self._limiter.charge_on_behalf_of(self, size)  # type: ignore[union-attr]
        return size

    @asynccontextmanager
    async def receive_buffer(self, max_bytes: int | None = None) -> AsyncIterator[Buffer]:
        """Receive into a pooled buffer and lend it to the caller, without copying.

        ``buf.view`` holds the bytes received (empty at EOF); the buffer goes
        back to the pool when the ``async with`` block ends, whatever happens::

            async with stream.receive_buffer() as buf:
                if not buf.nbytes:
                    return  # EOF
                await stream.send_all(buf.view)

        Needs a connection made with a ``pool`` (every server connection is).
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("receive_buffer() needs a Connection made with a BufferPool")
        max_bytes = self._start_receiving(max_bytes)
        try:
            if self._held_read:
                self._release_held_read()
            if cancel_pending():
                await checkpoint_if_cancelled()
            registration = self._registration
            parked = False
            while True:
                if not registration.readable:
                    if self._clock is not None:
                        self._note_receive_waiting()
                    await registration.park_readable()
                    if registration.read_failure is not None:
                        registration.raise_read_failure()
                    parked = True
                size = self._read_size(max_bytes)
                try:
                    if not size:
                        raise trio.WouldBlock
                    buffer = pool.lease_nowait(size, owner=self)
                except trio.WouldBlock:
                    if self._clock is not None:
                        self._note_receive_waiting()
                    buffer = await self._lease_waiting(max_bytes)
                    parked = True
                try:
                    received = self._read_into(buffer.view, buffer.nbytes)
                except BaseException:
                    buffer.release()
                    raise
                if received >= 0:
                    break
                buffer.release()
            if not parked:
                try:
                    await SCHEDULE_POINT
                except BaseException:
                    buffer.release()
                    raise
        finally:
            self._receiving = False
            if self._receive_waiting_since is not None:
                self._receive_waiting_since = None
        buffer.set_length(received)
        with buffer:
            yield buffer

    async def _lease_waiting(self, max_bytes: int) -> Buffer:
        """Lease receive_buffer's next buffer, waiting for memory (and for a budget that
        can hold one at all, if total_bytes shrank below the smallest size class)."""
        pool, limiter = self._pool, self._limiter
        assert pool is not None
        while True:
            size = self._read_size(max_bytes)
            if not size:
                assert limiter is not None
                await self._unless_closed(limiter._wait_for_resize())
                continue
            try:
                return await self._unless_closed(pool.lease(size, owner=self))
            except ValueError:
                # total_bytes shrank below the request while it waited: ask again.
                if limiter is None or capacity_for(size) <= limiter.ordinary_bytes:
                    raise

    async def _unless_closed(self, waiting: Awaitable[T]) -> T:
        """Await a wait for memory that ``close()`` can end (it cancels the scope)."""
        scope = self._receive_memory_wait = trio.CancelScope()
        try:
            with scope:
                return await waiting
        finally:
            self._receive_memory_wait = None
        raise trio.ClosedResourceError("this connection was closed")

    def _release_held_read(self) -> None:
        held, self._held_read = self._held_read, 0
        self._give_back_read(held)

    def _give_back_read(self, nbytes: int) -> None:
        """Return a read's charge: the ledger's fast path when nobody waits."""
        ledger = self._ledger
        if ledger is not None and not return_read(ledger, self, nbytes):
            # Waiters to serve: the general release, which hands the bytes on.
            self._limiter.release_on_behalf_of(self, nbytes)  # type: ignore[union-attr]

    def _read_size(self, max_bytes: int) -> int:
        """Size of receive_buffer's next lease: a size class the budget can grant now
        (ledger.read_request), at most ``max_bytes``; 0 if no class fits the budget."""
        size = READ_SIZE_CLASSES[self._read_index]
        ledger = self._ledger
        if ledger is not None:
            size = read_request(ledger, size, self._read_minimum, self)
            if capacity_for(size) > ledger.ordinary_limit:  # a lease is charged its class
                return 0
        return max_bytes if max_bytes < size else size

    def _read_into(self, view: memoryview, size: int) -> int:
        """One ``recv_into``, adapting the read size; -1 if the kernel said EAGAIN."""
        try:
            received = self._registration.recv_into(view, size)
        except OSError as exc:
            raise self._stream_error(exc) from exc
        if received > 0:
            self._note_received(received)
            if size == READ_SIZE_CLASSES[self._read_index]:
                self._adapt(received)  # a full-size read, not one shrunk by the budget
        elif received == 0:
            self._eof_received = True
        return received

    def _note_received(self, nbytes: int) -> None:
        self._bytes_received += nbytes
        if self._clock is not None:
            self._last_activity = self._clock()

    def _note_sent(self, nbytes: int) -> None:
        self._bytes_sent += nbytes
        if self._clock is not None:
            self._last_activity = self._clock()

    def _note_receive_waiting(self) -> None:
        # A receive's first wait (read_timeout counts from it); self._clock is set.
        if self._receive_waiting_since is None:
            self._receive_waiting_since = self._clock()  # type: ignore[misc]

    def _adapt(self, received: int) -> None:
        self._read_index, self._shrink_pending = adapt(
            self._read_index,
            received,
            self._shrink_pending,
            self._read_minimum_index,
            self._read_maximum_index,
        )
        self._preferred_read = READ_SIZE_CLASSES[self._read_index]
        self._shrink_below = self._shrink_threshold()

    def _shrink_threshold(self) -> int:
        # A read below this would have fitted the class below: a "small" read.
        if self._read_index > self._read_minimum_index:
            return READ_SIZE_CLASSES[self._read_index - 1]
        return 0

    def _stream_error(self, exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
        if self._closed:
            return trio.ClosedResourceError("this connection was closed")
        return _broken(exc)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting while the kernel's send queue is full.

        The bytes are never copied in Python: partial sends continue from a
        memoryview slice. If cancelled part-way, some data may have been sent
        and the stream is then no longer usable for sending (Trio's contract).
        """
        if self._sending or self._closed or self._eof_sent:
            self._raise_cannot_send()
        self._sending = True
        try:
            if cancel_pending():  # await checkpoint_if_cancelled(), without a coroutine
                await checkpoint_if_cancelled()
            # Hot path: bytes or a bytearray the kernel takes whole, as a
            # small message does: one send(), then the schedule point.
            if type(data) is bytes or type(data) is bytearray:
                # The socket's own send, one Python call less per message than
                # Registration.send: on EAGAIN, _send_rest sends again through
                # the registration, which clears ``writable`` before it parks.
                try:
                    sent = self._sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise self._stream_error(exc) from exc
                if sent == len(data):
                    self._bytes_sent += sent
                    if self._clock is not None:
                        self._last_activity = self._clock()
                    await SCHEDULE_POINT
                else:
                    if sent:
                        self._note_sent(sent)
                    await self._send_rest(data, sent)
            else:
                try:
                    view = memoryview(data).cast("B")
                except TypeError:
                    raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
                await self._send_rest(view, 0)
        finally:
            self._sending = False

    def _raise_cannot_send(self) -> NoReturn:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was closed")
        raise trio.ClosedResourceError("cannot send data after send_eof")

    async def _send_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        """Send ``data`` from offset ``sent`` on, parking while the kernel's queue is full.

        Ends with a schedule point if it never parked (send_all's contract).
        """
        registration = self._registration
        total = len(data)
        remaining = memoryview(data).cast("B")[sent:] if sent else data
        parked = False
        charged = 0
        try:
            while sent < total:
                try:
                    just_sent = registration.send(remaining)
                except OSError as exc:
                    raise self._stream_error(exc) from exc
                if just_sent:
                    self._note_sent(just_sent)
                    sent += just_sent
                    if sent < total:
                        remaining = memoryview(data).cast("B")[sent:]
                    continue
                # EAGAIN: the tail waits in memory until the peer reads.
                if not charged and self._limiter is not None:
                    charged = self._charge_unsent(total - sent)
                if self._clock is not None and self._send_blocked_since is None:
                    self._send_blocked_since = self._clock()
                await registration.park_writable()
                if registration.write_failure is not None:
                    registration.raise_write_failure()
                parked = True
        finally:
            self._send_blocked_since = None
            if charged:
                self._limiter.release_on_behalf_of(self, charged)  # type: ignore[union-attr]
        if not parked:
            await SCHEDULE_POINT

    def _charge_unsent(self, unsent: int) -> int:
        """Count the unsent tail of a blocked ``send_all`` against the budget; returns the charge.

        The tail stays in memory until the peer reads, so it counts like a
        receive buffer, up to one maximum read's worth (what a handler builds
        beyond that is its own memory), minus what this connection already
        holds in the budget: an echo's tail *is* its held chunk, and a
        ``receive_buffer`` echo's is its leased buffer. The charge never
        waits (``BufferLimiter.charge_on_behalf_of``): the memory exists
        already, and a sender that queued for it could deadlock with the
        readers whose chunks it is sending (a proxy); it makes new reads
        wait instead, until the peer has taken the tail.
        """
        limiter = self._limiter
        assert limiter is not None
        charge = min(unsent, READ_SIZE_CLASSES[self._read_maximum_index]) - limiter.held_by(self)
        if charge <= 0:
            return 0
        limiter.charge_on_behalf_of(self, charge)
        return charge

    async def wait_send_all_might_not_block(self) -> None:
        """Return when ``send_all`` would probably not have to wait."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was closed")
        self._sending = True
        try:
            registration = self._registration
            # An edge may be stale (sends since then may have filled the
            # queue): ask the kernel. A "no" clears the edge and arms the
            # next one, which wakes the park.
            if registration.writable_now():
                await checkpoint()
            else:
                await registration.wait_writable()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Close the sending direction (``shutdown(SHUT_WR)``); idempotent."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was closed")
        self._sending = True
        try:
            await checkpoint()
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno in _BROKEN_ERRNOS:
                    raise _broken(exc) from exc
                raise
        finally:
            self._sending = False

    def close(self) -> None:
        """Close at once, without a checkpoint: unregister, then close the socket.

        Tasks blocked on this connection get ``trio.ClosedResourceError``.
        Safe to call more than once, and from a ``finally`` in a cancelled task.
        """
        if self._closed:
            return
        self._closed = True
        if self._receive_memory_wait is not None:
            self._receive_memory_wait.cancel()
        if self._waiting_for_memory:
            self._limiter._end_waits(  # type: ignore[union-attr]
                self, trio.ClosedResourceError("this connection was closed")
            )
        if self._held_read:
            self._release_held_read()
        self._poller.unregister(self._registration)
        self._sock.close()

    async def aclose(self) -> None:
        """Close the connection; idempotent, and closes even when cancelled."""
        self.close()
        await checkpoint()

    def getpeername(self) -> tuple[str, int] | tuple[str, int, int, int]:
        """The remote address, as ``socket.getpeername`` returns it.

        Behind a load balancer that sent a PROXY protocol header, the original
        client's address from the header; the balancer's own address is then
        ``connection.socket.getpeername()``.
        """
        header = self._proxy_header
        if header is not None and header.source is not None:
            return header.source  # type: ignore[return-value]
        return self._sock.getpeername()  # type: ignore[no-any-return]

    @property
    def proxy_header(self) -> ProxyHeader | None:
        """The PROXY protocol header the server read (with its TLVs), or None."""
        return self._proxy_header

    def _set_proxy_header(self, header: ProxyHeader) -> None:
        self._proxy_header = header

    def getsockname(self) -> tuple[str, int] | tuple[str, int, int, int]:
        """The local address, as ``socket.getsockname`` returns it."""
        return self._sock.getsockname()  # type: ignore[no-any-return]

    @overload
    def setsockopt(self, level: int, option: int, value: SockOptValue) -> None: ...

    @overload
    def setsockopt(self, level: int, option: int, value: None, length: int) -> None: ...

    def setsockopt(
        self, level: int, option: int, value: SockOptValue | None, length: int | None = None
    ) -> None:
        """Set a socket option, like ``trio.SocketStream.setsockopt``."""
        if length is None:
            if value is None:
                raise TypeError("value must not be None unless length is given")
            self._sock.setsockopt(level, option, value)
        else:
            if value is not None:
                raise TypeError("value must be None when length is given")
            self._sock.setsockopt(level, option, None, length)

    @overload
    def getsockopt(self, level: int, option: int) -> int: ...

    @overload
    def getsockopt(self, level: int, option: int, buffersize: int) -> bytes: ...

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """Read a socket option, like ``trio.SocketStream.getsockopt``."""
        if buffersize == 0:
            return self._sock.getsockopt(level, option)
        return self._sock.getsockopt(level, option, buffersize)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<millpond.Connection {state} poller={self._poller.name}>"
