"""Load for examples/leaky_server.py: many short connections, each sending a few lines.

``python examples/leaky_load.py --port 7000 --connections 2000`` opens 2000
connections, 50 at a time, each sending ``--lines`` lines of ``--line-bytes``
bytes and reading every answer before it closes. Loopback only; it stops by
itself. docs/leak-hunt.md drives the hunt with it, and
tests/test_leak_hunt.py calls :func:`load` itself.
"""

from __future__ import annotations

import argparse

import trio

import millpond


async def one_connection(port: int, lines: int, line_bytes: int) -> None:
    """Send ``lines`` lines and read the answer to each; then close."""
    async with await millpond.open_connection("127.0.0.1", port) as stream:
        line = b"x" * (line_bytes - 1) + b"\n"
        for sent in range(1, lines + 1):
            await stream.send_all(line)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = await stream.receive_some()
                if not chunk:
                    raise trio.BrokenResourceError("the server closed")
                answer += chunk
            assert int(answer) == sent, answer


async def load(
    port: int, connections: int, lines: int = 10, line_bytes: int = 200, at_once: int = 50
) -> None:
    """``connections`` connections to 127.0.0.1:``port``, ``at_once`` at a time."""
    limit = trio.CapacityLimiter(at_once)

    async def limited() -> None:
        async with limit:
            await one_connection(port, lines, line_bytes)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(limited)


def main() -> None:
    """Parse the flags, run the load, say what it did."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--line-bytes", type=int, default=200)
    arguments = parser.parse_args()
    trio.run(load, arguments.port, arguments.connections, arguments.lines, arguments.line_bytes)
    print(f"{arguments.connections} connections, {arguments.lines} lines of "
          f"{arguments.line_bytes} bytes each")  # fmt: skip


if __name__ == "__main__":
    main()
