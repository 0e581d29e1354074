"""Jobs on a Clock: they fire every interval, never overlap, and share one code path with triggers."""

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
    assert backends_for("outbox") == {"macos": "outbox", "ios": "outbox", "ipados": "outbox", "android": "outbox"}
    assert backends_for("nanomdm")["macos"] == "nanomdm"
    assert backends_for("nanomdm")["android"] == "outbox"


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
