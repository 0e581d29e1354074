"""RA mode's records in the store: the certificate an upstream CA issued lands on its host profile, and
each recorded certificate is claimed for renewal once."""

import pytest_twisted

from support.site import HOST, PROFILE, pending_host_profile
from support.store import EPOCH

DAY = 86400.0


async def recorded(store):
    hp = await store.get_host_profile(HOST, PROFILE)
    return hp.status, hp.cert_serial, hp.cert_not_before


@pytest_twisted.ensureDeferred
async def test_a_renewal_replaces_the_certificate_it_renews_whatever_its_not_before(store):
    await pending_host_profile(store, "https://ca.example/scep")
    assert await store.ra_certificate_issued(HOST, PROFILE, "01", EPOCH, EPOCH + 100 * DAY)
    assert await recorded(store) == ("verified", "01", EPOCH)

    # CAs write whole seconds (step-ca backdates by a minute): a renewal in the same second as its
    # enrollment has the same not-before, and must still replace it, or the old one could renew again.
    assert await store.claim_ra_renewal(HOST, PROFILE, "01", 60)
    assert await store.ra_certificate_issued(HOST, PROFILE, "02", EPOCH, EPOCH + 100 * DAY, renewed_serial="01")
    assert await recorded(store) == ("verified", "02", EPOCH)
    assert not await store.claim_ra_renewal(HOST, PROFILE, "01", 60)

    # Even a renewal backdated before the certificate it renews replaces it.
    assert await store.claim_ra_renewal(HOST, PROFILE, "02", 60)
    assert await store.ra_certificate_issued(HOST, PROFILE, "03", EPOCH - DAY, EPOCH + 99 * DAY, renewed_serial="02")
    assert await recorded(store) == ("verified", "03", EPOCH - DAY)


@pytest_twisted.ensureDeferred
async def test_an_enrollment_never_moves_the_dates_backwards_but_wins_a_tie(store):
    await pending_host_profile(store, "https://ca.example/scep")
    assert await store.ra_certificate_issued(HOST, PROFILE, "01", EPOCH, EPOCH + 100 * DAY)
    assert not await store.ra_certificate_issued(HOST, PROFILE, "00", EPOCH - 1, EPOCH + 100 * DAY)
    assert await recorded(store) == ("verified", "01", EPOCH)
    assert await store.ra_certificate_issued(HOST, PROFILE, "02", EPOCH, EPOCH + 100 * DAY)
    assert await recorded(store) == ("verified", "02", EPOCH)
