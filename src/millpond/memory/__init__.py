"""Memory as a budget: the layer that decides how many buffer bytes exist and who holds them.

It does no socket I/O: ``limiter.py`` (the byte budget and its wait queue,
with its pure bookkeeping and read rules in ``ledger.py``), ``buffers.py`` and
``lease.py`` (the pool and its leases), ``sizeclasses.py`` (the layout of
pooled memory), ``leaks.py`` (leak reports) and ``readsize.py`` (the
adaptive read size). The public names are importable from ``millpond``.
"""
