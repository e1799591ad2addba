"""The PROXY protocol's v2 header, in binary (``doc/proxy-protocol.txt``, section 2.2).

This module owns the binary layout: the checks on the 16 fixed bytes (signature, version and
command, family and transport, length), and the decoding of a complete header, addresses and
TLVs, into a :class:`~millpond.protocols.proxy_header.ProxyHeader`. No state, no I/O.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Final

from .crc32c import crc32c
from .proxy_header import (
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    Address,
    Command,
    ProxyHeader,
    ProxyProtocolError,
    Transport,
    check_tlv,
    split_tlvs,
)

# Section 2.2: the 12-byte signature. It starts with CR, where a v1 line starts with "P".
SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
# Signature, version and command, family and transport, length (struct proxy_hdr_v2).
FIXED_LENGTH: Final = 16
# The length field is 16 bits.
LONGEST: Final = FIXED_LENGTH + 0xFFFF


def _mismatch(got: bytes, want: bytes) -> int:
    """The first index where ``got`` differs from ``want`` (``got`` is no longer than it)."""
    return next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)


# The 13th byte: version 2 in the high nibble ("the receiver must only accept this value"),
# the command in the low one ("Receivers must drop connections presenting unexpected values").
_COMMANDS: Final[dict[int, Command]] = {0x20: "local", 0x21: "proxy"}


def _inet4(header: bytes) -> tuple[Address, Address]:
    ports = header[24:28]
    return (
        (socket.inet_ntoa(header[16:20]), ports[0] << 8 | ports[1]),
        (socket.inet_ntoa(header[20:24]), ports[2] << 8 | ports[3]),
    )


def _inet6(header: bytes) -> tuple[Address, Address]:
    ports = header[48:52]
    return (
        (socket.inet_ntop(socket.AF_INET6, header[16:32]), ports[0] << 8 | ports[1]),
        (socket.inet_ntop(socket.AF_INET6, header[32:48]), ports[2] << 8 | ports[3]),
    )


def _unix_path(block: bytes) -> Address:
    # As Python's getpeername() gives an AF_UNIX address: a path is text up to its NUL,
    # decoded like a file name; a Linux abstract name starts with a NUL and is bytes (its
    # trailing NULs cannot be told from the 108-byte field's padding, so they are dropped); a
    # field of zeroes is an unnamed socket, "" (what a UNIX client's own address usually is).
    if block[0]:
        return os.fsdecode(block.split(b"\0", 1)[0])
    name = block.rstrip(b"\0")
    return name if name else ""


def _unix(header: bytes) -> tuple[Address, Address]:
    return _unix_path(header[16:124]), _unix_path(header[124:232])


# The 14th byte: the transport and the address family. Only the seven bytes section 2.2 lists
# ("In practice, the following protocol bytes are expected") are accepted; other values "must
# be rejected as invalid by receivers", and other combinations of valid nibbles (0x01, 0x10)
# have no defined address layout. Each has the size of its address block and the decoder of
# its addresses, or None where the receiver uses the real endpoints:
#
# * UNSPEC: "The receiver should ignore address information."
# * DGRAM (0x12, 0x22, 0x32): millpond serves stream sockets only, so a datagram address is
#   never the peer of the connection it arrived on. Section 2.2 lets a receiver that does not
#   implement a combination fall back to UNSPEC ("provided that it automatically falls back
#   to the UNSPEC mode for the valid combinations above that it does not support"); so the
#   header parses, its TLVs are kept, ``transport`` says what the sender declared, and the
#   addresses are None. Refusing would cut off a deployment over information the server
#   could not use; decoding them would put a UDP address in getpeername().
_TRANSPORTS: Final[
    dict[int, tuple[Transport, int, Callable[[bytes], tuple[Address, Address]] | None]]
] = {
    0x00: ("unspec", 0, None),
    0x11: ("tcp4", 12, _inet4),
    0x12: ("udp4", 12, None),
    0x21: ("tcp6", 36, _inet6),
    0x22: ("udp6", 36, None),
    0x31: ("unix-stream", 216, _unix),
    0x32: ("unix-dgram", 216, None),
}


def check_fixed(fixed: bytes, max_length: int) -> None:
    """Refuse v2's first 16 bytes, or the part received so far, at their first bad byte."""
    known = min(len(fixed), 12)
    if fixed[:known] != SIGNATURE[:known]:
        i = _mismatch(fixed[:known], SIGNATURE)
        raise ProxyProtocolError(
            f"not a PROXY v2 header: byte {i} is 0x{fixed[i]:02x}, the signature has "
            f"0x{SIGNATURE[i]:02x}"
        )
    if len(fixed) > 12 and fixed[12] not in _COMMANDS:
        if fixed[12] >> 4 != 2:
            raise ProxyProtocolError(f"v2: version {fixed[12] >> 4}, only version 2 exists")
        raise ProxyProtocolError(f"v2: unknown command 0x{fixed[12] & 0x0F:x}")
    if len(fixed) > 13 and fixed[13] not in _TRANSPORTS:
        raise ProxyProtocolError(f"v2: unknown family and transport byte 0x{fixed[13]:02x}")
    if len(fixed) == FIXED_LENGTH:
        length = fixed[14] << 8 | fixed[15]
        if FIXED_LENGTH + length > max_length:
            raise ProxyProtocolError(
                f"v2: the header is {FIXED_LENGTH + length} bytes, more than the "
                f"{max_length} allowed"
            )
        # "Receivers MUST always consider this field to skip the appropriate number of bytes
        # and must not assume zero is presented for LOCAL connections": the address block of
        # the declared family is skipped for LOCAL too, so it must fit.
        transport, size, _ = _TRANSPORTS[fixed[13]]
        if length < size:
            raise ProxyProtocolError(
                f"v2: length {length} is shorter than a {transport} address block ({size})"
            )


def decode(header: bytes) -> ProxyHeader:
    """The header of a complete v2 header whose 16 fixed bytes passed their checks."""
    command = _COMMANDS[header[12]]
    transport, size, decode = _TRANSPORTS[header[13]]
    tlvs = []
    checksum_at = -1
    for kind, start, end in split_tlvs(header, FIXED_LENGTH + size, "TLV"):
        if kind == PP2_TYPE_NOOP:
            continue
        value = header[start:end]
        check_tlv(kind, value)
        if kind == PP2_TYPE_CRC32C:
            if checksum_at >= 0:
                raise ProxyProtocolError("v2: two CRC32C TLVs")
            checksum_at = start
        tlvs.append((kind, value))
    if checksum_at >= 0:
        # 2.2.3: "replace the 32 bits of the checksum field in the received PROXY header with
        # all '0's and calculate a CRC32c checksum value of the whole PROXY header ... If it is
        # not, the receiver MUST treat the TCP connection providing the header as invalid."
        computed = crc32c(
            header[checksum_at + 4 :], crc32c(b"\0\0\0\0", crc32c(header[:checksum_at]))
        )
        sent = int.from_bytes(header[checksum_at : checksum_at + 4], "big")
        if computed != sent:
            raise ProxyProtocolError(
                f"v2: CRC32C mismatch: the header says 0x{sent:08x}, "
                f"its bytes give 0x{computed:08x}"
            )
    source = destination = None
    # LOCAL: "The receiver must accept this connection as valid and must use the real
    # connection endpoints and discard the protocol block including the family".
    if command == "proxy" and decode is not None:
        source, destination = decode(header)
    return ProxyHeader("v2", command, transport, source, destination, tuple(tlvs))
