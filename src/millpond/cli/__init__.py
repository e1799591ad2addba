"""The ``millpond`` command: ``millpond serve TARGET`` runs a handler as a server.

This package owns the command line and nothing else; it builds on the public
``Server``. ``command.py`` puts the steps in order (``main``), ``options.py``
defines the flags and their help, ``values.py`` parses each flag's value,
``places.py`` says where to listen, ``target.py`` imports the handler,
``inherited.py`` adopts ``--fd`` and systemd's sockets, ``certificates.py``
loads ``--certfile``/``--keyfile``, ``logs.py`` sends the logs to stderr, and
``running.py`` serves until a signal. With ``--workers``, ``supervisor.py``
runs the worker processes and ``roster.py`` decides what it does about them.
``python -m millpond.cli`` is the same as ``millpond``.
"""

from .command import main

__all__ = ["main"]
