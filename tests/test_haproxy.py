"""millpond behind a real HAProxy: the PROXY protocol, health checks, taking a server out.

Each test runs what a deployment runs: two ``millpond serve`` processes (started as
test_cli.py starts the command) and, in front of them, an HAProxy in the foreground with
one thread, configured by ``haproxy_config`` (docs/deployment.md, "Behind HAProxy", shows
that configuration and explains it line by line; a test here keeps the two the same).
Everything is on loopback. HAProxy listens on a socket the test opened and handed over
(``bind fd@N``), so no port is guessed; it logs every connection to stderr, and answers
``show stat`` on its stats socket, which is where the tests read what it thinks of each
server.

Clients bind the source address 127.0.0.23 before connecting (Linux routes all of
127.0.0.0/8 to the loopback interface), an address only the PROXY header can have told
the server: HAProxy's own connections to millpond come from 127.0.0.1.

They need the ``haproxy`` command (Debian's package ``haproxy``, which ``.ci/run``
installs when it is missing). Without it they are skipped, saying so.

Every wait is bounded by a hang guard far above how long it takes; no test asserts on
time.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme
from test_cli import (
    IO_GUARD_SECONDS,
    START_GUARD_SECONDS,
    Running,
    listening_socket,
    receive_exactly,
    serving,
)

# The Debian package puts haproxy in /usr/sbin, which is not on a user's PATH.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.skipif(
        HAPROXY is None,
        reason="HAProxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)",
    ),
    pytest.mark.time_limit(90),
]

HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.23"  # the client's address, which only the PROXY header carries

# Linux's IP_BIND_ADDRESS_NO_PORT (not in every Python's socket module): a bound
# address whose port is chosen at connect(), by the whole 4-tuple. Without it each
# bind() takes a port of its own, and the thousands of connections a test makes from
# one address could run out of ports while their TIME_WAITs last.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# How long a client waits for an echo that takes a millisecond before it counts
# the connection as stalled (only test_client_bytes_that_come_with_the_header_...).
STALL_GUARD_SECONDS = 2

# The name the servers' test certificate is for, and the clients ask for.
TLS_NAME = "localhost"

# Clients connecting in parallel while a server is taken out: enough that some
# connection is almost always on its way to the server being stopped.
CLIENT_LOOPS = 4

# The handler the servers run. It says who the client is, as the PROXY header told
# it, and which process served it; then it echoes. Under TLS (--certfile) it gets a
# trio.SSLStream, whose transport_stream is the millpond connection.
APP = """
import os


async def peer(stream):
    connection = getattr(stream, "transport_stream", stream)
    host, port = connection.getpeername()[:2]
    await stream.send_all(f"{host} {port} {os.getpid()}\\n".encode())
    async for chunk in stream:
        await stream.send_all(chunk)
"""

# The configuration. docs/deployment.md shows it with the addresses of
# DOCUMENTED_ADDRESSES and explains every line; test_the_deployment_guide_shows_this_config
# keeps the two the same.
CONFIG = r"""global
    nbthread 1
    log stderr format raw local0 info
    stats socket {stats_socket} mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch 1

frontend millpond_in
    bind {bind}
    default_backend millpond

backend millpond
    balance roundrobin
    option tcp-check
    tcp-check expect rstring ^[0-9a-f.:]+\ [0-9]+\ [0-9]+
    default-server check check-send-proxy inter 100ms fall 2 rise 2{check_tls}
    server a {address_a} {send_proxy_a}
    server b {address_b} {send_proxy_b}
