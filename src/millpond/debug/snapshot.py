"""One snapshot of everything a running server counts, as plain JSON-ready values.

This module owns :func:`snapshot` and the frozen dataclasses it returns. It
reads only public statistics (``Server.statistics()``,
``Server.connection_statistics()``, the limiter's, the pool's and the
poller's ``statistics()``) plus three facts about the process (its resident
memory, open descriptors and Trio tasks), and copies them into small frozen
dataclasses of ints, floats, strings, tuples and string-keyed dicts, so that
``snapshot(server).as_dict()`` goes through :func:`json.dumps` unchanged and
nothing in it refers back to a live object (an owner is its ``repr``, a
pressure level its name). The Prometheus text (``metrics.py``) and every page
of the debug endpoint (``pages.py``) are made from it.

The per-connection list costs a ``getpeername`` and a dict lookup per
connection, so it is there only when asked for (``connections=True``); the
rest is a few hundred attribute reads whatever the load, plus a walk of the
Trio task tree to count tasks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._core.poller import PollerStatistics
from ..memory.buffers import BufferPoolStatistics
from ..memory.limiter import WAIT_SECONDS_BUCKETS, BufferLimiterStatistics

if TYPE_CHECKING:
    from ..server import ConnectionStatistics, Server

__all__ = [
    "BudgetSnapshot",
    "ConnectionsSnapshot",
    "Holder",
    "LeaseSite",
    "PollerSnapshot",
    "PoolSnapshot",
    "ProcessSnapshot",
    "SizeClassSnapshot",
    "Snapshot",
    "count_tasks",
    "snapshot",
]

#: Names of the pressure levels, in ``Pressure`` order (``pressure_seconds`` keys).
PRESSURE_LEVELS = ("none", "pressure", "hard")

#: Labels of ``PollerStatistics.batches``: how many events one poll returned.
BATCH_SIZES = ("1-3", "4-15", "16-63", "64-255", "256-1023", "1024")


@dataclass(frozen=True, slots=True)
class ConnectionsSnapshot:
    """The server's connections: open now, accepted and closed so far, accepting paused.

    ``closed`` maps each close reason (``millpond.server.CLOSE_REASONS``: eof,
    done, reset, each timeout kind, handshake_timeout, tls_error, shutdown,
    handler_error) to a count.
    """

    addresses: tuple[str, ...]
    open: int
    accepted: int
    closed: Mapping[str, int]
    handler_errors: int
    setup_errors: int
    accept_backoffs: int
    accept_pauses: int
    accept_paused_seconds: float
    shutting_down: bool


@dataclass(frozen=True, slots=True)
class Holder:
    """One of the largest holders of budget: its ``repr`` and the bytes it holds."""

    owner: str
    bytes: int


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """The limiter: configuration, use, waiters, pressure, the largest holders, wait times.

    ``wait_seconds_buckets`` pairs each upper bound of
    ``millpond.memory.limiter.WAIT_SECONDS_BUCKETS`` (then ``inf``) with the
    number of queued requests that waited at most that long (not cumulative);
    requests granted at once are not in it.
    """

    total_bytes: int
    reserved_bytes: int
    pressure_bytes: int
    bytes_in_use: int
    bytes_available: int
    peak_bytes_in_use: int
    waiting: int
    bytes_waited_for: int
    grants: int
    timeouts: int
    pressure: str
    pressure_seconds: Mapping[str, float]
    pressure_changes: int
    top_holders: tuple[Holder, ...]
    wait_seconds_buckets: tuple[tuple[float, int], ...]
    wait_seconds_total: float


@dataclass(frozen=True, slots=True)
class SizeClassSnapshot:
    """One size class of the pool: slabs mapped, buffers leased and free, slabs trimmed."""

    size: int
    slabs: int
    buffers: int
    leased: int
    free: int
    slabs_trimmed: int


@dataclass(frozen=True, slots=True)
class LeaseSite:
    """Where a tracked buffer was leased (a leak's, or a live lease's), and its capacity."""

    filename: str
    lineno: int
    task: str
    capacity: int


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The buffer pool: per size class, bytes by kind, totals, and the leaks so far.

    ``bytes_mapped`` is what the pool has mapped (slabs and dedicated
    buffers); ``recent_leaks`` the last tracked leaks, oldest first.
    """

    size_classes: tuple[SizeClassSnapshot, ...]
    bytes_mapped: int
    bytes_leased: int
    bytes_idle: int
    bytes_fragmented: int
    bytes_quarantined: int
    bytes_scratch: int
    dedicated_buffers: int
    bytes_dedicated: int
    leases: int
    releases: int
    slabs_trimmed: int
    bytes_trimmed: int
    leak_detection: str
    leaks_detected: int
    recent_leaks: tuple[LeaseSite, ...]


