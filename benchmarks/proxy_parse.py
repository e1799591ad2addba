"""What parsing a PROXY protocol header costs: one ``ProxyHeaderParser().feed()`` per header.

    PYTHONPATH=src python benchmarks/proxy_parse.py [--number 20000] [--repeat 7]

Each case is a header followed by the client's first bytes, fed in one piece, as a server
sees it when the header arrives in the same segment as the request; the parser is created
anew each time, as a server does per connection. Best of ``--repeat`` runs of ``--number``
parses (timeit). A line of reference costs (an empty call, ``bytes(16)``) comes first, to
compare figures taken on machines of different speed or load.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from collections.abc import Callable

from millpond.protocols import ProxyHeaderParser, build_v1, build_v2, ssl_tlv_value

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

# HAProxy's send-proxy-v2 with proxy-v2-options ssl,ssl-cipher,authority,unique-id over TLS.
TLS_TLVS = [
    (0x01, b"h2"),
    (0x02, b"example.com"),
    (0x05, b"7F000007:A781_7F000001:9193_6B0C8B92_0004"),
    (0x20, ssl_tlv_value(client=1, version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")),
]
CASES = {
    "v2 TCP4, no TLV (send-proxy-v2)": build_v2(("192.0.2.1", 51234), ("198.51.100.7", 443)),
    "v2 TCP6 + ALPN, authority, unique id, SSL": build_v2(
        ("2001:db8::1", 51234), ("2001:db8::7", 443), TLS_TLVS
    ),
    "v2 TCP6 + the same TLVs + CRC32C": build_v2(
        ("2001:db8::1", 51234), ("2001:db8::7", 443), TLS_TLVS, crc32c=True
    ),
    "v1 TCP4 (send-proxy)": build_v1(("192.0.2.1", 51234), ("198.51.100.7", 443)),
    "v1 TCP6": build_v1(("2001:db8::1", 51234), ("2001:db8::7", 443)),
}


def best(call: Callable[[], object], number: int, repeat: int) -> float:
    """Seconds per call, the best of ``repeat`` runs."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--number", type=int, default=20000)
    options.add_argument("--repeat", type=int, default=7)
    args = options.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Python {sys.version.split()[0]}, load average {load:.2f}, {os.cpu_count()} CPUs")
    empty = best(lambda: None, args.number, args.repeat)
    small = best(lambda: bytes(16), args.number, args.repeat)
    print(f"reference: empty call {empty * 1e9:.0f} ns, bytes(16) {small * 1e9:.0f} ns")
    for name, header in CASES.items():
        data = header + REQUEST

        def parse(data: bytes = data) -> None:
            ProxyHeaderParser().feed(data)

        cost = best(parse, args.number, args.repeat)
        print(f"{name:45} {len(header):4} B  {cost * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
