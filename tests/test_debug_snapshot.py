"""millpond.debug.snapshot and the Prometheus metrics made from it, without HTTP.

The metrics are read back with prometheus_client's own parser, the one a
Prometheus-compatible scraper would trust, so a malformed line, a wrong type
or a histogram whose buckets are not cumulative fails here.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import trio
from conftest import connect, echo, started_server
from prometheus_client.parser import text_string_to_metric_families

import millpond
from millpond.debug import (
    exposition,
    metric_families,
    snapshot,
    worker_debug_address,
    worker_debug_listing,
)
from millpond.debug.address import is_loopback
from millpond.memory.limiter import WAIT_SECONDS_BUCKETS


async def test_a_snapshot_is_frozen_and_goes_through_json_as_it_is(
    nursery: trio.Nursery, poller_name: str
) -> None:
    server, _ = await started_server(nursery, echo, poller_name)
    async with await connect(server, poller_name) as client:
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        snap = snapshot(server, connections=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.taken_at = 0  # type: ignore[misc]
    data = json.loads(json.dumps(snap.as_dict()))
    assert data["connections"]["open"] == 1 and data["connections"]["accepted"] == 1
    assert data["poller"]["backend"] == poller_name
    assert data["limiter"]["wait_seconds_buckets"][-1][0] == "+Inf"
    assert set(data["limiter"]["pressure_seconds"]) == {"none", "pressure", "hard"}
    assert [c["size"] for c in data["pool"]["size_classes"]] == list(millpond.SIZE_CLASSES)
    (connection,) = data["connection_list"]
    assert connection["bytes_received"] == connection["bytes_sent"] == 4


async def test_connections_are_listed_only_when_asked_for(
    nursery: trio.Nursery, poller_name: str
) -> None:
    server, _ = await started_server(nursery, echo, poller_name)
    assert snapshot(server).connection_list is None
    assert snapshot(server, connections=True).connection_list == ()


async def test_an_unpooled_server_has_no_budget_and_no_pool(
    nursery: trio.Nursery, poller_name: str
) -> None:
    server, _ = await started_server(nursery, echo, poller_name, pooled=False)
    snap = snapshot(server)
    assert snap.limiter is None and snap.pool is None and snap.poller is not None
    names = {f.name for f in metric_families(snap)}
    assert "millpond_connections_open" in names and "millpond_budget_bytes_in_use" not in names


def parse(text: str) -> dict[str, object]:
    """prometheus_client's reading of ``text``: family name to family."""
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_metrics_parse_with_prometheus_clients_parser(
    nursery: trio.Nursery, poller_name: str
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    server, _ = await started_server(nursery, echo, poller_name, limiter=limiter)
    async with await connect(server, poller_name) as client:
        await client.send_all(b"x")
        await client.receive_some()
    with trio.fail_after(10):
        while server.statistics().connections_active:
            await trio.sleep(0.01)
    families = parse(exposition(metric_families(snapshot(server))))
    # prometheus_client drops the _total of a counter's family name.
    expected = {
        "millpond_connections_open": "gauge",
        "millpond_connections_closed": "counter",
        "millpond_budget_bytes_in_use": "gauge",
        "millpond_budget_wait_seconds": "histogram",
        "millpond_pool_slabs": "gauge",
        "millpond_poller_polls": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name  # type: ignore[attr-defined]
    closed = {s.labels["reason"]: s.value for s in families["millpond_connections_closed"].samples}  # type: ignore[attr-defined]
    assert closed["eof"] == 1 and set(closed) == set(millpond.server.CLOSE_REASONS)
    limit = families["millpond_budget_limit_bytes"].samples[0].value  # type: ignore[attr-defined]
    assert limit == 1 << 20


async def test_the_wait_histogram_is_cumulative_and_counts_each_queued_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = millpond.BufferLimiter(100)
    server = millpond.Server(echo, 0, host="127.0.0.1", limiter=limiter)
    limiter.acquire_on_behalf_of_nowait("holder", 100)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(limiter.acquire_on_behalf_of, "waiter", 10)
        await trio.sleep(0.03)  # 30 ms in the queue: the 0.05 bucket
        limiter.release_on_behalf_of("holder", 100)
    families = parse(exposition(metric_families(snapshot(server))))
    samples = families["millpond_budget_wait_seconds"].samples  # type: ignore[attr-defined]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert len(buckets) == len(WAIT_SECONDS_BUCKETS) + 1
    assert buckets["0.025"] == 0 and buckets["0.05"] == 3 and buckets["+Inf"] == 3
    values = list(buckets.values())
    assert values == sorted(values)
    (total,) = [s.value for s in samples if s.name.endswith("_sum")]
    assert math.isclose(total, 0.09)


def test_label_values_are_escaped() -> None:
    family = millpond.debug.metrics.MetricFamily(
        "millpond_test", "gauge", "a\\b\nc", (millpond.debug.metrics.Sample(
            "millpond_test", {"site": 'a "quoted"\\ line\n'}, 1.5),)
    )  # fmt: skip
    (parsed,) = text_string_to_metric_families(exposition([family]))
    assert parsed.samples[0].labels["site"] == 'a "quoted"\\ line\n'
    assert parsed.documentation == "a\\b\nc"


def test_loopback_addresses_are_told_from_others() -> None:
    assert is_loopback(("127.0.0.1", 6060)) and is_loopback(("::1", 6060, 0, 0))
    assert is_loopback(("127.8.9.10", 1)) and is_loopback("/run/debug.sock")
    assert not is_loopback(("0.0.0.0", 6060)) and not is_loopback(("::", 6060, 0, 0))
    assert not is_loopback(("192.0.2.1", 6060)) and not is_loopback(("fe80::1%eth0", 1, 0, 2))


def test_each_worker_has_the_base_debug_port_plus_its_index() -> None:
    assert worker_debug_address(("127.0.0.1", 6060), 0) == ("127.0.0.1", 6060)
    assert worker_debug_address(("127.0.0.1", 6060), 3) == ("127.0.0.1", 6063)
    assert worker_debug_address((None, 0), 3) == (None, 0)  # each picks a free port


def test_a_supervisor_lists_each_workers_debug_page() -> None:
    bound = [[("127.0.0.1", 6060)], [("127.0.0.1", 6061)]]
    assert worker_debug_listing(bound) == (
        "worker 0: http://127.0.0.1:6060/debug/millpond/, "
        "worker 1: http://127.0.0.1:6061/debug/millpond/"
    )
    assert worker_debug_listing([[("::1", 6060, 0, 0)]]) == (
        "worker 0: http://[::1]:6060/debug/millpond/"
    )
    assert worker_debug_listing([[("0.0.0.0", 7000), ("::", 7000, 0, 0)]]) == (
        "worker 0: http://0.0.0.0:7000/debug/millpond/ and http://[::]:7000/debug/millpond/"
    )
