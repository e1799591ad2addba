"""Specifications for millpond.memory.buffers: BufferPool and Buffer."""

from __future__ import annotations

import ctypes
import gc
import math
import mmap
import os
import pickle
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from millpond.memory import sizeclasses
from millpond.memory.buffers import Buffer, BufferPool
from millpond.memory.leaks import BufferLeakWarning
from millpond.memory.limiter import BufferLimiter
from millpond.memory.sizeclasses import (
    _LENT_SLOTS,
    MAX_CLASS_BYTES,
    PAGE_BYTES,
    SIZE_CLASSES,
    SLAB_BYTES,
    capacity_for,
    size_class_index,
)

KiB = 1024
MiB = 1024 * KiB


# -- size classes (pure arithmetic) ------------------------------------------------------


def test_size_classes_are_powers_of_two_from_1_kib_to_64_kib() -> None:
    assert SIZE_CLASSES == (1 * KiB, 2 * KiB, 4 * KiB, 8 * KiB, 16 * KiB, 32 * KiB, 64 * KiB)


@given(st.integers(min_value=0, max_value=MAX_CLASS_BYTES))
def test_pooled_request_rounds_up_to_smallest_class_that_fits(nbytes: int) -> None:
    index = size_class_index(nbytes)
    assert SIZE_CLASSES[index] == capacity_for(nbytes)
    assert capacity_for(nbytes) >= nbytes
    assert index == 0 or SIZE_CLASSES[index - 1] < nbytes


@given(st.integers(min_value=MAX_CLASS_BYTES + 1, max_value=1 << 40))
def test_large_request_rounds_up_to_whole_pages(nbytes: int) -> None:
    assert size_class_index(nbytes) == -1
    capacity = capacity_for(nbytes)
    assert capacity % PAGE_BYTES == 0
    assert nbytes <= capacity < nbytes + PAGE_BYTES


@given(st.integers(min_value=0, max_value=4 * MAX_CLASS_BYTES))
def test_lease_capacity_matches_the_size_class_arithmetic(nbytes: int) -> None:
    pool = BufferPool(leak_detection="off")  # outside Trio: the pool works unbound
    with pool.lease_nowait(nbytes) as buf:
        assert (buf.capacity, buf.nbytes, len(buf.view)) == (capacity_for(nbytes), nbytes, nbytes)


@pytest.mark.parametrize(
    ("nbytes", "capacity"),
    [(0, 1024), (1, 1024), (1024, 1024), (1025, 2048), (65535, 65536), (65536, 65536)],
)
def test_class_boundaries(nbytes: int, capacity: int) -> None:
    assert capacity_for(nbytes) == capacity


# -- leasing and the limiter -------------------------------------------------------------


async def test_lease_is_charged_to_the_limiter_at_class_size() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    with await pool.lease(3000) as buf:
        assert (buf.nbytes, len(buf.view), buf.capacity) == (3000, 3000, 4096)
        assert limiter.bytes_in_use == 4096
        assert limiter.held_by(trio.lowlevel.current_task()) == 4096
        assert pool.statistics().bytes_leased == 4096
    assert limiter.bytes_in_use == 0
    assert pool.statistics().bytes_leased == 0


async def test_explicit_owner_is_charged_instead_of_the_task() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    with pool.lease_nowait(10, owner="conn-1") as buf:
        assert buf.owner == "conn-1"
        assert limiter.held_by("conn-1") == 1024
    assert limiter.held_by("conn-1") == 0


async def test_large_lease_gets_a_dedicated_page_rounded_buffer_that_is_charged() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    buf = pool.lease_nowait(100_000)
    assert buf.capacity == capacity_for(100_000) == 25 * 4096
    assert limiter.bytes_in_use == buf.capacity
    buf.view[-1] = 7
    stats = pool.statistics()
    assert (stats.dedicated_buffers, stats.bytes_dedicated) == (1, buf.capacity)
    assert stats.bytes_reserved_by_slabs == 0
    buf.release()
    stats = pool.statistics()
    assert (stats.dedicated_buffers, stats.bytes_dedicated, limiter.bytes_in_use) == (0, 0, 0)


async def test_lease_nowait_raises_wouldblock_when_the_limiter_is_full() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    held = pool.lease_nowait(64 * KiB)
    with pytest.raises(trio.WouldBlock):
        pool.lease_nowait(1)
    assert pool.statistics().bytes_leased == 64 * KiB
    held.release()


async def test_lease_waits_and_is_served_when_another_releases() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    held = pool.lease_nowait(64 * KiB)
    served: list[Buffer] = []

    async def wait_for_buffer() -> None:
        served.append(await pool.lease(64 * KiB))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_buffer)
        await trio.testing.wait_all_tasks_blocked()
        assert served == []
        held.release()
    assert served[0].capacity == 64 * KiB
    assert limiter.bytes_in_use == 64 * KiB
    served[0].release()


