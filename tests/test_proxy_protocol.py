"""The PROXY protocol parser and builder (millpond.protocols), against HAProxy's specification.

Section numbers are those of ``doc/proxy-protocol.txt``. The parser is pure, so everything
here runs without sockets: the specification's examples, every field and every refusal, the
NeedMore bounds, and hypothesis properties: built headers parse back to the same values
however the bytes are split, and any input (random, or a valid header mutated) ends in a
header, NeedMore, or ProxyProtocolError, the same whatever the split.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from millpond.protocols import (
    DEFAULT_MAX_V2_LENGTH,
    NeedMore,
    Parsed,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    SSLInfo,
    _proxy_v1,
    build_v1,
    build_v2,
    parse_header,
    proxy,
    ssl_tlv_value,
)
from millpond.protocols import crc32c as crc32c_module
from millpond.protocols.crc32c import crc32c
from millpond.protocols.proxy_build import encode_tlvs
from millpond.protocols.proxy_header import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HTTP = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def v2(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header by hand: signature, the 13th and 14th bytes, the length, the body."""
    return (
        SIGNATURE
        + struct.pack("!BBH", ver_cmd, family, len(body) if length is None else length)
        + body
    )


def refused(data: bytes, *, version: str = "auto", **kwargs: int) -> str:
    """The reason the parser refuses ``data`` fed in one piece (``data`` must be refused)."""
    parser = ProxyHeaderParser(version, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ProxyProtocolError) as caught:
        parser.feed(data)
    return str(caught.value)


Outcome = tuple[object, ...]


def feed_pieces(
    data: bytes,
    cuts: Sequence[int] = (),
    *,
    version: str = "auto",
    max_v2_length: int = DEFAULT_MAX_V2_LENGTH,
) -> Outcome:
    """Feed ``data`` cut at ``cuts``; what came of it, comparable across splits.

    ``("parsed", header, consumed, rest)`` with ``rest`` every byte handed back after the header
    (from the feed that completed it and from every feed after), ``("need", NeedMore)``, or
    ``("error", reason)``.
    """
    parser = ProxyHeaderParser(version, max_v2_length=max_v2_length)  # type: ignore[arg-type]
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    answer: NeedMore | Parsed | None = None
    rest = b""
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            answer = parser.feed(data[start:end])
            if isinstance(answer, Parsed):
                rest += answer.rest
    except ProxyProtocolError as error:
        return ("error", str(error))
    if answer is None:
        answer = parser.feed(b"")
    if isinstance(answer, Parsed):
        return ("parsed", answer.header, answer.consumed, rest)
    return ("need", answer)


# --- section 2.1: v1 --------------------------------------------------------------------


def test_v1_the_specification_example_leaves_the_http_request_untouched() -> None:
    answer = parse_header(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + HTTP)
    assert answer.header == ProxyHeader(
        "v1", "proxy", "tcp4", ("192.168.0.1", 56324), ("192.168.0.11", 443)
    )
    assert answer.consumed == 47
    assert answer.rest == HTTP
    assert answer.header.family == socket.AF_INET


@pytest.mark.parametrize(
    ("line", "length"),
    [
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
        (
            b"PROXY TCP6 "
            + b":".join([b"ffff"] * 8) * 1
            + b" "
            + b":".join([b"ffff"] * 8)
            + b" 65535 65535\r\n",
            104,
        ),
        (b"PROXY UNKNOWN\r\n", 15),
        (
            b"PROXY UNKNOWN "
            + b":".join([b"ffff"] * 8)
            + b" "
            + b":".join([b"ffff"] * 8)
            + b" 65535 65535\r\n",
            107,
        ),
    ],
)
def test_v1_the_specification_longest_lines_are_accepted(line: bytes, length: int) -> None:
    assert len(line) == length
    answer = parse_header(line + b"x")
    assert (answer.consumed, answer.rest) == (length, b"x")


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    for line in (
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN \r\n",
        b"PROXY UNKNOWN anything \x00\xff at all\r\n",
    ):
        header = parse_header(line).header
        assert header == ProxyHeader("v1", "proxy", "unspec")
        assert header.source is None and header.family == socket.AF_UNSPEC


def test_v1_tcp6_addresses_come_back_in_canonical_form() -> None:
    line = b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:192.0.2.1 1 65535\r\n"
    header = parse_header(line).header
    assert header.transport == "tcp6" and header.family == socket.AF_INET6
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == (
        socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.1")),
        65535,
    )


