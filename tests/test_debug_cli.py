"""The debug endpoint from the ``millpond`` command, and the leak hunt of docs/leak-hunt.md.

The hunt is the page's, step for step: serve ``examples/leaky_server.py``
with ``--debug-port``, take a heap profile (which starts tracing), drive the
load, and read ``heap/diff``: the planted line must be at the top. Then the
same with the fixed handler: that line no longer grows.
"""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path
from types import ModuleType

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from test_cli import Running, app, assert_usage_error, run, serving

__all__ = ["app"]  # the fixture, imported for the tests below

ROOT = Path(__file__).resolve().parents[1]
LEAKY = ROOT / "examples" / "leaky_server.py"

# Hang guard only: each request over loopback takes milliseconds.
GUARD_SECONDS = 30


def load_module(path: Path) -> ModuleType:
    """A script of examples/ as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def debug_port(running: Running) -> int:
    """The port the command says its debug endpoint listens on."""
    return int((await running.wait_for(rb"debug endpoint: http://127\.0\.0\.1:(\d+)/")).group(1))


def planted_line() -> int:
    """The line of examples/leaky_server.py that makes what the leak keeps."""
    for number, line in enumerate(LEAKY.read_text().splitlines(), 1):
        if "the planted leak's allocation" in line:
            return number
    raise AssertionError("no planted line in leaky_server.py")


async def test_debug_port_serves_metrics_from_the_command(app: Path) -> None:
    async with serving(["serve", "app:echo", "--port", "0", "--debug-port", "0"], app) as running:
        port = await debug_port(running)
        async with httpx.AsyncClient(timeout=GUARD_SECONDS) as client:
            metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
        names = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert "millpond_connections_open" in names
        running.send_signal(signal.SIGTERM)
    assert b"WARNING" not in running.log


def test_debug_host_needs_debug_port(app: Path) -> None:
    assert_usage_error(run(["serve", "app:echo", "--debug-host", "::1"], app), "--debug-port")


async def hunt(target: str, port_of: Path) -> list[dict[str, object]]:
    """The leak hunt against ``target``: baseline, load, heap/diff; the diff's sites."""
    loader = load_module(ROOT / "examples" / "leaky_load.py")
    arguments = ["serve", f"{LEAKY}:{target}", "--port", "0", "--debug-port", "0"]
    async with serving(arguments, port_of) as running:
        port, debug = await running.port(), await debug_port(running)
        base = f"http://127.0.0.1:{debug}/debug/millpond"
        async with httpx.AsyncClient(timeout=GUARD_SECONDS) as client:
            first = (await client.get(f"{base}/heap?format=json")).json()
            assert first["started_tracing"]
            with trio.fail_after(GUARD_SECONDS):
                await loader.load(port, connections=300, lines=10, line_bytes=200)
            diff = (await client.get(f"{base}/heap/diff?top=5&format=json")).json()
        running.send_signal(signal.SIGTERM)
    sites: list[dict[str, object]] = diff["sites"]
    return sites


async def test_the_leak_hunt_finds_the_planted_line_at_the_top_of_heap_diff(app: Path) -> None:
    top = (await hunt("handle", app))[0]
    assert (top["filename"], top["lineno"]) == (str(LEAKY), planted_line())
    assert top["count_diff"] >= 3000  # 300 connections x 10 lines, all kept
    assert isinstance(top["size_diff_bytes"], int) and top["size_diff_bytes"] >= 3000 * 200


async def test_after_the_fix_the_planted_line_no_longer_grows(app: Path) -> None:
    sites = await hunt("handle_fixed", app)
    grown = [s for s in sites if (s["filename"], s["lineno"]) == (str(LEAKY), planted_line())]
    assert not grown or grown[0]["count_diff"] == 0, grown
