"""The suite's time limit (time_limits.py): a hung test fails saying so, and the run goes on.

The hung tests run in a pytest of their own, in a subprocess with a timeout,
so that a broken time limit fails this test instead of hanging the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HUNG_TESTS = """
import socket

import pytest
import trio
from hypothesis import given, settings, strategies as st


@pytest.mark.time_limit(0.2)
async def test_parks_for_ever():
    await trio.sleep_forever()


@pytest.fixture
async def parked_fixture():
    await trio.sleep_forever()
    yield


@pytest.mark.time_limit(0.2)
async def test_its_fixture_parks_for_ever(parked_fixture):
    pass


@pytest.mark.time_limit(0.2)
@settings(deadline=None, database=None)
@given(st.integers())
async def test_one_example_parks_for_ever(n):
    if n > 5:
        await trio.sleep_forever()


@pytest.mark.time_limit(0.2)
def test_blocks_in_a_syscall():
    left, right = socket.socketpair()
    left.recv(1)


@pytest.mark.time_limit(0.2)
async def test_quick_one_passes():
    await trio.sleep(0)
"""

# The inner run takes about two seconds on a quiet machine (it imports the
# suite's conftest, millpond with it); this bounds it if the time limit is
# broken, with room for a machine busy enough to make it ten times slower.
INNER_RUN_TIMEOUT_SECONDS = 60


@pytest.mark.time_limit(INNER_RUN_TIMEOUT_SECONDS + 30)
def test_hung_tests_fail_with_their_time_limit_and_the_run_goes_on(tmp_path: Path) -> None:
    for helper in ("conftest.py", "time_limits.py"):
        shutil.copy(Path(__file__).with_name(helper), tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_hung.py").write_text(HUNG_TESTS)
    # Only the plugin the hung tests need: the inner run starts in half the time.
    plugins = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pytest_trio.plugin", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, **plugins},
        capture_output=True,
        text=True,
        timeout=INNER_RUN_TIMEOUT_SECONDS,
    )
    summary = result.stdout.splitlines()[-1]
    assert "4 failed, 1 passed" in summary, result.stdout + result.stderr
    for name in [
        "test_parks_for_ever",
        "test_its_fixture_parks_for_ever",
        "test_one_example_parks_for_ever",
        "test_blocks_in_a_syscall",
    ]:
        message = f"test_hung.py::{name} (call) still running after its time limit of 0.2 s"
        assert message in result.stdout, result.stdout
