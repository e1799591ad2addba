"""The ``millpond`` command, from its arguments to its exit status.

This module owns the order in which ``millpond serve`` does things, and the
rule that every mistake the user can fix is found before anything is bound:
parse the flags, set up logging, take systemd's sockets, import the TARGET,
load the certificate, adopt the inherited sockets, make the ``Server`` (which
checks its arguments), and only then start Trio, bind and serve until a
signal. A ``CommandError`` from any step is one line on stderr and exit
status 2. The steps themselves are the other modules' (``options``,
``target``, ``inherited``, ``certificates``, ``running``).
"""

from __future__ import annotations

import math
import os
import socket
import sys
from argparse import Namespace
from collections.abc import Sequence
from functools import partial

import trio

from ..memory.limiter import BufferLimiter
from ..server import DEFAULT_ALLOW_FROM, DEFAULT_RESERVE_FRACTION, Server
from .certificates import server_ssl_context
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from .inherited import adopt_listeners, take_activation_fds
from .logs import configure_logging
from .options import DEFAULT_HOST, DEFAULT_PORT, parse_arguments, version
from .running import serve_until_signalled
from .target import load_handler

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``millpond`` command on ``argv`` (default ``sys.argv[1:]``); return its exit status.

    The console script and ``python -m millpond.cli`` pass the status to
    ``sys.exit``. ``--help``, ``--version`` and a bad flag exit from inside
    argparse (status 0, 0 and 2); a ``CommandError`` prints
    ``millpond: error: ...`` on stderr and returns 2.
    """
    try:
        return _serve(parse_arguments(argv))
    except CommandError as exc:
        # One line, whatever the message holds (an import error's text may not be).
        message = " ".join(str(exc).splitlines())
        print(f"millpond: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was up (a slow import)
        return EXIT_INTERRUPTED


def _serve(arguments: Namespace) -> int:
    configure_logging(arguments.log_level, arguments.access_log)
    # Before the TARGET's code runs, so that it does not see (and take) them.
    activated = take_activation_fds(os.environ, os.getpid())
    inherited = [(fd, f"--fd {fd}") for fd in arguments.fd]
    inherited += [
        (fd, f"fd {fd} from systemd (LISTEN_FDS)") for fd in activated if fd not in arguments.fd
    ]
    # TCP when asked for, and by default when nothing else says where to listen.
    on_tcp = arguments.port is not None or not (arguments.uds or inherited)
    if arguments.host is not None and not on_tcp:
        raise CommandError("--host needs --port when --uds or --fd says where to listen")
    port = DEFAULT_PORT if arguments.port is None and on_tcp else arguments.port
    host = arguments.host or DEFAULT_HOST
    handler = load_handler(arguments.target)
    ssl_context = None
    if arguments.certfile is not None:
        ssl_context = server_ssl_context(arguments.certfile, arguments.keyfile)
    limiter = None
    if arguments.budget is not None:
        limiter = BufferLimiter(
            arguments.budget, reserved_bytes=arguments.budget // DEFAULT_RESERVE_FRACTION
        )
    sockets = adopt_listeners(inherited)
    try:
        server = Server(
            handler,
            port,
            host=None if host == "*" else host,
            uds=arguments.uds,
            uds_mode=arguments.uds_mode,
            sockets=sockets,
            backlog=arguments.backlog,
            max_connections=arguments.max_connections,
            idle_timeout=arguments.idle_timeout,
            read_timeout=arguments.read_timeout,
            write_timeout=arguments.write_timeout,
            ssl_context=ssl_context,
            handshake_timeout=arguments.handshake_timeout,
            proxy_protocol=arguments.proxy_protocol,
            proxy_allow_from=arguments.proxy_allow_from or DEFAULT_ALLOW_FROM,
            proxy_header_timeout=arguments.proxy_header_timeout,
            poller=arguments.poller,
            limiter=limiter,
            access_log=arguments.access_log,
        )
    except (TypeError, ValueError) as exc:
        # Each flag's value was checked already; what is left is a combination
        # the server refuses, and its message names the argument.
        _let_go(sockets)
        raise CommandError(str(exc)) from None
    grace = math.inf if arguments.graceful_timeout is None else arguments.graceful_timeout
    where = _where(host if port is not None else None, port, arguments.uds, inherited)
    over_tls = " over TLS" if ssl_context is not None else ""
    banner = (
        f"serving {arguments.target.text}{over_tls} with millpond {version()} "
        f"(pid {os.getpid()}); SIGTERM or Ctrl-C stops it"
    )
    trio.run(partial(serve_until_signalled, server, grace, banner=banner, where=where))
    return EXIT_OK


def _where(
    host: str | None, port: int | None, uds: str | None, inherited: Sequence[tuple[int, str]]
) -> str:
    places = [] if port is None else [f"{host}:{port}"]
    if uds is not None:
        places.append(f"unix:{uds}")
    places += [origin for _fd, origin in inherited]
    return " and ".join(places)


def _let_go(sockets: Sequence[socket.socket]) -> None:
    # Hand inherited descriptors back untouched: the process is about to exit,
    # and whoever passed them may still want them.
    for sock in sockets:
        sock.detach()
