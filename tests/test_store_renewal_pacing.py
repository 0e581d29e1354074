"""
Renewal pacing on the store, on both engines: the per-CA window counts, the queue it reports, the
renewal job driven on a Clock through a fleet of 10,000 certificates expiring on the same day, and two
nodes sharing one database and one limit.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.daemon.metrics import Metrics
from scepproxyd.jobs import RenewalJob
from scepproxyd.pacing import RenewalPacing
from scepproxyd.timestamps import utc_iso
from support.store import certified_fleet, raw, started_store

DAY, HOUR = 86400.0, 3600.0
THRESHOLD, FRACTION = 30 * DAY, 0.5


def to_next_hour(clock) -> float:
    """Move ``clock`` to the start of the next clock hour (a pacing window's start); fires nothing."""
    clock.advance(HOUR - clock.seconds() % HOUR)
    return clock.seconds()


def started_rows(store, profile=None) -> list[tuple]:
    """``(host, started at, certificate expiry)`` of every host profile sent back for renewal, in start order."""
    conn = raw(store)
    rows = conn.execute(
        "SELECT host_uuid, updated_at, cert_not_after FROM host_profiles"
        " WHERE status IS NULL AND detail LIKE 'renewing: %'" + (" AND profile_uuid = ?" if profile else "")
        + " ORDER BY updated_at, cert_not_after", (profile,) if profile else ()).fetchall()
    conn.close()
    return rows


async def run_as_scheduled(jobs, clock, until: float, timer: float = DAY) -> list[tuple[float, dict]]:
    """
    Run ``jobs`` (one per node, all at once) as their ScheduledJobs would: at every tick of a ``timer``
    of ``[renewal] interval`` and whenever one asks (``next_run_at``), until ``until``. ``(time, result)``
    of each job's run, in order.
    """
    runs, next_tick = [], clock.seconds()
    while clock.seconds() < until:
        results = await defer.gatherResults([defer.ensureDeferred(job.run()) for job in jobs], consumeErrors=True)
        runs.extend((clock.seconds(), result) for result in results)
        if clock.seconds() >= next_tick:
            next_tick += timer
        asked = [job.next_run_at for job in jobs if job.next_run_at is not None]
        clock.advance(min(asked + [next_tick]) - clock.seconds())
    return runs


# -- the store's part ------------------------------------------------------------------------------


class Allow:
    """A pace for the store's part alone: up to ``up_to`` in the window at any time; next_at moves 1 s a start."""

    def __init__(self, up_to):
        self.up_to = up_to

    def allowance(self, window_started, next_at):
        return max(0, self.up_to - window_started)

    def advanced(self, next_at, started):
        return next_at + started


@pytest_twisted.ensureDeferred
async def test_a_window_count_holds_the_limit_soonest_expiry_first(store, clock):
    now = to_next_hour(clock)
    hosts = ["h%d" % i for i in range(10)]
    await certified_fleet(store, "ndes", "wifi", hosts, [now + (10 - i) * DAY for i in range(10)])  # h9 first
    await certified_fleet(store, "acme", "vpn", ["other"], [now + DAY])
    assert await store.due_renewals_by_ca(THRESHOLD, FRACTION) == {"ndes": 10, "acme": 1}

    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 100, now, Allow(3)) == (3, 3, 3.0)
    assert [row[0] for row in started_rows(store)] == ["h9", "h8", "h7"]
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 100, now, Allow(3)) == (0, 3, 3.0)
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 1, now, Allow(5)) == (1, 4, 4.0), "batch"
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 100, now, Allow(5)) == (1, 5, 5.0)
    # A node whose clock is still in the last hour starts none: the count has moved on.
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 100, now - HOUR, Allow(9)) == (0, None, 5.0)
    # The next window counts from 0; the pace goes on.
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 100, now + HOUR, Allow(2)) == (2, 2, 7.0)
    assert await store.due_renewals_by_ca(THRESHOLD, FRACTION) == {"ndes": 3, "acme": 1}
    # Without a pace: every due one of that CA, in batches, and nothing counted.
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 2) == (2, None, None)
    assert await store.start_renewals("ndes", THRESHOLD, FRACTION, 2) == (1, None, None)
    assert await store.due_renewals_by_ca(THRESHOLD, FRACTION) == {"acme": 1}, "another CA's are left alone"
    conn = raw(store)
    assert conn.execute("SELECT ca_name, window_start, started, next_start_at FROM renewal_windows").fetchall() == [
        ("ndes", now + HOUR, 2, 7.0)]
    conn.close()
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        await store.start_renewals("ndes", THRESHOLD, FRACTION, 0)


