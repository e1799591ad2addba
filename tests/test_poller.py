"""Specifications for millpond._core.poller: registrations, waking, edges, fd reuse, lifetime.

Everything runs on real loopback TCP sockets. Tests that read the epoll
poller's internals (remembered edges, parked-task slots, statistics) are
Linux-only; the rest run against both pollers.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing
from conftest import connect, open_fds, socket_pair

import millpond
from millpond._core.poller import POLLER_ENV_VAR, EpollPoller, Registration, TrioPoller, get_poller

ServerStarter = Callable[
    [Callable[[millpond.Connection], Awaitable[None]]], Awaitable[millpond.Server]
]

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="EpollPoller needs Linux")

# How many sockets to open while looking for one that reuses a given fd
# number. The kernel hands out the lowest free number, so it comes within a
# few tries unless something else keeps grabbing numbers.
MAX_FD_REUSE_TRIES = 64

# Hang guard only, never a timing assertion: loopback wake-ups take
# microseconds, so reaching this means a task parked for ever.
HANG_GUARD_SECONDS = 10

# A loopback connection whose reader never reads absorbs a few MiB at most;
# 1000 sends of 64 KiB is far beyond that, so reaching it means no EAGAIN.
MAX_FILL_SENDS = 1000


# -- raw loopback sockets ----------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A blocking loopback listener to make raw TCP pairs with."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def accept_pair(
    listener: socket.socket, client: socket.socket
) -> tuple[socket.socket, socket.socket]:
    """Connect ``client`` to ``listener``; return (client, peer), client non-blocking."""
    client.connect(listener.getsockname())
    peer, _ = listener.accept()
    client.setblocking(False)
    return client, peer


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A fresh loopback TCP pair: (non-blocking socket to register, blocking peer)."""
    return accept_pair(listener, socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def socket_with_fd(fd: int) -> tuple[socket.socket, list[socket.socket]]:
    """Open TCP sockets until one gets fd number ``fd``; return it and the others."""
    others: list[socket.socket] = []
    for _ in range(MAX_FD_REUSE_TRIES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sock.fileno() == fd:
            return sock, others
        others.append(sock)
    for sock in others:
        sock.close()
    pytest.fail(f"fd {fd} was not reused within {MAX_FD_REUSE_TRIES} sockets")


def fill_send_queue(sock: socket.socket, registration: Registration) -> None:
    """Send through the registration until the kernel says EAGAIN (which clears ``writable``)."""
    chunk = b"x" * 65536
    for _ in range(MAX_FILL_SENDS):
        if not registration.send(chunk):
            assert not registration.writable
            return
    raise AssertionError("the kernel never said EAGAIN")


class ParkedWaiter:
    """A task parked in ``wait_readable``/``wait_writable``, and how it ended."""

    def __init__(self) -> None:
        self.returned = False
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def run(self, wait: Callable[[], Awaitable[None]]) -> None:
        try:
            await wait()
            self.returned = True
        except (trio.ClosedResourceError, trio.BusyResourceError) as exc:
            self.error = exc
        finally:
            self.done.set()


# -- registering -------------------------------------------------------------------------


async def test_register_rejects_blocking_socket(poller_name: str, listener: socket.socket) -> None:
    sock, peer = tcp_pair(listener)
    with sock, peer:
        sock.setblocking(True)
        with pytest.raises(ValueError, match="non-blocking"):
            get_poller(poller_name).register(sock)


async def test_register_rejects_non_socket(poller_name: str) -> None:
    with pytest.raises(TypeError, match="sock"):
        get_poller(poller_name).register(3)  # type: ignore[arg-type]


async def test_register_rejects_socket_registered_twice(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        try:
            with pytest.raises(ValueError, match="already registered"):
                poller.register(sock)
        finally:
            poller.unregister(registration)


async def test_register_rejects_closed_socket(poller_name: str, listener: socket.socket) -> None:
    sock, peer = tcp_pair(listener)
    with peer:
        sock.close()
        with pytest.raises(trio.ClosedResourceError):
            get_poller(poller_name).register(sock)


async def test_registration_is_found_by_socket_until_unregistered(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        assert poller.registration(sock) is registration
        assert sock.fileno() in poller.registered_fds()
        poller.unregister(registration)
        assert registration.closed
        assert sock.fileno() not in poller.registered_fds()
        with pytest.raises(KeyError):
            poller.registration(sock)


async def test_unregister_twice_is_harmless(poller_name: str, listener: socket.socket) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        poller.unregister(registration)
        poller.unregister(registration)
        assert registration.closed


async def test_wait_on_unregistered_registration_raises_closed(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        poller.unregister(registration)
        with trio.fail_after(HANG_GUARD_SECONDS):
            with pytest.raises(trio.ClosedResourceError):
                await registration.wait_readable()
            with pytest.raises(trio.ClosedResourceError):
                await registration.wait_writable()


# -- choosing a poller -------------------------------------------------------------------


async def test_get_poller_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="poller"):
        get_poller("nope")


async def test_get_poller_rejects_non_string_name() -> None:
    with pytest.raises(TypeError, match="poller"):
        get_poller(3)  # type: ignore[arg-type]


async def test_env_var_selects_trio_poller_for_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_ENV_VAR, "trio")
    poller = get_poller("auto")
    assert isinstance(poller, TrioPoller)
    assert poller is get_poller("trio")


@linux_only
async def test_env_var_selects_epoll_poller_for_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_ENV_VAR, "epoll")
    poller = get_poller()
    assert isinstance(poller, EpollPoller)
    assert poller is get_poller("epoll")


async def test_env_var_does_not_override_explicit_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_ENV_VAR, "trio")
    expected = EpollPoller if sys.platform == "linux" else TrioPoller
    name = "epoll" if sys.platform == "linux" else "trio"
    assert isinstance(get_poller(name), expected)


async def test_env_var_with_unknown_name_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_ENV_VAR, "kqueue-please")
    with pytest.raises(ValueError, match=POLLER_ENV_VAR):
        get_poller("auto")