def test_v1_a_line_without_crlf_in_107_bytes_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n"  # 108 bytes
    assert "no CRLF in the first 107 bytes" in refused(line)
    # And as soon as the CRLF can no longer fit: 106 bytes that do not end in CR.
    parser = ProxyHeaderParser()
    assert parser.feed(line[:105]) == NeedMore(2, 2)
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        parser.feed(line[105:106])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "neither 'P' (v1) nor 0x0d (v2)"),
        (b"PROXY\r\n", "byte 5 is b'\\r'"),
        (b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n", "byte 5 is b'T'"),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "first byte is 0x70"),
        (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol b' '"),
        (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol b't'"),
        (b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol b'UD'"),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol b'TCP5'"),
        (b"PROXY TCP\r\n", "ends inside its protocol name"),
        (b"PROXY UNKNOWNX\r\n", "b'X' after UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "a lone b'\\n'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX\r\n", "a lone b'\\r'"),
        (b"PROXY UNKNOWN \n\r\n", "a lone b'\\n'"),
        (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "5 fields after TCP4"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "5 fields after TCP4"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "3 fields after TCP4"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "5 fields after TCP4"),
        (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.256 1 2\r\n", "bad TCP4 destination address"),
        (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.4. 1.2.3.4 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", "unexpected byte b':' in a TCP4 line"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "bad source port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "bad destination port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 123456\r\n", "bad destination port"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "unexpected byte b'-'"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 \xd9\xa1 2\r\n", "unexpected byte b'\\xd9'"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n", "unexpected byte b'%'"),
        (b"PROXY TCP6 ::1 1::2::3 1 2\r\n", "bad TCP6 destination address"),
        (b"PROXY TCP6 ::1 12345:: 1 2\r\n", "bad TCP6 destination address"),
        (b"PROXY TCP6 ::1 1:2:3:4:5:6:7 1 2\r\n", "bad TCP6 destination address"),
        (b"PROXY TCP6 ::1 ::01.2.3.4 1 2\r\n", "bad TCP6 destination address"),
        (b"PROXY TCP6 ::g 1 2\r\n", "unexpected byte b'g'"),
    ],
)
def test_v1_malformed_lines_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    assert reason in refused(line)


@pytest.mark.parametrize(
    "text",
    [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:1.2.3.4",
        "::1.2.3.4",
        "1:0:0:2::3",
        "0:0:0:0:0:0:0:1",
        "ABCD:ef01::",
    ],
)
def test_v1_ipv6_accepts_every_rfc4291_text_form(text: str) -> None:
    line = f"PROXY TCP6 {text} ::1 1 2\r\n".encode()
    packed = socket.inet_pton(socket.AF_INET6, text)
    assert parse_header(line).header.source == (socket.inet_ntop(socket.AF_INET6, packed), 1)


@settings(max_examples=400)
@given(st.text(alphabet="0123456789abcdefABCDEF:.", max_size=45))
@example("1:2:3:4:5::1.2.3.4")
@example("1:2:3:4:5:6::1.2.3.4")
def test_v1_ipv6_syntax_is_exactly_what_ipaddress_accepts(text: str) -> None:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
        expected = True
    except ValueError:
        expected = False
    assert bool(_proxy_v1.IPV6_TEXT.fullmatch(text.encode())) == expected


# --- section 2.2: v2 --------------------------------------------------------------------


def test_v2_tcp4_is_decoded_and_the_next_bytes_are_left() -> None:
    header = v2(
        0x21,
        0x11,
        socket.inet_aton("192.168.0.1")
        + socket.inet_aton("192.168.0.11")
        + struct.pack("!HH", 56324, 443),
    )
    answer = parse_header(header + HTTP)
    assert answer.header == ProxyHeader(
        "v2", "proxy", "tcp4", ("192.168.0.1", 56324), ("192.168.0.11", 443)
    )
    assert (answer.consumed, answer.rest) == (28, HTTP)


def test_v2_tcp6_is_decoded_in_canonical_form() -> None:
    src, dst = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1"),
    )
    answer = parse_header(v2(0x21, 0x21, src + dst + struct.pack("!HH", 1, 2)))
    assert answer.header.source == ("2001:db8::1", 1)
    assert answer.header.destination == (socket.inet_ntop(socket.AF_INET6, dst), 2)
    assert answer.header.family == socket.AF_INET6 and answer.consumed == 52


def unix_field(path: bytes) -> bytes:
    return path.ljust(108, b"\0")


@pytest.mark.parametrize(
    ("field", "address"),
    [
        (unix_field(b"/run/app.sock"), "/run/app.sock"),
        (unix_field(b"/run/app.sock\0garbage after the NUL"), "/run/app.sock"),
        (unix_field(b""), ""),  # an unnamed socket, what a UNIX client usually is
        (unix_field(b"\0abstract"), b"\0abstract"),
        (b"/" * 108, "/" * 108),  # a full sun_path has no NUL
        (unix_field(b"/tmp/\xff"), os.fsdecode(b"/tmp/\xff")),
    ],
)
def test_v2_unix_addresses_are_given_as_python_would(field: bytes, address: str | bytes) -> None:
    header = parse_header(v2(0x21, 0x31, field + unix_field(b"/srv"))).header
    assert header.source == address and header.destination == "/srv"
    assert header.transport == "unix-stream" and header.family == socket.AF_UNIX


def test_v2_local_ignores_the_addresses_and_keeps_the_tlvs() -> None:
    # "Receivers MUST always consider this field to skip the appropriate number of bytes and
    # must not assume zero is presented for LOCAL connections."
    addresses = socket.inet_aton("1.2.3.4") * 2 + b"\0\1\0\2"
    header = parse_header(v2(0x20, 0x11, addresses + encode_tlvs([(0xE0, b"x")]))).header
    assert header == ProxyHeader("v2", "local", "tcp4", None, None, ((0xE0, b"x"),))
    assert parse_header(v2(0x20, 0x00, b"")).header == ProxyHeader("v2", "local", "unspec")


def test_v2_proxy_over_unspec_is_accepted_without_addresses() -> None:
    header = parse_header(v2(0x21, 0x00, encode_tlvs([(PP2_TYPE_ALPN, b"h2")]))).header
    assert header == ProxyHeader("v2", "proxy", "unspec", None, None, ((PP2_TYPE_ALPN, b"h2"),))


@pytest.mark.parametrize(
    ("byte", "transport", "size"),
    [(0x12, "udp4", 12), (0x22, "udp6", 36), (0x32, "unix-dgram", 216)],
)
def test_v2_datagram_transports_fall_back_to_unspec(byte: int, transport: str, size: int) -> None:
    header = parse_header(
        v2(0x21, byte, b"\1" * size + encode_tlvs([(PP2_TYPE_ALPN, b"q")]))
    ).header
    assert header == ProxyHeader("v2", "proxy", transport, None, None, ((PP2_TYPE_ALPN, b"q"),))  # type: ignore[arg-type]
    assert header.family == socket.AF_UNSPEC


@pytest.mark.parametrize("ver_cmd", [0x00, 0x01, 0x10, 0x11, 0x30, 0x31, 0xF1])
def test_v2_only_version_2_is_accepted(ver_cmd: int) -> None:
    assert f"version {ver_cmd >> 4}" in refused(v2(ver_cmd, 0x00, b""))


@pytest.mark.parametrize("command", range(2, 16))
def test_v2_unassigned_commands_are_refused(command: int) -> None:
    assert f"unknown command 0x{command:x}" in refused(v2(0x20 | command, 0x00, b""))


@pytest.mark.parametrize(
    "family", sorted(set(range(256)) - {0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})
)
def test_v2_only_the_seven_listed_family_bytes_are_accepted(family: int) -> None:
    for command in (0x20, 0x21):
        assert f"family and transport byte 0x{family:02x}" in refused(
            v2(command, family, bytes(216))
        )


@pytest.mark.parametrize(
    ("family", "size"), [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216), (0x32, 216)]
)
def test_v2_a_length_shorter_than_the_address_block_is_refused(family: int, size: int) -> None:
    for command in (0x20, 0x21):
        parser = ProxyHeaderParser()
        with pytest.raises(ProxyProtocolError, match=f"length {size - 1} is shorter"):
            parser.feed(v2(command, family, b"", length=size - 1))  # refused at byte 16


def test_v2_signature_is_checked_byte_by_byte() -> None:
    for i in range(12):
        bad = bytearray(v2(0x21, 0x00, b""))
        bad[i] ^= 0x40
        parser = ProxyHeaderParser("v2")
        if i:
            assert isinstance(parser.feed(bad[:i]), NeedMore)
        with pytest.raises(ProxyProtocolError, match=f"byte {i} is 0x{bad[i]:02x}"):
            parser.feed(bad[i : i + 1])


def test_each_version_alone_refuses_the_other() -> None:
    assert "byte 0 is 0x50" in refused(build_v1(), version="v2")
    assert "byte 0 is b'\\r'" in refused(build_v2(), version="v1")
    assert parse_header(build_v1(), "v1").header.version == "v1"
    assert parse_header(build_v2(), "v2").header.version == "v2"


# --- TLVs (2.2.1 to 2.2.8) ---------------------------------------------------------------


def test_tlvs_are_kept_in_order_and_noop_is_dropped() -> None:
    tlvs = [
        (0xE0, b"custom"),
        (PP2_TYPE_NOOP, b"pad"),
        (0xF0, b""),
        (0x99, b"unassigned"),
        (PP2_TYPE_NOOP, b""),
    ]
    header = parse_header(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs)).header
    assert header.tlvs == ((0xE0, b"custom"), (0xF0, b""), (0x99, b"unassigned"))
    assert header.tlv(0xF0) == b"" and header.tlv(PP2_TYPE_NOOP) is None


