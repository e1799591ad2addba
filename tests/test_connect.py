"""open_connection: Happy Eyeballs over several addresses, connect_timeout, argument checks.

Everything runs over loopback. A name resolves to the addresses a test
chooses, through a custom Trio hostname resolver (the sockaddrs may carry
different ports). An address that never answers is a listener whose backlog
(0) is already full: Linux drops the SYNs of further connects, which then
wait as they would for a black-holed address. Every test that fails a
connect counts this process's fds before and after. TLS clients are in
test_tls.py.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from conftest import open_fds

import millpond
from millpond.connect import DEFAULT_HAPPY_EYEBALLS_DELAY, interleave_families

# A socket closed only by the garbage collector is a leak that the fd counts miss.
pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

Address = tuple[str, int]


class FixedResolver(trio.abc.HostnameResolver):
    """Resolves every name to the same addresses, in the order given."""

    def __init__(self, addresses: Sequence[Address]) -> None:
        self.addresses = list(addresses)

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        return [
            (
                socket.AF_INET6 if ":" in host_ else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (host_, port_, 0, 0) if ":" in host_ else (host_, port_),
            )
            for host_, port_ in self.addresses
        ]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


@contextlib.contextmanager
def resolving(*addresses: Address) -> Iterator[str]:
    """Make the name this yields resolve to ``addresses`` for the rest of the block."""
    previous = trio.socket.set_custom_hostname_resolver(FixedResolver(addresses))
    try:
        yield "several.test"
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


@contextlib.contextmanager
def listening() -> Iterator[tuple[socket.socket, Address]]:
    """A listener on 127.0.0.1 (never accepting: the kernel completes connects to it)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener, listener.getsockname()


def refusing() -> Address:
    """An address on 127.0.0.1 where nothing listens: connects are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()  # type: ignore[no-any-return]


@contextlib.contextmanager
def black_hole() -> Iterator[Address]:
    """An address on 127.0.0.1 that never answers a connect: a full backlog drops the SYNs."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        address = listener.getsockname()
        with socket.create_connection(address, timeout=5):  # fills the backlog of 0
            with socket.socket() as probe:
                probe.setblocking(False)
                probe.connect_ex(address)
                poll = select.poll()
                poll.register(probe, select.POLLOUT)
                assert not poll.poll(50), "the kernel answered a connect to a full backlog"
            yield address


def accepted_any(listener: socket.socket) -> bool:
    """Whether a connect to ``listener`` has completed (one is waiting to be accepted)."""
    try:
        sock, _ = listener.accept()
    except BlockingIOError:
        return False
    sock.close()
    return True


# -- the order of addresses ------------------------------------------------------------------


def test_interleave_families_alternates_starting_with_the_first_family() -> None:
    def info(family: socket.AddressFamily, host: str) -> Any:
        return (family, socket.SOCK_STREAM, 6, "", (host, 1))

    v6a, v6b, v6c = (info(socket.AF_INET6, h) for h in ("::1", "::2", "::3"))
    v4a, v4b = (info(socket.AF_INET, h) for h in ("10.0.0.1", "10.0.0.2"))
    assert interleave_families([v6a, v6b, v6c, v4a, v4b]) == [v6a, v4a, v6b, v4b, v6c]
    assert interleave_families([v4a, v6a, v6b, v4b]) == [v4a, v6a, v4b, v6b]
    assert interleave_families([v4a, v4b]) == [v4a, v4b]


# -- Happy Eyeballs --------------------------------------------------------------------------


async def test_a_name_connects_to_the_address_that_listens_after_a_refused_one(
    poller_name: str,
) -> None:
    millpond.get_poller(poller_name)  # its fds (epoll) before the count
    with listening() as (_listener, address):
        before = open_fds()
        with resolving(("::1", address[1]), address) as name, trio.fail_after(10):
            connection = await millpond.open_connection(name, 7, poller=poller_name)
        assert connection.getpeername() == address
        # The refused attempt (::1, or no IPv6 at all) left no socket behind.
        assert open_fds() == before | {connection.socket.fileno()}
        await connection.aclose()
        assert open_fds() == before


