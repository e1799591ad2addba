"""Where the command listens: ``--host``/``--port``, ``--uds``, ``--fd`` and systemd's sockets.

This module owns the rules that turn those flags into one value, ``Places``:
TCP when ``--port`` is given, or by default when nothing else says where to
listen (127.0.0.1:8000); ``--host`` only with TCP; every ``--fd`` and every
socket systemd passed, once each; and the text that names them all in
messages (``127.0.0.1:8000 and unix:/run/app.sock``). The single-process
command binds the places itself (through ``Server``); with ``--workers`` the
supervisor binds them and each worker serves what it was handed
(``supervised_places``). Binding is not this module's job.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import CommandError
from .options import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["Places", "listening_places", "supervised_places"]


@dataclass(frozen=True, slots=True)
class Places:
    """Where to listen, as the flags (and systemd) said.

    Attributes:
      host: the TCP address as given (``*``: every interface; see ``bind_host``).
      port: the TCP port (0: any free one), or None for no TCP listener.
      uds: the Unix socket path, or None.
      inherited: ``(fd, origin)`` for each listening socket the process was
        given; ``origin`` says where the number came from, for messages
        (``--fd 3``, ``fd 3 from systemd (LISTEN_FDS)``).
    """

    host: str
    port: int | None
    uds: str | None
    inherited: tuple[tuple[int, str], ...]

    @property
    def bind_host(self) -> str | None:
        """The host to bind, as ``Server`` and ``open_listeners`` take it (None: all interfaces)."""
        return None if self.host == "*" else self.host

    def describe(self) -> str:
        """All the places in one phrase: ``127.0.0.1:8000 and unix:/run/app.sock and --fd 3``."""
        places = [] if self.port is None else [f"{self.host}:{self.port}"]
        if self.uds is not None:
            places.append(f"unix:{self.uds}")
        places += [origin for _fd, origin in self.inherited]
        return " and ".join(places)


def listening_places(arguments: Namespace, activated: Sequence[int]) -> Places:
    """The places the flags in ``arguments`` and systemd's ``activated`` descriptors name.

    ``CommandError`` for ``--host`` with no TCP to bind it to (``--uds`` or
    ``--fd`` alone).
    """
    inherited = [(fd, f"--fd {fd}") for fd in arguments.fd]
    inherited += [
        (fd, f"fd {fd} from systemd (LISTEN_FDS)") for fd in activated if fd not in arguments.fd
    ]
    # TCP when asked for, and by default when nothing else says where to listen.
    on_tcp = arguments.port is not None or not (arguments.uds or inherited)
    if arguments.host is not None and not on_tcp:
        raise CommandError("--host needs --port when --uds or --fd says where to listen")
    port = DEFAULT_PORT if arguments.port is None and on_tcp else arguments.port
    return Places(arguments.host or DEFAULT_HOST, port, arguments.uds, tuple(inherited))


def supervised_places(fds: Sequence[int]) -> Places:
    """A ``--workers`` worker's places: the listening sockets its supervisor handed it, no other."""
    handed = tuple((fd, f"fd {fd} from the supervisor") for fd in fds)
    return Places(DEFAULT_HOST, None, None, handed)


def debug_address(arguments: Namespace) -> tuple[str | None, int] | None:
    """Where ``--debug-port``/``--debug-host`` ask for the debug endpoint (None: not asked)."""
    if arguments.debug_port is None:
        return None
    host = arguments.debug_host or DEFAULT_HOST
    return None if host == "*" else host, arguments.debug_port
