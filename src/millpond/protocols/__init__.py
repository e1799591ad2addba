"""Sans-I/O protocol parsers: bytes in, values or errors out, with no sockets and no Trio.

The PROXY protocol (HAProxy's ``doc/proxy-protocol.txt``), which load balancers use to tell a
server who the client is: :class:`ProxyHeaderParser` reads v1 and v2 headers as the bytes
arrive, :func:`build_v1` and :func:`build_v2` write them. See ``docs/proxy-protocol.md``.

Nothing in this package imports the rest of millpond; the server wraps the I/O around it.
"""

from .proxy import (
    DEFAULT_MAX_V2_LENGTH,
    NeedMore,
    Parsed,
    ProxyHeaderParser,
    parse_header,
)
from .proxy_build import build_v1, build_v2, ssl_tlv_value
from .proxy_header import ProxyHeader, ProxyProtocolError, SSLInfo

__all__ = [
    "DEFAULT_MAX_V2_LENGTH",
    "NeedMore",
    "Parsed",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "SSLInfo",
    "build_v1",
    "build_v2",
    "parse_header",
    "ssl_tlv_value",
]
