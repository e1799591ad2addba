"""The debug index page in a real browser: headless Chromium (Debian's ``chromium``).

Chromium loads ``/debug/millpond/`` from a live server over loopback, takes a
screenshot and dumps the DOM it rendered. The test checks the screenshot is
a PNG of the window's size and that the rendered page shows the summary and
links every page; a person looks at the PNG itself (the path is printed with
``-s``). The README's test command installs ``chromium`` when it is missing.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import trio
from conftest import server_port
from test_debug_endpoint import PAGES

import millpond

# Hang guard only: Chromium starts, renders and exits in about two seconds here.
BROWSER_GUARD_SECONDS = 90

WINDOW = (1200, 900)

# Headless, no sandbox (CI runs as root), and none of the background traffic
# a fresh profile would start (updates, sync, safe browsing): loopback only.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)  # fmt: skip


async def echo(stream: millpond.Connection) -> None:
    """Echo until the client closes."""
    async for chunk in stream:
        await stream.send_all(chunk)


async def chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    """Run Chromium headless with a fresh profile under ``tmp_path``."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "install Debian's chromium (the README's test command does)"
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    with trio.fail_after(BROWSER_GUARD_SECONDS):
        return await trio.run_process(
            [browser, *FLAGS, f"--user-data-dir={profile}", *arguments],
            capture_stdout=True,
            capture_stderr=True,
        )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and a check that it is a PNG)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", header
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def test_the_index_page_renders_in_headless_chromium(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = millpond.Server(echo, 0, host="127.0.0.1", debug_address=("127.0.0.1", 0))
    await nursery.start(server.run)
    client = await millpond.open_connection("127.0.0.1", server_port(server))
    url = f"http://127.0.0.1:{server.debug_addresses[0][1]}/debug/millpond/"
    async with client:
        screenshot = tmp_path / "index.png"
        await chromium(tmp_path, f"--screenshot={screenshot}", url)
        print(f"screenshot of {url}: {screenshot}")
        assert png_size(screenshot) == WINDOW
        dom = (await chromium(tmp_path, "--dump-dom", url)).stdout.decode()
    assert "<h1>millpond debug</h1>" in dom
    assert "<td>connections open</td><td>1</td>" in dom
    for path in PAGES:
        assert f'href="{path.split("?")[0]}"' in dom, path
