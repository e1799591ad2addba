"""Readiness: telling connection tasks when their socket can be read or written.

This module owns the readiness core and nothing else: it knows sockets and
tasks, never buffers or handlers. Two implementations share one interface:

* ``EpollPoller`` (Linux): a private ``select.epoll`` per Trio run, every
  socket registered once, edge-triggered, and one dispatcher system task that
  drains events and wakes parked tasks with ``trio.lowlevel.reschedule``.
* ``TrioPoller`` (everywhere): the same interface on Trio's own
  ``wait_readable``/``wait_writable``.

A socket is registered once and gets a ``Registration``; the connection code
keeps that handle and parks on it, so the hot path does no dictionary lookup.

Why edge-triggered, one registration per socket, is safe here
---------------------------------------------------------------
Trio's ``_io_epoll.py`` (read its long header comment) uses level-triggered
``EPOLLONESHOT`` and pays one ``epoll_ctl(MOD)`` for every wait, because it
cannot trust user code to tell it when an fd is closed: a stale registration
on a closed-and-reused fd number would otherwise make ``epoll_wait`` return
immediately forever. Oneshot bounds the damage to one spurious wakeup.

millpond makes the opposite choice: ``EPOLLIN | EPOLLOUT | EPOLLRDHUP |
EPOLLET``, added once when the socket is created and never modified. The
kernel then reports a *transition* to readable or writable once, and the cost
per wait is zero syscalls (only the shared ``epoll_wait``). This is safe
because millpond owns the sockets it registers:

1. Every registered socket is closed only through ``Poller.unregister``
   followed by ``socket.close``, in that order (``Connection.aclose``, the
   server's listener cleanup). ``EPOLL_CTL_DEL`` runs while the fd still
   names our file object, so the registration is really removed; the
   fd-reuse trap (a dup'd file object living on under an old fd number)
   cannot arise. A new socket that reuses the number gets a fresh
   ``Registration`` object and a fresh ``EPOLL_CTL_ADD``.
2. Events are drained and dispatched synchronously (no ``await`` between
   ``epoll.poll`` and the loop over its results), so ``unregister`` can never
   run in the middle of a batch: an event for an fd number that is not in
   the registry is ignored, never delivered to a later socket.
3. An edge is never dropped, by construction. ``readable`` / ``writable``
   on a registration mean "the kernel may have something for you". The
   dispatcher sets them at every edge, whether or not a task is parked, and
   wakes the parked task if there is one. Nothing else sets them (but
   ``take_peeked``, which knows bytes are queued: see there), and only
   one thing clears them: the registration's own non-blocking I/O
   (``recv``, ``recv_into``, ``peek``, ``send``, ``accept``, ``writable_now``), at the
   moment the kernel says EAGAIN (or a read comes back short while the peer
   has not hung up). ``Connection``'s receive makes that syscall itself, one
   Python call less per message, and applies the same rules (with
   ``found_nothing_to_read``); its ``send_all`` tries the socket's own
   ``send`` first and, on EAGAIN, sends again through ``send``. A wake-up
   does not consume the edge, so a task woken and then stopped before its
   read (cancelled while it queued for memory, timed out, failed) leaves
   the flag set, and the next receive reads at
   once instead of parking until the peer sends more. A park only happens
   while the flag is clear, that is after a syscall said EAGAIN, and the
   flag is cleared with no ``await`` between that syscall and the park, so
   the dispatcher cannot have seen an edge the caller missed. A consumer
   that does its own syscalls instead of the registration's never clears
   the flag: it costs a syscall more, never a lost edge. (rsyscall's
   epoller says it plainly: dropping a posedge means deadlock.)

What it costs: an edge can be stale (the data it announced was already
read), which costs one extra ``recv`` that returns EAGAIN; and a
socket closed behind millpond's back (``sock.close()`` without
``unregister``) is silently dropped from the epoll set by the kernel, but its
parked tasks would wait until cancelled. ``Connection`` never does that.

Waking: a parked task is woken by exactly one ``reschedule``; the abort
callback (cancellation) clears the parked slot first, so the dispatcher can
never reschedule a task twice. Closing wakes parked tasks with
``trio.ClosedResourceError``. A task parks on its registration's reusable
``traps.Park`` and is woken with the shared ``traps.WOKEN`` outcome, so a
park and a wake allocate nothing (see traps.py for why that is safe). A
``Park`` does not raise what it is sent, so cancellation and closing leave
their failure on the registration (``read_failure``/``write_failure``) and
wake the task, which raises it: ``park_readable``'s callers check, and
``wait_readable`` does it for everybody else.
"""

