"""The proxy path: where to forward, and the one-time challenges that let a device enroll."""

from __future__ import annotations


import attrs
from twisted.internet import defer

from scepproxyd.store.assignments import ONE_HOST_PROFILE, count_failed_attempt
from scepproxyd.store.database import IntegrityError, chunks, one
from scepproxyd.store.models import (
    ENROLLMENT_ENDINGS,
    ChallengeRefusal,
    ConsumedChallenge,
    EnrollmentStart,
    ExpiredChallenges,
    NotFoundError,
    ProxyTarget,
    ResentHostProfile,
    challenge_hash,
    check_choice,
    mint_challenge,
)

_EXPIRED_BATCH = 1000
#: The detail of a host profile sent again because its latest challenge expired unused.
EXPIRED_DETAIL = "the one-time challenge expired before the device used it; sent again"
# A pending host profile whose latest challenge expired unused goes back to NULL, so the
# processing job sends it again with a fresh challenge. The device never came (it was
# offline), so this is no failed attempt: retries stay as they are. Guarded like the retry
# rule (only while 'pending', only for its latest challenge), so an older copy's expiry, a
# host profile verifying or verified, or a second node acting on the same expiry changes
# nothing. One statement per challenge presented; the cleanup job's batches use
# _RESEND_EXPIRED_ROWS, the same guard over many rows.
_RESEND_EXPIRED = (
    "UPDATE host_profiles SET status = NULL, detail = ?, updated_at = ?"
    f" WHERE {ONE_HOST_PROFILE} AND status = 'pending' AND proxy_challenge_hash = ?"
)
# {values}: "(?, ?, ?), ..." — host, profile and challenge hash of each expired challenge.
# (VALUES names its columns column1, column2, ... on both engines.) SQLite's RETURNING sees
# only the updated table, so the challenge's own row is matched back by its hash.
_RESEND_EXPIRED_ROWS = (
    "UPDATE host_profiles SET status = NULL, detail = ?, updated_at = ?"
    " FROM (VALUES {values}) AS expired"
    " WHERE host_profiles.host_uuid = expired.column1 AND host_profiles.profile_uuid = expired.column2"
    " AND host_profiles.proxy_challenge_hash = expired.column3 AND host_profiles.status = 'pending'"
    " RETURNING host_profiles.host_uuid, host_profiles.profile_uuid, host_profiles.proxy_challenge_hash,"
    " (SELECT p.ca_name FROM profiles p WHERE p.uuid = host_profiles.profile_uuid)"
)
# What schema 8 marks a pending host profile with when its challenge was gone
# before the upgrade: its next refused challenge counts, as before.
LEGACY_HASH = "legacy"
# A refused challenge counts only as the latest one of a pending host profile.
_LATEST_WHILE_PENDING = " AND status = 'pending' AND proxy_challenge_hash IN (?, ?)"
# ... and, when the device's request failed to take it, while no other request holds it.
_NOT_IN_FLIGHT = " AND NOT EXISTS (SELECT 1 FROM challenges_in_flight WHERE challenge_hash = ?)"


def _insert_challenge(conn, challenge, host_uuid, profile_uuid, now) -> None:
    """Store a new challenge (its hash only) and make it the host profile's latest, in the caller's transaction."""
    hashed = challenge_hash(challenge)
    try:
        conn.execute(
            "INSERT INTO challenges (challenge_hash, host_uuid, profile_uuid, created_at) VALUES (?, ?, ?, ?)",
            (hashed, host_uuid, profile_uuid, now),
        )
    except IntegrityError as e:
        raise NotFoundError(f"no profile {profile_uuid} assigned to host {host_uuid}") from e
    conn.execute(
        f"UPDATE host_profiles SET proxy_challenge_hash = ? WHERE {ONE_HOST_PROFILE}",
        (hashed, host_uuid, profile_uuid),
    )