async def test_cancelled_lease_leaves_nothing_charged() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    held = pool.lease_nowait(64 * KiB)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.lease, 1)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    held.release()
    assert limiter.bytes_in_use == 0
    assert pool.statistics().bytes_leased == 0


async def test_lease_without_limiter_accounts_without_limiting() -> None:
    pool = BufferPool()
    bufs = [pool.lease_nowait(64 * KiB) for _ in range(32)]
    assert pool.statistics().bytes_leased == 32 * 64 * KiB
    for buf in bufs:
        buf.release()
    assert pool.statistics().bytes_leased == 0


async def test_lease_of_zero_bytes_has_an_empty_view_and_the_smallest_class() -> None:
    with BufferPool().lease_nowait(0) as buf:
        assert (len(buf.view), buf.capacity) == (0, 1024)


# -- the Buffer lease --------------------------------------------------------------------


async def test_release_twice_raises_runtime_error() -> None:
    buf = BufferPool().lease_nowait(100)
    buf.release()
    assert buf.released
    with pytest.raises(RuntimeError):
        buf.release()


async def test_view_is_unusable_after_release() -> None:
    buf = BufferPool().lease_nowait(100)
    view = buf.view
    buf.release()
    with pytest.raises(ValueError):
        view[0]
    with pytest.raises(trio.ClosedResourceError):
        _ = buf.view
    with pytest.raises(trio.ClosedResourceError):
        buf.set_length(1)


async def test_with_block_releases_and_tolerates_explicit_release_inside() -> None:
    pool = BufferPool()
    with pool.lease_nowait(100) as buf:
        assert not buf.released
    assert buf.released
    with pool.lease_nowait(100) as other:
        other.release()
    assert pool.statistics().bytes_leased == 0


async def test_set_length_reslices_view_and_releases_the_old_one() -> None:
    with BufferPool().lease_nowait(3000) as buf:
        old = buf.view
        old[:5] = b"hello"
        buf.set_length(4096)
        assert (buf.nbytes, len(buf.view)) == (4096, 4096)
        with pytest.raises(ValueError):
            old[0]
        buf.set_length(5)
        assert bytes(buf.view) == b"hello"
        buf.set_length(0)
        assert len(buf.view) == 0


@pytest.mark.parametrize(
    ("length", "error"), [(-1, ValueError), (4097, ValueError), (True, TypeError), (1.0, TypeError)]
)
async def test_set_length_rejects_bad_lengths(length: Any, error: type[Exception]) -> None:
    with BufferPool().lease_nowait(4096) as buf:
        with pytest.raises(error, match="nbytes"):
            buf.set_length(length)
        assert buf.nbytes == 4096


async def test_released_slot_is_reused_by_the_next_lease() -> None:
    pool = BufferPool()
    with pool.lease_nowait(2000) as buf:
        buf.view[:6] = b"marker"
    with pool.lease_nowait(2000) as again:
        # Same slot (buffers are not zeroed between leases, see docs/buffers.md).
        assert bytes(again.view[:6]) == b"marker"
    assert pool.statistics().size_classes[1].slabs == 1


