"""The leak-presence check (Netty's LeakPresenceDetector): what a Census finds, and what it
does not, and the default leak-detection level from the environment.

The suite runs every test under a census (conftest.no_memory_left); the tests here look at a
census of their own, and those that leave something held on purpose say so
(``allow_leaks``), so that the suite's own check does not fail them.
"""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys

import pytest
import trio
import trio.testing

import millpond
from millpond.memory.census import Census
from millpond.memory.leaks import LEAK_DETECTION_ENV_VAR, default_leak_detection

KIB = 1024


@pytest.mark.allow_leaks("the test leaves a lease live on purpose")
async def test_a_live_lease_is_found_with_where_it_was_leased() -> None:
    with Census() as census:
        pool = millpond.BufferPool(millpond.BufferLimiter(64 * KIB), leak_detection="all")
        buffer = await pool.lease(100)
    held = census.held()
    assert len(held) == 2  # the pool's live lease, the limiter's held byte
    assert "1 lease(s) live (1024 B) (leased at " in held[0]
    assert "test_leak_presence.py" in held[0]
    assert "1024 B held" in held[1]
    buffer.release()
    assert census.held() == []


@pytest.mark.allow_leaks("the test leaks a buffer on purpose")
async def test_a_leaked_buffer_is_found_even_though_the_pool_reclaimed_it() -> None:
    with Census() as census:
        pool = millpond.BufferPool(millpond.BufferLimiter(64 * KIB), leak_detection="all")
        with pytest.warns(millpond.BufferLeakWarning):
            await pool.lease(100)  # dropped unreleased: the pool reclaims it at once
    (held,) = census.held()
    assert "1 leaked" in held and "test_leak_presence.py" in held
    assert pool.limiter is not None and pool.limiter.bytes_in_use == 0


@pytest.mark.allow_leaks("the test holds budget on purpose")
async def test_budget_held_by_anyone_is_found_and_named() -> None:
    with Census() as census:
        limiter = millpond.BufferLimiter(64 * KIB)
        limiter.acquire_on_behalf_of_nowait("somebody", 5)
    (held,) = census.held()
    assert "5 B held" in held and "'somebody'" in held
    limiter.release_on_behalf_of("somebody", 5)
    assert census.held() == []


async def test_a_census_sees_only_what_was_made_while_it_was_open() -> None:
    before = millpond.BufferLimiter(64 * KIB)
    before.acquire_on_behalf_of_nowait("earlier", 1)
    with Census() as census:
        during = millpond.BufferLimiter(64 * KIB)
    millpond.BufferLimiter(64 * KIB)  # after
    assert census.limiters == [during]
    before.release_on_behalf_of("earlier", 1)


def test_a_census_keeps_nothing_alive() -> None:
    with Census() as census:
        millpond.BufferPool(millpond.BufferLimiter(64 * KIB))
    gc.collect()
    assert (census.pools, census.limiters) == ([], [])


def test_censuses_nest() -> None:
    with Census() as outer:
        with Census() as inner:
            limiter = millpond.BufferLimiter(64 * KIB)
    assert outer.limiters == inner.limiters == [limiter]


def test_the_default_level_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEAK_DETECTION_ENV_VAR, "off")
    assert millpond.BufferPool().statistics().leak_detection == "off"
    assert millpond.BufferPool(leak_detection="all").statistics().leak_detection == "all"
    monkeypatch.setenv(LEAK_DETECTION_ENV_VAR, "")
    assert default_leak_detection() == "sampled"
    monkeypatch.delenv(LEAK_DETECTION_ENV_VAR)
    assert millpond.BufferPool().statistics().leak_detection == "sampled"
    monkeypatch.setenv(LEAK_DETECTION_ENV_VAR, "paranoid")
    with pytest.raises(ValueError, match=LEAK_DETECTION_ENV_VAR):
        millpond.BufferPool()


def test_the_suite_tracks_every_lease() -> None:
    # conftest sets it, so that every leak the suite makes is reported with its place.
    assert millpond.BufferPool().statistics().leak_detection == "all"


async def test_the_suites_check_runs_after_the_tests_own_trio_run(nursery: trio.Nursery) -> None:
    # A fixture's nursery closes in the same run: what it ends releases before the check.
    limiter = millpond.BufferLimiter(64 * KIB)

    async def holder() -> None:
        async with limiter.reserve(KIB):
            await trio.sleep_forever()

    nursery.start_soon(holder)
    await trio.testing.wait_all_tasks_blocked()
    assert limiter.bytes_in_use == KIB
    nursery.cancel_scope.cancel()


SUITE_CONFTEST = """
import importlib.util, sys
sys.path.insert(0, {tests!r})
spec = importlib.util.spec_from_file_location("suite_conftest", {conftest!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_configure = suite.pytest_configure
no_memory_left = suite.no_memory_left
"""

LEAKY_TESTS = """
import pytest, trio, millpond

async def test_leaves_a_lease():
    pool = millpond.BufferPool(millpond.BufferLimiter(65536))
    pool.kept = await pool.lease(10)

async def test_releases_its_lease():
    pool = millpond.BufferPool(millpond.BufferLimiter(65536))
    with await pool.lease(10):
        pass

@pytest.mark.allow_leaks("on purpose")
async def test_leaves_a_lease_and_says_so():
    pool = millpond.BufferPool(millpond.BufferLimiter(65536))
    pool.kept = await pool.lease(10)
"""


@pytest.mark.time_limit(60)
def test_the_suites_check_fails_a_test_that_ends_with_a_lease(tmp_path: pathlib.Path) -> None:
    tests = pathlib.Path(__file__).parent
    (tmp_path / "conftest.py").write_text(
        SUITE_CONFTEST.format(tests=str(tests), conftest=str(tests / "conftest.py"))
    )
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "trio",
         "-o", "trio_mode=true", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=50, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert "3 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert "ERROR test_leaky.py::test_leaves_a_lease - Failed: memory still held" in result.stdout
    assert "1 lease(s) live (1024 B) (leased at " in result.stdout
    assert "test_leaky.py:6 by <test 'test_leaves_a_lease'>)" in result.stdout