async def test_auto_without_env_var_picks_epoll_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLLER_ENV_VAR, raising=False)
    expected = EpollPoller if sys.platform == "linux" else TrioPoller
    assert isinstance(get_poller("auto"), expected)


async def test_one_poller_of_each_kind_per_run(poller_name: str) -> None:
    assert get_poller(poller_name) is get_poller(poller_name)


@linux_only
def test_each_run_gets_its_own_epoll_poller() -> None:
    async def poller_of_this_run() -> millpond.Poller:
        return get_poller("epoll")

    assert trio.run(poller_of_this_run) is not trio.run(poller_of_this_run)


# -- lifetime of the epoll dispatcher -------------------------------------------------------


@linux_only
def test_finished_run_leaves_no_epoll_fd_open() -> None:
    async def use_epoll_poller() -> None:
        before_poller = open_fds()
        poller = get_poller("epoll")
        # The poller's own epoll fd is the one new fd.
        assert len(open_fds() - before_poller) == 1
        with trio.fail_after(HANG_GUARD_SECONDS):
            client, server = await socket_pair("epoll")
        await client.aclose()
        await server.aclose()
        assert poller.registered_fds() == frozenset()

    before = open_fds()
    trio.run(use_epoll_poller)
    assert open_fds() == before


@linux_only
def test_registration_left_at_run_end_is_closed(listener: socket.socket) -> None:
    sock, peer = tcp_pair(listener)
    with sock, peer:

        async def register_and_forget() -> Registration:
            return get_poller("epoll").register(sock)

        registration = trio.run(register_and_forget)
        assert registration.closed


@linux_only
def test_poller_of_finished_run_refuses_registration(listener: socket.socket) -> None:
    async def poller_of_this_run() -> millpond.Poller:
        return get_poller("epoll")

    poller = trio.run(poller_of_this_run)
    sock, peer = tcp_pair(listener)
    with sock, peer, pytest.raises(RuntimeError, match="finished"):
        poller.register(sock)


# -- waking ------------------------------------------------------------------------------


