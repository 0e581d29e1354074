"""
Renewal pacing: how many renewals each CA may start, and when.

Why: a fleet enrolled on one day falls due on one day. Sent back all at
once, its host profiles mint thousands of one-time challenges together, the
CA (NDES, typically) is swamped, and challenges expire unused while devices
queue for it. So renewals start per CA at a pace the admin sets: at most
``limit`` in each ``interval`` (``[renewal] limit``, ``limit_interval``,
``ca_limits``), soonest expiry first.

How a window's limit L opens (``allowed``):

- **Windows** are the intervals of the epoch (for ``1h``, each clock hour
  UTC). The count of renewals started in the current window is kept per CA
  in the database (store.renewals), so nodes sharing PostgreSQL hold one
  limit between them.
- **Burst**: a tenth of L (at least one) may start at once, so the few
  certificates that fall due together on a small site never wait.
- **Pace with jitter**: the rest opens through the window, one renewal per
  1/L of it; slot ``i`` opens at a random moment within its own 1/L. So a
  backlog leaves evenly, not as L renewals at the top of each hour, and
  with a random phase, so windows, CAs and sites do not tick in step; and
  a fleet renewed this way comes back spread the next time, since its new
  certificates expire as spread as they were started. The random moment
  is a hash of (CA, window, slot), not a random generator's draw: every
  node computes the same schedule without sharing any state, and a test is
  repeatable.

Why not a random pick order (another way to jitter): it spreads nothing in
time, and it would start a certificate with weeks left before one expiring
tomorrow.

A limit holds even when it makes certificates miss their expiry: it is the
admin's statement of what the CA can take, and going past it is what
expires challenges unused, which renews nothing. The renewal job warns
instead, naming the CA and how many (scepproxyd.jobs.RenewalJob).
"""

from __future__ import annotations

import hashlib
import math

import attrs

#: A tenth of a window's limit may start at once.
BURST_SHARE = 10


def burst(limit: int) -> int:
    """How many of a window's ``limit`` may start at its very beginning."""
    return max(1, limit // BURST_SHARE)


def _jitter(ca_name: str, window_start: float, slot: int) -> float:
    """Where in its 1/L of the window slot ``slot`` opens: a fraction in [0, 1), the same on every node."""
    digest = hashlib.sha256(("%s\0%.6f\0%d" % (ca_name, window_start, slot)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@attrs.frozen
class RenewalPacing:
    """The limits of ``[renewal]`` and the schedule they make; pure arithmetic on times it is given."""

    #: Renewals per CA per window, for a CA ``ca_limits`` does not name; None: no limit.
    limit: int | None
    #: The window's length in seconds.
    interval: float
    #: ``((ca_name, limit or None), ...)``.
    ca_limits: tuple = ()

    @classmethod
    def from_settings(cls, renewal) -> "RenewalPacing":
        """From ``Settings.renewal``."""
        return cls(renewal.limit, renewal.limit_interval, renewal.ca_limits)

    @property
    def unlimited(self) -> bool:
        """No CA has a limit: renewals start as soon as they are due, as before pacing."""
        return self.limit is None and all(limit is None for _, limit in self.ca_limits)

    def limit_for(self, ca_name: str) -> int | None:
        """The CA's limit per window (``"-"`` stands for profiles naming no CA), or None."""
        return dict(self.ca_limits).get(ca_name, self.limit)

    def window_start(self, now: float) -> float:
        return math.floor(now / self.interval) * self.interval

    def _slot_opens(self, ca_name: str, limit: int, window_start: float, slot: int) -> float:
        return window_start + (slot + _jitter(ca_name, window_start, slot)) * self.interval / limit

    def allowed(self, ca_name: str, limit: int, now: float) -> int:
        """How many renewals of the CA may have started in the current window by ``now``."""
        start = self.window_start(now)
        slot = min(limit - 1, int((now - start) * limit / self.interval))
        opened = slot + (1 if self._slot_opens(ca_name, limit, start, slot) <= now else 0)
        return min(limit, burst(limit) + opened)

    def next_opening(self, ca_name: str, limit: int, now: float, started: int) -> float:
        """
        When the CA may start one more renewal than the ``started`` its window counts: a slot's moment,
        or the next window's start once this one's limit is spent. ``now`` when one may start already
        (rows that were busy elsewhere, say).
        """
        start = self.window_start(now)
        if started >= limit:
            return start + self.interval
        slot = started - burst(limit)  # the slot whose opening allows started + 1
        if slot < 0:
            return now
        return max(now, self._slot_opens(ca_name, limit, start, slot))
