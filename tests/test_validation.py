"""Bad input gets a clear error, and a failed constructor leaves nothing behind."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading

import pytest
import trio
from conftest import echo, open_fds

import millpond
import millpond.stream


def registered(poller_name: str) -> frozenset[int]:
    return millpond.get_poller(poller_name).registered_fds()


# -- Connection and open_connection ----------------------------------------------------------


async def test_connection_on_a_closed_socket_says_so(poller_name: str) -> None:
    near, far = socket.socketpair()
    near.close()
    with far, pytest.raises(ValueError, match="sock is closed"):
        millpond.Connection(near, poller=poller_name)


async def test_connection_on_an_unconnected_socket_says_so_and_registers_nothing(
    poller_name: str,
) -> None:
    before = registered(poller_name)
    with socket.socket() as sock:
        with pytest.raises(ValueError, match="connected"):
            millpond.Connection(sock, poller=poller_name)
        assert sock.fileno() >= 0  # still the caller's to close
    assert registered(poller_name) == before


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"poller": 3}, TypeError, "poller"),
        ({"pool": "big"}, TypeError, "pool"),
        ({"read_sizes": 4096}, TypeError, "read_sizes"),
    ],
)
async def test_connection_validates_every_argument_before_registering(
    poller_name: str, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    kwargs = {"poller": poller_name, **kwargs}
    before_registered, before_fds = registered(poller_name), open_fds()
    near, far = socket.socketpair()
    with near, far:
        with pytest.raises(error, match=name):
            millpond.Connection(near, **kwargs)  # type: ignore[arg-type]
        assert registered(poller_name) == before_registered
    assert open_fds() == before_fds


async def test_connection_failing_after_validation_registers_nothing(
    poller_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(sock: socket.socket) -> None:
        raise OSError("setsockopt refused")

    monkeypatch.setattr(millpond.stream, "configure_socket", refuse)
    before = registered(poller_name)
    near, far = socket.socketpair()
    with near, far, pytest.raises(OSError, match="refused"):
        millpond.Connection(near, poller=poller_name)
    assert registered(poller_name) == before


async def test_connection_whose_budget_belongs_to_another_run_registers_nothing(
    poller_name: str,
) -> None:
    limiter = millpond.BufferLimiter(1 << 20)
    bound, release = threading.Event(), threading.Event()

    async def hold_a_byte_in_another_run() -> None:
        limiter.acquire_on_behalf_of_nowait("elsewhere", 1)
        bound.set()
        await trio.to_thread.run_sync(release.wait)
        limiter.release_on_behalf_of("elsewhere", 1)

    other_run = threading.Thread(target=trio.run, args=(hold_a_byte_in_another_run,))
    other_run.start()
    try:
        await trio.to_thread.run_sync(bound.wait)
        pool = millpond.BufferPool(limiter)
        before = registered(poller_name)
        near, far = socket.socketpair()
        with near, far, pytest.raises(RuntimeError, match="another Trio run"):
            millpond.Connection(near, poller=poller_name, pool=pool)
        assert registered(poller_name) == before
    finally:
        release.set()
        await trio.to_thread.run_sync(other_run.join)


async def test_open_connection_rejects_a_poller_that_is_not_one() -> None:
    with pytest.raises(TypeError, match="poller"):
        await millpond.open_connection("127.0.0.1", 9, poller=3)  # type: ignore[arg-type]


async def test_open_connection_closes_its_socket_when_the_connection_cannot_be_made(
    poller_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def refuse(sock: socket.socket) -> None:
            raise OSError("setsockopt refused")

        monkeypatch.setattr(millpond.stream, "configure_socket", refuse)
        before_registered, before_fds = registered(poller_name), open_fds()
        with pytest.raises(OSError, match="refused"):
            await millpond.open_connection("127.0.0.1", port, poller=poller_name)
        assert open_fds() == before_fds
        assert registered(poller_name) == before_registered


# -- handlers ----------------------------------------------------------------------------


def sync_handler(stream: millpond.Connection) -> None:
    """Not a coroutine function: rejected."""


class AsyncCallable:
    async def __call__(self, stream: millpond.Connection) -> None:
        await echo(stream)


class Service:
    async def handle(self, stream: millpond.Connection, greeting: bytes = b"") -> None:
        await stream.send_all(greeting)


@pytest.mark.parametrize(
    "handler",
    [sync_handler, lambda stream: echo(stream), functools.partial(sync_handler), print],
    ids=["def", "lambda returning a coroutine", "partial of def", "builtin"],
)
def test_a_handler_that_is_not_an_async_function_is_rejected(handler: object) -> None:
    with pytest.raises(TypeError, match="handler must be an async function"):
        millpond.Server(handler, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "handler",
    [echo, AsyncCallable(), Service().handle, functools.partial(Service().handle, greeting=b"hi")],
    ids=["async def", "async __call__", "bound async method", "partial of async def"],
)
def test_async_handlers_of_every_shape_are_accepted(handler: object) -> None:
    millpond.Server(handler, 0)  # type: ignore[arg-type]


async def test_serve_rejects_a_sync_handler_before_binding(poller_name: str) -> None:
    with pytest.raises(TypeError, match="handler"):
        await millpond.serve(sync_handler, 0, host="127.0.0.1", poller=poller_name)  # type: ignore[arg-type]


# -- outside Trio ---------------------------------------------------------------------------


def test_poller_outside_a_trio_run_says_millpond_needs_trio() -> None:
    with pytest.raises(RuntimeError, match="needs a running Trio event loop"):
        millpond.get_poller()


def test_connection_outside_a_trio_run_says_millpond_needs_trio() -> None:
    near, far = socket.socketpair()
    with near, far, pytest.raises(RuntimeError, match="needs a running Trio event loop"):
        millpond.Connection(near)


def test_limiter_under_asyncio_says_millpond_needs_trio() -> None:
    limiter = millpond.BufferLimiter(1024)

    async def under_asyncio() -> None:
        await limiter.acquire_on_behalf_of("owner", 10)

    with pytest.raises(RuntimeError, match="anyio"):
        asyncio.run(under_asyncio())
    assert limiter.bytes_in_use == 0


def test_serve_under_asyncio_says_millpond_needs_trio() -> None:
    with pytest.raises(RuntimeError, match="needs a running Trio event loop"):
        asyncio.run(millpond.serve(echo, 0, host="127.0.0.1"))  # type: ignore[arg-type]


def test_pool_lease_under_asyncio_says_millpond_needs_trio() -> None:
    pool = millpond.BufferPool(millpond.BufferLimiter(1 << 20))
    with pytest.raises(RuntimeError, match="needs a running Trio event loop"):
        asyncio.run(pool.lease(100))  # type: ignore[arg-type]
    assert pool.statistics().bytes_leased == 0


async def test_trio_run_is_what_it_asks_for() -> None:
    assert millpond.get_poller() is millpond.get_poller()
    await trio.lowlevel.checkpoint()
