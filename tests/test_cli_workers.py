"""``millpond serve --workers N``, run as users run it: a supervisor, its workers, real signals.

Every test starts the command in a session of its own (so that a signal to
its process group reaches it and its workers, and nothing else), serves
``app:pid``, whose handler answers with the pid of the worker that accepted,
and tells workers apart by that. Waits are bounded by the hang guards of
test_cli.py; each test starts two or three Pythons (about half a second
each here), so they take a few seconds each.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_cli import (
    IO_GUARD_SECONDS,
    Running,
    assert_one_line_error,
    assert_usage_error,
    connected,
    echo_round_trip,
    listening_socket,
    receive_exactly,
    receive_to_eof,
    run,
    serving,
    stop,
)

from millpond.cli import main, supervisor
from millpond.cli.supervisor import check_workers_supported, reuse_port_available, worker_arguments
from millpond.cli.values import usable_cpus, workers

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT workers, signals")

APP = """
import os

import trio

import millpond


async def pid(stream):
    await stream.send_all(b"%d\\n" % os.getpid())


async def echo(stream):
    async for chunk in stream:
        await stream.send_all(chunk)


async def pid_echo(stream):
    await stream.send_all(b"%d\\n" % os.getpid())
    await echo(stream)


async def forever(stream):
    await stream.send_all(b"ready\\n")
    await trio.sleep_forever()


async def statistics(stream):
    server = millpond.current_server()
    accepted = server.statistics().connections_accepted
    await stream.send_all(b"%d %d %d\\n" % (os.getpid(), accepted, server.limiter.total_bytes))
"""

STARTED = rb"worker (\d+) started \(pid (\d+)\)"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A directory holding ``app.py`` (the handlers above); the command runs in it."""
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def started(running: Running) -> dict[int, int]:
    """Each worker pid the supervisor says it started so far, and its slot."""
    return {int(pid): int(slot) for slot, pid in re.findall(STARTED, running.log)}


async def workers_listening(running: Running, count: int) -> list[int]:
    """Wait for ``count`` workers to listen; their pids, by slot."""
    await running.wait_for(rb"all %d worker\(s\) listening" % count)
    newest: dict[int, int] = {}
    for pid, slot in started(running).items():
        newest[slot] = pid
    return [newest[slot] for slot in range(count)]


def supervising(
    arguments: Sequence[str], cwd: Path, *, pass_fds: Sequence[int] = ()
) -> AbstractAsyncContextManager[Running]:
    """Start the command in a session of its own; on the way out, kill what is left of it."""
    return serving(arguments, cwd, pass_fds=pass_fds, new_session=True)


async def ask_pid(port: int) -> int:
    """Connect to 127.0.0.1:``port``: the pid of the worker that answers."""
    with trio.fail_after(IO_GUARD_SECONDS):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            return int(await receive_to_eof(stream))


async def ask_unix_pid(path: Path) -> int:
    """The same, over a Unix socket."""
    with trio.fail_after(IO_GUARD_SECONDS):
        async with await trio.open_unix_socket(str(path)) as stream:
            return int(await receive_to_eof(stream))


async def pids_seen(ask: object, wanted: set[int], tries: int = 400) -> set[int]:
    """Ask until every pid in ``wanted`` answered (or ``tries`` ran out); every pid that did."""
    seen: set[int] = set()
    for _try in range(tries):
        seen.add(await ask())  # type: ignore[operator]
        if wanted <= seen:
            break
    return seen


async def each_worker_accepts(ask: object, pids: Sequence[int]) -> None:
    """Show that every worker accepts from one shared socket, whatever the kernel prefers.

    Workers that share one listening socket (``--uds``, ``--fd``) are all woken
    by a connection and the first to call ``accept`` takes it; which one that
    is can stay the same for hundreds of connections on a loaded machine. So
    each worker in turn is the only one running: the others are stopped
    (SIGSTOP, which the supervisor's ``poll`` does not report), and the
    connection must be the running worker's.
    """
    for pid in pids:
        others = [other for other in pids if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            assert await ask() == pid  # type: ignore[operator]
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)


# --- the flag ---


@pytest.mark.parametrize("value", ["0", "nonsense", "-2", ""])
def test_workers_must_be_a_number_or_auto(app: Path, value: str) -> None:
    result = run(["serve", "app:pid", "--workers", value], app)
    assert_usage_error(result, "argument --workers: expected a number of workers >= 1, or auto")