@dataclass(frozen=True, slots=True)
class PollerSnapshot:
    """The poller: sockets, parked tasks, wake-ups, events, edges, empty polls, batches.

    ``empty_polls`` are the spurious wake-ups (a dispatcher wake-up that found
    no event); ``edges_remembered`` minus the stale edges is roughly the
    remembered edges that were used; ``batches`` maps a range of events per
    poll (``BATCH_SIZES``) to how many polls returned that many.
    """

    backend: str
    registered: int
    tasks_waiting_read: int
    tasks_waiting_write: int
    wakeups: int
    events: int
    edges_remembered: int
    stale_read_edges: int
    stale_write_edges: int
    empty_polls: int
    batches: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """The process: its id, resident memory and open descriptors (Linux; else -1), Trio tasks."""

    pid: int
    rss_bytes: int
    open_fds: int
    tasks: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a running server counts, at one moment; see :func:`snapshot`.

    ``limiter`` and ``pool`` are None for a server made with ``pooled=False``
    (and ``pool`` and ``poller`` before it runs); ``connection_list`` is None
    unless asked for: then one ``millpond.server.ConnectionStatistics`` per
    open connection (peer, age, bytes each way, budget held now, state), as
    ``Server.connection_statistics()`` gives them. :meth:`as_dict` is ready
    for :func:`json.dumps`.
    """

    taken_at: float
    connections: ConnectionsSnapshot
    limiter: BudgetSnapshot | None
    pool: PoolSnapshot | None
    poller: PollerSnapshot | None
    process: ProcessSnapshot
    connection_list: tuple[ConnectionStatistics, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as nested dicts, lists and scalars (``json.dumps`` takes it as is)."""
        plain = _plain(self)
        assert isinstance(plain, dict)
        return plain


def _plain(value: object) -> object:
    # dataclasses.asdict keeps tuples as tuples and dict subclasses as they are;
    # JSON wants lists and plain dicts, and inf is not JSON: say "+Inf" as Prometheus does.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value == float("inf"):
        return "+Inf"
    return value


def snapshot(server: Server, connections: bool = False) -> Snapshot:
    """Everything ``server`` counts, now, as one frozen :class:`Snapshot`.

    With ``connections=True`` it also lists every open connection (a syscall
    each). Call it in the server's Trio run, from any task::

        import json, millpond.debug
        print(json.dumps(millpond.debug.snapshot(server).as_dict(), indent=1))
    """
    statistics = server.statistics()
    limiter = server.limiter
    pool = server.pool
    poller = server.poller
    return Snapshot(
        taken_at=time.time(),
        connections=ConnectionsSnapshot(
            addresses=tuple(_address_text(a) for a in statistics.addresses),
            open=statistics.connections_active,
            accepted=statistics.connections_accepted,
            closed=dict(statistics.closed),
            handler_errors=statistics.handler_errors,
            setup_errors=statistics.setup_errors,
            accept_backoffs=statistics.accept_backoffs,
            accept_pauses=statistics.accept_pauses,
            accept_paused_seconds=statistics.accept_paused_seconds,
            shutting_down=statistics.shutting_down,
        ),
        limiter=None if limiter is None else _budget(limiter.statistics()),
        pool=None if pool is None else _pool(pool.statistics()),
        poller=None if poller is None else _poller(poller.statistics()),
        process=ProcessSnapshot(
            pid=os.getpid(), rss_bytes=_rss_bytes(), open_fds=_open_fds(), tasks=count_tasks()
        ),
        connection_list=server.connection_statistics() if connections else None,
    )


