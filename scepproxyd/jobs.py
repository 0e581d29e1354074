"""Periodic jobs run by LoopingCall: today, removing expired one-time challenges."""

from twisted.application.internet import TimerService
from scepproxyd.logs import get_logger

log = get_logger(__name__)


class CleanupJob:
    """Delete challenges past their TTL so the table does not grow without bound."""

    name = "cleanup"

    def __init__(self, store, clock):
        self._store = store
        self._clock = clock

    async def run(self) -> int:
        started = self._clock.seconds()
        removed = await self._store.delete_expired_challenges()
        log.info(
            "job {job} removed {removed} expired challenges in {ms:.1f} ms",
            job=self.name,
            removed=removed,
            ms=(self._clock.seconds() - started) * 1000.0,
        )
        return removed


def job_service(job, interval: float, clock) -> TimerService:
    """A TimerService that runs ``job.run`` every ``interval`` seconds and never overlaps itself.

    LoopingCall waits for the returned Deferred before scheduling the next run,
    and a failed run is logged instead of stopping the timer.
    """
    from twisted.internet import defer

    def run_once():
        d = defer.ensureDeferred(job.run())
        d.addErrback(lambda f: log.failure("job {job} failed", f, job=job.name))
        return d

    service = TimerService(interval, run_once)
    service.clock = clock
    service.setName("job-" + job.name)
    return service