"""

DOCUMENTED_ADDRESSES = {
    "stats_socket": "/run/haproxy/admin.sock",
    "bind": ":7000",
    "address_a": "10.0.0.11:7000",
    "address_b": "10.0.0.12:7000",
}


def haproxy_config(
    *,
    bind: str,
    servers: Sequence[tuple[str, str]],
    stats_socket: str,
    check_ca_file: str | None = None,
) -> str:
    """The configuration: a frontend on ``bind``; servers a and b, each (address, send-proxy*).

    With ``check_ca_file``, the servers serve TLS: health checks then make a TLS
    connection (after the PROXY header) and trust the certificate authority in it.
    """
    (address_a, send_proxy_a), (address_b, send_proxy_b) = servers
    check_tls = "" if check_ca_file is None else f" check-ssl ca-file {check_ca_file}"
    return CONFIG.format(
        check_tls=check_tls,
        bind=bind,
        stats_socket=stats_socket,
        address_a=address_a,
        send_proxy_a=send_proxy_a,
        address_b=address_b,
        send_proxy_b=send_proxy_b,
    )


@dataclass(frozen=True)
class Banner:
    """What the handler said: the client it sees, and the pid of the server process."""

    host: str
    port: int
    pid: int


class HAProxy:
    """A running HAProxy: its log (stderr) and its stats socket."""

    def __init__(self, running: Running, stats_socket: Path, port: int) -> None:
        self.running = running
        self.stats_socket = stats_socket
        self.port = port

    async def command(self, line: str) -> str:
        """Send one command to the stats socket; its answer."""
        stream = await trio.open_unix_socket(str(self.stats_socket))
        async with stream:
            await stream.send_all(line.encode() + b"\n")
            answer = bytearray()
            with trio.fail_after(IO_GUARD_SECONDS):
                while chunk := await stream.receive_some():
                    answer += chunk
        return answer.decode()

    async def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the backend's servers, by name: status, check_status, scur, ..."""
        lines = (await self.command("show stat")).splitlines()
        columns = lines[0].removeprefix("# ").split(",")
        rows = (dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line)
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "millpond" and row["svname"] != "BACKEND"
        }

    async def wait_for(
        self, what: str, condition: Callable[[dict[str, dict[str, str]]], bool]
    ) -> dict[str, dict[str, str]]:
        """Poll ``show stat`` until ``condition`` holds of the servers' rows; those rows."""
        servers: dict[str, dict[str, str]] = {}
        with trio.move_on_after(START_GUARD_SECONDS):
            while not condition(servers := await self.servers()):
                await trio.sleep(0.05)
            return servers
        raise AssertionError(f"HAProxy never showed {what}: {servers}\n{self.running.text()}")


def check_status(row: dict[str, str]) -> str:
    """The last check's result (``L7OK``, ``L4CON``, ...), without the in-progress mark."""
    return row["check_status"].removeprefix("* ")


def checks_passed(servers: dict[str, dict[str, str]]) -> bool:
    """Both servers up, and their last check passed at layer 7 (the banner matched)."""
    return all(row["status"] == "UP" and check_status(row) == "L7OK" for row in servers.values())


@dataclass
class Deployment:
    """Two millpond servers behind an HAProxy."""

    a: Running
    b: Running
    haproxy: HAProxy

    def pid(self, name: str) -> int:
        """The pid of server ``name`` ("a" or "b")."""
        return {"a": self.a, "b": self.b}[name].process.pid


@asynccontextmanager
async def behind_haproxy(
    directory: Path,
    modes: tuple[str, str],
    send_proxy: tuple[str, str],
    *options: str,
    tls: trustme.CA | None = None,
) -> AsyncIterator[Deployment]:
    """Servers a and b (``--proxy-protocol`` of ``modes``) behind HAProxy, its checks passed.

    With ``tls``, the servers serve TLS with a certificate for TLS_NAME from that
    authority, and HAProxy's checks are made over TLS. On the way out it stops
    whatever still runs: HAProxy with SIGUSR1 (its graceful stop), the servers with
    SIGTERM; each must exit with status 0.
    """
    (directory / "app.py").write_text(APP)
    check_ca_file = None
    if tls is not None:
        certificate = tls.issue_cert(TLS_NAME)
        certificate.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        certificate.private_key_pem.write_to_path(str(directory / "key.pem"))
        tls.cert_pem.write_to_path(str(directory / "ca.pem"))
        check_ca_file = str(directory / "ca.pem")
        options = (*options, "--certfile", "cert.pem", "--keyfile", "key.pem")
    arguments = ["serve", "app:peer", "--port", "0", "--access-log", *options]
    async with (
        serving([*arguments, "--proxy-protocol", modes[0]], directory) as a,
        serving([*arguments, "--proxy-protocol", modes[1]], directory) as b,
    ):
        addresses = [f"{HOST}:{await a.port()}", f"{HOST}:{await b.port()}"]
        servers = list(zip(addresses, send_proxy, strict=True))
        stats_socket = directory / "haproxy.sock"
        with listening_socket() as frontend:
            fd = frontend.fileno()
            config = haproxy_config(
                bind=f"fd@{fd}",
                servers=servers,
                stats_socket=str(stats_socket),
                check_ca_file=check_ca_file,
            )
            (directory / "haproxy.cfg").write_text(config)
            argv = [str(HAPROXY), "-db", "-f", str(directory / "haproxy.cfg")]
            async with serving([], directory, pass_fds=[fd], argv=argv) as running:
                haproxy = HAProxy(running, stats_socket, frontend.getsockname()[1])
                frontend.close()  # HAProxy has its own copy
                await wait_for_stats_socket(running, stats_socket)
                await haproxy.wait_for("both servers' checks passed", checks_passed)
                yield Deployment(a, b, haproxy)
                running.send_signal(signal.SIGUSR1)
                assert await running.exit_status() == 0, running.text()
        for server in (a, b):
            if server.process.returncode is None:
                server.send_signal(signal.SIGTERM)
            assert await server.exit_status() == 0, server.text()
            assert "Traceback" not in server.text(), server.text()


