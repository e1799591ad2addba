"""Size classes and slabs: which slot serves a request, and the memory slots are carved from.

This module owns the layout of pooled memory and no policy. The size classes are
the powers of two from 1 KiB to 64 KiB; :func:`size_class_index` and
:func:`capacity_for` map a request to its class and to the bytes it really
occupies, which is also what the limiter is charged. That arithmetic is pure,
so its tests need no pool (Hypothesis checks it over the whole range). A slab
is one anonymous ``mmap`` cut into equal slots of one class, after Netty's
``PooledByteBufAllocator``; the private ``_SizeClass`` and ``_Slab`` hold the
state of a class and of a slab. Which slab a lease comes from, when idle slabs
are trimmed and what the pool reports are
:class:`~millpond.memory.buffers.BufferPool`'s decisions (``buffers.py``).

``BufferPool._request`` repeats the class arithmetic inline on its hot path
instead of calling :func:`capacity_for`: keep the two in step (a test compares
a lease's capacity with :func:`capacity_for`).
"""

from __future__ import annotations

import collections
import math
import mmap
from collections.abc import Callable, Hashable
from pickle import PickleBuffer
from typing import Final

__all__ = [
    "MAX_CLASS_BYTES",
    "MIN_CLASS_BYTES",
    "PAGE_BYTES",
    "SIZE_CLASSES",
    "SLAB_BYTES",
    "capacity_for",
    "size_class_index",
]

# Size classes are the powers of two from 1 KiB to 64 KiB. 64 KiB is Trio's
# DEFAULT_RECEIVE_SIZE and the read size a busy TCP socket fills; 1 KiB is where a
# Buffer's own overhead (the object plus a memoryview, ~200 bytes) stops
# dominating. Powers of two keep the lookup to one bit_length() and the internal
# waste of a lease below half its capacity.
MIN_CLASS_BYTES: Final = 1024
MAX_CLASS_BYTES: Final = 64 * 1024
SIZE_CLASSES: Final[tuple[int, ...]] = tuple(
    1 << shift for shift in range(MIN_CLASS_BYTES.bit_length() - 1, MAX_CLASS_BYTES.bit_length())
)
_MIN_SHIFT: Final = MIN_CLASS_BYTES.bit_length() - 1

# One slab is one mmap of this many bytes. Equal to the largest class, so a 64 KiB
# lease (the receive path) owns its slab outright and never pins free neighbours,
# and a smaller class wastes less than one slab per partly used slab. Slabs are
# rarely mapped once the pool is warm, so bigger slabs would save little.
SLAB_BYTES: Final = MAX_CLASS_BYTES

# Requests above MAX_CLASS_BYTES get their own mapping, rounded up to whole pages
# (the kernel's unit, so the rounding is what the process really pays).
PAGE_BYTES: Final = mmap.PAGESIZE

_MADV_DONTNEED: Final[int | None] = getattr(mmap, "MADV_DONTNEED", None)


def size_class_index(nbytes: int) -> int:
    """Index into :data:`SIZE_CLASSES` that serves *nbytes*, or -1 for a dedicated allocation."""
    if nbytes <= MIN_CLASS_BYTES:
        return 0
    if nbytes > MAX_CLASS_BYTES:
        return -1
    return (nbytes - 1).bit_length() - _MIN_SHIFT


