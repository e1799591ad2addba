"""The debug endpoint's pages: from a request's path and query to a response body.

This module owns what each page says: which numbers, in which order, with
which explanation, as HTML for a browser or, with ``?format=json``, as data
(the same numbers). It does no I/O of its own: ``endpoint.py`` speaks HTTP
and calls :func:`respond`. Every page is made from a fresh
:func:`~millpond.debug.snapshot.snapshot` (or the heap profiler, or the
task tree), so two requests never share stale numbers.

| path | what |
|---|---|
| ``/debug/millpond/`` | index: a summary and a link to everything |
| ``/debug/millpond/stats`` | the whole snapshot as JSON (``?connections=1`` adds each one) |
| ``/metrics`` | Prometheus text (``metrics.py``) |
| ``/debug/millpond/connections`` | one row per connection, ``?sort=budget|age|received|sent`` |
| ``/debug/millpond/buffers`` | live tracked leases grouped by site, the budget's top holders |
| ``/debug/millpond/heap?top=N`` | tracemalloc's top sites (``heap.py``; ``gc=0``: no GC first) |
| ``/debug/millpond/heap/diff?top=N`` | what grew since the last heap profile |
| ``/debug/millpond/tasks`` | the Trio task tree (``tasks.py``) |
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..memory.leaks import LEAK_SAMPLE_INTERVAL
from . import html
from .heap import HeapProfiler, HeapReport
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import exposition, metric_families
from .snapshot import snapshot
from .tasks import TaskNode, task_tree

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["Response", "respond"]

# How many rows a page shows unless asked for more, and the most it will show:
# a page must stay small enough to render while the server is in trouble.
DEFAULT_ROWS = 100
MAX_ROWS = 10_000

HTML = "text/html; charset=utf-8"
JSON = "application/json"

#: The orders the connections page can sort by, each a key of a connection's row.
CONNECTION_ORDERS: Mapping[str, str] = {
    "budget": "budget_held",
    "age": "age_seconds",
    "received": "bytes_received",
    "sent": "bytes_sent",
}


@dataclass(frozen=True, slots=True)
class Response:
    """What to send back: a status, a Content-Type, the body, and a Location for redirects."""

    status: int
    content_type: str
    body: bytes
    location: str | None = None


class _BadRequest(Exception):
    """A query parameter out of range: a 400 with this message."""


async def respond(target: str, server: Server, profiler: HeapProfiler) -> Response:
    """The response to ``GET target`` (path and query) for ``server``'s debug endpoint."""
    parts = urlsplit(target)
    path = parts.path
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    as_json = query.get("format") == "json"
    if path in ("", "/", "/debug", "/debug/", "/debug/millpond"):
        return Response(302, HTML, b"", location="/debug/millpond/")
    try:
        if path == "/metrics":
            families = metric_families(snapshot(server))
            if as_json:
                return _json([dataclasses.asdict(f) for f in families])
            return Response(200, METRICS_CONTENT_TYPE, exposition(families).encode())
        if path == "/debug/millpond/stats":
            connections = query.get("connections", "0") not in ("0", "")
            return _json(snapshot(server, connections=connections).as_dict())
        if path in ("/debug/millpond/heap", "/debug/millpond/heap/diff"):
            return await _heap(path, query, profiler, as_json)
        page = _PAGES.get(path)
        if page is None:
            return Response(404, "text/plain; charset=utf-8", f"no page at {path}\n".encode())
        title, data, body = page(server, query)
    except _BadRequest as exc:
        return Response(400, "text/plain; charset=utf-8", f"{exc}\n".encode())
    if as_json:
        return _json(data)
    return Response(200, HTML, html.page(title, target, body).encode())


def _json(data: object) -> Response:
    return Response(200, JSON, json.dumps(data, indent=1).encode() + b"\n")


def _rows(query: Mapping[str, str], name: str = "limit") -> int:
    text = query.get(name, str(DEFAULT_ROWS))
    try:
        rows = int(text)
    except ValueError:
        raise _BadRequest(f"{name} must be a whole number, not {text!r}") from None
    if not 1 <= rows <= MAX_ROWS:
        raise _BadRequest(f"{name} must be between 1 and {MAX_ROWS}, not {rows}")
    return rows


# -- index -----------------------------------------------------------------------------------

_DESCRIPTIONS = {
    "stats": "everything the server counts, as JSON (add ?connections=1 for each connection)",
    "metrics": "the same as Prometheus metrics (text exposition format 0.0.4)",
    "connections": "one row per open connection: peer, age, bytes, budget held, state",
    "buffers": "who holds buffer memory: live tracked leases by lease site, top holders",
    "heap": "tracemalloc's top allocation sites (starts tracing on first use: see its note)",
    "heap/diff": "what grew since the previous heap profile (pprof -base)",
    "tasks": "the Trio task tree, each task with the line it waits at",
}