async def wait_for_stats_socket(running: Running, path: Path) -> None:
    """Wait until HAProxy answers on its stats socket (it is ready then); fail if it exits.

    The socket's file appears before HAProxy listens on it (a connection is refused
    meanwhile), so the wait is for an answer, not for the file.
    """
    with trio.fail_after(START_GUARD_SECONDS):
        while True:
            if running.process.returncode is not None:
                raise AssertionError(f"HAProxy did not start:\n{running.text()}")
            try:
                stream = await trio.open_unix_socket(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return


async def connect_from_client_host(port: int) -> tuple[trio.SocketStream, int]:
    """A connection to HAProxy from CLIENT_HOST; and its source port."""
    sock = trio.socket.socket()
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        await sock.bind((CLIENT_HOST, 0))
        await sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock), sock.getsockname()[1]


async def receive_lines(stream: trio.abc.ReceiveStream, count: int) -> list[bytes]:
    """The next ``count`` lines (each ending in a newline); fewer if the connection ends."""
    received = b""
    with trio.fail_after(IO_GUARD_SECONDS):
        while received.count(b"\n") < count:
            chunk = await stream.receive_some()
            if not chunk:
                break
            received += chunk
    return received.splitlines(keepends=True)[:count]


def parse_banner(line: bytes) -> Banner:
    """The handler's first line: ``HOST PORT PID``."""
    host, port, pid = line.decode().split()
    return Banner(host, int(port), int(pid))


async def receive_banner(stream: trio.abc.ReceiveStream) -> Banner | None:
    """The handler's first line, parsed; None if the connection ends before it."""
    lines = [line for line in await receive_lines(stream, 1) if line.endswith(b"\n")]
    return parse_banner(lines[0]) if lines else None


async def ask_who(port: int) -> tuple[int, Banner | None]:
    """Connect through HAProxy from CLIENT_HOST: (our source port, the handler's banner)."""
    stream, source_port = await connect_from_client_host(port)
    async with stream:
        return source_port, await receive_banner(stream)


@dataclass
class Traffic:
    """Clients connecting through HAProxy, one after another in each of several loops."""

    port: int
    served: Counter[int] = field(default_factory=Counter)  # connections by server pid
    failures: list[tuple[int, str]] = field(default_factory=list)  # (source port, what)
    stopping: bool = False

    async def keep_connecting(self) -> None:
        """Connect, read the banner, close; again, until ``stopping``. Record what happened."""
        while not self.stopping:
            try:
                stream, source_port = await connect_from_client_host(self.port)
            except OSError as exc:
                self.failures.append((0, repr(exc)))
                continue
            async with stream:  # what happened is recorded before we close
                try:
                    banner = await receive_banner(stream)
                except (OSError, trio.BrokenResourceError) as exc:
                    self.failures.append((source_port, repr(exc)))
                    continue
                if banner is None:
                    self.failures.append((source_port, "closed before the banner"))
                elif (banner.host, banner.port) != (CLIENT_HOST, source_port):
                    self.failures.append((source_port, f"the handler saw {banner}"))
                else:
                    self.served[banner.pid] += 1

    async def wait_until(self, what: str, condition: Callable[[], bool]) -> None:
        """Let the clients run until ``condition()`` holds."""
        with trio.move_on_after(START_GUARD_SECONDS):
            while not condition():
                await trio.sleep(0.01)
            return
        raise AssertionError(f"never {what}: served {self.served}, failed {self.failures[:5]}")


@asynccontextmanager
async def clients(port: int) -> AsyncIterator[Traffic]:
    """CLIENT_LOOPS loops of clients through HAProxy, for as long as the block runs."""
    traffic = Traffic(port)
    async with trio.open_nursery() as nursery:
        for _ in range(CLIENT_LOOPS):
            nursery.start_soon(traffic.keep_connecting)
        yield traffic
        traffic.stopping = True


# --- the client's address ---

SEND_PROXY_CASES = [
    pytest.param(("v1", "v1"), ("send-proxy", "send-proxy"), id="send-proxy-v1"),
    pytest.param(("v2", "v2"), ("send-proxy-v2", "send-proxy-v2"), id="send-proxy-v2-v2"),
    pytest.param(("auto", "auto"), ("send-proxy", "send-proxy-v2"), id="v1-and-v2-auto"),
]


