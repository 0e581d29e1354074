"""A passthrough PKIOperation's two store jobs: begin_enrollment before the upstream call, finish_enrollment after.

Each does in one transaction what the proxy once did in several jobs
(proxy_target, consume_challenge, challenge_failed, challenge_settled,
restore_challenge, enrollment_refused, enrollment_forwarded), with the same
rules: these tests hold the two jobs to the answers of the old ones.
"""

import pytest
import pytest_twisted
from twisted.internet import defer

from scepproxyd.store.models import ChallengeRefusal, ConsumedChallenge, EnrollmentStart, ProxyTarget, challenge_hash
from support.store import CA, EPOCH, HOST, PROFILE, TTL, raw, seed

FAILED = "custom scep challenge failed"
URL = "https://ca.example/scep"  # what support.store.seed gives the CA


async def pending(s, host=HOST, profile=PROFILE):
    """A host profile as the processing job and a render leave it: pending, with its latest challenge."""
    await s.set_host_profile_status(host, profile, "pending")
    return await s.issue_challenge(host, profile)


def begin(s, challenge, host=HOST, profile=PROFILE, ca=CA, ca_url=URL):
    return s.begin_enrollment(challenge, host, profile, ca, ca_url, FAILED)


def count(s, table: str) -> int:
    return raw(s).execute("SELECT COUNT(*) FROM %s" % (table,)).fetchone()[0]


# -- begin_enrollment ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_begin_takes_the_challenge_and_reads_the_target_in_one_job(store):
    await seed(store)
    challenge = await pending(store)
    start = await begin(store, challenge)
    assert start == EnrollmentStart(
        ProxyTarget(HOST, PROFILE, CA, URL, "pending"), ConsumedChallenge(challenge_hash(challenge), HOST, PROFILE, EPOCH))
    assert (count(store, "challenges"), count(store, "challenges_in_flight")) == (0, 1)
    # Whatever URL (None): the same.
    other = await pending(store)
    assert (await begin(store, other, ca_url=None)).consumed is not None


@pytest_twisted.ensureDeferred
async def test_begin_for_an_unknown_target_spends_nothing(store):
    await seed(store)
    await store.add_ca("other", "https://other.example/scep")
    challenge = await pending(store)
    for host, profile, ca in (("ghost", PROFILE, CA), (HOST, "ghost", CA), (HOST, PROFILE, "ghost"),
                              (HOST, PROFILE, "other")):
        assert await begin(store, challenge, host, profile, ca) == EnrollmentStart(None)
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries) == ("pending", 0)
    assert await store.consume_challenge(challenge, HOST, PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_begin_spends_nothing_for_a_ca_in_ra_mode_or_at_another_url(store):
    await seed(store)
    challenge = await pending(store)
    start = await begin(store, challenge, ca_url="https://old.example/scep")
    assert start == EnrollmentStart(ProxyTarget(HOST, PROFILE, CA, URL, "pending"))
    await store.update_ca(CA, mode="ra")
    for ca_url in (URL, None):
        start = await begin(store, challenge, ca_url=ca_url)
        assert (start.target.ca_mode, start.consumed, start.refusal) == ("ra", None, None)
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries) == ("pending", 0)
    assert await store.consume_challenge(challenge, HOST, PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_begin_counts_a_refused_challenge_that_was_the_latest_of_a_pending_host_profile(store, clock):
    await seed(store)
    latest = await pending(store)
    await store.challenge_settled(await store.consume_challenge(latest, HOST, PROFILE))  # spent, CA answered garbage
    clock.advance(TTL + 1)
    start = await begin(store, latest)
    assert start == EnrollmentStart(ProxyTarget(HOST, PROFILE, CA, URL, "pending"), None,
                                    ChallengeRefusal(True, "latest", None))
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail, hp.updated_at) == (None, 1, FAILED, EPOCH + TTL + 1)
    assert count(store, "challenges") == 0


