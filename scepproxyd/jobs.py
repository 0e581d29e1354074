"""Periodic jobs: each runs on a timer and on demand, never overlapping itself."""

from twisted.application.internet import TimerService
from twisted.internet import defer

from scepproxyd.daemon.logs import get_logger
from scepproxyd.platforms import APPLE_PLATFORMS, PLATFORMS
from scepproxyd.store.models import RESENT_AFTER_EXPIRY

log = get_logger(__name__)


def backends_for(backend: str) -> dict[str, str]:
    """Which delivery backend serves each platform: push backends are Apple-only."""
    if backend == "outbox":
        return {platform: "outbox" for platform in PLATFORMS}
    return dict({platform: backend for platform in APPLE_PLATFORMS}, android="outbox")


class ProcessProfilesJob:
    """Hand every host profile with status NULL to its delivery backend, in batches.

    Claiming is one transaction per batch on the DB thread, so the reactor
    serves requests between batches and a crash leaves each host profile
    either NULL or pending with a deliverable command. Push backends then
    render and send what is due.
    """

    name = "process_profiles"

    def __init__(self, store, batch_size: int, backend_for_platform: dict[str, str], pusher=None):
        self._store = store
        self._batch_size = batch_size
        self._backends = backend_for_platform
        self._pusher = pusher

    async def run(self) -> dict:
        claimed = failed = 0
        while True:
            result = await self._store.claim_host_profiles(self._batch_size, self._backends)
            claimed += len(result.claimed)
            failed += len(result.failed)
            for host_uuid, profile_uuid, detail in result.failed:
                log.warn(
                    "host profile failed: host={host} profile={profile}: {detail}",
                    host=host_uuid, profile=profile_uuid, detail=detail,
                )
            if len(result.claimed) + len(result.failed) < self._batch_size:
                break
        counts = {"claimed": claimed, "failed": failed}
        if self._pusher is not None:
            counts.update(await self._pusher.deliver_due())
        return counts


class RenewalJob:
    """Send host profiles again, with a fresh challenge, before their certificates expire."""

    name = "renew_certificates"

    def __init__(self, store, threshold: float, short_fraction: float, batch_size: int = 1000):
        self._store = store
        self._threshold = threshold
        self._fraction = short_fraction
        self._batch_size = batch_size

    async def run(self) -> dict:
        total = 0
        while True:
            count = await self._store.mark_due_for_renewal(self._threshold, self._fraction, self._batch_size)
            total += count
            if count < self._batch_size:
                return {"renewals_due": total}


class CleanupJob:
    """Delete expired challenges and finished commands so tables do not grow without bound (and, on
    PostgreSQL, put back challenges a killed node left in flight).

    A pending host profile whose latest challenge expired unused (its device
    was offline past ``[challenges] ttl``) is sent again without a retry
    counted: one info line each, as its batch is done.
    """

    name = "cleanup"

    def __init__(self, store, command_retention: float = 7 * 86400.0):
        self._store = store
        self._retention = command_retention

    async def run(self) -> dict:
        expired = await self._store.expire_challenges(on_resent=_log_resent)
        result = {
            "expired_challenges_removed": expired.removed,
            "expired_profiles_resent": len(expired.resent),
            "finished_commands_removed": await self._store.delete_finished_commands(self._retention),
        }
        if getattr(self._store, "engine", "sqlite") == "postgresql":
            # Several nodes: challenges a killed node held in flight go back to their devices.
            result["orphaned_challenges_restored"] = await self._store.restore_orphaned_challenges()
        return result


def _log_resent(resent) -> None:
    for hp in resent:
        log.info(RESENT_AFTER_EXPIRY, host=hp.host_uuid, profile=hp.profile_uuid, ca=hp.ca_name or "-",
                 waited=hp.waited, found_by="cleanup")


class ScheduledJob:
    """One job behind a lock: the timer and the admin's trigger share the same code path.

    A trigger while a run is under way waits for it and then runs again, so
    the caller always gets a run that started after it asked.
    """

    def __init__(self, job, interval: float, clock, metrics=None):
        self.job = job
        self.name = job.name
        self.interval = interval
        self._clock = clock
        self._metrics = metrics
        self._lock = defer.DeferredLock()

    def trigger(self) -> defer.Deferred:
        return self._lock.run(self._run_logged)

    async def _run_logged(self) -> dict:
        started = self._clock.seconds()
        try:
            result = await self.job.run()
        except Exception:
            if self._metrics is not None:
                self._metrics.job_finished(self.name, self._clock.seconds() - started, None)
            raise
        if self._metrics is not None:
            self._metrics.job_finished(self.name, self._clock.seconds() - started, result)
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