def _index(server: Server, query: Mapping[str, str]) -> tuple[str, object, str]:
    snap = snapshot(server)
    c, b, p, proc = snap.connections, snap.limiter, snap.pool, snap.process
    summary = [
        ("listening on", ", ".join(c.addresses) or "(not yet)"),
        ("connections open", c.open),
        ("connections accepted", c.accepted),
        ("shutting down", "yes" if c.shutting_down else "no"),
    ]
    if b is not None:
        summary += [
            ("budget in use", f"{html.size(b.bytes_in_use)} of {html.size(b.total_bytes)}"),
            ("pressure", b.pressure),
            ("waiting for memory", f"{b.waiting} ({html.size(b.bytes_waited_for)})"),
        ]
    if p is not None:
        summary.append(("pool mapped", html.size(p.bytes_mapped)))
    summary += [
        ("resident memory", html.size(proc.rss_bytes)),
        ("open file descriptors", proc.open_fds),
        ("Trio tasks", proc.tasks),
    ]
    links = "".join(
        f"<li>{html.link(href, label)}: {html.escape(_DESCRIPTIONS[label])}</li>"
        for href, label in html.PAGES
        if label in _DESCRIPTIONS
    )
    closed = html.table(["reason", "closed"], sorted(c.closed.items()), numeric=1)
    body = (
        html.table(["", "now"], summary)
        + f"<h2>Pages</h2><ul>{links}</ul>"
        + "<p>Every page also as JSON: add <code>?format=json</code>.</p>"
        + f"<h2>Connections closed, by reason</h2>{closed}"
    )
    data = {"summary": dict(summary), "pages": {label: href for href, label in html.PAGES}}
    return "millpond debug", data, body


# -- connections -----------------------------------------------------------------------------


def _connections(server: Server, query: Mapping[str, str]) -> tuple[str, object, str]:
    order = query.get("sort", "budget")
    if order not in CONNECTION_ORDERS:
        raise _BadRequest(f"sort must be one of {', '.join(CONNECTION_ORDERS)}, not {order!r}")
    limit = _rows(query)
    snap = snapshot(server, connections=True)
    listed = snap.connection_list or ()
    key = CONNECTION_ORDERS[order]
    rows = sorted(listed, key=lambda c: getattr(c, key), reverse=True)[:limit]
    states = Counter(c.state for c in listed)

    def header(label: str, by: str) -> str:
        return html.link(f"?sort={by}&limit={limit}", label) + (" &#9660;" if by == order else "")

    body = (
        f"<p>{len(listed)} open; by state: "
        + html.escape(", ".join(f"{n} {s}" for s, n in states.most_common()) or "none")
        + f". Showing {len(rows)}, sorted by {html.escape(order)}, largest first.</p>"
        + html.table(
            [
                "peer",
                "state",
                header("age (s)", "age"),
                header("budget held", "budget"),
                header("bytes in", "received"),
                header("bytes out", "sent"),
            ],
            (
                (
                    c.peer,
                    c.state,
                    f"{c.age_seconds:.1f}",
                    c.budget_held,
                    c.bytes_received,
                    c.bytes_sent,
                )
                for c in rows
            ),
            numeric=4,
        )
    )
    data = {
        "open": len(listed),
        "states": dict(states),
        "sort": order,
        "connections": [dataclasses.asdict(c) for c in rows],
    }
    return "connections", data, body


# -- buffers ---------------------------------------------------------------------------------


def _buffers(server: Server, query: Mapping[str, str]) -> tuple[str, object, str]:
    limit = _rows(query)
    pool = server.pool
    snap = snapshot(server)
    tracked = pool.tracked_leases() if pool is not None else ()
    groups: dict[tuple[str, int, str], list[int]] = {}
    for lease in tracked:
        counts = groups.setdefault((lease.filename, lease.lineno, lease.task_name), [0, 0])
        counts[0] += 1
        counts[1] += lease.capacity
    sites = sorted(groups.items(), key=lambda item: (-item[1][1], item[0]))[:limit]
    p = snap.pool
    if p is None:
        level, outstanding, leased = "none (pooled=False)", 0, 0
    else:
        level, outstanding, leased = p.leak_detection, p.leases - p.releases, p.bytes_leased
    sampling = {
        "all": "every lease records its site, so every outstanding lease is listed.",
        "sampled": f"1 lease in {LEAK_SAMPLE_INTERVAL} (at random) records its site: the "
        "table shows that sample. Make the pool with BufferPool(limiter, "
        'leak_detection="all") to see every lease.',
        "off": 'no lease records its site (leak_detection="off").',
    }.get(level, "")
    holders = snap.limiter.top_holders if snap.limiter is not None else ()
    leaks = p.recent_leaks if p is not None else ()
    body = (
        f"<p>{outstanding} leases outstanding ({html.size(leased)}); {len(tracked)} tracked. "
        f"Leak detection: <b>{html.escape(level)}</b>: {html.escape(sampling)}</p>"
        "<p class=note>Only <code>receive_buffer()</code> and your own <code>pool.lease()"
        "</code> calls lease buffers; <code>receive_some()</code> charges the budget without "
        "one, so its chunks show under the budget's holders below, not as leases.</p>"
        "<h2>Outstanding tracked leases, by lease site</h2>"
        + html.table(
            ["site", "task", "leases", "bytes"],
            ((f"{f}:{line}", task, n, nbytes) for (f, line, task), (n, nbytes) in sites),
            numeric=2,
        )
        + "<h2>Largest holders of the budget</h2>"
        + html.table(["owner", "bytes"], ((h.owner, h.bytes) for h in holders), numeric=1)
        + "<h2>Recent leaks (collected without release(); reclaimed)</h2>"
        + html.table(
            ["site", "task", "capacity"],
            ((f"{x.filename}:{x.lineno}", x.task, x.capacity) for x in leaks),
            numeric=1,
        )
    )
    data = {
        "leak_detection": level,
        "outstanding_leases": outstanding,
        "bytes_leased": leased,
        "tracked_leases": len(tracked),
        "sites": [
            {"filename": f, "lineno": line, "task": task, "leases": n, "bytes": nbytes}
            for (f, line, task), (n, nbytes) in sites
        ],
        "top_holders": [dataclasses.asdict(h) for h in holders],
        "recent_leaks": [dataclasses.asdict(x) for x in leaks],
    }
    return "buffers", data, body


