"""Seeing inside a running server: one snapshot, Prometheus metrics, a pprof-style endpoint.

``snapshot(server)`` returns everything the server counts as one frozen,
JSON-ready :class:`Snapshot` (``snapshot.py``); ``metrics.py`` turns it into
Prometheus' text format. ``Server(debug_address=("127.0.0.1", 6060))`` (the
``millpond`` command's ``--debug-port``) serves both, and pages for a
browser, over HTTP from inside the server (``endpoint.py``, which needs h11:
the ``debug`` extra): see docs/debugging.md. Everything here reads public
statistics only.
"""

from .address import check_debug_address, worker_debug_address, worker_debug_listing
from .metrics import exposition, metric_families
from .snapshot import (
    BudgetSnapshot,
    ConnectionsSnapshot,
    Holder,
    LeaseSite,
    PollerSnapshot,
    PoolSnapshot,
    ProcessSnapshot,
    SizeClassSnapshot,
    Snapshot,
    snapshot,
)

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
    "check_debug_address",
    "exposition",
    "metric_families",
    "snapshot",
    "worker_debug_address",
    "worker_debug_listing",
]
