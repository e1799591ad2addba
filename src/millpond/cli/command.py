"""The ``millpond`` command, from its arguments to its exit status.

This module owns the order in which ``millpond serve`` does things, and the
rule that every mistake the user can fix is found before anything is bound:
parse the flags, set up logging, take systemd's sockets, import the TARGET,
load the certificate, adopt the inherited sockets, make the ``Server`` (which
checks its arguments), and only then start Trio, bind and serve until a
signal. A ``CommandError`` from any step is one line on stderr and exit
status 2. The steps themselves are the other modules' (``options``,
``places``, ``target``, ``inherited``, ``certificates``, ``running``).

With ``--workers`` this process is the supervisor instead
(``supervisor.py``), and each worker it starts runs this same command with
the supervisor's flags (``--worker-index``, ...): the same steps, except that
it serves the sockets the supervisor bound rather than binding its own.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from argparse import Namespace
from collections.abc import Sequence

from ..memory.limiter import BufferLimiter
from ..server import DEFAULT_ALLOW_FROM, DEFAULT_RESERVE_FRACTION, Server
from .certificates import server_ssl_context
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from .inherited import adopt_listeners, take_activation_fds
from .logs import configure_logging
from .options import parse_arguments, version
from .places import debug_address, listening_places, supervised_places
from .running import run_server
from .supervisor import supervise
from .target import load_handler

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``millpond`` command on ``argv`` (default ``sys.argv[1:]``); return its exit status.

    The console script and ``python -m millpond.cli`` pass the status to
    ``sys.exit``. ``--help``, ``--version`` and a bad flag exit from inside
    argparse (status 0, 0 and 2); a ``CommandError`` prints
    ``millpond: error: ...`` on stderr and returns 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        arguments = parse_arguments(argv)
        if arguments.workers is not None and arguments.worker_index is None:
            return supervise(arguments, argv)
        return _serve(arguments)
    except CommandError as exc:
        # One line, whatever the message holds (an import error's text may not be).
        message = " ".join(str(exc).splitlines())
        print(f"millpond: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was up (a slow import)
        return EXIT_INTERRUPTED


def _serve(arguments: Namespace) -> int:
    worker = arguments.worker_index
    configure_logging(arguments.log_level, arguments.access_log, worker=worker)
    supervisor = None
    if worker is None:
        # Before the TARGET's code runs, so that it does not see (and take) them.
        places = listening_places(arguments, take_activation_fds(os.environ, os.getpid()))
    else:
        _ignore_hangups()
        places = supervised_places(arguments.worker_fd)
        supervisor = socket.socket(fileno=arguments.worker_channel)
    handler = load_handler(arguments.target)
    ssl_context = None
    if arguments.certfile is not None:
        ssl_context = server_ssl_context(arguments.certfile, arguments.keyfile)
    limiter = None
    if arguments.budget is not None:
        limiter = BufferLimiter(
            arguments.budget, reserved_bytes=arguments.budget // DEFAULT_RESERVE_FRACTION
        )
    sockets = adopt_listeners(places.inherited)
    # A worker serves its debug endpoint on the sockets the supervisor holds for its slot.
    debug_sockets = adopt_listeners(
        [(fd, f"debug fd {fd} from the supervisor") for fd in arguments.worker_debug_fd]
    )
    try:
        server = Server(
            handler,
            places.port,
            host=places.bind_host,
            uds=places.uds,
            uds_mode=arguments.uds_mode if places.uds is not None else None,
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
            debug_address=None if debug_sockets else debug_address(arguments),
            debug_sockets=debug_sockets or None,
        )
    except (TypeError, ValueError, ImportError) as exc:
        # Each flag's value was checked already; what is left is a combination
        # the server refuses, and its message names the argument (or h11 is
        # missing for --debug-port).
        _let_go([*sockets, *debug_sockets])
        raise CommandError(str(exc)) from None
    grace = math.inf if arguments.graceful_timeout is None else arguments.graceful_timeout
    over_tls = " over TLS" if ssl_context is not None else ""
    serving = f"serving {arguments.target.text}{over_tls} with millpond {version()}"
    if worker is None:
        banner = f"{serving} (pid {os.getpid()}); SIGTERM or Ctrl-C stops it"
    else:
        banner = f"{serving} as worker {worker} of supervisor pid {os.getppid()}"
    run_server(server, grace, banner=banner, where=places.describe(), supervisor=supervisor)
    return EXIT_OK


def _ignore_hangups() -> None:
    # Replacing workers is the supervisor's business: a SIGHUP sent to the
    # whole process group (a terminal hanging up, kill -HUP -PGID) is one
    # rolling replace, not every worker dying of it. The supervisor starts
    # workers with SIGHUP blocked, so one sent while this process started is
    # pending, and is dropped here, as ignoring a pending signal does.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _let_go(sockets: Sequence[socket.socket]) -> None:
    # Hand inherited descriptors back untouched: the process is about to exit,
    # and whoever passed them may still want them.
    for sock in sockets:
        sock.detach()
