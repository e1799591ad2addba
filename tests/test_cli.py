"""The ``millpond`` command, run as users run it: a subprocess, real sockets, real signals.

Every test starts ``python -m millpond.cli`` (the console script's code) with
the millpond under test on ``PYTHONPATH``, listens on loopback (port 0, a
Unix socket in the test's directory, or a socket the test binds), and
bounds every wait with a hang guard far above how long it takes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

import pytest
import trio
import trustme

import millpond

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and Unix sockets")

# Hang guards only: starting Python, Trio and millpond takes well under a
# second here; reaching one of these means the command is stuck, not slow.
START_GUARD_SECONDS = 20
EXIT_GUARD_SECONDS = 20
IO_GUARD_SECONDS = 20

# The millpond under test, for the child's PYTHONPATH (a worktree's, not the installed one).
SRC = Path(millpond.__file__).resolve().parent.parent

LISTENING = rb"listening on 127\.0\.0\.1:(\d+)"

# The handlers the tests serve, as a user's module would hold them.
APP = """
import os

import trio

import millpond


async def echo(stream):
    async for chunk in stream:
        await stream.send_all(chunk)


async def forever(stream):
    await stream.send_all(b"ready\\n")
    await trio.sleep_forever()


async def activation_environment(stream):
    await stream.send_all(repr(os.environ.get("LISTEN_FDS")).encode())


async def peer(stream):
    await stream.send_all(repr(stream.getpeername()[:2]).encode())


class Handlers:
    async def handle(self, stream):
        await echo(stream)


handlers = Handlers()


def not_async(stream):
    pass


not_callable = 42
"""


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the millpond under test first, no systemd variables."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    }
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SRC), os.environ.get("PYTHONPATH")])
    )
    environment.update(extra or {})
    return environment


def command(*arguments: str) -> list[str]:
    """The command line of ``millpond`` with ``arguments``."""
    return [sys.executable, "-m", "millpond.cli", *arguments]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A directory holding ``app.py`` (the handlers above); the command runs in it."""
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def run(
    arguments: Sequence[str],
    cwd: Path,
    *,
    pass_fds: Sequence[int] = (),
    program: Sequence[str] = (sys.executable, "-m", "millpond.cli"),
) -> subprocess.CompletedProcess[str]:
    """Run ``program`` with ``arguments`` to its end (it must not serve); what it did."""
    return subprocess.run(
        [*program, *arguments],
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_GUARD_SECONDS,
        pass_fds=pass_fds,
    )


def error_lines(result: subprocess.CompletedProcess[str], count: int) -> list[str]:
    """Exit status 2, no traceback, and ``count`` lines on stderr: those lines."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == count, result.stderr
    return lines


def assert_says(line: str, prefix: str, fragments: Sequence[str]) -> None:
    """``line`` starts with ``prefix`` and holds every fragment."""
    assert line.startswith(prefix), line
    for fragment in fragments:
        assert fragment in line, line


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, and stderr one ``millpond: error:`` line with ``fragments``."""
    (line,) = error_lines(result, 1)
    assert_says(line, "millpond: error: ", fragments)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """argparse's error: exit status 2, the usage line, then one line with ``fragments``."""
    usage, line = error_lines(result, 2)
    assert usage.startswith("usage: millpond"), usage
    assert_says(line, "millpond serve: error: ", fragments)