async def test_buffers_of_one_class_share_a_slab() -> None:
    pool = BufferPool()
    bufs = [pool.lease_nowait(1024) for _ in range(SLAB_BYTES // 1024 + 1)]
    first_class = pool.statistics().size_classes[0]
    assert (first_class.slabs, first_class.buffers_total, first_class.buffers_leased) == (
        2,
        2 * SLAB_BYTES // 1024,
        SLAB_BYTES // 1024 + 1,
    )
    for buf in bufs:
        buf.release()


async def test_release_from_a_worker_thread_returns_slot_and_capacity() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    buf = pool.lease_nowait(64 * KiB)
    await trio.to_thread.run_sync(buf.release)
    assert buf.released
    assert limiter.bytes_in_use == 0
    assert pool.statistics().bytes_leased == 0
    pool.lease_nowait(64 * KiB).release()


# -- trimming ----------------------------------------------------------------------------


async def test_trim_returns_idle_slabs_only_after_the_quiet_period(
    idle_clock: trio.testing.MockClock,
) -> None:
    pool = BufferPool(trim_after=5.0)
    pool.lease_nowait(1024).release()
    assert pool.trim() == 0
    await trio.sleep(4.0)
    assert pool.trim() == 0
    await trio.sleep(1.0)
    assert pool.trim() == SLAB_BYTES
    stats = pool.statistics()
    assert (stats.bytes_reserved_by_slabs, stats.slabs_trimmed) == (0, 1)


async def test_slab_in_use_again_is_not_trimmed(idle_clock: trio.testing.MockClock) -> None:
    pool = BufferPool(trim_after=5.0)
    pool.lease_nowait(1024).release()
    await trio.sleep(4.0)
    pool.lease_nowait(1024).release()
    await trio.sleep(4.0)
    assert pool.trim() == 0


async def test_idle_slabs_are_trimmed_lazily_as_buffers_come_and_go(
    idle_clock: trio.testing.MockClock,
) -> None:
    pool = BufferPool(trim_after=5.0)
    first, second = pool.lease_nowait(64 * KiB), pool.lease_nowait(64 * KiB)
    first.release()
    second.release()
    await trio.sleep(5.0)
    pool.lease_nowait(64 * KiB).release()  # no trim() call
    assert pool.statistics().slabs_trimmed == 1


async def test_forced_trim_ignores_age_but_spares_leased_slabs() -> None:
    pool = BufferPool(trim_after=math.inf)
    held = pool.lease_nowait(1024)
    pool.lease_nowait(64 * KiB).release()
    assert pool.trim() == 0
    assert pool.trim(force=True) == SLAB_BYTES
    assert pool.statistics().bytes_reserved_by_slabs == SLAB_BYTES
    held.view[0] = 1
    held.release()


async def test_idle_slabs_beyond_max_idle_bytes_are_unmapped_at_once() -> None:
    pool = BufferPool(trim_after=math.inf, max_idle_bytes=2 * SLAB_BYTES)
    bufs = [pool.lease_nowait(64 * KiB) for _ in range(8)]
    for buf in bufs:
        buf.release()
    stats = pool.statistics()
    # The documented slack: max_idle_bytes plus one idle "current" slab per class.
    assert stats.bytes_reserved_by_slabs <= 2 * SLAB_BYTES + len(SIZE_CLASSES) * SLAB_BYTES
    assert stats.slabs_trimmed == 5


async def test_a_dedicated_mapping_kept_alive_by_a_stale_slice_gives_its_pages_back() -> None:
    pool = BufferPool()
    buf = pool.lease_nowait(100_000)  # above 64 KiB: a mapping of its own, never reused
    buf.view[:10] = b"x" * 10
    stale = buf.view[:10]  # the caller's own slice: documented to survive release()
    buf.release()
    assert pool.statistics().bytes_dedicated == 0
    assert bytes(stale) == bytes(10)  # the pages went back to the OS; reads see zeros


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
async def test_trim_gives_memory_back_to_the_os() -> None:
    allocated = 64 * MiB
    pool = BufferPool(BufferLimiter(2 * allocated), trim_after=math.inf, max_idle_bytes=None)
    fill = b"\x5a" * (64 * KiB)
    bufs = [pool.lease_nowait(64 * KiB) for _ in range(allocated // (64 * KiB))]
    for buf in bufs:
        buf.view[:] = fill  # touch every page
    rss_full = _rss_bytes()
    for buf in bufs:
        buf.release()
    del bufs, buf
    assert pool.trim(force=True) == allocated
    rss_trimmed = _rss_bytes()
    # Generous slack: other tests and the interpreter move RSS by a few MiB at most.
    assert rss_full - rss_trimmed >= allocated * 3 // 4


# -- leak detection ----------------------------------------------------------------------


async def test_leak_at_level_all_warns_with_the_lease_site_and_returns_capacity() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter, leak_detection="all")
    buf = pool.lease_nowait(64 * KiB)
    with pytest.warns(BufferLeakWarning) as record:
        del buf
        gc.collect()
    warning = record[0]
    assert warning.filename == __file__
    assert "test_buffers.py" in str(warning.message)
    assert "test_leak_at_level_all_warns" in str(warning.message)  # the task's name
    pool.lease_nowait(64 * KiB).release()  # the capacity came back
    stats = pool.statistics()
    assert stats.leaks_detected == 1
    assert stats.recent_leaks[0].filename == __file__


async def test_leak_at_level_off_returns_capacity_without_warning() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter, leak_detection="off")
    buf = pool.lease_nowait(64 * KiB)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        del buf
        gc.collect()
    assert not [w for w in record if issubclass(w.category, BufferLeakWarning)]
    pool.lease_nowait(64 * KiB).release()
    assert pool.statistics().leaks_detected == 1


async def test_leaked_capacity_reaches_a_waiting_task_without_further_pool_calls() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter, leak_detection="off")
    leaked = [pool.lease_nowait(64 * KiB)]
    served: list[Buffer] = []

    async def wait_for_buffer() -> None:
        served.append(await pool.lease(64 * KiB))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_buffer)
        await trio.testing.wait_all_tasks_blocked()
        leaked.clear()  # the last reference goes; the finalizer hands off to the Trio thread
        gc.collect()
    served[0].release()
    assert limiter.bytes_in_use == 0


