"""A refused proxy challenge moves its host profile only when it is the latest one of a pending host profile.

Replaying an old proxy URL (an older copy of the profile, a spent or expired
challenge, a made-up one, another host profile's) must change nothing, and a
device can never knock a verifying or verified host profile down.
"""

import hashlib

import pytest_twisted
from twisted.internet import reactor

from scepproxyd.store import ChallengeRefusal, Store
from scepproxyd.store.challenges import EXPIRED_DETAIL
from support.store import (
    CA,
    EPOCH,
    HOST,
    PROFILE,
    SCHEMA_VERSION,
    TTL,
    claim_all,
    database_at_schema,
    raw,
    seed,
)

FAILED = "custom scep challenge failed"
OTHER_HOST, OTHER_PROFILE = "host-2", "profile-2"


async def pending(s, host=HOST, profile=PROFILE):
    """A host profile as the processing job and a render leave it: pending, with its latest challenge."""
    await s.set_host_profile_status(host, profile, "pending")
    return await s.issue_challenge(host, profile)


async def refused(s, challenge, host=HOST, profile=PROFILE):
    """What the proxy does with a presented challenge: try to take it, and report the failure if it cannot."""
    assert await s.consume_challenge(challenge, host, profile) is None
    return await s.challenge_failed(challenge, host, profile, FAILED)


@pytest_twisted.ensureDeferred
async def test_latest_challenge_expired_while_pending_is_sent_again_without_a_retry(store, clock):
    """The device was offline past the TTL: its profile goes out again, and that is no failed attempt."""
    await seed(store)
    latest = await pending(store)
    clock.advance(TTL + 1)
    assert await store.spend_challenge(latest, HOST, PROFILE, FAILED) == (
        None, ChallengeRefusal(False, "expired", None, TTL + 1))
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail, hp.updated_at) == (None, 0, EXPIRED_DETAIL, EPOCH + TTL + 1)


@pytest_twisted.ensureDeferred
async def test_latest_challenge_spent_while_still_pending_requeues(store, clock):
    """The CA answered garbage: the challenge is spent, the host profile still pending; the device's retry requeues."""
    await seed(store)
    latest = await pending(store)
    await store.challenge_settled(await store.consume_challenge(latest, HOST, PROFILE))
    assert (await refused(store, latest)).counted
    assert (await store.get_host_profile(HOST, PROFILE)).retries == 1