class Running:
    """A running ``millpond`` process whose stderr (its log) is read as it comes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = bytearray()
        self._grew = trio.Event()
        self._ended = False

    async def read_log(self) -> None:
        """Collect stderr until the process closes it."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.log += chunk
            self._grew.set()
            self._grew = trio.Event()
        self._ended = True
        self._grew.set()

    async def wait_for(self, pattern: bytes) -> re.Match[bytes]:
        """Wait until the log matches ``pattern``; fail if the process ends first."""
        with trio.fail_after(START_GUARD_SECONDS):
            while (match := re.search(pattern, self.log)) is None:
                if self._ended:
                    raise AssertionError(f"no {pattern!r} in the log: {self.text()}")
                await self._grew.wait()
        return match

    async def listening_on(self) -> str:
        """Where it says it listens: the rest of the server's "listening on" line."""
        return (await self.wait_for(rb"listening on (.*)\n")).group(1).decode()

    async def port(self) -> int:
        """The TCP port it says it listens on (127.0.0.1)."""
        return int((await self.wait_for(LISTENING)).group(1))

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.process.send_signal(signum)

    async def exit_status(self) -> int:
        """Wait for the process to end (and its log to close); its exit status."""
        with trio.move_on_after(EXIT_GUARD_SECONDS):
            status = await self.process.wait()
            while not self._ended:
                await self._grew.wait()
            return status
        # The log stays open while any process that inherited it (a worker) lives.
        state = "still running" if self.process.returncode is None else "ended, its log open"
        session = subprocess.run(
            ["ps", "-o", "pid,ppid,stat,wchan:20,args", "--sid", str(self.process.pid)],
            capture_output=True,
            text=True,
        ).stdout  # its session's processes, when it has one of its own
        raise AssertionError(
            f"not done in {EXIT_GUARD_SECONDS} s ({state}):\n{session}{self.text()}"
        )

    def text(self) -> str:
        """The log so far, for assertion messages."""
        return self.log.decode(errors="replace")


@asynccontextmanager
async def serving(
    arguments: Sequence[str],
    cwd: Path,
    *,
    pass_fds: Sequence[int] = (),
    argv: Sequence[str] | None = None,
    new_session: bool = False,
) -> AsyncIterator[Running]:
    """Start the command (or ``argv``); on the way out, kill it if it is still running.

    With ``new_session`` it runs in a session (and process group) of its own,
    so that a signal to its group reaches it and its children and nothing
    else; on the way out the whole group is killed.
    """
    process = await trio.lowlevel.open_process(
        list(argv) if argv is not None else command(*arguments),
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        start_new_session=new_session,
    )
    running = Running(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running.read_log)
            yield running
            await running.exit_status()
    finally:
        if new_session:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group this test started, by its id
            except ProcessLookupError:
                pass
        elif process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Read ``size`` bytes from ``stream``."""
    received = bytearray()
    with trio.fail_after(IO_GUARD_SECONDS):
        while len(received) < size:
            chunk = await stream.receive_some(size - len(received))
            if not chunk:
                raise AssertionError(f"EOF after {len(received)} of {size} bytes")
            received += chunk
    return bytes(received)


async def receive_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Read ``stream`` until the peer closes it."""
    received = bytearray()
    with trio.fail_after(IO_GUARD_SECONDS):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


async def echo_round_trip(stream: trio.abc.HalfCloseableStream, payload: bytes) -> bytes:
    """Send ``payload``, close our side, read the echo to EOF."""
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        return await receive_to_eof(stream)


async def connected(running: Running, send: bytes, expect: bytes) -> trio.SocketStream:
    """A connection to the command's port, once ``send`` is sent and ``expect`` received."""
    stream = await trio.open_tcp_stream("127.0.0.1", await running.port())
    await stream.send_all(send)
    assert await receive_exactly(stream, len(expect)) == expect
    return stream


async def stop(running: Running) -> int:
    """SIGTERM, then the exit status."""
    running.send_signal(signal.SIGTERM)
    return await running.exit_status()


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1, on a port the system picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# --- the command line itself ---


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"millpond {metadata.version('millpond')} (trio ")


