"""Renewal pacing's schedule (scepproxyd.pacing): pure arithmetic on the times it is given, no store."""

import pytest

from scepproxyd.config import parse_settings
from scepproxyd.pacing import RenewalPacing, burst

HOUR = 3600.0
#: The start of a window of an hour (and of a day): windows are aligned to the epoch.
T0 = 1_700_006_400.0


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


def test_a_tenth_may_start_at_once():
    assert [burst(limit) for limit in (1, 9, 10, 25, 1000)] == [1, 1, 1, 2, 100]
    pacing = RenewalPacing(1000, HOUR)
    assert pacing.allowed("ndes", 1000, T0) == 100


@pytest.mark.parametrize("limit", [1, 7, 60, 1000])
def test_the_limit_opens_through_the_window_and_is_spent_by_its_end(limit):
    pacing = RenewalPacing(limit, HOUR)
    seen = [pacing.allowed("ndes", limit, T0 + second) for second in range(0, 3600, 5)]
    assert seen == sorted(seen), "what a window allows never shrinks"
    assert seen[0] == burst(limit) and max(seen) == limit
    assert pacing.allowed("ndes", limit, T0 + HOUR - 0.001) == limit
    assert pacing.allowed("ndes", limit, T0 + HOUR) == burst(limit), "a new window starts over"
    # Evenly: by any moment, no more than the burst plus the slots whose 1/L has begun.
    for second, allowed in zip(range(0, 3600, 5), seen):
        assert allowed <= min(limit, burst(limit) + int(second * limit / HOUR) + 1)


def test_each_slot_opens_at_a_random_moment_of_its_share_the_same_on_every_node():
    limit = 12
    pacing = RenewalPacing(limit, HOUR)
    moments = []
    started = burst(limit)
    while started < limit:
        moment = pacing.next_opening("ndes", limit, T0, started)
        slot = started - burst(limit)
        assert T0 + slot * HOUR / limit <= moment < T0 + (slot + 1) * HOUR / limit
        assert pacing.allowed("ndes", limit, moment) == started + 1
        assert pacing.allowed("ndes", limit, moment - 0.01) == started
        moments.append(moment - T0 - slot * HOUR / limit)
        started += 1
    assert len(set(round(m) for m in moments)) > limit // 2, "not on a grid: %r" % (moments,)
    again = RenewalPacing(limit, HOUR)
    assert [again.next_opening("ndes", limit, T0, s) for s in range(1, limit)] == \
        [pacing.next_opening("ndes", limit, T0, s) for s in range(1, limit)]
    other_ca = [pacing.next_opening("acme", limit, T0, s) for s in range(1, limit)]
    next_window = [pacing.next_opening("ndes", limit, T0 + HOUR, s) - HOUR for s in range(1, limit)]
    mine = [pacing.next_opening("ndes", limit, T0, s) for s in range(1, limit)]
    assert other_ca != mine and next_window != mine, "CAs and windows do not tick in step"


def test_next_opening_once_the_window_is_spent_or_when_one_may_start_now():
    pacing = RenewalPacing(10, HOUR)
    assert pacing.next_opening("ndes", 10, T0 + 60, 10) == T0 + HOUR
    assert pacing.next_opening("ndes", 10, T0 + 60, 11) == T0 + HOUR
    assert pacing.next_opening("ndes", 10, T0 + 60, 0) == T0 + 60  # the burst is not used yet