@pytest_twisted.ensureDeferred
async def test_old_challenge_against_pending_changes_nothing(store, clock):
    await seed(store)
    old = await pending(store)
    await store.issue_challenge(HOST, PROFILE)  # the profile was rendered again (fetched twice)
    before = await store.get_host_profile(HOST, PROFILE)
    clock.advance(5)
    for _ in range(5):
        assert await refused(store, old) == ChallengeRefusal(False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before


@pytest_twisted.ensureDeferred
async def test_old_challenge_expired_and_deleted_still_changes_nothing(store, clock):
    await seed(store)
    old = await pending(store)
    clock.advance(TTL + 1)
    await store.issue_challenge(HOST, PROFILE)
    assert await store.delete_expired_challenges() == 0  # the re-render retired it already
    before = await store.get_host_profile(HOST, PROFILE)
    assert await refused(store, old) == ChallengeRefusal(False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before


@pytest_twisted.ensureDeferred
async def test_unknown_and_foreign_challenges_change_nothing(store, clock):
    await seed(store)
    await seed(store, host=OTHER_HOST, profile=OTHER_PROFILE)
    await pending(store)
    foreign = await pending(store, OTHER_HOST, OTHER_PROFILE)
    ours_before = await store.get_host_profile(HOST, PROFILE)
    theirs_before = await store.get_host_profile(OTHER_HOST, OTHER_PROFILE)
    clock.advance(5)
    made_up = "A" * 32
    assert await refused(store, made_up) == ChallengeRefusal(False, "not_latest", "pending")
    assert await refused(store, foreign) == ChallengeRefusal(False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == ours_before
    assert await store.get_host_profile(OTHER_HOST, OTHER_PROFILE) == theirs_before
    # The other host profile's challenge was not spent by being shown on our URL.
    assert await store.consume_challenge(foreign, OTHER_HOST, OTHER_PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_verifying_and_verified_are_never_knocked_down(store, clock):
    await seed(store)
    latest = await pending(store)
    await store.challenge_settled(await store.consume_challenge(latest, HOST, PROFILE))
    assert await store.enrollment_forwarded(HOST, PROFILE) is True
    for status in ("verifying", "verified"):
        await store.set_host_profile_status(HOST, PROFILE, status)
        before = await store.get_host_profile(HOST, PROFILE)
        clock.advance(1)
        for _ in range(5):
            assert await refused(store, latest) == ChallengeRefusal(False, "not_pending", status)
        assert await store.get_host_profile(HOST, PROFILE) == before


@pytest_twisted.ensureDeferred
async def test_latest_challenge_in_flight_is_left_to_its_request(store, clock):
    """Two requests with one challenge: the loser must not requeue while the winner waits for the CA."""
    await seed(store)
    latest = await pending(store)
    taken = await store.consume_challenge(latest, HOST, PROFILE)
    before = await store.get_host_profile(HOST, PROFILE)
    assert await refused(store, latest) == ChallengeRefusal(False, "in_flight", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before
    await store.challenge_settled(taken)
    assert await store.enrollment_forwarded(HOST, PROFILE) is True


@pytest_twisted.ensureDeferred
async def test_a_new_attempt_does_not_count_the_last_attempts_challenge(store, clock):
    """After a requeue and a new claim, the previous URL is old even before the new render."""
    await store.add_ca(CA, "https://ca.example/scep")
    await store.upsert_host(HOST, "C02XYZ", "macos")
    await store.add_profile(PROFILE, "Wi-Fi cert", "macos", b"<plist/>", CA)
    await store.assign_profile(HOST, PROFILE)
    await claim_all(store)
    previous = await store.issue_challenge(HOST, PROFILE)
    clock.advance(TTL + 1)
    assert (await store.spend_challenge(previous, HOST, PROFILE, FAILED))[1].reason == "expired"  # back to NULL
    await claim_all(store)  # pending again, not rendered yet
    before = await store.get_host_profile(HOST, PROFILE)
    assert await refused(store, previous) == ChallengeRefusal(False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before
    fresh = await store.issue_challenge(HOST, PROFILE)
    assert await store.consume_challenge(fresh, HOST, PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_host_profile_gone(store):
    await seed(store)
    assert await store.challenge_failed("A" * 32, HOST, "no-such-profile", FAILED) == ChallengeRefusal(
        False, "gone", None
    )


@pytest_twisted.ensureDeferred
async def test_ca_refusal_counts_only_for_the_latest_challenge_of_a_pending_host_profile(store, clock):
    await seed(store)
    latest = await pending(store)
    taken = await store.consume_challenge(latest, HOST, PROFILE)
    assert await store.enrollment_refused(taken, "upstream CA refused the request (badRequest)") == ChallengeRefusal(
        True, "latest", None
    )
    assert raw(store).execute("SELECT COUNT(*) FROM challenges_in_flight").fetchone()[0] == 0
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail) == (None, 1, "upstream CA refused the request (badRequest)")

    # Verified meanwhile (the device reported its certificate): the late refusal moves nothing.
    latest = await pending(store)
    taken = await store.consume_challenge(latest, HOST, PROFILE)
    await store.set_host_profile_status(HOST, PROFILE, "verified")
    before = await store.get_host_profile(HOST, PROFILE)
    assert await store.enrollment_refused(taken, "late") == ChallengeRefusal(False, "not_pending", "verified")
    assert await store.get_host_profile(HOST, PROFILE) == before

    # Rendered again meanwhile: the refusal of the older copy's request moves nothing either.
    older = await pending(store)
    taken = await store.consume_challenge(older, HOST, PROFILE)
    await store.issue_challenge(HOST, PROFILE)
    before = await store.get_host_profile(HOST, PROFILE)
    assert await store.enrollment_refused(taken, "old copy") == ChallengeRefusal(False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before
    assert raw(store).execute("SELECT COUNT(*) FROM challenges_in_flight").fetchone()[0] == 0


@pytest_twisted.ensureDeferred
async def test_the_hash_is_set_with_the_challenge_and_never_the_challenge_itself(store):
    await seed(store)
    minted = await store.new_challenge(HOST, PROFILE)
    stored = raw(store).execute("SELECT proxy_challenge_hash FROM host_profiles").fetchone()[0]
    assert stored == hashlib.sha256(minted.encode()).hexdigest()
    issued = await store.issue_challenge(HOST, PROFILE)
    stored = raw(store).execute("SELECT proxy_challenge_hash FROM host_profiles").fetchone()[0]
    assert stored == hashlib.sha256(issued.encode()).hexdigest() and issued not in stored
    assert "proxy_challenge_hash" not in repr(await store.get_host_profile(HOST, PROFILE))


def schema_7_database(path):
    """A database as schema 7 left it (before the latest proxy challenge's hash): one pending host profile with a live challenge, one whose challenge is gone."""
    conn = database_at_schema(path, 7)
    conn.execute("INSERT INTO cas (name, url, created_at, updated_at) VALUES (?, 'https://ca.example/scep', ?, ?)",
                 (CA, EPOCH, EPOCH))
    conn.execute("INSERT INTO hosts VALUES ('live', NULL, 'macos', ?, ?), ('spent', NULL, 'macos', ?, ?),"
                 " ('done', NULL, 'macos', ?, ?)", (EPOCH,) * 6)
    conn.execute("INSERT INTO profiles (uuid, name, platform, content, ca_name, created_at, updated_at)"
                 " VALUES ('p', 'Wi-Fi', 'macos', x'00', ?, ?, ?)", (CA, EPOCH, EPOCH))
    conn.execute(
        "INSERT INTO host_profiles (host_uuid, profile_uuid, status, retries, created_at, updated_at, renewal_id)"
        " VALUES ('live', 'p', 'pending', 0, ?, ?, 'sp-1'), ('spent', 'p', 'pending', 0, ?, ?, 'sp-2'),"
        " ('done', 'p', 'verified', 0, ?, ?, 'sp-3')",
        (EPOCH,) * 6,
    )
    conn.execute("INSERT INTO challenges VALUES ('older', 'live', 'p', ?), ('newest', 'live', 'p', ?),"
                 " ('done-old', 'done', 'p', ?)", (EPOCH, EPOCH + 1, EPOCH))
    conn.commit()
    conn.close()


@pytest_twisted.ensureDeferred
async def test_upgrade_keeps_pending_host_profiles_working(tmp_path, clock):
    path = tmp_path / "v7.sqlite"
    schema_7_database(path)
    assert Store.migrate(path) == SCHEMA_VERSION
    s = Store(path, reactor, clock=clock, challenge_ttl=TTL)
    await s.start()
    try:
        # The newest live challenge became the latest one; the older copy is harmless.
        assert await refused(s, "A" * 32, "live", "p") == ChallengeRefusal(False, "not_latest", "pending")
        clock.advance(TTL + 10)
        assert await refused(s, "older", "live", "p") == ChallengeRefusal(False, "not_latest", "pending")
        assert await s.spend_challenge("newest", "live", "p", FAILED) == (
            None, ChallengeRefusal(False, "expired", None, TTL + 9))  # sent again, no retry
        # Its challenge gone before the upgrade: the next refusal counts once, as it always did.
        assert (await refused(s, "A" * 32, "spent", "p")).counted
        await claim_all(s)
        assert await refused(s, "A" * 32, "spent", "p") == ChallengeRefusal(False, "not_latest", "pending")
        # A verified host profile got no mark at all.
        assert await refused(s, "done-old", "done", "p") == ChallengeRefusal(False, "not_pending", "verified")
        assert sorted((hp.host_uuid, hp.status, hp.retries) for hp in await s.list_host_profiles()) == [
            ("done", "verified", 0), ("live", "pending", 0), ("spent", "pending", 1)
        ]
    finally:
        await s.stop()
