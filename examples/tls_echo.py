"""A TLS echo server, with a certificate made at start for local use.

Run it with ``python examples/tls_echo.py --port 7002``. With no certificate
given, it makes a throwaway certificate authority (``trustme``), issues a
certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (and ``--host``),
and writes the authority's certificate to ``--ca-file`` so that a client can
trust it::

    openssl s_client -connect 127.0.0.1:7002 -CAfile /tmp/millpond-tls-echo-ca.pem

Every line typed there comes back. With ``--cert-file`` and ``--key-file``
it serves a real certificate instead. millpond does the TLS: ``ssl_context``
on the server wraps each connection in ``trio.SSLStream`` and bounds its
handshake (``handshake_timeout``), so the handler is the plain echo.
SIGINT/SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
from pathlib import Path

import trio
from serving import add_server_arguments, serve_until_signalled

import millpond

DEFAULT_CA_FILE = Path(tempfile.gettempdir()) / "millpond-tls-echo-ca.pem"

# Names a local client may use to reach the server.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


async def echo(stream: trio.SSLStream[millpond.Connection]) -> None:
    """Send back everything received, until the client closes its side."""
    async for chunk in stream:
        await stream.send_all(chunk)


def local_context(host: str, ca_file: Path) -> ssl.SSLContext:
    """A server context with a certificate from a new local CA, whose certificate goes to
    ``ca_file``."""
    import trustme  # only this path needs it

    authority = trustme.CA(organization_name="millpond tls_echo example")
    names = dict.fromkeys([*LOCAL_NAMES, host])  # --host too, once
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    authority.cert_pem.write_to_path(str(ca_file))
    return context


def context_from_files(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with your own certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def main(args: argparse.Namespace) -> None:
    """Serve ``echo`` over TLS until SIGINT/SIGTERM."""
    if args.cert_file is not None:
        context = context_from_files(args.cert_file, args.key_file)
    else:
        context = local_context(args.host, args.ca_file)
        print(f"CA certificate: {args.ca_file} (trust it to connect)", flush=True)
    server = millpond.Server(echo, args.port, host=args.host, ssl_context=context)
    await serve_until_signalled(server, args.grace)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, port=7002)
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=DEFAULT_CA_FILE,
        metavar="PATH",
        help=f"where to write the local CA's certificate (default {DEFAULT_CA_FILE})",
    )
    parser.add_argument(
        "--cert-file",
        type=Path,
        metavar="PATH",
        help="serve this certificate chain (PEM) instead of a local one; needs --key-file",
    )
    parser.add_argument("--key-file", type=Path, metavar="PATH", help="its private key (PEM)")
    args = parser.parse_args(argv)
    if (args.cert_file is None) != (args.key_file is None):
        parser.error("--cert-file and --key-file go together")
    return args


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