from __future__ import annotations

import abc
import mmap
import os
import select
import socket
import sys
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    RunVar,
    Task,
    current_task,
    reschedule,
    spawn_system_task,
    wait_task_rescheduled,
)

from . import traps
from .needs_trio import require_trio_run
from .traps import WOKEN, Park

# What the I/O methods take: the kinds of buffer millpond hands them.
ReadableBuffer: TypeAlias = bytes | bytearray | memoryview
WriteableBuffer: TypeAlias = bytearray | memoryview | mmap.mmap

__all__ = [
    "POLLER_NAMES",
    "EpollPoller",
    "Poller",
    "PollerStatistics",
    "Registration",
    "TrioPoller",
    "get_poller",
    "resolve_poller_name",
]

#: The names a poller can be asked for by (``get_poller``, ``serve(poller=...)``).
POLLER_NAMES: Final = ("auto", "epoll", "trio")

# Environment variable that picks the poller when the caller says "auto".
POLLER_ENV_VAR: Final = "MILLPOND_POLLER"

# Events returned by one epoll_wait. 1024 covers a full batch of a busy server
# in one syscall; when a batch comes back full the dispatcher polls again
# before parking, so the number bounds latency of nothing, only syscall count.
MAX_EVENTS_PER_POLL: Final = 1024

if sys.platform == "linux":
    _EPOLLIN: Final = select.EPOLLIN
    _EPOLLOUT: Final = select.EPOLLOUT
    _EPOLLRDHUP: Final = select.EPOLLRDHUP
    _EPOLLHUP: Final = select.EPOLLHUP
    _EPOLLERR: Final = select.EPOLLERR
    _EPOLLET: Final = select.EPOLLET
    # Interest set of every socket, fixed at registration and never modified.
    _INTEREST: Final = _EPOLLIN | _EPOLLOUT | _EPOLLRDHUP | _EPOLLET
    # A reader must look at the socket on new data, a half-close by the peer,
    # a hang-up or an error (the recv reports which).
    _READ_EVENTS: Final = _EPOLLIN | _EPOLLRDHUP | _EPOLLHUP | _EPOLLERR
    # A writer must look on free space, a hang-up or an error.
    _WRITE_EVENTS: Final = _EPOLLOUT | _EPOLLHUP | _EPOLLERR
    # The peer is done sending (or gone): sets Registration.hangup.
    _HANGUP_EVENTS: Final = _EPOLLRDHUP | _EPOLLHUP | _EPOLLERR


def _raise_closed() -> NoReturn:
    raise trio.ClosedResourceError("another task closed this socket")