def test_help_lists_the_serve_command(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "--version" in result.stdout


def test_serve_help_explains_every_flag(tmp_path: Path) -> None:
    result = run(["serve", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    flags = (
        "--host --port --uds --uds-mode --fd --backlog --max-connections --idle-timeout "
        "--read-timeout --write-timeout --handshake-timeout --graceful-timeout --certfile "
        "--keyfile --budget --poller --log-level --access-log --proxy-protocol "
        "--proxy-allow-from --proxy-header-timeout"
    ).split()
    for flag in flags:
        assert flag in result.stdout, flag
    assert "TARGET" in result.stdout and "module:handler" in result.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run([], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr


def test_console_script_finds_a_module_in_the_current_directory(app: Path) -> None:
    # The script's own directory, not the current one, is sys.path[0] here.
    script = Path(sys.executable).with_name("millpond")
    if not script.exists():
        pytest.skip("the millpond console script is not installed next to this Python")
    result = run(["serve", "app:not_async"], app, program=[str(script)])
    assert_one_line_error(result, "TARGET 'app:not_async' is a plain function")


# --- TARGETs that cannot be served ---


@pytest.mark.parametrize("target", ["app", "app:", ":echo", "app:not-a-name", "a b:echo"])
def test_malformed_target_is_a_usage_error(app: Path, target: str) -> None:
    assert_usage_error(run(["serve", target], app), "TARGET")


def test_target_module_not_found(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "no_such_module_here:echo"], app), "no module named 'no_such_module_here'"
    )


def test_target_submodule_not_found(app: Path) -> None:
    assert_one_line_error(run(["serve", "app.sub:echo"], app), "no module named 'app.sub'")


def test_target_with_a_syntax_error(app: Path) -> None:
    (app / "broken.py").write_text("async def echo(stream)\n    pass\n")
    assert_one_line_error(run(["serve", "broken:echo"], app), "syntax error in broken.py line 1")


def test_target_that_raises_a_multiline_message_while_importing(app: Path) -> None:
    (app / "raises.py").write_text("raise ValueError('first line\\nsecond line')\n")
    assert_one_line_error(
        run(["serve", "raises:echo"], app), "raised ValueError: first line second line"
    )


def test_target_that_raises_while_importing(app: Path) -> None:
    (app / "raises.py").write_text("x = 1\nraise RuntimeError('no database')\n")
    assert_one_line_error(
        run(["serve", "raises:echo"], app),
        "importing 'raises' raised RuntimeError: no database at raises.py line 2",
    )


def test_target_whose_dependency_is_missing(app: Path) -> None:
    (app / "needs.py").write_text("import no_such_dependency_here\n")
    assert_one_line_error(
        run(["serve", "needs:echo"], app),
        "raised ModuleNotFoundError: No module named 'no_such_dependency_here'",
    )


def test_target_file_that_does_not_exist(app: Path) -> None:
    assert_one_line_error(run(["serve", "./missing.py:echo"], app), "does not exist")


def test_target_without_the_attribute_lists_the_async_functions(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:ehco"], app),
        "module 'app' has no attribute 'ehco'",
        "(its async functions: activation_environment, echo, forever, peer)",
    )


def test_target_without_a_dotted_attribute(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:handlers.missing"], app),
        "'app:handlers' has no attribute 'missing'",
    )


def test_target_not_callable(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:not_callable"], app), "is of type int, not an async function"
    )


def test_target_not_async(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:not_async"], app),
        "is a plain function (def, not async def), not an async function",
    )


# --- flags that cannot be used ---


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--budget", "12Q"], "argument --budget: expected a byte count"),
        (["--budget", "0"], "argument --budget: expected a byte count"),
        (["--port", "70000"], "argument --port: expected a port number"),
        (["--port", "http"], "argument --port: expected a port number"),
        (["--uds-mode", "999"], "argument --uds-mode: expected permission bits"),
        (["--idle-timeout", "-1"], "argument --idle-timeout: expected a number of seconds"),
        (["--read-timeout", "nan"], "argument --read-timeout: expected a number of seconds"),
        (["--graceful-timeout", "soon"], "argument --graceful-timeout"),
        (["--max-connections", "0"], "argument --max-connections: expected a whole number"),
        (["--backlog", "-5"], "argument --backlog: expected a whole number"),
        (["--fd", "-1"], "argument --fd: expected a file descriptor"),
        (["--poller", "kqueue"], "argument --poller: invalid choice"),
        (["--log-level", "loud"], "argument --log-level: invalid choice"),
        (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
        (["--uds-mode", "600"], "--uds-mode needs --uds"),
        (["--proxy-protocol", "v3"], "argument --proxy-protocol: invalid choice"),
    ],
)
def test_bad_flag_value_is_a_usage_error(app: Path, arguments: list[str], fragment: str) -> None:
    assert_usage_error(run(["serve", "app:echo", *arguments], app), fragment)


def test_host_without_a_port_next_to_a_unix_socket(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:echo", "--uds", str(app / "s.sock"), "--host", "0.0.0.0"], app),
        "--host needs --port",
    )


def test_port_in_use(app: Path) -> None:
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        result = run(["serve", "app:echo", "--port", str(port)], app)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_live_unix_socket_in_use(app: Path) -> None:
    path = app / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        result = run(["serve", "app:echo", "--uds", str(path)], app)
    assert_one_line_error(result, f"cannot listen on unix:{path}", "in use")


def test_fd_that_is_not_open(app: Path) -> None:
    assert_one_line_error(
        run(["serve", "app:echo", "--fd", "1000"], app), "--fd 1000: no such file descriptor"
    )


def test_fd_that_is_not_a_socket(app: Path) -> None:
    # stdin is /dev/null here.
    assert_one_line_error(run(["serve", "app:echo", "--fd", "0"], app), "--fd 0 is not a socket")


def test_fd_that_is_not_listening(app: Path) -> None:
    with socket.socket() as unbound:
        fd = unbound.fileno()
        result = run(["serve", "app:echo", "--fd", str(fd)], app, pass_fds=[fd])
    assert_one_line_error(result, f"--fd {fd} is a socket that is not listening")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    """A CA, and a certificate for localhost and 127.0.0.1 it signed: (ca, cert file, key file)."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(certfile))
    issued.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


def test_missing_certificate(app: Path, certificate: tuple[trustme.CA, Path, Path]) -> None:
    missing = app / "missing.pem"
    result = run(
        ["serve", "app:echo", "--certfile", str(missing), "--keyfile", str(certificate[2])], app
    )
    assert_one_line_error(result, f"--certfile {missing}: No such file or directory")


def test_missing_key(app: Path, certificate: tuple[trustme.CA, Path, Path]) -> None:
    missing = app / "missing.pem"
    result = run(
        ["serve", "app:echo", "--certfile", str(certificate[1]), "--keyfile", str(missing)], app
    )
    assert_one_line_error(result, f"--keyfile {missing}: No such file or directory")


def test_unreadable_certificate(app: Path) -> None:
    # A directory cannot be read as a file, even by root (who reads any mode 000 file).
    result = run(["serve", "app:echo", "--certfile", str(app)], app)
    assert_one_line_error(result, f"--certfile {app}: Is a directory")


def test_certificate_file_that_holds_no_certificate(app: Path) -> None:
    result = run(["serve", "app:echo", "--certfile", str(app / "app.py")], app)
    assert_one_line_error(result, "no PEM certificate in it")


def test_certificate_without_its_key(app: Path, certificate: tuple[trustme.CA, Path, Path]) -> None:
    result = run(["serve", "app:echo", "--certfile", str(certificate[1])], app)
    assert_one_line_error(result, "holds no private key: give it with --keyfile")


def test_key_that_does_not_match_the_certificate(
    app: Path, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    other_key = app / "other-key.pem"
    certificate[0].issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    result = run(
        ["serve", "app:echo", "--certfile", str(certificate[1]), "--keyfile", str(other_key)], app
    )
    assert_one_line_error(result, "the private key does not match the certificate")


# --- serving ---


@pytest.mark.time_limit(60)
async def test_serves_a_file_target(app: Path, poller_name: str) -> None:
    target = f"{app / 'app.py'}:echo"
    async with serving(["serve", target, "--port", "0", "--poller", poller_name], app) as running:
        port = await running.port()
        await running.wait_for(rb"INFO millpond\.server: serving \S*app\.py:echo with millpond ")
        payload = b"hello millpond\n" * 10000
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await echo_round_trip(stream, payload) == payload
        assert await stop(running) == 0, running.text()
    assert b"Traceback" not in running.log, running.text()


@pytest.mark.time_limit(60)
async def test_serves_a_module_target_from_the_current_directory(app: Path) -> None:
    async with serving(["serve", "app:handlers.handle", "--port", "0"], app) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", await running.port())
        assert await echo_round_trip(stream, b"dotted") == b"dotted"
        assert await stop(running) == 0, running.text()


@pytest.mark.time_limit(60)
async def test_serves_a_unix_socket_with_its_mode(app: Path) -> None:
    path = app / "app.sock"
    arguments = ["serve", "app:echo", "--uds", str(path), "--uds-mode", "600"]
    async with serving(arguments, app) as running:
        assert await running.listening_on() == f"unix:{path}"  # no default port next to it
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        stream = await trio.open_unix_socket(str(path))
        assert await echo_round_trip(stream, b"over unix") == b"over unix"
        assert await stop(running) == 0, running.text()
    assert not path.exists()


@pytest.mark.time_limit(60)
async def test_serves_an_inherited_socket(app: Path) -> None:
    with listening_socket() as listener:
        fd, port = listener.fileno(), listener.getsockname()[1]
        arguments = ["serve", "app:echo", "--fd", str(fd)]
        async with serving(arguments, app, pass_fds=[fd]) as running:
            assert await running.listening_on() == f"127.0.0.1:{port}"
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await echo_round_trip(stream, b"inherited") == b"inherited"
            assert await stop(running) == 0, running.text()


# Starts the command as systemd does: the listening socket at fd 3, LISTEN_FDS=1,
# and LISTEN_PID the command's own (exec keeps the pid).
ACTIVATE = """
import os, sys
fd, listen_pid = int(sys.argv[1]), sys.argv[2]
os.dup2(fd, 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=listen_pid or str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "millpond.cli", *sys.argv[3:]])
"""


@pytest.mark.time_limit(60)
async def test_serves_systemd_sockets_and_hides_them_from_the_handler(app: Path) -> None:
    with listening_socket() as listener:
        fd, port = listener.fileno(), listener.getsockname()[1]
        argv = [sys.executable, "-c", ACTIVATE, str(fd), "", "serve", "app:activation_environment"]
        async with serving([], app, pass_fds=[fd], argv=argv) as running:
            # There only: not also on the default port.
            assert await running.listening_on() == f"127.0.0.1:{port}"
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert await receive_to_eof(stream) == b"None"  # LISTEN_FDS was removed
            assert await stop(running) == 0, running.text()


@pytest.mark.time_limit(60)
async def test_ignores_systemd_sockets_meant_for_another_process(app: Path) -> None:
    with listening_socket() as listener:
        fd = listener.fileno()
        argv = [sys.executable, "-c", ACTIVATE, str(fd), "1", "serve", "app:echo", "--port", "0"]
        async with serving([], app, pass_fds=[fd], argv=argv) as running:
            port = await running.port()
            assert port != listener.getsockname()[1]
            assert await running.listening_on() == f"127.0.0.1:{port}"
            assert await stop(running) == 0, running.text()


@pytest.mark.time_limit(60)
async def test_serves_tls(app: Path, certificate: tuple[trustme.CA, Path, Path]) -> None:
    ca, certfile, keyfile = certificate
    arguments = ["serve", "app:echo", "--port", "0", "--certfile", str(certfile)]
    async with serving([*arguments, "--keyfile", str(keyfile)], app) as running:
        port = await running.port()
        await running.wait_for(rb"serving app:echo over TLS")
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context, server_hostname="localhost")
        payload = b"secret" * 50000
        async with stream:
            # Send and read at once: an echo of 300 KB written before any of it
            # is read can fill both directions' buffers (a deadlock, not TLS's).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, payload)
                assert await receive_exactly(stream, len(payload)) == payload
        assert await stop(running) == 0, running.text()


@pytest.mark.time_limit(60)
async def test_access_log_shows_even_above_the_log_level(app: Path) -> None:
    # At warning "listening on" is not logged: serve a socket whose port we know.
    with listening_socket() as listener:
        fd, port = listener.fileno(), listener.getsockname()[1]
        arguments = ["serve", "app:echo", "--fd", str(fd), "--access-log", "--log-level", "warning"]
        async with serving(arguments, app, pass_fds=[fd]) as running:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await echo_round_trip(stream, b"hello") == b"hello"
            await running.wait_for(rb"INFO millpond\.access: 127\.0\.0\.1:\d+ .* in=5 out=5 ")
            assert await stop(running) == 0, running.text()
    assert b"listening on" not in running.log


@pytest.mark.time_limit(60)
async def test_idle_timeout_reaches_the_server(app: Path) -> None:
    arguments = ["serve", "app:forever", "--port", "0", "--idle-timeout", "0.2"]
    async with serving(arguments, app) as running:
        async with await connected(running, b"", b"ready\n") as stream:
            assert await receive_to_eof(stream) == b""  # closed by the server, not by us
        await running.wait_for(rb"idle_timeout")
        assert await stop(running) == 0, running.text()


@pytest.mark.time_limit(60)
async def test_proxy_protocol_gives_the_handler_the_original_client(app: Path) -> None:
    from millpond.protocols import build_v1

    arguments = ["serve", "app:peer", "--port", "0", "--proxy-protocol", "v1"]
    async with serving(arguments, app) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", await running.port())
        async with stream:
            await stream.send_all(build_v1(("192.0.2.9", 4242), ("192.0.2.1", 80)))
            assert await receive_to_eof(stream) == b"('192.0.2.9', 4242)"
        assert await stop(running) == 0, running.text()


# --- signals ---


@pytest.mark.time_limit(60)
async def test_sigterm_lets_a_transfer_in_flight_complete(app: Path) -> None:
    async with serving(["serve", "app:echo", "--port", "0"], app) as running:
        async with await connected(running, b"first half ", b"first half ") as stream:
            running.send_signal(signal.SIGTERM)
            await running.wait_for(rb"SIGTERM: shutting down gracefully")
            await running.wait_for(rb"accepting no more connections")
            await stream.send_all(b"second half")
            await stream.send_eof()
            assert await receive_to_eof(stream) == b"second half"
        assert await running.exit_status() == 0, running.text()
    await running.wait_for(rb"shut down")
    assert b"Traceback" not in running.log, running.text()


@pytest.mark.time_limit(60)
async def test_sigterm_twice_is_one_graceful_shutdown(app: Path) -> None:
    async with serving(["serve", "app:echo", "--port", "0"], app) as running:
        async with await connected(running, b"ping", b"ping") as stream:
            running.send_signal(signal.SIGTERM)
            await running.wait_for(rb"SIGTERM: shutting down gracefully")
            running.send_signal(signal.SIGTERM)
            await running.wait_for(rb"SIGTERM while shutting down: nothing more to do")
            await stream.send_all(b"pong")
            assert await receive_exactly(stream, 4) == b"pong"  # still served
            await stream.send_eof()
            assert await receive_to_eof(stream) == b""
        assert await running.exit_status() == 0, running.text()
    assert running.log.count(b"shutting down gracefully") == 1


# The command, with a SIGTERM once it listens and another in the one place a signal
# could make CPython print a traceback: Trio's run has closed its wake-up socket and
# not yet given the wake-up descriptor back (it does so through ``signal`` in its
# ``_wakeup_socketpair`` module, which this replaces). A supervisor's copy of a SIGTERM
# the process group already had can land there; the command must not notice.
SIGNAL_AS_THE_RUN_ENDS = """
import logging, os, signal, sys

