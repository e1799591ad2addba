"""examples/anyio_lines.py: a handler written against anyio's API, served by millpond."""

from __future__ import annotations

import signal
import socket

import pytest
import trio
from example_process import running_example

# Hang guard only: every exchange here takes milliseconds.
CLIENT_GUARD_SECONDS = 20


def converse(port: int, send: bytes) -> bytes:
    """Send ``send`` over a plain socket, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_GUARD_SECONDS) as sock:
        sock.sendall(send)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


@pytest.mark.time_limit(60)
async def test_anyio_lines_numbers_lines_and_stops_cleanly_on_sigterm() -> None:
    async with running_example("anyio_lines.py") as server:
        # Nothing after "quit", and below, exactly the 4096 bytes receive_until may hold:
        # a socket closed with unread bytes sends a reset, which can overtake the reply.
        talk = "first\r\nsecond ünïcode\nthird\nquit\n".encode()
        answered = await trio.to_thread.run_sync(converse, server.port, talk)
        too_long = await trio.to_thread.run_sync(converse, server.port, b"x" * 4096)
        returncode = await server.stop(signal.SIGTERM)
    assert answered.decode() == (
        "hello: every line comes back numbered; 'quit' to leave\n"
        "1: first\n2: second ünïcode\n3: third\ngoodbye\n"
    )
    assert too_long.endswith(b"a line may hold at most 4096 bytes: goodbye\n")
    assert returncode == 0, server.output()
    assert "SIGTERM: stopping" in server.stdout.decode()
    assert "Traceback" not in server.stderr.decode(), server.output()
