"""Periodic jobs: each runs on a timer and on demand, never overlapping itself."""

from twisted.application.internet import TimerService
from twisted.internet import defer

from scepproxyd.daemon.logs import get_logger
from scepproxyd.platforms import APPLE_PLATFORMS, PLATFORMS
from scepproxyd.store.models import RESENT_AFTER_EXPIRY, RESENT_AFTER_STUCK
from scepproxyd.timestamps import utc_iso

log = get_logger(__name__)


def backends_for(backend: str) -> dict[str, str]:
    """Which delivery backend serves each platform: push backends are Apple-only, the rest use the outbox."""
    return {platform: backend if platform in APPLE_PLATFORMS else "outbox" for platform in PLATFORMS}


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
    """
    Send host profiles again, with a fresh challenge, before their certificates expire.

    Without limits (``pacing`` None or unlimited) every due host profile
    goes back to NULL at once, soonest expiry first. With them
    (scepproxyd.pacing explains the pace) each CA starts only what its pace
    and its window's limit allow now; the rest wait, reported per CA in the result
    (``renewals_deferred``) and in ``scepproxyd_renewals_deferred{ca}``,
    and ``next_run_at`` asks the scheduler to run again when the next one
    may start (never sooner than ``min_wake``: the processing job hands
    NULL host profiles to devices no faster than that anyway). Those the
    pace would start only after their certificate expired are counted
    (``renewals_at_risk``) and warned about on every run: the limit holds.
    """

    name = "renew_certificates"

    def __init__(
        self, store, threshold: float, short_fraction: float, batch_size: int = 1000,
        pacing=None, clock=None, metrics=None, min_wake: float = 30.0,
    ):
        self._store = store
        self._threshold = threshold
        self._fraction = short_fraction
        self._batch_size = batch_size
        self._pacing = pacing
        self._clock = clock
        self._metrics = metrics
        self._min_wake = min_wake
        #: When this job wants its next run, if sooner than its timer's (pacing holds renewals back).
        self.next_run_at = None
        #: ``ca_limits`` names already warned about as matching no CA (once each per process).
        self._unmatched_warned = set()

    async def run(self) -> dict:
        if self._pacing is None or self._pacing.unlimited:
            total = 0
            while True:
                count = await self._store.mark_due_for_renewal(self._threshold, self._fraction, self._batch_size)
                total += count
                if count < self._batch_size:
                    return {"renewals_due": total}
        return await self._run_paced()

    async def _warn_unmatched_limits(self) -> None:
        """
        A ``[renewal] ca_limits`` name that matches no CA limits nothing: say so, once per name.

        A typo there would otherwise leave that CA at the default limit
        without a word. A CA added later under that name is simply matched.
        """
        named = {name for name, _ in self._pacing.ca_limits if name != "-"} - self._unmatched_warned
        if not named:
            return
        unmatched = named - {ca.name for ca in await self._store.list_cas()}
        for name in sorted(unmatched):
            self._unmatched_warned.add(name)
            log.warn(
                "renewal pacing: [renewal] ca_limits names {name}, which is no CA here: its limit applies to "
                "nothing until a CA of that name is added (scepproxyctl ca list shows the names)", name=name,
            )

    async def _run_paced(self) -> dict:
        now = self._clock.seconds()
        await self._warn_unmatched_limits()
        if self.next_run_at is not None:  # while a queue is paced, a run that fails tries again soon
            self.next_run_at = now + self._min_wake
        due = await self._store.due_renewals_by_ca(self._threshold, self._fraction)
        started, deferred, at_risk, wake = 0, {}, {}, None
        for ca_name in sorted(due):
            limit = self._pacing.limit_for(ca_name)
            if limit is None:
                started += (await self._start_paced(ca_name, None, None))[0]
                continue
            pace = self._pacing.pace(ca_name, limit, now, self._min_wake)
            count, window_started, next_at = await self._start_paced(ca_name, self._pacing.window_start(now), pace)
            started += count
            if count >= due[ca_name]:
                continue
            if window_started is None:  # this node's clock is behind the window the database counts
                window_started = limit
            # The job wakes at most min_wake after each paced moment.
            waiting, missing, earliest = await self._store.renewal_backlog(
                ca_name, self._threshold, self._fraction, pace.waiting_bound(next_at) + self._min_wake, pace.spacing)
            if not waiting:
                continue
            deferred[ca_name] = waiting
            opening = pace.next_opening(window_started, next_at)
            wake = opening if wake is None else min(wake, opening)
            if missing:
                at_risk[ca_name] = missing
                log.warn(
                    "renewal pacing: {missing} of the {waiting} renewals waiting for CA {ca} would start after "
                    "their certificate expires (the first on {expiry}) at {limit} per {interval:g} s; the limit "
                    "holds: raise it for {ca} ([renewal] ca_limits or limit)",
                    missing=missing, waiting=waiting, ca=ca_name, expiry=utc_iso(earliest), limit=limit,
                    interval=self._pacing.interval,
                )
        if self._metrics is not None:
            self._metrics.set_renewal_queue(deferred, at_risk, due)
        self.next_run_at = None if wake is None else max(wake, now + self._min_wake)
        result = {"renewals_due": started}
        if deferred:
            result["renewals_deferred"] = deferred
        if at_risk:
            result["renewals_at_risk"] = at_risk
        return result

    async def _start_paced(self, ca_name: str, window: float | None, pace) -> tuple[int, int | None, float]:
        """
        What the CA's pace allows now, in batches; ``(started, the window's count, next_at)`` after.

        ``window`` and ``pace`` None: a CA without a limit, every due host profile.
        """
        total = 0
        while True:
            count, window_started, next_at = await self._store.start_renewals(
                ca_name, self._threshold, self._fraction, self._batch_size, window, pace)
            total += count
            if count < self._batch_size:
                return total, window_started, next_at