async def test_parked_reader_wakes_when_data_arrives(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            assert not waiter.done.is_set()
            peer.send(b"wake up")
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert waiter.returned
        poller.unregister(registration)


async def test_parked_reader_gets_closed_error_when_unregistered(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            poller.unregister(registration)
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert isinstance(waiter.error, trio.ClosedResourceError)


async def test_parked_writer_gets_closed_error_when_unregistered(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        fill_send_queue(sock, registration)
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_writable)
            await trio.testing.wait_all_tasks_blocked()
            assert not waiter.done.is_set()
            poller.unregister(registration)
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert isinstance(waiter.error, trio.ClosedResourceError)


async def test_receive_parked_when_another_task_closes_raises_closed(poller_name: str) -> None:
    with trio.fail_after(HANG_GUARD_SECONDS):
        client, server = await socket_pair(poller_name)
        async with client, trio.open_nursery() as nursery:

            async def receive_expecting_closed() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.receive_some()

            nursery.start_soon(receive_expecting_closed)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()


async def test_send_parked_when_another_task_closes_raises_closed(poller_name: str) -> None:
    with trio.fail_after(HANG_GUARD_SECONDS):
        client, server = await socket_pair(poller_name)
        async with server, trio.open_nursery() as nursery:

            async def send_expecting_closed() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    while True:
                        await client.send_all(b"x" * 65536)

            nursery.start_soon(send_expecting_closed)
            await trio.testing.wait_all_tasks_blocked()
            await client.aclose()


async def test_second_reader_on_one_registration_is_busy(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(HANG_GUARD_SECONDS), pytest.raises(trio.BusyResourceError):
                await registration.wait_readable()
            nursery.cancel_scope.cancel()
        poller.unregister(registration)


async def test_second_writer_on_one_registration_is_busy(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        fill_send_queue(sock, registration)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registration.wait_writable)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(HANG_GUARD_SECONDS), pytest.raises(trio.BusyResourceError):
                await registration.wait_writable()
            nursery.cancel_scope.cancel()
        poller.unregister(registration)


# -- cancellation ------------------------------------------------------------------------


@linux_only
async def test_cancelled_reader_frees_its_slot_and_is_not_counted(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        assert poller.statistics().tasks_waiting_read == 0
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(registration.wait_readable)
                await trio.testing.wait_all_tasks_blocked()
                assert poller.statistics().tasks_waiting_read == 1
                assert registration.read_task is not None  # type: ignore[attr-defined]
                scope.cancel()
        assert registration.read_task is None  # type: ignore[attr-defined]
        assert poller.statistics().tasks_waiting_read == 0
        poller.unregister(registration)


@linux_only
async def test_cancelled_writer_frees_its_slot_and_is_not_counted(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        fill_send_queue(sock, registration)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(registration.wait_writable)
                await trio.testing.wait_all_tasks_blocked()
                assert poller.statistics().tasks_waiting_write == 1
                scope.cancel()
        assert registration.write_task is None  # type: ignore[attr-defined]
        assert poller.statistics().tasks_waiting_write == 0
        poller.unregister(registration)


@linux_only
async def test_cancelled_park_returns_and_leaves_the_cancellation_beside_it(
    listener: socket.socket,
) -> None:
    # park_readable's contract: the await ends without raising; the caller
    # raises what read_failure holds. The same registration parks again.
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        with trio.CancelScope() as scope:
            scope.cancel()
            await registration.park_readable()
            assert registration.read_failure is not None
            assert registration.read_task is None  # type: ignore[attr-defined]
            registration.raise_read_failure()
        assert scope.cancelled_caught
        assert registration.read_failure is None
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            peer.send(b"after the cancel")
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert waiter.returned
        poller.unregister(registration)


@linux_only
async def test_unregister_wakes_a_parked_writer_with_the_failure_beside_it(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        fill_send_queue(sock, registration)
        failures: list[BaseException] = []

        async def park_and_check() -> None:
            await registration.park_writable()
            assert registration.write_failure is not None
            try:
                registration.raise_write_failure()
            except trio.ClosedResourceError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(park_and_check)
            await trio.testing.wait_all_tasks_blocked()
            poller.unregister(registration)
        assert len(failures) == 1
        assert registration.write_failure is None


async def test_wait_after_cancelled_wait_wakes_on_data(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        with trio.move_on_after(0):
            await registration.wait_readable()
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            assert not waiter.done.is_set()
            peer.send(b"after the cancel")
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert waiter.returned
        poller.unregister(registration)


async def test_cancelled_receive_some_leaves_connection_usable(poller_name: str) -> None:
    with trio.fail_after(HANG_GUARD_SECONDS):
        client, server = await socket_pair(poller_name)
        async with client, server:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.receive_some)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            await client.send_all(b"still here")
            assert await server.receive_some() == b"still here"


@linux_only
async def test_reader_count_tracks_parked_tasks_across_registrations(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    pairs = [tcp_pair(listener) for _ in range(3)]
    registrations = [poller.register(sock) for sock, _ in pairs]
    try:
        async with trio.open_nursery() as nursery:
            for registration in registrations:
                nursery.start_soon(registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            assert poller.statistics().tasks_waiting_read == 3
            pairs[0][1].send(b"one of them")
            await trio.testing.wait_all_tasks_blocked()
            assert poller.statistics().tasks_waiting_read == 2
            nursery.cancel_scope.cancel()
        assert poller.statistics().tasks_waiting_read == 0
    finally:
        for registration in registrations:
            poller.unregister(registration)
        for sock, peer in pairs:
            sock.close()
            peer.close()


@linux_only
async def test_dispatcher_counts_one_wakeup_for_a_batch_and_one_event_per_ready_socket(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    pairs = [tcp_pair(listener) for _ in range(3)]
    registrations = [poller.register(sock) for sock, _ in pairs]
    try:
        await trio.testing.wait_all_tasks_blocked()  # the first (writable) edges are in
        before = poller.statistics()
        # No checkpoint between the sends: one epoll_wait finds all three.
        for _, peer in pairs:
            peer.send(b"ready")
        await trio.testing.wait_all_tasks_blocked()
        after = poller.statistics()
        assert after.dispatcher_wakeups - before.dispatcher_wakeups == 1
        assert after.events_dispatched - before.events_dispatched == 3
    finally:
        for registration in registrations:
            poller.unregister(registration)
        for sock, peer in pairs:
            sock.close()
            peer.close()


# -- remembered edges (epoll) ------------------------------------------------------------


@linux_only
async def test_edge_with_no_parked_reader_is_remembered(listener: socket.socket) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        await trio.testing.wait_all_tasks_blocked()
        assert not registration.readable
        remembered_before = poller.statistics().edges_remembered
        peer.send(b"nobody is waiting")
        await trio.testing.wait_all_tasks_blocked()
        assert registration.readable
        assert poller.statistics().edges_remembered > remembered_before
        poller.unregister(registration)


@linux_only
async def test_remembered_edge_lets_wait_readable_return_without_parking(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        peer.send(b"nobody is waiting")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(HANG_GUARD_SECONDS), trio.testing.assert_no_checkpoints():
            await registration.wait_readable()
        assert registration.readable  # a wait consumes nothing
        poller.unregister(registration)


async def test_a_wake_up_not_followed_by_a_read_keeps_the_edge(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        waiter = ParkedWaiter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.run, registration.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            peer.send(b"once")
            with trio.fail_after(HANG_GUARD_SECONDS):
                await waiter.done.wait()
        assert waiter.returned and registration.readable
        # The woken task never read: the next wait must not park, though the
        # peer sends nothing more.
        with trio.fail_after(HANG_GUARD_SECONDS), trio.testing.assert_no_checkpoints():
            await registration.wait_readable()
        assert registration.recv(100) == b"once"
        poller.unregister(registration)


async def test_only_eagain_or_a_short_read_clears_the_edge(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        peer.send(b"abcdef")
        with trio.fail_after(HANG_GUARD_SECONDS):
            await registration.wait_readable()
        assert registration.recv(3) == b"abc"  # a full read: more may wait
        assert registration.readable
        buffer = bytearray(100)
        assert registration.recv_into(buffer, 100) == 3  # short: the queue is empty
        assert not registration.readable
        registration.readable = True  # as a stale edge would leave it
        assert registration.recv(100) is None  # EAGAIN
        assert not registration.readable
        peer.shutdown(socket.SHUT_WR)
        with trio.fail_after(HANG_GUARD_SECONDS):
            await registration.wait_readable()
        assert registration.recv(100) == b""  # EOF: reading again returns it at once
        assert registration.readable
        poller.unregister(registration)


@linux_only
async def test_socket_registered_while_writable_remembers_write_edge(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        await trio.testing.wait_all_tasks_blocked()
        assert registration.writable
        poller.unregister(registration)


@linux_only
async def test_peer_half_close_sets_hangup(listener: socket.socket) -> None:
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        await trio.testing.wait_all_tasks_blocked()
        assert not registration.hangup
        peer.shutdown(socket.SHUT_WR)
        await trio.testing.wait_all_tasks_blocked()
        assert registration.hangup
        assert registration.readable
        poller.unregister(registration)


# -- fd reuse ----------------------------------------------------------------------------


async def test_reused_fd_number_gets_a_fresh_registration(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    old, old_peer = tcp_pair(listener)
    fd = old.fileno()
    old_registration = poller.register(old)
    poller.unregister(old_registration)
    old.close()
    new, others = socket_with_fd(fd)
    try:
        new, new_peer = accept_pair(listener, new)
        with new, new_peer, old_peer:
            new_registration = poller.register(new)
            assert old_registration.closed
            assert new_registration is not old_registration
            assert not new_registration.closed
            assert new_registration.fd == fd
            assert poller.registration(new) is new_registration
            assert fd in poller.registered_fds()
            poller.unregister(new_registration)
    finally:
        old_peer.close()
        for sock in others:
            sock.close()


async def test_reused_fd_number_is_not_woken_by_the_old_socket(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    old, old_peer = tcp_pair(listener)
    fd = old.fileno()
    old_registration = poller.register(old)
    # Readiness for the old socket, queued in the kernel and not yet seen by
    # the dispatcher (no checkpoint between this send and the close).
    old_peer.send(b"for the old socket")
    poller.unregister(old_registration)
    old.close()
    new, others = socket_with_fd(fd)
    try:
        new, new_peer = accept_pair(listener, new)
        with new, new_peer:
            new_registration = poller.register(new)
            # The old socket was closed with unread data, so the kernel reset
            # the connection; all its peer can still do is close.
            old_peer.close()
            waiter = ParkedWaiter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter.run, new_registration.wait_readable)
                await trio.testing.wait_all_tasks_blocked()
                assert not waiter.done.is_set(), "woken by the old socket's readiness"
                new_peer.send(b"for the new socket")
                with trio.fail_after(HANG_GUARD_SECONDS):
                    await waiter.done.wait()
            assert waiter.returned
            assert new.recv(100) == b"for the new socket"
            poller.unregister(new_registration)
    finally:
        old_peer.close()
        for sock in others:
            sock.close()


@linux_only
async def test_remembered_edge_of_old_socket_does_not_pass_to_reused_fd(
    listener: socket.socket,
) -> None:
    poller = get_poller("epoll")
    old, old_peer = tcp_pair(listener)
    fd = old.fileno()
    old_registration = poller.register(old)
    old_peer.send(b"for the old socket")
    await trio.testing.wait_all_tasks_blocked()
    assert old_registration.readable
    poller.unregister(old_registration)
    old.close()
    new, others = socket_with_fd(fd)
    try:
        new, new_peer = accept_pair(listener, new)
        with new, new_peer, old_peer:
            new_registration = poller.register(new)
            await trio.testing.wait_all_tasks_blocked()
            assert not new_registration.readable
            assert poller.statistics().tasks_waiting_read == 0
            poller.unregister(new_registration)
    finally:
        old_peer.close()
        for sock in others:
            sock.close()


@linux_only
async def test_closed_connection_leaves_the_epoll_set_while_a_dup_keeps_its_socket_open(
    listener: socket.socket,
) -> None:
    # The kernel drops a socket from an epoll set only when its last fd
    # closes. Closed before EPOLL_CTL_DEL, a socket that another fd keeps open
    # (a dup, a forked child's copy) would stay in the set, and its events
    # would go to whichever socket reuses the number. Close unregisters first.
    poller = get_poller("epoll")
    sock, peer = tcp_pair(listener)
    with peer:
        connection = millpond.Connection(sock, poller=poller)
        duplicate = os.dup(sock.fileno())
        try:
            await trio.testing.wait_all_tasks_blocked()
            before = poller.statistics().events_dispatched
            peer.send(b"seen while open")
            await trio.testing.wait_all_tasks_blocked()
            assert poller.statistics().events_dispatched == before + 1
            await connection.aclose()
            peer.send(b"sent after the close")
            await trio.testing.wait_all_tasks_blocked()
            assert poller.statistics().events_dispatched == before + 1
        finally:
            os.close(duplicate)


# -- regressions -------------------------------------------------------------------------


async def test_fin_queued_behind_data_is_seen_after_the_data(
    poller_name: str,
    start_server: ServerStarter,
) -> None:
    # Lost-wakeup regression: data and FIN arrive before the handler reads.
    # The read that returns the data is short, and the FIN behind it makes no
    # further edge, so a receive that parked after a short read slept forever.
    client_done = trio.Event()
    received: list[bytes] = []
    handler_done = trio.Event()

    async def handler(stream: millpond.Connection) -> None:
        await client_done.wait()
        received.append(await stream.receive_some())
        received.append(await stream.receive_some())
        handler_done.set()

    with trio.fail_after(HANG_GUARD_SECONDS):
        server = await start_server(handler)
        client = await connect(server, poller_name)
        async with client:
            await client.send_all(b"data then FIN")
            await client.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            client_done.set()
            await handler_done.wait()
    assert received == [b"data then FIN", b""]


async def test_a_peek_leaves_the_bytes_and_clears_the_edge_only_when_short(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        assert registration.peek(10) is None  # nothing yet: EAGAIN
        assert not registration.readable
        peer.send(b"PROXY then data")
        with trio.fail_after(HANG_GUARD_SECONDS):
            await registration.wait_readable()
        assert registration.peek(5) == b"PROXY"  # enough: still readable
        assert registration.readable
        assert registration.peek(100) == b"PROXY then data"  # short: wait for more
        assert not registration.readable
        buffer = bytearray(5)
        assert registration.recv_into(buffer, 5) == 5  # the bytes were still there
        assert bytes(buffer) == b"PROXY"
        assert registration.recv(100) == b" then data"
        poller.unregister(registration)


async def arrive(registration: Registration, peer: socket.socket, data: bytes) -> None:
    """``peer`` sends ``data``; wait until ``registration`` has seen it come."""
    peer.send(data)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await registration.wait_readable()


async def test_taking_a_peeked_prefix_leaves_the_rest_readable(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        await arrive(registration, peer, b"PROXY then data")
        peeked = registration.peek(100)  # short: the flag is cleared
        assert peeked == b"PROXY then data"
        assert not registration.readable
        # The rest made its edge before the peek: no other will come for it.
        assert registration.take_peeked(5, len(peeked)) == 5
        assert registration.readable
        assert registration.recv(100) == b" then data"
        assert not registration.readable
        await arrive(registration, peer, b"PROXY")
        peeked = registration.peek(100)
        assert registration.take_peeked(5, len(peeked)) == 5  # all of it: nothing queued
        assert not registration.readable
        poller.unregister(registration)


async def test_a_read_the_flag_allowed_that_finds_nothing_counts_as_a_stale_edge(
    poller_name: str, listener: socket.socket
) -> None:
    poller = get_poller(poller_name)
    sock, peer = tcp_pair(listener)
    with sock, peer:
        registration = poller.register(sock)
        before = poller.statistics().stale_read_edges
        assert registration.recv(10) is None  # the flag was clear: not stale
        assert poller.statistics().stale_read_edges == before
        peer.send(b"exactly")
        with trio.fail_after(HANG_GUARD_SECONDS):
            await registration.wait_readable()
        assert registration.recv(7) == b"exactly"  # a full read: the flag stays
        assert registration.recv(7) is None  # it was stale
        assert poller.statistics().stale_read_edges == before + 1
        poller.unregister(registration)


@linux_only
async def test_the_dispatcher_counts_its_batches_by_size(listener: socket.socket) -> None:
    poller = get_poller("epoll")
    pairs = [tcp_pair(listener) for _ in range(5)]
    registrations = [poller.register(sock) for sock, _ in pairs]
    try:
        await trio.testing.wait_all_tasks_blocked()  # the registrations' first edges
        before = poller.statistics().batches
        for _, peer in pairs:
            peer.send(b"x")  # five edges at once, before the dispatcher runs
        await trio.testing.wait_all_tasks_blocked()
        after = poller.statistics().batches
        assert [b - a for a, b in zip(before, after, strict=True)] == [0, 1, 0, 0, 0, 0]
    finally:
        for registration in registrations:
            poller.unregister(registration)
        for sock, peer in pairs:
            sock.close()
            peer.close()
