"""The command's flag values: text in, a checked value or a message that says what was wrong.

This module owns how one flag's text becomes a value (a byte count with a
suffix, seconds or ``none``, a port, octal permission bits, a file
descriptor, a number of workers or ``auto``). Each parser is an argparse
``type=`` function: a bad value raises ``argparse.ArgumentTypeError`` with a
message that shows a good one, and argparse prints it on one line after the
usage, naming the flag. The parsers are pure functions, so they are tested
without starting a process. Which flags exist and how they combine is ``options.py``'s.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Final

__all__ = [
    "byte_count",
    "count",
    "file_descriptor",
    "host",
    "permission_bits",
    "port",
    "seconds",
    "seconds_or_none",
    "usable_cpus",
    "workers",
]

# Binary multiples, as HAProxy's and nginx's size suffixes are: 64M is 64 MiB.
_BYTE_SUFFIXES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_BYTE_COUNT: Final = re.compile(r"(\d+)\s*(?:([kmg])(?:ib)?)?", re.IGNORECASE)

# Words that turn a timeout off, as in HAProxy's "timeout ... 0" or nginx's "off".
_NO_TIMEOUT: Final = frozenset({"none", "off"})


def byte_count(text: str) -> int:
    """A number of bytes, at least 1: ``65536``, ``512K``, ``64M``, ``1G`` (powers of 1024)."""
    match = _BYTE_COUNT.fullmatch(text.strip())
    if match is None or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a byte count of at least 1, such as 65536, 512K, 64M or 1G "
            f"(K, M, G: powers of 1024), not {text!r}"
        )
    return int(match.group(1)) * _BYTE_SUFFIXES[(match.group(2) or "").lower()]


def seconds(text: str) -> float:
    """A duration in seconds, ``>= 0`` and finite: ``30``, ``0.5``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0, such as 30 or 0.5, not {text!r}"
        )
    return value


def seconds_or_none(text: str) -> float | None:
    """A duration in seconds, or ``none`` (also ``off``) for no limit at all."""
    if text.strip().lower() in _NO_TIMEOUT:
        return None
    try:
        return seconds(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0, such as 30 or 0.5, or 'none', not {text!r}"
        ) from None


def _whole_number(text: str, lowest: int, highest: int | None, what: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        value = lowest - 1
    if value < lowest or (highest is not None and value > highest):
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
    return value


def count(text: str) -> int:
    """A whole number of at least 1 (a connection count, a backlog)."""
    return _whole_number(text, 1, None, "a whole number >= 1")


def port(text: str) -> int:
    """A TCP port number; 0 lets the system pick a free one."""
    return _whole_number(text, 0, 65535, "a port number from 0 to 65535 (0: any free port)")


def file_descriptor(text: str) -> int:
    """A file descriptor number, ``>= 0``."""
    return _whole_number(text, 0, None, "a file descriptor number >= 0, such as 3")


def permission_bits(text: str) -> int:
    """Permission bits in octal, as ``chmod`` takes them: ``660``, ``0660``, ``0o660``."""
    digits = text.strip().lower().removeprefix("0o")
    try:
        value = int(digits, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(
            f"expected permission bits in octal, from 000 to 777, such as 660, not {text!r}"
        )
    return value


def host(text: str) -> str:
    """An address or name to listen on; ``*`` (also nothing) means every interface: ``"*"``."""
    return text.strip() or "*"


def usable_cpus() -> int:
    """How many CPUs this process may run on: its affinity mask, not the machine's count.

    ``os.process_cpu_count()`` where Python has it (3.13), else the size of
    ``os.sched_getaffinity(0)`` (Linux), else ``os.cpu_count()``. Under
    ``taskset -c 0-1`` or a cgroup cpuset this is 2 on a 64-core machine,
    and that is how many workers can run at once.
    """
    process_cpu_count = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:
        counted: int | None = process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        counted = len(os.sched_getaffinity(0))
    else:
        counted = os.cpu_count()
    return max(1, counted or 1)


def workers(text: str) -> int:
    """A number of worker processes, at least 1, or ``auto``: one per usable CPU."""
    if text.strip().lower() == "auto":
        return usable_cpus()
    return _whole_number(
        text, 1, None, f"a number of workers >= 1, or auto (one per CPU: {usable_cpus()} here)"
    )