class CleanupJob:
    """Delete expired challenges and finished commands so tables do not grow without bound (and, on
    PostgreSQL, put back challenges a killed node left in flight).

    A pending host profile whose latest challenge expired unused (its device
    was offline past ``[challenges] ttl``) is sent again without a retry
    counted, and so is one its agent fetched and never reported on within
    ``[delivery] stuck_after`` (stuck "delivering"): one info line each, as
    its batch is done.
    """

    name = "cleanup"

    def __init__(self, store, command_retention: float = 7 * 86400.0, stuck_after: float = 12 * 3600.0):
        self._store = store
        self._retention = command_retention
        self._stuck_after = stuck_after

    async def run(self) -> dict:
        expired = await self._store.expire_challenges(on_resent=_log_resent)
        stuck = await self._store.recover_stuck_deliveries(self._stuck_after, on_resent=_log_stuck)
        result = {
            "expired_challenges_removed": expired.removed,
            "expired_profiles_resent": len(expired.resent),
            "stuck_deliveries_resent": len(stuck),
            "finished_commands_removed": await self._store.delete_finished_commands(self._retention),
        }
        if getattr(self._store, "engine", "sqlite") == "postgresql":
            # Several nodes: challenges a killed node held in flight go back to their devices.
            result["orphaned_challenges_restored"] = await self._store.restore_orphaned_challenges()
        return result


def _log_stuck(resent) -> None:
    for hp in resent:
        log.info(RESENT_AFTER_STUCK, host=hp.host_uuid, profile=hp.profile_uuid, ca=hp.ca_name or "-",
                 waited=hp.waited)


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
        self._timer = None
        self._wake = None

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
        finally:
            self._wake_when_asked()
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

    def _wake_when_asked(self) -> None:
        """
        Run again at ``job.next_run_at`` if the job asks (the renewal job does while pacing holds
        renewals back), besides the timer's ticks.

        One wake-up at a time, replaced after every run; none unless the
        timer runs, and none for a moment that is not in the future, so a
        job can never make the scheduler spin. One left over when the timer
        stops finds it stopped and does nothing.
        """
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        at = getattr(self.job, "next_run_at", None)
        if at is None or self._timer is None or not self._timer.running or at <= self._clock.seconds():
            return
        self._wake = self._clock.callLater(at - self._clock.seconds(), self._woken)

    def _woken(self) -> None:
        self._wake = None
        if self._timer is not None and self._timer.running:
            self._tick()

    def service(self) -> TimerService:
        """A TimerService; LoopingCall waits for each run before scheduling the next."""
        timer = self._timer = TimerService(self.interval, self._tick)
        timer.clock = self._clock
        timer.setName("job-" + self.name)
        return timer
