"""RA mode's records (store/ra.py): a certificate the RA learned lands on its host profile, and renewal claims."""

import pytest_twisted

from support.store import EPOCH, HOST, PROFILE, seed

DAY = 86400.0
#: A claim older than this (seconds) was left by a node that died mid-call.
STALE = 120.0
OLD, NEW = "0a1b2c", "0d3e4f"


async def pending(store):
    """The seeded host profile, pending on a one-time challenge the proxy has just taken: the ConsumedChallenge."""
    await seed(store)
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    challenge = await store.issue_challenge(HOST, PROFILE)
    return challenge, await store.consume_challenge(challenge, HOST, PROFILE)


async def recorded(store, serial=OLD, not_before=EPOCH - DAY, not_after=EPOCH + 365 * DAY):
    """The seeded host profile with the certificate ``serial`` recorded on it (as after an enrollment)."""
    await seed(store)
    assert await store.ra_certificate_issued(HOST, PROFILE, serial, not_before, not_after)
    return await store.get_host_profile(HOST, PROFILE)


async def claimed(store, serial=OLD) -> bool:
    return await store.claim_ra_renewal(HOST, PROFILE, serial, STALE)


# -- ra_certificate_issued ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_issued_certificate_is_recorded_and_the_awaiting_host_profile_verified(store):
    challenge, consumed = await pending(store)
    assert await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH, EPOCH + DAY, consumed=consumed) is True
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.cert_serial, hp.cert_not_before, hp.cert_not_after) == (OLD, EPOCH, EPOCH + DAY)
    assert (hp.status, hp.updated_at) == ("verified", EPOCH)


async def orphans_put_back(store, clock) -> int:
    """What a restart puts back: every challenge still in flight (on any engine, once its upstream call is long over)."""
    clock.advance(DAY)
    return await store.restore_orphaned_challenges()


@pytest_twisted.ensureDeferred
async def test_recording_settles_the_challenge_for_good(store, clock):
    challenge, consumed = await pending(store)
    await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH, EPOCH + DAY, consumed=consumed)
    # Nothing left in flight for a restart to put back, and the challenge cannot be used again.
    assert await orphans_put_back(store, clock) == 0
    assert await store.consume_challenge(challenge, HOST, PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_without_a_consumed_challenge_other_challenges_in_flight_stay(store, clock):
    challenge, consumed = await pending(store)
    await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH, EPOCH + DAY)  # a renewal: no challenge
    assert await orphans_put_back(store, clock) == 1  # the enrollment's challenge is still in flight


@pytest_twisted.ensureDeferred
async def test_dates_never_move_backwards(store):
    hp = await recorded(store, NEW, not_before=EPOCH, not_after=EPOCH + 2 * DAY)
    # An older certificate is never recorded over a newer one (a tie goes to the later answer: see below).
    assert await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH - DAY, EPOCH + DAY) is False
    assert await store.get_host_profile(HOST, PROFILE) == hp
    assert await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH + 1, EPOCH + 3 * DAY) is True
    assert (await store.get_host_profile(HOST, PROFILE)).cert_serial == OLD


@pytest_twisted.ensureDeferred
async def test_only_an_awaiting_host_profile_changes_status(store):
    await seed(store)
    for status, becomes in (("verifying", "verified"), ("failed", "failed"), ("verified", "verified")):
        await store.set_host_profile_status(HOST, PROFILE, status)
        before = await store.get_host_profile(HOST, PROFILE)
        assert await store.ra_certificate_issued(HOST, PROFILE, status[:6], (before.cert_not_before or 0) + 1,
                                                 EPOCH + DAY)
        assert (await store.get_host_profile(HOST, PROFILE)).status == becomes


@pytest_twisted.ensureDeferred
async def test_a_host_profile_that_is_gone_takes_nothing(store):
    await seed(store)
    assert await store.ra_certificate_issued(HOST, "no-such-profile", OLD, EPOCH, EPOCH + DAY) is False


@pytest_twisted.ensureDeferred
async def test_a_renewal_recorded_lets_go_of_its_claim_and_the_old_certificate_cannot_renew_again(store):
    await recorded(store, OLD)
    assert await claimed(store, OLD)
    assert await store.ra_certificate_issued(HOST, PROFILE, NEW, EPOCH, EPOCH + DAY, renewed_serial=OLD)
    assert (await store.get_host_profile(HOST, PROFILE)).cert_serial == NEW
    assert not await claimed(store, OLD)
    assert await claimed(store, NEW)  # the claim was let go: the new certificate renews in its turn