class Registration(abc.ABC):
    """One socket's membership in a poller: the handle connection code parks on.

    ``readable`` and ``writable`` say "the kernel may have something": the
    poller sets them at every edge (a level-triggered poller: when its wait
    returns), and only this registration's non-blocking I/O methods clear
    them, when the kernel says EAGAIN. Do the socket's I/O through
    ``recv``/``recv_into``/``send``/``accept``, and park only when they
    said EAGAIN; a task woken and then stopped before its read loses nothing,
    since a wake-up consumes no edge::

        while True:
            data = registration.recv(65536)
            if data is not None:
                break
            await registration.wait_readable()

    Hot paths park with ``park_readable``/``park_writable`` instead, which do
    not raise when woken: the caller then checks ``read_failure`` /
    ``write_failure`` itself (see ``park_readable``).
    """

    __slots__ = (
        "closed",
        "counts",
        "fd",
        "hangup",
        "read_failure",
        "readable",
        "sock",
        "writable",
        "write_failure",
    )

    def __init__(self, sock: socket.socket, counts: list[int] | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # The poller's counters this registration adds to (see PollerStatistics):
        # [reads that found nothing, writes that found no room], despite the flag.
        self.counts = [0, 0] if counts is None else counts
        # A fresh registration knows nothing: EPOLL_CTL_ADD reports what is
        # already there as an edge, and a level-triggered wait returns at once.
        self.readable = False
        self.writable = False
        # Sticky: the peer half-closed, hung up or reset. A FIN queued behind
        # data makes no further edge after the read that returns the data,
        # so once this is set a short read no longer means "drained".
        self.hangup = False
        self.closed = False
        # Why a parked task was woken, when it was not readiness: a function
        # that raises it (Trio's raise_cancel, or "closed"). The woken task
        # raises it (raise_read_failure); nobody else clears it.
        self.read_failure: Callable[[], NoReturn] | None = None
        self.write_failure: Callable[[], NoReturn] | None = None

    # -- I/O: the only code that consumes readiness ---------------------------------------

    def recv_into(self, buffer: WriteableBuffer, nbytes: int) -> int:
        """``sock.recv_into(buffer, nbytes)`` without blocking; -1 if the kernel said EAGAIN.

        Returns the bytes received (0 at EOF). Clears ``readable`` on EAGAIN
        and on a short read while the peer has not hung up (the queue is
        empty: the next byte makes a new edge). Other errors propagate.
        """
        try:
            received = self.sock.recv_into(buffer, nbytes)
        except BlockingIOError:
            self.found_nothing_to_read()
            return -1
        if 0 < received < nbytes and not self.hangup:
            self.readable = False
        return received

    def recv(self, nbytes: int) -> bytes | None:
        """``sock.recv(nbytes)`` without blocking; None if the kernel said EAGAIN.

        ``b""`` is EOF. Clears ``readable`` as ``recv_into`` does.
        """
        try:
            data = self.sock.recv(nbytes)
        except BlockingIOError:
            self.found_nothing_to_read()
            return None
        if data and len(data) < nbytes and not self.hangup:
            self.readable = False
        return data

    def peek(self, nbytes: int) -> bytes | None:
        """Up to ``nbytes`` of what is queued, left in the queue (``MSG_PEEK``); None on EAGAIN.

        For reading a prefix (a PROXY protocol header) without taking the
        application's bytes behind it: peek, decide how long the prefix is,
        then ``take_peeked`` exactly that much. A peek that finds fewer than
        ``nbytes`` (and no hang-up) clears ``readable``, as a short read
        does: the bytes stay queued, and more of them make a new edge.
        ``b""`` is EOF.
        """
        try:
            data = self.sock.recv(nbytes, socket.MSG_PEEK)
        except BlockingIOError:
            self.found_nothing_to_read()
            return None
        if data and len(data) < nbytes and not self.hangup:
            self.readable = False
        return data

    def take_peeked(self, nbytes: int, peeked: int) -> int:
        """Take (and drop) the first ``nbytes`` of the ``peeked`` bytes a ``peek`` just saw.

        Returns how many were taken: ``nbytes``, as they are queued. If the
        peek saw more, the rest stays queued for the next receive, and no
        edge will announce it (it came before the peek, and the peek, being
        short, cleared ``readable``): so this sets ``readable`` again, and
        the next receive reads those bytes at once instead of parking until
        the peer sends more, which a client waiting for an answer never does.
        """
        try:
            taken = self.sock.recv_into(bytearray(nbytes), nbytes)
        except BlockingIOError:  # the peeked bytes are gone: nobody else reads them
            return -1
        if peeked > taken:
            self.readable = True
        return taken

    def send(self, data: ReadableBuffer) -> int:
        """``sock.send(data)`` without blocking; 0 (and ``writable`` cleared) on EAGAIN."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            if self.writable:
                self.counts[1] += 1
            self.writable = False
            return 0

    def accept(self) -> tuple[socket.socket, Any] | None:
        """``sock.accept()`` without blocking; None (and ``readable`` cleared) on EAGAIN."""
        try:
            return self.sock.accept()
        except BlockingIOError:
            self.found_nothing_to_read()
            return None

    def found_nothing_to_read(self) -> None:
        """A read said EAGAIN: the edge is consumed (a "maybe" flag was stale).

        For a hot path that makes the syscall itself (``Connection``'s receive).
        """
        if self.readable:
            self.counts[0] += 1
        self.readable = False

    def writable_now(self) -> bool:
        """Ask the kernel (one ``poll`` syscall) whether a send would not block.

        Not for hot paths: for the rare question "may I send?" asked without
        sending (``wait_send_all_might_not_block``). A "no" clears
        ``writable``; on Linux the question itself arms the next EPOLLOUT
        edge, as an EAGAIN would.
        """
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        if poller.poll(0):
            return True
        self.writable = False
        return False

    # -- waiting --------------------------------------------------------------------------

    async def wait_readable(self) -> None:
        """Park until the socket may be readable; at once if ``readable`` is still set.

        Call it when ``recv``/``recv_into``/``accept`` said EAGAIN. Raises
        ``trio.ClosedResourceError`` if the socket is unregistered while
        waiting, ``trio.BusyResourceError`` if another task already waits to
        read, and ``trio.Cancelled`` when the caller's scope is cancelled.
        """
        await self.park_readable()
        if self.read_failure is not None:
            self.raise_read_failure()

    async def wait_writable(self) -> None:
        """Park until the socket may be writable; errors as ``wait_readable``."""
        await self.park_writable()
        if self.write_failure is not None:
            self.raise_write_failure()

    @abc.abstractmethod
    def park_readable(self) -> Awaitable[None]:
        """``wait_readable`` for hot paths: no coroutine, and no raise on wake-up.

        Parks only while ``readable`` is clear, and never clears it. Await the
        result at once (the checks run when this is called), then::

            if registration.read_failure is not None:
                registration.raise_read_failure()

        Cancellation and closing do not raise out of the ``await``: they wake
        the task and leave ``read_failure`` set. Forgetting the check loses
        the cancellation. Busy and already-closed errors raise from the call.
        """

    @abc.abstractmethod
    def park_writable(self) -> Awaitable[None]:
        """``park_readable`` for the write side: check ``write_failure`` after it."""

    def raise_read_failure(self) -> NoReturn:
        """Raise (and clear) the failure that woke the parked reader."""
        failure, self.read_failure = self.read_failure, None
        assert failure is not None, "no failure to raise"
        failure()

    def raise_write_failure(self) -> NoReturn:
        """Raise (and clear) the failure that woke the parked writer."""
        failure, self.write_failure = self.write_failure, None
        assert failure is not None, "no failure to raise"
        failure()


@dataclass(frozen=True, slots=True)
class PollerStatistics:
    """What a poller is doing right now, and what it has done.

    Attributes:
      backend: ``"epoll"`` or ``"trio"``.
      registered: sockets currently registered.
      tasks_waiting_read: tasks parked until a socket is readable.
      tasks_waiting_write: tasks parked until a socket is writable.
      dispatcher_wakeups: times the dispatcher woke up (epoll only).
      events_dispatched: readiness events read from the kernel (epoll only).
      edges_remembered: events that found no parked task and were kept.
      stale_read_edges: reads (or accepts) the readiness flag allowed that
        found nothing (EAGAIN): an edge whose data was already read. What it
        costs is one syscall each; remembered minus stale is roughly the
        remembered edges that were used.
      stale_write_edges: the same for sends.
      empty_polls: dispatcher wake-ups that found no event (spurious).
      batches: how many polls returned 1-3, 4-15, 16-63, 64-255, 256-1023
        and 1024 events (a full batch: the dispatcher polls again at once).
    """

    backend: str
    registered: int
    tasks_waiting_read: int
    tasks_waiting_write: int
    dispatcher_wakeups: int
    events_dispatched: int
    edges_remembered: int
    stale_read_edges: int = 0
    stale_write_edges: int = 0
    empty_polls: int = 0
    batches: tuple[int, ...] = (0, 0, 0, 0, 0, 0)


class Poller(abc.ABC):
    """Readiness for many sockets, shared by all tasks of one Trio run.

    Get the run's poller with ``get_poller()``; register a non-blocking socket
    once, do its I/O through its ``Registration`` and park there, unregister
    before closing::

        poller = get_poller()
        reg = poller.register(sock)
        try:
            while (data := reg.recv(65536)) is None:  # None: EAGAIN
                await reg.wait_readable()
        finally:
            poller.unregister(reg)
            sock.close()
    """

    name: str

    def __init__(self) -> None:
        self._registrations: dict[int, Registration] = {}
        # Stale read and write edges, added to by every registration (Registration.counts).
        self._stale_counts = [0, 0]

    @abc.abstractmethod
    def register(self, sock: socket.socket) -> Registration:
        """Start watching a non-blocking socket; returns its handle."""

    @abc.abstractmethod
    def unregister(self, registration: Registration) -> None:
        """Stop watching; wake parked tasks with ``ClosedResourceError``.

        Call it before closing the socket. Calling it twice is harmless.
        """

    @abc.abstractmethod
    def statistics(self) -> PollerStatistics:
        """Return a snapshot of this poller's counters."""

    def registration(self, sock: socket.socket) -> Registration:
        """Return the registration of ``sock``; ``KeyError`` if it has none."""
        return self._registrations[sock.fileno()]

    def registered_fds(self) -> frozenset[int]:
        """The fd numbers registered right now (for tests and introspection)."""
        return frozenset(self._registrations)

    async def wait_readable(self, sock: socket.socket) -> None:
        """Wait until ``sock`` (already registered) may be readable."""
        await self.registration(sock).wait_readable()

    async def wait_writable(self, sock: socket.socket) -> None:
        """Wait until ``sock`` (already registered) may be writable."""
        await self.registration(sock).wait_writable()

    def _check_socket(self, sock: socket.socket) -> None:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise trio.ClosedResourceError("cannot register a closed socket")
        if sock.getblocking():
            raise ValueError("sock must be non-blocking (sock.setblocking(False))")
        stale = self._registrations.get(sock.fileno())
        if stale is not None:
            if stale.sock is sock:
                raise ValueError(f"socket fd {sock.fileno()} is already registered")
            # Its socket was closed without unregister and the number reused:
            # drop the stale entry (waking its waiters) instead of refusing.
            self.unregister(stale)


class _Ready:
    """An awaitable that completes at once: a remembered edge needs no park."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_READY: Final = _Ready()


class _EpollRegistration(Registration):
    __slots__ = ("read_park", "read_task", "write_park", "write_task")

    def __init__(self, sock: socket.socket, counts: list[int] | None = None) -> None:
        super().__init__(sock, counts)
        self.read_task: Task | None = None
        self.write_task: Task | None = None
        # Made once and awaited at every park (see traps.py): a park then
        # allocates nothing, and a parked idle connection keeps no coroutine.
        # Writes park rarely (only under backpressure): theirs is made at the
        # first one, which keeps it off every idle connection.
        # Until the fast path has proven itself in a run (traps.start_proof),
        # registrations park through Trio's own wait_task_rescheduled; the
        # dispatcher tells the two apart by the park slot.
        self.read_park: Park | None = Park(self._abort_read) if traps.PROVEN else None
        self.write_park: Park | None = None

    # A Park ignores the outcome it is sent (traps.Park), so cancellation
    # cannot travel as Abort.SUCCEEDED's error outcome: the abort stores
    # Trio's raise_cancel, wakes the task itself and returns FAILED, and the
    # woken task raises it (Trio's wait_task_rescheduled documents this).
    def _abort_read(self, raise_cancel: RaiseCancelT) -> Abort:
        self.fail_reader(raise_cancel)
        return Abort.FAILED

    def _abort_write(self, raise_cancel: RaiseCancelT) -> Abort:
        self.fail_writer(raise_cancel)
        return Abort.FAILED

    def fail_reader(self, failure: Callable[[], NoReturn]) -> None:
        """Wake the parked reader to raise ``failure()`` (see ``park_readable``)."""
        task, self.read_task = self.read_task, None
        assert task is not None, "no reader is parked"
        self.read_failure = failure
        reschedule(task)

    def fail_writer(self, failure: Callable[[], NoReturn]) -> None:
        """Wake the parked writer to raise ``failure()``."""
        task, self.write_task = self.write_task, None
        assert task is not None, "no writer is parked"
        self.write_failure = failure
        reschedule(task)

    # Not ``async def``: returning the awaitable itself saves a coroutine
    # frame per parked task (200 bytes on an idle connection) and a call
    # layer per park.
    def park_readable(self) -> Awaitable[None]:
        if self.closed:
            raise trio.ClosedResourceError("socket was unregistered")
        if self.readable:  # an edge nobody has read to EAGAIN yet: no park
            return _READY
        if self.read_task is not None:
            raise trio.BusyResourceError("another task is already waiting to read")
        self.read_task = current_task()
        park = self.read_park
        if park is None:
            # Registered before the proof passed: switch to the fast path as
            # soon as it has (a connection accepted in the run's first ticks
            # must not park the slow way for its whole life). Nobody is
            # parked here, so the dispatcher sees the slot of this park.
            if not traps.PROVEN:
                return wait_task_rescheduled(self._abort_read)
            park = self.read_park = Park(self._abort_read)
        return park

    def park_writable(self) -> Awaitable[None]:
        if self.closed:
            raise trio.ClosedResourceError("socket was unregistered")
        if self.writable:
            return _READY
        if self.write_task is not None:
            raise trio.BusyResourceError("another task is already waiting to write")
        self.write_task = current_task()
        park = self.write_park
        if park is None:
            if not traps.PROVEN:
                return wait_task_rescheduled(self._abort_write)
            park = self.write_park = Park(self._abort_write)
        return park


class EpollPoller(Poller):
    """Edge-triggered epoll readiness with one dispatcher task (Linux only).

    See the module docstring for why one ``EPOLLET`` registration per socket
    is safe and what it costs. Use ``get_poller("epoll")`` rather than
    constructing one: there must be exactly one per Trio run.
    """

    name = "epoll"

    def __init__(self) -> None:
        if sys.platform != "linux":
            raise RuntimeError("EpollPoller needs Linux; use TrioPoller")
        super().__init__()
        self._epoll = select.epoll()
        self._closed = False
        self._dispatcher_wakeups = 0
        self._events_dispatched = 0
        self._edges_remembered = 0
        self._empty_polls = 0
        # Polls by how many events they returned: 1-3, 4-15, ..., 1024 (see PollerStatistics).
        self._batches = [0] * 6
        spawn_system_task(self._dispatch, name="millpond.poller.dispatch")

    def register(self, sock: socket.socket) -> Registration:
        """Add ``sock`` to the epoll set once, edge-triggered, for both directions."""
        if self._closed:
            raise RuntimeError("this poller's Trio run has finished")
        self._check_socket(sock)
        registration = _EpollRegistration(sock, self._stale_counts)
        self._epoll.register(registration.fd, _INTEREST)
        self._registrations[registration.fd] = registration
        return registration

    def unregister(self, registration: Registration) -> None:
        """Remove the socket from the epoll set and wake its parked tasks."""
        if registration.closed:
            return
        assert isinstance(registration, _EpollRegistration)
        registration.closed = True
        fd = registration.fd
        if self._registrations.get(fd) is registration:
            del self._registrations[fd]
            if not self._closed:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    # Closed behind our back: the kernel already dropped it.
                    pass
        # Parked tasks wake to a failure, as the aborts do (see _abort_read).
        if registration.read_task is not None:
            registration.fail_reader(_raise_closed)
        if registration.write_task is not None:
            registration.fail_writer(_raise_closed)

    def statistics(self) -> PollerStatistics:
        """Return a snapshot of this poller's counters."""
        readers = writers = 0
        for registration in self._registrations.values():
            assert isinstance(registration, _EpollRegistration)
            readers += registration.read_task is not None
            writers += registration.write_task is not None
        return PollerStatistics(
            backend=self.name,
            registered=len(self._registrations),
            tasks_waiting_read=readers,
            tasks_waiting_write=writers,
            dispatcher_wakeups=self._dispatcher_wakeups,
            events_dispatched=self._events_dispatched,
            edges_remembered=self._edges_remembered,
            stale_read_edges=self._stale_counts[0],
            stale_write_edges=self._stale_counts[1],
            empty_polls=self._empty_polls,
            batches=tuple(self._batches),
        )

    async def _dispatch(self) -> None:
        # Hot path: everything bound to locals, no allocation per event.
        poll = self._epoll.poll
        registrations: dict[int, _EpollRegistration] = self._registrations  # type: ignore[assignment]
        epoll_fd = self._epoll.fileno()
        wait_readable = trio.lowlevel.wait_readable
        read_events = _READ_EVENTS
        write_events = _WRITE_EVENTS
        hangup_events = _HANGUP_EVENTS
        batches = self._batches
        # Tasks parked on a traps.Park are woken with one shared outcome;
        # those in Trio's wait_task_rescheduled (no Park) need a fresh one.
        woken = WOKEN
        trio_reschedule = trio.lowlevel.reschedule
        reschedule = traps.fast_reschedule()
        try:
            while True:
                await wait_readable(epoll_fd)
                self._dispatcher_wakeups += 1
                if reschedule is trio_reschedule and traps.PROVEN:
                    reschedule = traps.fast_reschedule()  # the proof is in by now
                while True:
                    events = poll(0, MAX_EVENTS_PER_POLL)
                    remembered = 0
                    for fd, flags in events:
                        registration = registrations.get(fd)
                        if registration is None:
                            # Unregistered since the kernel queued it: stale.
                            continue
                        # The edge is set whether or not a task is parked, and
                        # only an EAGAIN clears it (module docstring, rule 3).
                        if flags & read_events:
                            if flags & hangup_events:
                                registration.hangup = True
                            registration.readable = True
                            task = registration.read_task
                            if task is None:
                                remembered += 1
                            else:
                                registration.read_task = None
                                if registration.read_park is None:
                                    reschedule(task)
                                else:
                                    reschedule(task, woken)
                        if flags & write_events:
                            registration.writable = True
                            task = registration.write_task
                            if task is None:
                                remembered += 1
                            else:
                                registration.write_task = None
                                if registration.write_park is None:
                                    reschedule(task)
                                else:
                                    reschedule(task, woken)
                    count = len(events)
                    self._events_dispatched += count
                    self._edges_remembered += remembered
                    if count:
                        # Buckets by powers of four: one bit_length per poll.
                        batches[min((count.bit_length() - 1) >> 1, 5)] += 1
                    else:
                        self._empty_polls += 1
                    if len(events) < MAX_EVENTS_PER_POLL:
                        break
                    # A full batch: let the woken tasks run, then drain more.
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        for registration in list(self._registrations.values()):
            self.unregister(registration)
        self._epoll.close()


class _TrioRegistration(Registration):
    __slots__ = ()

    # Trio's waits raise their own failures: read_failure stays None. Trio's
    # wait is level-triggered, so its return is this poller's edge.
    def park_readable(self) -> Awaitable[None]:
        if self.closed:
            raise trio.ClosedResourceError("socket was unregistered")
        if self.readable:
            return _READY
        return self._wait_readable()

    def park_writable(self) -> Awaitable[None]:
        if self.closed:
            raise trio.ClosedResourceError("socket was unregistered")
        if self.writable:
            return _READY
        return self._wait_writable()

    async def _wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)
        self.readable = True

    async def _wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)
        self.writable = True


