"""The ``--workers`` supervisor: it binds, starts the workers, carries out the roster's decisions.

This module owns the supervisor's process: binding the listeners, starting
each worker as a new process, passing signals on, noticing which worker
listens or exits, and closing up at the end. What to do about each of those
(restart or not, when, which worker to stop during a SIGHUP) is decided in
``roster.py``, which has no I/O; this module only carries it out. The
supervisor imports no TARGET and runs no server: after binding, it is a
``selectors`` loop over its workers' channels and a signal wake-up socket.

**Workers are spawned, not forked.** Each is ``python -m millpond.cli serve
... --worker-index I``: a new interpreter that imports Trio, the TARGET and
the certificate itself. Forking the supervisor would copy a process that has
imported Trio, and has run it (to bind): only the forking thread survives a
fork, so a lock another thread held (Trio's thread cache, which resolved the
host name; logging's; the import lock) stays held in the child for ever, and
any state Trio keeps per process (its signal wake-up socket) would be shared
by two processes. A new interpreter also loads the code as it is on disk
now, which is what a SIGHUP is for; a fork would serve the code the
supervisor started with (and it never imports the TARGET at all). The cost is
a start-up of a few hundred milliseconds per worker, paid at start, at a
restart and at a SIGHUP, not per connection.

**One listener per slot, held by the supervisor.** With ``SO_REUSEPORT``
every worker has a listening socket of its own on the same address, and the
kernel spreads new connections among them (by a hash of the addresses). But
when such a socket closes, the connections in its accept queue (and those
still in the handshake) are reset, not moved to another socket of the group,
unless ``net.ipv4.tcp_migrate_req`` is 1 (Linux 5.14 and later; 0 by
default). A worker that bound its own socket would drop clients at every
replacement: measured here, with four clients connecting in a loop, about 1.5
resets per replaced listener. So the supervisor binds one ``SO_REUSEPORT``
listener per slot, keeps it open, and hands that same socket to every worker
of the slot: during a SIGHUP the new worker and the old one accept from one
queue, the old one closes only its own descriptor, and no client is lost. The
price: while a slot has no worker (one died, until its replacement listens)
the clients the kernel hashes to its socket wait in its backlog instead of
going to another worker. ``--uds`` and ``--fd`` sockets cannot be shared that
way (a Unix socket path binds once; an inherited socket is one socket): each
is one listening socket that every worker accepts on, and the kernel wakes
the workers in turn.

**Readiness and lifeline.** Each worker gets one end of a Unix socket pair
(``--worker-channel``); it writes ``listening`` there once its server
accepts. If the worker dies before that, the supervisor sees its exit
instead. The same channel tells the worker when the supervisor is gone: its
end of file is a graceful shutdown (``running.py``).

**Signals.** Python signal handlers queue SIGTERM, SIGINT and SIGHUP, and
``signal.set_wakeup_fd`` wakes the ``select``; SIGCHLD only wakes it, and
every worker is then polled for its exit. Workers stay in the supervisor's
process group, so a terminal's Ctrl-C and ``kill`` of the group reach them
directly; the roster's signal table makes that one graceful shutdown.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..debug.address import worker_debug_address, worker_debug_listing
from ..server import open_listeners, open_unix_listener
from ..server.listeners import remove_unix_socket
from .errors import CommandError
from .inherited import adopt_listeners, take_activation_fds
from .logs import configure_logging
from .options import version
from .places import Places, debug_address, listening_places
from .roster import Action, Exit, Log, Roster, Send, Start, StopListening

__all__ = ["check_workers_supported", "reuse_port_available", "supervise", "worker_arguments"]

logger = logging.getLogger("millpond.supervisor")

# The signals the roster acts on; SIGCHLD is caught only to wake the loop.
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def reuse_port_available() -> bool:
    """Whether this platform lets several listening sockets share a port (``SO_REUSEPORT``).

    The constant alone is not enough: Python defines it from the headers it
    was built with, and a kernel (or an emulation layer: WSL 1, gVisor) may
    still refuse the option, so a socket is asked too.
    """
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True


def check_workers_supported(workers: int, has_reuse_port: bool) -> None:
    """``CommandError`` unless ``workers`` processes can share a port here (``SO_REUSEPORT``)."""
    if workers > 1 and not has_reuse_port:
        raise CommandError(
            f"--workers {workers} needs SO_REUSEPORT (a listening socket per worker on one "
            "port), which this platform lacks: run one process (no --workers), or several "
            "on different ports behind a load balancer"
        )


def worker_arguments(
    argv: Sequence[str], index: int, channel: int, fds: Sequence[int], debug_fds: Sequence[int] = ()
) -> list[str]:
    """The command line of worker ``index``: the supervisor's own, plus the supervisor's flags.

    They go right after ``serve``, ahead of anything the user wrote (a
    ``--`` among it would make them positional).
    """
    at = list(argv).index("serve") + 1
    extra = ["--worker-index", str(index), "--worker-channel", str(channel)]
    for fd in fds:
        extra += ["--worker-fd", str(fd)]
    for fd in debug_fds:
        extra += ["--worker-debug-fd", str(fd)]
    return [*argv[:at], *extra, *argv[at:]]


def supervise(arguments: Namespace, argv: Sequence[str]) -> int:
    """Run ``arguments.workers`` workers of the command ``argv`` until a signal stops them.

    Returns the exit status: 0 after a stop by signal in which every worker
    stopped as asked, 2 when the command is wrong (the first worker said so,
    or the listeners cannot be bound), 1 when workers kept dying before they
    listened or had to be killed. ``CommandError`` for a mistake found
    before any worker starts.
    """
    workers: int = arguments.workers
    check_workers_supported(workers, reuse_port_available())
    configure_logging(arguments.log_level, arguments.access_log)
    places = listening_places(arguments, take_activation_fds(os.environ, os.getpid()))
    inherited = adopt_listeners(places.inherited)
    listeners = _Listeners(shared=list(inherited))
    try:
        _bind(listeners, places, workers, arguments.backlog, arguments.uds_mode)
        _bind_debug(listeners, debug_address(arguments), workers)
        grace = math.inf if arguments.graceful_timeout is None else arguments.graceful_timeout
        logger.info(
            "supervising %d worker(s) of %s with millpond %s on %s (pid %d); SIGTERM or "
            "Ctrl-C stops them, SIGHUP replaces them one at a time",
            workers,
            arguments.target.text,
            version(),
            listeners.describe(places),
            os.getpid(),
        )
        if listeners.debug:
            listing = worker_debug_listing([listeners.debug_addresses(i) for i in range(workers)])
            logger.info("debug endpoints: %s", listing)
        with _SignalInbox() as inbox:
            return _Supervisor(Roster(workers, grace), argv, listeners, inbox).run()
    finally:
        listeners.close()


@dataclass
class _Listeners:
    """The supervisor's listening sockets: a list per slot (TCP), and those every worker shares."""

    slots: list[list[socket.socket]] = field(default_factory=list)
    shared: list[socket.socket] = field(default_factory=list)
    debug: list[list[socket.socket]] = field(default_factory=list)  # per slot, if asked for

    def of(self, slot: int) -> list[socket.socket]:
        """What worker ``slot`` serves: its slot's TCP listeners, then the shared ones."""
        own = self.slots[slot] if self.slots else []
        return [*own, *self.shared]

    def debug_of(self, slot: int) -> list[socket.socket]:
        """The debug endpoint's listeners of worker ``slot`` (none without ``--debug-port``)."""
        return self.debug[slot] if self.debug else []

    def debug_addresses(self, slot: int) -> list[Any]:
        """Where worker ``slot``'s debug endpoint listens."""
        return [sock.getsockname() for sock in self.debug_of(slot)]

    def describe(self, places: Places) -> str:
        """Where the workers listen, with the port the system picked for port 0."""
        where = []
        if self.slots:
            where.append(", ".join(_address_text(s.getsockname()) for s in self.slots[0]))
            where[-1] += " (a listener per worker)" if len(self.slots) > 1 else ""
        if places.uds is not None:
            where.append(f"unix:{places.uds}")
        where += [origin for _fd, origin in places.inherited]
        return " and ".join(where)

    def close(self) -> None:
        """Stop listening: the kernel refuses new clients once the workers have closed theirs."""
        debug = (s for slot in self.debug for s in slot)
        for sock in [*(s for slot in self.slots for s in slot), *self.shared, *debug]:
            if sock.fileno() >= 0:
                if sock.family == socket.AF_UNIX:
                    remove_unix_socket(sock)  # only a socket file this process bound
                sock.close()


