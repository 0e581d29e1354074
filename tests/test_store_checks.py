"""The store's argument checks: one message for a value outside a fixed set, whether it is a value or a filter."""

import pytest
import pytest_twisted

from scepproxyd.store.models import check_choice, check_filter


def test_a_value_outside_the_set_is_refused_listing_the_choices():
    check_choice("ios", ("macos", "ios"), "platform")
    with pytest.raises(ValueError) as refused:
        check_choice(None, ("macos", "ios"), "platform")
    assert str(refused.value) == "platform must be one of macos, ios, not None"


def test_a_filter_may_be_absent_but_not_unknown():
    check_filter(None, ("valid", "revoked"), "status")
    check_filter("revoked", ("valid", "revoked"), "status")
    with pytest.raises(ValueError) as refused:
        check_filter("expired", ("valid", "revoked"), "status")
    assert str(refused.value) == "status must be one of valid, revoked, not 'expired'"


@pytest_twisted.ensureDeferred
async def test_the_built_in_cas_lists_refuse_an_unknown_status_filter(store):
    with pytest.raises(ValueError) as refused:
        await store.list_ca_requests("bogus")
    assert str(refused.value) == "status must be one of pending, approved, rejected, issued, not 'bogus'"
    with pytest.raises(ValueError) as refused:
        await store.list_issued_certificates(status="bogus")
    assert str(refused.value) == "status must be one of valid, revoked, not 'bogus'"
