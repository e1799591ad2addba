"""Heap profiles with tracemalloc: the top allocation sites, and what grew since last time.

This module owns the ``heap`` and ``heap/diff`` pages' data, after Go's
pprof: ``heap?top=N`` lists the N source lines holding the most memory
allocated since tracing began, and ``heap/diff`` lists what grew since the
previous snapshot, which each of the two pages takes and keeps (``pprof
-base``: take one, let the server run, take another and look at the
difference). Each profile starts from a fresh ``tracemalloc`` snapshot.

**Tracing is off until it is asked for.** The first request starts it (one
frame per allocation, unless ``PYTHONTRACEMALLOC`` or the program already
started it with more) and says so: only allocations made from then on are
seen, so the first profile shows little and the diff is the tool. Tracing
is not free, and the page says what it costs: every allocation and free
goes through tracemalloc's hook (an allocation-bound loop of small dicts and
strings ran 6.9 times slower with one frame on the development VM, 15.7
times with 25), and it keeps about 50 bytes per live traced block (5.3 MB
for 100,000). ``heap?stop=1`` stops it and frees its tables.

Taking a snapshot and computing its statistics is Python work proportional
to the blocks traced (tenths of a second for hundreds of thousands), so it
runs in a worker thread: the server goes on serving meanwhile. Before it,
the cyclic garbage collector runs (as Go's ``heap?gc=1``; ``?gc=0`` skips
it), so that objects only waiting for a collection (closed sockets in
reference cycles) do not pass for growth. One profile
at a time (a lock), so two requests cannot race for the baseline.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from dataclasses import dataclass

import trio

__all__ = ["HeapProfiler", "HeapReport", "HeapSite", "TRACING_COST"]

#: What the pages say tracing costs (measured as the module docstring says).
TRACING_COST = (
    "While tracing is on, every allocation and free goes through tracemalloc: "
    "allocation-heavy code runs several times slower (6.9x for a loop of small "
    "dicts and strings with one frame, measured on millpond's development VM), and "
    "tracemalloc keeps about 50 bytes per live traced block."
)

# Frames that are the profiler's own business, not the program's.
_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


@dataclass(frozen=True, slots=True)
class HeapSite:
    """One source line: bytes and blocks it holds now, and their change since the baseline."""

    filename: str
    lineno: int
    size_bytes: int
    count: int
    size_diff_bytes: int = 0
    count_diff: int = 0


@dataclass(frozen=True, slots=True)
class HeapReport:
    """A heap profile: the sites, and what a reader must know to read them.

    ``started_tracing``: this request turned tracing on (so the sites only
    show what was allocated since). ``traced_bytes``: memory held by traced
    blocks now; ``tracing_overhead_bytes``: tracemalloc's own tables.
    ``baseline_age_seconds``: for a diff, how old the snapshot it compares
    against is (None: there was none, this one is the baseline now).
    """

    kind: str
    started_tracing: bool
    frames_per_allocation: int
    traced_bytes: int
    traced_peak_bytes: int
    tracing_overhead_bytes: int
    baseline_age_seconds: float | None
    sites: tuple[HeapSite, ...]
    note: str


class HeapProfiler:
    """Takes tracemalloc snapshots for the heap pages, and keeps the last one as the baseline.

    ``await profiler.top(20)`` lists the 20 lines holding the most traced
    memory; ``await profiler.diff(20)`` the 20 that grew most since the last
    profile of either kind. Both start tracing if it is off.
    """

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None
        self._baseline_at = 0.0
        self._lock = trio.Lock()

    async def top(self, limit: int, collect: bool = True) -> HeapReport:
        """The ``limit`` source lines holding the most traced memory now.

        ``collect`` runs the cyclic garbage collector first (Go's ``gc=1``), so
        the profile shows what is reachable, not garbage waiting for a collection.
        """
        async with self._lock:
            started = _start_tracing()
            current = await trio.to_thread.run_sync(_take_snapshot, collect)
            stats = await trio.to_thread.run_sync(current.statistics, "lineno")
            self._keep(current)
        sites = tuple(
            HeapSite(_filename(s.traceback), s.traceback[0].lineno, s.size, s.count)
            for s in stats[:limit]
        )
        note = _started_note() if started else "Sites holding the most traced memory now."
        return _report("top", started, None, sites, note)

    async def diff(self, limit: int, collect: bool = True) -> HeapReport:
        """The ``limit`` source lines whose traced memory grew most since the last profile.

        ``collect``: as for :meth:`top`.
        """
        async with self._lock:
            started = _start_tracing()
            baseline, taken_at = self._baseline, self._baseline_at
            current = await trio.to_thread.run_sync(_take_snapshot, collect)
            if baseline is None or started:
                self._keep(current)
                note = (
                    _started_note() if started else "No baseline yet: this snapshot is it now."
                ) + " Fetch heap/diff again after some traffic to see what grew."
                return _report("diff", started, None, (), note)
            stats = await trio.to_thread.run_sync(current.compare_to, baseline, "lineno")
            self._keep(current)
        stats.sort(key=lambda s: (s.size_diff, s.count_diff), reverse=True)
        sites = tuple(
            HeapSite(
                _filename(s.traceback),
                s.traceback[0].lineno,
                s.size,
                s.count,
                s.size_diff,
                s.count_diff,
            )
            for s in stats[:limit]
        )
        age = time.monotonic() - taken_at
        note = (
            f"What grew since the baseline {age:.1f} s ago, largest growth first; "
            "this snapshot is the baseline now."
        )
        return _report("diff", False, age, sites, note)

    def stop(self) -> bool:
        """Stop tracing and forget the baseline; False if it was not on."""
        self._baseline = None
        if not tracemalloc.is_tracing():
            return False
        tracemalloc.stop()
        return True

    def _keep(self, current: tracemalloc.Snapshot) -> None:
        self._baseline = current
        self._baseline_at = time.monotonic()


def _start_tracing() -> bool:
    if tracemalloc.is_tracing():
        return False
    tracemalloc.start()
    return True


def _take_snapshot(collect: bool) -> tracemalloc.Snapshot:
    if collect:
        gc.collect()
    return tracemalloc.take_snapshot().filter_traces(_FILTERS)


def _started_note() -> str:
    return (
        "Tracing was off: this request started it, so only memory allocated from now on "
        "is traced. " + TRACING_COST + " heap?stop=1 stops it."
    )


def _report(
    kind: str, started: bool, age: float | None, sites: tuple[HeapSite, ...], note: str
) -> HeapReport:
    traced, peak = tracemalloc.get_traced_memory()
    return HeapReport(
        kind=kind,
        started_tracing=started,
        frames_per_allocation=tracemalloc.get_traceback_limit(),
        traced_bytes=traced,
        traced_peak_bytes=peak,
        tracing_overhead_bytes=tracemalloc.get_tracemalloc_memory(),
        baseline_age_seconds=age,
        sites=sites,
        note=note,
    )


def _filename(traceback: tracemalloc.Traceback) -> str:
    filename = traceback[0].filename
    marker = os.sep + "site-packages" + os.sep
    return filename.rsplit(marker, 1)[1] if marker in filename else filename
