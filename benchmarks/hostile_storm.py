"""The reset storm's generator: one process, one epoll loop, connections reset with RST.

``python benchmarks/hostile_scenarios.py reset`` starts this as a process of its own (pinned
to the load generator's core, which it inherits), so that the storm's rate is set by the
server and not by a Python client awaiting each connect: one non-blocking loop keeps
``inflight`` connections open at once and starts a new one as soon as one is reset. Each
connection is one of three kinds, in turn, and closes with ``SO_LINGER`` 0 (a RST, no FIN,
no TIME_WAIT, so ephemeral ports are not used up):

- ``at_once``: reset as soon as the connect completes (often before the server accepts it);
- ``mid_send``: send until the socket blocks, then reset (the server is reading and echoing
  to a client that does not read). The send buffer is 16 KiB (the kernel doubles it), so
  the socket blocks after some 80 KiB; with the default buffer loopback takes 4 MiB first;
- ``mid_receive``: send ``BIG_REQUEST``, read at least 16 KiB of the 4 MiB answer, reset
  (the server is in the middle of a large ``send_all``).

Usage (by hostile_scenarios.py): ``python benchmarks/hostile_storm.py PORT SECONDS INFLIGHT``;
prints one JSON line: resets per kind, connects that failed, connections the server closed
first, the connections still open at the end (reset too, not counted), and this process's
CPU share. Plain ``socket`` and ``select.epoll``, no Trio: a connection costs this loop some
tens of microseconds. Loopback only; the loop ends after ``SECONDS``.
"""

from __future__ import annotations

import errno
import json
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

HOST = "127.0.0.1"
KIB = 1024
KINDS = ("at_once", "mid_send", "mid_receive")
BIG_REQUEST = b"BIG\n"  # answered with 4 MiB by every server of hostile_servers.py
RECEIVE_BEFORE_RESET = 16 * KIB
# A small send buffer: ``mid_send`` blocks after ~80 KiB instead of ~4 MiB on loopback, so
# that a thousand of them a second cost this loop little and still fill the server's socket.
MID_SEND_BUFFER = 16 * KIB
LINGER_ZERO = struct.pack("ii", 1, 0)

CONNECTING, RECEIVING = 0, 1


def storm(port: int, seconds: float, inflight: int) -> dict[str, Any]:
    """Reset connections to ``port`` for ``seconds``, ``inflight`` at a time; the counts."""
    address = (HOST, port)
    poller = select.epoll()
    # fd -> [socket, kind, phase, bytes received]; the loop below is the hot path: names
    # bound to locals, no per-connection objects beyond the socket and this list.
    open_: dict[int, list[Any]] = {}
    resets = dict.fromkeys(KINDS, 0)
    server_closed = dict.fromkeys(KINDS, 0)
    connect_failed = [0]
    chunk = b"y" * (64 * KIB)
    into = bytearray(64 * KIB)
    turn = [0]
    out, into_ready = select.EPOLLOUT, select.EPOLLIN
    sol, linger, sndbuf = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_SNDBUF

    def start() -> None:
        kind = KINDS[turn[0] % 3]
        turn[0] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(sol, linger, LINGER_ZERO)  # every close below is a RST
        if kind == "mid_send":
            sock.setsockopt(sol, sndbuf, MID_SEND_BUFFER)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            connect_failed[0] += 1
            sock.close()
            return
        fd = sock.fileno()
        open_[fd] = [sock, kind, CONNECTING, 0]
        poller.register(fd, out)

    def done(fd: int, counts: dict[str, int]) -> None:
        entry = open_.pop(fd)
        counts[entry[1]] += 1
        entry[0].close()  # SO_LINGER 0: RST; closing the fd also drops its registration

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        while len(open_) < inflight:
            start()
        for fd, _ in poller.poll(0.05):
            entry = open_[fd]
            sock, kind = entry[0], entry[1]
            if entry[2] == CONNECTING:
                if sock.getsockopt(sol, socket.SO_ERROR):
                    open_.pop(fd)
                    sock.close()
                    connect_failed[0] += 1
                elif kind == "at_once":
                    done(fd, resets)
                elif kind == "mid_send":
                    try:
                        while True:
                            sock.send(chunk)
                    except BlockingIOError:
                        done(fd, resets)
                    except OSError:
                        done(fd, server_closed)
                else:
                    try:
                        sock.send(BIG_REQUEST)
                    except OSError:
                        done(fd, server_closed)
                        continue
                    entry[2] = RECEIVING
                    poller.modify(fd, into_ready)
                continue
            try:
                while entry[3] < RECEIVE_BEFORE_RESET:
                    count = sock.recv_into(into)
                    if not count:
                        done(fd, server_closed)
                        break
                    entry[3] += count
                else:
                    done(fd, resets)
            except BlockingIOError:
                pass
            except OSError:
                done(fd, server_closed)
    elapsed = time.monotonic() - started
    still_open = len(open_)
    for entry in open_.values():
        entry[0].close()
    poller.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "resets": sum(resets.values()),
        "resets_by_kind": resets,
        "server_closed_first": server_closed,
        "connect_failed": connect_failed[0],
        "open_at_end": still_open,
        "seconds": round(elapsed, 2),
        "storm_cpu": round((usage.ru_utime + usage.ru_stime - cpu_before) / elapsed, 2),
    }


def main() -> int:
    usage = "usage: hostile_storm.py PORT SECONDS INFLIGHT"
    if len(sys.argv) != 4:
        raise SystemExit(usage)
    port, seconds, inflight = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    if not 0 < port < 65536 or seconds <= 0 or inflight < 1:
        raise SystemExit(usage)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(storm(port, seconds, inflight)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
