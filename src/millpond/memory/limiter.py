"""The byte budget for buffers: :class:`BufferLimiter`.

This module owns the answer to "how many buffer bytes may this process hold, who holds them,
and who is waiting for more". It never allocates memory: the buffer pool asks it for permission
before it leases a buffer and gives the bytes back when the lease ends.

It is written in two layers, so that the rules can be tested without Trio:

* :class:`~millpond.memory.ledger._Ledger` (``ledger.py``) is pure bookkeeping: counters, per-owner
  holdings and two FIFO queues of waiting requests. Every rule about who gets what lives
  there, and its methods report which waiters they granted instead of waking anybody.
* :class:`BufferLimiter` (here) wraps the ledger in Trio: it parks waiting tasks, reschedules
  the ones the ledger granted, turns cancellation into a withdrawal, and brings calls made in
  worker threads back to the Trio thread.
"""

from __future__ import annotations

import bisect
import heapq
import queue
import threading
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar, TypeVarTuple, final

import outcome
import trio

from .._core.needs_trio import require_trio_run
from . import census
from .ledger import (
    Pressure,
    _Ledger,
    _unhashable_owner,
    _Waiter,
    read_wait_bytes,
    return_read,
    take_read,
)

__all__ = ["WAIT_SECONDS_BUCKETS", "BufferLimiter", "BufferLimiterStatistics", "Pressure"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# statistics() names at most this many holders: enough to spot a leak or a greedy connection,
# small enough to compute with a heap whenever statistics are asked for.
TOP_HOLDERS: Final = 10

#: Upper bounds (seconds) of the buckets that count how long requests queued for memory
#: (``BufferLimiterStatistics.wait_seconds_buckets``). A read that waits behind a release
#: waits for one task step (~100 µs here), a read that waits for a slow client to drain its
#: send queue waits seconds: steps of about 2.5x from 100 µs to 10 s cover both, in 16
#: buckets (Prometheus' default buckets start at 5 ms, which would put every short wait in one).
WAIT_SECONDS_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BufferLimiterStatistics:
    """An object containing debugging information, returned by
    :meth:`BufferLimiter.statistics`.

    Currently the following fields are defined:

    * ``total_bytes``, ``reserved_bytes``, ``pressure_bytes``: the limiter's configuration.
    * ``bytes_in_use``: bytes currently held. It can exceed ``total_bytes`` right after the
      total was decreased.
    * ``bytes_available``: ``max(0, total_bytes - bytes_in_use)``, reserve included.
    * ``peak_bytes_in_use``: the highest ``bytes_in_use`` ever reached.
    * ``tasks_waiting``: requests blocked in :meth:`BufferLimiter.acquire` or
      :meth:`BufferLimiter.acquire_on_behalf_of`; ``bytes_waited_for`` is their sum.
    * ``grants``: requests that were granted (and kept).
    * ``timeouts``: waiting requests that gave up because they were cancelled, including those
      that were granted but cancelled before they could resume.
    * ``pressure``: the current :class:`Pressure` level; ``pressure_seconds``: the time spent
      at each level (``NONE``, ``PRESSURE``, ``HARD``) since the limiter was made, and
      ``pressure_changes``: how often the level changed.
    * ``top_holders``: up to ten ``(repr(owner), bytes)`` pairs, largest first.
    * ``wait_seconds_buckets``: how many requests that queued for memory waited at most
      each bound of :data:`WAIT_SECONDS_BUCKETS` (and above the last bound, in the last of
      ``len(WAIT_SECONDS_BUCKETS) + 1`` counts; each count is that bucket's alone, not
      cumulative), counted when the request left the queue however it did (granted,
      cancelled, refused); ``wait_seconds_total``: their waits added up. Requests granted at
      once are not counted: ``grants`` minus the granted waits are those.
    """

    total_bytes: int
    reserved_bytes: int
    pressure_bytes: int
    bytes_in_use: int
    bytes_available: int
    peak_bytes_in_use: int
    tasks_waiting: int
    bytes_waited_for: int
    grants: int
    timeouts: int
    pressure: Pressure
    top_holders: tuple[tuple[str, int], ...]
    pressure_seconds: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pressure_changes: int = 0
    wait_seconds_buckets: tuple[int, ...] = (0,) * (len(WAIT_SECONDS_BUCKETS) + 1)
    wait_seconds_total: float = 0.0


def _checked_int(name: str, value: object, minimum: int) -> int:
    # bool is an int to Python but never a byte count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _checked_nbytes(nbytes: object) -> int:
    return _checked_int("nbytes", nbytes, 1)


# Stands for "the current task", resolved when a reservation is entered.
_CURRENT_TASK: Final = object()


class _Refused(ValueError):
    """A waiter's request can no longer be granted: ``total_bytes`` shrank below it."""


@final
class BufferLimiter:
    """A byte budget for buffers, with a fair, cancel-safe wait queue.

    A server that reads from thousands of connections at once has to put a limit on how much
    memory its buffers take, or a burst of slow clients takes the process down. One popular
    policy is "at most 64 MiB of buffers; when they are all in use, a connection that wants
    one waits for somebody to give one back". :class:`BufferLimiter` implements that policy.

    You can think of a :class:`BufferLimiter` as a sack that starts out holding some fixed
    number of bytes::

       limiter = millpond.BufferLimiter(64 * 1024 * 1024)

    Tasks take bytes out of the sack before they fill a buffer, and put them back when the
    buffer is free again::

       async with limiter.reserve(16384):
           # 16 KiB of the budget are ours
           await fill_and_send_a_buffer()
       # leaving the block puts them back, whatever happened inside

    If the sack holds too few bytes, the task waits until enough are put back. Waiters are
    served first come, first served; a large request at the head of the line holds back the
    smaller ones behind it, so that it cannot be starved. Waiting is cancel-safe: give up with
    :func:`trio.move_on_after` and the bytes go to the next in line, none are lost.

    Unlike :class:`trio.CapacityLimiter`, one owner (by default, the current task) may hold
    bytes from many calls at once; the limiter counts them per owner, and releasing more than
    an owner holds is a :exc:`RuntimeError`.

    Two ideas are borrowed from other systems:

    * ``reserved_bytes`` (HAProxy's ``tune.buffers.reserve``): the last bytes of the budget go
      only to owners that already hold some, so a task that holds an input buffer can always
      get the output buffer it needs to finish. Without it, a proxy in which every connection
      holds one buffer and waits for a second one deadlocks as soon as the budget runs out.
    * :attr:`pressure` (Linux's ``tcp_mem``): a :class:`Pressure` level that tells the server
      when to economize before anybody has to wait.

    Bytes may be released from a worker thread (:func:`trio.to_thread.run_sync`); the release
    and the handoff to waiters then happen on the Trio thread, and the call returns once done.

    Args:
      total_bytes: The size of the budget; see :attr:`total_bytes`.
      reserved_bytes: How many of ``total_bytes`` only owners that already hold bytes may use.
        Make it at least as large as the largest single request a holder makes to finish.
      pressure_bytes: The in-use level at which :attr:`pressure` becomes
        :attr:`Pressure.PRESSURE`. Defaults to three quarters of ``total_bytes`` (but not
        above ``total_bytes - reserved_bytes``), and follows ``total_bytes`` when it changes.

    Raises:
      TypeError: if an argument is not an int (``bool`` is not accepted).
      ValueError: unless ``0 <= reserved_bytes < total_bytes`` and
        ``0 <= pressure_bytes <= total_bytes - reserved_bytes``.

    """

    def __init__(
        self,
        total_bytes: int,
        *,
        reserved_bytes: int = 0,
        pressure_bytes: int | None = None,
    ) -> None:
        total_bytes = _checked_int("total_bytes", total_bytes, 1)
        reserved_bytes = _checked_int("reserved_bytes", reserved_bytes, 0)
        if reserved_bytes >= total_bytes:
            raise ValueError(
                f"reserved_bytes must be < total_bytes={total_bytes}, got {reserved_bytes}"
            )
        if pressure_bytes is not None:
            pressure_bytes = _checked_int("pressure_bytes", pressure_bytes, 0)
            if pressure_bytes > total_bytes - reserved_bytes:
                raise ValueError(
                    f"pressure_bytes must be <= total_bytes - reserved_bytes = "
                    f"{total_bytes - reserved_bytes}, got {pressure_bytes}"
                )
        self._ledger = _Ledger(total_bytes, reserved_bytes, pressure_bytes)
        # The Trio run this limiter serves, and the thread it runs in. Calls from any other
        # thread are carried over with the token; see _at_home().
        self._token: trio.lowlevel.TrioToken | None = None
        self._home: int | None = None
        # Set (and dropped) by every change of total_bytes; see _wait_for_resize().
        self._resized: trio.Event | None = None
        # How long queued requests waited (statistics): a count per bucket, and the sum.
        self._wait_counts = [0] * (len(WAIT_SECONDS_BUCKETS) + 1)
        self._wait_seconds = 0.0
        if trio.lowlevel.in_trio_run():
            self._token = trio.lowlevel.current_trio_token()
            self._home = threading.get_ident()
        if census._OPEN:
            census._note(self)

    def __repr__(self) -> str:
        ledger = self._ledger
        waiting = ledger.waiters
        return (
            f"<millpond.BufferLimiter at {id(self):#x}, {ledger.in_use}/{ledger.total} bytes "
            f"in use, {waiting} waiting>"
        )

    # -- configuration and state ---------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """The size of the budget.

        You can change :attr:`total_bytes` by assigning to it, also while the limiter is in
        use. If you make it larger, the waiters that now fit are granted at once, in order. If
        you make it smaller, nothing already held is revoked: holders finish as normal, and no
        new request is granted until the bytes in use drop below the new total. A waiter whose
        request can never fit under the new total gets the same :exc:`ValueError` a new
        request of that size would get, instead of blocking the queue for ever.

        Raises:
          TypeError: if the new value is not an int.
          ValueError: if the new value is not larger than :attr:`reserved_bytes`.

        """
        return self._ledger.total

    @total_bytes.setter
    def total_bytes(self, new_total: int) -> None:
        new_total = _checked_int("total_bytes", new_total, 1)
        if new_total <= self._ledger.reserved:
            raise ValueError(
                f"total_bytes must be > reserved_bytes={self._ledger.reserved}, got {new_total}"
            )
        self._resize(new_total)

    @property
    def ordinary_bytes(self) -> int:
        """``total_bytes - reserved_bytes``: the most an owner that holds nothing can get."""
        return self._ledger.ordinary_limit

    @trio.lowlevel.enable_ki_protection
    def _resize(self, new_total: int) -> None:
        if threading.get_ident() != self._home and not self._at_home():
            self._call_at_home(self._resize, new_total)
            return
        granted, refused = self._ledger.resize(new_total)
        resized, self._resized = self._resized, None
        if resized is not None:
            resized.set()
        for waiter in refused:
            assert waiter.task is not None
            error = _Refused(
                f"nbytes={waiter.nbytes} can no longer be granted: total_bytes was reduced to "
                f"{new_total} (reserved_bytes={self._ledger.reserved})"
            )
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
        self._wake(granted)

    @property
    def reserved_bytes(self) -> int:
        """How many of :attr:`total_bytes` only owners that already hold bytes may use."""
        return self._ledger.reserved

    @property
    def pressure_bytes(self) -> int:
        """The in-use level at which :attr:`pressure` becomes :attr:`Pressure.PRESSURE`."""
        return self._ledger.pressure_bytes

    @property
    def bytes_in_use(self) -> int:
        """The number of bytes currently held, by all owners together."""
        return self._ledger.in_use

    @property
    def bytes_available(self) -> int:
        """``max(0, total_bytes - bytes_in_use)``, including the reserve.

        An owner that holds nothing can get at most ``bytes_available - reserved_bytes``.
        """
        return max(0, self._ledger.total - self._ledger.in_use)

    @property
    def pressure(self) -> Pressure:
        """The current :class:`Pressure` level."""
        return self._ledger.pressure

    def held_by(self, owner: object) -> int:
        """The number of bytes ``owner`` currently holds (0 if none)."""
        try:
            return self._ledger.held.get(owner, 0)
        except TypeError:
            raise _unhashable_owner(owner) from None

    # -- acquiring -------------------------------------------------------------------------

    def acquire_nowait(self, nbytes: int) -> None:
        """Take ``nbytes`` from the sack for the current task, without blocking.

        Raises:
          WouldBlock: if the bytes are not available, or if other requests are waiting.
          TypeError: if ``nbytes`` is not an int.
          ValueError: if ``nbytes <= 0`` or the request could never be granted.

        """
        self.acquire_on_behalf_of_nowait(_current_owner(), nbytes)

    @trio.lowlevel.enable_ki_protection
    def acquire_on_behalf_of_nowait(self, owner: object, nbytes: int) -> None:
        """Take ``nbytes`` from the sack on behalf of ``owner``, without blocking.

        This never barges: while anybody is waiting whom the policy would serve first, it
        raises :exc:`trio.WouldBlock` even if enough bytes are free.

        Args:
          owner: Any hashable object that stands for who holds the bytes, for example a
            connection. An owner that already holds bytes may use the reserve.
          nbytes: How many bytes; an int > 0.

        Raises:
          WouldBlock: if the bytes are not available, or if other requests are waiting.
          TypeError: if ``nbytes`` is not an int or ``owner`` is not hashable.
          ValueError: if ``nbytes <= 0``, or larger than :attr:`total_bytes` (for an owner that
            holds nothing: larger than ``total_bytes - reserved_bytes``).

        """
        if type(nbytes) is not int or nbytes <= 0:
            nbytes = _checked_nbytes(nbytes)
        if (threading.get_ident() != self._home or not self._ledger.in_use) and (
            not self._at_home()
        ):
            self._call_at_home(self.acquire_on_behalf_of_nowait, owner, nbytes)
            return
        if not self._ledger.take(owner, nbytes):
            raise trio.WouldBlock

    @trio.lowlevel.enable_ki_protection
    def charge_on_behalf_of(self, owner: object, nbytes: int) -> None:
        """Count ``nbytes`` that already exist in memory as held by ``owner``, without waiting.

        For memory that is there whether or not the budget has room (a send tail that
        the kernel has not taken yet, the free slots of a slab that is already mapped):
        waiting could not free it, and a task that waits for memory it already holds can
        deadlock with the tasks that would release it. The charge is granted at once, even
        past :attr:`total_bytes` and ahead of every waiter; what it takes makes later
        requests wait until it is released (with :meth:`release_on_behalf_of`, as usual).

        Raises:
          TypeError: if ``nbytes`` is not an int or ``owner`` is not hashable.
          ValueError: if ``nbytes <= 0``.

        """
        if type(nbytes) is not int or nbytes <= 0:
            nbytes = _checked_nbytes(nbytes)
        if threading.get_ident() != self._home and not self._at_home():
            self._call_at_home(self.charge_on_behalf_of, owner, nbytes)
            return
        self._ledger.force(owner, nbytes)

    @trio.lowlevel.enable_ki_protection
    def transfer(self, from_owner: object, to_owner: object, nbytes: int) -> None:
        """Move ``nbytes`` that ``from_owner`` holds to ``to_owner``, at once.

        For memory that changes hands without being freed: a buffer pool lends a
        slot whose bytes it already holds, or takes one back that it must keep
        (see ``docs/buffers.md``). Nothing is freed, so no waiter is served with
        these bytes and :attr:`bytes_in_use` does not change; ``to_owner``
        becomes a holder, so its waiting requests may now use the reserve.

        Raises:
          RuntimeError: if ``from_owner`` holds fewer than ``nbytes``.
          TypeError: if ``nbytes`` is not an int or an owner is not hashable.
          ValueError: if ``nbytes <= 0``.

        """
        if type(nbytes) is not int or nbytes <= 0:
            nbytes = _checked_nbytes(nbytes)
        if threading.get_ident() != self._home and not self._at_home():
            self._call_at_home(self.transfer, from_owner, to_owner, nbytes)
            return
        self._wake(self._ledger.transfer(from_owner, to_owner, nbytes))

    def acquire_read_nowait(
        self, owner: object, preferred: int, minimum: int, *, backlog: bool = False
    ) -> int:
        """Take bytes for a socket read now if that needs no wait; returns how many, or 0.

        ``preferred`` normally, ``minimum`` under pressure (Linux shrinks what a
        socket may buffer above ``tcp_mem[1]`` the same way); 0 means even that
        would have to wait (or barge): queue with :meth:`acquire_read`.
        ``backlog=True`` says the data was already waiting before the reader
        asked (its last read filled its buffer): from an owner that holds
        nothing, such a read gets only the budget below :attr:`pressure_bytes`
        (see ``docs/limiter.md``, "Backlog reads"). The reader's hot path, with
        :meth:`release_read`: call both on the Trio thread. Arguments are not
        checked here (the caller owns them).
        """
        if threading.get_ident() != self._home and not self._at_home():
            raise RuntimeError("acquire_read_nowait must be called on the Trio thread")
        return take_read(self._ledger, owner, preferred, minimum, backlog)

    def acquire_read(
        self, owner: object, minimum: int, *, backlog: bool = False
    ) -> Coroutine[object, None, int]:
        """Wait (FIFO, cancellable) for a socket read's charge; returns the bytes charged.

        The reader's slow path, after :meth:`acquire_read_nowait` said 0: it queues for
        ``minimum``, or for less when the budget is smaller than that (``total_bytes -
        reserved_bytes``), and a change of ``total_bytes`` while it waits makes it queue again
        for what still fits instead of raising. Cancelled, it holds nothing more. A
        ``backlog`` read (see :meth:`acquire_read_nowait`) waits in the backlog queue, served
        after every other waiter and only below :attr:`pressure_bytes`.
        """
        if not isinstance(backlog, bool):
            raise TypeError(f"backlog must be a bool, not {type(backlog).__name__}")
        # Not ``async def``: the waiting reader's stack is _acquire's frame alone, which
        # matters when a flood parks a thousand connections here.
        return self._acquire(owner, 0, backlog, minimum)

    async def _wait_for_resize(self) -> None:
        """Wait until ``total_bytes`` changes (for a request that cannot fit until it grows)."""
        if self._resized is None:
            self._resized = trio.Event()
        await self._resized.wait()

    def release_read(self, owner: object, nbytes: int) -> None:
        """Give back what :meth:`acquire_read_nowait` (or an acquire) took for a read.

        The same as :meth:`release_on_behalf_of`, cheaper when nobody waits.
        """
        if threading.get_ident() != self._home or not return_read(self._ledger, owner, nbytes):
            self.release_on_behalf_of(owner, nbytes)

    def read_ledger(self) -> _Ledger:
        """The bookkeeping behind the read rules (``ledger.py``: :func:`take_read`,
        :func:`return_read`, ...), for a reader on this limiter's Trio thread that calls
        them directly (one call per read instead of two).

        Raises:
          RuntimeError: outside the Trio thread this limiter belongs to.

        """
        if threading.get_ident() != self._home and not self._at_home():
            raise RuntimeError("read_ledger() must be called on the limiter's Trio thread")
        return self._ledger

    async def acquire(self, nbytes: int) -> None:
        """Take ``nbytes`` from the sack for the current task, waiting if necessary.

        See :meth:`acquire_on_behalf_of`.
        """
        require_trio_run("BufferLimiter.acquire")
        await self.acquire_on_behalf_of(trio.lowlevel.current_task(), nbytes)

    @trio.lowlevel.enable_ki_protection
    async def acquire_on_behalf_of(self, owner: object, nbytes: int) -> None:
        """Take ``nbytes`` from the sack on behalf of ``owner``, waiting if necessary.

        Waiters are served in arrival order (owners that already hold bytes first, see the
        class docstring). If this raises :exc:`trio.Cancelled`, ``owner`` holds nothing more
        than before: a waiter cancelled after the bytes were handed to it, but before it could
        resume, passes them on to the next waiter.

        Args:
          owner: Any hashable object; see :meth:`acquire_on_behalf_of_nowait`.
          nbytes: How many bytes; an int > 0.

        Raises:
          TypeError: if ``nbytes`` is not an int or ``owner`` is not hashable.
          ValueError: if the request could never be granted (see
            :meth:`acquire_on_behalf_of_nowait`), also if :attr:`total_bytes` is reduced
            below it while it waits.

        """
        if type(nbytes) is not int or nbytes <= 0:
            nbytes = _checked_nbytes(nbytes)
        await self._acquire(owner, nbytes, False, 0)

    @trio.lowlevel.enable_ki_protection
    async def _acquire(self, owner: object, nbytes: int, backlog: bool, read_minimum: int) -> int:
        # acquire_on_behalf_of for a checked nbytes; with read_minimum, acquire_read: the
        # request is read_wait_bytes(read_minimum), asked again when a resize refuses it.
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except RuntimeError:
            require_trio_run("BufferLimiter.acquire")
            raise
        if threading.get_ident() != self._home or not self._ledger.in_use:
            self._at_home()  # inside Trio this binds the limiter to this run, or raises
        ledger = self._ledger
        while True:
            if read_minimum:
                nbytes = read_wait_bytes(ledger, read_minimum)
            if ledger.take(owner, nbytes, backlog):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return nbytes
            waiter = ledger.enqueue(owner, nbytes, backlog)
            waiter.task = trio.lowlevel.current_task()
            queued_at = trio.current_time()

            def abort(
                _: trio.lowlevel.RaiseCancelT, waiter: _Waiter = waiter
            ) -> trio.lowlevel.Abort:
                # Still queued (Trio only calls this before reschedule()): leave the queue,
                # and let whoever was behind us go if we were what blocked them.
                self._wake(ledger.withdraw(waiter))
                return trio.lowlevel.Abort.SUCCEEDED

            try:
                await trio.lowlevel.wait_task_rescheduled(abort)
            except _Refused:
                if read_minimum:
                    continue  # a read asks again for what still fits
                raise
            finally:
                self._note_wait(trio.current_time() - queued_at)
            break
        # The ledger already counts the bytes as ours: the handoff happened inside a release
        # (or a resize, or somebody else's withdrawal) while we were parked, so no newcomer
        # could take them. But our scope may have been cancelled between that handoff and
        # now; Trio does not call abort() for a task that was already rescheduled. A task that
        # was told to stop no longer wants the bytes, so pass them on (HAProxy does the same)
        # instead of returning and making the caller release them at its next checkpoint.
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            self._wake(ledger.give_back(waiter))
            raise
        return nbytes

    @trio.lowlevel.enable_ki_protection
    def _end_waits(self, owner: object, error: BaseException) -> None:
        """Wake every request of ``owner`` still waiting with ``error``, holding nothing more.

        How closing a connection ends its wait for a read's memory without a cancel scope
        per wait (a flood parks a thousand of them). Call it on the Trio thread.
        """
        ledger = self._ledger
        for waiter in ledger.waiters_of(owner):
            self._wake(ledger.withdraw(waiter))
            assert waiter.task is not None
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    def _note_wait(self, seconds: float) -> None:
        # One request left the queue (granted, cancelled or refused): count its wait.
        self._wait_counts[bisect.bisect_left(WAIT_SECONDS_BUCKETS, seconds)] += 1
        self._wait_seconds += seconds

    def reserve(self, nbytes: int) -> AbstractAsyncContextManager[None]:
        """An async context manager that acquires ``nbytes`` for the current task on entry,
        waiting if necessary, and releases them on exit, however the block is left::

           async with limiter.reserve(16384):
               ...

        """
        return self.reserve_on_behalf_of(_CURRENT_TASK, nbytes)

    def reserve_on_behalf_of(self, owner: object, nbytes: int) -> AbstractAsyncContextManager[None]:
        """Like :meth:`reserve`, on behalf of ``owner``."""
        return _Reservation(self, owner, _checked_nbytes(nbytes))

    # -- releasing -------------------------------------------------------------------------

    def release(self, nbytes: int) -> None:
        """Put ``nbytes`` back into the sack on behalf of the current task.

        In a thread started by :func:`trio.to_thread.run_sync` (without
        ``abandon_on_cancel``), "the current task" is the task waiting for that thread.

        Raises:
          RuntimeError: if the current task holds fewer than ``nbytes``, or if there is no
            current task (call :meth:`release_on_behalf_of` instead).

        """
        self.release_on_behalf_of(_current_owner(), nbytes)

    @trio.lowlevel.enable_ki_protection
    def release_on_behalf_of(self, owner: object, nbytes: int) -> None:
        """Put ``nbytes`` back into the sack on behalf of ``owner``.

        The bytes are handed to the waiters at the head of the line inside this call, so no
        task arriving later can take them first. This may be called from any thread: from a
        thread other than the Trio thread, the release is carried out on the Trio thread and
        this call returns when it is done (or raises what it raised). Once that run is over
        it is made on the calling thread, as before the limiter's first run.

        Raises:
          RuntimeError: if ``owner`` holds fewer than ``nbytes``.
          TypeError: if ``nbytes`` is not an int or ``owner`` is not hashable.
          ValueError: if ``nbytes <= 0``.

        """
        if type(nbytes) is not int or nbytes <= 0:
            nbytes = _checked_nbytes(nbytes)
        if threading.get_ident() != self._home and not self._at_home():
            self._call_at_home(self.release_on_behalf_of, owner, nbytes)
            return
        self._wake(self._ledger.put_back(owner, nbytes))

    # -- introspection ---------------------------------------------------------------------

    def statistics(self) -> BufferLimiterStatistics:
        """Return an object containing debugging information; see
        :class:`BufferLimiterStatistics`."""
        if threading.get_ident() != self._home and not self._at_home():
            return self._call_at_home(self.statistics)
        ledger = self._ledger
        top = heapq.nlargest(TOP_HOLDERS, ledger.held.items(), key=lambda item: item[1])
        return BufferLimiterStatistics(
            total_bytes=ledger.total,
            reserved_bytes=ledger.reserved,
            pressure_bytes=ledger.pressure_bytes,
            bytes_in_use=ledger.in_use,
            bytes_available=max(0, ledger.total - ledger.in_use),
            peak_bytes_in_use=ledger.peak,
            tasks_waiting=ledger.waiters,
            bytes_waited_for=ledger.bytes_waited_for,
            grants=ledger.grants,
            timeouts=ledger.timeouts,
            pressure=ledger.pressure,
            top_holders=tuple((repr(owner), nbytes) for owner, nbytes in top),
            pressure_seconds=ledger.seconds_at_each_level(),
            pressure_changes=ledger.level_changes,
            wait_seconds_buckets=tuple(self._wait_counts),
            wait_seconds_total=self._wait_seconds,
        )

    # -- Trio and threads ------------------------------------------------------------------

    @staticmethod
    def _wake(granted: Sequence[_Waiter]) -> None:
        for waiter in granted:
            assert waiter.task is not None
            trio.lowlevel.reschedule(waiter.task)

    def _at_home(self) -> bool:
        """The slow path of the thread check: may this thread touch the ledger directly?

        The fast path is ``threading.get_ident() == self._home``. We get here from another
        thread, or before the limiter was first used inside Trio, or (from acquire) when no
        bytes are in use. Returns False if the call must be carried to the Trio thread.
        """
        if not trio.lowlevel.in_trio_run():
            # A worker thread (or a program without Trio). Before it is first used inside
            # Trio the limiter is a plain object: nobody can be waiting, nothing to hand off.
            return self._token is None
        token = trio.lowlevel.current_trio_token()
        if token is self._token:
            return True
        # A different Trio run. It may have the limiter if the previous one is done with it:
        # nothing held, or the run is over (so nobody can ever release what it held).
        if self._token is None or self._ledger.idle or _run_is_over(self._token):
            self._token = token
            self._home = threading.get_ident()
            return True
        raise RuntimeError("this BufferLimiter is in use by another Trio run")

    def _call_at_home(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        # Like trio.from_thread.run_sync(fn, *args, trio_token=...), without spawning a task.
        token = self._token
        assert token is not None
        results: queue.SimpleQueue[outcome.Outcome[T]] = queue.SimpleQueue()

        def in_trio_thread() -> None:
            results.put(outcome.capture(fn, *args))

        try:
            token.run_sync_soon(in_trio_thread)
        except trio.RunFinishedError:
            # That run is over, so nobody waits here any more: the limiter is a plain
            # object again, as before its first run, and the call is made right here.
            if self._token is token:
                self._token = None
                self._home = None
            return fn(*args)
        return results.get().unwrap()


def _run_is_over(token: trio.lowlevel.TrioToken) -> bool:
    try:
        token.run_sync_soon(lambda: None)
    except trio.RunFinishedError:
        return True
    return False


def _current_owner() -> object:
    """The current task; in a trio.to_thread worker, the task waiting for the thread."""
    try:
        return trio.lowlevel.current_task()
    except RuntimeError:
        pass
    try:
        return trio.from_thread.run_sync(trio.lowlevel.current_task)
    except RuntimeError as exc:
        raise RuntimeError(
            "there is no current task here; use the *_on_behalf_of(owner, nbytes) methods"
        ) from exc


@final
class _Reservation(AbstractAsyncContextManager[None]):
    __slots__ = ("_limiter", "_nbytes", "_owner", "_resolved")

    def __init__(self, limiter: BufferLimiter, owner: object, nbytes: int) -> None:
        self._limiter = limiter
        self._owner = owner
        self._nbytes = nbytes
        self._resolved: object = None

    async def __aenter__(self) -> None:
        owner = self._owner
        if owner is _CURRENT_TASK:
            owner = trio.lowlevel.current_task()
        await self._limiter.acquire_on_behalf_of(owner, self._nbytes)
        self._resolved = owner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._limiter.release_on_behalf_of(self._resolved, self._nbytes)