def _why_not_counted(conn, host_uuid, profile_uuid, hashed) -> ChallengeRefusal:
    """After a guarded failure matched nothing: why, in one word (same transaction, no second round trip)."""
    row = conn.execute(
        f"SELECT status, proxy_challenge_hash IN (?, ?) FROM host_profiles WHERE {ONE_HOST_PROFILE}",
        (hashed, LEGACY_HASH, host_uuid, profile_uuid),
    ).fetchone()
    if row is None:
        return ChallengeRefusal(False, "gone", None)
    status, latest = row
    if status != "pending":
        return ChallengeRefusal(False, "not_pending", status)
    return ChallengeRefusal(False, "in_flight" if latest else "not_latest", status)


# -- the proxy's steps, each on the caller's connection and in its transaction --------------
# The methods below run them one job each; begin_enrollment and finish_enrollment run
# several in one job, so a PKIOperation costs one transaction before the upstream call
# and one after (on PostgreSQL each job is several network round trips).


def _proxy_target(conn, host_uuid, profile_uuid, ca_name) -> ProxyTarget | None:
    """Where to proxy for this identifier, or None: one query, whichever piece is missing."""
    cursor = conn.execute(
        "SELECT hp.host_uuid, hp.profile_uuid, c.name, c.url, hp.status, c.mode, hp.cert_serial"
        " FROM host_profiles hp"
        " JOIN hosts h ON h.uuid = hp.host_uuid"
        " JOIN profiles p ON p.uuid = hp.profile_uuid"
        " JOIN cas c ON c.name = p.ca_name"
        " WHERE hp.host_uuid = ? AND hp.profile_uuid = ? AND p.ca_name = ?",
        (host_uuid, profile_uuid, ca_name),
    )
    return one(ProxyTarget, cursor)


def _consume(conn, hashed, host_uuid, profile_uuid, now, cutoff) -> ConsumedChallenge | None:
    """Take the challenge (created at ``cutoff`` or later) and record it in flight; None if there is none to take."""
    rows = conn.execute(
        "DELETE FROM challenges WHERE challenge_hash = ? AND host_uuid = ? AND profile_uuid = ?"
        " AND created_at >= ? RETURNING challenge_hash, host_uuid, profile_uuid, created_at",
        (hashed, host_uuid, profile_uuid, cutoff),
    ).fetchall()  # fetched before the COMMIT that _run issues
    if not rows:
        return None
    # Same transaction: a crash leaves it either usable or recorded as in flight.
    conn.execute(
        "INSERT INTO challenges_in_flight (challenge_hash, host_uuid, profile_uuid, created_at, claimed_at)"
        " VALUES (?, ?, ?, ?, ?)",
        rows[0] + (now,),
    )
    return ConsumedChallenge(*rows[0])


def _delete_expired(conn, hashed, host_uuid, profile_uuid, cutoff) -> float | None:
    """Delete the challenge if it is there past its TTL (created before ``cutoff``); its created_at, or None."""
    rows = conn.execute(
        "DELETE FROM challenges WHERE challenge_hash = ? AND host_uuid = ? AND profile_uuid = ? AND created_at < ?"
        " RETURNING created_at",
        (hashed, host_uuid, profile_uuid, cutoff),
    ).fetchall()
    return rows[0][0] if rows else None


def _resent_after_expiry(conn, hashed, host_uuid, profile_uuid, now) -> bool:
    """An expired challenge was deleted: send its host profile again if it was the latest of a pending one; whether it was."""
    return conn.execute(_RESEND_EXPIRED, (EXPIRED_DETAIL, now, host_uuid, profile_uuid, hashed)).rowcount == 1


def _challenge_expired(conn, hashed, host_uuid, profile_uuid, created_at, now) -> ChallengeRefusal:
    """A presented challenge was there but past its TTL (now deleted): what that did to its host profile."""
    if _resent_after_expiry(conn, hashed, host_uuid, profile_uuid, now):
        return ChallengeRefusal(False, "expired", None, now - created_at)
    return _why_not_counted(conn, host_uuid, profile_uuid, hashed)