def test_registered_tlvs_are_decoded() -> None:
    ssl = ssl_tlv_value(
        client=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        verify=0,
        version="TLSv1.3",
        cn="clïent.example",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="RSA-SHA256",
        key_alg="RSA2048",
        group="secp256r1",
        sig_scheme="rsa_pss_rsae_sha256",
        client_cert=b"\x30\x82DER",
        sub_tlvs=[(0x2F, b"future")],
    )
    tlvs = [
        (PP2_TYPE_ALPN, b"h2"),
        (PP2_TYPE_AUTHORITY, "exämple.com".encode()),
        (PP2_TYPE_UNIQUE_ID, b"\x00id" * 42 + b"xx"),
        (PP2_TYPE_SSL, ssl),
        (PP2_TYPE_NETNS, b"blue"),
    ]
    header = parse_header(build_v2(("::1", 1), ("::2", 2), tlvs, crc32c=True)).header
    assert header.alpn == b"h2"
    assert header.authority == "exämple.com"
    assert header.unique_id is not None and len(header.unique_id) == 128
    assert header.netns == "blue"
    assert header.crc32c is not None
    info = header.ssl
    assert info is not None
    assert (info.client_ssl, info.client_cert_conn, info.client_cert_sess, info.verified) == (
        True,
        True,
        True,
        True,
    )
    assert (info.version, info.cn, info.cipher) == (
        "TLSv1.3",
        "clïent.example",
        "TLS_AES_128_GCM_SHA256",
    )
    assert (info.sig_alg, info.key_alg, info.group, info.sig_scheme) == (
        "RSA-SHA256",
        "RSA2048",
        "secp256r1",
        "rsa_pss_rsae_sha256",
    )
    assert info.client_cert == b"\x30\x82DER"
    assert info.tlvs[-1] == (0x2F, b"future")


