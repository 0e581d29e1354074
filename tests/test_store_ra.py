"""RA mode's records in the store (store/ra.py): certificates landed on their host profile, renewal claims."""

import pytest_twisted

from support.store import EPOCH, HOST, PROFILE, seed

YEAR = 365 * 86400.0


async def recorded(store):
    row = await store.get_host_profile(HOST, PROFILE)
    return row.cert_serial, row.cert_not_before, row.cert_not_after, row.status


@pytest_twisted.ensureDeferred
async def test_renewal_in_the_same_second_replaces_the_certificate_it_renews(store):
    """scepserver starts a renewal issued in the same second as the certificate it renews at the same second."""
    await seed(store)
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    assert await store.ra_certificate_issued(HOST, PROFILE, "3", EPOCH, EPOCH + YEAR)
    assert await recorded(store) == ("3", EPOCH, EPOCH + YEAR, "verified")

    assert await store.claim_ra_renewal(HOST, PROFILE, "3", 120.0)
    assert not await store.claim_ra_renewal(HOST, PROFILE, "3", 120.0)  # one renewal at a time
    assert await store.ra_certificate_issued(HOST, PROFILE, "4", EPOCH, EPOCH + YEAR, renewed_serial="3")
    assert await recorded(store) == ("4", EPOCH, EPOCH + YEAR, "verified")
    # The renewed certificate cannot renew again; its successor can.
    assert not await store.claim_ra_renewal(HOST, PROFILE, "3", 120.0)
    assert await store.claim_ra_renewal(HOST, PROFILE, "4", 120.0)


@pytest_twisted.ensureDeferred
async def test_dates_never_move_backwards(store):
    await seed(store)
    assert await store.ra_certificate_issued(HOST, PROFILE, "5", EPOCH, EPOCH + YEAR)
    assert not await store.ra_certificate_issued(HOST, PROFILE, "2", EPOCH - 60, EPOCH + YEAR - 60)
    assert (await recorded(store))[0] == "5"
    assert not await store.ra_certificate_issued("no-such-host", PROFILE, "6", EPOCH, EPOCH + YEAR)


@pytest_twisted.ensureDeferred
async def test_a_released_claim_can_be_taken_again(store):
    await seed(store)
    assert await store.ra_certificate_issued(HOST, PROFILE, "7", EPOCH, EPOCH + YEAR)
    assert await store.claim_ra_renewal(HOST, PROFILE, "7", 120.0)
    await store.release_ra_renewal(HOST, PROFILE, "7")
    assert await store.claim_ra_renewal(HOST, PROFILE, "7", 120.0)
