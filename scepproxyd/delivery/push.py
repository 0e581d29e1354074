"""Send due commands through a push backend (NanoMDM), with retries and backoff.

A command stays ``queued`` until the backend has taken it. When the backend
is down the command is retried later with exponential backoff; when it
refuses the command for good, the host profile counts a failed attempt.

Each send renders the profile with a fresh one-time challenge, which lives
``[challenges] ttl``. So that a backlog (a mass assignment, a wave of
renewals) is not flushed faster than devices enroll, leaving challenges to
expire in the MDM's queue, a run sends only while fewer than
``max_unused_challenges`` of the challenges this backend handed over are
still unused; the rest stays queued (no challenge minted) until devices
use theirs or they expire.
"""

from twisted.internet import defer

from scepproxyd.delivery.nanomdm import DeliveryError, backoff_delay
from scepproxyd.delivery.render import HostProfileFailed
from scepproxyd.keys import KeyFileError
from scepproxyd.profiles import ProfileError
from scepproxyd.daemon.logs import get_logger

log = get_logger(__name__)


class PushDelivery:
    def __init__(self, store, renderer, client, clock, backend: str = "nanomdm", batch_size: int = 200, concurrency: int = 8,
                 max_unused_challenges: int = 1000):
        self._store = store
        self._renderer = renderer
        self._client = client
        self._clock = clock
        self._backend = backend
        self._batch_size = batch_size
        self._limit = defer.DeferredSemaphore(concurrency)
        self._max_unused = max_unused_challenges

    async def deliver_due(self) -> dict:
        """Send what is due, in batches, while the challenge budget lasts; fires the counts by outcome."""
        counts = {"delivered": 0, "delivery_retries": 0, "delivery_refused": 0, "delivery_held": 0}
        while True:
            unused = await self._store.count_live_challenges(self._backend)
            room = min(self._batch_size, self._max_unused - unused)
            if room <= 0:
                counts["delivery_held"] = held = await self._store.count_due_commands(self._backend)
                if held:
                    log.info(
                        "{backend} delivery holds {held} due commands: {unused} profiles sent are not enrolled yet"
                        " ([delivery] max_unused_challenges = {limit}); the rest goes as devices use theirs",
                        backend=self._backend, held=held, unused=unused, limit=self._max_unused,
                    )
                return counts
            jobs = await self._store.due_commands(self._backend, room)
            if not jobs:
                return counts
            outcomes = await defer.gatherResults(
                [self._limit.run(lambda job=job: defer.ensureDeferred(self._send(job))) for job in jobs]
            )
            for outcome in outcomes:
                counts[outcome] += 1
            if len(jobs) < room:
                return counts

    async def _send(self, job) -> str:
        try:
            rendered = await self._renderer.render(job)
        except HostProfileFailed:
            return "delivery_refused"  # the renderer marked the host profile failed, naming the missing value
        except (KeyFileError, ProfileError) as e:
            # Nothing a retry would fix: count a failed attempt with the reason.
            await self._store.command_result(job.command_uuid, ok=False, detail="cannot render: %s" % (e,))
            log.error("cannot render command {command} for host {host}: {reason}",
                      command=job.command_uuid, host=job.host_uuid, reason=str(e))
            return "delivery_refused"
        try:
            await self._client.enqueue(job.host_uuid, job.command_uuid, rendered.payload)
        except DeliveryError as e:
            if e.retryable:
                command = await self._store.get_command(job.command_uuid)
                attempts = (command.attempts if command else 0) + 1
                delay = backoff_delay(attempts)
                await self._store.command_delivery_failed(job.command_uuid, str(e), self._clock.seconds() + delay)
                log.warn(
                    "{backend} delivery of command {command} for host {host} failed ({reason}); retry in {delay:.0f} s",
                    backend=self._backend, command=job.command_uuid, host=job.host_uuid, reason=str(e), delay=delay,
                )
                return "delivery_retries"
            await self._store.command_result(job.command_uuid, ok=False, detail=str(e))
            log.warn(
                "{backend} refused command {command} for host {host}: {reason}",
                backend=self._backend, command=job.command_uuid, host=job.host_uuid, reason=str(e),
            )
            return "delivery_refused"
        await self._store.command_delivered(job.command_uuid)
        return "delivered"
