"""The debug endpoint, fetched over loopback with a real HTTP client (httpx).

Every page is fetched as HTML and as JSON; the assertions are on what the
pages say (a connection's peer, a lease's file and line, the line a handler
waits at, a heap site), not on how they look. The index page in a browser is
``test_debug_browser.py``'s; the snapshot and the metrics alone are
``test_debug_snapshot.py``'s.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from conftest import server_port
from prometheus_client.parser import text_string_to_metric_families

import millpond
from millpond.debug import endpoint
from millpond.debug.snapshot import BATCH_SIZES, PRESSURE_LEVELS

# Hang guard only: a page over loopback takes milliseconds.
GUARD_SECONDS = 20

PAGES = [
    "/debug/millpond/",
    "/debug/millpond/stats",
    "/metrics",
    "/debug/millpond/connections",
    "/debug/millpond/buffers",
    "/debug/millpond/heap?top=5",
    "/debug/millpond/heap/diff",
    "/debug/millpond/tasks",
]


async def hold(stream: millpond.Connection) -> None:
    """Read one chunk, then hold it (and whatever it leased) until the peer closes."""
    async for _ in stream:
        await trio.sleep_forever()


async def start_debugged(
    nursery: trio.Nursery, handler: Callable[[millpond.Connection], Any] = hold, **kwargs: Any
) -> tuple[millpond.Server, httpx.AsyncClient]:
    """A server with its debug endpoint on 127.0.0.1, and an HTTP client for that endpoint."""
    server = millpond.Server(handler, 0, host="127.0.0.1", debug_address=("127.0.0.1", 0), **kwargs)
    await nursery.start(server.run)
    (address,) = server.debug_addresses
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{address[1]}", timeout=GUARD_SECONDS)
    return server, client


@pytest.fixture
async def debugged(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[millpond.Server, httpx.AsyncClient]]:
    """A server that holds what it reads, with its debug endpoint and a client for it."""
    server, client = await start_debugged(nursery)
    async with client:
        yield server, client


async def client_of(server: millpond.Server, data: bytes = b"hello") -> millpond.Connection:
    """A connection to ``server`` that has sent ``data``."""
    connection = await millpond.open_connection("127.0.0.1", server_port(server))
    await connection.send_all(data)
    return connection


def peer_text(client: millpond.Connection) -> str:
    """How the server names this client: its address as "host:port"."""
    host, port = client.getsockname()[:2]
    return f"{host}:{port}"


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    with trio.fail_after(GUARD_SECONDS):
        while not condition():
            await trio.sleep(0.01)


@pytest.fixture
def no_tracing_left() -> Any:
    """Stop tracemalloc after the test, whoever started it: it slows every later test."""
    yield
    tracemalloc.stop()


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_answers_in_its_own_format_and_as_json(
    debugged: tuple[millpond.Server, httpx.AsyncClient], path: str, no_tracing_left: None
) -> None:
    _, client = debugged
    page = await client.get(path)
    assert page.status_code == 200
    expected = {"/metrics": "text/plain", "/debug/millpond/stats": "application/json"}
    assert page.headers["content-type"].startswith(expected.get(path.split("?")[0], "text/html"))
    if page.headers["content-type"].startswith("text/html"):
        assert "<title>millpond" in page.text and "format=json" in page.text
    separator = "&" if "?" in path else "?"
    data = await client.get(f"{path}{separator}format=json")
    assert data.status_code == 200
    assert data.headers["content-type"] == "application/json"
    json.loads(data.text)


async def test_the_index_links_every_page(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    _, client = debugged
    index = (await client.get("/debug/millpond/")).text
    for path in PAGES:
        assert f'href="{path.split("?")[0]}"' in index, path
    assert (await client.get("/")).headers["location"] == "/debug/millpond/"


async def test_stats_count_an_open_connection_and_list_it_on_request(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    server, client = debugged
    async with await client_of(server) as connection:
        await until(lambda: server.statistics().connections_active == 1)
        stats = (await client.get("/debug/millpond/stats")).json()
        assert stats["connections"]["open"] == 1
        assert stats["connection_list"] is None
        stats = (await client.get("/debug/millpond/stats?connections=1")).json()
        (listed,) = stats["connection_list"]
        assert listed["peer"] == peer_text(connection)
        assert stats["process"]["open_fds"] > 0 and stats["process"]["tasks"] > 0


async def fetch_while_a_chunk_is_held(
    server: millpond.Server, client: httpx.AsyncClient, *paths: str
) -> list[httpx.Response]:
    """GET ``paths`` while one connection to ``server`` (handler ``hold``) holds a chunk."""
    limiter = server.limiter
    assert limiter is not None
    async with await client_of(server):
        await until(lambda: limiter.bytes_in_use > 0)  # hold() keeps what it read
        return [await client.get(path) for path in paths]


async def test_stats_hold_every_section_the_issue_lists(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    (page,) = await fetch_while_a_chunk_is_held(*debugged, "/debug/millpond/stats?connections=1")
    stats = page.json()
    connections, budget, pool, poller = (
        stats[k] for k in ("connections", "limiter", "pool", "poller")
    )
    assert set(connections["closed"]) == set(millpond.server.CLOSE_REASONS)
    assert connections["accept_paused_seconds"] == 0.0
    assert set(budget["pressure_seconds"]) == set(PRESSURE_LEVELS)
    assert budget["pressure_seconds"]["none"] > 0
    (holder,) = budget["top_holders"]
    assert "Connection" in holder["owner"] and holder["bytes"] == budget["bytes_in_use"]
    for size_class in pool["size_classes"]:
        assert {"slabs", "leased", "free", "slabs_trimmed"} <= set(size_class)
    assert pool["recent_leaks"] == [] and pool["leaks_detected"] == 0
    assert set(poller["batches"]) == set(BATCH_SIZES) and sum(poller["batches"].values()) > 0
    assert poller["wakeups"] > 0 and poller["registered"] >= 2  # listener, connection
    (listed,) = stats["connection_list"]
    assert listed["state"] == "in handler" and listed["budget_held"] == holder["bytes"]


async def test_metrics_over_http_parse_and_agree_with_stats(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    pages = await fetch_while_a_chunk_is_held(*debugged, "/metrics", "/debug/millpond/stats")
    metrics, stats = pages[0], pages[1].json()
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    assert values[("millpond_connections_open", ())] == 1
    in_use = values[("millpond_budget_bytes_in_use", ())]
    assert in_use == stats["limiter"]["bytes_in_use"] > 0
    assert values[("millpond_budget_pressure_seconds_total", (("level", "none"),))] > 0
    assert values[("millpond_budget_wait_seconds_count", ())] == 0


async def test_connections_are_sorted_by_budget_held_or_by_age(nursery: trio.Nursery) -> None:
    async def lease_as_asked(stream: millpond.Connection) -> None:
        kib = int(await stream.receive_some())
        pool = millpond.current_server().pool
        assert pool is not None
        with await pool.lease(kib * 1024, owner=stream):
            await trio.sleep_forever()

    server, client = await start_debugged(nursery, lease_as_asked)
    async with client, await client_of(server, b"1") as older:
        await until(lambda: server.statistics().connections_active == 1)
        await trio.sleep(0.05)  # an age to tell them apart by
        async with await client_of(server, b"32") as larger:
            pool = server.pool
            assert pool is not None
            await until(lambda: pool.statistics().bytes_leased == 33 * 1024)
            peers = {peer_text(c): c for c in (older, larger)}
            for order, first in (("budget", larger), ("age", older)):
                page = await client.get(f"/debug/millpond/connections?sort={order}&format=json")
                rows = page.json()["connections"]
                assert peers[rows[0]["peer"]] is first, order
            html = (await client.get("/debug/millpond/connections?sort=age")).text
            assert 'href="?sort=budget&amp;limit=100"' in html


async def test_an_unreleased_lease_is_listed_under_buffers_with_its_file_and_line(
    nursery: trio.Nursery,
) -> None:
    lines: list[int] = []

    async def keep_a_lease(stream: millpond.Connection) -> None:
        pool = millpond.current_server().pool
        assert pool is not None
        lines.append(sys._getframe().f_lineno + 1)
        buffer = await pool.lease(3000)
        await stream.receive_some()
        buffer.release()

    limiter = millpond.BufferLimiter(1 << 20)
    pool = millpond.BufferPool(limiter, leak_detection="all")
    server, client = await start_debugged(nursery, keep_a_lease, limiter=limiter, pool=pool)
    async with client, await client_of(server, b""):
        await until(lambda: bool(lines) and pool.statistics().bytes_leased > 0)
        buffers = (await client.get("/debug/millpond/buffers?format=json")).json()
        (site,) = buffers["sites"]
        assert (site["filename"], site["lineno"]) == (__file__, lines[0])
        assert (site["leases"], site["bytes"]) == (1, 4096)
        page = (await client.get("/debug/millpond/buffers")).text
        assert f"{__file__}:{lines[0]}" in page


async def test_heap_diff_puts_what_grew_between_two_profiles_at_the_top(
    debugged: tuple[millpond.Server, httpx.AsyncClient], no_tracing_left: None
) -> None:
    _, client = debugged
    first = (await client.get("/debug/millpond/heap?format=json")).json()
    assert first["started_tracing"] and "started it" in first["note"]
    hoard = [bytearray(2000) for _ in range(1000)]
    line = sys._getframe().f_lineno - 1
    diff = (await client.get("/debug/millpond/heap/diff?top=5&format=json")).json()
    top = diff["sites"][0]
    assert (top["filename"], top["lineno"]) == (__file__, line)
    assert top["size_diff_bytes"] >= 2000 * 1000
    assert diff["baseline_age_seconds"] is not None
    del hoard
    stopped = (await client.get("/debug/millpond/heap?stop=1&format=json")).json()
    assert stopped == {"stopped": True} and not tracemalloc.is_tracing()


async def test_tasks_show_the_handler_line_a_connection_waits_at(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    server, client = debugged
    async with await client_of(server), await client_of(server):
        await until(lambda: server.statistics().connections_active == 2)
        tasks = (await client.get("/debug/millpond/tasks?format=json")).json()
        line = hold.__code__.co_firstlineno + 3  # the sleep_forever line
        where = f"tests/test_debug_endpoint.py:{line} in hold"
        found = _find(tasks["root"], lambda t: t["waiting_at"].endswith(where))
        assert found is not None and found["count"] == 2
        assert found["name"] == "millpond.connection"
        assert where in (await client.get("/debug/millpond/tasks")).text


def _find(node: dict[str, Any], matches: Callable[[dict[str, Any]], bool]) -> Any:
    if matches(node):
        return node
    for nursery in node["nurseries"]:
        for task in nursery["tasks"]:
            found = _find(task, matches)
            if found is not None:
                return found
    return None


async def test_the_endpoint_answers_while_the_budget_is_spent(nursery: trio.Nursery) -> None:
    limiter = millpond.BufferLimiter(8192)
    # No guaranteed read: a connection that holds nothing must queue like the rest.
    server, client = await start_debugged(nursery, limiter=limiter, guaranteed_read=0)
    limiter.acquire_on_behalf_of_nowait("hog", 8192)  # nothing left for anyone
    async with client, await client_of(server):
        await until(lambda: limiter.statistics().tasks_waiting == 1)
        stats = (await client.get("/debug/millpond/stats?connections=1")).json()
        assert stats["limiter"]["waiting"] == 1
        assert stats["limiter"]["pressure"] == "hard"
        assert stats["connection_list"][0]["state"] == "waiting for memory"
        assert limiter.held_by("hog") == 8192  # and the endpoint took nothing
        limiter.release_on_behalf_of("hog", 8192)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/nowhere", 404), ("/debug/millpond/connections?sort=size", 400),
     ("/debug/millpond/heap?top=0", 400), ("/debug/millpond/buffers?limit=x", 400)],
)  # fmt: skip
async def test_unknown_pages_and_bad_queries_are_client_errors(
    debugged: tuple[millpond.Server, httpx.AsyncClient], path: str, status: int
) -> None:
    _, client = debugged
    assert (await client.get(path)).status_code == status


async def test_only_get_and_head_are_answered(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    _, client = debugged
    assert (await client.post("/metrics", content=b"x")).status_code == 405
    head = await client.head("/metrics")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_a_request_head_larger_than_the_limit_is_refused(
    debugged: tuple[millpond.Server, httpx.AsyncClient],
) -> None:
    _, client = debugged
    # h11 looks at the size while the head is incomplete: one read past the limit.
    huge = {"x-filler": "y" * (endpoint.MAX_REQUEST_HEAD + endpoint.RECEIVE_BYTES + 1)}
    assert (await client.get("/metrics", headers=huge)).status_code == 431


async def test_the_debug_port_closes_with_the_server(nursery: trio.Nursery) -> None:
    server = millpond.Server(hold, 0, host="127.0.0.1", debug_address=("127.0.0.1", 0))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(server.run)
            port = server.debug_addresses[0][1]
            scope.cancel()
    assert server.debug_addresses == ()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


async def test_a_taken_debug_port_is_an_oserror_before_the_server_listens() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = millpond.Server(hold, 0, host="127.0.0.1", debug_address=("127.0.0.1", port))
        with trio.fail_after(GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError):
                    await nursery.start(server.run)
    assert server.addresses == () or not server.debug_addresses


@pytest.mark.parametrize(
    ("address", "error"),
    [(6060, TypeError), (("127.0.0.1",), TypeError), ((1, 6060), TypeError),
     (("127.0.0.1", 70000), ValueError), (("127.0.0.1", "6060"), TypeError)],
)  # fmt: skip
def test_a_bad_debug_address_is_refused_when_the_server_is_made(
    address: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="debug_address"):
        millpond.Server(hold, 0, debug_address=address)  # type: ignore[arg-type]


async def test_debug_sockets_bound_elsewhere_are_served_and_closed(nursery: trio.Nursery) -> None:
    # What a --workers supervisor does: it binds, the worker's server serves.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = millpond.Server(hold, 0, host="127.0.0.1", debug_sockets=[listener])
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(server.run)
            assert server.debug_addresses == (("127.0.0.1", port),)
            async with httpx.AsyncClient(timeout=GUARD_SECONDS) as client:
                stats = (await client.get(f"http://127.0.0.1:{port}/debug/millpond/stats")).json()
            assert stats["process"]["pid"] == os.getpid()
            scope.cancel()
    assert listener.fileno() == -1  # the server owns them, as it owns sockets=


def test_bad_debug_sockets_are_refused_when_the_server_is_made() -> None:
    with socket.socket() as unbound:
        with pytest.raises(ValueError, match="debug_sockets: .*not listening"):
            millpond.Server(hold, 0, debug_sockets=[unbound])
    with pytest.raises(TypeError, match="debug_sockets: sockets must be a sequence"):
        millpond.Server(hold, 0, debug_sockets=unbound)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="debug_sockets must hold at least one"):
        millpond.Server(hold, 0, debug_sockets=[])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with pytest.raises(ValueError, match="debug_address or debug_sockets, not both"):
            millpond.Server(hold, 0, debug_address=("127.0.0.1", 0), debug_sockets=[listener])


def test_without_h11_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h11" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"millpond\[debug\]"):
        millpond.Server(hold, 0, debug_address=("127.0.0.1", 6060))


async def test_a_debug_endpoint_beyond_loopback_logs_a_warning(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(endpoint, "is_loopback", lambda address: False)  # no real exposure
    with caplog.at_level(logging.INFO, logger="millpond.server"):
        _, client = await start_debugged(nursery)
        await client.aclose()
        await until(lambda: "debug endpoint:" in caplog.text)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "beyond this machine" in warning.getMessage()


async def test_a_loopback_debug_endpoint_logs_no_warning(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="millpond.server"):
        _, client = await start_debugged(nursery)
        await client.aclose()
        await until(lambda: "debug endpoint: http://127.0.0.1:" in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
