"""The command line of ``millpond``: its commands, flags, defaults and help.

This module owns what a user can type and what ``--help`` says about it: the
``serve`` command, every flag with its meaning and default, and the checks
on flags that only make sense together (``--keyfile`` needs ``--certfile``).
A bad value or combination is argparse's error: the usage line, then one
line naming the flag, exit status 2. How one value is parsed is
``values.py``'s; what the flags do is ``command.py``'s.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Final

import trio

from .. import POLLER_NAMES
from ..server import (
    DEFAULT_ALLOW_FROM,
    DEFAULT_BUDGET_BYTES,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_PROXY_HEADER_TIMEOUT,
    PROXY_MODES,
)
from . import values
from .target import parse_target

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LOG_LEVELS",
    "parse_arguments",
    "version",
    "version_text",
]

# Loopback, as uvicorn and gunicorn default to: a server is reachable from
# other machines only when someone asks for it (--host 0.0.0.0, or * for
# every interface and both address families).
DEFAULT_HOST: Final = "127.0.0.1"

# uvicorn's and gunicorn's default port, so a deploy that moves from one of
# them finds the server where it was. Used only when no --uds or --fd (or
# systemd socket) says where else to listen.
DEFAULT_PORT: Final = 8000

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")

# Spelled out rather than imported from the poller, which is not public API;
# an unknown name would still be refused by Server.
_POLLERS: Final = POLLER_NAMES

# The per-connection timeouts: each closes the connection it times.
_TIMEOUTS: Final = (
    ("--idle-timeout", "that neither received nor sent a byte for that long"),
    ("--read-timeout", "whose receive has waited that long"),
    ("--write-timeout", "whose send has been blocked that long: a client that stopped reading"),
)

_DESCRIPTION: Final = """\
Serve an async handler, `async def handler(stream)`, with millpond: one Trio
task per connection, memory bounded by a byte budget. SIGTERM or Ctrl-C stops
accepting at once and lets the connections finish for --graceful-timeout
seconds; a second Ctrl-C cancels them at once (a second SIGTERM changes
nothing: systemd sends it to every process of a unit)."""

_EPILOG: Final = """\
TARGET is module:handler (the module is looked for in the current directory,
then on sys.path) or path/to/file.py:handler; the handler's name may be
dotted (app:server.handle).

examples:
  millpond serve app:handle                      # 127.0.0.1:8000
  millpond serve ./echo.py:echo --host '*' --port 7000
  millpond serve app:handle --uds /run/app.sock --uds-mode 660
  millpond serve app:handle --certfile cert.pem --keyfile key.pem --port 8443
  millpond serve app:handle --max-connections 10000 --idle-timeout 300 --budget 256M
  millpond serve app:handle --host '*' --port 8000 --workers auto

Where millpond listens: on --host:--port, on --uds, and on every --fd (each
may be combined); with none of them, on 127.0.0.1:8000. Under systemd socket
activation (LISTEN_PID is this process) the sockets systemd passes are
served too, and the default port is not bound.

Workers (--workers N): a supervisor binds the listeners, then runs N worker
processes, each a whole server with its own budget and --max-connections.
Each worker gets its own SO_REUSEPORT listener on --host:--port, so the
kernel spreads the clients; a --uds or --fd socket is one socket that every
worker accepts on. SIGTERM or Ctrl-C stops every worker gracefully; SIGHUP
starts new workers one at a time, each before stopping the one it replaces,
so the port never closes. A worker that dies is started again (after a
backoff when it dies young); one that keeps dying before it listens stops
them all.

Exit status: 0 after a shutdown by signal, 2 for a mistake in the command
(a bad flag or TARGET, a port in use, a certificate that cannot be loaded),
130 for Ctrl-C before it listens, 1 for anything else (with a traceback;
with --workers, workers that kept dying before they listened, or had to be
killed)."""


def version() -> str:
    """millpond's version, as installed (``importlib.metadata``)."""
    try:
        return metadata.version("millpond")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed: version unknown)"


