"""How the daemon writes a moment down for people: ISO 8601 in UTC, to the second.

The admin API's JSON, the texts the store keeps (its SQL function
``utc_iso``) and a backup's manifest all show times in this one form, so a
person or a script comparing them never meets a local time, another offset
or a fraction of a second. One function writes it for all of them.
"""

from __future__ import annotations

import datetime


def utc_iso(seconds: float) -> str:
    """``seconds`` since the epoch as ``2024-05-01T12:00:00+00:00``."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def utc_iso_or_none(seconds: float | None) -> str | None:
    """L{utc_iso}, and None for a moment that is not there (never used, not revoked)."""
    return None if seconds is None else utc_iso(seconds)
