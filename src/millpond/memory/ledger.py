"""The pure bookkeeping behind :class:`~millpond.memory.limiter.BufferLimiter`, with no I/O at all.

This module owns the rules of the byte budget: who holds how many bytes, who
waits for how many, in which order waiters are served, and the pressure
level. Its methods report which waiters they granted instead of waking
anybody, so every rule can be tested without Trio (``limiter.py`` wraps it).
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

import trio

__all__ = [
    "DEFAULT_PRESSURE_FRACTION",
    "Pressure",
    "keep_read",
    "read_request",
    "read_wait_bytes",
    "return_read",
    "take_read",
]

# The default pressure threshold, as a fraction of total_bytes. Linux leaves it to the admin to
# pick tcp_mem's "pressure" value; three quarters leaves a quarter of the budget as warning
# time, which is enough for a server to start shrinking read sizes before anyone has to wait.
DEFAULT_PRESSURE_FRACTION: Final = (3, 4)


class Pressure(enum.IntEnum):
    """How full a :class:`BufferLimiter` is, after the three levels of Linux's ``tcp_mem``.

    The levels are ordered, so ``limiter.pressure >= Pressure.PRESSURE`` reads naturally.

    * ``NONE``: fewer than ``pressure_bytes`` are in use. Take what you like.
    * ``PRESSURE``: at least ``pressure_bytes`` are in use, but ordinary requests can still be
      granted. A good moment to read in smaller chunks and to trim caches.
    * ``HARD``: at least ``total_bytes - reserved_bytes`` are in use, so an ordinary request
      (from an owner that holds nothing) has to wait; only the reserve is left.
    """

    NONE = 0
    PRESSURE = 1
    HARD = 2


def _unhashable_owner(owner: object) -> TypeError:
    return TypeError(f"owner must be hashable, not {type(owner).__name__}")


class _State(enum.Enum):
    WAITING = "waiting"  # in one of the three queues
    GRANTED = "granted"  # the ledger counts the bytes as held by the waiter's owner
    WITHDRAWN = "withdrawn"  # cancelled while waiting; nothing was ever granted
    REFUSED = "refused"  # total_bytes shrank below what it asked for
    RETURNED = "returned"  # granted, then cancelled before resuming: the bytes went back


# The only moves a waiter can make. Everything else is a bug in the ledger.
_TRANSITIONS: Final = frozenset(
    {
        (_State.WAITING, _State.GRANTED),
        (_State.WAITING, _State.WITHDRAWN),
        (_State.WAITING, _State.REFUSED),
        (_State.GRANTED, _State.RETURNED),
    }
)


class _Waiter:
    """One blocked request. The ledger treats ``task`` as an opaque tag for the I/O layer."""

    __slots__ = ("backlog", "nbytes", "owner", "privileged", "state", "task")

    def __init__(self, owner: object, nbytes: int, privileged: bool, backlog: bool) -> None:
        self.owner = owner
        self.nbytes = nbytes
        self.privileged = privileged
        # A read of a backlog from an owner that holds nothing (see _Ledger): it waits in
        # the backlog queue, and only for bytes below the pressure mark.
        self.backlog = backlog and not privileged
        self.state = _State.WAITING
        self.task: trio.lowlevel.Task | None = None

    def move(self, state: _State) -> None:
        assert (self.state, state) in _TRANSITIONS, (self.state, state)
        self.state = state


_NOBODY: Final[tuple[_Waiter, ...]] = ()

# The level bounds when there is no level above or below: ints, not infinities, so that
# the read path's comparisons stay int against int (an int against a float is slower).
_NEVER_UP: Final = 1 << 62
_NEVER_DOWN: Final = -1


class _Ledger:
    """Who holds how many bytes, and who waits for how many, with no I/O at all.

    Queueing policy (the long version is in ``docs/limiter.md``):

    * A request is *privileged* if its owner already holds bytes, *ordinary* otherwise. Only
      privileged requests may use the last ``reserved`` bytes, so an owner that holds memory
      can always get the little more it needs to finish and give everything back.
    * Each class has its own FIFO. Privileged waiters are served first; within a class,
      strictly in arrival order.
    * Head-of-line: if the head of the queue being served does not fit, nobody behind it is
      served, not even a smaller request that would fit, or the large request could starve.
    * No barging: a new request is granted at once only if nobody of its class or a higher
      class is waiting. Capacity freed by a release is handed to waiters inside that call.
    * An ordinary waiter whose owner becomes a holder while it waits (because another request
      for the same owner was granted) is promoted to the tail of the privileged FIFO.
      Privilege is never taken away from a waiter.
    * A *backlog* request (an ordinary request for a read of data that was already waiting:
      a bulk upload, or a flood that never reads its answers) is the lowest class. It is
      granted only while ``in_use`` stays within ``pressure_bytes`` (or when nothing at all
      is in use), after every other waiter, in a FIFO of its own; backlog waiters never
      hold back ordinary or privileged requests. So the budget above the pressure mark is
      kept for reads of what a peer has just sent. Promoted like ordinary waiters.
    """

    def __init__(self, total: int, reserved: int, pressure: int | None) -> None:
        self.reserved = reserved
        self.explicit_pressure = pressure
        self.in_use = 0
        self.peak = 0
        self.grants = 0
        self.timeouts = 0
        self.bytes_waited_for = 0
        self.held: dict[object, int] = {}  # owner -> bytes, never 0
        self.privileged: OrderedDict[_Waiter, None] = OrderedDict()
        self.ordinary: OrderedDict[_Waiter, None] = OrderedDict()
        self.backlog: OrderedDict[_Waiter, None] = OrderedDict()
        # Waiters in all three queues: the read path's one test for "anybody waits?".
        self.queued = 0
        # Ordinary and backlog waiters by owner, for their promotion.
        self.ordinary_by_owner: dict[object, list[_Waiter]] = {}
        self.total = total
        self.ordinary_limit = total - reserved
        # Cached because readers ask on every read; recomputed by resize().
        self.pressure_bytes = self._compute_pressure_bytes()
        # Time spent at each pressure level (statistics). The level is
        # recomputed only when in_use crosses one of the two bounds below,
        # which the read path checks with one comparison each way.
        self.clock: Callable[[], float] = time.monotonic
        self.level = self._level_now()
        self.level_since = self.clock()
        self.level_seconds = [0.0, 0.0, 0.0]
        self.level_changes = 0
        self.level_up_at = _NEVER_UP
        self.level_down_below = _NEVER_DOWN
        self._set_level_bounds()

    def _compute_pressure_bytes(self) -> int:
        # Never above the ordinary limit (total_bytes may shrink below an explicit mark):
        # take_read's fast path relies on it.
        if self.explicit_pressure is not None:
            return min(self.explicit_pressure, self.ordinary_limit)
        num, den = DEFAULT_PRESSURE_FRACTION
        return min(self.total * num // den, self.ordinary_limit)

    def note_level(self) -> None:
        """After ``in_use`` or a threshold changed: move to the level it is at, counting time
        (and note a new peak: ``level_up_at`` is never above ``peak + 1``)."""
        if self.in_use > self.peak:
            self.peak = self.in_use
        level = self._level_now()
        if level != self.level:
            now = self.clock()
            self.level_seconds[self.level] += now - self.level_since
            self.level_since = now
            self.level = level
            self.level_changes += 1
        self._set_level_bounds()

    def _level_now(self) -> int:
        # The pressure property's rule, as an int (Pressure is an IntEnum of the same values).
        if self.in_use >= self.ordinary_limit:
            return 2
        if self.in_use >= self.pressure_bytes:
            return 1
        return 0

    def _set_level_bounds(self) -> None:
        # Where in_use leaves the current level, up or down: the read path's one comparison.
        # Going up also stops at a new peak, which note_level records, so that the read path
        # needs no comparison of its own for the peak.
        if self.level == 0:
            up, self.level_down_below = self.pressure_bytes, _NEVER_DOWN
        elif self.level == 1:
            up, self.level_down_below = self.ordinary_limit, self.pressure_bytes
        else:
            up, self.level_down_below = _NEVER_UP, self.ordinary_limit
        self.level_up_at = min(up, self.peak + 1)

    def seconds_at_each_level(self) -> tuple[float, float, float]:
        """Time spent at ``NONE``, ``PRESSURE`` and ``HARD`` so far, the current stay included."""
        seconds = list(self.level_seconds)
        seconds[self.level] += self.clock() - self.level_since
        return seconds[0], seconds[1], seconds[2]

    @property
    def pressure(self) -> Pressure:
        if self.in_use >= self.ordinary_limit:
            return Pressure.HARD
        if self.in_use >= self.pressure_bytes:
            return Pressure.PRESSURE
        return Pressure.NONE

    @property
    def idle(self) -> bool:
        return not self.in_use and not self.queued

    @property
    def waiters(self) -> int:
        """Requests waiting, in all three queues."""
        return self.queued

    def waiters_of(self, owner: object) -> list[_Waiter]:
        """``owner``'s requests still waiting, in any queue."""
        found = list(self.ordinary_by_owner.get(owner, ()))
        found += [waiter for waiter in self.privileged if waiter.owner == owner]
        return found

    def backlog_fits(self, nbytes: int) -> bool:
        """May a backlog request of ``nbytes`` be granted, as far as the bytes go?"""
        return self.in_use + nbytes <= self.pressure_bytes or not self.in_use

    def take(self, owner: object, nbytes: int, backlog: bool = False) -> bool:
        """Grant ``nbytes`` to ``owner`` now if the policy allows it; False means wait.

        ``backlog``: a read of data that was already waiting (see the class docstring);
        it only matters for an owner that holds nothing.
        """
        # Hot path: a few dict and int operations when nobody waits.
        held = self.held
        try:
            already = held.get(owner, 0)
        except TypeError:
            raise _unhashable_owner(owner) from None
        in_use = self.in_use + nbytes
        if already:
            if nbytes > self.total:
                raise ValueError(
                    f"nbytes={nbytes} is larger than total_bytes={self.total}; it could never "
                    "be granted"
                )
            if self.privileged or in_use > self.total:
                return False
        else:
            if nbytes > self.ordinary_limit:
                raise ValueError(
                    f"nbytes={nbytes} is larger than total_bytes - reserved_bytes = "
                    f"{self.ordinary_limit}, the most an owner that holds nothing can get"
                )
            if self.privileged or self.ordinary or in_use > self.ordinary_limit:
                return False
            if backlog and (self.backlog or not self.backlog_fits(nbytes)):
                return False
        held[owner] = already + nbytes
        self.in_use = in_use
        self.grants += 1
        if in_use >= self.level_up_at:  # a new level or a new peak
            self.note_level()
        return True

    def force(self, owner: object, nbytes: int) -> None:
        """Count ``nbytes`` held by ``owner`` at once, whatever the budget and the queues say.

        For memory that already exists (see :meth:`BufferLimiter.charge_on_behalf_of`):
        ``in_use`` may end above ``total``, which makes later requests wait. Never wakes
        anybody, since nothing was freed.
        """
        held = self.held
        try:
            held[owner] = held.get(owner, 0) + nbytes
        except TypeError:
            raise _unhashable_owner(owner) from None
        self.in_use += nbytes
        self.grants += 1
        self.note_level()

    def transfer(self, giver: object, taker: object, nbytes: int) -> Sequence[_Waiter]:
        """Move ``nbytes`` held by ``giver`` to ``taker``: memory that changes hands, freed by
        nobody (see :meth:`BufferLimiter.transfer`). ``in_use`` does not change. Returns the
        waiters granted because ``taker`` became a holder (its waiting requests are promoted)."""
        held = self.held
        for owner in (giver, taker):
            try:
                hash(owner)
            except TypeError:
                raise _unhashable_owner(owner) from None
        already = held.get(giver, 0)
        had = held.get(taker, 0)
        if nbytes > already:
            raise RuntimeError(
                f"can't transfer {nbytes} bytes from {giver!r} to {taker!r}: it holds {already}"
            )
        if giver == taker:
            return _NOBODY
        if nbytes == already:
            del held[giver]
        else:
            held[giver] = already - nbytes
        held[taker] = had + nbytes
        if had or taker not in self.ordinary_by_owner:
            return _NOBODY
        self._promote(taker)
        return self._serve()

    def _promote(self, owner: object) -> None:
        # ``owner`` just became a holder: its ordinary and backlog waiters are now requests
        # "from an owner that holds bytes", at the tail of the privileged queue.
        for promoted in self.ordinary_by_owner.pop(owner, ()):
            del (self.backlog if promoted.backlog else self.ordinary)[promoted]
            promoted.privileged = True
            promoted.backlog = False
            self.privileged[promoted] = None

    def enqueue(self, owner: object, nbytes: int, backlog: bool = False) -> _Waiter:
        """Queue a request that :meth:`take` refused (with the same ``backlog``)."""
        waiter = _Waiter(owner, nbytes, owner in self.held, backlog)
        if waiter.privileged:
            self.privileged[waiter] = None
        else:
            (self.backlog if waiter.backlog else self.ordinary)[waiter] = None
            self.ordinary_by_owner.setdefault(owner, []).append(waiter)
        self.queued += 1
        self.bytes_waited_for += nbytes
        return waiter

    def withdraw(self, waiter: _Waiter) -> Sequence[_Waiter]:
        """A waiter gave up (cancelled). Returns the waiters this unblocked."""
        self._dequeue(waiter)
        waiter.move(_State.WITHDRAWN)
        self.timeouts += 1
        return self._serve()

    def give_back(self, waiter: _Waiter) -> Sequence[_Waiter]:
        """A granted waiter was cancelled before it resumed: undo the grant."""
        waiter.move(_State.RETURNED)
        self.grants -= 1
        self.timeouts += 1
        # Somebody may have released on behalf of the same owner in the meantime; what is
        # already back must not be put back twice.
        nbytes = min(waiter.nbytes, self.held.get(waiter.owner, 0))
        if nbytes:
            return self.put_back(waiter.owner, nbytes)
        return self._serve()

    def put_back(self, owner: object, nbytes: int) -> Sequence[_Waiter]:
        """``owner`` releases ``nbytes``. Returns the waiters granted with them."""
        held = self.held
        try:
            already = held.get(owner, 0)
        except TypeError:
            raise _unhashable_owner(owner) from None
        if nbytes > already:
            raise RuntimeError(
                f"can't release {nbytes} bytes on behalf of {owner!r}: it holds {already}"
            )
        if nbytes == already:
            del held[owner]
        else:
            held[owner] = already - nbytes
        self.in_use -= nbytes
        if self.queued:
            return self._serve()
        if self.in_use < self.level_down_below:
            self.note_level()
        return _NOBODY

    def resize(self, total: int) -> tuple[Sequence[_Waiter], Sequence[_Waiter]]:
        """Change the total. Returns ``(granted, refused)``: waiters whose request can no
        longer ever fit are refused rather than left to block the queue for ever."""
        self.total = total
        self.ordinary_limit = total - self.reserved
        self.pressure_bytes = self._compute_pressure_bytes()
        refused = [
            waiter
            for waiter in (*self.privileged, *self.ordinary, *self.backlog)
            if waiter.nbytes > (total if waiter.privileged else self.ordinary_limit)
        ]
        for waiter in refused:
            self._dequeue(waiter)
            waiter.move(_State.REFUSED)
        granted = self._serve()
        self.note_level()  # the bounds moved
        return granted, refused

    def _dequeue(self, waiter: _Waiter) -> None:
        if waiter.privileged:
            del self.privileged[waiter]
        else:
            del (self.backlog if waiter.backlog else self.ordinary)[waiter]
            self._forget_ordinary(waiter)
        self.queued -= 1
        self.bytes_waited_for -= waiter.nbytes

    def _forget_ordinary(self, waiter: _Waiter) -> None:
        same_owner = self.ordinary_by_owner[waiter.owner]
        same_owner.remove(waiter)
        if not same_owner:
            del self.ordinary_by_owner[waiter.owner]

    def _serve(self) -> list[_Waiter]:
        granted: list[_Waiter] = []
        privileged, ordinary, backlog = self.privileged, self.ordinary, self.backlog
        held = self.held
        while True:
            if privileged:
                waiter = next(iter(privileged))
                if self.in_use + waiter.nbytes > self.total:
                    break  # head-of-line: nobody overtakes a privileged head
                del privileged[waiter]
            elif ordinary:
                waiter = next(iter(ordinary))
                if self.in_use + waiter.nbytes > self.ordinary_limit:
                    break
                del ordinary[waiter]
                self._forget_ordinary(waiter)
            elif backlog:
                waiter = next(iter(backlog))
                if not self.backlog_fits(waiter.nbytes):
                    break
                del backlog[waiter]
                self._forget_ordinary(waiter)
            else:
                break
            waiter.move(_State.GRANTED)
            self.queued -= 1
            nbytes, owner = waiter.nbytes, waiter.owner
            self.bytes_waited_for -= nbytes
            already = held.get(owner, 0)
            held[owner] = already + nbytes
            self.in_use += nbytes  # the peak: note_level, after the loop
            self.grants += 1
            granted.append(waiter)
            if not already:
                self._promote(owner)
        self.note_level()
        return granted


