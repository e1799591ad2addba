"""How much to read next: the adaptive read size, after Netty's AdaptiveRecvByteBufAllocator.

This module owns one pure policy, with no I/O and no state of its own: given
the size class a connection read with last time and how many bytes that read
returned, which size class to read with next. Connections keep the answer in
two small integers, so the policy costs an idle connection nothing.

* A read that fills its buffer means more is probably waiting: grow one class.
* A read that returns less than the class below would have held means the
  buffer is too big: shrink one class, but only on the second such read in a
  row, so one small message between large ones does not undo the growth.
* Under memory pressure (``Pressure.PRESSURE`` or worse) every read uses the
  minimum, so that a full budget is shared by many small reads instead of a
  few large ones, as Linux does below ``tcp_mem[1]``.

The classes (:data:`READ_SIZE_CLASSES`) are powers of two from 1 KiB to
1 MiB. Up to 64 KiB they are the pool's size classes, so a read size is
exactly a pooled buffer's capacity; the larger ones, which only a connection
streaming bulk data grows into, are the pool's dedicated allocations (Netty's
"huge" buffers). One 1 MiB read costs one recv and one Trio task step where
64 KiB reads cost sixteen: on 10 x 1 MiB echoes that took the server from
about 650 to about 1,050 msgs/s (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_READ_SIZES", "MAX_READ_BYTES", "READ_SIZE_CLASSES", "ReadSizes", "adapt"]

MAX_READ_BYTES: Final = 1024 * 1024
#: Every size a read can have: 1, 2, 4, ... KiB up to :data:`MAX_READ_BYTES`.
READ_SIZE_CLASSES: Final[tuple[int, ...]] = tuple(
    1 << shift for shift in range(10, MAX_READ_BYTES.bit_length())
)


@dataclass(frozen=True, slots=True)
class ReadSizes:
    """The read-size range of a connection: ``minimum <= initial <= maximum``.

    Each is one of :data:`READ_SIZE_CLASSES` (a power of two from 1 KiB to
    1 MiB). ``maximum`` is also the most one read can hold of the budget. The
    range is fixed; at each read the size is also capped by what the budget
    can grant at that moment (``ledger.read_request``), so a budget shrunk
    below these sizes makes reads smaller, and growing it back restores them.
    """

    minimum: int = 1024
    initial: int = 4096
    maximum: int = MAX_READ_BYTES

    def __post_init__(self) -> None:
        for name in ("minimum", "initial", "maximum"):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value not in READ_SIZE_CLASSES:
                raise ValueError(f"{name} must be one of the size classes {READ_SIZE_CLASSES}")
        if not self.minimum <= self.initial <= self.maximum:
            raise ValueError("read sizes must satisfy minimum <= initial <= maximum")

    @property
    def minimum_index(self) -> int:
        """Index of ``minimum`` in :data:`READ_SIZE_CLASSES`."""
        return READ_SIZE_CLASSES.index(self.minimum)

    @property
    def initial_index(self) -> int:
        """Index of ``initial`` in :data:`READ_SIZE_CLASSES`."""
        return READ_SIZE_CLASSES.index(self.initial)

    @property
    def maximum_index(self) -> int:
        """Index of ``maximum`` in :data:`READ_SIZE_CLASSES`."""
        return READ_SIZE_CLASSES.index(self.maximum)


# 1 KiB holds most request lines and small RPCs; 4 KiB (a page) is where
# Netty-sized reads start paying off; 1 MiB lets a bulk stream move a
# megabyte per task step. A connection only grows that far while its reads
# keep filling the buffer, and under memory pressure every read is 1 KiB.
DEFAULT_READ_SIZES: Final = ReadSizes()


def adapt(
    index: int, received: int, shrink_pending: bool, minimum_index: int, maximum_index: int
) -> tuple[int, bool]:
    """Return ``(next_index, shrink_pending)`` after a read of ``received`` bytes.

    ``index`` is the size class the read used. ``shrink_pending`` is True when
    the previous read was already small; two small reads in a row shrink.
    """
    if received >= READ_SIZE_CLASSES[index]:
        return min(index + 1, maximum_index), False
    if index > minimum_index and received < READ_SIZE_CLASSES[index - 1]:
        if shrink_pending:
            return index - 1, False
        return index, True
    return index, False