def _spend(conn, hashed, host_uuid, profile_uuid, detail, now, cutoff, max_retries) -> tuple:
    """
    Take the challenge, or apply the rule for one that cannot be taken: ``(ConsumedChallenge, None)`` or ``(None, ChallengeRefusal)``.

    Expired unused: deleted, and its host profile sent again without a retry
    if it was the latest of a pending one. Anything else: the retry rule.
    """
    consumed = _consume(conn, hashed, host_uuid, profile_uuid, now, cutoff)
    if consumed is not None:
        return consumed, None
    created_at = _delete_expired(conn, hashed, host_uuid, profile_uuid, cutoff)
    if created_at is not None:
        return None, _challenge_expired(conn, hashed, host_uuid, profile_uuid, created_at, now)
    return None, _challenge_failed(conn, hashed, host_uuid, profile_uuid, detail, now, max_retries)


def _resend_expired(conn, expired, now) -> list[ResentHostProfile]:
    """Send again the pending host profiles whose latest challenge is among ``expired`` (rows the caller deleted)."""
    minted = {hashed: created_at for hashed, _host, _profile, created_at in expired}
    resent = []
    for batch in chunks(expired):
        values = ", ".join(("(?, ?, ?)",) * len(batch))
        params = [EXPIRED_DETAIL, now]
        for hashed, host_uuid, profile_uuid, _created_at in batch:
            params += (host_uuid, profile_uuid, hashed)
        rows = conn.execute(_RESEND_EXPIRED_ROWS.format(values=values), params).fetchall()
        resent.extend(
            ResentHostProfile(host_uuid, profile_uuid, ca_name, now - minted[hashed])
            for host_uuid, profile_uuid, hashed, ca_name in rows
        )
    return resent


def _challenge_failed(conn, hashed, host_uuid, profile_uuid, detail, now, max_retries) -> ChallengeRefusal:
    """The retry rule for a challenge that could not be taken: only the latest of a pending host profile, not in flight."""
    counted = count_failed_attempt(
        conn, host_uuid, profile_uuid, detail, now, max_retries,
        _LATEST_WHILE_PENDING + _NOT_IN_FLIGHT, (hashed, LEGACY_HASH, hashed),
    )
    if counted is not None:
        return ChallengeRefusal(True, "latest", counted.status)
    return _why_not_counted(conn, host_uuid, profile_uuid, hashed)


def _settle(conn, consumed: ConsumedChallenge) -> None:
    """The challenge is spent for good: it is no longer in flight."""
    conn.execute("DELETE FROM challenges_in_flight WHERE challenge_hash = ?", (consumed.challenge_hash,))


def _restore(conn, consumed: ConsumedChallenge) -> None:
    """Put the challenge back (with its created_at), unless its host profile has gone."""
    conn.execute("DELETE FROM challenges_in_flight WHERE challenge_hash = ?", (consumed.challenge_hash,))
    conn.execute(
        "INSERT INTO challenges (challenge_hash, host_uuid, profile_uuid, created_at) SELECT ?, ?, ?, ?"
        f" WHERE EXISTS (SELECT 1 FROM host_profiles WHERE {ONE_HOST_PROFILE})"
        " ON CONFLICT (challenge_hash) DO NOTHING",
        attrs.astuple(consumed) + (consumed.host_uuid, consumed.profile_uuid),
    )


def _enrollment_refused(conn, consumed: ConsumedChallenge, detail, now, max_retries) -> ChallengeRefusal:
    """Settle the challenge and apply the retry rule while it is the latest of a pending host profile."""
    _settle(conn, consumed)
    hashed = consumed.challenge_hash
    counted = count_failed_attempt(
        conn, consumed.host_uuid, consumed.profile_uuid, detail, now, max_retries,
        _LATEST_WHILE_PENDING, (hashed, LEGACY_HASH),
    )
    if counted is not None:
        return ChallengeRefusal(True, "latest", counted.status)
    return _why_not_counted(conn, consumed.host_uuid, consumed.profile_uuid, hashed)


def _enrollment_forwarded(conn, host_uuid, profile_uuid, now) -> bool:
    """pending -> verifying; whether it changed."""
    return conn.execute(
        "UPDATE host_profiles SET status = 'verifying', updated_at = ?"
        f" WHERE {ONE_HOST_PROFILE} AND status = 'pending'",
        (now, host_uuid, profile_uuid),
    ).rowcount == 1