from trio._core import _wakeup_socketpair

from millpond.cli.command import main


class SignalAsTheWakeupFdIsGivenBack:
    def __getattr__(self, name):
        return getattr(signal, name)

    def set_wakeup_fd(self, fd, **options):
        if fd == -1:  # Trio giving the descriptor back, its socket closed
            os.kill(os.getpid(), signal.SIGTERM)
        return signal.set_wakeup_fd(fd, **options)


class SigtermOnceListening(logging.Handler):
    def emit(self, record):
        if "stops it" in record.getMessage():
            os.kill(os.getpid(), signal.SIGTERM)


_wakeup_socketpair.signal = SignalAsTheWakeupFdIsGivenBack()
logging.getLogger("millpond.server").addHandler(SigtermOnceListening())
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigterm_as_the_trio_run_ends_changes_nothing(app: Path) -> None:
    program = (sys.executable, "-c", SIGNAL_AS_THE_RUN_ENDS)
    result = run(["serve", "app:echo", "--port", "0"], app, program=program)
    assert result.returncode == 0, result.stderr
    assert "shut down" in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.time_limit(60)
async def test_second_sigint_cancels_the_handlers_left(app: Path) -> None:
    # The grace period is far longer than the hang guard: only the second
    # SIGINT can end this handler in time.
    arguments = ["serve", "app:forever", "--port", "0", "--graceful-timeout", "3600"]
    async with serving(arguments, app) as running:
        async with await connected(running, b"", b"ready\n") as stream:
            running.send_signal(signal.SIGINT)
            await running.wait_for(rb"SIGINT: shutting down gracefully")
            await running.wait_for(rb"waiting for 1 connection")
            running.send_signal(signal.SIGINT)
            await running.wait_for(rb"SIGINT while shutting down: cancelling the connections left")
            assert await receive_to_eof(stream) == b""
        assert await running.exit_status() == 0, running.text()
    assert b"Traceback" not in running.log, running.text()
