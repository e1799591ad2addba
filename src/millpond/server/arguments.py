"""The checks every argument of ``serve()`` and ``Server`` goes through, before anything runs.

This module owns one promise: a bad argument is a ``TypeError`` or
``ValueError`` that names it, raised when the server is made, never a failure
per connection later. It decides nothing about serving.
"""

from __future__ import annotations

import functools
import inspect
import math

from ..memory.buffers import BufferPool
from ..memory.limiter import BufferLimiter
from ..memory.readsize import ReadSizes
from ..stream import check_memory_arguments

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_RESERVE_FRACTION",
    "check_count",
    "check_handler",
    "check_seconds",
    "memory_of",
]

# The default byte budget of a server's buffers: 64 maximum-size (1 MiB)
# reads in flight at once, 1024 of 64 KiB, or 65536 minimum-size ones under
# pressure. Enough that a busy server rarely waits, small enough for a modest
# container.
DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024

# The default reserve, 1/16 of the budget: only connections that already hold
# buffer memory may use it, so one that needs a second buffer to finish (a
# proxy with an input and an output buffer) always can (HAProxy's
# tune.buffers.reserve).
DEFAULT_RESERVE_FRACTION = 16


def _is_async_callable(handler: object) -> bool:
    # An async def function or method, through functools.partial and
    # decorators that set __wrapped__, or an object whose __call__ is one.
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(inspect.unwrap(handler)):  # type: ignore[arg-type]
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - we need the method itself
    return call is not None and inspect.iscoroutinefunction(inspect.unwrap(call))


def check_handler(handler: object) -> None:
    """Raise ``TypeError`` naming ``handler`` unless it is an async function.

    An ``async def``, a bound async method, an object with an ``async def
    __call__``, or a ``functools.partial`` of one; decorators that set
    ``__wrapped__`` are followed. It is called once per connection and its
    result awaited, so anything else would fail for every connection.
    """
    if not callable(handler):
        raise TypeError(f"handler must be an async function, not {type(handler).__name__}")
    if not _is_async_callable(handler):
        raise TypeError(
            f"handler must be an async function (async def handler(stream)), not {handler!r}: "
            "it is called once per connection and its result awaited"
        )


def check_seconds(name: str, value: object, *, optional: bool = True) -> float | None:
    """A duration in seconds (``None`` allowed when ``optional``); raise naming ``name``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {expected}, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


def check_count(name: str, value: object) -> int | None:
    """A count of at least 1, or None for no limit; raise naming ``name``."""
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return value


def memory_of(
    limiter: object, pool: object, read_sizes: object, pooled: object
) -> tuple[BufferLimiter | None, BufferPool | None]:
    """Check the memory arguments together; return the limiter and pool to use.

    With neither given (and ``pooled``) a default budget is made; the pool, if
    None, is made when the server starts, in its Trio run.
    """
    if limiter is not None and not isinstance(limiter, BufferLimiter):
        raise TypeError(f"limiter must be a BufferLimiter or None, not {type(limiter).__name__}")
    check_memory_arguments(pool, read_sizes)
    assert pool is None or isinstance(pool, BufferPool)
    assert read_sizes is None or isinstance(read_sizes, ReadSizes)
    if pool is not None and limiter is not None and pool.limiter is not limiter:
        raise ValueError("pool must charge the given limiter (pool.limiter is not limiter)")
    if not isinstance(pooled, bool):
        raise TypeError(f"pooled must be a bool, not {type(pooled).__name__}")
    if not pooled and (pool is not None or limiter is not None):
        raise ValueError("pooled=False reads without a pool: pass no pool or limiter")
    if pool is not None:
        return pool.limiter, pool
    if limiter is None and pooled:
        limiter = BufferLimiter(
            DEFAULT_BUDGET_BYTES, reserved_bytes=DEFAULT_BUDGET_BYTES // DEFAULT_RESERVE_FRACTION
        )
    return limiter, None
