"""Specifications for millpond.buffers: BufferPool and Buffer."""

from __future__ import annotations

import gc
import math
import os
import warnings
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from millpond.buffers import Buffer, BufferPool
from millpond.leaks import BufferLeakWarning
from millpond.limiter import BufferLimiter
from millpond.sizeclasses import (
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
    autojump_clock: trio.testing.MockClock,
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


async def test_slab_in_use_again_is_not_trimmed(autojump_clock: trio.testing.MockClock) -> None:
    pool = BufferPool(trim_after=5.0)
    pool.lease_nowait(1024).release()
    await trio.sleep(4.0)
    pool.lease_nowait(1024).release()
    await trio.sleep(4.0)
    assert pool.trim() == 0


async def test_idle_slabs_are_trimmed_lazily_as_buffers_come_and_go(
    autojump_clock: trio.testing.MockClock,
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


async def test_slab_kept_alive_by_a_stale_slice_is_still_trimmed() -> None:
    pool = BufferPool(trim_after=math.inf)
    buf = pool.lease_nowait(64 * KiB)
    stale = buf.view[:10]  # the caller's own slice: documented to survive release()
    buf.release()
    assert pool.trim(force=True) == SLAB_BYTES
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