def test_absent_tlvs_decode_to_none() -> None:
    header = parse_header(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2))).header
    assert (
        header.alpn,
        header.authority,
        header.crc32c,
        header.unique_id,
        header.ssl,
        header.netns,
    ) == (None,) * 6
    info = SSLInfo(0, 0)
    assert (
        info.version,
        info.cn,
        info.cipher,
        info.sig_alg,
        info.key_alg,
        info.group,
        info.sig_scheme,
        info.client_cert,
    ) == (None,) * 8


def test_ssl_verified_needs_a_certificate_not_only_a_zero_verify() -> None:
    # HAProxy leaves verify at 0 when the client sent no certificate.
    assert not SSLInfo(PP2_CLIENT_SSL, 0).verified
    assert not SSLInfo(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 18).verified
    assert SSLInfo(PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 0).verified


def test_a_repeated_tlv_type_is_kept_and_the_property_reads_the_first() -> None:
    header = parse_header(
        build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), [(1, b"h2"), (1, b"http/1.1")])
    ).header
    assert header.alpn == b"h2" and header.tlvs == ((1, b"h2"), (1, b"http/1.1"))


def tcp4_with(tlv_bytes: bytes) -> bytes:
    return v2(0x21, 0x11, bytes(12) + tlv_bytes)


@pytest.mark.parametrize(
    ("tlv_bytes", "reason"),
    [
        (b"\x01", "1 bytes left, fewer than a type and a length"),
        (b"\x01\x00", "2 bytes left"),
        (b"\x01\x00\x03ab", "TLV 0x01 at offset 28: its value runs 1 bytes past the end"),
        (encode_tlvs([(1, b"ok")]) + b"\xe0\x00", "TLV at offset 33"),
        (encode_tlvs([(PP2_TYPE_AUTHORITY, b"\xff")]), "authority TLV (0x02) is not utf-8"),
        (encode_tlvs([(PP2_TYPE_NETNS, "bleü".encode())]), "netns TLV (0x30) is not ascii"),
        (encode_tlvs([(PP2_TYPE_UNIQUE_ID, bytes(129))]), "129 bytes, more than 128"),
        (encode_tlvs([(PP2_TYPE_CRC32C, bytes(3))]), "CRC32C TLV (0x03) is 3 bytes, not 4"),
        (encode_tlvs([(PP2_TYPE_CRC32C, bytes(5))]), "CRC32C TLV (0x03) is 5 bytes, not 4"),
        (encode_tlvs([(PP2_TYPE_SSL, bytes(4))]), "SSL TLV (0x20) is 4 bytes"),
        (
            encode_tlvs([(PP2_TYPE_SSL, bytes(5) + b"\x21\x00\x05abc")]),
            "SSL sub-TLV 0x21 at offset 5",
        ),
        (encode_tlvs([(PP2_TYPE_SSL, bytes(5) + b"\x21\x00")]), "SSL sub-TLV at offset 5"),
        (
            encode_tlvs([(PP2_TYPE_SSL, bytes(5) + encode_tlvs([(0x21, b"\xc3\xa9")]))]),
            "SSL version sub-TLV (0x21) is not ascii",
        ),
        (
            encode_tlvs([(PP2_TYPE_SSL, bytes(5) + encode_tlvs([(0x22, b"\xff")]))]),
            "SSL CN sub-TLV (0x22) is not utf-8",
        ),
        (
            encode_tlvs([(PP2_TYPE_SSL, bytes(5) + encode_tlvs([(0x27, b"\x80")]))]),
            "SSL sig_scheme sub-TLV (0x27) is not ascii",
        ),
    ],
)
def test_malformed_tlvs_are_refused(tlv_bytes: bytes, reason: str) -> None:
    assert reason in refused(tcp4_with(tlv_bytes))


def test_unique_id_of_128_bytes_and_empty_values_are_accepted() -> None:
    tlvs = [(PP2_TYPE_UNIQUE_ID, bytes(128)), (PP2_TYPE_AUTHORITY, b""), (PP2_TYPE_SSL, bytes(5))]
    header = parse_header(tcp4_with(encode_tlvs(tlvs))).header
    assert header.unique_id == bytes(128) and header.authority == "" and header.ssl == SSLInfo(0, 0)


def test_a_hand_built_header_with_a_bad_value_raises_the_one_error_from_the_property() -> None:
    header = ProxyHeader("v2", "proxy", "unspec", tlvs=((PP2_TYPE_AUTHORITY, b"\xff"),))
    with pytest.raises(ProxyProtocolError):
        _ = header.authority


# --- CRC32C (2.2.3) -----------------------------------------------------------------------


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the usual check value
    # RFC 3720 (iSCSI), Appendix B.4.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"") == 0


def test_crc32c_table_is_haproxys() -> None:
    # The first entries of crctable[] in HAProxy's src/hash.c.
    assert crc32c_module._TABLE[:8] == (
        0x00000000,
        0xF26B8303,
        0xE13B70F7,
        0x1350F3F4,
        0xC79A971F,
        0x35F1141C,
        0x26A1E7E8,
        0xD4CA64EB,
    )


def crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@given(st.binary(max_size=300), st.binary(max_size=50))
def test_crc32c_matches_the_bitwise_definition_and_continues(first: bytes, second: bytes) -> None:
    assert crc32c(first) == crc32c_bitwise(first)
    assert crc32c(second, crc32c(first)) == crc32c(first + second)


def test_v2_checksum_is_verified() -> None:
    header = build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), [(PP2_TYPE_ALPN, b"h2")], crc32c=True)
    sent = int.from_bytes(header[-4:], "big")
    assert sent == crc32c(header[:-4] + bytes(4))  # network byte order, as HAProxy writes it
    assert parse_header(header).header.crc32c == sent
    for i in range(len(header)):  # any flipped bit after the fixed part breaks it
        if i < 16:
            continue
        bad = bytearray(header)
        bad[i] ^= 0x01
        with pytest.raises(ProxyProtocolError):
            parse_header(bytes(bad))
    bad = bytearray(header)
    bad[-1] ^= 0x80
    assert "CRC32C mismatch" in refused(bytes(bad))


def test_v2_checksum_covers_noops_and_tlvs_after_it() -> None:
    tlvs = [(PP2_TYPE_CRC32C, bytes(4)), (PP2_TYPE_NOOP, b"\0\0"), (PP2_TYPE_ALPN, b"h2")]
    header = bytearray(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs))
    header[31:35] = crc32c(header).to_bytes(4, "big")
    parsed = parse_header(bytes(header)).header
    assert parsed.tlvs == ((PP2_TYPE_CRC32C, bytes(header[31:35])), (PP2_TYPE_ALPN, b"h2"))
    header[38] ^= 1  # inside the NOOP: ignored when parsed, but still checksummed
    assert "CRC32C mismatch" in refused(bytes(header))


def test_two_checksums_are_refused() -> None:
    tlvs = [(PP2_TYPE_CRC32C, bytes(4)), (PP2_TYPE_CRC32C, bytes(4))]
    assert "two CRC32C TLVs" in refused(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs))


# --- the size bound -----------------------------------------------------------------------


def test_v2_a_header_over_the_bound_is_refused_at_its_16th_byte() -> None:
    parser = ProxyHeaderParser()
    fixed = v2(0x21, 0x00, b"", length=DEFAULT_MAX_V2_LENGTH - 16 + 1)
    assert parser.feed(fixed[:15]) == NeedMore(1, DEFAULT_MAX_V2_LENGTH - 15)
    with pytest.raises(ProxyProtocolError, match="4097 bytes, more than the 4096 allowed"):
        parser.feed(fixed[15:])


def test_v2_a_header_at_the_bound_is_accepted() -> None:
    body = encode_tlvs([(0xE0, bytes(DEFAULT_MAX_V2_LENGTH - 16 - 3))])
    assert parse_header(v2(0x21, 0x00, body)).consumed == DEFAULT_MAX_V2_LENGTH


@pytest.mark.parametrize("bound", [16, 28, 100, 65551])
def test_v2_the_bound_is_configurable(bound: int) -> None:
    longest = v2(0x20, 0x00, bytes(bound - 16)) if bound > 16 else v2(0x20, 0x00, b"")
    if bound > 18:
        longest = v2(0x20, 0x00, encode_tlvs([(0xE0, bytes(bound - 19))]))
    assert parse_header(longest, max_v2_length=bound).consumed == len(longest) <= bound
    if bound < 65551:
        assert "allowed" in refused(v2(0x20, 0x00, b"", length=bound - 15), max_v2_length=bound)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"version": "v3"}, ValueError),
        ({"max_v2_length": 15}, ValueError),
        ({"max_v2_length": 65552}, ValueError),
        ({"max_v2_length": 4096.0}, TypeError),
        ({"max_v2_length": True}, TypeError),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        ProxyHeaderParser(**kwargs)  # type: ignore[arg-type]


# --- the parser: feeding, NeedMore, after the end -----------------------------------------


def test_need_more_counts() -> None:
    assert ProxyHeaderParser().feed(b"") == NeedMore(15, DEFAULT_MAX_V2_LENGTH)
    assert ProxyHeaderParser("v1").feed(b"") == NeedMore(15, 107)
    assert ProxyHeaderParser("v2").feed(b"") == NeedMore(16, DEFAULT_MAX_V2_LENGTH)
    assert ProxyHeaderParser("auto", max_v2_length=50).feed(b"") == NeedMore(15, 107)
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY") == NeedMore(10, 102)
    assert parser.feed(b" TCP4 1.2.3.4 1.2.3.4 1 2") == NeedMore(2, 77)
    assert parser.feed(b"\r") == NeedMore(1, 76)
    header = build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), [(0xE0, b"abc")])
    parser = ProxyHeaderParser()
    assert parser.feed(header[:10]) == NeedMore(6, DEFAULT_MAX_V2_LENGTH - 10)
    assert parser.feed(header[10:16]) == NeedMore(18, 18)
    assert parser.feed(header[16:33]) == NeedMore(1, 1)
    assert isinstance(parser.feed(header[33:]), Parsed)


def test_after_the_header_every_byte_is_the_applications() -> None:
    parser = ProxyHeaderParser()
    first = parser.feed(build_v1() + b"ab")
    assert isinstance(first, Parsed) and first.rest == b"ab"
    assert parser.feed(b"PROXY TCP4 ...") == Parsed(first.header, 15, b"PROXY TCP4 ...")
    assert parser.feed_eof() == Parsed(first.header, 15, b"")


