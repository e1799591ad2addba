"""TLS for the command: ``--certfile`` and ``--keyfile`` into a server ``ssl.SSLContext``.

This module owns reading the certificate chain and the private key and
saying, in one line that names the flag and the file, why they cannot be
used: missing, unreadable, not PEM, a key that does not match, a key that
is encrypted. It reads each file before OpenSSL does, because OpenSSL's own
messages (``[SSL] PEM lib``) do not say which file is wrong. The context is
``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``: Python's defaults
for a server (TLS 1.2 and up, its cipher choice), no client certificates.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from .errors import CommandError

__all__ = ["server_ssl_context"]

_CERTIFICATE_MARK: Final = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK: Final = b"PRIVATE KEY-----"


class _EncryptedKey(Exception):
    """OpenSSL asked for the key's password (raised from the password callback)."""


def server_ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server context presenting ``certfile``'s chain with ``keyfile``'s key.

    Without ``keyfile`` the key must be in ``certfile`` (after the chain or
    before it). An encrypted key is refused: a server that starts unattended
    cannot be asked for a password (OpenSSL would prompt on the terminal).
    """
    certificate = _read("--certfile", certfile)
    if _CERTIFICATE_MARK not in certificate:
        raise CommandError(f"--certfile {certfile}: no PEM certificate in it")
    if keyfile is None:
        if _KEY_MARK not in certificate:
            raise CommandError(
                f"--certfile {certfile} holds no private key: give it with --keyfile"
            )
    elif _KEY_MARK not in _read("--keyfile", keyfile):
        raise CommandError(f"--keyfile {keyfile}: no PEM private key in it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=_refuse_password)
    except _EncryptedKey:
        raise CommandError(
            f"{'--keyfile ' + keyfile if keyfile else '--certfile ' + certfile}: the private key "
            "is encrypted; give an unencrypted one (readable by this user only)"
        ) from None
    except ssl.SSLError as exc:
        flags = f"--certfile {certfile}" + (f" and --keyfile {keyfile}" if keyfile else "")
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CommandError(f"{flags}: the private key does not match the certificate") from None
        raise CommandError(f"{flags}: OpenSSL cannot load them: {exc}") from None
    return context


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag} {path}: {exc.strerror or exc}") from None


def _refuse_password() -> str:
    raise _EncryptedKey