def _bind(
    listeners: _Listeners, places: Places, workers: int, backlog: int | None, mode: int | None
) -> None:
    if places.port not in (None, 0) and workers > 1:
        _refuse_a_port_in_use(places)
    try:
        trio.run(_open_listeners, listeners, places, workers, backlog, mode)
    except OSError as exc:
        raise CommandError(f"cannot listen on {places.describe()}: {exc.strerror or exc}") from None


async def _open_listeners(
    listeners: _Listeners, places: Places, workers: int, backlog: int | None, mode: int | None
) -> None:
    # millpond's own listeners (resolving, every family, the backlog), in the
    # one short Trio run the supervisor makes. The slots share the port that
    # the first one bound (the system's pick, for port 0).
    port = places.port
    if port is not None:
        for _slot in range(workers):
            sockets = await open_listeners(
                port, host=places.bind_host, backlog=backlog, reuse_port=workers > 1
            )
            listeners.slots.append(sockets)
            port = sockets[0].getsockname()[1]
    if places.uds is not None:
        listeners.shared.append(await open_unix_listener(places.uds, backlog=backlog, mode=mode))


def _bind_debug(
    listeners: _Listeners, address: tuple[str | None, int] | None, workers: int
) -> None:
    # The debug endpoints' sockets (--debug-port), one set per slot on the
    # base port plus the slot's index (port 0: a free one each), held here
    # for the same reason as the slots' listeners: a worker replacing another
    # (SIGHUP) serves its debug port from the socket the old one still holds
    # while it drains, where binding its own would find the port taken.
    if address is not None:
        trio.run(_open_debug_listeners, listeners, address, workers)


