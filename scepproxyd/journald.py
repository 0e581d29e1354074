"""``scepproxyd.journald.observer``, the name twistd's ``--logger`` is given.

The shipped unit file (systemd/scepproxyd.service) and docs/operations.md name
this path, and so do unit files already installed on machines: it stays as a
re-export of L{scepproxyd.daemon.journald}, where the observer lives.
"""

from scepproxyd.daemon.journald import observer

__all__ = ["observer"]