@pytest_twisted.ensureDeferred
async def test_a_recording_for_another_serial_leaves_the_claim_alone(store):
    await recorded(store, OLD)
    assert await claimed(store, OLD)
    await store.ra_certificate_issued(HOST, PROFILE, NEW, EPOCH, EPOCH + DAY, renewed_serial="ffff")
    await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH + 1, EPOCH + DAY)  # OLD again, as if re-issued
    assert not await claimed(store, OLD)  # still held


# -- claim_ra_renewal and release_ra_renewal -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_recorded_certificate_is_claimed_once(store):
    await recorded(store)
    assert await claimed(store) is True
    assert await claimed(store) is False


@pytest_twisted.ensureDeferred
async def test_a_stale_claim_is_taken_over(store, clock):
    await recorded(store)
    assert await claimed(store)
    clock.advance(STALE)
    assert await claimed(store) is False  # exactly as old as allowed: still held
    clock.advance(1)
    assert await claimed(store) is True
    assert await claimed(store) is False  # the new claim is fresh


@pytest_twisted.ensureDeferred
async def test_a_serial_not_recorded_on_the_host_profile_is_refused(store):
    await seed(store)
    assert await claimed(store, OLD) is False  # nothing recorded yet
    assert await store.ra_certificate_issued(HOST, PROFILE, OLD, EPOCH, EPOCH + DAY)
    assert await claimed(store, NEW) is False
    assert await store.claim_ra_renewal(HOST, "no-such-profile", OLD, STALE) is False
    assert await store.claim_ra_renewal("no-such-host", PROFILE, OLD, STALE) is False
    assert await claimed(store, OLD) is True  # the refusals took no claim


@pytest_twisted.ensureDeferred
async def test_release_lets_the_same_certificate_renew_again(store):
    await recorded(store)
    assert await claimed(store)
    await store.release_ra_renewal(HOST, PROFILE, OLD)
    assert await claimed(store) is True


@pytest_twisted.ensureDeferred
async def test_release_of_another_serial_leaves_the_claim(store):
    await recorded(store)
    assert await claimed(store)
    await store.release_ra_renewal(HOST, PROFILE, NEW)
    await store.release_ra_renewal(HOST, "no-such-profile", OLD)
    assert await claimed(store) is False


@pytest_twisted.ensureDeferred
async def test_claims_are_per_host_profile(store):
    await recorded(store)
    await seed(store, host="host-2", profile="profile-2")
    assert await store.ra_certificate_issued("host-2", "profile-2", OLD, EPOCH, EPOCH + DAY)
    assert await claimed(store)
    assert await store.claim_ra_renewal("host-2", "profile-2", OLD, STALE) is True


async def held(store):
    """What the host profile holds: (status, serial, not-before)."""
    hp = await store.get_host_profile(HOST, PROFILE)
    return hp.status, hp.cert_serial, hp.cert_not_before


@pytest_twisted.ensureDeferred
async def test_a_renewal_replaces_the_certificate_it_renews_whatever_its_not_before(store):
    await seed(store)
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    assert await store.ra_certificate_issued(HOST, PROFILE, "01", EPOCH, EPOCH + 100 * DAY)
    assert await held(store) == ("verified", "01", EPOCH)

    # CAs write whole seconds (step-ca backdates by a minute): a renewal in the same second as its
    # enrollment has the same not-before, and must still replace it, or the old one could renew again.
    assert await store.claim_ra_renewal(HOST, PROFILE, "01", 60)
    assert await store.ra_certificate_issued(HOST, PROFILE, "02", EPOCH, EPOCH + 100 * DAY, renewed_serial="01")
    assert await held(store) == ("verified", "02", EPOCH)
    assert not await store.claim_ra_renewal(HOST, PROFILE, "01", 60)

    # Even a renewal backdated before the certificate it renews replaces it.
    assert await store.claim_ra_renewal(HOST, PROFILE, "02", 60)
    assert await store.ra_certificate_issued(HOST, PROFILE, "03", EPOCH - DAY, EPOCH + 99 * DAY, renewed_serial="02")
    assert await held(store) == ("verified", "03", EPOCH - DAY)


@pytest_twisted.ensureDeferred
async def test_an_enrollment_never_moves_the_dates_backwards_but_wins_a_tie(store):
    await seed(store)
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    assert await store.ra_certificate_issued(HOST, PROFILE, "01", EPOCH, EPOCH + 100 * DAY)
    assert not await store.ra_certificate_issued(HOST, PROFILE, "00", EPOCH - 1, EPOCH + 100 * DAY)
    assert await held(store) == ("verified", "01", EPOCH)
    assert await store.ra_certificate_issued(HOST, PROFILE, "02", EPOCH, EPOCH + 100 * DAY)
    assert await held(store) == ("verified", "02", EPOCH)
