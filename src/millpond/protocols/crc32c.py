"""CRC32C, the Castagnoli checksum, in pure Python: what the PROXY protocol v2 checksum TLV uses.

This module owns one function, :func:`crc32c`. The standard library has CRC-32 (``zlib.crc32``,
the IEEE polynomial of Ethernet and zip) but not CRC32C, and a PROXY header is at most a few
hundred bytes, so a table-driven loop in Python (about 60 ns a byte) is cheap enough to not
need a compiled dependency.

The algorithm is the one in RFC 4960 (SCTP), Appendix B, which ``doc/proxy-protocol.txt``
section 2.2.3 names: polynomial 0x1EDC6F41, bits processed least significant first (so the
table is built from the bit-reversed polynomial 0x82F63B78), initial value and final XOR
0xFFFFFFFF. It gives 0xE3069283 for ``b"123456789"``, the usual check value, and the values
of RFC 3720 (iSCSI) Appendix B.4, which the tests check.
"""

from __future__ import annotations

from typing import Final

__all__ = ["crc32c"]

# 0x1EDC6F41 with its 32 bits reversed: the table-driven, reflected form processes the low bit
# of each byte first, as RFC 4960 Appendix B's reference code does.
_REFLECTED_POLYNOMIAL: Final = 0x82F63B78


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _REFLECTED_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


# One entry per byte value: the CRC of that byte shifted through eight rounds. HAProxy's
# src/hash.c spells the same 256 values out by hand (a test compares the first ones).
_TABLE: Final = _table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the CRC32C of ``data``, continuing from ``crc`` (the CRC of what came before).

    ``crc32c(b + c) == crc32c(c, crc32c(b))``, as with ``zlib.crc32``::

        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
    """
    # Hot loop: the table and the running value are locals.
    table = _TABLE
    value = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        value = table[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF
