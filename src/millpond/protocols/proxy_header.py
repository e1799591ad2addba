"""What a PROXY protocol header says: the values a parse returns, and the meaning of each TLV.

This module owns the vocabulary shared by the parser (``proxy.py``) and the builder
(``proxy_build.py``): :class:`ProxyHeader` and :class:`SSLInfo`, the one error
:class:`ProxyProtocolError`, the TLV type numbers of HAProxy's ``doc/proxy-protocol.txt``
(section 2.2, with their specification names), and the rule for each registered TLV's value.
It does no parsing of the framing and no I/O.

A header keeps every TLV it carried as raw ``(type, value)`` pairs, in order (``tlvs``); the
registered types are also decoded on demand by properties (``alpn``, ``authority``, ``crc32c``,
``unique_id``, ``ssl``, ``netns``). The parser runs the same decoders once while parsing, so a
header that parsed has values that decode: reading a property of a parsed header never raises.
A ``ProxyHeader`` built by hand with malformed values raises :class:`ProxyProtocolError` from
the property instead.

Where a type appears more than once, ``tlvs`` keeps all of them and the property reads the
first, as HAProxy's ``fc_pp_*`` sample fetches do.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CLIENT_CERT",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_GROUP",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_SIG_SCHEME",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "UNIQUE_ID_MAX_LENGTH",
    "Address",
    "Command",
    "ProxyHeader",
    "ProxyProtocolError",
    "SSLInfo",
    "Transport",
    "check_tlv",
    "check_ssl_sub_tlv",
    "split_tlvs",
]

# Section 2.2: the registered TLV types, and the SSL TLV's sub-types (section 2.2.6).
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_SUBTYPE_SSL_GROUP: Final = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME: Final = 0x27
PP2_SUBTYPE_SSL_CLIENT_CERT: Final = 0x28
PP2_TYPE_NETNS: Final = 0x30

# The SSL TLV's <client> bit field (section 2.2.6).
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

# Section 2.2.5: "an opaque byte sequence of up to 128 bytes". A longer one is refused (HAProxy's
# receiver refuses it too: UNIQUEID_LEN).
UNIQUE_ID_MAX_LENGTH: Final = 128

Command: TypeAlias = Literal["proxy", "local"]
"""``"proxy"``: relayed for a client, the addresses are the client's; ``"local"``: a connection
the proxy made itself (a health check), use the real endpoints."""

Transport: TypeAlias = Literal[
    "tcp4", "tcp6", "udp4", "udp6", "unix-stream", "unix-dgram", "unspec"
]
"""The transport and address family the sender declared: v1's TCP4, TCP6 and UNKNOWN
(``"unspec"``), or v2's 14th byte (0x11 ``"tcp4"``, 0x12 ``"udp4"``, 0x21 ``"tcp6"``, 0x22
``"udp6"``, 0x31 ``"unix-stream"``, 0x32 ``"unix-dgram"``, 0x00 ``"unspec"``)."""

Address: TypeAlias = tuple[str, int] | str | bytes
"""An address as ``socket.getpeername()`` gives it: ``(host, port)`` for IPv4 and IPv6 (host in
canonical text), a ``str`` path for a UNIX socket (``""`` for an unnamed one), ``bytes`` starting
with a NUL for a Linux abstract one."""


class ProxyProtocolError(ValueError):
    """A PROXY protocol header is malformed, refused, or incomplete at the end of the stream.

    The one exception the parser raises, for any input. ``str(error)`` is the reason, written
    to be logged: short, specific, and with at most a few bytes of the input, escaped. The
    connection should be closed (section 2.1: "Any sequence which does not exactly match the
    protocol must be discarded and cause the receiver to abort the connection").
    """


def _text(what: str, encoding: str) -> Callable[[bytes], str]:
    def decode(value: bytes) -> str:
        try:
            return value.decode(encoding)
        except UnicodeDecodeError:
            raise ProxyProtocolError(f"the {what} is not {encoding} text") from None

    return decode


# The string TLVs, by the encoding the specification gives them.
_authority = _text("authority TLV (0x02)", "utf-8")  # 2.2.2: "an UTF8-encoded string"
_netns = _text("netns TLV (0x30)", "ascii")  # 2.2.7: "US-ASCII string representation"


def _checksum(value: bytes) -> int:
    # 2.2.3: "a 32-bit number". HAProxy writes and reads it in network byte order
    # (write_u32(htonl(...)) in make_proxy_line_v2, read_n32 in conn_recv_proxy), unlike SCTP,
    # which stores its CRC32C little-endian; HAProxy is the reference sender, so big-endian.
    if len(value) != 4:
        raise ProxyProtocolError(f"the CRC32C TLV (0x03) is {len(value)} bytes, not 4")
    return int.from_bytes(value, "big")


def _unique_id(value: bytes) -> bytes:
    if len(value) > UNIQUE_ID_MAX_LENGTH:
        raise ProxyProtocolError(
            f"the unique ID TLV (0x05) is {len(value)} bytes, more than {UNIQUE_ID_MAX_LENGTH}"
        )
    return value


def split_tlvs(block: bytes, start: int, what: str) -> list[tuple[int, int, int]]:
    """Split ``block[start:]`` into TLVs: a list of ``(type, value_start, value_end)``.

    Each TLV is a type byte, a 2-byte big-endian length, and that many bytes of value (section
    2.2, ``struct pp2_tlv``). The TLVs must fill the block exactly: a TLV header or value that
    runs past its end raises :class:`ProxyProtocolError`, naming ``what`` and the offset.
    """
    end = len(block)
    position = start
    found = []
    while position < end:
        if end - position < 3:
            raise ProxyProtocolError(
                f"{what} at offset {position}: {end - position} bytes left, "
                "fewer than a type and a length"
            )
        kind = block[position]
        value_start = position + 3
        value_end = value_start + (block[position + 1] << 8 | block[position + 2])
        if value_end > end:
            raise ProxyProtocolError(
                f"{what} 0x{kind:02x} at offset {position}: its value runs "
                f"{value_end - end} bytes past the end"
            )
        found.append((kind, value_start, value_end))
        position = value_end
    return found


# The SSL TLV's sub-TLVs whose values have a defined form (section 2.2.6): US-ASCII strings,
# the client certificate's common name in UTF-8, and the DER certificate as bytes.
_SSL_SUB_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    PP2_SUBTYPE_SSL_VERSION: _text("SSL version sub-TLV (0x21)", "ascii"),
    PP2_SUBTYPE_SSL_CN: _text("SSL CN sub-TLV (0x22)", "utf-8"),
    PP2_SUBTYPE_SSL_CIPHER: _text("SSL cipher sub-TLV (0x23)", "ascii"),
    PP2_SUBTYPE_SSL_SIG_ALG: _text("SSL sig_alg sub-TLV (0x24)", "ascii"),
    PP2_SUBTYPE_SSL_KEY_ALG: _text("SSL key_alg sub-TLV (0x25)", "ascii"),
    PP2_SUBTYPE_SSL_GROUP: _text("SSL group sub-TLV (0x26)", "ascii"),
    PP2_SUBTYPE_SSL_SIG_SCHEME: _text("SSL sig_scheme sub-TLV (0x27)", "ascii"),
}


def check_ssl_sub_tlv(kind: int, value: bytes) -> None:
    """Raise :class:`ProxyProtocolError` if an SSL sub-TLV's value breaks its type's rule."""
    decode = _SSL_SUB_DECODERS.get(kind)
    if decode is not None:
        decode(value)


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The SSL TLV (0x20, section 2.2.6): how the client reached the proxy over TLS.

    ``client`` is the bit field of ``PP2_CLIENT_*`` flags, ``verify`` the 32-bit verify
    result, ``tlvs`` the sub-TLVs as raw ``(type, value)`` pairs in order; the properties
    decode the registered sub-TLVs (the first of each type), ``None`` where absent.

    Trust :attr:`verified`, not ``verify == 0`` alone: the specification says ``verify`` is
    zero only for a certificate that was presented and verified, but HAProxy leaves it zero
    when the client sent no certificate at all.
    """

    client: int
    verify: int
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def decode(cls, value: bytes) -> SSLInfo:
        """Decode an SSL TLV's value, or raise :class:`ProxyProtocolError`."""
        # struct pp2_tlv_ssl is packed: a 1-byte client field, a 4-byte verify, then sub-TLVs.
        if len(value) < 5:
            raise ProxyProtocolError(
                f"the SSL TLV (0x20) is {len(value)} bytes, shorter than its client and "
                "verify fields (5)"
            )
        subs = []
        for kind, start, end in split_tlvs(value, 5, "SSL sub-TLV"):
            sub = value[start:end]
            check_ssl_sub_tlv(kind, sub)
            subs.append((kind, sub))
        return cls(value[0], int.from_bytes(value[1:5], "big"), tuple(subs))

    def _sub(self, kind: int) -> str | None:
        for sub_kind, value in self.tlvs:
            if sub_kind == kind:
                text = _SSL_SUB_DECODERS[kind](value)
                assert isinstance(text, str)
                return text
        return None

    @property
    def client_ssl(self) -> bool:
        """``PP2_CLIENT_SSL``: the client connected over SSL/TLS."""
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def client_cert_conn(self) -> bool:
        """``PP2_CLIENT_CERT_CONN``: the client presented a certificate on this connection."""
        return bool(self.client & PP2_CLIENT_CERT_CONN)

    @property
    def client_cert_sess(self) -> bool:
        """``PP2_CLIENT_CERT_SESS``: the client presented a certificate at least once in this
        TLS session."""
        return bool(self.client & PP2_CLIENT_CERT_SESS)

    @property
    def verified(self) -> bool:
        """A client certificate was presented (on this connection or session) and verified."""
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) and (
            self.verify == 0
        )

    @property
    def version(self) -> str | None:
        """The TLS version (sub-TLV 0x21), for example ``"TLSv1.3"``."""
        return self._sub(PP2_SUBTYPE_SSL_VERSION)

    @property
    def cn(self) -> str | None:
        """The client certificate's Common Name (sub-TLV 0x22)."""
        return self._sub(PP2_SUBTYPE_SSL_CN)

    @property
    def cipher(self) -> str | None:
        """The cipher (sub-TLV 0x23), for example ``"ECDHE-RSA-AES128-GCM-SHA256"``."""
        return self._sub(PP2_SUBTYPE_SSL_CIPHER)

    @property
    def sig_alg(self) -> str | None:
        """The algorithm that signed the frontend's certificate (sub-TLV 0x24), e.g.
        ``"RSA-SHA256"``."""
        return self._sub(PP2_SUBTYPE_SSL_SIG_ALG)

    @property
    def key_alg(self) -> str | None:
        """The algorithm of the frontend certificate's key (sub-TLV 0x25), e.g. ``"RSA2048"``."""
        return self._sub(PP2_SUBTYPE_SSL_KEY_ALG)

    @property
    def group(self) -> str | None:
        """The key exchange group (sub-TLV 0x26), for example ``"secp256r1"``."""
        return self._sub(PP2_SUBTYPE_SSL_GROUP)

    @property
    def sig_scheme(self) -> str | None:
        """The frontend's signature scheme (sub-TLV 0x27), e.g. ``"rsa_pss_rsae_sha256"``."""
        return self._sub(PP2_SUBTYPE_SSL_SIG_SCHEME)

    @property
    def client_cert(self) -> bytes | None:
        """The client's X.509 certificate, DER (sub-TLV 0x28), if the proxy sent it."""
        for kind, value in self.tlvs:
            if kind == PP2_SUBTYPE_SSL_CLIENT_CERT:
                return value
        return None


# The registered TLV types whose values have a rule; the others (ALPN: any bytes; custom,
# experimental and unassigned types) are kept as they came.
_TLV_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    PP2_TYPE_AUTHORITY: _authority,
    PP2_TYPE_CRC32C: _checksum,
    PP2_TYPE_UNIQUE_ID: _unique_id,
    PP2_TYPE_SSL: SSLInfo.decode,
    PP2_TYPE_NETNS: _netns,
}


def check_tlv(kind: int, value: bytes) -> None:
    """Raise :class:`ProxyProtocolError` if a TLV's value breaks its registered type's rule.

    The rules: authority is UTF-8; CRC32C is exactly 4 bytes; a unique ID is at most 128
    bytes; SSL has its 5 fixed bytes and well-formed sub-TLVs whose strings decode; netns is
    US-ASCII. Any value of any other type is accepted. (The checksum itself is checked by the
    parser, which has the whole header.)
    """
    decode = _TLV_DECODERS.get(kind)
    if decode is not None:
        decode(value)


# The transports whose addresses a header carries, and their socket family.
_FAMILIES: Final[dict[str, socket.AddressFamily]] = {
    "tcp4": socket.AF_INET,
    "tcp6": socket.AF_INET6,
    "unix-stream": socket.AF_UNIX,
}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY protocol header, v1 or v2, as the parser returns it.

    * ``version``: ``"v1"`` (the text line) or ``"v2"`` (the binary header).
    * ``command``: ``"proxy"`` (relayed: the addresses are the client's) or ``"local"``
      (v2 only: the proxy's own connection, a health check; use the real endpoints).
    * ``transport``: what the sender declared (see :data:`Transport`).
    * ``source``, ``destination``: the original client's address and the address it
      connected to, as ``socket.getpeername()`` / ``getsockname()`` give them; ``None`` where
      the receiver must use the connection's real endpoints: LOCAL, v1 UNKNOWN, v2 UNSPEC, and
      the datagram transports (see ``docs/proxy-protocol.md``).
    * ``tlvs``: v2's TLVs as raw ``(type, value)`` pairs in the order they came, NOOP (0x04)
      left out (section 2.2.4: "should be ignored when parsed"). Always ``()`` for v1.

    A server uses it like this::

        if header.source is not None:
            peer = header.source        # the client, not the load balancer
    """

    version: Literal["v1", "v2"]
    command: Command
    transport: Transport
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def family(self) -> socket.AddressFamily:
        """The socket family of ``source`` and ``destination``: ``AF_INET``, ``AF_INET6``,
        ``AF_UNIX``, or ``AF_UNSPEC`` when there are none."""
        if self.source is None:
            return socket.AF_UNSPEC
        return _FAMILIES.get(self.transport, socket.AF_UNSPEC)

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or ``None``."""
        for tlv_kind, value in self.tlvs:
            if tlv_kind == kind:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        """The application protocol (TLV 0x01, section 2.2.1), for example ``b"h2"``."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLV 0x02, section 2.2.2): TLS SNI, usually."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else _authority(value)

    @property
    def crc32c(self) -> int | None:
        """The header's CRC32C as sent (TLV 0x03, section 2.2.3); the parser verified it."""
        value = self.tlv(PP2_TYPE_CRC32C)
        return None if value is None else _checksum(value)

    @property
    def unique_id(self) -> bytes | None:
        """The proxy's unique ID for this connection (TLV 0x05, section 2.2.5), ≤ 128 bytes."""
        value = self.tlv(PP2_TYPE_UNIQUE_ID)
        return None if value is None else _unique_id(value)

    @property
    def ssl(self) -> SSLInfo | None:
        """The client's TLS details (TLV 0x20 and its sub-TLVs, section 2.2.6)."""
        value = self.tlv(PP2_TYPE_SSL)
        return None if value is None else SSLInfo.decode(value)

    @property
    def netns(self) -> str | None:
        """The network namespace's name (TLV 0x30, section 2.2.7)."""
        value = self.tlv(PP2_TYPE_NETNS)
        return None if value is None else _netns(value)