class ChallengeQueries:
    def proxy_target(self, host_uuid, profile_uuid, ca_name) -> defer.Deferred:
        """
        Where to proxy for this identifier, or None.

        One query, so the proxy gives one and the same answer whichever piece
        is missing (no enumeration of hosts, profiles or CAs).
        """

        def proxy_target(conn):
            return _proxy_target(conn, host_uuid, profile_uuid, ca_name)

        return self._submit(proxy_target, write=False)

    def new_challenge(self, host_uuid, profile_uuid) -> defer.Deferred:
        """Mint a one-time challenge (24 random bytes, base64url, unpadded) for a host profile."""
        now = self._clock.seconds()
        challenge = mint_challenge()

        def new_challenge(conn):
            _insert_challenge(conn, challenge, host_uuid, profile_uuid, now)
            return challenge

        return self._submit(new_challenge)

    def issue_challenge(self, host_uuid, profile_uuid) -> defer.Deferred:
        """
        Mint the challenge for a command being rendered, retiring the host profile's older ones.

        One transaction, so exactly the newest rendered copy of a profile can
        enroll; a copy rendered earlier (say, fetched twice) no longer works.
        NotFoundError if the host profile does not exist.
        """
        now = self._clock.seconds()
        challenge = mint_challenge()

        def issue_challenge(conn):
            conn.execute(f"DELETE FROM challenges WHERE {ONE_HOST_PROFILE}", (host_uuid, profile_uuid))
            _insert_challenge(conn, challenge, host_uuid, profile_uuid, now)
            return challenge

        return self._submit(issue_challenge)

    def consume_challenge(self, challenge, host_uuid, profile_uuid) -> defer.Deferred:
        """
        Use up a challenge: fires a ConsumedChallenge the first time, None after.

        The consuming DELETE ... RETURNING is one statement, so of any number
        of concurrent callers exactly one wins, here and on PostgreSQL. A
        matching row past its TTL is refused, and deleted by a second one;
        if it was the latest challenge of a pending host profile, that host
        profile is sent again without a retry counted (as spend_challenge
        and the cleanup job do), so no expired challenge is ever dropped
        with its host profile left waiting for it.
        """
        now = self._clock.seconds()
        cutoff = now - self._challenge_ttl
        hashed = challenge_hash(challenge)

        def consume_challenge(conn):
            consumed = _consume(conn, hashed, host_uuid, profile_uuid, now, cutoff)
            if consumed is None:
                if _delete_expired(conn, hashed, host_uuid, profile_uuid, cutoff) is not None:
                    _resent_after_expiry(conn, hashed, host_uuid, profile_uuid, now)
            return consumed

        return self._submit(consume_challenge, group=True)

    def spend_challenge(self, challenge, host_uuid, profile_uuid, detail) -> defer.Deferred:
        """
        Take a presented challenge, or say what its refusal did: fires ``(ConsumedChallenge, None)`` or ``(None, ChallengeRefusal)``.

        One job: consume_challenge, and for a challenge that cannot be taken
        either the expiry rule (it was there, unused past its TTL: deleted,
        and if it was the latest of a pending host profile, that host profile
        is sent again without a retry; reason ``expired``) or
        challenge_failed's retry rule with ``detail``. RA mode's step;
        begin_enrollment does the same for passthrough.
        """
        now = self._clock.seconds()
        cutoff = now - self._challenge_ttl
        hashed = challenge_hash(challenge)

        def spend_challenge(conn):
            return _spend(conn, hashed, host_uuid, profile_uuid, detail, now, cutoff, self._max_retries)

        return self._submit(spend_challenge, group=True)

    def restore_challenge(self, consumed: ConsumedChallenge) -> defer.Deferred:
        """
        Put back a challenge whose upstream call failed in transport, so the device's retry works.

        It keeps its original created_at, so it still expires on time. If its
        host profile has gone meanwhile there is nothing to restore it to.
        """

        def restore_challenge(conn):
            _restore(conn, consumed)

        return self._submit(restore_challenge, group=True)

    def challenge_settled(self, consumed: ConsumedChallenge) -> defer.Deferred:
        """The upstream answered: the challenge is spent for good."""

        def challenge_settled(conn):
            _settle(conn, consumed)

        return self._submit(challenge_settled, group=True)

    def restore_orphaned_challenges(self) -> defer.Deferred:
        """
        Put back challenges a run took but never settled (it died mid-call). Fires the count.

        Called at start, before serving. With one daemon per database (SQLite)
        every in-flight row is an orphan at start. On PostgreSQL other nodes
        may hold challenges in flight right now, so only those taken longer
        ago than any upstream call may last (``in_flight_limit``) are
        orphans; the cleanup job puts those back too, so a node killed
        mid-call leaves its devices' challenges usable on the others.
        """
        if self.engine == "postgresql":
            where, params = "claimed_at < ?", (self._clock.seconds() - self._in_flight_limit,)
        else:
            where, params = "true", ()

        def restore_orphaned_challenges(conn):
            orphans = conn.execute(
                f"DELETE FROM challenges_in_flight WHERE {where}"
                " RETURNING challenge_hash, host_uuid, profile_uuid, created_at", params,
            ).fetchall()
            moved = 0
            for row in orphans:
                moved += conn.execute(
                    "INSERT INTO challenges (challenge_hash, host_uuid, profile_uuid, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (challenge_hash) DO NOTHING", row,
                ).rowcount
            return moved

        return self._submit(restore_orphaned_challenges)

    def challenge_failed(self, challenge, host_uuid, profile_uuid, detail) -> defer.Deferred:
        """
        A device presented a challenge that could not be taken: fires a ChallengeRefusal.

        The retry rule (back to NULL to be sent again with a fresh challenge,
        or 'failed' past ``max_retries``) applies only when ``challenge`` is
        the one most recently issued to this host profile, the host profile
        is still 'pending', and no other request holds the challenge right
        now. Anything else (an older copy of the profile, a replayed or
        made-up URL, another host profile's challenge, a host profile
        already verifying or verified) changes nothing, so replaying a proxy
        URL cannot hurt. One guarded UPDATE decides; the challenge itself is
        compared by hash, so this works after its row is spent or deleted.
        """
        now = self._clock.seconds()
        hashed = challenge_hash(challenge)

        def challenge_failed(conn):
            return _challenge_failed(conn, hashed, host_uuid, profile_uuid, detail, now, self._max_retries)

        return self._submit(challenge_failed, group=True)

    def enrollment_refused(self, consumed: ConsumedChallenge, detail) -> defer.Deferred:
        """
        The CA answered a forwarded request with FAILURE: settle the challenge and count it; fires a ChallengeRefusal.

        One transaction. Counts (the retry rule) only while the host profile
        is 'pending' and this is still its latest challenge, so a refusal
        that arrives after the host profile was verified, or after the
        profile was rendered again, moves nothing.
        """
        now = self._clock.seconds()

        def enrollment_refused(conn):
            return _enrollment_refused(conn, consumed, detail, now, self._max_retries)

        return self._submit(enrollment_refused, group=True)

    def enrollment_forwarded(self, host_uuid, profile_uuid) -> defer.Deferred:
        """Move pending -> verifying; fires whether it changed (only from pending)."""
        now = self._clock.seconds()

        def enrollment_forwarded(conn):
            return _enrollment_forwarded(conn, host_uuid, profile_uuid, now)

        return self._submit(enrollment_forwarded, group=True)

    def begin_enrollment(self, challenge, host_uuid, profile_uuid, ca_name, ca_url, detail) -> defer.Deferred:
        """
        A passthrough PKIOperation's one job before the upstream call: fires an EnrollmentStart.

        In one transaction: read the identifier's target fresh (proxy_target's
        query, so an unknown host, profile or CA is one answer and spends
        nothing); if its CA is in passthrough mode at ``ca_url`` (the URL the
        caller learned the CA's capabilities from; None: any URL), take the
        challenge as spend_challenge does (when it cannot be taken: the
        expiry rule, or challenge_failed's retry rule with ``detail``); and
        when the host profile is not 'pending', settle the taken challenge at
        once (the proxy refuses to forward). A CA in RA mode, or at another
        URL, spends nothing: its caller goes the other way, or prepares for
        the new URL.
        """
        now = self._clock.seconds()
        cutoff = now - self._challenge_ttl
        hashed = challenge_hash(challenge)

        def begin_enrollment(conn):
            target = _proxy_target(conn, host_uuid, profile_uuid, ca_name)
            if target is None or target.ca_mode != "passthrough" or ca_url not in (None, target.ca_url):
                return EnrollmentStart(target)
            consumed, refusal = _spend(conn, hashed, host_uuid, profile_uuid, detail, now, cutoff,
                                       self._max_retries)
            if consumed is None:
                return EnrollmentStart(target, refusal=refusal)
            if target.status != "pending":
                _settle(conn, consumed)
            return EnrollmentStart(target, consumed)

        return self._submit(begin_enrollment, group=True)

    def finish_enrollment(self, consumed: ConsumedChallenge, ending: str, detail=None) -> defer.Deferred:
        """
        A forwarded PKIOperation's one job after the upstream answer, whichever way it ended.

        ``ending`` (models.ENROLLMENT_ENDINGS): "spent" (challenge_settled),
        "forwarded" (challenge_settled and enrollment_forwarded: the CA said
        SUCCESS), "restored" (restore_challenge: the CA said PENDING or never
        answered), "refused" (enrollment_refused with ``detail``: the CA said
        FAILURE). One transaction; fires what those fire (None, whether the
        host profile moved, None, a ChallengeRefusal).
        """
        check_choice(ending, ENROLLMENT_ENDINGS, "ending")
        now = self._clock.seconds()

        def finish_enrollment(conn):
            if ending == "restored":
                return _restore(conn, consumed)
            if ending == "refused":
                return _enrollment_refused(conn, consumed, detail, now, self._max_retries)
            _settle(conn, consumed)
            if ending == "forwarded":
                return _enrollment_forwarded(conn, consumed.host_uuid, consumed.profile_uuid, now)
            return None

        return self._submit(finish_enrollment, group=True)

    def expire_challenges(self, on_resent=None) -> defer.Deferred:
        """
        Delete challenges older than the TTL, sending again the host profiles still waiting for them; fires ExpiredChallenges.

        A pending host profile whose latest challenge expired unused (its
        device was offline) goes back to NULL, so the processing job sends
        it again with a fresh challenge; no retry is counted, and its detail
        says why. An expired older copy, or the challenge of a host profile
        verifying, verified or already sent again, is just deleted. In
        batches, each its own job (the deletes and the guarded UPDATE of one
        batch in one transaction), so proxy calls queued meanwhile are not
        held behind one long delete; two nodes cleaning at once delete each
        row once and send each host profile again once. ``on_resent`` is
        called with each batch's ResentHostProfiles as it is done (the
        cleanup job logs them there, between batches).
        """
        now = self._clock.seconds()
        cutoff = now - self._challenge_ttl

        def expire_challenges(conn):
            expired = conn.execute(
                "DELETE FROM challenges WHERE challenge_hash IN"
                " (SELECT challenge_hash FROM challenges WHERE created_at < ? ORDER BY created_at LIMIT ?)"
                " RETURNING challenge_hash, host_uuid, profile_uuid, created_at",
                (cutoff, _EXPIRED_BATCH),
            ).fetchall()
            return len(expired), _resend_expired(conn, expired, now)

        d = self._collect_in_batches(expire_challenges, _EXPIRED_BATCH, on_resent)
        return d.addCallback(lambda done: ExpiredChallenges(*done))

    def delete_expired_challenges(self) -> defer.Deferred:
        """expire_challenges, firing only the number of challenges deleted."""
        return self.expire_challenges().addCallback(lambda expired: expired.removed)