@pytest_twisted.ensureDeferred
async def test_profiles_naming_no_ca_are_paced_as_dash(store, clock):
    now = clock.seconds()
    await certified_fleet(store, None, "plain", ["p1", "p2"], [now + DAY, now + 2 * DAY])
    assert await store.due_renewals_by_ca(THRESHOLD, FRACTION) == {"-": 2}
    assert await store.start_renewals("-", THRESHOLD, FRACTION, 10, now - now % HOUR, Allow(1)) == (1, 1, 1.0)
    assert [row[0] for row in started_rows(store)] == ["p1"]


@pytest_twisted.ensureDeferred
async def test_the_backlog_counts_the_waiting_and_those_the_pace_would_start_too_late(store, clock):
    now = clock.seconds()
    expiries = [now - 60, now + 1000, now + 1500, now + 3 * DAY]
    await certified_fleet(store, "ndes", "wifi", ["gone", "a", "b", "c"], expiries)
    # The n-th starts by now + n * 400: "gone" has expired; "a" (2nd, by now + 800) and "b" make it.
    assert await store.renewal_backlog("ndes", THRESHOLD, FRACTION, now, 400.0) == (4, 1, now - 60)
    # At one per 600 s, "a" (by now + 1200) and "b" (by now + 1800) miss too.
    assert await store.renewal_backlog("ndes", THRESHOLD, FRACTION, now, 600.0) == (4, 3, now - 60)
    assert await store.renewal_backlog("acme", THRESHOLD, FRACTION, now, 1000.0) == (0, 0, None)


# -- the renewal job on the store ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_job_reports_what_it_deferred_and_what_would_expire(store, clock, logs):
    now = to_next_hour(clock)
    # ndes: 20 an hour (one per 180 s), 2 at once. The soonest two start; of the six left, the next two
    # expire before the pace would reach them for sure (by 390 s + 180 s and 360 s more), the others have days.
    await certified_fleet(store, "ndes", "wifi", ["n%d" % i for i in range(8)],
                          [now + 100, now + 200, now + 300, now + 400] + [now + 10 * DAY] * 4)
    await certified_fleet(store, "acme", "vpn", ["a1", "a2", "a3"], [now + DAY] * 3)
    metrics = Metrics()
    pacing = RenewalPacing(5, HOUR, (("ndes", 20), ("acme", None)))
    job = RenewalJob(store, THRESHOLD, FRACTION, pacing=pacing, clock=clock, metrics=metrics, min_wake=30.0)
    assert await job.run() == {
        "renewals_due": 2 + 3, "renewals_deferred": {"ndes": 6}, "renewals_at_risk": {"ndes": 2}}
    assert [row[0] for row in started_rows(store, "wifi")] == ["n0", "n1"]
    (warning,) = logs.warnings()
    assert warning == (
        "renewal pacing: 2 of the 6 renewals waiting for CA ndes would start after their certificate expires "
        "(the first on %s) at 20 per 3600 s; the limit holds: raise it for ndes ([renewal] ca_limits or limit)"
        % (utc_iso(now + 300),))
    assert job.next_run_at == pacing.pace("ndes", 20, now, 30.0).next_opening(2, now + 360)
    assert now + 180 <= job.next_run_at < now + 360, "the next paced moment, jittered"
    text = metrics.render().decode()
    assert 'scepproxyd_renewals_deferred{ca="ndes"} 6.0' in text
    assert 'scepproxyd_renewals_at_risk{ca="ndes"} 2.0' in text
    assert 'scepproxyd_renewals_deferred{ca="acme"} 0.0' in text

    # Run as scheduled, the rest leave one per 180 s or so; then nothing waits and no early run is asked for.
    runs = await run_as_scheduled([job], clock, until=now + HOUR)
    assert sum(result["renewals_due"] for _, result in runs) == 6
    assert max(result["renewals_due"] for _, result in runs) == 1
    assert runs[-1][1] == {"renewals_due": 1} and job.next_run_at is None
    assert len(started_rows(store, "wifi")) == 8
    text = metrics.render().decode()
    assert 'scepproxyd_renewals_deferred{ca="ndes"} 0.0' in text
    assert 'scepproxyd_renewals_at_risk{ca="ndes"} 0.0' in text


@pytest_twisted.ensureDeferred
async def test_a_ca_limits_name_matching_no_ca_is_warned_about_once(store, clock, logs):
    now = clock.seconds()
    await certified_fleet(store, "ndes", "wifi", ["a"], [now + DAY])
    pacing = RenewalPacing(5, HOUR, (("ndes", 20), ("nedes", 10), ("-", 3)))
    job = RenewalJob(store, THRESHOLD, FRACTION, pacing=pacing, clock=clock, metrics=Metrics(), min_wake=30.0)
    assert (await job.run())["renewals_due"] == 1
    assert logs.warnings() == [
        "renewal pacing: [renewal] ca_limits names nedes, which is no CA here: its limit applies to nothing until"
        " a CA of that name is added (scepproxyctl ca list shows the names)"]
    await job.run()
    assert len(logs.warnings()) == 1, "once per name"