def capacity_for(nbytes: int) -> int:
    """Bytes a lease of *nbytes* really occupies, which is also what the limiter is charged.

    The size class for requests up to 64 KiB, else *nbytes* rounded up to whole pages.
    """
    index = size_class_index(nbytes)
    if index >= 0:
        return SIZE_CLASSES[index]
    return -(-nbytes // PAGE_BYTES) * PAGE_BYTES


class _SizeClass:
    # State of one class. A slab is in exactly one place: ``current`` (the slab
    # leases are carved from), ``partial`` (some free, some leased: a slab that
    # stopped being current when it was full, then had leases released), ``idle``
    # (all free; insertion order is idle order, oldest first) or nowhere (full: only
    # its Buffers refer to it). Dicts serve as ordered sets: O(1) removal, LIFO
    # order. ``waiters``: leases of this class waiting in the limiter, oldest first,
    # to be handed a slot freed in a partial slab (BufferPool._hand_over).
    __slots__ = (
        "size", "slots", "current", "partial", "idle", "slabs", "leased", "trimmed", "waiters",
    )  # fmt: skip

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots = SLAB_BYTES // size
        self.current: _Slab | None = None
        self.partial: dict[_Slab, None] = {}
        self.idle: dict[_Slab, None] = {}
        self.slabs = 0
        self.leased = 0
        self.trimmed = 0  # slabs of this class given back to the OS (statistics)
        self.waiters: collections.deque[_SlotWaiter] = collections.deque()


class _SlotWaiter:
    # A lease waiting in the limiter for a slot of its class. Whoever frees a slot in a
    # partial slab sets ``slot``, charges ``owner`` for it and calls ``wake`` (which
    # cancels the wait in the limiter).
    __slots__ = ("owner", "wake", "slot")

    def __init__(self, owner: Hashable, wake: Callable[[], None]) -> None:
        self.owner = owner
        self.wake = wake
        self.slot: tuple[_Slab, int] | None = None


class _Slab:
    # One anonymous private mapping. Private, not shared: MADV_DONTNEED really drops
    # private pages, and munmap returns them to the OS at once (glibc's malloc would
    # keep freed bytearrays in its heap).
    __slots__ = ("mm", "base", "size_class", "free", "leased", "idle_since")

    def __init__(self, nbytes: int, size_class: _SizeClass | None, buffer_size: int) -> None:
        self.mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
        self.base = memoryview(self.mm)
        self.size_class = size_class
        # Offsets, popped from the end: slot 0 first, the last freed slot next (LIFO
        # keeps recently touched memory in use and lets the rest go idle).
        self.free = list(range(nbytes - buffer_size, -1, -buffer_size))
        self.leased = 0
        self.idle_since = -math.inf

    def unmap(self) -> None:
        self.base.release()
        try:
            self.mm.close()
        except BufferError:
            # A sub-slice the user kept of a released view still exports the mapping.
            # Drop the pages anyway (the stale slice then reads zeros); the mapping
            # itself goes when the last slice does.
            if _MADV_DONTNEED is not None:
                self.mm.madvise(_MADV_DONTNEED)


# How a lease's view is made, so that release() can tell whether views derived from
# it are still alive. Slicing a memoryview, memoryview(view), view.cast() and
# numpy.frombuffer(view) all make views that share the managed buffer of the
# memoryview they come from, so releasing the lease's own view notices none of them.
# memoryview(PickleBuffer(slot)) instead starts a managed buffer of the lease's own,
# whose export is taken on *slot* (PickleBuffer forwards it): every view derived
# from the lease keeps that buffer, hence *slot*, exported, and ``slot.release()``
# raises BufferError exactly while one of them lives. The cost (one PickleBuffer
# and one managed buffer per lease) is measured in docs/buffers.md ("Cost").
#
# An exported memoryview must never be garbage: CPython before 3.12.7 and 3.13.0
# (gh-77894) crashes when the garbage collector clears a memoryview that is still
# exported, which a lease and its views dropped together in a reference cycle (a
# traceback, say) would make it do. So every slot that a lease's views may export
# is kept in _LENT_SLOTS, a module global, from the lease until the slot is free
# again; the collector then always finds it reachable and only ever clears the
# views, which is safe.
_LENT_SLOTS: Final[dict[int, memoryview]] = {}

# Slots quarantined by a pool that was garbage collected before they were free:
# any pool's trim() checks them (BufferPool._sweep_orphans).
_ORPHANED_SLOTS: Final[collections.deque[memoryview]] = collections.deque()


def _derived_views_keep_the_slot_exported() -> bool:
    # The behaviour the pool relies on, checked once: if this Python differs, leases
    # get plain slices (views outliving release() go unnoticed, as they always did).
    slot = memoryview(bytearray(16))
    lent = memoryview(PickleBuffer(slot))
    derived = lent[:8]
    lent.release()
    try:
        slot.release()
    except BufferError:
        pass
    else:
        return False  # a derived view would go unnoticed
    derived.release()
    try:
        slot.release()
    except BufferError:
        return False  # a slot would stay quarantined for ever
    return True


_LENT_VIEWS_SHOW_EXPORTS: Final = _derived_views_keep_the_slot_exported()
