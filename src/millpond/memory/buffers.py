"""Leased byte buffers: the pool that hands them out, trimming and leak detection.

This module owns the memory that connections read into and nothing else: it does
no I/O. A :class:`BufferPool` hands out :class:`Buffer` leases, each a window
onto one slot of a *slab* (one anonymous ``mmap`` holding many buffers of one
size class), after Netty's ``PooledByteBufAllocator``. Every leased byte is
charged to a :class:`~millpond.memory.limiter.BufferLimiter`, so the limiter's budget
bounds what the pool hands out; the pool itself bounds what it keeps beyond that
(idle slabs, see ``max_idle_bytes``) and gives idle slabs back to the operating
system after a quiet period. A buffer that is garbage collected without
``release()`` is reclaimed and, if it was sampled, reported with a
:class:`BufferLeakWarning` that names where it was leased.

The :class:`Buffer` a caller holds is in ``lease.py``, the size classes and the
slabs themselves (their arithmetic and bookkeeping) in ``sizeclasses.py``, and
the leak warning, its report and the sampling rate in ``leaks.py``. This module
still exports the names it always did (:class:`Buffer`, :data:`SIZE_CLASSES`,
:func:`size_class_index`, :func:`capacity_for`, :class:`BufferLeakWarning`,
:class:`LeakReport`).
``docs/buffers.md`` explains the size classes, the slack bound and the trimming
rules at length.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import queue
import random
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import FrameType
from typing import Final, TypeVar, TypeVarTuple

import outcome
import trio

from .._core.needs_trio import require_trio_run
from . import census
from .faults import LeaseFaults
from .leaks import (
    _LEAK_LEVELS,
    _SAMPLE_BITS,
    BufferLeakWarning,
    LeakReport,
    _Site,
    default_leak_detection,
)
from .lease import _EXPORTED, _LEAKED, Buffer, _GuardedBuffer, _Return
from .limiter import BufferLimiter, _run_is_over
from .sizeclasses import (
    _LENT_SLOTS,
    _LENT_VIEWS_SHOW_EXPORTS,
    _MIN_SHIFT,
    _ORPHANED_SLOTS,
    MAX_CLASS_BYTES,
    MIN_CLASS_BYTES,
    PAGE_BYTES,
    SIZE_CLASSES,
    SLAB_BYTES,
    _SizeClass,
    _Slab,
    _SlotWaiter,
    capacity_for,
    size_class_index,
)

__all__ = [
    "SIZE_CLASSES",
    "Buffer",
    "BufferLeakWarning",
    "BufferPool",
    "BufferPoolStatistics",
    "LeakReport",
    "SizeClassStatistics",
    "capacity_for",
    "size_class_index",
]

# A slab whose buffers have all been free this long goes back to the OS. Long
# enough to ride out bursts a few seconds apart without remapping and
# re-faulting, short enough that memory follows load within a few seconds.
DEFAULT_TRIM_AFTER: Final = 5.0

# At most this many bytes of fully free slabs are kept between bursts; beyond it
# the oldest idle slab is unmapped at once. 128 receive buffers: enough to absorb
# the churn of a few hundred busy connections without mmap/munmap on every burst,
# and a fixed constant in the pool's memory bound (docs/buffers.md).
DEFAULT_MAX_IDLE_BYTES: Final = 8 * 1024 * 1024

# How many tracked leaks statistics() remembers: enough to see a pattern, few enough to
# keep every report (a file, a line, a task name) for as long as the pool lives.
RECENT_LEAKS_KEPT: Final = 32

_get_ident: Final = threading.get_ident
# Where a pool call runs (BufferPool._enter).
_AT_HOME: Final = 0
_AWAY: Final = 1
_ALONE: Final = 2
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


@dataclass(frozen=True)
class SizeClassStatistics:
    """One size class: its buffer size, slabs mapped, and how many of their buffers are leased.

    ``buffers_total - buffers_leased`` are free; ``slabs_trimmed`` counts the slabs of
    this class given back to the OS so far (their sum is the pool's ``slabs_trimmed``).
    """

    size: int
    slabs: int
    buffers_total: int
    buffers_leased: int
    slabs_trimmed: int = 0


@dataclass(frozen=True)
class BufferPoolStatistics:
    """A snapshot of a :class:`BufferPool`, from :meth:`BufferPool.statistics`.

    * ``size_classes``: one :class:`SizeClassStatistics` per entry of :data:`SIZE_CLASSES`.
    * ``bytes_leased``: capacity of all live leases; what the limiter charges their owners.
    * ``bytes_fragmented``: free slots of partly used slabs (not the current one of
      their class), which the pool holds in the limiter as its own charge.
    * ``buffers_quarantined`` / ``bytes_quarantined``: slots whose lease ended (or
      leaked) while a view of them was still exported; kept out of use, and charged
      to the pool, until :meth:`BufferPool.trim` finds the view gone.
    * ``bytes_reserved_by_slabs``: bytes mapped by slabs (what the pool holds, RSS-ish);
      ``bytes_reserved_by_slabs + bytes_dedicated`` minus ``bytes_leased``,
      ``bytes_fragmented`` and ``bytes_quarantined`` is the pool's slack beyond what
      it is charged: at most one current slab per class
      plus ``max_idle_bytes`` (docs/buffers.md, "The memory bound").
    * ``bytes_idle``: of those, bytes in slabs none of whose buffers is leased.
    * ``dedicated_buffers`` / ``bytes_dedicated``: live leases above 64 KiB, each its own mapping.
    * ``leases``, ``releases``: totals since the pool was made (a leak counts as a release).
    * ``leaks_detected``: buffers garbage collected without ``release()``, tracked or not.
    * ``slabs_trimmed`` / ``bytes_trimmed``: slabs given back to the OS (age, cap or force).
    * ``recent_leaks``: the last few tracked leaks, oldest first.
    * ``bytes_scratch``: the scratch buffer (:meth:`BufferPool.scratch`) once it
      exists: 64 KiB shared by all one-syscall reads, not in the figures above.

    Per-owner holdings are the limiter's business: see ``BufferLimiter.statistics()``.
    """

    size_classes: tuple[SizeClassStatistics, ...]
    bytes_leased: int
    bytes_reserved_by_slabs: int
    bytes_idle: int
    dedicated_buffers: int
    bytes_dedicated: int
    leases: int
    releases: int
    leaks_detected: int
    slabs_trimmed: int
    bytes_trimmed: int
    leak_detection: str
    recent_leaks: tuple[LeakReport, ...]
    bytes_scratch: int = 0
    bytes_fragmented: int = 0
    buffers_quarantined: int = 0
    bytes_quarantined: int = 0


class BufferPool:
    """Hands out byte buffers for socket reads without churning the allocator.

    A server reads into a buffer, hands the bytes on, and wants the buffer back
    for the next read. The pool keeps buffers in size classes (powers of two from
    1 KiB to 64 KiB; bigger requests get a mapping of their own), carves them from
    slabs of anonymous memory, and charges every leased byte (the class size, not
    the requested size) to *limiter*, so a full budget makes ``lease()`` wait in
    the limiter's FIFO queue. A slot freed in a slab that other leases keep mapped
    stays charged, to the pool itself, until the next lease of its class takes it
    over: the limiter's budget bounds what the pool maps, fragmentation included::

        pool = millpond.BufferPool(millpond.BufferLimiter(64 * 1024 * 1024))
        with await pool.lease(65536) as buf:
            n = sock.recv_into(buf.view)

    Arguments:
      limiter: the :class:`~millpond.memory.limiter.BufferLimiter` to charge, or None to
        account (see :meth:`statistics`) without limiting.
      leak_detection: ``"off"``, ``"sampled"`` (1 lease in :data:`LEAK_SAMPLE_INTERVAL`
        records its call site) or ``"all"``; None (the default): ``$MILLPOND_LEAK_DETECTION``,
        else ``"sampled"``. Whatever the level, a buffer that is
        garbage collected unreleased gives its slot and capacity back; tracked
        ones also raise a :class:`BufferLeakWarning`.
      trim_after: seconds (Trio's clock) a slab must stay entirely free before it
        is unmapped; checked lazily as buffers come and go, and by :meth:`trim`.
        ``math.inf`` keeps idle slabs until ``trim(force=True)``.
      max_idle_bytes: most bytes of entirely free slabs kept (besides each class's
        current slab); beyond it the oldest idle slab is unmapped at once. None: no cap.
      guard_views: also keep a slot out of use while views *derived* from a released
        lease's ``view`` live (slices, ``memoryview(view)``, ``numpy.frombuffer``),
        for code that keeps them; costs about 2.5 µs per lease (docs/buffers.md,
        "Views after release"). Without it only exports of ``view`` itself are noticed.
      faults: a :class:`~millpond.memory.faults.LeaseFaults` that refuses a share of
        the leases, for tests (HAProxy's ``tune.fail-alloc``): a refused lease is a
        transient shortage, as if the budget were spent. None (the default): none.

    The pool belongs to the Trio run that first uses it, and its bookkeeping
    happens on that run's thread, without locks. From a worker thread
    (:func:`trio.to_thread.run_sync`) ``Buffer.release()`` hands the return to
    the Trio thread and returns at once (it is done before the worker's result
    reaches the waiting task); ``lease_nowait``, ``trim`` and ``statistics`` are
    carried over and wait for the answer. Outside any live Trio run (before the
    first, after the last) the pool works on the calling thread, under a lock; when
    its run ends it applies every queued return, and applies later ones at once.
    """

    def __init__(
        self,
        limiter: BufferLimiter | None = None,
        *,
        leak_detection: str | None = None,
        trim_after: float = DEFAULT_TRIM_AFTER,
        max_idle_bytes: int | None = DEFAULT_MAX_IDLE_BYTES,
        guard_views: bool = False,
        faults: LeaseFaults | None = None,
    ) -> None:
        if limiter is not None and not isinstance(limiter, BufferLimiter):
            raise TypeError(
                f"limiter must be a BufferLimiter or None, not {type(limiter).__name__}"
            )
        if leak_detection is None:
            leak_detection = default_leak_detection()
        elif not isinstance(leak_detection, str):
            raise TypeError(f"leak_detection must be a str, not {type(leak_detection).__name__}")
        if leak_detection not in _LEAK_LEVELS:
            raise ValueError(
                f"leak_detection must be one of {_LEAK_LEVELS}, not {leak_detection!r}"
            )
        if isinstance(trim_after, bool) or not isinstance(trim_after, int | float):
            raise TypeError(f"trim_after must be a number, not {type(trim_after).__name__}")
        if not trim_after >= 0:  # also rejects NaN
            raise ValueError(f"trim_after must be >= 0, not {trim_after!r}")
        if max_idle_bytes is not None:
            if type(max_idle_bytes) is not int:  # noqa: E721
                raise TypeError(
                    f"max_idle_bytes must be an int or None, not {type(max_idle_bytes).__name__}"
                )
            if max_idle_bytes < 0:
                raise ValueError(f"max_idle_bytes must be >= 0, not {max_idle_bytes}")
        if not isinstance(guard_views, bool):
            raise TypeError(f"guard_views must be a bool, not {type(guard_views).__name__}")
        if faults is not None and not isinstance(faults, LeaseFaults):
            raise TypeError(f"faults must be a LeaseFaults or None, not {type(faults).__name__}")
        self._limiter = limiter
        self._faults = faults
        # Where this CPython cannot tell (sizeclasses.py), leases are not guarded.
        self._lent: type[Buffer] = (
            _GuardedBuffer if guard_views and _LENT_VIEWS_SHOW_EXPORTS else Buffer
        )
        self._leak_level = _LEAK_LEVELS.index(leak_detection)  # 0 off, 1 sampled, 2 all
        self._trim_after = float(trim_after)
        self._max_idle_bytes = math.inf if max_idle_bytes is None else max_idle_bytes
        self._classes = tuple(_SizeClass(size) for size in SIZE_CLASSES)
        self._bytes_leased = 0
        self._slab_bytes = 0
        self._scratch: mmap.mmap | None = None
        self._idle_bytes = 0  # slabs in the ``idle`` dicts (not idle current slabs)
        self._bytes_fragmented = 0  # free slots of partial slabs: charged to the pool
        self._dedicated = 0
        self._dedicated_bytes = 0
        self._leases = 0
        self._releases = 0
        self._leaks_detected = 0
        self._slabs_trimmed = 0
        self._bytes_trimmed = 0
        self._trim_due = math.inf  # no idle slab can expire before this time
        # The Trio run we belong to: its token, its thread (None: not bound, so the
        # next call takes the slow path in _enter) and its clock. All bookkeeping
        # happens on that thread, so it needs no lock; the public entry points are
        # KI-protected (as the limiter's are) because a KeyboardInterrupt between two
        # bookkeeping steps would corrupt the free lists.
        self._token: trio.lowlevel.TrioToken | None = None
        self._home: int | None = None
        self._clock: Callable[[], float] = time.monotonic
        # Returns made where the pool's state must not be touched: releases from
        # other threads and leaks found by Buffer.__del__. Deque appends and pops
        # are atomic; _drain() applies them on the home thread.
        self._pending: collections.deque[_Return] = collections.deque()
        # Slots whose lease ended while views derived from its view lived (slab,
        # offset, capacity, the slot's view): see _quarantine_here.
        self._quarantined: list[tuple[_Slab, int, int, memoryview]] = []
        self._bytes_quarantined = 0
        self._recent_leaks: collections.deque[LeakReport] = collections.deque(
            maxlen=RECENT_LEAKS_KEPT
        )
        # Every tracked lease (one that recorded its site) while it lives, for
        # tracked_leases(): a released one drops out when it is collected, or is skipped.
        self._tracked: weakref.WeakSet[Buffer] = weakref.WeakSet()
        self._sample = random.Random().getrandbits
        # Taken only where no live run gives the pool a home thread: after its run,
        # before its first, and by the run_sync_soon callback (see _apply_alone).
        self._lock = threading.Lock()
        if trio.lowlevel.in_trio_run():
            self._enter()  # belong to this run from the start, not to a worker thread
        if census._OPEN:
            census._note(self)

    @property
    def faults(self) -> LeaseFaults | None:
        """The fault injector that refuses a share of the leases, or None."""
        return self._faults

    @property
    def limiter(self) -> BufferLimiter | None:
        """The limiter this pool charges, or None."""
        return self._limiter

    def scratch(self) -> mmap.mmap:
        """The pool's scratch buffer: :data:`MAX_CLASS_BYTES` bytes of anonymous memory.

        For a read whose bytes are copied out before the caller next awaits
        (``Connection.receive_some``): a lease that lasts one syscall needs no
        slot and no Buffer object. The reader charges the limiter for what it
        reads itself (:meth:`BufferLimiter.acquire_read_nowait`). An ``mmap``,
        so ``recv_into(scratch, n)`` fills it and ``scratch[:n]`` copies the
        bytes out in one step, with no memoryview for the garbage collector
        to track. One per pool, reused by every such read: use it on the Trio
        thread, and never keep its bytes across an ``await``. Callers may keep
        the object itself, to save this call on a hot path.
        """
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = mmap.mmap(-1, MAX_CLASS_BYTES)
        return scratch

    # -- leasing ------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    def lease_nowait(self, nbytes: int, *, owner: Hashable | None = None) -> Buffer:
        """Lease a buffer of at least *nbytes* now, or raise :class:`trio.WouldBlock`.

        WouldBlock means the limiter has no room (or others are already queued for
        it); a free slot of a partly used slab needs no room, its bytes are already
        charged (to the pool, which hands the charge over). *owner* is who the
        limiter charges; by default the current Trio task (in a worker thread or
        outside Trio, the current thread).
        """
        index, capacity, owner, site = self._request(nbytes, owner)
        if self._faults is not None and self._faults.refuse():
            raise trio.WouldBlock  # an injected refusal: a shortage (faults.py)
        if _get_ident() != self._home:
            return self._elsewhere(self._lease_here, index, nbytes, capacity, owner, site)
        return self._lease_here(index, nbytes, capacity, owner, site)

    def _lease_here(
        self, index: int, nbytes: int, capacity: int, owner: Hashable, site: _Site | None
    ) -> Buffer:
        if self._pending:
            self._drain_here()
        if self._bytes_fragmented and index >= 0 and self._classes[index].partial:
            return self._take_free_slot(self._classes[index], nbytes, capacity, owner, site)
        limiter = self._limiter
        if limiter is not None:
            limiter.acquire_on_behalf_of_nowait(owner, capacity)
        return self._take(index, nbytes, capacity, owner, site)

    @trio.lowlevel.enable_ki_protection
    async def lease(self, nbytes: int, *, owner: Hashable | None = None) -> Buffer:
        """Lease a buffer of at least *nbytes*, waiting (FIFO, cancellable) for limiter room.

        Always a checkpoint. Cancelled, it charges nothing. See :meth:`lease_nowait`.
        A lease refused by the pool's ``faults`` waits ``faults.retry_after`` seconds,
        charging nothing, and asks again.
        """
        require_trio_run("BufferPool.lease")
        index, capacity, owner, site = self._request(nbytes, owner)
        faults = self._faults
        if faults is not None:
            while faults.refuse():  # an injected refusal: a shortage (faults.py)
                await trio.sleep(faults.retry_after)
        if _get_ident() != self._home:
            self._enter()  # inside Trio this binds the pool to this run, or raises
        if self._pending:
            self._drain_here()  # queued returns may hold the capacity we are about to wait for
        limiter = self._limiter
        if limiter is None:
            await trio.lowlevel.checkpoint()
            return self._lease_here(index, nbytes, capacity, owner, site)
        if index < 0 or self._classes[index].slots == 1:
            await limiter.acquire_on_behalf_of(owner, capacity)
        elif self._classes[index].partial:
            await trio.lowlevel.checkpoint_if_cancelled()
            buffer = self._take_free_slot(self._classes[index], nbytes, capacity, owner, site)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return buffer
        else:
            return await self._wait_for_slot(index, nbytes, capacity, owner, site)
        return self._take(index, nbytes, capacity, owner, site)

    async def _wait_for_slot(
        self, index: int, nbytes: int, capacity: int, owner: Hashable, site: _Site | None
    ) -> Buffer:
        # Wait in the limiter for the bytes of a slot in the current or a new slab. A
        # slot that a release frees meanwhile in a partly used slab of this class is
        # already paid for: it is handed to the oldest such wait (_hand_over), which
        # cancels the wait in the limiter through this scope.
        limiter = self._limiter
        assert limiter is not None
        size_class = self._classes[index]
        scope = trio.CancelScope()
        waiter = _SlotWaiter(owner, scope.cancel)
        size_class.waiters.append(waiter)
        try:
            with scope:
                await limiter.acquire_on_behalf_of(owner, capacity)
        except BaseException:
            if waiter.slot is None:
                size_class.waiters.remove(waiter)
            else:  # handed a slot, then cancelled from outside before we could take it
                self._give_back_here(*waiter.slot, capacity, owner)
            raise
        if waiter.slot is None:
            size_class.waiters.remove(waiter)
            return self._take(index, nbytes, capacity, owner, site)
        if not scope.cancelled_caught:
            # Granted in the same tick as handed a slot (the grant's checkpoint is
            # shielded): the slot is charged to us already, the grant is spare.
            limiter.release_on_behalf_of(owner, capacity)
        slab, offset = waiter.slot
        return self._lent(self, slab, offset, capacity, nbytes, owner, site)

    def _request(
        self, nbytes: int, owner: Hashable | None
    ) -> tuple[int, int, Hashable, _Site | None]:
        # Hot path: validation, size class, owner and leak sampling in one pass.
        if type(nbytes) is not int:  # noqa: E721  (bool is not a size)
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes <= MIN_CLASS_BYTES:
            if nbytes < 0:
                raise ValueError(f"nbytes must be >= 0, not {nbytes}")
            index = 0
            capacity = MIN_CLASS_BYTES
        elif nbytes <= MAX_CLASS_BYTES:
            index = (nbytes - 1).bit_length() - _MIN_SHIFT
            capacity = SIZE_CLASSES[index]
        else:
            index = -1
            capacity = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        if owner is None:
            try:
                owner = trio.lowlevel.current_task()
            except RuntimeError:  # a worker thread, or no Trio run at all
                owner = threading.current_thread()
        else:
            try:
                hash(owner)
            except TypeError:
                raise TypeError(f"owner must be hashable, not {type(owner).__name__}") from None
        level = self._leak_level
        if level and (level == 2 or not self._sample(_SAMPLE_BITS)):
            return index, capacity, owner, _lease_site()
        return index, capacity, owner, None

    def _take(
        self, index: int, nbytes: int, capacity: int, owner: Hashable, site: _Site | None
    ) -> Buffer:
        # Home thread. The limiter already charged *capacity*: give it back if no
        # memory comes of it (mmap can fail).
        limiter = self._limiter
        try:
            if index >= 0:
                size_class = self._classes[index]
                slab = size_class.current
                if slab is None or not slab.free:
                    slab = self._next_slab(size_class)
                offset = slab.free.pop()
                slab.leased += 1
                size_class.leased += 1
            else:
                slab = _Slab(capacity, None, capacity)
                offset = 0
                self._dedicated += 1
                self._dedicated_bytes += capacity
        except BaseException:
            if limiter is not None:
                limiter.release_on_behalf_of(owner, capacity)
            raise
        self._leases += 1
        self._bytes_leased += capacity
        lent = self._lent if index >= 0 else Buffer
        return lent(self, slab, offset, capacity, nbytes, owner, site)

    def _take_free_slot(
        self,
        size_class: _SizeClass,
        nbytes: int,
        capacity: int,
        owner: Hashable,
        site: _Site | None,
    ) -> Buffer:
        # A free slot of a partly used slab: the pool holds its charge, and the lease
        # takes it over (limiter.transfer) instead of asking for new bytes; no wait,
        # since the memory is already there. The slab that most recently had room
        # first: leases gather in few slabs, so that the others can drain and go idle.
        partial = size_class.partial
        slab = next(reversed(partial))
        free = slab.free
        offset = free.pop()
        if not free:
            del partial[slab]
        slab.leased += 1
        size_class.leased += 1
        self._bytes_fragmented -= capacity
        self._leases += 1
        self._bytes_leased += capacity
        if self._limiter is not None:
            self._limiter.transfer(self, owner, capacity)
        return self._lent(self, slab, offset, capacity, nbytes, owner, site)

    def _next_slab(self, size_class: _SizeClass) -> _Slab:
        # Lease slow path: the current slab is full and no partly used slab has room
        # (the lease looked first, and while it waits freed slots are handed to it).
        # Prefer the most recently idled slab (warm pages; the oldest
        # stay to be trimmed), then a new one. Trim first, so that the slab chosen
        # here is not unmapped under us.
        now = self._clock()
        if now >= self._trim_due:
            self._trim_here(now, force=False)
        if size_class.idle:
            slab, _ = size_class.idle.popitem()
            self._idle_bytes -= SLAB_BYTES
        else:
            slab = _Slab(SLAB_BYTES, size_class, size_class.size)
            size_class.slabs += 1
            self._slab_bytes += SLAB_BYTES
        size_class.current = slab
        return slab

    # -- giving back --------------------------------------------------------
    #
    # Where a freed slot goes, and who is charged for it (docs/buffers.md, "The
    # memory bound"). A slot of the current slab goes back to the free list and its
    # bytes to the limiter, as they always did: at most one current slab per class
    # has free slots nobody is charged for. A slot of any other slab that still has
    # leases cannot be given back to the system, so its bytes stay charged, to the
    # pool (limiter.transfer): the pool holds the free slots of its partly used
    # slabs, and bytes_in_use follows what is really mapped. A lease that takes such
    # a slot takes the charge over, without waiting; if a lease of that class is
    # waiting in the limiter, the slot goes straight to it. When a slab's last lease
    # goes, the whole slab's charge goes back to the limiter, and the slab is idle.

    def _give_back_here(self, slab: _Slab, offset: int, capacity: int, owner: Hashable) -> None:
        # Hot path (every receive ends here), home thread only; see Buffer.release().
        self._releases += 1
        self._bytes_leased -= capacity
        size_class = slab.size_class
        if size_class is None:
            self._dedicated -= 1
            self._dedicated_bytes -= capacity
            slab.unmap()
        elif slab is size_class.current:
            size_class.leased -= 1
            slab.free.append(offset)
            slab.leased -= 1
            if not slab.leased:
                # Idle now: the only place besides the lease slow path that reads the clock.
                now = slab.idle_since = self._clock()
                if now >= self._trim_due:
                    self._trim_here(now, force=False)
                elif self._trim_due == math.inf:
                    self._trim_due = now + self._trim_after
        else:
            size_class.leased -= 1
            self._free_elsewhere(size_class, slab, offset, capacity, owner)
            return
        # Slot first, capacity second: the waiter the limiter wakes finds the slot free.
        if self._limiter is not None:
            self._limiter.release_on_behalf_of(owner, capacity)

    def _free_elsewhere(
        self, size_class: _SizeClass, slab: _Slab, offset: int, capacity: int, owner: Hashable
    ) -> None:
        # A slot of a slab that is not its class's current one; its bytes are charged
        # to *owner* (a lessee, or the pool itself).
        limiter = self._limiter
        slab.leased -= 1
        free = slab.free
        if slab.leased:
            if size_class.waiters:
                self._hand_over(size_class, slab, offset, capacity, owner)
                return
            free.append(offset)
            if len(free) == 1:
                size_class.partial[slab] = None  # was full, has room again
            self._bytes_fragmented += capacity
            if limiter is not None:
                limiter.transfer(owner, self, capacity)
            return
        free.append(offset)
        fragments = (len(free) - 1) * capacity  # the pool's charge for this slab
        if fragments:
            del size_class.partial[slab]
            self._bytes_fragmented -= fragments
        now = slab.idle_since = self._clock()
        size_class.idle[slab] = None
        self._idle_bytes += SLAB_BYTES
        while self._idle_bytes > self._max_idle_bytes:
            self._unmap_oldest_idle()
        if now >= self._trim_due:
            self._trim_here(now, force=False)
        elif self._trim_due == math.inf:
            self._trim_due = now + self._trim_after
        if limiter is not None:
            if fragments:
                limiter.release_on_behalf_of(self, fragments)
            limiter.release_on_behalf_of(owner, capacity)

    def _hand_over(
        self, size_class: _SizeClass, slab: _Slab, offset: int, capacity: int, owner: Hashable
    ) -> None:
        # A slot freed in a partly used slab while leases of its class wait in the
        # limiter: the oldest gets it at once (see _wait_for_slot), as a new lease.
        waiter = size_class.waiters.popleft()
        waiter.slot = (slab, offset)
        slab.leased += 1
        size_class.leased += 1
        self._leases += 1
        self._bytes_leased += capacity
        waiter.wake()  # Trio withdraws it from the limiter's queue right here
        if self._limiter is not None:
            self._limiter.transfer(owner, waiter.owner, capacity)

    def _quarantine_here(
        self, slab: _Slab, offset: int, capacity: int, owner: Hashable, slot: memoryview
    ) -> None:
        # Home thread: a lease ended while views derived from its view still live. Its
        # slot must not be leased again while they do, and its bytes stay charged, to
        # the pool, until _reclaim_quarantined finds the slot free of them.
        size_class = slab.size_class
        if size_class is None:
            # A dedicated mapping is never reused: unmap() drops its pages (the views
            # then read zeros) and the mapping goes with the last of them.
            self._give_back_here(slab, offset, capacity, owner)
            return
        self._releases += 1
        self._bytes_leased -= capacity
        size_class.leased -= 1  # slab.leased still counts it: the slab stays mapped
        self._quarantined.append((slab, offset, capacity, slot))
        self._bytes_quarantined += capacity
        if self._limiter is not None:
            self._limiter.transfer(owner, self, capacity)

    def _reclaim_quarantined(self) -> None:
        # Give back the quarantined slots whose derived views are all gone, as a
        # release by the pool (which holds their bytes); the lease's release was
        # counted when it ended, so undo the counters _give_back_here will redo.
        kept = []
        for slab, offset, capacity, slot in self._quarantined:
            try:
                slot.release()
            except BufferError:
                kept.append((slab, offset, capacity, slot))
                continue
            _LENT_SLOTS.pop(id(slot), None)
            self._bytes_quarantined -= capacity
            self._releases -= 1
            self._bytes_leased += capacity
            slab.size_class.leased += 1  # type: ignore[union-attr]  # slabs of a class only
            self._give_back_here(slab, offset, capacity, self)
        self._quarantined = kept

    def _leaked(
        self,
        slab: _Slab,
        offset: int,
        capacity: int,
        owner: Hashable,
        site: _Site | None,
        kind: int,
        slot: memoryview,
    ) -> None:
        # From Buffer.__del__: any thread, any moment, see there.
        self._hand_home((slab, offset, capacity, owner, kind, slot))
        if site is not None:
            filename, lineno, task_name = site
            self._recent_leaks.append(LeakReport(filename, lineno, task_name, capacity))
            # Last: under an "error" filter this raises, and Python reports it as
            # unraisable from __del__ (the bookkeeping is already done).
            warnings.warn_explicit(
                f"a millpond Buffer of {capacity} bytes leased at {filename}:{lineno} "
                f"by task {task_name!r} was garbage collected without release(); "
                "its slot and limiter capacity were reclaimed",
                BufferLeakWarning,
                filename,
                lineno,
            )

    def _hand_home(self, item: _Return) -> None:
        # Queue a return for the home thread and wake it. No Trio state and no
        # blocking: TrioToken.run_sync_soon is safe from any thread and from
        # finalizers (Trio's own async-generator finalizer relies on it). Without a
        # live run the item is applied here, under the lock (_apply_alone). While a
        # run is ending, between its last callback and its end, the item waits for
        # _RunEnd.after_run, which applies whatever is queued.
        self._pending.append(item)
        token = self._token
        if token is None:
            self._apply_alone()
            return
        try:
            token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            pass

    @trio.lowlevel.enable_ki_protection
    def _drain(self) -> None:
        # The run_sync_soon callback; locked in case the run has just ended and
        # another thread applies returns without it (see _apply_alone).
        with self._lock:
            self._drain_here()

    def _drain_here(self) -> None:
        # Apply queued returns (from other threads and from leaks): on the home
        # thread, or under the lock when the pool is bound to no live run.
        pending = self._pending
        while pending:
            try:
                slab, offset, capacity, owner, kind, slot = pending.popleft()
            except IndexError:  # pragma: no cover - another drain got there first
                return
            if kind & _LEAKED:
                self._leaks_detected += 1
            if kind & _EXPORTED:
                self._quarantine_here(slab, offset, capacity, owner, slot)
            else:
                self._give_back_here(slab, offset, capacity, owner)

    def _apply_alone(self) -> None:
        # No live run, so no home thread: apply queued returns on this thread, under
        # the lock, unless somebody holds it. That may be this very thread (a
        # finalizer that runs inside the pool's own bookkeeping, or a callback of a
        # run that is ending), or another one: either way the holder looks at the
        # queue again after letting go (_alone), so nothing stays queued.
        lock = self._lock
        while self._pending and lock.acquire(blocking=False):
            try:
                self._drain_here()
            finally:
                lock.release()

    # -- the home thread ----------------------------------------------------

    def _enter(self) -> int:
        """Slow path of ``_get_ident() == self._home``: where the call should run.

        ``_AT_HOME``: here, now (binds the pool to the Trio run calling it: the
        first one, or a new one once the old run is over). ``_AWAY``: carry it to
        the Trio thread (a worker thread of the live run the pool belongs to).
        ``_ALONE``: no live run: here, under the lock (see _alone).
        """
        if trio.lowlevel.in_trio_run():
            token = trio.lowlevel.current_trio_token()
            if token is not self._token:
                if self._token is not None and not _run_is_over(self._token):
                    raise RuntimeError("this BufferPool is in use by another Trio run")
                with self._lock:  # a thread may be applying returns of the last run
                    self._token = token
                    self._clock = trio.lowlevel.current_clock().current_time
                trio.lowlevel.add_instrument(_RunEnd(self, token))
            self._home = _get_ident()
            return _AT_HOME
        if self._token is not None and not _run_is_over(self._token):
            return _AWAY
        self._unbind(self._token)
        return _ALONE

    def _unbind(self, token: trio.lowlevel.TrioToken | None) -> None:
        # The run of *token* is over: the pool belongs to no run until the next one.
        with self._lock:
            if self._token is token:
                self._token = None
                self._home = None
                self._clock = time.monotonic
            self._drain_here()

    def _elsewhere(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        # A public call made off the home thread: see _enter.
        where = self._enter()
        if where == _AT_HOME:
            return fn(*args)
        if where == _AWAY:
            return self._call_at_home(fn, *args)
        with self._lock:
            result = fn(*args)
        self._apply_alone()  # what finalizers queued meanwhile
        return result

    def _call_at_home(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        # Like trio.from_thread.run_sync(fn, *args), without spawning a task.
        token = self._token
        assert token is not None
        results: queue.SimpleQueue[outcome.Outcome[_T]] = queue.SimpleQueue()
        token.run_sync_soon(lambda: results.put(outcome.capture(fn, *args)))
        return results.get().unwrap()

    # -- trimming -----------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    def trim(self, force: bool = False) -> int:
        """Unmap slabs that have been entirely free for ``trim_after`` seconds; return bytes freed.

        With ``force=True``, unmap every entirely free slab regardless of age. The
        pool also trims lazily as buffers come and go, so call this only to free
        memory while the pool is quiet (a housekeeping task, or before a snapshot).
        First, quarantined slots whose views are gone are given back (see
        :class:`BufferPoolStatistics`).
        """
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, not {type(force).__name__}")
        if _get_ident() != self._home:
            return self._elsewhere(self._trim_now, force)
        return self._trim_now(force)

    def _trim_now(self, force: bool) -> int:
        if self._pending:
            self._drain_here()
        if self._quarantined:
            self._reclaim_quarantined()
        if _ORPHANED_SLOTS:
            _sweep_orphans()
        return self._trim_here(self._clock(), force)

    def _trim_here(self, now: float, force: bool) -> int:
        freed = 0
        trim_after = self._trim_after
        due = math.inf
        for size_class in self._classes:
            for slab in list(size_class.idle):
                # min(): the clock may have jumped back (a pool reused across runs).
                since = slab.idle_since = min(slab.idle_since, now)
                if force or since + trim_after <= now:
                    del size_class.idle[slab]
                    self._idle_bytes -= SLAB_BYTES
                    freed += self._unmap(size_class, slab)
                else:
                    due = min(due, since + trim_after)
            current = size_class.current
            if current is not None and not current.leased:
                since = current.idle_since = min(current.idle_since, now)
                if force or since + trim_after <= now:
                    size_class.current = None
                    freed += self._unmap(size_class, current)
                else:
                    due = min(due, since + trim_after)
        self._trim_due = due
        return freed

    def _unmap_oldest_idle(self) -> None:
        oldest: tuple[_SizeClass, _Slab] | None = None
        for size_class in self._classes:
            for slab in size_class.idle:  # the first is the class's oldest
                if oldest is None or slab.idle_since < oldest[1].idle_since:
                    oldest = (size_class, slab)
                break
        assert oldest is not None
        size_class, slab = oldest
        del size_class.idle[slab]
        self._idle_bytes -= SLAB_BYTES
        self._unmap(size_class, slab)

    def _unmap(self, size_class: _SizeClass, slab: _Slab) -> int:
        slab.unmap()
        size_class.slabs -= 1
        size_class.trimmed += 1
        self._slab_bytes -= SLAB_BYTES
        self._slabs_trimmed += 1
        self._bytes_trimmed += SLAB_BYTES
        return SLAB_BYTES

    # -- introspection ------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    def statistics(self) -> BufferPoolStatistics:
        """Return a :class:`BufferPoolStatistics` snapshot."""
        if _get_ident() != self._home:
            return self._elsewhere(self._statistics_now)
        return self._statistics_now()

    def _statistics_now(self) -> BufferPoolStatistics:
        if self._pending:
            self._drain_here()
        classes = self._classes
        idle_current = sum(
            SLAB_BYTES for c in classes if c.current is not None and not c.current.leased
        )
        return BufferPoolStatistics(
            size_classes=tuple(
                SizeClassStatistics(c.size, c.slabs, c.slabs * c.slots, c.leased, c.trimmed)
                for c in classes
            ),
            bytes_leased=self._bytes_leased,
            bytes_reserved_by_slabs=self._slab_bytes,
            bytes_idle=self._idle_bytes + idle_current,
            dedicated_buffers=self._dedicated,
            bytes_dedicated=self._dedicated_bytes,
            leases=self._leases,
            releases=self._releases,
            leaks_detected=self._leaks_detected,
            slabs_trimmed=self._slabs_trimmed,
            bytes_trimmed=self._bytes_trimmed,
            leak_detection=_LEAK_LEVELS[self._leak_level],
            recent_leaks=tuple(self._recent_leaks),
            bytes_scratch=0 if self._scratch is None else MAX_CLASS_BYTES,
            bytes_fragmented=self._bytes_fragmented,
            buffers_quarantined=len(self._quarantined),
            bytes_quarantined=self._bytes_quarantined,
        )

    @trio.lowlevel.enable_ki_protection
    def tracked_leases(self) -> tuple[LeakReport, ...]:
        """Where the tracked leases still outstanding were made: one report per lease.

        A lease is tracked when it records its call site (every lease at
        ``leak_detection="all"``, one in :data:`LEAK_SAMPLE_INTERVAL` at ``"sampled"``,
        none at ``"off"``), and outstanding until it is released or collected. Each
        :class:`LeakReport` names the file, line and task of the ``lease()`` call and the
        buffer's capacity: grouped by site, Netty's leak-detector view of who holds
        buffers now, before anything leaks. Costs one pass over the tracked leases.
        """
        if _get_ident() != self._home:
            return self._elsewhere(self._tracked_leases_now)
        return self._tracked_leases_now()

    def _tracked_leases_now(self) -> tuple[LeakReport, ...]:
        reports = []
        for buffer in list(self._tracked):
            site = buffer._site
            if site is not None and not buffer.released:
                reports.append(LeakReport(site[0], site[1], site[2], buffer.capacity))
        return tuple(reports)

    def __del__(self) -> None:
        # Collected with slots still quarantined (or about to be: exported returns
        # not applied yet): views of them may live on, so the slots (and their slabs'
        # mappings) stay until another pool's trim() finds them free.
        quarantined = getattr(self, "_quarantined", ())  # __init__ may have raised
        _ORPHANED_SLOTS.extend(slot for _, _, _, slot in quarantined)
        pending = getattr(self, "_pending", ())
        _ORPHANED_SLOTS.extend(item[5] for item in pending if item[4] & _EXPORTED)

    def __repr__(self) -> str:
        return (
            f"<millpond.BufferPool leased={self._bytes_leased} "
            f"slabs={self._slab_bytes} dedicated={self._dedicated_bytes}>"
        )


class _RunEnd(trio.abc.Instrument):
    # Tells a pool that the run it belongs to is over, at the very end of that run
    # (after every task and every run_sync_soon callback), so that returns queued
    # by then, and any made afterwards, are applied (BufferPool._unbind). Only
    # after_run is defined: Trio calls an instrument only for the hooks it defines.
    # A weak reference: the run must not keep a pool alive.
    def __init__(self, pool: BufferPool, token: trio.lowlevel.TrioToken) -> None:
        self._pool = weakref.ref(pool)
        self._token = token

    def after_run(self) -> None:
        pool = self._pool()
        if pool is not None:
            pool._unbind(self._token)


def _sweep_orphans() -> None:
    # Forget the slots of collected pools that are free now (see BufferPool.__del__).
    # Any thread: each slot is popped once and, if still exported, put back.
    for _ in range(len(_ORPHANED_SLOTS)):
        try:
            slot = _ORPHANED_SLOTS.popleft()
        except IndexError:  # pragma: no cover - another pool's trim() got there first
            return
        try:
            slot.release()
        except BufferError:
            _ORPHANED_SLOTS.append(slot)
        else:
            _LENT_SLOTS.pop(id(slot), None)


# Frames that are never the caller of lease()/lease_nowait(): this module's, and
# those of the machinery between a caller and it: Trio's (trio.to_thread,
# from_thread), outcome's, and the thread bootstrap.
_NOT_THE_CALLER: Final = (
    __file__,
    os.path.dirname(trio.__file__) + os.sep,
    os.path.dirname(outcome.__file__) + os.sep,
    threading.__file__,
)


def _lease_site() -> _Site:
    # The caller of lease()/lease_nowait(): the first frame outside _NOT_THE_CALLER.
    # In a trio.to_thread worker that was handed lease_nowait itself the worker's
    # stack holds none: the caller is then the task awaiting the worker, and the
    # site is where that task awaits (its own stack, walked the same way).
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_NOT_THE_CALLER):
        frame = frame.f_back
    if frame is not None:
        try:
            name = trio.lowlevel.current_task().name
        except RuntimeError:
            name = threading.current_thread().name
        return frame.f_code.co_filename, frame.f_lineno, name
    try:
        return trio.from_thread.run_sync(_lease_site)  # runs in the awaiting task
    except (RuntimeError, trio.RunFinishedError):
        return "<unknown>", 0, threading.current_thread().name
