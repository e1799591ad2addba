"""The PROXY protocol's v1 header: one line of text (``doc/proxy-protocol.txt``, section 2.1).

This module owns the line's grammar: the checks the parser (``proxy.py``) runs on the part of
a line received so far, and the decoding of a complete line into a
:class:`~millpond.protocols.proxy_header.ProxyHeader`. No state, no I/O.
"""

from __future__ import annotations

import re
import socket
from typing import Final

from .proxy_header import ProxyHeader, ProxyProtocolError

# Section 2.1: the worst-case line, "PROXY UNKNOWN" and two full IPv6 addresses and ports, is
# 107 bytes with its CRLF; "If the CRLF sequence is not found in the first 107 characters, the
# receiver should declare the line invalid."
MAX_LENGTH: Final = 107
# The shortest line, "PROXY UNKNOWN\r\n".
MIN_LENGTH: Final = 15

SIGNATURE: Final = b"PROXY "
_FAMILIES: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
# After "PROXY TCP4 " / "PROXY TCP6 ": the first byte that cannot be part of the addresses,
# ports and single spaces (a v6 address may end in a dotted IPv4 part, see _ipv6).
_STRAY: Final = {
    b"TCP4 ": re.compile(rb"[^0-9. ]"),
    b"TCP6 ": re.compile(rb"[^0-9A-Fa-f:. ]"),
}
# "exactly 4 integers in the range [0..255] ... Heading zeroes are not permitted".
_IPV4: Final = re.compile(
    rb"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")


def _mismatch(got: bytes, want: bytes) -> int:
    """The first index where ``got`` differs from ``want`` (``got`` is no longer than it)."""
    return next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)


def check_signature(start: bytes) -> None:
    """Refuse the first bytes received (up to 6, CR and LF included) unless they start "PROXY "."""
    if start != SIGNATURE[: len(start)]:
        i = _mismatch(start, SIGNATURE)
        raise ProxyProtocolError(
            f"not a PROXY v1 line: byte {i} is {start[i : i + 1]!r}, expected "
            f"{SIGNATURE[i : i + 1]!r} of 'PROXY '"
        )


def check_prefix(line: bytes, complete: bool) -> None:
    """Refuse a v1 line, or the part of one received so far, at its first bad byte.

    ``line`` excludes the CRLF (``complete``) or a trailing CR still waiting for its LF. The
    checks go left to right, so the first error is the same whatever the split.
    """
    if len(line) < 6:  # the line so far is a prefix of "PROXY " (check_signature)
        return
    rest = line[6:]
    for family in _FAMILIES:
        known = min(len(rest), len(family))
        if rest[:known] == family[:known]:
            break
    else:
        i = max(
            next((i for i, (a, b) in enumerate(zip(rest, f, strict=False)) if a != b), len(f))
            for f in _FAMILIES
        )
        raise ProxyProtocolError(
            f"v1: unknown protocol {rest[: i + 1]!r}..., expected TCP4, TCP6 or UNKNOWN"
        )
    if len(rest) < len(family):
        if complete:
            raise ProxyProtocolError("v1: the line ends inside its protocol name")
        return
    tail = rest[len(family) :]
    if family == b"UNKNOWN":
        # "the rest of the line before the CRLF may be omitted by the sender, and the receiver
        # must ignore anything presented before the CRLF is found": a space, then anything but
        # a lone CR or LF (the line ends at its first CRLF).
        if tail[:1] not in (b"", b" "):
            raise ProxyProtocolError(f"v1: {tail[:1]!r} after UNKNOWN, expected ' ' or CRLF")
        stray = re.search(rb"[\r\n]", tail)
    else:
        stray = _STRAY[family].search(tail)
    if stray is not None:
        byte = stray.group()
        if byte in (b"\r", b"\n"):
            # "The receiver must not tolerate a single CR or LF character to end the line".
            raise ProxyProtocolError(f"v1: a lone {byte!r} in the line, which must end in CRLF")
        raise ProxyProtocolError(f"v1: unexpected byte {byte!r} in a {family[:4].decode()} line")


def _ipv6_syntax() -> re.Pattern[bytes]:
    # RFC 3986's IPv6address, the text forms of RFC 4291 section 2.2, one alternative per line
    # of its ABNF: n groups before "::" (n = 0 to 6) and what may follow. ls32 is the last 32
    # bits, two groups or a dotted IPv4 address.
    h16 = "[0-9A-Fa-f]{1,4}"
    ls32 = f"(?:{h16}:{h16}|{_IPV4.pattern.decode()})"
    forms = [f"(?:{h16}:){{6}}{ls32}", f"::(?:{h16}:){{5}}{ls32}"]
    after = [f"(?:{h16}:){{4}}{ls32}", f"(?:{h16}:){{3}}{ls32}", f"(?:{h16}:){{2}}{ls32}"]
    after += [f"{h16}:{ls32}", ls32, h16, ""]
    for n, rest in enumerate(after):
        forms.append(f"(?:(?:{h16}:){{0,{n}}}{h16})?::{rest}")
    return re.compile("|".join(f"(?:{form})" for form in forms).encode())


# Section 2.1: "series of sets of 4 hexadecimal digits ... delimited by colons ... with the
# acceptance of one double colon sequence ... The total number of decoded bits must exactly be
# 128." Read as RFC 4291's text forms: groups of 1 to 4 digits are accepted (senders use
# inet_ntop, which drops leading zeroes), and so is a dotted IPv4 last part, which inet_ntop
# writes for ::ffff:a.b.c.d (HAProxy sends TCP6 with such addresses when one side is IPv4). The
# "::" need not stand for the longest run of zeroes. A zone ("%eth0") is refused.
IPV6_TEXT: Final = _ipv6_syntax()


def _address(family: bytes, text: bytes, what: str) -> str:
    if family == b"TCP4 ":
        if _IPV4.fullmatch(text):
            return text.decode()  # the strict syntax is already canonical
    elif IPV6_TEXT.fullmatch(text):
        # The syntax is checked above, portably; inet_pton only turns it into 128 bits, and
        # inet_ntop writes them as getpeername() would.
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text.decode()))
    raise ProxyProtocolError(f"v1: bad {family[:4].decode()} {what} address {text[:40]!r}")


def _port(text: bytes, what: str) -> int:
    if _PORT.fullmatch(text) and int(text) <= 0xFFFF:
        return int(text)
    raise ProxyProtocolError(f"v1: bad {what} port {text[:8]!r}")


def decode(line: bytes) -> ProxyHeader:
    """The header of a complete line (without its CRLF) whose prefix checks passed."""
    family = line[6:11]
    if family not in _STRAY:
        # UNKNOWN: "the receiver ... SHOULD accept the connection and use the real connection's
        # parameters as if there were no PROXY protocol header on the wire".
        return ProxyHeader("v1", "proxy", "unspec")
    fields = line[11:].split(b" ")
    if len(fields) != 4:
        raise ProxyProtocolError(
            f"v1: {len(fields)} fields after {family[:4].decode()}, expected 4 separated by "
            "single spaces (source and destination addresses, source and destination ports)"
        )
    source = (_address(family, fields[0], "source"), _port(fields[2], "source"))
    destination = (
        _address(family, fields[1], "destination"),
        _port(fields[3], "destination"),
    )
    return ProxyHeader("v1", "proxy", "tcp4" if family == b"TCP4 " else "tcp6", source, destination)
