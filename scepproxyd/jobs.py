"""Periodic jobs: each runs on a timer and on demand, never overlapping itself."""

from twisted.application.internet import TimerService
from twisted.internet import defer

from scepproxyd.logs import get_logger

log = get_logger(__name__)


class CleanupJob:
    """Delete challenges past their TTL so the table does not grow without bound."""

    name = "cleanup"

    def __init__(self, store):
        self._store = store

    async def run(self) -> dict:
        return {"expired_challenges_removed": await self._store.delete_expired_challenges()}


class ScheduledJob:
    """One job behind a lock: the timer and the admin's trigger share the same code path.

    A trigger while a run is under way waits for it and then runs again, so
    the caller always gets a run that started after it asked.
    """

    def __init__(self, job, interval: float, clock):
        self.job = job
        self.name = job.name
        self.interval = interval
        self._clock = clock
        self._lock = defer.DeferredLock()

    def trigger(self) -> defer.Deferred:
        return self._lock.run(self._run_logged)

    async def _run_logged(self) -> dict:
        started = self._clock.seconds()
        result = await self.job.run()
        log.info(
            "job {job} finished in {ms:.1f} ms: {result}",
            job=self.name,
            ms=(self._clock.seconds() - started) * 1000.0,
            result=" ".join("%s=%s" % item for item in sorted(result.items())),
        )
        return result

    def _tick(self) -> defer.Deferred:
        # Skip a tick rather than queue behind a long run (e.g. a manual trigger).
        if self._lock.locked:
            return defer.succeed(None)
        d = self.trigger()
        d.addErrback(lambda f: log.failure("job {job} failed", f, job=self.name))
        return d

    def service(self) -> TimerService:
        """A TimerService; LoopingCall waits for each run before scheduling the next."""
        timer = TimerService(self.interval, self._tick)
        timer.clock = self._clock
        timer.setName("job-" + self.name)
        return timer
