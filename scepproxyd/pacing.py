"""
Renewal pacing: how many renewals each CA may start, and when.

Why: a fleet enrolled on one day falls due on one day. Sent back all at
once, its host profiles mint thousands of one-time challenges together, the
CA (NDES, typically) is swamped, and challenges expire unused while devices
queue for it. So renewals start per CA at a pace the admin sets: at most
``limit`` in each ``interval`` (``[renewal] limit``, ``limit_interval``,
``ca_limits``), soonest expiry first (the store's order).

The rules, for a CA with limit L per interval W (spacing T = W / L):

- **Windows**: at most L start in each interval of the epoch (for ``1h``,
  each clock hour UTC). A hard cap, counted per CA in the database.
- **Even pace with a small burst**: one start per T, and up to a tenth of L
  (at least one) at once after a quiet spell, so the few renewals a small
  site has never wait. Kept as the moment the CA's next start is due
  (``next_at``, the "theoretical arrival time" of the generic cell rate
  algorithm, a token bucket in one number): k starts move it on by k * T,
  and one may start while it is no more than the burst's share ahead of
  now. Unlike a count that fills through the window, time nobody needed is
  not saved up: a backlog that appears late in a window still leaves at
  the pace, not all at once. The burst is never less than what opens
  between two runs of the job (``wake``), or a job that wakes less often
  than once per T would lose starts and fall behind the pace. Only a
  window whose cap was reached early (after a burst) leaves a quiet end,
  and so a burst at the next window's start.
- **Jitter**: while renewals wait, the job wakes for the next start at its
  paced moment plus a random fraction of T, so starts do not tick on a
  grid shared by every CA and site. The fraction is a hash of the CA and
  the moment, not a random draw, so every node wakes alike and tests
  repeat. (Whenever ``[profiles] process_interval`` is longer than T the
  job wakes on that instead, starting what opened meanwhile: devices get
  renewals no faster than that job hands them out.)

The count and ``next_at`` live in the database (store.renewals), locked per
CA for the transaction that starts renewals, so nodes sharing PostgreSQL
hold one pace and one limit between them.

Spreading starts over time is what keeps a fleet out of lock step: its new
certificates expire as spread as they were started. A random pick order
(another way to jitter) would spread nothing in time, and would start a
certificate with weeks left before one expiring tomorrow.

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
#: Slack for float rounding when counting spacings (a run exactly on a paced moment gets its start).
_EPSILON = 1e-9


def burst(limit: int) -> int:
    """How many of a window's ``limit`` may start at once after a quiet spell."""
    return max(1, limit // BURST_SHARE)


def jitter(ca_name: str, moment: float) -> float:
    """A fraction in [0, 1) for this CA's start due at ``moment``: the same on every node."""
    digest = hashlib.sha256(("%s\0%.6f" % (ca_name, moment)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@attrs.frozen
class RenewalPacing:
    """The limits of ``[renewal]`` and the pace they make: pure arithmetic on times it is given."""

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

    def pace(self, ca_name: str, limit: int, now: float, wake: float = 0.0) -> "CaPace":
        """The CA's pace at ``now``, for a job that runs at least every ``wake`` seconds while renewals wait."""
        return CaPace(ca_name, limit, self.interval, now, wake)


@attrs.frozen
class CaPace:
    """One CA's pace at one moment: what the store asks, in the transaction that starts renewals."""

    ca_name: str
    limit: int
    interval: float
    now: float
    #: How long the job may sleep between runs while renewals wait: the burst holds at least that much.
    wake: float = 0.0

    @property
    def spacing(self) -> float:
        return self.interval / self.limit

    @property
    def _tolerance(self) -> float:
        """How far ``next_at`` may be ahead of now for a start: the burst's share (GCRA's tau)."""
        return max((burst(self.limit) - 1) * self.spacing, self.wake)

    def allowance(self, window_started: int, next_at: float) -> int:
        """How many may start now, given the window's count and the moment the next start is due."""
        room = self.limit - window_started
        slack = self.now + self._tolerance - max(next_at, self.now)
        if room <= 0 or slack < 0:
            return 0
        return min(room, int(slack / self.spacing + _EPSILON) + 1)

    def advanced(self, next_at: float, started: int) -> float:
        """``next_at`` once ``started`` more have started now."""
        return max(next_at, self.now) + started * self.spacing

    def next_opening(self, window_started: int, next_at: float) -> float:
        """
        When one more may start: the paced moment plus its jitter, or the next window's start once this
        one's limit is spent; not before now.
        """
        window = math.floor(self.now / self.interval) * self.interval
        if window_started >= self.limit:
            return window + self.interval
        if self.allowance(window_started, next_at):
            return self.now
        due = next_at - self._tolerance
        return due + jitter(self.ca_name, due) * self.spacing

    def waiting_bound(self, next_at: float) -> float:
        """
        ``B`` such that the n-th of the renewals still waiting (soonest expiry first) starts by
        ``B + n * spacing`` at the latest, if the job wakes on time.

        The pace starts the n-th at ``max(next_at, now) - tolerance + (n - 1) * spacing``; a window's
        cap delays that by at most the burst's share, which the bound gives back, so it errs early (a
        warning a little too soon), never late.
        """
        return max(next_at, self.now)
