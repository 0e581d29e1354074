"""Jobs on a Clock: they fire every interval, never overlap, and share one code path with triggers."""

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from scepproxyd.jobs import ProcessProfilesJob, RenewalJob, ScheduledJob, backends_for


class SlowJob:
    name = "slow"

    def __init__(self):
        self.started = 0
        self.running = 0
        self.max_running = 0
        self.release = []

    async def run(self):
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        d = defer.Deferred()
        self.release.append(d)
        await d
        self.running -= 1
        return {"runs": self.started}


def test_fires_every_interval_and_never_overlaps():
    clock = Clock()
    job = SlowJob()
    scheduled = ScheduledJob(job, 30, clock)
    timer = scheduled.service()
    timer.startService()
    assert job.started == 1  # TimerService runs at start
    clock.advance(30)
    clock.advance(30)
    assert job.started == 1, "a tick during a run must not start a second one"
    triggered = scheduled.trigger()
    assert job.started == 1 and not triggered.called, "a trigger waits for the run under way"
    job.release[0].callback(None)
    assert job.started == 2 and job.max_running == 1
    job.release[1].callback(None)
    assert triggered.result == {"runs": 2}
    clock.advance(30)
    assert job.started == 3
    job.release[2].callback(None)
    timer.stopService()


class FakeClaimStore:
    """Stands in for the store's claim call: hands out NULL rows in batches."""

    def __init__(self, rows):
        self.rows = rows
        self.calls = []

    def claim_host_profiles(self, limit, backends):
        from scepproxyd.store import ClaimResult

        self.calls.append((limit, backends))
        batch, self.rows = self.rows[:limit], self.rows[limit:]
        return defer.succeed(ClaimResult(claimed=tuple(batch), failed=()))

    def mark_due_for_renewal(self, threshold, fraction, limit):
        self.calls.append((threshold, fraction, limit))
        batch, self.rows = self.rows[:limit], self.rows[limit:]
        return defer.succeed(len(batch))


@pytest_twisted.ensureDeferred
async def test_processing_works_in_batches_and_picks_up_new_rows():
    store = FakeClaimStore(list(range(2500)))
    job = ProcessProfilesJob(store, 1000, backends_for("outbox"))
    assert await job.run() == {"claimed": 2500, "failed": 0}
    assert [c[0] for c in store.calls] == [1000, 1000, 1000]
    store.rows = [1, 2]
    assert await job.run() == {"claimed": 2, "failed": 0}


@pytest_twisted.ensureDeferred
async def test_renewal_loops_until_no_more_due():
    store = FakeClaimStore(list(range(2001)))
    job = RenewalJob(store, 30 * 86400, 0.5, batch_size=1000)
    assert await job.run() == {"renewals_due": 2001}
    assert store.calls[0] == (30 * 86400, 0.5, 1000)


def test_push_backends_serve_apple_only():
    assert backends_for("outbox") == {
        "macos": "outbox", "ios": "outbox", "ipados": "outbox", "android": "outbox", "windows": "outbox"}
    assert backends_for("nanomdm")["macos"] == "nanomdm"
    assert backends_for("nanomdm")["android"] == backends_for("nanomdm")["windows"] == "outbox"


def test_admin_api_doc_lists_every_job():
    """docs/admin-api.md's job table has one row per job class of scepproxyd.jobs, and no other."""
    import inspect
    import re
    from pathlib import Path

    from scepproxyd import jobs

    names = sorted(
        cls.name for _, cls in inspect.getmembers(jobs, inspect.isclass)
        if cls.__module__ == jobs.__name__ and isinstance(getattr(cls, "name", None), str) and hasattr(cls, "run")
    )
    doc = (Path(__file__).resolve().parents[1] / "docs" / "admin-api.md").read_text(encoding="utf-8")
    chapter = doc.split("\n## Jobs\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| `\[", chapter, re.M)
    assert names == ["cleanup", "process_profiles", "renew_certificates"]
    assert sorted(rows) == names
    assert '{"jobs": [%s]}' % ", ".join('"%s"' % n for n in names) in " ".join(chapter.split())


class AskingJob:
    """Asks for its next runs at the moments in ``plan`` (relative to each run), then for none."""

    name = "asking"

    def __init__(self, clock, plan):
        self.clock = clock
        self.plan = list(plan)
        self.runs = []
        self.next_run_at = None

    async def run(self):
        self.runs.append(self.clock.seconds())
        step = self.plan.pop(0) if self.plan else None
        self.next_run_at = None if step is None else self.clock.seconds() + step
        return {}


def test_a_job_may_ask_to_run_before_its_next_tick():
    """The renewal job does while pacing holds renewals back: one wake-up at a time, besides the ticks."""
    clock = Clock()
    job = AskingJob(clock, [10, 15, 0, None])
    scheduled = ScheduledJob(job, 1000, clock)
    timer = scheduled.service()
    timer.startService()
    assert job.runs == [0]
    clock.advance(10)
    clock.advance(15)
    assert job.runs == [0, 10, 25]
    clock.advance(500)
    assert job.runs == [0, 10, 25], "a moment not in the future is no wake-up: a job cannot make it spin"
    clock.advance(475)
    assert job.runs == [0, 10, 25, 1000], "the timer ticks on"
    timer.stopService()


def test_a_trigger_replaces_the_wake_up_and_a_stopped_timer_wakes_nothing():
    clock = Clock()
    job = AskingJob(clock, [100, 50, 30])
    scheduled = ScheduledJob(job, 1000, clock)
    timer = scheduled.service()
    timer.startService()
    clock.advance(20)
    scheduled.trigger()  # asks for +50 from here: the wake-up at 100 is gone
    assert job.runs == [0, 20]
    clock.advance(50)
    assert job.runs == [0, 20, 70]
    timer.stopService()
    clock.advance(30)
    assert job.runs == [0, 20, 70]
    assert not [call for call in clock.getDelayedCalls() if call.active()]


def test_a_job_run_only_by_triggers_asks_for_nothing():
    clock = Clock()
    job = AskingJob(clock, [10])
    ScheduledJob(job, 1000, clock).trigger()
    assert job.runs == [0] and clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_failed_paced_renewal_run_retries_soon_only_while_a_queue_waits():
    from scepproxyd.pacing import RenewalPacing

    class DownStore:
        def due_renewals_by_ca(self, threshold, fraction):
            return defer.fail(RuntimeError("database down"))

    clock = Clock()
    job = RenewalJob(DownStore(), 30 * 86400, 0.5, pacing=RenewalPacing(1000, 3600.0), clock=clock, min_wake=30.0)
    with pytest.raises(RuntimeError):
        await job.run()
    assert job.next_run_at is None, "no queue was waiting: the timer's next tick will do"
    job.next_run_at = 5.0  # a queue was waiting
    clock.advance(10)
    with pytest.raises(RuntimeError):
        await job.run()
    assert job.next_run_at == 40.0