async def test_a_black_holed_address_is_overtaken_after_the_delay_and_closed(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    millpond.get_poller(poller_name)
    with black_hole() as hole, listening() as (_listener, address):
        before = open_fds()
        started = trio.current_time()
        with resolving(hole, address) as name, trio.fail_after(10):
            connection = await millpond.open_connection(name, 7, poller=poller_name)
        assert trio.current_time() - started == pytest.approx(DEFAULT_HAPPY_EYEBALLS_DELAY)
        assert connection.getpeername() == address
        assert open_fds() == before | {connection.socket.fileno()}
        await connection.aclose()


async def test_a_failed_attempt_starts_the_next_without_waiting_for_the_delay(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    with listening() as (_listener, address):
        started = trio.current_time()
        with resolving(refusing(), refusing(), address) as name, trio.fail_after(10):
            connection = await millpond.open_connection(name, 7, poller=poller_name)
        assert trio.current_time() == started  # no delay ran out: the clock never jumped
        assert connection.getpeername() == address
        await connection.aclose()


async def test_of_two_attempts_that_both_connect_one_is_returned_and_the_other_closed(
    poller_name: str,
) -> None:
    millpond.get_poller(poller_name)
    with listening() as (first, first_address), listening() as (second, second_address):
        before = open_fds()
        with resolving(first_address, second_address) as name, trio.fail_after(10):
            # No delay: both attempts start at once, and on loopback both connect.
            connection = await millpond.open_connection(
                name, 7, happy_eyeballs_delay=0, poller=poller_name
            )
        assert open_fds() == before | {connection.socket.fileno()}
        assert connection.getpeername() in (first_address, second_address)
        await connection.aclose()


async def test_every_address_refused_raises_one_oserror_with_each_attempts_error(
    poller_name: str,
) -> None:
    millpond.get_poller(poller_name)
    before = open_fds()
    with resolving(refusing(), refusing()) as name, trio.fail_after(10):
        with pytest.raises(OSError, match="all attempts to connect to several.test:7") as info:
            await millpond.open_connection(name, 7, poller=poller_name)
    group = info.value.__cause__
    assert isinstance(group, ExceptionGroup)
    assert [type(error) for error in group.exceptions] == [ConnectionRefusedError] * 2
    assert open_fds() == before


async def test_a_single_refused_address_raises_its_own_connection_refused_error(
    poller_name: str,
) -> None:
    with pytest.raises(ConnectionRefusedError) as info, trio.fail_after(10):
        await millpond.open_connection(*refusing(), poller=poller_name)
    assert info.value.errno == errno.ECONNREFUSED


async def test_happy_eyeballs_delay_none_tries_one_address_at_a_time(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    with black_hole() as hole, listening() as (listener, address):
        with resolving(hole, address) as name, pytest.raises(trio.TooSlowError):
            await millpond.open_connection(
                name, 7, happy_eyeballs_delay=None, connect_timeout=30, poller=poller_name
            )
        assert not accepted_any(listener)  # the second address was never tried


async def test_cancelling_a_race_closes_every_attempt_and_unregisters_it(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    poller = millpond.get_poller(poller_name)
    before_fds, before_registered = open_fds(), poller.registered_fds()
    with black_hole() as hole, resolving(hole, hole, hole) as name:
        with trio.move_on_after(1) as scope:
            await millpond.open_connection(name, 7, poller=poller_name)
    assert scope.cancelled_caught
    assert open_fds() == before_fds
    assert poller.registered_fds() == before_registered


class CancelWhenAnAttemptEnds(trio.abc.Instrument):
    """Cancels ``scope`` as the first connect attempt task ends: for the winner, that is
    after it claimed the race and before the race's nursery has exited."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("attempt"):
            trio.lowlevel.remove_instrument(self)
            self.scope.cancel()


async def test_a_cancel_that_lands_after_an_attempt_won_closes_the_winner(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    poller = millpond.get_poller(poller_name)
    before_fds, before_registered = open_fds(), poller.registered_fds()
    with black_hole() as hole, listening() as (listener, address):
        with resolving(hole, address) as name, trio.CancelScope() as scope:
            trio.lowlevel.add_instrument(CancelWhenAnAttemptEnds(scope))
            await millpond.open_connection(name, 7, poller=poller_name)
        assert scope.cancelled_caught
        assert accepted_any(listener)  # the second address did connect, and won
    assert open_fds() == before_fds
    assert poller.registered_fds() == before_registered


# -- connect_timeout -------------------------------------------------------------------------


async def test_connect_timeout_raises_too_slow_and_closes_the_socket(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    millpond.get_poller(poller_name)
    before = open_fds()
    with black_hole() as hole:
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError, match=r"connect_timeout \(5 s\)"):
            await millpond.open_connection(*hole, connect_timeout=5, poller=poller_name)
        assert trio.current_time() - started == pytest.approx(5)
    assert open_fds() == before


async def test_connect_timeout_bounds_the_whole_race_not_each_attempt(
    poller_name: str, idle_clock: trio.testing.MockClock
) -> None:
    millpond.get_poller(poller_name)
    before = open_fds()
    with black_hole() as hole, resolving(hole, hole, hole) as name:
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError, match="connecting to several.test:7"):
            await millpond.open_connection(name, 7, connect_timeout=2, poller=poller_name)
        assert trio.current_time() - started == pytest.approx(2)
    assert open_fds() == before


async def test_connect_timeout_zero_gives_up_at_once(idle_clock: trio.testing.MockClock) -> None:
    with listening() as (listener, address):
        with pytest.raises(trio.TooSlowError):
            await millpond.open_connection(*address, connect_timeout=0)
        assert not accepted_any(listener)


# -- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ssl_context": "tls"}, TypeError, "ssl_context"),
        ({"server_hostname": b"localhost"}, TypeError, "server_hostname"),
        ({"server_hostname": "localhost"}, ValueError, "server_hostname"),
        ({"connect_timeout": "5"}, TypeError, "connect_timeout"),
        ({"connect_timeout": True}, TypeError, "connect_timeout"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout"),
        ({"connect_timeout": math.nan}, ValueError, "connect_timeout"),
        ({"happy_eyeballs_delay": "0.25"}, TypeError, "happy_eyeballs_delay"),
        ({"happy_eyeballs_delay": -0.25}, ValueError, "happy_eyeballs_delay"),
    ],
)
async def test_open_connection_names_a_bad_argument_before_opening_anything(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with listening() as (listener, address):
        with pytest.raises(error, match=name):
            await millpond.open_connection(*address, **kwargs)  # type: ignore[call-overload]
        assert not accepted_any(listener)
