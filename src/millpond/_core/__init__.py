"""Readiness and parking: the layer that talks to Trio's scheduler and to epoll.

It imports Trio and nothing of millpond's: ``poller.py`` (which socket may be
read or written, and who is parked on it), ``traps.py`` (parking and yielding
without allocating, proven in the first run) and ``needs_trio.py`` (the one
error for code called outside a Trio run).
"""