# -- heap ------------------------------------------------------------------------------------


async def _heap(
    path: str, query: Mapping[str, str], profiler: HeapProfiler, as_json: bool
) -> Response:
    if query.get("stop") not in (None, "0", ""):
        stopped = profiler.stop()
        text = "tracing stopped" if stopped else "tracing was not on"
        data: dict[str, Any] = {"stopped": stopped}
        if as_json:
            return _json(data)
        return Response(200, HTML, html.page("heap", path, f"<p>{text}.</p>").encode())
    limit = _rows(query, "top") if "top" in query else 20
    diff = path.endswith("/diff")
    collect = query.get("gc", "1") not in ("0", "")
    report = await (profiler.diff(limit, collect) if diff else profiler.top(limit, collect))
    if as_json:
        return _json(dataclasses.asdict(report))
    title = "heap diff" if diff else "heap"
    return Response(200, HTML, html.page(title, path, _heap_body(report, diff)).encode())


def _heap_body(report: HeapReport, diff: bool) -> str:
    facts = (
        f"Traced now: {html.size(report.traced_bytes)} (peak "
        f"{html.size(report.traced_peak_bytes)}); tracemalloc's own tables: "
        f"{html.size(report.tracing_overhead_bytes)}; "
        f"{report.frames_per_allocation} frame(s) per allocation."
    )
    if diff:
        headers = ["site", "grew by (bytes)", "blocks added", "bytes now", "blocks now"]
        rows: Any = (
            (f"{s.filename}:{s.lineno}", s.size_diff_bytes, s.count_diff, s.size_bytes, s.count)
            for s in report.sites
        )
        numeric = 4
    else:
        headers = ["site", "bytes", "blocks"]
        rows = ((f"{s.filename}:{s.lineno}", s.size_bytes, s.count) for s in report.sites)
        numeric = 2
    return (
        f"<p class=note>{html.escape(report.note)}</p><p>{html.escape(facts)}</p>"
        + html.table(headers, rows, numeric=numeric)
        + "<p>Stop tracing: "
        + html.link("/debug/millpond/heap?stop=1", "heap?stop=1")
        + "</p>"
    )


# -- tasks -----------------------------------------------------------------------------------


def _tasks(server: Server, query: Mapping[str, str]) -> tuple[str, object, str]:
    root = task_tree()
    total = _count(root)
    body = (
        f"<p>{total} tasks. Alike tasks (same name, same frames, same children) are folded "
        "into one line with a count; open a line for its frames, outermost first.</p>"
        f'<ul class="tree">{_task_html(root)}</ul>'
    )
    return "tasks", {"tasks": total, "root": dataclasses.asdict(root)}, body


def _count(node: TaskNode) -> int:
    return node.count * (1 + sum(_count(t) for n in node.nurseries for t in n.tasks))


def _task_html(node: TaskNode) -> str:
    count = f"{node.count} &times; " if node.count > 1 else ""
    frames = "\n".join(node.frames) or "(no frames)"
    children = "".join(
        f'<li>nursery<ul class="tree">{"".join(_task_html(t) for t in nursery.tasks)}</ul></li>'
        for nursery in node.nurseries
    )
    return (
        f"<li><details><summary>{count}<b>{html.escape(node.name)}</b>, waiting at "
        f"<code>{html.escape(node.waiting_at)}</code></summary>"
        f"<pre>{html.escape(frames)}</pre></details>"
        + (f'<ul class="tree">{children}</ul>' if children else "")
        + "</li>"
    )


_PAGES: Mapping[str, Callable[[Server, Mapping[str, str]], tuple[str, object, str]]] = {
    "/debug/millpond/": _index,
    "/debug/millpond/connections": _connections,
    "/debug/millpond/buffers": _buffers,
    "/debug/millpond/tasks": _tasks,
}