async def test_leaked_view_is_released_too() -> None:
    pool = BufferPool(leak_detection="off")
    buf = pool.lease_nowait(100)
    view = buf.view
    del buf
    gc.collect()
    with pytest.raises(ValueError):
        view[0]


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"limiter": 100}, TypeError, "limiter"),
        ({"leak_detection": "paranoid"}, ValueError, "leak_detection"),
        ({"leak_detection": 2}, TypeError, "leak_detection"),
        ({"trim_after": -1}, ValueError, "trim_after"),
        ({"trim_after": math.nan}, ValueError, "trim_after"),
        ({"trim_after": "5"}, TypeError, "trim_after"),
        ({"trim_after": True}, TypeError, "trim_after"),
        ({"max_idle_bytes": -1}, ValueError, "max_idle_bytes"),
        ({"max_idle_bytes": 1.5}, TypeError, "max_idle_bytes"),
        ({"guard_views": 1}, TypeError, "guard_views"),
    ],
)
def test_bad_pool_arguments_are_rejected_by_name(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        BufferPool(**kwargs)


@pytest.mark.parametrize(
    ("nbytes", "owner", "error", "name"),
    [
        (-1, None, ValueError, "nbytes"),
        (1.5, None, TypeError, "nbytes"),
        (True, None, TypeError, "nbytes"),
        (10, [], TypeError, "owner"),
    ],
)
async def test_bad_lease_arguments_are_rejected_by_name(
    nbytes: Any, owner: Any, error: type[Exception], name: str
) -> None:
    pool = BufferPool()
    with pytest.raises(error, match=name):
        pool.lease_nowait(nbytes, owner=owner)
    with pytest.raises(error, match=name):
        await pool.lease(nbytes, owner=owner)
    assert pool.statistics().leases == 0


def test_trim_force_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="force"):
        BufferPool().trim(force=1)  # type: ignore[arg-type]


# -- threads and runs --------------------------------------------------------------------


async def test_lease_nowait_from_a_worker_thread_is_charged_to_that_thread() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    buf = await trio.to_thread.run_sync(pool.lease_nowait, 1000)
    assert limiter.held_by(buf.owner) == 1024
    buf.release()
    assert limiter.bytes_in_use == 0


async def test_leak_in_a_worker_thread_is_reclaimed_on_the_trio_thread() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter, leak_detection="off")
    box = [pool.lease_nowait(64 * KiB)]
    await trio.to_thread.run_sync(box.clear)
    assert limiter.bytes_in_use == 0
    assert pool.statistics().leaks_detected == 1


async def test_pool_refuses_a_second_trio_run_while_its_own_is_alive() -> None:
    pool = BufferPool()

    async def use_pool() -> None:
        pool.lease_nowait(1).release()

    with pytest.raises(RuntimeError, match="another Trio run"):
        await trio.to_thread.run_sync(trio.run, use_pool)


def test_pool_moves_to_a_new_run_after_the_old_one_ends() -> None:
    pool = BufferPool(BufferLimiter(64 * KiB))

    async def use_pool() -> None:
        pool.lease_nowait(64 * KiB).release()
        buf = await pool.lease(64 * KiB)
        await trio.to_thread.run_sync(buf.release)

    trio.run(use_pool)
    trio.run(use_pool)
    assert pool.statistics().leases == 4


async def test_freed_slots_of_partly_used_slabs_are_reused_before_mapping_a_new_slab() -> None:
    pool = BufferPool()
    a, b, c = (pool.lease_nowait(32 * KiB) for _ in range(3))  # two slabs of two slots
    a.release()
    d, e = pool.lease_nowait(32 * KiB), pool.lease_nowait(32 * KiB)
    assert pool.statistics().size_classes[5].slabs == 2
    for buf in (b, c, d, e):
        buf.release()


# -- the memory bound, fragmentation included --------------------------------------------


def _mapped(pool: BufferPool) -> int:
    stats = pool.statistics()
    return stats.bytes_reserved_by_slabs + stats.bytes_dedicated


async def test_leases_of_mixed_classes_pin_no_more_memory_than_the_budget_plus_the_constant() -> (
    None
):
    # Each class in turn takes what the budget grants, then keeps one lease per slab,
    # as adaptive read sizes do when they move between classes (issue 11, point 8).
    budget = 1 * MiB
    limiter = BufferLimiter(budget)
    pool = BufferPool(limiter, max_idle_bytes=0)
    kept: list[Buffer] = []
    for size in SIZE_CLASSES[:-1]:
        leased: list[Buffer] = []
        while True:
            try:
                leased.append(pool.lease_nowait(size))
            except trio.WouldBlock:
                break
        per_slab = SLAB_BYTES // size
        kept += leased[::per_slab]
        for i, buf in enumerate(leased):
            if i % per_slab:
                buf.release()
        assert _mapped(pool) <= budget + len(SIZE_CLASSES) * SLAB_BYTES
    for buf in kept:
        buf.release()
    assert limiter.bytes_in_use == 0


