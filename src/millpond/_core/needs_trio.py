"""One clear error for code that needs a Trio run and was called outside one.

Trio's own message from deep inside ("must be called from async context",
"Cannot be used outside of a run context") does not say what to do. Every
millpond entry point that needs a run raises this instead, at its first
contact with Trio, so the check costs nothing on the normal path.
"""

from __future__ import annotations

import trio

__all__ = ["require_trio_run"]


def require_trio_run(what: str) -> None:
    """Raise a ``RuntimeError`` that says what to do unless called inside a Trio run."""
    if not trio.lowlevel.in_trio_run():
        raise RuntimeError(
            f"{what} needs a running Trio event loop: call it from a function run by "
            "trio.run() (anyio users: anyio.run(..., backend='trio'))"
        )