def test_after_an_error_the_parser_keeps_failing_the_same_way() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError) as first:
        parser.feed(b"SSH-2.0")
    for more in (b"PROXY UNKNOWN\r\n", b"", b"\r\n"):
        with pytest.raises(ProxyProtocolError) as again:
            parser.feed(more)
        assert str(again.value) == str(first.value)
    with pytest.raises(ProxyProtocolError) as at_eof:
        parser.feed_eof()
    assert str(at_eof.value) == str(first.value)


def test_the_end_of_the_stream_inside_a_header_is_an_error() -> None:
    with pytest.raises(ProxyProtocolError, match="ended before a PROXY header"):
        ProxyHeaderParser().feed_eof()
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY TCP4 1.2")
    with pytest.raises(ProxyProtocolError, match="ended after 14 bytes of a PROXY header"):
        parser.feed_eof()
    with pytest.raises(ProxyProtocolError, match="ended after 20 bytes"):
        parse_header(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2))[:20])


def test_bytearray_and_memoryview_are_fed_like_bytes() -> None:
    data = build_v2(("1.1.1.1", 1), ("2.2.2.2", 2)) + b"rest"
    for kind in (bytearray, memoryview):
        answer = parse_header(kind(data))  # type: ignore[operator]
        assert answer.rest == b"rest" and type(answer.rest) is bytes


def test_reading_at_least_bytes_at_a_time_never_takes_application_data() -> None:
    for header in (
        build_v1(("1.2.3.4", 5), ("6.7.8.9", 10)),
        build_v1(),
        build_v2(("::1", 1), ("::2", 2), [(1, b"h2")]),
    ):
        stream, position = header + b"APPLICATION", 0
        parser = ProxyHeaderParser()
        answer = parser.feed(b"")
        while isinstance(answer, NeedMore):
            piece = stream[position : position + answer.at_least]
            position += len(piece)
            answer = parser.feed(piece)
        assert answer.rest == b"" and answer.consumed == len(header)


def test_the_state_table_is_closed() -> None:
    states = set(proxy._TRANSITIONS)
    for moves in proxy._TRANSITIONS.values():
        assert set(moves.values()) <= states
    assert set(proxy._INITIAL.values()) <= states
    terminal = {state for state, moves in proxy._TRANSITIONS.items() if not moves}
    assert terminal == {proxy._DONE, proxy._FAILED}
    for state in states - terminal:  # every live state can fail
        assert proxy._TRANSITIONS[state][proxy._MALFORMED] == proxy._FAILED
    reachable, frontier = set(proxy._INITIAL.values()), list(proxy._INITIAL.values())
    while frontier:
        for following in proxy._TRANSITIONS[frontier.pop()].values():
            if following not in reachable:
                reachable.add(following)
                frontier.append(following)
    assert reachable == states


# --- what a real HAProxy sends -------------------------------------------------------------

# Recorded by tests/capture_haproxy_proxy_headers.py (which says how) from HAProxy 2.6.
HAPROXY = json.loads(Path(__file__).with_name("haproxy_proxy_headers.json").read_text())


@pytest.mark.parametrize("record", HAPROXY["records"], ids=lambda record: record["name"][:40])
def test_haproxy_headers_parse_to_the_connection_haproxy_saw(record: dict[str, Any]) -> None:
    data = bytes.fromhex(record["received"])
    outcome = feed_pieces(data)
    assert outcome == feed_pieces(data, range(len(data)))
    kind, header, consumed, rest = outcome
    assert kind == "parsed" and isinstance(header, ProxyHeader)
    if record["client"] is None:  # the health check: LOCAL, nothing after it
        assert header == ProxyHeader("v2", "local", "unspec") and rest == b""
        return
    assert header.command == "proxy"
    assert header.source == tuple(record["client"])
    assert header.destination == tuple(record["frontend"])
    assert rest == record["marker"].encode()


def test_haproxy_tls_header_carries_every_option() -> None:
    (record,) = (r for r in HAPROXY["records"] if "TLS" in r["name"])
    header = parse_header(bytes.fromhex(record["received"])).header
    assert header.crc32c is not None  # and it was verified
    assert header.alpn == b"h2" and header.authority == "millpond.test"
    assert header.unique_id is not None and header.unique_id.startswith(b"7F000007:")
    info = header.ssl
    assert info is not None and info.client_ssl and info.client_cert_conn and info.verified
    assert (info.version, info.cn) == ("TLSv1.3", "client.example")
    assert info.cipher is not None and info.cipher.startswith("TLS_")
    assert (info.sig_alg, info.key_alg) == ("ecdsa-with-SHA256", "EC256")


# --- the builder --------------------------------------------------------------------------