def _release_all(buffers: list[Buffer]) -> None:
    for buf in buffers:
        buf.release()


def _one_partial_slab(pool: BufferPool, size: int = 1 * KiB) -> tuple[list[Buffer], Buffer]:
    # A full slab of *size* that is no longer the class's current slab (one more lease
    # moved on to a second slab): returns its leases, and that one more lease.
    full = [pool.lease_nowait(size) for _ in range(SLAB_BYTES // size)]
    return full, pool.lease_nowait(size)


async def test_a_slot_freed_in_a_partly_used_slab_stays_charged_to_the_pool() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    full, newer = _one_partial_slab(pool)
    in_use = limiter.bytes_in_use
    full[0].release()
    assert limiter.bytes_in_use == in_use
    assert limiter.held_by(pool) == pool.statistics().bytes_fragmented == 1 * KiB
    _release_all([newer, *full[1:]])


async def test_a_lease_takes_over_a_paid_free_slot_even_when_the_budget_is_spent() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    full, newer = _one_partial_slab(pool)
    full[0].release()
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)
    buf = pool.lease_nowait(1 * KiB, owner="conn")  # no WouldBlock: the memory is there
    assert (limiter.held_by("conn"), limiter.held_by(pool)) == (1 * KiB, 0)
    assert pool.statistics().bytes_fragmented == 0
    _release_all([buf, newer, *full[1:]])


async def test_a_slab_whose_last_lease_goes_gives_its_whole_charge_back() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    full, newer = _one_partial_slab(pool)
    for buf in full:
        buf.release()
    assert limiter.held_by(pool) == pool.statistics().bytes_fragmented == 0
    assert limiter.bytes_in_use == newer.capacity
    newer.release()
    assert limiter.bytes_in_use == 0


@dataclass
class _WaitingLease:
    # A budget spent (by "hog"), a full 1 KiB slab that is no longer current, and a
    # lease of 1 KiB for "conn" waiting in the limiter inside ``scope``.
    limiter: BufferLimiter
    pool: BufferPool
    full: list[Buffer]
    newer: Buffer
    scope: trio.CancelScope
    served: list[Buffer]


async def _a_lease_waiting_for_a_spent_budget(nursery: trio.Nursery) -> _WaitingLease:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    full, newer = _one_partial_slab(pool)
    limiter.acquire_on_behalf_of_nowait("hog", limiter.bytes_available)
    waiting = _WaitingLease(limiter, pool, full, newer, trio.CancelScope(), [])

    async def wait_for_buffer() -> None:
        with waiting.scope:
            waiting.served.append(await pool.lease(1 * KiB, owner="conn"))

    nursery.start_soon(wait_for_buffer)
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tasks_waiting == 1
    return waiting


async def test_a_slot_freed_in_a_partly_used_slab_goes_to_a_lease_waiting_for_its_class(
    nursery: trio.Nursery,
) -> None:
    waiting = await _a_lease_waiting_for_a_spent_budget(nursery)
    limiter, pool = waiting.limiter, waiting.pool
    in_use = limiter.bytes_in_use
    waiting.full[0].release()
    await trio.testing.wait_all_tasks_blocked()
    assert len(waiting.served) == 1 and limiter.statistics().tasks_waiting == 0
    assert limiter.bytes_in_use == in_use  # the slot changed hands; nothing was freed
    assert (limiter.held_by("conn"), limiter.held_by(pool)) == (1 * KiB, 0)
    _release_all([*waiting.served, waiting.newer, *waiting.full[1:]])


async def test_a_lease_handed_a_slot_and_cancelled_in_the_same_tick_passes_it_on(
    nursery: trio.Nursery,
) -> None:
    waiting = await _a_lease_waiting_for_a_spent_budget(nursery)
    limiter, pool = waiting.limiter, waiting.pool
    leased = pool.statistics().bytes_leased
    waiting.full[0].release()  # handed to the waiter...
    waiting.scope.cancel()  # ...which is cancelled before it runs
    await trio.testing.wait_all_tasks_blocked()
    assert waiting.served == []
    assert limiter.held_by("conn") == 0
    assert limiter.held_by(pool) == pool.statistics().bytes_fragmented == 1 * KiB
    assert pool.statistics().bytes_leased == leased - 1 * KiB
    _release_all([waiting.newer, *waiting.full[1:]])
    assert limiter.bytes_in_use == limiter.held_by("hog")


class _ReleaseAfterFirstStep(trio.abc.Instrument):
    # Releases a buffer right after a task's first step, before anything else runs.
    def __init__(self, buf: Buffer) -> None:
        self.buf: Buffer | None = buf
        self.task: trio.lowlevel.Task | None = None

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and self.buf is not None:
            buf, self.buf = self.buf, None
            buf.release()


async def test_a_lease_granted_and_handed_a_slot_in_the_same_tick_keeps_only_the_slot(
    nursery: trio.Nursery,
) -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    full, newer = _one_partial_slab(pool)
    instrument = _ReleaseAfterFirstStep(full[0])
    served: list[Buffer] = []

    async def lease_one() -> None:
        instrument.task = trio.lowlevel.current_task()
        # Granted at once; its first step ends in the grant's (shielded) checkpoint,
        # and then full[0] is released, which hands this lease its slot as well.
        served.append(await pool.lease(1 * KiB, owner="conn"))

    in_use = limiter.bytes_in_use
    trio.lowlevel.add_instrument(instrument)
    try:
        nursery.start_soon(lease_one)
        await trio.testing.wait_all_tasks_blocked()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert instrument.buf is None and len(served) == 1
    assert limiter.held_by("conn") == 1 * KiB  # the slot's bytes; the grant went back
    assert limiter.bytes_in_use == in_use
    _release_all([*served, newer, *full[1:]])
    assert limiter.bytes_in_use == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(SIZE_CLASSES[:-1]), st.integers(0, 1 << 16)),
        min_size=1,
        max_size=300,
    )
)
def test_what_the_pool_maps_stays_within_what_it_charges_plus_one_slab_per_class(
    steps: list[tuple[int, int]],
) -> None:
    # Random leases of mixed classes and releases in random order, outside Trio.
    limiter = BufferLimiter(4 * MiB)
    pool = BufferPool(limiter, leak_detection="off", max_idle_bytes=0)
    live: list[Buffer] = []
    for size, choice in steps:
        if live and choice % 3 == 0:
            live.pop(choice % len(live)).release()
        else:
            try:
                live.append(pool.lease_nowait(size))
            except trio.WouldBlock:
                live.pop(choice % len(live)).release()
        stats = pool.statistics()
        charged = stats.bytes_leased + stats.bytes_fragmented
        assert limiter.bytes_in_use == charged
        assert limiter.held_by(pool) == stats.bytes_fragmented
        assert stats.bytes_reserved_by_slabs <= charged + len(SIZE_CLASSES) * SLAB_BYTES
    for buf in live:
        buf.release()
    assert limiter.bytes_in_use == 0