@pytest_twisted.ensureDeferred
async def test_without_limits_the_job_is_what_it_was(store, clock):
    now = clock.seconds()
    await certified_fleet(store, "ndes", "wifi", ["a", "b"], [now + DAY, now + 2 * DAY])
    job = RenewalJob(store, THRESHOLD, FRACTION, pacing=RenewalPacing(None, HOUR), clock=clock, metrics=Metrics())
    assert await job.run() == {"renewals_due": 2}
    assert job.next_run_at is None


@pytest_twisted.ensureDeferred
async def test_ten_thousand_certificates_expiring_on_one_day(store, clock):
    """
    10,000 host profiles of one CA, their certificates all expiring on the same day, all due at once:
    at 300 an hour, no clock hour starts more than 300, every full hour starts exactly 300, no run
    starts more than its share, soonest expiry first, and each starts before its certificate expires.
    """
    limit, min_wake = 300, 600.0  # one per 12 s; runs every 10 minutes start 50
    to_next_hour(clock)
    clock.advance(0.5 * HOUR)  # the first window is half gone
    start = clock.seconds()
    day = start - start % DAY + 3 * DAY  # 48 to 72 hours from now; the fleet needs about 34
    count = 10_000
    hosts = ["h%05d" % i for i in range(count)]
    expiries = [day + (i * 7919 % count) * DAY / count for i in range(count)]  # every 8.64 s, shuffled
    await certified_fleet(store, "ndes", "wifi", hosts, expiries)
    job = RenewalJob(store, THRESHOLD, FRACTION, pacing=RenewalPacing(limit, HOUR), clock=clock,
                     metrics=Metrics(), min_wake=min_wake)

    runs = await run_as_scheduled([job], clock, until=day)

    rows = started_rows(store)
    assert len(rows) == count, "every one renewed"
    assert all(started < expiry for _, started, expiry in rows), "each before its certificate expires"
    per_window = {}
    for _, started, _ in rows:
        per_window[started - started % HOUR] = per_window.get(started - started % HOUR, 0) + 1
    assert max(per_window.values()) <= limit, "the limit held in every window"
    windows = sorted(per_window)
    assert windows == [windows[0] + i * HOUR for i in range(len(windows))], "no idle hour while renewals wait"
    assert all(per_window[w] == limit for w in windows[1:-1]), "the limit used in full, no slower than it says"
    assert per_window[windows[0]] == 51 + 50 + 50, "a burst of one run's worth, then the pace"
    assert len(windows) == 1 + (count - per_window[windows[0]] + limit - 1) // limit
    # Spread through each hour: a run starts what opened since the last one (min_wake at one per 12 s).
    assert max(result["renewals_due"] for _, result in runs) == 51
    # Soonest expiry first: whatever a run starts expires no sooner than what any earlier run started.
    by_run = {}
    for _, started, expiry in rows:
        low, high = by_run.get(started, (expiry, expiry))
        by_run[started] = (min(low, expiry), max(high, expiry))
    moments = sorted(by_run)
    assert all(by_run[a][1] <= by_run[b][0] for a, b in zip(moments, moments[1:]))
    # What each run said it left waiting is what was left; no run saw a certificate at risk.
    left = count
    for moment, result in runs:
        left -= result["renewals_due"]
        assert result.get("renewals_deferred", {}).get("ndes", 0) == left, moment
        assert "renewals_at_risk" not in result
    assert left == 0


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_one_limit(store, clock, database):
    """Two nodes on one database, running the job at the same moments: together they start the limit per window."""
    target, password = database
    other = await started_store(target, reactor, clock, password=password)
    try:
        limit, count = 40, 200
        to_next_hour(clock)
        now = clock.seconds()
        await certified_fleet(store, "ndes", "wifi", ["h%03d" % i for i in range(count)], [now + 3 * DAY] * count)
        pacing = RenewalPacing(limit, HOUR)
        jobs = [RenewalJob(node, THRESHOLD, FRACTION, pacing=pacing, clock=clock, min_wake=120.0)
                for node in (store, other)]
        runs = await run_as_scheduled(jobs, clock, until=now + 6 * HOUR)
    finally:
        await other.stop()
    rows = started_rows(store)
    assert len(rows) == count
    per_window = {}
    for _, started, _ in rows:
        per_window[started - started % HOUR] = per_window.get(started - started % HOUR, 0) + 1
    assert list(per_window.values()) == [limit] * (count // limit), "the limit, together"
    assert sum(result["renewals_due"] for _, result in runs) == count, "each renewal started once, by one node"
