"""Where a server listens: TCP ports, Unix domain sockets, and listening sockets you bring."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import echo

import millpond

HOST = "127.0.0.1"


async def unix_round_trip(path: str | Path, message: bytes = b"over a unix socket") -> bytes:
    client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        await client.connect(os.fspath(path))
        await client.send(message)
        with trio.fail_after(10):
            return await client.recv(len(message))


async def test_a_unix_socket_server_serves_and_removes_its_file(
    poller_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    async with trio.open_nursery() as nursery:
        server = millpond.Server(echo, uds=path, uds_mode=0o600, poller=poller_name)
        await nursery.start(server.run)
        assert server.addresses == (os.fspath(path),)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await unix_round_trip(path) == b"over a unix socket"
        server.shutdown(grace=5)
    assert not path.exists()


async def test_a_stale_unix_socket_file_is_replaced(poller_name: str, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(os.fspath(path))  # bound, then closed without unlink: a crashed server
    assert path.exists()
    async with trio.open_nursery() as nursery:
        server = millpond.Server(echo, uds=path, poller=poller_name)
        await nursery.start(server.run)
        assert await unix_round_trip(path) == b"over a unix socket"
        server.shutdown(grace=5)


async def test_a_live_unix_socket_is_never_taken_over(poller_name: str, tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(os.fspath(path))
        live.listen()
        server = millpond.Server(echo, uds=path, poller=poller_name)
        with pytest.raises(OSError) as raised:
            await server.run()
        assert raised.value.errno == errno.EADDRINUSE
        assert path.exists()


async def test_a_file_that_is_not_a_socket_is_never_deleted(
    poller_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    server = millpond.Server(echo, uds=path, poller=poller_name)
    with pytest.raises(OSError, match="not a socket"):
        await server.run()
    assert path.read_text() == "keep me"


async def test_listening_sockets_you_bring_are_served_and_closed_at_the_end(
    poller_name: str,
) -> None:
    mine = socket.create_server((HOST, 0))
    port = mine.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = millpond.Server(echo, sockets=[mine], poller=poller_name)
        addresses = await nursery.start(server.run)
        assert addresses == [(HOST, port)]
        client = await millpond.open_connection(HOST, port, poller=poller_name)
        await client.send_all(b"brought")
        with trio.fail_after(10):
            assert await client.receive_some() == b"brought"
        await client.aclose()
        server.shutdown(grace=5)
    assert mine.fileno() == -1


async def test_a_port_a_unix_socket_and_brought_sockets_together(
    poller_name: str, tmp_path: Path
) -> None:
    brought = socket.create_server((HOST, 0))
    async with trio.open_nursery() as nursery:
        server = millpond.Server(
            echo, 0, host=HOST, uds=tmp_path / "s", sockets=[brought], poller=poller_name
        )
        addresses = await nursery.start(server.run)
        assert len(addresses) == 3
        assert await unix_round_trip(tmp_path / "s", b"three ways") == b"three ways"
        server.shutdown(grace=5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "port, uds or sockets"),
        ({"sockets": socket.socket}, TypeError, "sockets"),
        ({"uds": 3}, TypeError, "uds"),
        ({"uds": "/tmp/x", "uds_mode": 0o1777}, ValueError, "uds_mode"),
        ({"port": 0, "max_connections": 0}, ValueError, "max_connections"),
        ({"port": 0, "idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"port": 0, "read_timeout": "1"}, TypeError, "read_timeout"),
        ({"port": 0, "write_timeout": float("nan")}, ValueError, "write_timeout"),
        ({"port": 0, "ssl_context": "yes"}, TypeError, "ssl_context"),
        ({"port": 0, "access_log": 1}, TypeError, "access_log"),
    ],
)
def test_bad_arguments_name_themselves(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        millpond.Server(echo, **kwargs)  # type: ignore[arg-type]


def test_a_socket_that_is_not_listening_is_refused() -> None:
    with socket.socket() as idle:
        idle.bind((HOST, 0))
        with pytest.raises(ValueError, match="not listening"):
            millpond.Server(echo, sockets=[idle])


async def test_two_servers_share_a_port_with_reuse_port(poller_name: str) -> None:
    async with trio.open_nursery() as nursery:
        first = millpond.Server(echo, 0, host=HOST, reuse_port=True, poller=poller_name)
        [(_, port)] = await nursery.start(first.run)
        second = millpond.Server(echo, port, host=HOST, reuse_port=True, poller=poller_name)
        await nursery.start(second.run)
        for _ in range(20):
            client = await millpond.open_connection(HOST, port, poller=poller_name)
            await client.send_all(b"either")
            with trio.fail_after(10):
                assert await client.receive_some() == b"either"
            await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        accepted = [s.statistics().connections_accepted for s in (first, second)]
        assert sum(accepted) == 20
        first.shutdown(0)
        second.shutdown(0)


async def test_without_reuse_port_a_second_server_on_the_port_fails(poller_name: str) -> None:
    async with trio.open_nursery() as nursery:
        first = millpond.Server(echo, 0, host=HOST, poller=poller_name)
        [(_, port)] = await nursery.start(first.run)
        with pytest.raises(OSError) as raised:
            await millpond.Server(echo, port, host=HOST, poller=poller_name).run()
        assert raised.value.errno == errno.EADDRINUSE
        first.shutdown(0)
