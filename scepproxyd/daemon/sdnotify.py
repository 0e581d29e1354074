"""Tell systemd (Type=notify) when the daemon is ready and when it stops.

Twisted has no sd_notify; this is the small part of the protocol we need: a
datagram to $NOTIFY_SOCKET. READY=1 goes out only after every listener is
bound and the database is open, so systemd starts dependents, and reports
"started", only when requests can be served.
"""

import os
import socket

from twisted.application import service
from twisted.internet import defer

from scepproxyd.daemon.logs import get_logger

log = get_logger(__name__)


def notify(message: str, environ=os.environ) -> bool:
    """Send one sd_notify message; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    return True


class SystemdNotifier(service.Service):
    """Last child of the daemon's MultiService: started after the others, stopped first."""

    name = "systemd-notify"

    def __init__(self, listeners, ready: list, environ=os.environ):
        self._listeners = listeners
        self._ready = ready
        self._environ = environ

    def startService(self):
        super().startService()
        # Each strports service exposes the Deferred of its listen() call.
        waiting = [getattr(svc, "_waitingForPort", None) for svc in self._listeners]
        waits = [d for d in waiting if d is not None] + [r() for r in self._ready]
        d = defer.gatherResults([defer.maybeDeferred(lambda w=w: w) for w in waits], consumeErrors=True)

        def ready(_):
            if notify("READY=1\nSTATUS=serving", self._environ):
                log.info("told systemd READY=1")

        d.addCallbacks(ready, lambda f: log.failure("not ready: a listener or the database failed", f))

    def stopService(self):
        super().stopService()
        notify("STOPPING=1", self._environ)
