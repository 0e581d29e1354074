"""Renewal pacing's arithmetic (scepproxyd.pacing): pure functions of the times they are given, no store."""

from scepproxyd.config import parse_settings
from scepproxyd.pacing import RenewalPacing, burst, jitter

HOUR = 3600.0
#: The start of a window of an hour (and of a day): windows are aligned to the epoch.
T0 = 1_700_006_400.0
LONG_AGO = 0.0  # next_start_at of a CA that never started a renewal


def test_windows_are_aligned_to_the_epoch():
    pacing = RenewalPacing(1000, HOUR)
    assert T0 % 86400 == 0
    assert pacing.window_start(T0) == T0
    assert pacing.window_start(T0 + 1.5 * HOUR) == T0 + HOUR
    assert RenewalPacing(10, 600.0).window_start(T0 + 599.9) == T0


def test_limits_per_ca_and_unlimited():
    pacing = RenewalPacing(1000, HOUR, (("ndes", 200), ("builtin", None)))
    assert (pacing.limit_for("ndes"), pacing.limit_for("builtin"), pacing.limit_for("other")) == (200, None, 1000)
    assert not pacing.unlimited
    assert RenewalPacing(None, HOUR).unlimited
    assert RenewalPacing(None, HOUR, (("builtin", None),)).unlimited
    assert not RenewalPacing(None, HOUR, (("ndes", 5),)).unlimited


def test_from_settings():
    settings = parse_settings("[renewal]\nlimit = 50\nlimit_interval = 10m\nca_limits = ndes:5\n", "x.ini")
    assert RenewalPacing.from_settings(settings.renewal) == RenewalPacing(50, 600.0, (("ndes", 5),))


def test_a_tenth_may_start_at_once_after_a_quiet_spell():
    assert [burst(limit) for limit in (1, 9, 10, 25, 1000)] == [1, 1, 1, 2, 100]
    pace = RenewalPacing(1000, HOUR).pace("ndes", 1000, T0 + 0.9 * HOUR)
    assert pace.allowance(0, LONG_AGO) == 100, "time nobody needed is not saved up"
    assert pace.allowance(950, LONG_AGO) == 50, "the window's cap"
    assert pace.allowance(1000, LONG_AGO) == 0


def test_then_one_per_spacing():
    pacing = RenewalPacing(60, HOUR)  # one a minute, 6 at once
    pace = pacing.pace("ndes", 60, T0)
    assert (pace.spacing, pace.allowance(0, LONG_AGO)) == (60.0, 6)
    next_at = pace.advanced(LONG_AGO, 6)
    assert next_at == T0 + 360
    assert pace.allowance(6, next_at) == 0
    # One may start once next_at is no more than the burst's share (5 spacings) ahead: at T0 + 60.
    assert pacing.pace("ndes", 60, T0 + 59.9).allowance(6, next_at) == 0
    assert pacing.pace("ndes", 60, T0 + 60).allowance(6, next_at) == 1
    assert pacing.pace("ndes", 60, T0 + 600).allowance(6, next_at) == 6, "at most the burst, however long since"
    later = pacing.pace("ndes", 60, T0 + 300)
    assert later.allowance(6, next_at) == 5
    assert later.advanced(next_at, 5) == T0 + 660


def test_the_burst_holds_what_opens_between_two_runs():
    """A job that wakes every 10 minutes at 300 an hour starts 50 a run, not the burst's 30."""
    pacing = RenewalPacing(300, HOUR)
    pace = pacing.pace("ndes", 300, T0, wake=600.0)
    assert pace.allowance(0, LONG_AGO) == 51
    next_at = pace.advanced(LONG_AGO, 51)
    for run in range(1, 5):
        pace = pacing.pace("ndes", 300, T0 + run * 600, wake=600.0)
        assert pace.allowance(51 + (run - 1) * 50, next_at) == 50
        next_at = pace.advanced(next_at, 50)


def test_started_as_soon_as_allowed_the_limit_holds_in_every_window_at_an_even_pace():
    """Start whatever is allowed, every 7 s for 5 hours: the limit in every window, spread through it."""
    limit = 120  # one per 30 s, 12 at once
    pacing = RenewalPacing(limit, HOUR)
    started_at, window_counts, next_at = [], {}, LONG_AGO
    for second in range(0, 5 * 3600, 7):
        now = T0 + second
        window = pacing.window_start(now)
        pace = pacing.pace("ndes", limit, now)
        n = pace.allowance(window_counts.get(window, 0), next_at)
        window_counts[window] = window_counts.get(window, 0) + n
        next_at = pace.advanced(next_at, n)
        started_at.extend([now] * n)
    assert list(window_counts.values()) == [limit] * 5
    # In any 5 minutes, the burst and 10 (5 min at 2 a minute) at most, never the hour's 120.
    busiest = max(sum(1 for t in started_at if T0 + start <= t < T0 + start + 300) for start in range(0, 5 * 3600, 7))
    assert busiest <= burst(limit) + 10 + 1
    # And between a window's burst and its limit, one per 30 s.
    second_window = [t for t in started_at if T0 + HOUR + 60 <= t < T0 + HOUR + 3000]
    gaps = [b - a for a, b in zip(second_window, second_window[1:])]
    assert all(28 <= gap <= 35 for gap in gaps), gaps


def test_next_opening_is_the_paced_moment_plus_jitter_or_the_next_window():
    pacing = RenewalPacing(10, HOUR)  # one per 360 s, 1 at once
    pace = pacing.pace("ndes", 10, T0 + 100)
    next_at = pace.advanced(LONG_AGO, 1)  # T0 + 460
    opening = pace.next_opening(1, next_at)
    assert next_at <= opening < next_at + 360
    assert opening == next_at + jitter("ndes", next_at) * 360
    assert pacing.pace("ndes", 10, opening).allowance(1, next_at) == 1
    assert pace.next_opening(10, next_at) == T0 + HOUR, "the window's limit is spent"
    assert pace.next_opening(0, LONG_AGO) == T0 + 100, "one may start already"


def test_jitter_is_the_same_on_every_node_and_differs_between_cas_and_moments():
    assert jitter("ndes", T0) == jitter("ndes", T0)
    values = {jitter(ca, T0 + i * 360) for ca in ("ndes", "acme") for i in range(50)}
    assert len(values) == 100 and all(0 <= v < 1 for v in values)
    assert 0.3 < sum(values) / len(values) < 0.7


def test_the_bound_on_when_the_waiting_start():
    pace = RenewalPacing(60, HOUR).pace("ndes", 60, T0)
    assert pace.waiting_bound(T0 + 600) == T0 + 600
    assert pace.waiting_bound(LONG_AGO) == T0
