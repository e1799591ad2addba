"""Record the PROXY headers a real HAProxy sends, for tests/test_proxy_protocol.py.

Run by hand (``python tests/capture_haproxy_proxy_headers.py``) where ``haproxy`` is on
PATH; it rewrites ``tests/haproxy_proxy_headers.json``. The test suite only reads that file,
so it needs no HAProxy. Each record is what one backend connection received before the
client's marker: the header HAProxy built, and the client's and HAProxy's view of the
connection to compare with what the parser returns.

Frontends on loopback, each with a backend that is this script's recorder:

* ``send-proxy`` (v1) and ``send-proxy-v2``, over IPv4 and IPv6, the client bound to a chosen
  source address;
* TLS terminated by HAProxy, with a client certificate, SNI and ALPN, and
  ``proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id``;
* a health check with ``check-send-proxy`` (a LOCAL header).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme

MARKER = b"MILLPOND-MARKER"
OUTPUT = Path(__file__).with_name("haproxy_proxy_headers.json")


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Recorder:
    """A TCP server that keeps the bytes each connection sent, until the marker or EOF."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(5)
        try:
            while MARKER not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        conn.close()
        self.received.append(data)

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received[:count]


def main() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        sys.exit("haproxy is not on PATH")
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    work = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    server_cert = ca.issue_cert("millpond.test")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(work / "server.pem"))
    client_cert = ca.issue_cert("client.example", common_name="client.example")

    recorder = Recorder()
    ports = {name: free_port() for name in ("v1", "v2", "tls")}
    ports6 = {name: free_port(socket.AF_INET6, "::1") for name in ("v1-6", "v2-6")}
    check_recorder = Recorder()
    backend = f"127.0.0.1:{recorder.port}"
    tls_bind = (
        f"ssl crt {work / 'server.pem'} ca-file {work / 'ca.pem'} verify optional alpn h2,http/1.1"
    )
    tls_options = "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id"
    config = f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend v1
    bind 127.0.0.1:{ports["v1"]}
    default_backend send_v1
frontend v1_6
    bind [::1]:{ports6["v1-6"]}
    default_backend send_v1
frontend v2
    bind 127.0.0.1:{ports["v2"]}
    default_backend send_v2
frontend v2_6
    bind [::1]:{ports6["v2-6"]}
    default_backend send_v2
frontend tls
    bind 127.0.0.1:{ports["tls"]} {tls_bind}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt
    default_backend send_v2_tls
backend send_v1
    server recorder {backend} send-proxy
backend send_v2
    server recorder {backend} send-proxy-v2
backend send_v2_tls
    server recorder {backend} send-proxy-v2 proxy-v2-options {tls_options}
backend health
    server recorder 127.0.0.1:{check_recorder.port} send-proxy-v2 check check-send-proxy inter 300
"""
    (work / "haproxy.cfg").write_text(config)
    process = subprocess.Popen([haproxy, "-f", str(work / "haproxy.cfg"), "-db"])
    time.sleep(1)
    records = []
    try:
        cases = [
            ("send-proxy, IPv4", socket.AF_INET, "127.0.0.5", ports["v1"], None),
            ("send-proxy, IPv6", socket.AF_INET6, "::1", ports6["v1-6"], None),
            ("send-proxy-v2, IPv4", socket.AF_INET, "127.0.0.6", ports["v2"], None),
            ("send-proxy-v2, IPv6", socket.AF_INET6, "::1", ports6["v2-6"], None),
            (
                f"send-proxy-v2 over TLS, proxy-v2-options {tls_options}",
                socket.AF_INET,
                "127.0.0.7",
                ports["tls"],
                "tls",
            ),
        ]
        for index, (name, family, source, port, tls) in enumerate(cases):
            host = "127.0.0.1" if family == socket.AF_INET else "::1"
            raw = socket.socket(family)
            raw.bind((source, 0))
            raw.connect((host, port))
            client_address = raw.getsockname()[:2]
            sock: socket.socket = raw
            if tls:
                context = ssl.create_default_context()
                ca.configure_trust(context)
                client_cert.configure_cert(context)
                context.set_alpn_protocols(["h2"])
                sock = context.wrap_socket(raw, server_hostname="millpond.test")
            sock.sendall(MARKER)
            received = recorder.wait_for(index + 1)[index]
            sock.close()
            records.append(
                {
                    "name": name,
                    "client": list(client_address),
                    "frontend": [host, port],
                    "received": received.hex(),
                    "marker": MARKER.decode(),
                }
            )
        checks = check_recorder.wait_for(1)
        records.append(
            {
                "name": "health check, check-send-proxy with send-proxy-v2",
                "client": None,
                "frontend": None,
                "received": checks[0].hex(),
                "marker": None,
            }
        )
    finally:
        process.terminate()
        process.wait()
    OUTPUT.write_text(json.dumps({"haproxy": version, "records": records}, indent=1) + "\n")
    print(f"{len(records)} headers from {version} written to {OUTPUT}")


if __name__ == "__main__":
    main()