class TrioPoller(Poller):
    """The portable poller: Trio's own ``wait_readable``/``wait_writable``.

    Works wherever Trio does. Each wait costs what Trio's I/O manager charges
    (on Linux, one ``epoll_ctl`` per wait); no dispatcher task of our own.
    """

    name = "trio"

    def register(self, sock: socket.socket) -> Registration:
        """Start tracking ``sock``; Trio itself needs no registration."""
        self._check_socket(sock)
        registration = _TrioRegistration(sock, self._stale_counts)
        self._registrations[registration.fd] = registration
        return registration

    def unregister(self, registration: Registration) -> None:
        """Wake tasks waiting on the socket with ``ClosedResourceError``."""
        if registration.closed:
            return
        registration.closed = True
        if self._registrations.get(registration.fd) is registration:
            del self._registrations[registration.fd]
        # After the run (a connection closed once trio.run returned) nobody can be
        # waiting, and Trio has no I/O manager left to tell.
        if registration.sock.fileno() >= 0 and trio.lowlevel.in_trio_run():
            trio.lowlevel.notify_closing(registration.sock)

    def statistics(self) -> PollerStatistics:
        """Return a snapshot; Trio does not expose per-socket waiters here."""
        return PollerStatistics(
            backend=self.name,
            registered=len(self._registrations),
            tasks_waiting_read=0,
            tasks_waiting_write=0,
            dispatcher_wakeups=0,
            events_dispatched=0,
            edges_remembered=0,
            stale_read_edges=self._stale_counts[0],
            stale_write_edges=self._stale_counts[1],
        )