def test_workers_auto_is_one_per_usable_cpu() -> None:
    assert workers("auto") == workers("AUTO") == usable_cpus()
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert workers("3") == 3


def test_without_so_reuseport_more_than_one_worker_is_refused(
    app: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(supervisor, "reuse_port_available", lambda: False)
    monkeypatch.chdir(app)
    # Refused before anything is bound or started: main returns at once.
    assert main(["serve", "app:pid", "--port", "0", "--workers", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("millpond: error: --workers 2 needs SO_REUSEPORT")
    assert "platform lacks" in captured.err
    check_workers_supported(1, has_reuse_port=False)  # one worker shares nothing


def test_so_reuseport_is_asked_of_a_socket_not_only_of_the_constant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert reuse_port_available()  # Linux has it
    monkeypatch.setattr(socket, "SO_REUSEPORT", 0x7FFF, raising=False)  # an option no kernel knows
    assert not reuse_port_available()
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    assert not reuse_port_available()


def test_worker_arguments_go_right_after_serve() -> None:
    argv = ["serve", "--port", "0", "--", "app:pid"]
    assert worker_arguments(argv, 1, 7, [8, 9]) == [
        "serve",
        "--worker-index",
        "1",
        "--worker-channel",
        "7",
        "--worker-fd",
        "8",
        "--worker-fd",
        "9",
        "--port",
        "0",
        "--",
        "app:pid",
    ]


def test_help_says_the_budget_is_per_worker(tmp_path: Path) -> None:
    result = run(["serve", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--workers N" in text
    assert "with --workers each worker has a budget this size" in text
    assert "--worker-index" not in text  # the supervisor's own flags stay hidden


def test_a_port_another_server_shares_with_so_reuseport_is_in_use(app: Path) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run(["serve", "app:pid", "--port", str(port), "--workers", "2"], app)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


@pytest.mark.time_limit(60)
async def test_a_target_that_fails_at_import_fails_fast(app: Path) -> None:
    (app / "broken.py").write_text("raise RuntimeError('no database')\n")
    async with supervising(["serve", "broken:pid", "--port", "0", "--workers", "3"], app) as sup:
        with trio.fail_after(10):  # one worker's start, not a restart loop
            assert await sup.exit_status() == 2, sup.text()
    assert len(started(sup)) == 1, sup.text()  # the others never started
    assert sup.text().count("millpond: error: TARGET 'broken:pid'") == 1, sup.text()
    assert "the command is wrong" in sup.text()
    assert "Traceback" not in sup.text(), sup.text()


# --- serving ---


@pytest.mark.time_limit(60)
async def test_connections_reach_every_worker(app: Path) -> None:
    async with supervising(["serve", "app:pid", "--port", "0", "--workers", "2"], app) as sup:
        pids = await workers_listening(sup, 2)
        port = await sup.port()
        assert await pids_seen(lambda: ask_pid(port), set(pids)) == set(pids)
        assert await stop(sup) == 0, sup.text()
    assert re.search(rb"worker 0 pid %d millpond.server: listening on" % pids[0], sup.log)


@pytest.mark.time_limit(60)
async def test_each_worker_has_its_own_budget_and_statistics(app: Path) -> None:
    arguments = ["serve", "app:statistics", "--port", "0", "--workers", "2", "--budget", "1M"]
    async with supervising(arguments, app) as sup:
        pids = await workers_listening(sup, 2)
        port = await sup.port()
        accepted: dict[int, list[int]] = {pid: [] for pid in pids}
        for _try in range(400):  # until each worker answered 3 times (the kernel picks)
            if min(len(counts) for counts in accepted.values()) >= 3:
                break
            with trio.fail_after(IO_GUARD_SECONDS):
                async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                    pid, count, budget = map(int, (await receive_to_eof(stream)).split())
            accepted[pid].append(count)
            assert budget == 1024 * 1024  # --budget is each worker's, not shared out
        assert await stop(sup) == 0, sup.text()
    assert min(len(counts) for counts in accepted.values()) >= 3, accepted
    # One after the other, so each worker's n-th connection is its n-th accept:
    # its counter counts only what it accepted.
    for counts in accepted.values():
        assert counts == list(range(1, len(counts) + 1))


@pytest.mark.time_limit(60)
async def test_workers_share_a_unix_socket(app: Path) -> None:
    path = app / "app.sock"
    arguments = ["serve", "app:pid", "--uds", str(path), "--workers", "2"]
    async with supervising(arguments, app) as sup:
        pids = await workers_listening(sup, 2)
        await each_worker_accepts(lambda: ask_unix_pid(path), pids)
        assert await stop(sup) == 0, sup.text()
    assert not path.exists()  # the supervisor bound it, and removed it


@pytest.mark.time_limit(60)
async def test_workers_share_an_inherited_socket(app: Path) -> None:
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        arguments = ["serve", "app:pid", "--fd", str(sock.fileno()), "--workers", "2"]
        async with supervising(arguments, app, pass_fds=[sock.fileno()]) as sup:
            pids = await workers_listening(sup, 2)
            await each_worker_accepts(lambda: ask_pid(port), pids)
            assert await stop(sup) == 0, sup.text()


@pytest.mark.time_limit(60)
async def test_a_killed_worker_is_replaced_while_the_other_serves(app: Path) -> None:
    async with supervising(["serve", "app:pid", "--port", "0", "--workers", "2"], app) as sup:
        first, second = await workers_listening(sup, 2)
        port = await sup.port()
        os.kill(second, signal.SIGKILL)
        await sup.wait_for(rb"worker 1 \(pid %d\) killed by SIGKILL" % second)
        # Worker 0 answers meanwhile; the clients the kernel gives worker 1's
        # socket wait in its backlog for the new worker 1, none is refused (a
        # refusal fails ask_pid). Asked until worker 0 answers: the new worker 1
        # may be up at once, and take ten clients in a row (CI saw it).
        answers = await pids_seen(lambda: ask_pid(port), {first})
        assert first in answers
        assert second not in answers
        started = rb"worker 1 started \(pid (?!%d\))(\d+)\)" % second
        replacement = (await sup.wait_for(started)).group(1)
        await sup.wait_for(rb"worker 1 pid %s millpond.server: listening" % replacement)
        assert int(replacement) in await pids_seen(lambda: ask_pid(port), {int(replacement)})
        assert await stop(sup) == 0, sup.text()


@pytest.mark.time_limit(90)
async def test_sighup_replaces_every_worker_and_refuses_no_connection(app: Path) -> None:
    answered: list[int] = []
    failures: list[BaseException] = []

    async def keep_asking(port: int) -> None:
        while True:
            try:
                answered.append(await ask_pid(port))
            except (OSError, ValueError, trio.BrokenResourceError) as exc:
                failures.append(exc)

    async with supervising(["serve", "app:pid", "--port", "0", "--workers", "2"], app) as sup:
        old = set(await workers_listening(sup, 2))
        port = await sup.port()
        async with trio.open_nursery() as clients:
            for _client in range(4):
                clients.start_soon(keep_asking, port)
            await trio.sleep(0.2)
            sup.send_signal(signal.SIGHUP)
            await sup.wait_for(rb"SIGHUP: every worker replaced")
            for pid in old:  # drained and gone
                await sup.wait_for(rb"\(pid %d\) exited with status 0: replaced" % pid)
            during = len(answered)
            await trio.sleep(0.2)
            clients.cancel_scope.cancel()
        assert failures == []
        assert set(answered[:during]) >= old  # the old workers served until replaced
        new = {pid for pid in started(sup) if pid not in old}
        assert len(new) == 2
        assert set(answered[during:]) <= new
        assert await stop(sup) == 0, sup.text()


# --- stopping ---


@pytest.mark.time_limit(60)
async def test_sigterm_exits_0_after_the_transfers_in_flight_complete(app: Path) -> None:
    async with supervising(["serve", "app:echo", "--port", "0", "--workers", "2"], app) as sup:
        await workers_listening(sup, 2)
        async with await connected(sup, b"first half ", b"first half ") as stream:
            sup.send_signal(signal.SIGTERM)
            await sup.wait_for(rb"SIGTERM: stopping every worker gracefully")
            await sup.wait_for(rb"waiting for 1 connection")
            await stream.send_all(b"second half")
            await stream.send_eof()
            assert await receive_to_eof(stream) == b"second half"
        assert await sup.exit_status() == 0, sup.text()
    assert sup.log.count(b"shut down\n") == 2


@pytest.mark.time_limit(60)
async def test_sigterm_to_the_process_group_is_one_graceful_shutdown(app: Path) -> None:
    async with supervising(["serve", "app:echo", "--port", "0", "--workers", "2"], app) as sup:
        pids = await workers_listening(sup, 2)
        async with await connected(sup, b"ping", b"ping") as stream:
            os.killpg(sup.process.pid, signal.SIGTERM)  # as systemd's KillMode=control-group does
            await sup.wait_for(rb"waiting for 1 connection")
            # Each worker had it twice, from the kill and from the supervisor;
            # Trio may report two at once as one, so the log may not show both.
            await stream.send_all(b"pong")
            assert await receive_exactly(stream, 4) == b"pong"  # still served
            await stream.send_eof()
            assert await receive_to_eof(stream) == b""
        assert await sup.exit_status() == 0, sup.text()
    assert sup.log.count(b"SIGTERM: stopping every worker gracefully") == 1
    for slot, pid in enumerate(pids):  # each worker drained once, and exited 0
        assert (
            sup.log.count(b"worker %d pid %d millpond.server: SIGTERM: shutting down" % (slot, pid))
            == 1
        )
        assert sup.log.count(b"worker %d pid %d millpond.server: shut down\n" % (slot, pid)) == 1
        assert sup.log.count(b"worker %d (pid %d) exited with status 0\n" % (slot, pid)) == 1
    assert sup.log.count(b"shut down\n") == 2
    assert b"Traceback" not in sup.log, sup.text()


@pytest.mark.time_limit(60)
async def test_a_worker_sent_sigterm_twice_drains_once_and_exits_0(app: Path) -> None:
    arguments = ["serve", "app:pid_echo", "--port", "0", "--workers", "2"]
    async with supervising(arguments, app) as sup:
        await workers_listening(sup, 2)
        async with await trio.open_tcp_stream("127.0.0.1", await sup.port()) as stream:
            line = await receive_exactly(stream, 1)
            while not line.endswith(b"\n"):
                line += await receive_exactly(stream, 1)
            pid = int(line)  # the worker serving this connection
            slot = started(sup)[pid]
            os.kill(pid, signal.SIGTERM)
            mine = b"worker %d pid %d millpond.server: " % (slot, pid)
            await sup.wait_for(re.escape(mine) + rb"SIGTERM: shutting down gracefully")
            os.kill(pid, signal.SIGTERM)
            await sup.wait_for(re.escape(mine) + rb"SIGTERM while shutting down: nothing more")
            assert await echo_round_trip(stream, b"still served") == b"still served"
        await sup.wait_for(rb"worker %d \(pid %d\) exited with status 0" % (slot, pid))
        # Not asked by the supervisor: it starts another in that slot.
        await sup.wait_for(rb"worker %d started \(pid (?!%d\))" % (slot, pid))
        assert await stop(sup) == 0, sup.text()
    assert sup.log.count(mine + b"SIGTERM: shutting down gracefully") == 1
    assert sup.log.count(mine + b"shut down\n") == 1


@pytest.mark.parametrize("to_the_group", [False, True], ids=["to-supervisor", "ctrl-c"])
@pytest.mark.time_limit(60)
async def test_a_second_sigint_cancels_every_workers_connections(
    app: Path, to_the_group: bool
) -> None:
    # As in the single process (test_cli.py): the first SIGINT drains, the
    # second cancels. The grace period is far longer than the hang guard.
    arguments = ["serve", "app:forever", "--port", "0", "--workers", "2"]
    arguments += ["--graceful-timeout", "3600"]
    async with supervising(arguments, app) as sup:
        await workers_listening(sup, 2)

        def interrupt() -> None:
            if to_the_group:  # a terminal's Ctrl-C: every process of the group
                os.killpg(sup.process.pid, signal.SIGINT)
            else:
                sup.send_signal(signal.SIGINT)

        async with await connected(sup, b"", b"ready\n") as stream:
            interrupt()
            await sup.wait_for(rb"SIGINT: stopping every worker gracefully")
            await sup.wait_for(rb"waiting for 1 connection")
            await trio.sleep(0.2)  # the connection outlives the first SIGINT
            assert sup.process.returncode is None
            interrupt()
            await sup.wait_for(rb"SIGINT while stopping: cancelling the connections left")
            assert await receive_to_eof(stream) == b""
        assert await sup.exit_status() == 0, sup.text()
    assert sup.log.count(b"SIGINT while shutting down: cancelling the connections left") >= 1
    assert b"Traceback" not in sup.log, sup.text()


@pytest.mark.time_limit(60)
async def test_sigterms_to_the_group_until_it_is_gone_exit_0(app: Path) -> None:
    # systemd repeats nothing, but a group kill may reach a process at any
    # moment of its end: the supervisor must not die of one either, after it
    # stopped waiting for signals. The workers' exit is made slow (atexit).
    (app / "slow_exit.py").write_text(
        APP + "\nimport atexit, time\natexit.register(time.sleep, 0.2)\n"
    )
    arguments = ["serve", "slow_exit:pid", "--port", "0", "--workers", "2"]
    async with supervising(arguments, app) as sup:
        await workers_listening(sup, 2)
        os.killpg(sup.process.pid, signal.SIGTERM)
        await sup.wait_for(rb"shut down\n")
        while sup.process.poll() is None:
            try:
                os.killpg(sup.process.pid, signal.SIGTERM)
            except ProcessLookupError:  # every process of the group is gone
                break
            await trio.sleep(0.001)
        assert await sup.exit_status() == 0, sup.text()
    assert sup.log.count(b"exited with status 0\n") == 2, sup.text()
    assert b"killed by" not in sup.log


@pytest.mark.time_limit(60)
async def test_sigterms_after_the_server_stopped_change_nothing(app: Path) -> None:
    # A worker with nothing to drain may be done before the supervisor's copy
    # of a SIGTERM it had already arrives: it must still exit 0. The exit is
    # made slow (atexit), and SIGTERM keeps coming until the process is gone,
    # through Python's own finalization.
    (app / "slow_exit.py").write_text(
        APP + "\nimport atexit, time\natexit.register(time.sleep, 0.2)\n"
    )
    async with supervising(["serve", "slow_exit:pid", "--port", "0"], app) as running:
        await running.port()
        running.send_signal(signal.SIGTERM)
        await running.wait_for(rb"shut down\n")
        while running.process.poll() is None:
            running.send_signal(signal.SIGTERM)
            await trio.sleep(0.001)
        assert await running.exit_status() == 0, running.text()


@pytest.mark.time_limit(60)
async def test_workers_stop_when_the_supervisor_is_killed(app: Path) -> None:
    async with supervising(["serve", "app:pid", "--port", "0", "--workers", "2"], app) as sup:
        await workers_listening(sup, 2)
        sup.send_signal(signal.SIGKILL)
        # The log closes once every process that holds it, workers too, has exited.
        assert await sup.exit_status() == -signal.SIGKILL
    assert sup.log.count(b"the supervisor is gone: shutting down gracefully") == 2
    assert sup.log.count(b"shut down\n") == 2


# --- the debug endpoint under --workers ---


async def debug_stats(port: int) -> dict[str, Any]:
    """The debug endpoint's statistics at 127.0.0.1:``port``, as JSON."""
    async with httpx.AsyncClient(timeout=IO_GUARD_SECONDS) as client:
        response = await client.get(f"http://127.0.0.1:{port}/debug/millpond/stats")
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    return stats


@pytest.mark.time_limit(90)
async def test_each_worker_serves_its_debug_endpoint_through_a_sighup(app: Path) -> None:
    arguments = ["serve", "app:pid", "--port", "0", "--workers", "2", "--debug-port", "0"]
    async with supervising(arguments, app) as sup:
        old = await workers_listening(sup, 2)
        listing = await sup.wait_for(
            rb"debug endpoints: worker 0: http://127\.0\.0\.1:(\d+)/debug/millpond/, "
            rb"worker 1: http://127\.0\.0\.1:(\d+)/debug/millpond/\n"
        )
        ports = [int(listing.group(1)), int(listing.group(2))]
        for port, pid in zip(ports, old, strict=True):  # each worker its own statistics
            assert (await debug_stats(port))["process"]["pid"] == pid
        main_port = await sup.port()
        served = {await ask_pid(main_port) for _ in range(4)}
        sup.send_signal(signal.SIGHUP)
        await sup.wait_for(rb"SIGHUP: every worker replaced")
        new = await workers_listening(sup, 2)
        assert not set(new) & set(old)
        # The same ports, now the new workers' (the old ones are draining or gone).
        for port, pid in zip(ports, new, strict=True):
            for _try in range(100):
                stats = await debug_stats(port)
                if stats["process"]["pid"] == pid:
                    break
            assert stats["process"]["pid"] == pid
            assert stats["connections"]["accepted"] == 0  # a new worker counts from zero
        assert served <= set(old)
        assert await stop(sup) == 0, sup.text()
    assert b"before it listened" not in sup.log


def test_a_debug_port_in_use_is_refused_before_any_worker_starts(app: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arguments = ["serve", "app:pid", "--port", "0", "--workers", "2"]
        result = run([*arguments, "--debug-port", str(port)], app)
    assert_one_line_error(
        result, f"cannot listen for worker 0's debug endpoint on 127.0.0.1:{port}", "in use"
    )
