"""serve() and Server: structure, errors, shutdown, fairness, over loopback."""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import socket
import sys

import pytest
import trio
import trio.testing
from conftest import connect, echo, open_fds
from scenarios import all_tasks

import millpond

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="EpollPoller needs Linux")

# Hang guard only, never a timing assertion: on loopback every step here
# takes microseconds, so reaching this means something parked for ever.
HANG_GUARD_SECONDS = 10

# Connections opened in one go by the connect-flood test: several accept
# batches' worth, and well below the smallest listen backlog Linux clamps to
# (net.core.somaxconn was 128 before 5.4).
CONNECT_FLOOD = 100


@pytest.mark.time_limit(150)
async def test_thousand_concurrent_connections_echo_every_byte(
    poller_name: str, start_server
) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1234)
    payloads = [rng.randbytes(rng.randint(1, 20_000)) for _ in range(1000)]
    handlers_started = 0
    all_handlers_running = trio.Event()

    async def counting_echo(stream: millpond.Connection) -> None:
        nonlocal handlers_started
        handlers_started += 1
        if handlers_started == len(payloads):
            all_handlers_running.set()
        await echo(stream)

    server = await start_server(counting_echo)
    verified = 0

    async def client(payload: bytes) -> None:
        nonlocal verified
        stream = await connect(server, poller_name)
        async with stream:
            await all_handlers_running.wait()  # all 1000 are open at the same time
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_then_eof, stream, payload)
                received = bytearray()
                while chunk := await stream.receive_some():
                    received += chunk
            assert received == payload
            verified += 1

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for payload in payloads:
                nursery.start_soon(client, payload)
            await all_handlers_running.wait()
            assert server.statistics().connections_active == len(payloads)
    assert verified == len(payloads)


async def test_connections_accepted_counts_each_connection_once(
    poller_name: str, start_server
) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(echo)
    for _ in range(3):
        stream = await connect(server, poller_name)
        async with stream:
            await stream.send_all(b"x")
            with trio.fail_after(HANG_GUARD_SECONDS):
                assert await stream.receive_some() == b"x"
    assert server.statistics().connections_accepted == 3


async def _send_then_eof(stream: millpond.Connection, payload: bytes) -> None:
    await stream.send_all(payload)
    await stream.send_eof()


@pytest.mark.time_limit(60)
async def test_cancelling_serve_mid_transfer_leaves_nothing_behind(poller_name: str) -> None:
    fds_before = open_fds()
    poller = millpond.get_poller(poller_name)
    handlers_running = 0
    all_streaming = trio.Event()

    async def streaming_echo(stream: millpond.Connection) -> None:
        nonlocal handlers_running
        handlers_running += 1
        if handlers_running == 50:
            all_streaming.set()
        try:
            await echo(stream)
        finally:
            handlers_running -= 1

    server = millpond.Server(streaming_echo, 0, host="127.0.0.1", poller=poller_name)
    clients: list[millpond.Connection] = []
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as server_nursery:
            await server_nursery.start(server.run)
            for _ in range(50):
                stream = await connect(server, poller_name)
                clients.append(stream)
                outer.start_soon(_flood_and_drain, stream)
            with trio.fail_after(30):
                await all_streaming.wait()
            # Every connection is mid-transfer: cancel the server now.
            server_nursery.cancel_scope.cancel()
        assert handlers_running == 0
        assert server.statistics().connections_active == 0
        # Only the clients' own sockets are still registered: no listener,
        # no server-side connection.
        assert poller.registered_fds() == {stream.socket.fileno() for stream in clients}
        task_names = [task.name for task in all_tasks()]
        assert not [name for name in task_names if "Server" in name], task_names
        outer.cancel_scope.cancel()
    for stream in clients:
        await stream.aclose()
    assert poller.registered_fds() == frozenset()
    leftover = open_fds() - fds_before - _epoll_fds(poller_name)
    assert not leftover, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leftover}


def _epoll_fds(poller_name: str) -> set[int]:
    # The run's own epoll fd stays open until the run ends; nothing else may.
    if poller_name != "epoll":
        return set()
    poller = millpond.get_poller("epoll")
    return {poller._epoll.fileno()}  # type: ignore[attr-defined]