# -- views that outlive release() --------------------------------------------------------


def _ctypes_alias(view: memoryview) -> Any:
    return (ctypes.c_char * len(view)).from_buffer(view)


# Ways to keep the bytes of buf.view without copying them; numpy.frombuffer(buf.view)
# behaves like memoryview(buf.view) (checked by hand, numpy 2.4).
DERIVED_VIEWS = {
    "memoryview": memoryview,
    "slice": lambda view: view[:],
    "cast": lambda view: view.cast("B"),
    "ctypes": _ctypes_alias,
}


@pytest.mark.parametrize("derive", DERIVED_VIEWS.values(), ids=DERIVED_VIEWS.keys())
async def test_with_guard_views_a_derived_view_never_sees_the_next_lease(
    derive: Any,
) -> None:
    pool = BufferPool(guard_views=True)
    buf = pool.lease_nowait(1 * KiB)
    buf.view[:3] = b"old"
    alias = derive(buf.view)
    buf.release()
    with pool.lease_nowait(1 * KiB) as again:
        again.view[:3] = b"new"
        assert bytes(alias)[:3] == b"old"


async def test_a_view_exported_by_its_holder_makes_release_raise_and_change_nothing() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    buf = pool.lease_nowait(1 * KiB)
    holder = pickle.PickleBuffer(buf.view)  # holds the view itself, like recv_into in a thread
    with pytest.raises(BufferError):
        buf.release()
    assert not buf.released and limiter.bytes_in_use == 1 * KiB
    holder.release()
    buf.release()
    assert limiter.bytes_in_use == 0


async def test_the_slot_of_a_view_that_outlives_release_stays_charged_to_the_pool() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter, guard_views=True)
    buf = pool.lease_nowait(1 * KiB, owner="conn")
    alias = memoryview(buf.view)
    buf.release()
    stats = pool.statistics()
    assert (stats.buffers_quarantined, stats.bytes_quarantined) == (1, 1 * KiB)
    assert stats.bytes_leased == 0
    assert (limiter.held_by("conn"), limiter.held_by(pool)) == (0, 1 * KiB)
    assert pool.trim() == 0 and pool.statistics().buffers_quarantined == 1  # still exported
    alias.release()


