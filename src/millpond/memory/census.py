"""Which buffer pools and limiters are alive, and what they still hold: a leak-presence check.

Netty's ``LeakPresenceDetector`` fails a test that ends with a buffer still
leased, whether or not it was ever garbage collected. This module is the
registry that lets millpond's test suite do the same: while a :class:`Census`
is open, every :class:`~millpond.memory.buffers.BufferPool` and
:class:`~millpond.memory.limiter.BufferLimiter` made registers itself with it
(a weak reference: the census keeps nothing alive), and :meth:`Census.held`
lists those that still hold a leased byte, a leaked buffer or a byte of budget.
It owns that registry and the check, nothing else.

Off (no census open, the normal case) a constructor pays one truth test of a
module-level list; nothing else in the pool or the limiter knows about it.
"""

from __future__ import annotations

import gc
import weakref
from types import TracebackType
from typing import TYPE_CHECKING

from .leaks import _Site

if TYPE_CHECKING:
    from .buffers import BufferPool
    from .lease import Buffer
    from .limiter import BufferLimiter

__all__ = ["Census"]

# The censuses open now; constructors register with each (see _note).
_OPEN: list[Census] = []


class Census:
    """Counts every pool and limiter made while it is open, and what they still hold.

    ::

        with Census() as census:
            run_the_test()
        assert census.held() == []

    Call :meth:`held` once the Trio runs that used the pools are over (or while
    nothing uses them): it runs the garbage collector, reads their statistics and
    reclaims quarantined slots whose views are gone (``BufferPool.trim``), but
    changes nothing else.
    """

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[BufferPool] = weakref.WeakSet()
        self._limiters: weakref.WeakSet[BufferLimiter] = weakref.WeakSet()

    def __enter__(self) -> Census:
        _OPEN.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _OPEN.remove(self)

    @property
    def pools(self) -> list[BufferPool]:
        """The pools made while the census was open that are still alive."""
        return list(self._pools)

    @property
    def limiters(self) -> list[BufferLimiter]:
        """The limiters made while the census was open that are still alive."""
        return list(self._limiters)

    def held(self) -> list[str]:
        """One line per pool or limiter that holds something, saying what; [] if none.

        A pool holds something if a lease is live, if a lease was garbage collected
        unreleased (a leak, even though the pool reclaimed it), or if a slot stays
        quarantined by a view that outlived its lease. A limiter holds something if
        any owner holds a byte of its budget, or a task still waits in it.
        """
        # Keep every pool and limiter alive through the collection: one that is only
        # garbage now (a pool and the lease it keeps, in a cycle) held memory all the
        # same, and must be counted, not collected. Leases that nobody references
        # are collected, and their pools count them as leaks (Buffer.__del__).
        pools, limiters = self.pools, self.limiters
        gc.collect()
        found = []
        for pool in pools:
            pool.trim()  # quarantined slots whose views are gone go back first
            stats = pool.statistics()
            if stats.bytes_leased or stats.leaks_detected or stats.buffers_quarantined:
                live = "; ".join(_where(buffer._site) for buffer in _live_leases(pool))
                leaks = "; ".join(
                    _where((r.filename, r.lineno, r.task_name)) for r in stats.recent_leaks
                )
                found.append(
                    f"{pool!r}: {stats.leases - stats.releases} lease(s) live "
                    f"({stats.bytes_leased} B){f' ({live})' if live else ''}, "
                    f"{stats.leaks_detected} leaked{f' ({leaks})' if leaks else ''}, "
                    f"{stats.buffers_quarantined} slot(s) quarantined"
                )
        for limiter in limiters:
            lstats = limiter.statistics()
            if lstats.bytes_in_use or lstats.tasks_waiting:
                found.append(
                    f"{limiter!r}: {lstats.bytes_in_use} B held "
                    f"(largest holders: {list(lstats.top_holders)}), "
                    f"{lstats.tasks_waiting} task(s) waiting"
                )
        return found


def _live_leases(pool: BufferPool) -> list[Buffer]:
    # The unreleased Buffers of *pool*, found through the collector (a check, not a hot path).
    from .lease import Buffer

    return [
        thing
        for thing in gc.get_objects()
        if isinstance(thing, Buffer) and thing._pool is pool and not thing.released
    ]


def _where(site: _Site | None) -> str:
    if site is None:
        return "leased at an untracked place (leak_detection is not 'all')"
    filename, lineno, task_name = site
    return f"leased at {filename}:{lineno} by {task_name}"


def _note(thing: BufferPool | BufferLimiter) -> None:
    # From the constructors, only while a census is open.
    from .buffers import BufferPool

    for census in _OPEN:
        if isinstance(thing, BufferPool):
            census._pools.add(thing)
        else:
            census._limiters.add(thing)
