"""Prometheus metrics from a :class:`~millpond.debug.snapshot.Snapshot`.

This module owns the metric names, their types and help texts, and the text
exposition format (version 0.0.4, what ``/metrics`` serves and every
Prometheus server scrapes). Names follow Prometheus' conventions: a
``millpond_`` prefix, base units (bytes, seconds), ``_total`` on counters,
labels for what varies (a close reason, a size class, a pressure level)
rather than one name each, and no ratio that a query can compute. The wait
for memory is a histogram (``millpond_budget_wait_seconds``) over the
limiter's buckets. Two process metrics take the names Prometheus' own client
libraries give them (``process_resident_memory_bytes``, ``process_open_fds``),
so existing dashboards find them.

:func:`metric_families` builds the families as data (the ``?format=json``
form); :func:`exposition` writes them as text. Both are pure functions of
the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .snapshot import PRESSURE_LEVELS, Snapshot

__all__ = ["CONTENT_TYPE", "MetricFamily", "Sample", "exposition", "metric_families"]

#: The Content-Type of the text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a family: its full name (with ``_bucket``, ``_sum``...), labels, value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric: name, type (``gauge``, ``counter``, ``histogram``), help text, samples."""

    name: str
    type: str
    help: str
    samples: tuple[Sample, ...]


def _one(name: str, kind: str, help_text: str, value: float) -> MetricFamily:
    return MetricFamily(name, kind, help_text, (Sample(name, {}, value),))


def _labelled(
    name: str, kind: str, help_text: str, label: str, values: Iterable[tuple[str, float]]
) -> MetricFamily:
    samples = tuple(Sample(name, {label: key}, value) for key, value in values)
    return MetricFamily(name, kind, help_text, samples)


def metric_families(snap: Snapshot) -> tuple[MetricFamily, ...]:
    """Every metric of ``snap``, in a stable order."""
    c = snap.connections
    families = [
        _one("millpond_connections_open", "gauge", "Connections accepted and not closed.", c.open),
        _one(
            "millpond_connections_accepted_total",
            "counter",
            "Connections accepted.",
            c.accepted,
        ),
        _labelled(
            "millpond_connections_closed_total",
            "counter",
            "Connections closed, by reason (eof, done, reset, timeouts, tls_error, "
            "shutdown, handler_error).",
            "reason",
            c.closed.items(),
        ),
        _one(
            "millpond_connection_setup_errors_total",
            "counter",
            "Accepted connections dropped because setting them up failed.",
            c.setup_errors,
        ),
        _one(
            "millpond_accept_backoffs_total",
            "counter",
            "Times accept ran out of descriptors or memory and backed off.",
            c.accept_backoffs,
        ),
        _one(
            "millpond_accept_pauses_total",
            "counter",
            "Times accepting paused at max_connections.",
            c.accept_pauses,
        ),
        _one(
            "millpond_accept_paused_seconds_total",
            "counter",
            "Time accepting spent paused at max_connections.",
            c.accept_paused_seconds,
        ),
        _one(
            "millpond_shutting_down",
            "gauge",
            "1 once a graceful shutdown has begun.",
            int(c.shutting_down),
        ),
    ]
    families += _budget_families(snap)
    families += _pool_families(snap)
    families += _poller_families(snap)
    p = snap.process
    families += [
        _one("millpond_tasks", "gauge", "Trio tasks in the server's run.", p.tasks),
        _one("process_resident_memory_bytes", "gauge", "Resident memory size.", p.rss_bytes),
        _one("process_open_fds", "gauge", "Open file descriptors.", p.open_fds),
    ]
    return tuple(families)


def _budget_families(snap: Snapshot) -> list[MetricFamily]:
    b = snap.limiter
    if b is None:
        return []
    cumulative = 0
    buckets = []
    for bound, count in b.wait_seconds_buckets:
        cumulative += count
        le = {"le": _le(bound)}
        buckets.append(Sample("millpond_budget_wait_seconds_bucket", le, cumulative))
    wait = MetricFamily(
        "millpond_budget_wait_seconds",
        "histogram",
        "Time requests queued for budget (requests granted at once are not observed).",
        (
            *buckets,
            Sample("millpond_budget_wait_seconds_sum", {}, b.wait_seconds_total),
            Sample("millpond_budget_wait_seconds_count", {}, cumulative),
        ),
    )
    return [
        _one("millpond_budget_limit_bytes", "gauge", "The budget (total_bytes).", b.total_bytes),
        _one(
            "millpond_budget_reserved_bytes",
            "gauge",
            "Bytes of the budget only holders may use.",
            b.reserved_bytes,
        ),
        _one(
            "millpond_budget_pressure_threshold_bytes",
            "gauge",
            "Bytes in use from which reads shrink to the minimum.",
            b.pressure_bytes,
        ),
        _one("millpond_budget_bytes_in_use", "gauge", "Bytes of budget held.", b.bytes_in_use),
        _one(
            "millpond_budget_peak_bytes_in_use",
            "gauge",
            "Highest bytes of budget ever held at once.",
            b.peak_bytes_in_use,
        ),
        _one(
            "millpond_budget_waiting_requests",
            "gauge",
            "Requests queued for budget.",
            b.waiting,
        ),
        _one(
            "millpond_budget_waiting_bytes",
            "gauge",
            "Bytes the queued requests ask for.",
            b.bytes_waited_for,
        ),
        _one("millpond_budget_grants_total", "counter", "Requests granted.", b.grants),
        _one(
            "millpond_budget_timeouts_total",
            "counter",
            "Queued requests that gave up (cancelled: a timeout, a close, a shutdown).",
            b.timeouts,
        ),
        _one(
            "millpond_budget_pressure_level",
            "gauge",
            "Pressure level now: 0 none, 1 pressure, 2 hard (only the reserve left).",
            PRESSURE_LEVELS.index(b.pressure),
        ),
        _labelled(
            "millpond_budget_pressure_seconds_total",
            "counter",
            "Time spent at each pressure level.",
            "level",
            b.pressure_seconds.items(),
        ),
        _one(
            "millpond_budget_pressure_changes_total",
            "counter",
            "Changes of pressure level.",
            b.pressure_changes,
        ),
        wait,
    ]