async def test_a_quarantined_slot_comes_back_at_trim_once_its_views_are_gone() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter, trim_after=math.inf, guard_views=True)
    buf = pool.lease_nowait(1 * KiB)
    buf.view[:3] = b"old"
    alias = buf.view[:3]
    buf.release()
    del alias
    pool.trim()
    stats = pool.statistics()
    assert (stats.buffers_quarantined, stats.bytes_quarantined) == (0, 0)
    assert limiter.bytes_in_use == 0
    with pool.lease_nowait(1 * KiB) as again:
        assert bytes(again.view[:3]) == b"old"  # the same slot, reused


async def test_a_leaked_buffer_whose_view_is_exported_keeps_the_statistics_true() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter, leak_detection="off", trim_after=math.inf)
    buf = pool.lease_nowait(1 * KiB, owner="conn")
    holder = pickle.PickleBuffer(buf.view)
    del buf
    gc.collect()
    stats = pool.statistics()
    assert (stats.leaks_detected, stats.bytes_leased, stats.bytes_quarantined) == (1, 0, 1 * KiB)
    assert (limiter.held_by("conn"), limiter.held_by(pool)) == (0, 1 * KiB)
    holder.release()
    del holder
    pool.trim()
    assert pool.statistics().bytes_quarantined == limiter.bytes_in_use == 0
    assert pool.statistics().size_classes[0].buffers_leased == 0


async def test_a_collected_pool_leaves_its_quarantined_slots_for_any_trim_to_forget() -> None:
    pool = BufferPool(leak_detection="off", guard_views=True)
    buf = pool.lease_nowait(1 * KiB)
    slot = buf._slot  # type: ignore[attr-defined]  # the guard's own view of the slot
    alias = memoryview(buf.view)
    buf.release()
    del pool, buf
    gc.collect()
    BufferPool().trim()
    assert id(slot) in _LENT_SLOTS  # the view still needs its slot
    alias.release()
    BufferPool().trim()
    assert id(slot) not in _LENT_SLOTS


_COLLECT_IN_CYCLES = """
import gc
from millpond.memory.buffers import BufferPool

gc.disable()
for _ in range(20):
    # Released while a derived view lives, the view and the pool in one cycle.
    pool = BufferPool(leak_detection="off", guard_views=True)
    buf = pool.lease_nowait(1024)
    junk = [memoryview(buf.view), pool]
    junk.append(junk)
    buf.release()
    del pool, buf, junk
    gc.collect()
    # Never released: the buffer, a derived view and the pool in one cycle.
    pool = BufferPool(leak_detection="off", guard_views=True)
    buf = pool.lease_nowait(1024)
    junk = [memoryview(buf.view), buf]
    junk.append(junk)
    del buf, pool, junk
    gc.collect()
print("collected")
"""


def test_leases_and_their_derived_views_collected_in_reference_cycles_do_not_crash() -> None:
    # CPython before 3.12.7 crashes when the collector clears a memoryview that is still
    # exported (gh-77894); the pool must never let a lent slot be that memoryview.
    # In a child process, because what fails here is the interpreter.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", _COLLECT_IN_CYCLES],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert (child.returncode, child.stdout.strip()) == (0, "collected"), child.stderr


# -- after the run -----------------------------------------------------------------------


def _lease_in_a_run(pool: BufferPool, nbytes: int) -> Buffer:
    leased: list[Buffer] = []

    async def lease() -> None:
        leased.append(pool.lease_nowait(nbytes))

    trio.run(lease)
    return leased[0]


def test_a_buffer_leaked_after_its_run_ended_gives_its_bytes_back_at_once() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter, leak_detection="off")
    leaked = [_lease_in_a_run(pool, 64 * KiB)]
    leaked.clear()
    gc.collect()
    assert limiter.bytes_in_use == 0  # no pool call needed
    assert pool.statistics().leaks_detected == 1


def test_a_buffer_released_by_a_thread_after_its_run_ended_gives_its_bytes_back() -> None:
    limiter = BufferLimiter(64 * KiB)
    pool = BufferPool(limiter)
    buf = _lease_in_a_run(pool, 64 * KiB)
    thread = threading.Thread(target=buf.release)
    thread.start()
    thread.join()
    assert limiter.bytes_in_use == 0
    stats = pool.statistics()
    assert (stats.releases, stats.bytes_leased) == (1, 0)


async def test_a_leak_leased_in_a_worker_thread_names_the_line_that_awaited_it() -> None:
    pool = BufferPool(BufferLimiter(64 * KiB), leak_detection="all")
    buf = await trio.to_thread.run_sync(pool.lease_nowait, 1000)
    line = sys._getframe().f_lineno - 1
    with pytest.warns(BufferLeakWarning) as record:
        # What the collector would do; Trio's worker keeps the result alive for a while.
        buf.__del__()
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    leak = pool.statistics().recent_leaks[0]
    assert (leak.filename, leak.lineno) == (__file__, line)
    assert leak.task_name == trio.lowlevel.current_task().name


