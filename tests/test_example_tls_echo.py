"""examples/tls_echo.py, run as a user would, checked with Python's ssl and with openssl s_client.

Both clients trust only the CA certificate the example wrote, and check the
host name, so a pass means the example's certificate chain is right, not
merely that bytes came back.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
from example_process import running_example

# Hang guard only: a TLS round trip on loopback takes milliseconds.
CLIENT_GUARD_SECONDS = 20

PAYLOAD = b"hello over TLS\n" * 1000


def python_round_trip(port: int, ca_file: Path, payload: bytes) -> tuple[bytes, str]:
    """Echo ``payload`` through a blocking ``ssl`` client that trusts only ``ca_file``;
    return what came back and the TLS version."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_GUARD_SECONDS) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            received = bytearray()
            while len(received) < len(payload):
                chunk = tls.recv(65536)
                assert chunk, "the server closed before echoing everything"
                received += chunk
            return bytes(received), str(tls.version())


def untrusting_handshake(port: int) -> None:
    """A handshake with a client that trusts only the system's CAs (it must fail)."""
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_GUARD_SECONDS) as raw:
        context.wrap_socket(raw, server_hostname="localhost").close()


@pytest.mark.time_limit(60)
async def test_tls_echo_answers_python_ssl_client_that_trusts_its_ca(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    async with running_example("tls_echo.py", "--ca-file", str(ca_file)) as server:
        assert f"CA certificate: {ca_file}" in server.stdout.decode()
        echoed, version = await trio.to_thread.run_sync(
            python_round_trip, server.port, ca_file, PAYLOAD
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(untrusting_handshake, server.port)
        returncode = await server.stop(signal.SIGTERM)
    assert echoed == PAYLOAD
    assert version.startswith("TLSv1.")
    assert returncode == 0, server.output()
    assert "Traceback" not in server.stderr.decode(), server.output()


@pytest.mark.time_limit(60)
async def test_tls_echo_answers_openssl_s_client(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "openssl is not installed: this test runs `openssl s_client` against the example "
            "(Debian/Ubuntu: apt-get install openssl; the README's test command installs it)"
        )
    ca_file = tmp_path / "ca.pem"
    line = b"hello from openssl s_client\n"
    async with running_example("tls_echo.py", "--ca-file", str(ca_file)) as server:
        client = await trio.lowlevel.open_process(
            [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(ca_file),
                "-verify_return_error",  # a bad chain or name fails the handshake
                "-verify_hostname",
                "localhost",
                "-no_ign_eof",  # exit when stdin closes
                "-brief",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert client.stdin is not None and client.stdout is not None
        output = bytearray()
        try:
            with trio.fail_after(CLIENT_GUARD_SECONDS):
                await client.stdin.send_all(line)
                while line not in output:
                    chunk = await client.stdout.receive_some()
                    assert chunk, f"s_client ended before the echo: {bytes(output)!r}"
                    output += chunk
                await client.stdin.aclose()
                while chunk := await client.stdout.receive_some():
                    output += chunk
                client_returncode = await client.wait()
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
        returncode = await server.stop(signal.SIGTERM)
    text = output.decode(errors="replace")
    assert client_returncode == 0, text
    assert "Verification: OK" in text and "Verified peername: localhost" in text, text
    assert returncode == 0, server.output()