@pytest.mark.parametrize(("modes", "send_proxy"), SEND_PROXY_CASES)
async def test_the_handler_sees_the_client_behind_haproxy(
    tmp_path: Path, modes: tuple[str, str], send_proxy: tuple[str, str]
) -> None:
    async with behind_haproxy(tmp_path, modes, send_proxy) as deployment:
        seen = []
        for _ in range(4):  # round robin: a, b, a, b
            source_port, banner = await ask_who(deployment.haproxy.port)
            assert banner is not None
            assert (banner.host, banner.port) == (CLIENT_HOST, source_port)
            seen.append(banner.pid)
        assert sorted(set(seen)) == sorted({deployment.pid("a"), deployment.pid("b")})
    for server in (deployment.a, deployment.b):
        assert "PROXY header" not in server.text()  # no header was refused


# --- health checks ---


@pytest.mark.parametrize(("modes", "send_proxy"), SEND_PROXY_CASES[:2])
async def test_health_checks_with_the_proxy_header_pass(
    tmp_path: Path, modes: tuple[str, str], send_proxy: tuple[str, str]
) -> None:
    # behind_haproxy waits until both checks pass: L7OK is the banner matched, so
    # millpond took the check's header (v2: LOCAL; v1: a TCP4 line naming HAProxy
    # itself) and ran the handler, which saw HAProxy as the peer.
    async with behind_haproxy(tmp_path, modes, send_proxy) as deployment:
        servers = await deployment.haproxy.servers()
        assert {name: (check_status(row), row["chkfail"]) for name, row in servers.items()} == {
            "a": ("L7OK", "0"),
            "b": ("L7OK", "0"),
        }
    for server in (deployment.a, deployment.b):
        assert "PROXY header" not in server.text()  # no header was refused


# --- taking a server out ---


async def test_a_drained_server_is_stopped_without_failing_a_client(tmp_path: Path) -> None:
    async with behind_haproxy(tmp_path, ("v2", "v2"), ("send-proxy-v2", "send-proxy-v2")) as d:
        pid_a, pid_b = d.pid("a"), d.pid("b")
        async with clients(d.haproxy.port) as traffic:
            await traffic.wait_until(
                "served by both", lambda: min(traffic.served[pid_a], traffic.served[pid_b]) >= 20
            )
            # Drain: HAProxy sends server a no new connection; those it has go on.
            assert (await d.haproxy.command("set server millpond/a state drain")).strip() == ""
            await d.haproxy.wait_for("a drained", lambda servers: servers["a"]["scur"] == "0")
            served_by_a = traffic.served[pid_a]
            d.a.send_signal(signal.SIGTERM)
            assert await d.a.exit_status() == 0, d.a.text()
            await d.haproxy.wait_for(
                "a's checks fail", lambda servers: check_status(servers["a"]) == "L4CON"
            )
            since = traffic.served[pid_b]
            await traffic.wait_until("served on", lambda: traffic.served[pid_b] >= since + 50)
        assert traffic.failures == []
        assert traffic.served[pid_a] == served_by_a


async def test_a_stopped_server_leaves_rotation_losing_only_its_accept_queue(
    tmp_path: Path,
) -> None:
    # SIGTERM with no drain first. millpond closes its listener at once: HAProxy's
    # next connects to it are refused, and "retries 3" with "option redispatch 1"
    # sends each to b at once; two failed checks ("fall 2") take a out of rotation.
    # What HAProxy cannot save: connections the kernel had already completed and
    # queued on a's listener, which closing the listener resets. HAProxy logs them
    # as established to a, then "SD" (the server closed first) with no byte from
    # it; a client whose connection was one of them fails, and the test finds each
    # failure among those.
    async with behind_haproxy(tmp_path, ("v2", "v2"), ("send-proxy-v2", "send-proxy-v2")) as d:
        pid_a, pid_b = d.pid("a"), d.pid("b")
        async with clients(d.haproxy.port) as traffic:
            await traffic.wait_until(
                "served by both", lambda: min(traffic.served[pid_a], traffic.served[pid_b]) >= 20
            )
            d.a.send_signal(signal.SIGTERM)
            assert await d.a.exit_status() == 0, d.a.text()
            await d.haproxy.wait_for("a down", lambda servers: servers["a"]["status"] == "DOWN")
            since = traffic.served[pid_b]
            await traffic.wait_until("served on", lambda: traffic.served[pid_b] >= since + 50)
        log = d.haproxy.running.text()
    reset_in_a_queue = {
        int(port)
        for port in re.findall(
            rf"{re.escape(CLIENT_HOST)}:(\d+) \[[^\]]*\] millpond_in millpond/a \S+ 0 SD", log
        )
    }
    assert {port for port, _ in traffic.failures} <= reset_in_a_queue, (traffic.failures, log)


