"""Writing PROXY protocol headers, v1 and v2 with TLVs: for tests, and for clients that send them.

This module owns the sending side of HAProxy's ``doc/proxy-protocol.txt``: what a load
balancer written with millpond writes before the client's bytes, and what the tests feed the
parser. It is the parser's mirror: every header built here parses back (``proxy.py``) to the
same addresses and TLVs, which the tests check for random headers.

Addresses are taken as Python gives them, so a balancer can pass what its sockets say::

    header = build_v2(client.getpeername(), client.getsockname())
    await backend.send_all(header + first_bytes)

Bad arguments raise ``ValueError`` or ``TypeError`` naming the argument; nothing here raises
``ProxyProtocolError``, which is the parser's.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Final

from ._proxy_v2 import SIGNATURE as V2_SIGNATURE

# The keyword argument crc32c of build_v2 would shadow the function inside it.
from .crc32c import crc32c as checksum_of
from .proxy_header import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CLIENT_CERT,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_GROUP,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_SIG_SCHEME,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_CRC32C,
    Command,
    Transport,
)

__all__ = ["SocketAddress", "build_v1", "build_v2", "encode_tlvs", "ssl_tlv_value"]

SocketAddress = tuple[str, int] | tuple[str, int, int, int] | str | bytes
"""What ``getpeername()`` / ``getsockname()`` return: ``(host, port)`` for IPv4,
``(host, port, flowinfo, scope_id)`` for IPv6 (only host and port are sent), a path (``str``
or ``bytes``) for a UNIX socket."""

# v2's 14th byte for each transport (section 2.2), and the socket family its addresses have.
_TRANSPORT_BYTES: Final[dict[str, tuple[int, socket.AddressFamily | None]]] = {
    "unspec": (0x00, None),
    "tcp4": (0x11, socket.AF_INET),
    "udp4": (0x12, socket.AF_INET),
    "tcp6": (0x21, socket.AF_INET6),
    "udp6": (0x22, socket.AF_INET6),
    "unix-stream": (0x31, socket.AF_UNIX),
    "unix-dgram": (0x32, socket.AF_UNIX),
}
_STREAM: Final = {socket.AF_INET: "tcp4", socket.AF_INET6: "tcp6", socket.AF_UNIX: "unix-stream"}
_UNIX_PATH_LENGTH: Final = 108  # sun_path, and the v2 UNIX address field


def _family(address: SocketAddress, argument: str) -> socket.AddressFamily:
    if isinstance(address, str | bytes):
        return socket.AF_UNIX
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"{argument} must be a (host, port) tuple or a UNIX path, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{argument}'s port must be an int from 0 to 65535, not {port!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{argument}'s host must be an IP address, not {host!r}") from None
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _families(
    source: SocketAddress | None, destination: SocketAddress | None
) -> socket.AddressFamily | None:
    if source is None and destination is None:
        return None
    if source is None or destination is None:
        raise ValueError("give both source and destination, or neither")
    family = _family(source, "source")
    if _family(destination, "destination") != family:
        raise ValueError(f"source {source!r} and destination {destination!r} are not of one family")
    return family


def _packed_host(address: SocketAddress) -> bytes:
    assert isinstance(address, tuple)
    return ipaddress.ip_address(address[0]).packed


def build_v1(
    source: SocketAddress | None = None, destination: SocketAddress | None = None
) -> bytes:
    """A v1 line (section 2.1): ``PROXY TCP4|TCP6 src dst sport dport\\r\\n``.

    Both addresses ``None`` give ``PROXY UNKNOWN\\r\\n``. Hosts are written in canonical form
    (``inet_ntop``'s), so ``"2001:DB8:0::1"`` goes out as ``2001:db8::1``. v1 carries only TCP
    over IPv4 or IPv6: a UNIX address raises ``ValueError`` (send ``UNKNOWN``, as HAProxy
    does, by passing no addresses).
    """
    family = _families(source, destination)
    if family is None:
        return b"PROXY UNKNOWN\r\n"
    if family == socket.AF_UNIX:
        raise ValueError("v1 cannot carry UNIX addresses; pass no addresses for UNKNOWN")
    assert isinstance(source, tuple) and isinstance(destination, tuple)
    hosts = [socket.inet_ntop(family, _packed_host(a)) for a in (source, destination)]
    protocol = "TCP4" if family == socket.AF_INET else "TCP6"
    line = f"PROXY {protocol} {hosts[0]} {hosts[1]} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def _unix_field(address: SocketAddress, argument: str) -> bytes:
    path = os.fsencode(address) if isinstance(address, str) else address
    assert isinstance(path, bytes)
    if isinstance(address, str) and "\0" in address:
        raise ValueError(f"{argument} path contains a NUL")
    if len(path) > _UNIX_PATH_LENGTH:
        raise ValueError(f"{argument} path is {len(path)} bytes, more than {_UNIX_PATH_LENGTH}")
    return path.ljust(_UNIX_PATH_LENGTH, b"\0")


def _tlv(kind: int, value: bytes, argument: str) -> bytes:
    if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind <= 0xFF:
        raise ValueError(f"{argument}: a TLV type is an int from 0 to 255, not {kind!r}")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{argument}: a TLV value is bytes, not {type(value).__name__}")
    if len(value) > 0xFFFF:
        raise ValueError(f"{argument}: a TLV value is at most 65535 bytes, not {len(value)}")
    return struct.pack("!BH", kind, len(value)) + bytes(value)


def encode_tlvs(tlvs: Iterable[tuple[int, bytes]], argument: str = "tlvs") -> bytes:
    """``(type, value)`` pairs as TLVs, in order: a type byte, a 2-byte length, the value."""
    return b"".join(_tlv(kind, value, argument) for kind, value in tlvs)


def build_v2(
    source: SocketAddress | None = None,
    destination: SocketAddress | None = None,
    tlvs: Iterable[tuple[int, bytes]] = (),
    *,
    command: Command | None = None,
    transport: Transport | None = None,
    crc32c: bool = False,
) -> bytes:
    """A v2 header (section 2.2): signature, command, family, length, addresses, TLVs.

    * With both addresses: a PROXY header over TCP (IPv4 or IPv6, by the hosts) or a UNIX
      stream (by a path). With neither: LOCAL over UNSPEC, what HAProxy sends for its own
      health checks.
    * ``tlvs``: ``(type, value)`` pairs, written in order (see :func:`ssl_tlv_value` for the
      SSL TLV's value). ``crc32c=True`` appends a CRC32C TLV (0x03) and fills it with the
      header's checksum (section 2.2.3); the pairs must then hold no CRC32C TLV of their own.
    * ``command`` and ``transport`` override what the addresses imply, to write every
      header the specification allows: LOCAL with addresses, PROXY over UNSPEC, or the
      datagram transports (``"udp4"``, ``"udp6"``, ``"unix-dgram"``). The transport's family
      must match the addresses (``"unspec"``: none).
    """
    family = _families(source, destination)
    if transport is None:
        transport = "unspec" if family is None else _STREAM[family]  # type: ignore[assignment]
    if transport not in _TRANSPORT_BYTES:
        raise ValueError(f"transport must be one of {sorted(_TRANSPORT_BYTES)}, not {transport!r}")
    transport_byte, transport_family = _TRANSPORT_BYTES[transport]
    if transport_family != family:
        raise ValueError(f"transport {transport!r} does not match the addresses given")
    if command is None:
        command = "local" if family is None else "proxy"
    if command not in ("proxy", "local"):
        raise ValueError(f"command must be 'proxy' or 'local', not {command!r}")

    if family is None:
        addresses = b""
    elif family == socket.AF_UNIX:
        assert source is not None and destination is not None
        addresses = _unix_field(source, "source") + _unix_field(destination, "destination")
    else:
        assert isinstance(source, tuple) and isinstance(destination, tuple)
        addresses = (
            _packed_host(source)
            + _packed_host(destination)
            + struct.pack("!HH", source[1], destination[1])
        )
    pairs = list(tlvs)
    if crc32c and any(kind == PP2_TYPE_CRC32C for kind, _ in pairs):
        raise ValueError("crc32c=True and a CRC32C TLV in tlvs: give one or the other")
    body = addresses + encode_tlvs(pairs)
    if crc32c:
        body += _tlv(PP2_TYPE_CRC32C, b"\0\0\0\0", "crc32c")
    if len(body) > 0xFFFF:
        raise ValueError(f"the header's addresses and TLVs are {len(body)} bytes, over 65535")
    version_command = 0x21 if command == "proxy" else 0x20
    header = V2_SIGNATURE + struct.pack("!BBH", version_command, transport_byte, len(body)) + body
    if crc32c:
        # Computed with the field at zero, then written in network byte order, as HAProxy does.
        header = header[:-4] + checksum_of(header).to_bytes(4, "big")
    return header


def ssl_tlv_value(
    *,
    client: int,
    verify: int = 0,
    version: str | None = None,
    cn: str | None = None,
    cipher: str | None = None,
    sig_alg: str | None = None,
    key_alg: str | None = None,
    group: str | None = None,
    sig_scheme: str | None = None,
    client_cert: bytes | None = None,
    sub_tlvs: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """The value of an SSL TLV (0x20, section 2.2.6), for ``build_v2(tlvs=[(0x20, ...)])``.

    ``client`` is the ``PP2_CLIENT_*`` bit field, ``verify`` the 32-bit verify result (0:
    verified); the strings become sub-TLVs in the order of the parameters (US-ASCII, the CN
    UTF-8), then ``client_cert`` (DER), then ``sub_tlvs`` as given.
    """
    if not 0 <= client <= 0xFF:
        raise ValueError(f"client is a byte of PP2_CLIENT_* flags, not {client!r}")
    if not 0 <= verify <= 0xFFFFFFFF:
        raise ValueError(f"verify is a 32-bit unsigned int, not {verify!r}")
    strings = [
        (PP2_SUBTYPE_SSL_VERSION, version, "ascii"),
        (PP2_SUBTYPE_SSL_CN, cn, "utf-8"),
        (PP2_SUBTYPE_SSL_CIPHER, cipher, "ascii"),
        (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg, "ascii"),
        (PP2_SUBTYPE_SSL_KEY_ALG, key_alg, "ascii"),
        (PP2_SUBTYPE_SSL_GROUP, group, "ascii"),
        (PP2_SUBTYPE_SSL_SIG_SCHEME, sig_scheme, "ascii"),
    ]
    subs = [(kind, text.encode(encoding)) for kind, text, encoding in strings if text is not None]
    if client_cert is not None:
        subs.append((PP2_SUBTYPE_SSL_CLIENT_CERT, client_cert))
    subs.extend(sub_tlvs)
    return struct.pack("!BI", client, verify) + encode_tlvs(subs, "sub_tlvs")