@linux_only
async def test_stopped_server_leaves_no_listener_in_the_epoll_set() -> None:
    # The kernel drops a socket from an epoll set only when its last fd
    # closes. A listener closed before EPOLL_CTL_DEL while another fd keeps it
    # open (a dup, a forked worker's copy) would stay in the set, and every
    # connect to it would be an event for whichever socket reuses the number.
    poller = millpond.get_poller("epoll")
    server = millpond.Server(echo, 0, host="127.0.0.1", poller="epoll")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        [listener_fd] = poller.registered_fds()
        duplicate = os.dup(listener_fd)
        nursery.cancel_scope.cancel()
    try:
        await trio.testing.wait_all_tasks_blocked()
        before = poller.statistics().events_dispatched
        # The dup still listens: the connect completes into its backlog.
        with socket.create_connection(server.addresses[0][:2]):
            await trio.testing.wait_all_tasks_blocked()
        assert poller.statistics().events_dispatched == before
    finally:
        os.close(duplicate)


async def _flood_and_drain(stream: millpond.Connection) -> None:
    async def drain() -> None:
        while await stream.receive_some():
            pass

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            while True:
                await stream.send_all(b"x" * 16384)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server went away: that is what the caller is testing


async def test_handler_exception_is_logged_with_peer_and_closes_only_that_connection(
    poller_name: str, start_server, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    async def handler(stream: millpond.Connection) -> None:
        data = await stream.receive_some()
        if data == b"boom":
            raise ValueError("handler exploded")
        await stream.send_all(data)
        await echo(stream)

    server = await start_server(handler)
    healthy = await connect(server, poller_name)
    doomed = await connect(server, poller_name)
    with caplog.at_level(logging.ERROR, logger="millpond.server"):
        await doomed.send_all(b"boom")
        with trio.fail_after(10):
            assert await doomed.receive_some() == b""  # closed by the server
    peer = doomed.getsockname()
    [record] = [r for r in caplog.records if r.name == "millpond.server"]
    assert str(peer[1]) in record.getMessage()
    assert record.exc_info is not None and "handler exploded" in str(record.exc_info[1])
    assert server.statistics().handler_errors == 1
    await healthy.send_all(b"still here")
    assert await healthy.receive_some() == b"still here"
    late = await connect(server, poller_name)  # and it still accepts
    await late.send_all(b"late")
    assert await late.receive_some() == b"late"
    for stream in (healthy, doomed, late):
        await stream.aclose()


async def test_accept_capacity_error_backs_off_and_keeps_serving(
    poller_name: str, start_server, monkeypatch: pytest.MonkeyPatch, idle_clock
) -> None:  # type: ignore[no-untyped-def]
    failures = {"left": 3}
    real_accept = socket.socket.accept

    def failing_accept(self: socket.socket) -> tuple[socket.socket, object]:
        if failures["left"] and self.type == socket.SOCK_STREAM and _is_listener(self):
            failures["left"] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", failing_accept)
    server = await start_server(echo)
    stream = await connect(server, poller_name)
    async with stream:
        await stream.send_all(b"after backoff")
        with trio.fail_after(30):
            assert await stream.receive_some() == b"after backoff"
    assert server.statistics().accept_backoffs == 3


def _is_listener(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


@pytest.mark.parametrize(
    "error", [errno.ECONNABORTED, errno.EPROTO, errno.EPERM], ids=errno.errorcode.get
)
async def test_accept_error_about_one_connection_skips_it_and_serving_goes_on(
    poller_name: str, start_server, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:  # type: ignore[no-untyped-def]
    real_accept = socket.socket.accept
    aborted: list[object] = []

    def aborting_accept(self: socket.socket) -> tuple[socket.socket, object]:
        # The kernel's view: the first client was gone (reset, refused by a
        # firewall rule) by the time the server accepted it.
        sock, address = real_accept(self)
        if not aborted:
            aborted.append(address)
            sock.close()
            raise OSError(error, os.strerror(error))
        return sock, address

    monkeypatch.setattr(socket.socket, "accept", aborting_accept)
    server = await start_server(echo)
    victim = await connect(server, poller_name)
    await trio.testing.wait_all_tasks_blocked()
    assert aborted, "the accept loop never met the error"
    stream = await connect(server, poller_name)
    async with victim, stream:
        await stream.send_all(b"the next one is served")
        with trio.fail_after(HANG_GUARD_SECONDS):
            assert await stream.receive_some() == b"the next one is served"
    statistics = server.statistics()
    assert (statistics.connections_accepted, statistics.accept_backoffs) == (1, 0)


async def test_unexpected_accept_error_propagates(
    poller_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_accept(self: socket.socket) -> tuple[socket.socket, object]:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(socket.socket, "accept", broken_accept)
    server = millpond.Server(echo, 0, host="127.0.0.1", poller=poller_name)
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, check=lambda e: e.errno == errno.EBADF), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            probe = socket.create_connection(server.addresses[0][:2])
            probe.close()
            with trio.fail_after(10):
                await trio.sleep_forever()


@pytest.mark.time_limit(90)
async def test_flooding_connection_does_not_starve_interactive_one(
    poller_name: str, start_server
) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(echo)
    flooder = await connect(server, poller_name)
    interactive = await connect(server, poller_name)
    round_trips = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_flood_and_drain, flooder)
        with trio.fail_after(60):
            for i in range(200):
                message = b"%d" % i
                await interactive.send_all(message)
                received = b""
                while len(received) < len(message):
                    received += await interactive.receive_some()
                assert received == message
                round_trips += 1
        nursery.cancel_scope.cancel()
    assert round_trips == 200
    await flooder.aclose()
    await interactive.aclose()


async def test_connect_flood_is_accepted_in_batches_that_let_other_tasks_run(
    poller_name: str, start_server
) -> None:  # type: ignore[no-untyped-def]
    accepted_when_handlers_ran: list[int] = []
    all_handlers_ran = trio.Event()

    async def note_accepted(stream: millpond.Connection) -> None:
        accepted_when_handlers_ran.append(server.statistics().connections_accepted)
        if len(accepted_when_handlers_ran) == CONNECT_FLOOD:
            all_handlers_ran.set()

    server = await start_server(note_accepted)
    # Blocking connects to loopback complete into the listen backlog without
    # a checkpoint: the accept loop wakes to find the whole flood queued.
    clients = [socket.create_connection(server.addresses[0][:2]) for _ in range(CONNECT_FLOOD)]
    try:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await all_handlers_ran.wait()
    finally:
        for client in clients:
            client.close()
    # A handler can only run once the accept loop yields; had it accepted the
    # whole flood first, the earliest handler would see all of it accepted.
    assert accepted_when_handlers_ran[0] < CONNECT_FLOOD, accepted_when_handlers_ran[:3]


async def test_nursery_start_returns_bound_addresses(poller_name: str) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            functools.partial(millpond.serve, echo, 0, host="127.0.0.1", poller=poller_name)
        )
        [(host, port)] = addresses
        assert host == "127.0.0.1" and port > 0
        stream = await millpond.open_connection(host, port, poller=poller_name)
        async with stream:
            await stream.send_all(b"hi")
            assert await stream.receive_some() == b"hi"
        nursery.cancel_scope.cancel()


async def test_wildcard_host_listens_on_one_port_for_every_family(poller_name: str) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            functools.partial(millpond.serve, echo, 0, poller=poller_name)
        )
        assert len({address[1] for address in addresses}) == 1
        port = addresses[0][1]
        stream = await millpond.open_connection("127.0.0.1", port, poller=poller_name)
        async with stream:
            await stream.send_all(b"v4")
            assert await stream.receive_some() == b"v4"
        nursery.cancel_scope.cancel()


