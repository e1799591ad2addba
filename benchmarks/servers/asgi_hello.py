"""The "hello" ASGI application that benchmarks/http_compare.py serves with uvicorn and hypercorn.

The same response as ``examples/http_server.py``'s ``GET /``: status 200,
``content-type: text/plain; charset=utf-8``, ``content-length: 5``, ``hello``
(the servers add ``date`` and ``server`` themselves). It reads no body: the
benchmark sends none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"5")]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer every request with "hello"; complete the lifespan handshake."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"hello"})