async def _open_debug_listeners(
    listeners: _Listeners, address: tuple[str | None, int], workers: int
) -> None:
    for slot in range(workers):
        host, port = worker_debug_address(address, slot)
        try:
            listeners.debug.append(await open_listeners(port, host=host))
        except OSError as exc:
            raise CommandError(
                f"cannot listen for worker {slot}'s debug endpoint on "
                f"{_address_text((host or '*', port))}: {exc.strerror or exc}"
            ) from None


def _refuse_a_port_in_use(places: Places) -> None:
    # SO_REUSEPORT lets a socket join any listener of the same user on the
    # port: a server still running there (an old supervisor, a forgotten
    # test) would silently share the clients. A probe without SO_REUSEPORT,
    # bound but never listening, fails as the single-process command would.
    infos = socket.getaddrinfo(
        places.bind_host, places.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CommandError(
                        f"cannot listen on {places.describe()}: {exc.strerror}"
                    ) from None
                if exc.errno != errno.EADDRNOTAVAIL:  # open_listeners says it better
                    raise


def _address_text(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _SignalInbox:
    """The signals the supervisor received, in order, and a socket that wakes ``select``."""

    def __init__(self) -> None:
        self._pending: list[int] = []
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1

    def __enter__(self) -> _SignalInbox:
        self._previous_wakeup = signal.set_wakeup_fd(
            self._writer.fileno(), warn_on_full_buffer=False
        )
        for signum in (*_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._received)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The supervisor is about to exit: a stop signal now (a repeated
        # SIGTERM, a second Ctrl-C) changes nothing, and must not kill it with
        # its default action, so the stop signals are ignored, not restored.
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if signum in _SIGNALS else handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        self.reader.close()
        self._writer.close()

    def _received(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD:
            self._pending.append(signum)

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        taken, self._pending = self._pending, []
        return taken

    def drain(self) -> None:
        """Empty the wake-up socket (the signals themselves are in ``take``)."""
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass


@contextmanager
def _hangups_blocked() -> Iterator[None]:
    # A worker starts with SIGHUP blocked, and ignores it once its Python is
    # up (command.py): one sent to the process group in between stays pending
    # instead of killing it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Supervisor:
    """The loop: wait for something to happen, tell the roster, carry out what it says."""

    def __init__(
        self,
        roster: Roster,
        argv: Sequence[str],
        listeners: _Listeners,
        inbox: _SignalInbox,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._roster = roster
        self._argv = list(argv)
        self._listeners = listeners
        self._inbox = inbox
        self._clock = clock
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._channels: dict[int, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(inbox.reader, selectors.EVENT_READ, None)

    def run(self) -> int:
        """Supervise until the roster says ``Exit``; its status."""
        try:
            status = self._carry_out(self._roster.start(self._clock()))
            while status is None:
                status = self._next_events()
            return status
        finally:
            # Normally every worker is gone by now. If not (a bug raised),
            # closing the channels tells the rest to shut down gracefully.
            for channel in self._channels.values():
                channel.close()
            self._selector.close()

    def _next_events(self) -> int | None:
        timeout = self._roster.next_deadline() - self._clock()
        ready = self._selector.select(None if timeout == math.inf else max(0.0, timeout))
        # The wake-up socket is emptied before the signals are taken, never after:
        # a signal that comes after the drain is taken now, or its byte wakes the
        # next select. (Drained after the take, a SIGTERM that came in between
        # would wait for something else to wake the loop, for ever if nothing
        # did: a worker's SIGCHLD and a SIGTERM can come together.)
        if any(key.data is None for key, _events in ready):
            self._inbox.drain()
        for signum in self._inbox.take():
            if (status := self._carry_out(self._roster.signal(signum, self._clock()))) is not None:
                return status
        for key, _events in ready:
            if key.data is not None:
                if (status := self._carry_out(self._read_channel(key.data))) is not None:
                    return status
        for pid, process in list(self._processes.items()):
            returncode = process.poll()
            if returncode is not None:
                self._forget(pid)
                actions = self._roster.exited(pid, returncode, self._clock())
                if (status := self._carry_out(actions)) is not None:
                    return status
        return self._carry_out(self._roster.tick(self._clock()))

    def _carry_out(self, actions: list[Action]) -> int | None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Start):
                queue += self._start(action)
            elif isinstance(action, Send):
                process = self._processes.get(action.pid)
                if process is not None:
                    process.send_signal(action.signum)  # a no-op once it has been reaped
            elif isinstance(action, Log):
                logger.log(action.level, "%s", action.message)
            elif isinstance(action, StopListening):
                self._listeners.close()
            elif isinstance(action, Exit):
                return action.status
        return None

    def _start(self, start: Start) -> list[Action]:
        ours, theirs = socket.socketpair()
        fds = [sock.fileno() for sock in self._listeners.of(start.slot)]
        debug_fds = [sock.fileno() for sock in self._listeners.debug_of(start.slot)]
        arguments = worker_arguments(self._argv, start.slot, theirs.fileno(), fds, debug_fds)
        try:
            with _hangups_blocked():
                process = subprocess.Popen(
                    [sys.executable, "-m", "millpond.cli", *arguments],
                    stdin=subprocess.DEVNULL,
                    pass_fds=[theirs.fileno(), *fds, *debug_fds],
                )
        except OSError as exc:
            ours.close()
            return self._roster.start_failed(start, str(exc), self._clock())
        finally:
            theirs.close()  # the worker has it: its end of file is ours closing, and vice versa
        ours.setblocking(False)
        self._processes[process.pid] = process
        self._channels[process.pid] = ours
        self._selector.register(ours, selectors.EVENT_READ, process.pid)
        return self._roster.started(start, process.pid, self._clock())

    def _read_channel(self, pid: int) -> list[Action]:
        channel = self._channels[pid]
        try:
            said = channel.recv(64)
        except BlockingIOError:
            return []
        except OSError:
            said = b""
        # One message, or the end of file of a worker about to exit: either
        # way nothing more will come. The channel stays open: the worker's
        # lifeline.
        self._selector.unregister(channel)
        return self._roster.listening(pid, self._clock()) if said else []

    def _forget(self, pid: int) -> None:
        del self._processes[pid]
        channel = self._channels.pop(pid)
        if _registered(self._selector, channel):
            self._selector.unregister(channel)
        channel.close()


def _registered(selector: selectors.BaseSelector, channel: socket.socket) -> bool:
    try:
        selector.get_key(channel)
    except KeyError:
        return False
    return True
