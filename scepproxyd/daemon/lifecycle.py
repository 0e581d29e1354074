"""Services that give the daemon an orderly start and stop.

twistd stops an application by calling stopService and waiting for the
Deferred. A plain MultiService stops its children all at once, which would
close the database under requests still being served; here children stop one
after another in reverse order, and in-flight requests get a grace period
to finish after the listeners stop accepting.
"""

import gc
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.python.failure import Failure

from scepproxyd.daemon.logs import get_logger
from scepproxyd.store.models import StoreUnavailable

log = get_logger(__name__)


class OrderedMultiService(service.MultiService):
    """Start children in order; stop them in reverse order, each after the previous finished."""

    def stopService(self):
        service.Service.stopService(self)
        d = defer.succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, child=child: defer.maybeDeferred(child.stopService))
            d.addErrback(lambda f, child=child: log.failure("stopping {name} failed", f, name=child.name or child))
        return d


def freeze_start_up_heap() -> None:
    """
    Move everything alive once the daemon has started (modules, settings, wiring) out of the collector's sight.

    A full (generation 2) collection otherwise walks that whole start-up heap
    each time it runs, a stall of the reactor that grows with nothing the
    daemon is doing; objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


class StoreService(service.Service):
    """Opens the store's DB thread on start; closes the database on stop.

    ``ready`` fires once the database is open (or fails with the reason).
    """

    name = "store"

    def __init__(self, store):
        self.store = store
        # This service stops the store in order; the store's own safety net waits until after that.
        store.shutdown_phase = "during"
        self.ready = defer.Deferred()

    def startService(self):
        super().startService()
        d = self.store.start()
        d.addCallback(lambda _: self.store.restore_orphaned_challenges())
        d.addCallback(self._report_orphans)
        d.addCallback(lambda _: self.store.shared_profile_identifiers())
        d.addCallback(self._report_shared_identifiers)

        def settle(result):
            if isinstance(result, Failure):
                self.ready.errback(result)
            else:
                self.ready.callback(None)

        d.addBoth(settle)

    def _report_orphans(self, count):
        if count:
            log.warn("put back {count} one-time challenges that a previous run took but never forwarded",
                     count=count)

    def _report_shared_identifiers(self, shared):
        for kind, identifier, uuids in shared:
            log.warn(
                "profiles {profiles} ({kind}) share the identifier {identifier}: a host's report of it"
                " installed verifies each of them; delete all but one",
                profiles=", ".join(uuids), kind=kind, identifier=identifier,
            )

    def stopService(self):
        super().stopService()
        return self.store.stop()


def write_probe_service(store, interval: float, clock) -> TimerService:
    """Probe database writes every ``interval`` seconds (Database.probe_writes), quietly.

    The store notes failures and recoveries itself (one log line each, and
    /readyz); any other error is logged here and the next tick tries again.
    """

    def probe():
        d = store.probe_writes()
        d.addErrback(lambda f: None if f.check(StoreUnavailable) else log.failure("write probe failed", f))
        return d

    timer = TimerService(interval, probe)
    timer.clock = clock
    timer.setName("write-probe")
    return timer


class HTTPPoolService(service.Service):
    """Closes the upstream connection pool on stop, so shutdown leaves no sockets behind."""

    name = "upstream-pool"

    def __init__(self, pool):
        self.pool = pool

    def stopService(self):
        super().stopService()
        if self.pool is not None:  # no pool: an HTTP client given from outside (tests)
            return self.pool.closeCachedConnections()


class InFlight:
    """Counts requests being served, so shutdown can wait for them."""

    def __init__(self):
        self.count = 0
        self._idle: list[defer.Deferred] = []

    def started(self, request) -> None:
        self.count += 1
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _):
        self.count -= 1
        if self.count == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self) -> defer.Deferred:
        if self.count == 0:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d


class DrainService(service.Service):
    """On stop, wait up to ``grace`` seconds for in-flight requests, then let shutdown cut them."""

    name = "drain"

    def __init__(self, in_flight: InFlight, grace: float, clock):
        self._in_flight = in_flight
        self._grace = grace
        self._clock = clock

    def stopService(self):
        super().stopService()
        if self._in_flight.count == 0:
            return None
        log.info("waiting up to {grace:.0f} s for {count} requests in flight",
                 grace=self._grace, count=self._in_flight.count)
        d = self._in_flight.idle()
        d.addTimeout(self._grace, self._clock)

        def cut(failure):
            failure.trap(defer.TimeoutError)
            log.warn("grace period over: cutting {count} requests still in flight", count=self._in_flight.count)

        return d.addErrback(cut)