async def test_broken_client_is_logged_without_counting_as_handler_error(
    poller_name: str, start_server, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    import struct

    server = await start_server(echo)
    stream = await connect(server, poller_name)
    await stream.send_all(b"x")
    assert await stream.receive_some() == b"x"
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with caplog.at_level(logging.INFO, logger="millpond.server"):
        await stream.aclose()
        with trio.fail_after(10):
            while server.statistics().connections_active:
                await trio.sleep(0.01)
    assert server.statistics().handler_errors == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"handler": "nope", "port": 0}, TypeError, "handler"),
        ({"handler": echo, "port": -1}, ValueError, "port"),
        ({"handler": echo, "port": 70000}, ValueError, "port"),
        ({"handler": echo, "port": "80"}, TypeError, "port"),
        ({"handler": echo, "port": True}, TypeError, "port"),
        ({"handler": echo, "port": 0, "poller": "kqueue"}, ValueError, "poller"),
        ({"handler": echo, "port": 0, "backlog": 0}, ValueError, "backlog"),
        ({"handler": echo, "port": 0, "host": 127}, TypeError, "host"),
    ],
)
async def test_bad_arguments_raise_naming_the_argument(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        await millpond.serve(**kwargs)  # type: ignore[arg-type]


async def test_server_cannot_run_twice(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(echo)
    with pytest.raises(RuntimeError):
        await server.run()
