"""examples/websocket_echo.py, checked with a client from another library: ``websockets``.

The client runs in a thread with its own asyncio event loop, as a separate
program would; the server is the example, run as a subprocess. On SIGTERM
every client must see close code 1001 ("going away"), not 1006 (the
connection dropped without a closing handshake).
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import trio
import websockets
from example_process import running_example
from websockets.exceptions import ConnectionClosed

CLIENTS = 20

# Hang guard only: every exchange here takes milliseconds.
CLIENT_GUARD_SECONDS = 20


def echo_then_shutdown(port: int, server_pid: int) -> list[tuple[int | None, str]]:
    """Open ``CLIENTS`` WebSockets, check that text and binary messages come back, send the
    server SIGTERM, and return the close (code, reason) each client received."""

    async def session() -> list[tuple[int | None, str]]:
        uri = f"ws://127.0.0.1:{port}/"
        clients = [await websockets.connect(uri) for _ in range(CLIENTS)]
        try:
            for number, client in enumerate(clients):
                await client.send(f"hello {number}")
                assert await client.recv() == f"hello {number}"
                await client.send(bytes(range(256)) * 100)
                assert await client.recv() == bytes(range(256)) * 100
            os.kill(server_pid, signal.SIGTERM)
            closes = []
            for client in clients:
                with pytest.raises(ConnectionClosed) as closed:
                    await client.recv()
                received = closed.value.rcvd  # None: no close frame came (1006)
                closes.append((None, "") if received is None else (received.code, received.reason))
            return closes
        finally:
            for client in clients:
                await client.close()

    async def guarded() -> list[tuple[int | None, str]]:
        return await asyncio.wait_for(session(), CLIENT_GUARD_SECONDS)

    return asyncio.run(guarded())


@pytest.mark.time_limit(60)
async def test_websocket_echo_echoes_and_says_going_away_on_sigterm() -> None:
    async with running_example("websocket_echo.py") as server:
        closes = await trio.to_thread.run_sync(echo_then_shutdown, server.port, server.pid)
        with trio.fail_after(CLIENT_GUARD_SECONDS):
            returncode = await server.process.wait()
    assert closes == [(1001, "server shutting down")] * CLIENTS
    assert returncode == 0, server.output()
    assert "SIGTERM: stopping" in server.stdout.decode()
    assert "Traceback" not in server.stderr.decode(), server.output()