class _DropsABufferWhenHashed:
    # An owner whose second hash (the limiter's, after the pool checked it) drops the
    # last reference to another buffer, so that buffer's finalizer runs in the middle
    # of the pool's bookkeeping.
    def __init__(self, box: list[Buffer]) -> None:
        self.box = box
        self.hashes = 0

    def __hash__(self) -> int:
        self.hashes += 1
        if self.hashes == 2:
            self.box.clear()
        return 0


def test_a_leak_found_inside_the_pools_own_bookkeeping_is_applied_when_it_ends() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter, leak_detection="off")  # outside any run: no home thread
    box = [pool.lease_nowait(64 * KiB)]
    owner = _DropsABufferWhenHashed(box)
    buf = pool.lease_nowait(1 * KiB, owner=owner)
    assert box == []
    assert limiter.bytes_in_use == 1 * KiB == limiter.held_by(owner)  # the leak is back
    stats = pool.statistics()
    assert (stats.leaks_detected, stats.bytes_leased) == (1, 1 * KiB)
    buf.release()


# -- what a leak and a failure give back (issue 11, point 9) --------------------------------


async def test_a_leaked_buffer_gives_back_its_slot_and_the_pools_counters() -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter, leak_detection="off")
    box = [pool.lease_nowait(2 * KiB)]
    box[0].view[:6] = b"marker"
    box.clear()
    gc.collect()
    stats = pool.statistics()
    assert (stats.leaks_detected, stats.leases, stats.releases, stats.bytes_leased) == (1, 1, 1, 0)
    assert stats.size_classes[1].buffers_leased == 0 and limiter.bytes_in_use == 0
    with pool.lease_nowait(2 * KiB) as again:
        assert bytes(again.view[:6]) == b"marker"  # the same slot, free again
    assert pool.statistics().size_classes[1].slabs == 1


@pytest.mark.parametrize("nbytes", [1 * KiB, 100_000], ids=["slab", "dedicated"])
@pytest.mark.parametrize("error", [OSError, MemoryError])
@pytest.mark.parametrize("waits", [False, True], ids=["lease_nowait", "lease"])
async def test_a_failed_mmap_gives_back_its_charge_and_leaves_the_pool_as_it_was(
    monkeypatch: pytest.MonkeyPatch, nbytes: int, error: type[Exception], waits: bool
) -> None:
    limiter = BufferLimiter(1 * MiB)
    pool = BufferPool(limiter)
    held = pool.lease_nowait(64 * KiB)  # a slab that is mapped and stays so
    before = pool.statistics()

    def no_memory(*args: object, **kwargs: object) -> mmap.mmap:
        raise error("injected")

    monkeypatch.setattr(sizeclasses.mmap, "mmap", no_memory)
    with pytest.raises(error, match="injected"):
        if waits:
            await pool.lease(nbytes)
        else:
            pool.lease_nowait(nbytes)
    monkeypatch.undo()
    assert limiter.bytes_in_use == held.capacity
    assert limiter.held_by(trio.lowlevel.current_task()) == held.capacity
    assert pool.statistics() == before
    held.release()
    with pool.lease_nowait(nbytes):  # and the pool still works
        pass


# -- what is outstanding -------------------------------------------------------------------


async def test_tracked_leases_name_the_site_of_each_lease_not_yet_released() -> None:
    pool = BufferPool(BufferLimiter(MiB), leak_detection="all")
    kept = await pool.lease(1000)
    line = sys._getframe().f_lineno - 1
    pool.lease_nowait(4 * KiB).release()
    (report,) = pool.tracked_leases()
    assert (report.filename, report.lineno, report.capacity) == (__file__, line, KiB)
    assert "test_tracked_leases_name_the_site" in report.task_name
    kept.release()
    assert pool.tracked_leases() == ()


async def test_untracked_leases_are_not_listed() -> None:
    pool = BufferPool(BufferLimiter(MiB), leak_detection="off")
    kept = pool.lease_nowait(1000)
    assert pool.tracked_leases() == ()
    kept.release()


async def test_slabs_trimmed_are_counted_per_size_class() -> None:
    pool = BufferPool(BufferLimiter(MiB))
    pool.lease_nowait(KiB).release()
    pool.lease_nowait(64 * KiB).release()
    pool.lease_nowait(64 * KiB).release()
    assert pool.trim(force=True) == 2 * SLAB_BYTES
    stats = pool.statistics()
    trimmed = {c.size: c.slabs_trimmed for c in stats.size_classes}
    assert trimmed[KiB] == 1 and trimmed[64 * KiB] == 1
    assert sum(trimmed.values()) == stats.slabs_trimmed == 2
