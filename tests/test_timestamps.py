"""The one way times are written for people: ISO 8601 in UTC, to the second."""

import time

from scepproxyd.timestamps import utc_iso, utc_iso_or_none


def test_a_time_is_written_in_utc_to_the_second():
    assert utc_iso(0) == "1970-01-01T00:00:00+00:00"
    assert utc_iso(1714564800.999) == "2024-05-01T12:00:00+00:00"


def test_the_local_time_zone_does_not_show(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert utc_iso(1714564800) == "2024-05-01T12:00:00+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_missing_time_stays_missing():
    assert utc_iso_or_none(None) is None
    assert utc_iso_or_none(1714564800) == "2024-05-01T12:00:00+00:00"