def _budget(s: BufferLimiterStatistics) -> BudgetSnapshot:
    return BudgetSnapshot(
        total_bytes=s.total_bytes,
        reserved_bytes=s.reserved_bytes,
        pressure_bytes=s.pressure_bytes,
        bytes_in_use=s.bytes_in_use,
        bytes_available=s.bytes_available,
        peak_bytes_in_use=s.peak_bytes_in_use,
        waiting=s.tasks_waiting,
        bytes_waited_for=s.bytes_waited_for,
        grants=s.grants,
        timeouts=s.timeouts,
        pressure=PRESSURE_LEVELS[int(s.pressure)],
        pressure_seconds=dict(zip(PRESSURE_LEVELS, s.pressure_seconds, strict=True)),
        pressure_changes=s.pressure_changes,
        top_holders=tuple(Holder(owner, nbytes) for owner, nbytes in s.top_holders),
        wait_seconds_buckets=tuple(
            zip((*WAIT_SECONDS_BUCKETS, float("inf")), s.wait_seconds_buckets, strict=True)
        ),
        wait_seconds_total=s.wait_seconds_total,
    )


def _pool(s: BufferPoolStatistics) -> PoolSnapshot:
    return PoolSnapshot(
        size_classes=tuple(
            SizeClassSnapshot(
                size=c.size,
                slabs=c.slabs,
                buffers=c.buffers_total,
                leased=c.buffers_leased,
                free=c.buffers_total - c.buffers_leased,
                slabs_trimmed=c.slabs_trimmed,
            )
            for c in s.size_classes
        ),
        bytes_mapped=s.bytes_reserved_by_slabs + s.bytes_dedicated,
        bytes_leased=s.bytes_leased,
        bytes_idle=s.bytes_idle,
        bytes_fragmented=s.bytes_fragmented,
        bytes_quarantined=s.bytes_quarantined,
        bytes_scratch=s.bytes_scratch,
        dedicated_buffers=s.dedicated_buffers,
        bytes_dedicated=s.bytes_dedicated,
        leases=s.leases,
        releases=s.releases,
        slabs_trimmed=s.slabs_trimmed,
        bytes_trimmed=s.bytes_trimmed,
        leak_detection=s.leak_detection,
        leaks_detected=s.leaks_detected,
        recent_leaks=tuple(
            LeaseSite(r.filename, r.lineno, r.task_name, r.capacity) for r in s.recent_leaks
        ),
    )


def _poller(s: PollerStatistics) -> PollerSnapshot:
    return PollerSnapshot(
        backend=s.backend,
        registered=s.registered,
        tasks_waiting_read=s.tasks_waiting_read,
        tasks_waiting_write=s.tasks_waiting_write,
        wakeups=s.dispatcher_wakeups,
        events=s.events_dispatched,
        edges_remembered=s.edges_remembered,
        stale_read_edges=s.stale_read_edges,
        stale_write_edges=s.stale_write_edges,
        empty_polls=s.empty_polls,
        batches=dict(zip(BATCH_SIZES, s.batches, strict=True)),
    )


def count_tasks() -> int:
    """How many tasks the current Trio run has, system tasks included."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def _rss_bytes() -> int:
    # /proc/self/statm's second field is resident pages (Linux); -1 elsewhere.
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return -1


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return -1


def _address_text(address: Any) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