@pytest_twisted.ensureDeferred
async def test_begin_does_not_count_an_old_or_made_up_challenge(store, clock):
    await seed(store)
    old = await pending(store)
    latest = await store.issue_challenge(HOST, PROFILE)  # rendered again
    before = await store.get_host_profile(HOST, PROFILE)
    clock.advance(5)
    for challenge in (old, "A" * 32):
        start = await begin(store, challenge)
        assert (start.consumed, start.refusal) == (None, ChallengeRefusal(False, "not_latest", "pending"))
    assert await store.get_host_profile(HOST, PROFILE) == before
    assert await store.consume_challenge(latest, HOST, PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_begin_leaves_a_challenge_in_flight_to_its_request(store):
    await seed(store)
    latest = await pending(store)
    assert (await begin(store, latest)).consumed is not None
    before = await store.get_host_profile(HOST, PROFILE)
    again = await begin(store, latest)
    assert (again.consumed, again.refusal) == (None, ChallengeRefusal(False, "in_flight", "pending"))
    assert await store.get_host_profile(HOST, PROFILE) == before


@pytest.mark.parametrize("status", [None, "verifying", "verified", "failed"])
@pytest_twisted.ensureDeferred
async def test_begin_settles_at_once_what_it_takes_for_a_host_profile_not_pending(store, clock, status):
    await seed(store)
    challenge = await pending(store)
    await store.set_host_profile_status(HOST, PROFILE, status)
    before = await store.get_host_profile(HOST, PROFILE)
    clock.advance(1)
    start = await begin(store, challenge)
    assert start.target.status == status and start.consumed is not None and start.refusal is None
    assert (count(store, "challenges"), count(store, "challenges_in_flight")) == (0, 0)
    assert await store.get_host_profile(HOST, PROFILE) == before
    # Spent for good: shown again, it is refused, and a host profile that is not pending is not moved.
    again = await begin(store, challenge)
    assert (again.consumed, again.refusal) == (None, ChallengeRefusal(False, "not_pending", status))


@pytest_twisted.ensureDeferred
async def test_concurrent_begins_on_one_challenge_one_wins_and_nothing_is_counted(store):
    await seed(store)
    latest = await pending(store)
    starts = await defer.gatherResults([begin(store, latest) for _ in range(16)])
    (winner,) = [s for s in starts if s.consumed is not None]
    assert winner.consumed == ConsumedChallenge(challenge_hash(latest), HOST, PROFILE, EPOCH)
    assert {s.refusal for s in starts if s is not winner} == {ChallengeRefusal(False, "in_flight", "pending")}
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries) == ("pending", 0)
    assert count(store, "challenges_in_flight") == 1


# -- finish_enrollment ---------------------------------------------------------------------------


async def taken(s):
    """A pending host profile's challenge, taken by begin_enrollment: ``(challenge, ConsumedChallenge)``."""
    challenge = await pending(s)
    return challenge, (await begin(s, challenge)).consumed


@pytest_twisted.ensureDeferred
async def test_finish_forwarded_spends_the_challenge_and_moves_pending_to_verifying(store, clock):
    await seed(store)
    challenge, consumed = await taken(store)
    clock.advance(3)
    assert await store.finish_enrollment(consumed, "forwarded") is True
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.updated_at) == ("verifying", EPOCH + 3)
    assert (count(store, "challenges"), count(store, "challenges_in_flight")) == (0, 0)
    assert await store.consume_challenge(challenge, HOST, PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_finish_forwarded_moves_nothing_but_pending(store):
    await seed(store)
    _, consumed = await taken(store)
    await store.set_host_profile_status(HOST, PROFILE, "verified")
    assert await store.finish_enrollment(consumed, "forwarded") is False
    assert (await store.get_host_profile(HOST, PROFILE)).status == "verified"
    assert count(store, "challenges_in_flight") == 0


@pytest_twisted.ensureDeferred
async def test_finish_spent_settles_and_leaves_the_host_profile_pending(store):
    await seed(store)
    challenge, consumed = await taken(store)
    assert await store.finish_enrollment(consumed, "spent") is None
    assert (count(store, "challenges"), count(store, "challenges_in_flight")) == (0, 0)
    assert (await store.get_host_profile(HOST, PROFILE)).status == "pending"
    # The device's retry finds it spent: the latest challenge of a pending host profile counts.
    assert (await begin(store, challenge)).refusal == ChallengeRefusal(True, "latest", None)


@pytest_twisted.ensureDeferred
async def test_finish_restored_puts_the_challenge_back_as_it_was(store, clock):
    await seed(store)
    challenge, consumed = await taken(store)
    clock.advance(60)
    assert await store.finish_enrollment(consumed, "restored") is None
    assert count(store, "challenges_in_flight") == 0
    assert (await store.get_host_profile(HOST, PROFILE)).status == "pending"
    again = await begin(store, challenge)
    assert again.consumed == consumed  # with its original created_at, so it still expires on time


@pytest_twisted.ensureDeferred
async def test_finish_refused_counts_only_the_latest_challenge_of_a_pending_host_profile(store, clock):
    await seed(store)
    _, consumed = await taken(store)
    detail = "upstream CA refused the request (badRequest)"
    assert await store.finish_enrollment(consumed, "refused", detail) == ChallengeRefusal(True, "latest", None)
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail) == (None, 1, detail)
    assert count(store, "challenges_in_flight") == 0

    # Rendered again meanwhile: the older copy's refusal moves nothing.
    _, consumed = await taken(store)
    await store.issue_challenge(HOST, PROFILE)
    before = await store.get_host_profile(HOST, PROFILE)
    assert await store.finish_enrollment(consumed, "refused", "old copy") == ChallengeRefusal(
        False, "not_latest", "pending")
    assert await store.get_host_profile(HOST, PROFILE) == before
    assert count(store, "challenges_in_flight") == 0


@pytest_twisted.ensureDeferred
async def test_finish_refuses_an_unknown_ending(store):
    await seed(store)
    _, consumed = await taken(store)
    with pytest.raises(ValueError, match="ending must be one of spent, forwarded, restored, refused, not 'lost'"):
        store.finish_enrollment(consumed, "lost")
    assert count(store, "challenges_in_flight") == 1
