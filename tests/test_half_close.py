"""Half-close and half-open peers (issue 16).

Half-close: a peer that sends EOF and keeps reading gets the whole answer, with the
budget far smaller than the answer. Half-open: a peer that vanishes without a FIN or
RST (its link dropped) is reaped by the server's idle and write timeouts and leaves
nothing behind; that needs a network namespace with a veth pair to drop
(``unshare -rn``), so it skips, saying why, where the machine does not allow one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing
from conftest import echo, started_server
from scenarios import HOST, Leftovers, echo_checked, payload_for, settled

import millpond

KIB = 1024
MIB = 1024 * KIB


async def digest_after_eof(stream: millpond.Connection) -> None:
    """Read until EOF, then answer: the SHA-256 of what came, and 1 MiB of it again."""
    digest = hashlib.sha256()
    count = 0
    async for chunk in stream:
        digest.update(chunk)
        count += len(chunk)
    await stream.send_all(b"%d %s\n" % (count, digest.hexdigest().encode()))
    await stream.send_all(payload_for(count, MIB))


@pytest.mark.parametrize("budget", [64 * KIB, 8 * MIB])
async def test_a_peer_that_sent_eof_still_gets_the_whole_echo(
    poller_name: str, nursery: trio.Nursery, budget: int
) -> None:
    limiter = millpond.BufferLimiter(budget)
    server, port = await started_server(nursery, echo, poller_name, limiter=limiter)
    before = await Leftovers.of(server)
    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            for seed in range(4):
                clients.start_soon(echo_checked, port, poller_name, seed, 2 * MIB)
        await settled(server)
    assert server.statistics().closed["eof"] == 4
    assert await Leftovers.of(server) == before


async def test_an_answer_written_after_the_peers_eof_arrives_whole(
    poller_name: str, nursery: trio.Nursery
) -> None:
    limiter = millpond.BufferLimiter(64 * KIB)
    server, port = await started_server(nursery, digest_after_eof, poller_name, limiter=limiter)
    before = await Leftovers.of(server)
    request = payload_for(7, 3 * MIB)
    client = await millpond.open_connection(HOST, port, poller=poller_name)
    with trio.fail_after(20):
        await client.send_all(request)
        await client.send_eof()
        answer = bytearray()
        while chunk := await client.receive_some():
            answer += chunk
        await settled(server)
    await client.aclose()
    line, rest = bytes(answer).split(b"\n", 1)
    assert line == b"%d %s" % (len(request), hashlib.sha256(request).hexdigest().encode())
    assert rest == payload_for(len(request), MIB)
    assert await Leftovers.of(server) == before


# The half-open scenario runs in a user and network namespace of its own (unshare -rn):
# the server there, the client in a nested namespace joined to it by a veth pair with
# link-local IPv6 addresses (nothing routable, nothing leaves the namespaces). After an
# exchange the link is dropped and the client killed: no FIN, no RST ever reaches the
# server. One connection is parked reading, one is sending to the vanished peer; the
# idle and write timeouts must reap them (without timeouts both would stay until TCP's
# retransmissions give up, some 15 minutes for the sender and never for the reader),
# and nothing may be left.
HALF_OPEN = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    import trio, millpond

    POLLER = sys.argv[1]

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    CLIENT = '''
    import socket, subprocess, sys, time
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sys.stdout.write("ready\\\\n"); sys.stdout.flush()
    sys.stdin.readline()  # the veth is here now
    subprocess.run(["ip", "addr", "add", "fe80::2/64", "dev", "vb", "nodad"], check=True)
    subprocess.run(["ip", "link", "set", "vb", "up"], check=True)
    port = int(sys.argv[1])
    for _ in range(100):  # until the link is up
        try:
            reader = socket.create_connection(("fe80::1%vb", port), timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    sink = socket.create_connection(("fe80::1%vb", port), timeout=5)
    reader.sendall(b"ping"); assert reader.recv(4) == b"ping"
    sink.sendall(b"flood me")  # the server answers with more than it can send
    sink.recv(1000)
    sys.stdout.write("exchanged\\\\n"); sys.stdout.flush()
    time.sleep(60)  # until killed
    '''

    async def handler(stream):
        first = await stream.receive_some()
        if first == b"flood me":
            block = b"z" * 65536
            while True:
                await stream.send_all(block)
        await stream.send_all(first)
        async for chunk in stream:
            await stream.send_all(chunk)

    async def main():
        ip("link", "set", "lo", "up")
        limiter = millpond.BufferLimiter(1 << 20)
        server = millpond.Server(handler, 0, host="::", poller=POLLER, limiter=limiter,
                                 idle_timeout=3.0, write_timeout=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            port = server.addresses[0][1]
            client = subprocess.Popen(
                ["unshare", "-n", sys.executable, "-c", CLIENT, str(port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert client.stdout.readline() == "ready\\n"
                ip("link", "add", "va", "type", "veth", "peer", "name", "vb",
                   "netns", str(client.pid))
                ip("addr", "add", "fe80::1/64", "dev", "va", "nodad")
                ip("link", "set", "va", "up")
                client.stdin.write("go\\n"); client.stdin.flush()
                line = await trio.to_thread.run_sync(client.stdout.readline)
                assert line == "exchanged\\n", line
                assert server.statistics().connections_active == 2
                ip("link", "set", "va", "down")  # the link is gone...
                client.kill()  # ...and so is the peer: its FIN or RST goes nowhere
                client.wait(10)
            finally:
                client.kill()
            with trio.fail_after(30):
                while server.statistics().connections_active:
                    await trio.sleep(0.05)
            stats, limits = server.statistics(), limiter.statistics()
            print(json.dumps({
                "closed": {k: v for k, v in stats.closed.items() if v},
                "budget_in_use": limits.bytes_in_use,
                "bytes_leased": server.pool.statistics().bytes_leased,
                "registered": server.poller.statistics().registered,
            }), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


def namespaces_unavailable() -> str | None:
    """Why a user and network namespace with a veth pair cannot be made here, or None."""
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs Linux with unshare(1) and ip(8)"
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link add va type veth peer name vb && unshare -n true"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    if probe.returncode:
        return f"this machine refuses a network namespace with a veth pair: {probe.stderr.strip()}"
    return None


@pytest.mark.time_limit(60)
def test_a_peer_that_vanishes_without_fin_is_reaped_by_the_timeouts(poller_name: str) -> None:
    why = namespaces_unavailable()
    if why is not None:
        pytest.skip(why)
    child = subprocess.Popen(
        ["unshare", "-rn", sys.executable, "-c", HALF_OPEN, poller_name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=50)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    report = json.loads(out)
    # The one parked reading goes at its idle timeout, the one sending into the void
    # at its write timeout (shorter: its send has been blocked since before the drop).
    assert report["closed"] == {"idle_timeout": 1, "write_timeout": 1}
    # Nothing held; the listener is the one registration left.
    assert (report["budget_in_use"], report["bytes_leased"], report["registered"]) == (0, 0, 1)