_RUN_POLLERS: RunVar[dict[str, Poller]] = RunVar("millpond_pollers")


def resolve_poller_name(name: object) -> str:
    """Validate a poller name and resolve ``"auto"`` to a concrete one.

    ``"auto"`` means ``$MILLPOND_POLLER`` if set, else ``"epoll"`` on Linux and
    ``"trio"`` elsewhere. Raises ``TypeError``/``ValueError`` naming ``poller``.
    """
    if not isinstance(name, str):
        raise TypeError(f"poller must be a str, not {type(name).__name__}")
    if name not in POLLER_NAMES:
        raise ValueError(f"poller must be one of {POLLER_NAMES}, not {name!r}")
    if name == "auto":
        name = os.environ.get(POLLER_ENV_VAR, "") or "auto"
        if name not in POLLER_NAMES:
            raise ValueError(f"${POLLER_ENV_VAR} must be one of {POLLER_NAMES}, not {name!r}")
        if name == "auto":
            name = "epoll" if sys.platform == "linux" else "trio"
    if name == "epoll" and sys.platform != "linux":
        raise ValueError("poller='epoll' needs Linux; use 'trio' or 'auto'")
    return name


def get_poller(name: str = "auto") -> Poller:
    """Return the current Trio run's poller of that kind, creating it once.

    Raises ``RuntimeError`` outside a Trio run: millpond runs on Trio only
    (anyio users: the ``trio`` backend).
    """
    resolved = resolve_poller_name(name)
    require_trio_run("millpond (a Connection, a server, a poller)")
    traps.start_proof()
    try:
        pollers = _RUN_POLLERS.get()
    except LookupError:
        pollers = {}
        _RUN_POLLERS.set(pollers)
    poller = pollers.get(resolved)
    if poller is None:
        poller = EpollPoller() if resolved == "epoll" else TrioPoller()
        pollers[resolved] = poller
    return poller
