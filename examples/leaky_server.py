"""A line server with a planted leak, to hunt with the debug endpoint (docs/leak-hunt.md).

Each client sends lines; the server answers each with how many lines that
connection has sent so far, and keeps the lines in a per-connection history
(a cache a real server might keep to replay or deduplicate). ``handle``
never removes a connection's history when it closes: every connection
leaves its lines behind, and memory grows with the traffic for ever.
``handle_fixed`` is the same server with the fix (a ``finally`` that drops
the history). Serve either with the millpond command::

    millpond serve examples/leaky_server.py:handle --port 7000 --debug-port 6060
    millpond serve examples/leaky_server.py:handle_fixed --port 7000 --debug-port 6060

Not a production server: a line has no length limit.
"""

from __future__ import annotations

import itertools

import millpond

#: Every connection's lines, by connection number. The leak: ``handle`` adds and never removes.
HISTORY: dict[int, list[str]] = {}
_numbers = itertools.count()


async def handle(stream: millpond.Connection) -> None:
    """Answer each line with the count so far; leave the history behind (the leak)."""
    number = next(_numbers)
    HISTORY[number] = []
    await _serve_lines(stream, HISTORY[number])


async def handle_fixed(stream: millpond.Connection) -> None:
    """The same, and drop the connection's history when it closes (the fix)."""
    number = next(_numbers)
    HISTORY[number] = []
    try:
        await _serve_lines(stream, HISTORY[number])
    finally:
        del HISTORY[number]


async def _serve_lines(stream: millpond.Connection, history: list[str]) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            history.append(line.decode("utf-8", "replace"))  # the planted leak's allocation
            await stream.send_all(b"%d\n" % len(history))
