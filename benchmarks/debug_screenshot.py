"""Screenshots of the debug pages of a server under load, in headless Chromium, for the docs.

Starts the soak's server (``millpond serve benchmarks/soak.py:echo_both_ways
--debug-port 0``), keeps ``--clients`` connections echoing small messages so
the pages have something to show, and has Debian's ``chromium`` (headless,
no sandbox, a fresh profile, loopback only) take a screenshot of each page
in ``--pages`` into ``--out`` (default ``docs/images``)::

    python benchmarks/debug_screenshot.py        # docs/images/debug-index.png
    python benchmarks/debug_screenshot.py --pages /debug/millpond/,/debug/millpond/connections

tests/test_debug_browser.py opens the index page the same way and checks
what Chromium rendered; this script only makes the pictures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import trio
from debugwatch import ROOT, start_server
from soak import steady

# Hang guard: Chromium starts, renders and exits in a few seconds.
BROWSER_GUARD_SECONDS = 90

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")  # fmt: skip


async def screenshots(
    port: int, debug_port: int, clients: int, pages: list[str], out: Path, window: str
) -> list[Path]:
    """Echoing clients in the background; one Chromium screenshot per page."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    stop = trio.Event()
    made = []
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(steady, port, stop, [0], random.Random(i))
        await trio.sleep(3)  # every client connected and echoing
        for page in pages:
            name = "debug-" + (page.strip("/").rsplit("/", 1)[-1].replace("millpond", "index"))
            path = out / f"{name}.png"
            with tempfile.TemporaryDirectory() as profile, trio.fail_after(BROWSER_GUARD_SECONDS):
                await trio.run_process(
                    [browser, *FLAGS, f"--window-size={window}", f"--user-data-dir={profile}",
                     f"--screenshot={path}", f"http://127.0.0.1:{debug_port}{page}"],
                    capture_stdout=True, capture_stderr=True,
                )  # fmt: skip
            made.append(path)
        stop.set()
        nursery.cancel_scope.cancel()
    return made


def main() -> None:
    """Serve, load, take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pages", default="/debug/millpond/")  # comma-separated
    parser.add_argument("--window", default="1000,1000")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    process, port, debug_port = start_server(
        str(ROOT / "benchmarks" / "soak.py") + ":echo_both_ways", "--budget", "64M"
    )
    try:
        made = trio.run(
            screenshots, port, debug_port, arguments.clients, arguments.pages.split(","),
            arguments.out, arguments.window,
        )  # fmt: skip
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    for path in made:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