def version_text() -> str:
    """What ``millpond --version`` prints: millpond's version, then Trio's and Python's."""
    return (
        f"millpond {version()} (trio {trio.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}, {sys.platform})"
    )


def _build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="millpond",
        description="millpond: network servers on Trio with bounded memory.",
        epilog="Run `millpond serve --help` for the serve command's flags.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve an async handler (TARGET) on TCP, a Unix socket or inherited sockets",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        usage="millpond serve [options] TARGET",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "target",
        metavar="TARGET",
        type=parse_target,
        help="the handler: module:handler or path/to/file.py:handler",
    )

    where = serve.add_argument_group("where to listen")
    where.add_argument(
        "--host",
        type=values.host,
        metavar="ADDRESS",
        help=f"address or name to bind; * for every interface, IPv4 and IPv6 "
        f"(default: {DEFAULT_HOST}, this machine only)",
    )
    where.add_argument(
        "--port",
        type=values.port,
        help=f"TCP port; 0 picks a free one and logs it (default: {DEFAULT_PORT}, "
        "unless --uds or --fd is given)",
    )
    where.add_argument(
        "--uds",
        metavar="PATH",
        help="also (or only) listen on a Unix domain socket at PATH; a stale socket file "
        "there is removed, a live one is an error; removed again at exit",
    )
    where.add_argument(
        "--uds-mode",
        type=values.permission_bits,
        metavar="OCTAL",
        help="permissions of the --uds socket, in octal, set before it listens "
        "(e.g. 660: owner and group only; default: what the umask gives)",
    )
    where.add_argument(
        "--fd",
        type=values.file_descriptor,
        action="append",
        default=[],
        metavar="N",
        help="serve an inherited listening socket, file descriptor N (repeatable); "
        "systemd's socket activation (LISTEN_FDS) needs no flag",
    )
    where.add_argument(
        "--backlog",
        type=values.count,
        metavar="N",
        help="listen queue length (default: the kernel's maximum, net.core.somaxconn): "
        "it holds the clients not accepted yet, in a burst or at --max-connections",
    )

    processes = serve.add_argument_group("worker processes")
    processes.add_argument(
        "--workers",
        type=values.workers,
        metavar="N",
        help="run N worker processes under a supervisor, each with its own Trio run, "
        "budget and statistics, and its own SO_REUSEPORT listener on --host:--port; a "
        "worker that dies is started again, SIGHUP replaces them one at a time; auto: one "
        "per CPU this process may use (default: 1, in this process, with no supervisor)",
    )
    # How the supervisor starts a worker: the same command line, plus these.
    # Not for users, so not in --help (supervisor.py says what each is).
    processes.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    processes.add_argument("--worker-channel", type=values.file_descriptor, help=argparse.SUPPRESS)
    for handed in ("--worker-fd", "--worker-debug-fd"):  # listeners, debug endpoint's
        processes.add_argument(
            handed,
            type=values.file_descriptor,
            action="append",
            default=[],
            help=argparse.SUPPRESS,
        )

    limits = serve.add_argument_group("limits and timeouts")
    limits.add_argument(
        "--max-connections",
        type=values.count,
        metavar="N",
        help="connections open at once (per worker with --workers); at the limit accepting "
        "pauses and the backlog holds the rest (default: no limit but the process's file "
        "descriptors)",
    )
    for flag, meaning in _TIMEOUTS:
        limits.add_argument(
            flag,
            type=values.seconds_or_none,
            metavar="SECONDS",
            help=f"close a connection {meaning} (default: none)",
        )
    limits.add_argument(
        "--graceful-timeout",
        type=values.seconds_or_none,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, how long connections may take to finish before they "
        "are cancelled (a second Ctrl-C cancels them at once; a second SIGTERM changes "
        f"nothing); none waits for ever (default: {DEFAULT_GRACE_SECONDS:g})",
    )

    tls = serve.add_argument_group("TLS")
    tls.add_argument(
        "--certfile",
        metavar="PATH",
        help="serve TLS with this PEM certificate chain (the server's certificate first)",
    )
    tls.add_argument(
        "--keyfile",
        metavar="PATH",
        help="the certificate's PEM private key, unencrypted (default: in --certfile)",
    )
    tls.add_argument(
        "--handshake-timeout",
        type=values.seconds_or_none,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="close a client that has not finished the TLS handshake in that long; none "
        f"waits for ever (default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )

    balancer = serve.add_argument_group("behind a load balancer (PROXY protocol)")
    balancer.add_argument(
        "--proxy-protocol",
        choices=PROXY_MODES,
        default="off",
        help="read HAProxy's PROXY protocol header (v1 text, v2 binary, or auto to accept "
        "either) before the handler starts; the handler then sees the original client as "
        "its peer (default: off)",
    )
    balancer.add_argument(
        "--proxy-allow-from",
        action="append",
        metavar="NETWORK",
        default=None,
        help="a network (CIDR) allowed to send the header; repeatable; connections from "
        f"anywhere else are refused (default: {', '.join(DEFAULT_ALLOW_FROM)})",
    )
    balancer.add_argument(
        "--proxy-header-timeout",
        type=values.seconds_or_none,
        default=DEFAULT_PROXY_HEADER_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose header has not arrived in that long "
        f"(default: {DEFAULT_PROXY_HEADER_TIMEOUT:g})",
    )

    memory = serve.add_argument_group("memory and I/O")
    memory.add_argument(
        "--budget",
        type=values.byte_count,
        metavar="BYTES",
        help="byte budget of every connection's buffers together, with K, M, G suffixes "
        "(powers of 1024); 1/16 of it is kept for connections that already hold a "
        "buffer; with --workers each worker has a budget this size, so N workers may use N "
        f"times it (default: {DEFAULT_BUDGET_BYTES >> 20}M)",
    )
    memory.add_argument(
        "--poller",
        choices=_POLLERS,
        default="auto",
        help="readiness backend: epoll (Linux, millpond's edge-triggered core), trio "
        "(portable), auto ($MILLPOND_POLLER, else epoll on Linux) (default: auto)",
    )

    debugging = serve.add_argument_group("seeing inside (docs/debugging.md)")
    debugging.add_argument(
        "--debug-port",
        type=values.port,
        metavar="N",
        help="serve the debug endpoint on this port: statistics, Prometheus /metrics, "
        "connections, buffers, heap profiles, the task tree, outside the budget; 0 picks a "
        "free port and logs it (default: off)",
    )
    debugging.add_argument(
        "--debug-host",
        type=values.host,
        metavar="ADDRESS",
        help=f"address of the debug endpoint; anything but loopback logs a warning, since "
        f"its pages name peers, files and lines (default: {DEFAULT_HOST})",
    )

    logs = serve.add_argument_group("logging")
    logs.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="lowest level logged to stderr, for millpond and the handler's loggers "
        "(default: info, which shows where it listens and each shutdown step)",
    )
    logs.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per connection (logger millpond.access, at info, even when "
        "--log-level is higher): peer, duration, bytes in and out, how it closed",
    )
    return parser, serve


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (``sys.argv[1:]`` for None); exit with status 2 and a message if bad."""
    parser, serve = _build_parser()
    arguments = parser.parse_args(argv)
    if arguments.keyfile is not None and arguments.certfile is None:
        serve.error("--keyfile needs --certfile")
    if arguments.uds_mode is not None and arguments.uds is None:
        serve.error("--uds-mode needs --uds")
    if (arguments.worker_index is None) != (arguments.worker_channel is None):
        serve.error("--worker-index and --worker-channel go together (the supervisor's flags)")
    if arguments.debug_host is not None and arguments.debug_port is None:
        serve.error("--debug-host needs --debug-port")
    return arguments
