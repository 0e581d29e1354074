"""A cap on each listener's open connections, and the open-files limit that cap needs.

Without a cap, idle sockets use up the process's file descriptors and then
everything that needs one fails: accepting on the admin listener, opening
the database, reaching an upstream CA. So each listener keeps at most
``max_connections`` open: a connection over the cap is closed as soon as it
is accepted (before TLS, before a byte is read), counted in
``scepproxyd_connections_refused_total`` and reported in a warn line at most
once a minute. The admin listener has its own cap, and serves /healthz and
/readyz too, so a device listener held full by idle sockets cannot take the
admin API or the health checks with it. Idle connections are closed after
``[server] idle_timeout``.

Twisted's ``LimitTotalConnectionsFactory`` does the counting but neither
counts nor reports what it refuses; this is the same idea on
``WrappingFactory``, whose ``protocols`` mapping is the set of open
connections (a wrapper registers itself when its connection is made and
unregisters when it is lost).
"""

from __future__ import annotations

import resource

from twisted.protocols.policies import WrappingFactory

from scepproxyd.daemon.logs import get_logger

log = get_logger(__name__)

#: Seconds between two warn lines about refused connections on one listener.
WARN_EVERY = 60.0
#: Descriptors beyond the connections: database, its -wal/-shm, log files, journald, epoll, wakers, CLI/backups.
HEADROOM = 64


class ConnectionCap(WrappingFactory):
    """Wraps a listener's factory; refuses connections while ``limit`` are open."""

    def __init__(self, wrapped, limit: int, listener: str, setting: str, clock, metrics=None):
        super().__init__(wrapped)
        self.limit = limit
        self.listener = listener
        self._setting = setting
        self._clock = clock
        self._metrics = metrics
        self._refused_since_warning = 0
        self._last_warning: float | None = None

    @property
    def open(self) -> int:
        return len(self.protocols)

    def buildProtocol(self, addr):
        if len(self.protocols) >= self.limit:
            self._refuse(addr)
            return None  # the port closes the accepted socket at once
        return super().buildProtocol(addr)

    def registerProtocol(self, p):
        super().registerProtocol(p)
        if self._metrics is not None:
            self._metrics.connection_opened(self.listener)

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        if self._metrics is not None:
            self._metrics.connection_closed(self.listener)

    def _refuse(self, addr) -> None:
        if self._metrics is not None:
            self._metrics.connection_refused(self.listener)
        self._refused_since_warning += 1
        now = self._clock.seconds()
        if self._last_warning is not None and now - self._last_warning < WARN_EVERY:
            return
        log.warn(
            "{listener} is at its cap of {limit} open connections: closed {count} new connections since the "
            "last such line, the latest from {peer} ({setting}; docs/operations.md, Connection limits)",
            listener=self.listener, limit=self.limit, count=self._refused_since_warning,
            peer=getattr(addr, "host", None) or str(addr), setting=self._setting,
        )
        self._refused_since_warning = 0
        self._last_warning = now


class OpenFilesError(Exception):
    """The open-files limit cannot hold the configured connection caps; ``str()`` says what to change."""


def open_files_needed(server_connections: int, admin_connections: int) -> int:
    """
    Descriptors the caps can use at once: each device connection may hold one
    connection to an upstream CA while it is proxied, plus the admin
    connections, plus ``HEADROOM`` for everything else.
    """
    return 2 * server_connections + admin_connections + HEADROOM


def ensure_open_files(needed: int, getrlimit=resource.getrlimit, setrlimit=resource.setrlimit) -> int | None:
    """
    Make sure RLIMIT_NOFILE's soft limit is at least ``needed``, raising it up to the hard limit.

    Returns the new soft limit when it was raised, None when it was enough;
    raises L{OpenFilesError} when the hard limit is too low.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OpenFilesError(
            "the connection caps ([server] max_connections, [admin] max_connections) need up to %d open files, "
            "but the open-files limit (RLIMIT_NOFILE) is %d, hard limit %d: raise LimitNOFILE in the systemd unit "
            "(or ulimit -n) to at least %d, or lower max_connections" % (needed, soft, hard, needed)
        )
    try:
        setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (OSError, ValueError) as e:
        raise OpenFilesError(
            "the connection caps need up to %d open files but the open-files limit (RLIMIT_NOFILE) is %d and "
            "raising it failed (%s): set LimitNOFILE in the systemd unit (or ulimit -n) to at least %d"
            % (needed, soft, getattr(e, "strerror", None) or e, needed)
        ) from None
    return needed
