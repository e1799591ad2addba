"""A lease of one pooled buffer: :class:`Buffer`, and what it hands back to its pool.

This module owns the object a caller holds while it uses a slot: its views,
``set_length``, ``release()`` and the finalizer that notices a leak. It keeps no
books of its own: releasing, or being collected unreleased, hands the slot back
to the :class:`~millpond.memory.buffers.BufferPool` that lent it (``buffers.py``) as a
*return* that says whether views of the slot are still alive. A pool made with
``guard_views=True`` lends :class:`_GuardedBuffer` instead, which also notices
views *derived* from its view (see ``_LENT_VIEWS_SHOW_EXPORTS`` in
``sizeclasses.py`` and docs/buffers.md, "Views after release").
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable
from pickle import PickleBuffer
from types import TracebackType
from typing import TYPE_CHECKING, Final

import trio

from .leaks import _Site
from .sizeclasses import _LENT_SLOTS, _Slab

if TYPE_CHECKING:
    from .buffers import BufferPool

__all__ = ["Buffer"]

# What a queued return is (see BufferPool._hand_home): bits.
_RELEASED: Final = 0
_LEAKED: Final = 1  # found by Buffer.__del__, not released
_EXPORTED: Final = 2  # views derived from the lease's view still live: quarantine the slot
# A queued return: slab, offset, capacity, owner, kind (the bits above), the slot's view.
_Return = tuple[_Slab, int, int, Hashable, int, memoryview]
_get_ident: Final = threading.get_ident


class Buffer:
    """A lease of one buffer from a :class:`BufferPool`; get one with :meth:`BufferPool.lease`.

    ``buf.view`` is a writable memoryview of the first ``buf.nbytes`` bytes of a
    ``buf.capacity``-byte slot; hand it to ``recv_into``. Release the lease exactly
    once, preferably with ``with``::

        with await pool.lease(65536) as buf:
            n = sock.recv_into(buf.view)
            buf.set_length(n)
            process(buf.view)

    After release, the memoryview object that ``.view`` returned is released too,
    so stale uses raise ValueError instead of reading recycled memory. Views the
    caller derived from it (``buf.view[:n]``, ``memoryview(buf.view)``,
    ``.cast()``, ``numpy.frombuffer(buf.view)``) are not released: do not keep
    them past ``release()``, unless the pool was made with ``guard_views=True``,
    which keeps the slot out of use until the last of them is gone (see
    docs/buffers.md, "Views after release"). ``.view`` on a released Buffer raises
    :class:`trio.ClosedResourceError`. A Buffer belongs to one task or thread at a
    time; it may be released from a worker thread. Its bytes are not zeroed
    between leases: read only what you wrote.
    """

    # __weakref__: a tracked lease is in its pool's weak set while it lives
    # (BufferPool.tracked_leases); 8 bytes per Buffer.
    __slots__ = (
        "_pool", "_slab", "_offset", "_capacity", "_length", "_view", "_owner", "_site",
        "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        pool: BufferPool,
        slab: _Slab,
        offset: int,
        capacity: int,
        nbytes: int,
        owner: Hashable,
        site: _Site | None,
        view: memoryview | None = None,
    ) -> None:
        # Not public: the pool builds Buffers (and _GuardedBuffer passes its view).
        self._pool = pool
        self._offset = offset
        self._capacity = capacity
        self._length = nbytes
        self._view = slab.base[offset : offset + nbytes] if view is None else view
        self._owner = owner
        self._site = site
        self._slab: _Slab | None = slab
        if site is not None:
            pool._tracked.add(self)

    @property
    def view(self) -> memoryview:
        """Writable memoryview of the usable bytes (``nbytes`` long)."""
        if self._slab is None:
            raise trio.ClosedResourceError("this Buffer was released")
        return self._view

    @property
    def capacity(self) -> int:
        """Size of the slot: the size class, or the page-rounded size of a dedicated buffer."""
        return self._capacity

    @property
    def nbytes(self) -> int:
        """Current length of ``view``: what was leased, or the last ``set_length``."""
        return self._length

    @property
    def owner(self) -> Hashable:
        """Who the limiter charged for this buffer (by default the task that leased it)."""
        return self._owner

    @property
    def released(self) -> bool:
        """True once ``release()`` ran (or the pool reclaimed the buffer)."""
        return self._slab is None

    @trio.lowlevel.enable_ki_protection
    def set_length(self, nbytes: int) -> None:
        """Make ``view`` cover the first *nbytes* bytes of the slot (0 <= nbytes <= capacity).

        The previous view object is released; its contents stay in place.
        """
        slab = self._slab
        if slab is None:
            raise trio.ClosedResourceError("this Buffer was released")
        if type(nbytes) is not int:  # noqa: E721  (bool is not a length)
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if not 0 <= nbytes <= self._capacity:
            raise ValueError(
                f"nbytes must be between 0 and capacity {self._capacity}, not {nbytes}"
            )
        self._resize_view(slab, nbytes)
        self._length = nbytes

    def _resize_view(self, slab: _Slab, nbytes: int) -> None:
        offset = self._offset
        view = slab.base[offset : offset + nbytes]
        try:
            self._view.release()
        except BufferError:
            view.release()
            raise
        self._view = view

    @trio.lowlevel.enable_ki_protection
    def release(self) -> None:
        """Return the buffer to its pool and its capacity to the limiter.

        Raises RuntimeError if the buffer was already released, and BufferError
        (changing nothing) if ``view`` itself is still exported, e.g. by a
        ``recv_into`` running in another thread. Views derived from ``view`` do not
        stop it (see the class docstring).
        """
        slab = self._slab
        if slab is None:
            raise RuntimeError("Buffer.release() called twice")
        view = self._view
        view.release()
        self._slab = None
        pool = self._pool
        if _get_ident() == pool._home:
            pool._give_back_here(slab, self._offset, self._capacity, self._owner)
        else:  # another thread, or no live run: see BufferPool._hand_home
            pool._hand_home((slab, self._offset, self._capacity, self._owner, _RELEASED, view))

    def __enter__(self) -> Buffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Tolerates an explicit release() inside the block, like closing a file twice
        # with ``with``; only a second explicit release() is an error.
        if self._slab is not None:
            self.release()

    @trio.lowlevel.enable_ki_protection
    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # Runs inside the garbage collector: on any thread, at any allocation, maybe
        # in the middle of the pool's own bookkeeping on this very thread. So it
        # changes no pool state and touches no Trio state: _leaked() only appends to
        # a deque and pokes the home thread through TrioToken.run_sync_soon, which
        # Trio makes safe for exactly this (its async-generator finalizer does too).
        slab = self._slab
        if slab is None or _finalizing():  # at interpreter exit nobody needs it back
            return
        self._slab = None
        kind, check = self._let_go()
        self._pool._leaked(slab, self._offset, self._capacity, self._owner, self._site, kind, check)

    def _let_go(self) -> tuple[int, memoryview]:
        # For __del__: release the views; what the pool must retry if that failed.
        try:
            self._view.release()
        except BufferError:  # exported: quarantine the slot until the export ends
            return _LEAKED | _EXPORTED, self._view
        return _LEAKED, self._view

    def __repr__(self) -> str:
        state = "released" if self._slab is None else f"nbytes={self._length}"
        return f"<millpond.Buffer capacity={self._capacity} {state}>"


class _GuardedBuffer(Buffer):
    # A lease from a pool made with guard_views=True (slots of slabs only: a
    # dedicated mapping is never leased again). _slot is the whole slot, exported
    # only by this lease's views (see _LENT_VIEWS_SHOW_EXPORTS in sizeclasses.py);
    # _full is a view of all of it that set_length slices and the caller never gets.
    __slots__ = ("_slot", "_full")

    def __init__(  # the same arguments as Buffer's
        self, pool: BufferPool, slab: _Slab, offset: int, capacity: int, nbytes: int,
        owner: Hashable, site: _Site | None,
    ) -> None:  # fmt: skip
        slot = self._slot = slab.base[offset : offset + capacity]
        _LENT_SLOTS[id(slot)] = slot
        full = self._full = memoryview(PickleBuffer(slot))
        view = full if nbytes == capacity else full[:nbytes]
        Buffer.__init__(self, pool, slab, offset, capacity, nbytes, owner, site, view)

    def _resize_view(self, slab: _Slab, nbytes: int) -> None:
        old = self._view
        full = self._full
        fresh = old is full
        if fresh:
            full = full[:]  # the caller may hold the old view, which is released below
        view = full if nbytes == self._capacity else full[:nbytes]
        try:
            old.release()
        except BufferError:
            if view is not full:
                view.release()
            if fresh:
                full.release()
            raise
        self._full = full
        self._view = view

    @trio.lowlevel.enable_ki_protection
    def release(self) -> None:
        """See :meth:`Buffer.release`; views derived from ``view`` quarantine the slot."""
        slab = self._slab
        if slab is None:
            raise RuntimeError("Buffer.release() called twice")
        self._view.release()
        self._slab = None
        self._full.release()
        slot = self._slot
        try:
            slot.release()
        except BufferError:
            kind = _EXPORTED  # views derived from ours still read and write the slot
        else:
            kind = _RELEASED
            _LENT_SLOTS.pop(id(slot), None)
        pool = self._pool
        if _get_ident() != pool._home:  # another thread, or no live run
            pool._hand_home((slab, self._offset, self._capacity, self._owner, kind, slot))
        elif kind:
            pool._quarantine_here(slab, self._offset, self._capacity, self._owner, slot)
        else:
            pool._give_back_here(slab, self._offset, self._capacity, self._owner)

    def _let_go(self) -> tuple[int, memoryview]:
        slot = self._slot
        try:
            self._view.release()
            self._full.release()
            slot.release()
        except BufferError:
            return _LEAKED | _EXPORTED, slot
        _LENT_SLOTS.pop(id(slot), None)
        return _LEAKED, slot