# ---------------------------------------------------------------------------------------------
# The read-charge rules: how a socket read is charged, each in one place
# ---------------------------------------------------------------------------------------------
#
# A connection charges every read before it makes it (``take_read``), keeps the charge while
# the handler holds the chunk, and gives it back when the handler asks for more
# (``return_read``) unless the next read may simply inherit it (``keep_read``). A read that
# must wait queues for ``read_wait_bytes``. ``Connection`` (stream.py) calls these on its hot
# path; none of them is copied there. They run on the limiter's Trio thread only
# (``BufferLimiter.read_ledger`` hands the ledger out), so they need no thread check.


def read_request(
    ledger: _Ledger, preferred: int, minimum: int, owner: object = None, backlog: bool = False
) -> int:
    """How many bytes a read should ask for right now.

    ``preferred`` normally, ``minimum`` from the pressure mark on (Linux shrinks what a socket
    may buffer above ``tcp_mem[1]`` the same way), and never more than the budget can grant
    right now: a larger read halves (a size class stays a size class) down to ``minimum``,
    then takes what the budget has. "Right now" is the budget's free bytes, for ``owner``
    (the reader) as :meth:`_Ledger.take` counts them: with the reserve if it holds bytes
    already, without it if it holds none (or is None), and only up to the pressure mark for
    a ``backlog`` read of an owner that holds none. ``total_bytes`` may shrink at any
    time; this is what makes reads follow it instead of failing.

    Why the free bytes and not only the total: a read sized for the whole budget can be
    granted only when the budget is empty, so as soon as anybody else holds a byte it falls
    to the minimum (or waits) while most of the budget sits free. A connection whose reads
    grew to 1 MiB on a 1 MiB budget then crawled at 1 KiB per read (the cancellation-storm
    benchmark of issue 16 found it: about 7 MB/s for 17 connections, budget nearly free).
    """
    nbytes = minimum if ledger.in_use >= ledger.pressure_bytes else preferred
    cap = ledger.ordinary_limit
    if owner is not None and ledger.held.get(owner):
        limit = ledger.total
    else:
        limit = ledger.pressure_bytes if backlog else cap
    room = limit - ledger.in_use
    while nbytes > minimum and (nbytes > cap or nbytes > room):
        nbytes = max(nbytes // 2, minimum)
    return min(nbytes, cap)


def read_wait_bytes(ledger: _Ledger, minimum: int) -> int:
    """What a read that cannot be charged now queues for: ``minimum``, or the whole
    ordinary budget when that is smaller (so the request can always be granted)."""
    return min(minimum, ledger.ordinary_limit)


def take_read(
    ledger: _Ledger, owner: object, preferred: int, minimum: int, backlog: bool = False
) -> int:
    """Charge a read of :func:`read_request` bytes now if nobody has to wait; returns the
    bytes charged, or 0: queue for :func:`read_wait_bytes` instead (with the same
    ``backlog``: whether data was already waiting, see ``_Ledger``)."""
    in_use = ledger.in_use
    # Hot path: read_request() and _Ledger.take() inlined for the common case (no pressure,
    # nobody waits, it fits); test_take_read_agrees_with_the_rules_it_stands_in_for
    # (tests/test_read_charges.py) checks the two agree.
    nbytes = minimum if in_use >= ledger.pressure_bytes else preferred
    if ledger.queued and (backlog or ledger.privileged or ledger.ordinary):
        # Somebody waits ahead of this read (backlog waiters hold back only backlog reads).
        return _take_read_slowly(ledger, owner, preferred, minimum, backlog)
    held = ledger.held
    already = held.get(owner, 0)
    in_use += nbytes
    # An owner that holds nothing stays within the ordinary limit (or the pressure mark, which
    # is never higher), and so does nbytes; a holder may use the reserve, up to the total, for
    # a read no larger than the ordinary limit.
    if already:
        if in_use > ledger.total or nbytes > ledger.ordinary_limit:
            return _take_read_slowly(ledger, owner, preferred, minimum, backlog)
    elif in_use > (ledger.pressure_bytes if backlog else ledger.ordinary_limit):
        return _take_read_slowly(ledger, owner, preferred, minimum, backlog)
    held[owner] = already + nbytes
    ledger.in_use = in_use
    ledger.grants += 1
    if in_use >= ledger.level_up_at:  # a new level or a new peak
        ledger.note_level()
    return nbytes


def _take_read_slowly(
    ledger: _Ledger, owner: object, preferred: int, minimum: int, backlog: bool
) -> int:
    # Waiters, or a read that does not fit: the general rules, which may still grant it (an
    # owner that holds bytes does not wait behind ordinary waiters).
    nbytes = read_request(ledger, preferred, minimum, owner, backlog)
    return nbytes if ledger.take(owner, nbytes, backlog) else 0


def keep_read(ledger: _Ledger, held: int, preferred: int) -> bool:
    """May the next read inherit the charge of the chunk just handed to the handler?

    Only when it is the same size, nobody waits and use is below the pressure mark: giving it
    back and taking it again would then change nothing, and costs two dict updates.
    """
    return held == preferred and not ledger.queued and ledger.in_use < ledger.pressure_bytes


def return_read(ledger: _Ledger, owner: object, nbytes: int) -> bool:
    """Give back read bytes when nobody waits; False: use
    :meth:`BufferLimiter.release_on_behalf_of` instead (waiters to serve, or an error)."""
    if ledger.queued:
        return False
    held = ledger.held
    already = held.get(owner, 0)
    if nbytes == already:
        del held[owner]
    elif 0 < nbytes < already:
        held[owner] = already - nbytes
    else:
        return False
    in_use = ledger.in_use - nbytes
    ledger.in_use = in_use
    if in_use < ledger.level_down_below:
        ledger.note_level()
    return True
