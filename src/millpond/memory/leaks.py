"""What a leaked buffer reports: the warning, the report, and how leases are sampled for it.

A :class:`~millpond.memory.buffers.Buffer` that is garbage collected without
``release()`` is reclaimed by its pool whatever the leak-detection level. A
*tracked* lease (every one at level ``"all"``, one in
:data:`LEAK_SAMPLE_INTERVAL` at ``"sampled"``, after Netty's leak detector
levels) also remembers where it was made, so that its leak is reported with a
:class:`BufferLeakWarning` naming that place and a :class:`LeakReport` in
``BufferPool.statistics()``. This module owns those types and constants and
does nothing itself: the detection is the lease's and the pool's
(``Buffer.__del__`` in ``lease.py``, ``BufferPool._leaked`` in ``buffers.py``).
So is ``_lease_site``, which records the call site: it walks out of the frames
of its own module (by ``__file__``) and of Trio's thread machinery (a
``trio.to_thread`` worker handed ``lease_nowait`` itself reports the line where
the task awaits it), so it has to live in the module that defines ``lease()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LEAK_DETECTION_ENV_VAR",
    "LEAK_SAMPLE_INTERVAL",
    "BufferLeakWarning",
    "LeakReport",
    "default_leak_detection",
]

# "sampled" leak detection tracks 1 lease in this many, chosen at random (a fixed
# stride could alias with a loop that leaks every other lease). Netty's default.
LEAK_SAMPLE_INTERVAL: Final = 128
_SAMPLE_BITS: Final = LEAK_SAMPLE_INTERVAL.bit_length() - 1
assert 1 << _SAMPLE_BITS == LEAK_SAMPLE_INTERVAL

_LEAK_LEVELS: Final = ("off", "sampled", "all")

# The level a pool gets when its constructor is not told one: Netty's
# -Dio.netty.leakDetection.level, as an environment variable, so that a test suite
# (millpond's sets "all") or a staging deployment can track every lease without
# touching the code that makes the pools.
LEAK_DETECTION_ENV_VAR: Final = "MILLPOND_LEAK_DETECTION"


def default_leak_detection() -> str:
    """The level for a pool made without ``leak_detection``: ``$MILLPOND_LEAK_DETECTION``,
    else ``"sampled"``; ValueError naming the variable if it holds something else."""
    level = os.environ.get(LEAK_DETECTION_ENV_VAR, "") or "sampled"
    if level not in _LEAK_LEVELS:
        raise ValueError(f"${LEAK_DETECTION_ENV_VAR} must be one of {_LEAK_LEVELS}, not {level!r}")
    return level


# Where a tracked lease was made: file name, line number, task (or thread) name.
_Site = tuple[str, int, str]


class BufferLeakWarning(ResourceWarning):
    """A :class:`Buffer` was garbage collected without ``release()``.

    The pool has already reclaimed its slot and limiter capacity; the warning
    names the file, line and task that leased it so the missing ``release()``
    (or ``with buf:``) can be found. Only tracked leases (see ``leak_detection``)
    warn. Like every ResourceWarning it is hidden unless warnings are enabled
    (``python -X dev``, ``-W default``, or pytest).
    """


@dataclass(frozen=True)
class LeakReport:
    """Where a tracked buffer was leased: a leak's report, or a live lease's
    (``BufferPool.tracked_leases()``)."""

    filename: str
    lineno: int
    task_name: str
    capacity: int