# --- the client speaks first ---


async def count_stalls(talk: Callable[[], Awaitable[bool]]) -> int:
    """Run ``talk`` in 10 rounds of 20 clients at once; how many it said stalled.

    Whether a client's first bytes are queued together with the header when
    millpond reads it depends on timing (1 to 19 connections in 20 here), so
    many clients, and at once.
    """
    stalled = 0

    async def one() -> None:
        nonlocal stalled
        if not await talk():
            stalled += 1

    for _ in range(10):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
    return stalled


@pytest.mark.parametrize("poller", ["epoll", "trio"])
async def test_client_bytes_that_come_with_the_header_reach_the_handler(
    tmp_path: Path, poller: str
) -> None:
    # The client speaks first, as most protocols do: HAProxy then sends the header
    # and the client's bytes back to back, and often both are queued before
    # millpond reads the header, which must leave the client's bytes readable
    # (with the epoll poller they once waited for more bytes that never came).
    modes, send_proxy = ("v2", "v2"), ("send-proxy-v2", "send-proxy-v2")
    async with behind_haproxy(tmp_path, modes, send_proxy, "--poller", poller) as deployment:

        async def speak_first() -> bool:
            stream, source_port = await connect_from_client_host(deployment.haproxy.port)
            async with stream:
                await stream.send_all(b"ping\n")
                # A hang guard, not a measure: the echo takes a millisecond, and a
                # stalled connection never gets it (HAProxy has nothing more to send).
                with trio.move_on_after(STALL_GUARD_SECONDS):
                    lines = await receive_lines(stream, 2)
                    assert lines[1:] == [b"ping\n"], lines
                    banner = parse_banner(lines[0])
                    assert (banner.host, banner.port) == (CLIENT_HOST, source_port)
                    return True
                return False

        assert await count_stalls(speak_first) == 0


# --- TLS after the header ---


async def test_tls_through_haproxy_after_the_proxy_header(tmp_path: Path) -> None:
    # HAProxy passes the client's TLS through (mode tcp) after the v2 header, and
    # the ClientHello often arrives with it. The checks pass too (behind_haproxy
    # waits for L7OK): each is a PROXY header, a TLS handshake and the banner over it.
    authority = trustme.CA()
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    modes, send_proxy = ("v2", "v2"), ("send-proxy-v2", "send-proxy-v2")
    async with behind_haproxy(tmp_path, modes, send_proxy, tls=authority) as deployment:
        served: Counter[int] = Counter()

        async def over_tls() -> bool:
            raw, source_port = await connect_from_client_host(deployment.haproxy.port)
            stream = trio.SSLStream(raw, client_context, server_hostname=TLS_NAME)
            async with stream:
                with trio.move_on_after(STALL_GUARD_SECONDS):  # a hang guard, as above
                    await stream.do_handshake()  # the ClientHello goes at once
                    banner = await receive_banner(stream)
                    assert banner is not None
                    assert (banner.host, banner.port) == (CLIENT_HOST, source_port)
                    served[banner.pid] += 1
                    await stream.send_all(b"over tls\n")
                    assert await receive_exactly(stream, 9) == b"over tls\n"
                    return True
                return False

        assert await count_stalls(over_tls) == 0
        assert set(served) == {deployment.pid("a"), deployment.pid("b")}
        servers = await deployment.haproxy.servers()
        assert {name: check_status(row) for name, row in servers.items()} == {
            "a": "L7OK",
            "b": "L7OK",
        }


# --- the documentation ---


def test_the_deployment_guide_shows_this_config() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "deployment.md").read_text()
    section = re.split(r"^## .*Behind HAProxy$", guide, maxsplit=1, flags=re.MULTILINE)[1]
    shown = section.split("```haproxy\n", 1)[1].split("```", 1)[0]
    documented = haproxy_config(
        bind=DOCUMENTED_ADDRESSES["bind"],
        servers=[
            (DOCUMENTED_ADDRESSES["address_a"], "send-proxy-v2"),
            (DOCUMENTED_ADDRESSES["address_b"], "send-proxy-v2"),
        ],
        stats_socket=DOCUMENTED_ADDRESSES["stats_socket"],
    )
    assert shown == documented