def _pool_families(snap: Snapshot) -> list[MetricFamily]:
    pool = snap.pool
    if pool is None:
        return []
    classes = pool.size_classes
    by_state = tuple(
        Sample("millpond_pool_buffers", {"size_class": str(c.size), "state": state}, n)
        for c in classes
        for state, n in (("leased", c.leased), ("free", c.free))
    )
    return [
        _labelled(
            "millpond_pool_slabs",
            "gauge",
            "Slabs mapped, by size class (bytes).",
            "size_class",
            ((str(c.size), c.slabs) for c in classes),
        ),
        MetricFamily(
            "millpond_pool_buffers",
            "gauge",
            "Buffers in mapped slabs, by size class and state.",
            by_state,
        ),
        _labelled(
            "millpond_pool_slabs_trimmed_total",
            "counter",
            "Slabs given back to the OS, by size class.",
            "size_class",
            ((str(c.size), c.slabs_trimmed) for c in classes),
        ),
        _one(
            "millpond_pool_mapped_bytes",
            "gauge",
            "Bytes mapped by slabs and dedicated buffers.",
            pool.bytes_mapped,
        ),
        _one("millpond_pool_leased_bytes", "gauge", "Capacity of live leases.", pool.bytes_leased),
        _one("millpond_pool_idle_bytes", "gauge", "Bytes in slabs with no lease.", pool.bytes_idle),
        _one(
            "millpond_pool_fragmented_bytes",
            "gauge",
            "Free slots of partly used slabs, charged to the pool.",
            pool.bytes_fragmented,
        ),
        _one(
            "millpond_pool_quarantined_bytes",
            "gauge",
            "Slots kept out of use while a view of a released lease lives.",
            pool.bytes_quarantined,
        ),
        _one(
            "millpond_pool_dedicated_buffers",
            "gauge",
            "Live leases above 64 KiB, each its own mapping.",
            pool.dedicated_buffers,
        ),
        _one("millpond_pool_leases_total", "counter", "Buffers leased.", pool.leases),
        _one("millpond_pool_releases_total", "counter", "Buffers given back.", pool.releases),
        _one(
            "millpond_pool_trimmed_bytes_total",
            "counter",
            "Bytes of slabs given back to the OS.",
            pool.bytes_trimmed,
        ),
        _one(
            "millpond_pool_leaks_total",
            "counter",
            "Buffers garbage collected without release() (reclaimed).",
            pool.leaks_detected,
        ),
    ]


def _poller_families(snap: Snapshot) -> list[MetricFamily]:
    p = snap.poller
    if p is None:
        return []
    polls = [("0", p.empty_polls), *p.batches.items()]
    return [
        _one(
            "millpond_poller_registered_sockets",
            "gauge",
            "Sockets registered with the poller.",
            p.registered,
        ),
        _labelled(
            "millpond_poller_waiting_tasks",
            "gauge",
            "Tasks parked until a socket is ready, by direction.",
            "direction",
            (("read", p.tasks_waiting_read), ("write", p.tasks_waiting_write)),
        ),
        _one(
            "millpond_poller_wakeups_total",
            "counter",
            "Times the epoll dispatcher woke up.",
            p.wakeups,
        ),
        _one(
            "millpond_poller_events_total",
            "counter",
            "Readiness events read from the kernel.",
            p.events,
        ),
        _one(
            "millpond_poller_edges_remembered_total",
            "counter",
            "Events that found no parked task and were kept for the next one.",
            p.edges_remembered,
        ),
        _labelled(
            "millpond_poller_stale_edges_total",
            "counter",
            "Reads or writes readiness allowed that found nothing (EAGAIN), by direction.",
            "direction",
            (("read", p.stale_read_edges), ("write", p.stale_write_edges)),
        ),
        _labelled(
            "millpond_poller_polls_total",
            "counter",
            'Dispatcher polls, by how many events they returned ("0": a spurious wake-up).',
            "events",
            polls,
        ),
    ]


def exposition(families: Iterable[MetricFamily]) -> str:
    """The families in Prometheus' text exposition format 0.0.4."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
            where = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample.name}{where} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