def test_build_v1_writes_the_specification_line() -> None:
    assert (
        build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert (
        build_v1(("2001:DB8::1", 1, 0, 0), ("::1", 2, 0, 0))
        == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    )
    assert build_v1() == b"PROXY UNKNOWN\r\n"


def test_build_v2_local_is_haproxys_health_check_header() -> None:
    assert build_v2() == SIGNATURE + b"\x20\x00\x00\x00"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: build_v1(("1.1.1.1", 1), None), ValueError, "both"),
        (lambda: build_v1(("1.1.1.1", 1), ("::1", 1)), ValueError, "one family"),
        (lambda: build_v1("/a", "/b"), ValueError, "UNIX"),
        (lambda: build_v1(("1.1.1.1", 65536), ("1.1.1.1", 1)), ValueError, "source's port"),
        (lambda: build_v1(("example.com", 1), ("1.1.1.1", 1)), ValueError, "source's host"),
        (lambda: build_v1(("1.1.1.1",), ("1.1.1.1", 1)), TypeError, "source"),  # type: ignore[arg-type]
        (
            lambda: build_v2(("1.1.1.1", 1), ("1.1.1.1", 1), transport="tcp6"),
            ValueError,
            "does not match",
        ),
        (lambda: build_v2(transport="udp4"), ValueError, "does not match"),
        (lambda: build_v2(transport="sctp"), ValueError, "transport"),  # type: ignore[arg-type]
        (lambda: build_v2(command="relay"), ValueError, "command"),  # type: ignore[arg-type]
        (lambda: build_v2("/" * 109, "/b"), ValueError, "109 bytes"),
        (lambda: build_v2("/a\0b", "/b"), ValueError, "NUL"),
        (lambda: build_v2(tlvs=[(256, b"")]), ValueError, "TLV type"),
        (lambda: build_v2(tlvs=[(1, "h2")]), TypeError, "bytes"),  # type: ignore[list-item]
        (lambda: build_v2(tlvs=[(0xE0, bytes(65536))]), ValueError, "65535"),
        (lambda: build_v2(tlvs=[(0xE0, bytes(40000))] * 2), ValueError, "over 65535"),
        (lambda: build_v2(tlvs=[(3, bytes(4))], crc32c=True), ValueError, "one or the other"),
        (lambda: ssl_tlv_value(client=256), ValueError, "client"),
        (lambda: ssl_tlv_value(client=0, verify=-1), ValueError, "verify"),
    ],
)
def test_the_builder_refuses_bad_arguments(
    call: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


# --- hypothesis: round trips --------------------------------------------------------------

ipv4 = st.binary(min_size=4, max_size=4).map(socket.inet_ntoa)
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ports = st.integers(0, 0xFFFF)
unix_paths = st.one_of(
    st.just(""),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1).filter(
        lambda s: len(os.fsencode(s)) <= 108
    ),
    st.binary(min_size=1, max_size=107)
    .map(lambda b: b"\0" + b.rstrip(b"\0"))
    .filter(lambda b: len(b) > 1),
)
ascii_text = st.text(st.characters(max_codepoint=127), max_size=30)
utf8_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
ssl_values = st.builds(
    ssl_tlv_value,
    client=st.integers(0, 255),
    verify=st.integers(0, 0xFFFFFFFF),
    version=st.none() | ascii_text,
    cn=st.none() | utf8_text,
    cipher=st.none() | ascii_text,
    sig_alg=st.none() | ascii_text,
    key_alg=st.none() | ascii_text,
    group=st.none() | ascii_text,
    sig_scheme=st.none() | ascii_text,
    client_cert=st.none() | st.binary(max_size=64),
    sub_tlvs=st.lists(st.tuples(st.integers(0x29, 0xFF), st.binary(max_size=16)), max_size=2),
)
RULED = {
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_UNIQUE_ID,
    PP2_TYPE_SSL,
    PP2_TYPE_NETNS,
}
tlv_pairs = st.one_of(
    st.tuples(st.integers(0, 255).filter(lambda t: t not in RULED), st.binary(max_size=40)),
    st.tuples(st.just(PP2_TYPE_AUTHORITY), utf8_text.map(str.encode)),
    st.tuples(st.just(PP2_TYPE_UNIQUE_ID), st.binary(max_size=128)),
    st.tuples(st.just(PP2_TYPE_SSL), ssl_values),
    st.tuples(st.just(PP2_TYPE_NETNS), ascii_text.map(str.encode)),
    st.tuples(st.just(PP2_TYPE_NOOP), st.binary(max_size=8)),
)
DECODED = {"tcp4", "tcp6", "unix-stream"}


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A v2 header built from random values, and the header the parser must return."""
    transport = draw(
        st.sampled_from(["unspec", "tcp4", "udp4", "tcp6", "udp6", "unix-stream", "unix-dgram"])
    )
    command = draw(st.sampled_from(["proxy", "local"]))
    if transport == "unspec":
        source = destination = None
    elif transport.endswith("4"):
        source, destination = (draw(ipv4), draw(ports)), (draw(ipv4), draw(ports))
    elif transport.endswith("6"):
        source, destination = (draw(ipv6), draw(ports)), (draw(ipv6), draw(ports))
    else:
        source, destination = draw(unix_paths), draw(unix_paths)
    tlvs = draw(st.lists(tlv_pairs, max_size=6))
    with_crc = draw(st.booleans())
    data = build_v2(
        source, destination, tlvs, command=command, transport=transport, crc32c=with_crc
    )  # type: ignore[arg-type]
    kept = [pair for pair in tlvs if pair[0] != PP2_TYPE_NOOP]
    if with_crc:
        kept.append((PP2_TYPE_CRC32C, crc32c(data[:-4] + bytes(4)).to_bytes(4, "big")))
    decoded = command == "proxy" and transport in DECODED
    expected = ProxyHeader(
        "v2",
        command,
        transport,
        source if decoded else None,
        destination if decoded else None,
        tuple(kept),  # type: ignore[arg-type]
    )
    return data, expected


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A v1 line built from random values, and the header the parser must return."""
    kind = draw(st.sampled_from(["tcp4", "tcp6", "unknown"]))
    if kind == "unknown":
        junk = draw(
            st.none()
            | st.binary(max_size=107 - 16).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
        )
        return b"PROXY UNKNOWN" + (b"" if junk is None else b" " + junk) + b"\r\n", ProxyHeader(
            "v1", "proxy", "unspec"
        )
    hosts = ipv4 if kind == "tcp4" else ipv6
    source, destination = (draw(hosts), draw(ports)), (draw(hosts), draw(ports))
    return build_v1(source, destination), ProxyHeader("v1", "proxy", kind, source, destination)  # type: ignore[arg-type]


