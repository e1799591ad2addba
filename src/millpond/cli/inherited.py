"""Listening sockets the process inherits: ``--fd N`` and systemd socket activation.

This module owns turning file descriptor numbers into listening sockets the
server can adopt, and refusing, in one line that names the descriptor, one
that is not open, not a socket, not a stream socket, or not listening. Who
bound them (systemd, a supervisor, a test) is not its business; it never
binds anything itself.

Socket activation, as ``sd_listen_fds(3)`` defines it: systemd passes the
sockets of a ``.socket`` unit as descriptors 3, 4, ... and sets
``LISTEN_FDS`` (how many) and ``LISTEN_PID`` (the process they are for).
They are ours only when ``LISTEN_PID`` is this process: a child started by
an activated parent sees the parent's variables and must leave the
descriptors alone. Once taken, the variables are removed from the
environment and the descriptors marked close-on-exec, as
``sd_listen_fds(1)`` does, so that a program the handler starts does not
take them too (or hold the listener open after the server has closed it).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import MutableMapping, Sequence
from typing import Final

from .errors import CommandError

__all__ = ["SD_LISTEN_FDS_START", "adopt_listeners", "take_activation_fds"]

# The first descriptor systemd passes (sd-daemon.h: after stdin, stdout, stderr).
SD_LISTEN_FDS_START: Final = 3

_ACTIVATION_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def take_activation_fds(environ: MutableMapping[str, str], pid: int) -> list[int]:
    """The descriptors systemd passed to process ``pid``, removing the variables that said so.

    Returns ``[]``, and leaves ``environ`` as it is, unless ``LISTEN_PID`` is
    ``pid``. ``CommandError`` if ``LISTEN_FDS`` is not a count.
    """
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return []
    listen_fds = environ.get("LISTEN_FDS", "").strip()
    for name in _ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if not listen_fds.isdigit():
        raise CommandError(
            f"socket activation: LISTEN_FDS must be a number of descriptors, not {listen_fds!r}"
        )
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(listen_fds)))


def adopt_listeners(fds: Sequence[tuple[int, str]]) -> list[socket.socket]:
    """Each ``(fd, origin)`` as a listening socket; ``CommandError`` names the origin of a bad one.

    ``origin`` says where the number came from, for the message (``--fd 3``).
    All or nothing: when one fails, the sockets already made are let go of
    without closing their descriptors.
    """
    adopted: list[socket.socket] = []
    try:
        for fd, origin in fds:
            adopted.append(_adopt(fd, origin))
    except BaseException:
        for sock in adopted:
            sock.detach()
        raise
    for sock in adopted:
        sock.set_inheritable(False)
    return adopted


def _adopt(fd: int, origin: str) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise CommandError(
                f"{origin}: no such file descriptor (nothing was passed to this process there)"
            ) from None
        raise CommandError(f"{origin}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise CommandError(f"{origin} is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise CommandError(f"{origin} is not a stream socket (millpond serves TCP, Unix streams)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise CommandError(f"{origin} is a socket that is not listening (call listen() first)")
    return sock
