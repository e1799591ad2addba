"""Allocation failure injection: a :class:`LeaseFaults` makes a pool refuse a share of leases.

HAProxy's ``tune.fail-alloc`` makes a given share of its pool allocations fail, so that
the code paths behind a failed allocation run in tests as often as the happy ones. This
module is millpond's version, for :class:`~millpond.memory.buffers.BufferPool`: a pool
made with ``faults=LeaseFaults(ratio)`` refuses about ``ratio`` of its leases, drawn
from a seeded generator so that a failing run can be replayed. It owns the draw and
its counters, nothing else; the pool asks it once per lease.

What a refused lease means
--------------------------
A *transient shortage*, exactly what a spent budget already is: ``lease_nowait``
raises :class:`trio.WouldBlock`, and ``lease`` waits (``retry_after`` seconds,
charging nothing, cancellable like any wait for memory) and draws again. Not a
``MemoryError``: in millpond running short of memory is a normal state that every
caller already handles by waiting (``Connection.receive_buffer`` falls back from
``lease_nowait`` to ``lease``; the server's ``read_timeout`` bounds that wait), so
a refusal exercises those waits, their cancellation and their timeouts, and a
caller sees nothing it must not already handle. An error would only close the
connection, a path the handler-error tests already cover. A real failure of
``mmap`` (the operating system refusing a slab) is not simulated here and still
raises ``OSError`` from the lease, having charged nothing.

Off is free: a pool without faults pays one ``is None`` test per lease.
"""

from __future__ import annotations

import math
import random

__all__ = ["LeaseFaults"]


class LeaseFaults:
    """Makes a :class:`~millpond.memory.buffers.BufferPool` refuse a share of its leases.

    For tests (HAProxy's ``tune.fail-alloc``): about ``ratio`` of the leases are
    refused, as if the budget were spent (``lease_nowait`` raises
    :class:`trio.WouldBlock`; ``lease`` waits ``retry_after`` seconds and tries
    again), so the waits, cancellations and timeouts behind a shortage run often::

        faults = millpond.LeaseFaults(0.2, seed=7)
        pool = millpond.BufferPool(limiter, faults=faults)
        ...
        print(faults.refused, "of", faults.drawn, "leases refused")

    Arguments:
      ratio: share of leases to refuse, from 0 (none) to 1 (all: ``lease`` then
        waits until it is cancelled).
      seed: seed of the random draw (an int), so that a run can be replayed; None
        for a random one.
      retry_after: seconds a refused ``lease`` waits before it draws again (> 0).

    The counters ``drawn`` and ``refused`` say how many leases asked and how many
    were refused (a ``lease`` that retries counts each draw).
    """

    __slots__ = ("_draw", "drawn", "ratio", "refused", "retry_after", "seed")

    def __init__(self, ratio: float, *, seed: int | None = None, retry_after: float = 0.001):
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            raise TypeError(f"ratio must be a number, not {type(ratio).__name__}")
        if not 0 <= ratio <= 1:  # also rejects NaN
            raise ValueError(f"ratio must be between 0 and 1, not {ratio!r}")
        if seed is not None and type(seed) is not int:
            raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
            raise TypeError(f"retry_after must be a number, not {type(retry_after).__name__}")
        if not 0 < retry_after < math.inf:
            raise ValueError(f"retry_after must be > 0 and finite, not {retry_after!r}")
        self.ratio = float(ratio)
        self.seed = seed
        self.retry_after = float(retry_after)
        self._draw = random.Random(seed).random
        self.drawn = 0
        self.refused = 0

    def refuse(self) -> bool:
        """Draw for one lease: True if it is to be refused (and count it)."""
        self.drawn += 1
        if self._draw() < self.ratio:
            self.refused += 1
            return True
        return False

    def __repr__(self) -> str:
        return (
            f"<millpond.LeaseFaults ratio={self.ratio:g} seed={self.seed!r} "
            f"refused={self.refused}/{self.drawn}>"
        )