any_header = st.one_of(v1_headers(), v2_headers())
cut_points = st.lists(st.integers(0, 5000), max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_header, st.binary(max_size=40), cut_points, st.sampled_from(["auto", "own"]))
def test_round_trip_any_split(
    built: tuple[bytes, ProxyHeader], trailing: bytes, cuts: list[int], mode: str
) -> None:
    data, expected = built
    version = mode if mode == "auto" else expected.version
    assert len(data) <= (107 if expected.version == "v1" else DEFAULT_MAX_V2_LENGTH)
    outcome = feed_pieces(data + trailing, cuts, version=version)
    assert outcome == ("parsed", expected, len(data), trailing)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(any_header, cut_points)
def test_need_more_bounds_hold_at_every_split(
    built: tuple[bytes, ProxyHeader], cuts: list[int]
) -> None:
    data, _ = built
    parser = ProxyHeaderParser()
    position = 0
    for cut in sorted(set(c % len(data) for c in cuts if c % len(data))):
        answer = parser.feed(data[position:cut])
        position = cut
        assert isinstance(answer, NeedMore)
        assert answer.at_least <= len(data) - position <= answer.at_most
    assert isinstance(parser.feed(data[position:]), Parsed)


# --- hypothesis: any input ----------------------------------------------------------------


def check_any_input(data: bytes, cuts: list[int], version: str, bound: int) -> None:
    """Any bytes end in a header, NeedMore or ProxyProtocolError, the same for any split; an
    error repeats; a header leaves the rest of the bytes untouched."""
    whole = feed_pieces(data, version=version, max_v2_length=bound)
    assert whole[0] in ("parsed", "need", "error")
    assert feed_pieces(data, cuts, version=version, max_v2_length=bound) == whole
    assert feed_pieces(data, range(len(data)), version=version, max_v2_length=bound) == whole
    if whole[0] == "parsed":
        _, header, consumed, rest = whole
        assert isinstance(header, ProxyHeader) and isinstance(consumed, int)
        assert rest == data[consumed:]
        assert consumed <= (107 if header.version == "v1" else bound)
        for name in ("family", "alpn", "authority", "crc32c", "unique_id", "ssl", "netns"):
            getattr(header, name)  # never raise for a parsed header
    elif whole[0] == "need":
        need = whole[1]
        assert isinstance(need, NeedMore) and 1 <= need.at_least <= need.at_most
    else:
        parser = ProxyHeaderParser(version, max_v2_length=bound)  # type: ignore[arg-type]
        with pytest.raises(ProxyProtocolError):
            parser.feed(data)
        for more in (data, b"\r\n", b""):
            with pytest.raises(ProxyProtocolError) as again:
                parser.feed(more)
            assert str(again.value) == whole[1]
        with pytest.raises(ProxyProtocolError) as at_eof:
            parser.feed_eof()
        assert str(at_eof.value) == whole[1]


versions = st.sampled_from(["auto", "v1", "v2"])
bounds = st.sampled_from([DEFAULT_MAX_V2_LENGTH, 16, 40, 300])


@settings(max_examples=300)
@given(st.binary(max_size=300), cut_points, versions, bounds)
def test_random_bytes(data: bytes, cuts: list[int], version: str, bound: int) -> None:
    check_any_input(data, cuts, version, bound)


@settings(max_examples=300)
@given(
    st.sampled_from(
        [b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIGNATURE + b"\x21"]
    ),
    st.binary(max_size=200),
    cut_points,
    versions,
)
def test_random_bytes_after_a_valid_start(
    start: bytes, data: bytes, cuts: list[int], version: str
) -> None:
    check_any_input(start + data, cuts, version, DEFAULT_MAX_V2_LENGTH)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(any_header)[0] + draw(st.binary(max_size=8)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        byte = (
            draw(st.sampled_from([0, 0x0A, 0x0D, 0x20, 0x3A, 0x2E, 0xFF]))
            if draw(st.booleans())
            else draw(st.integers(0, 255))
        )
        if action == "insert":
            data.insert(position, byte)
        elif position == len(data):
            continue
        elif action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = byte
        elif action == "delete":
            del data[position]
        else:
            del data[position:]
    return bytes(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), cut_points, versions, bounds)
def test_mutated_headers(data: bytes, cuts: list[int], version: str, bound: int) -> None:
    check_any_input(data, cuts, version, bound)
