"""The store's built-in CA queries: issued certificates, transactions, one-time challenges."""

import sqlite3

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from scepproxyd.store import AlreadyAnswered, CaRequest, DuplicateError, IssuedCertificate, NotFoundError, StateError
from scepproxyd.ca.wiring import ManagedCaService
from scepproxyd.store.ca import CaGrant

from support.store import EPOCH


def request(txid="T1", status="pending", csr=b"csr", nonce="n1"):
    return CaRequest(txid, status, "CN=d", csr, b"signer", "10.0.0.1", "default", None, None, EPOCH, EPOCH, nonce)


def certificate(serial="abc", txid="T1", nonce="n1"):
    return IssuedCertificate(serial, "CN=d", EPOCH, EPOCH + 86400, "valid", None, None, "10.0.0.1", txid,
                             "default", None, b"der", EPOCH, nonce)


@pytest_twisted.ensureDeferred
async def test_record_issued_keeps_request_and_certificate_together(store):
    await store.record_issued(attrs.evolve(request(), status="issued", issued_serial="abc"), certificate())
    assert (await store.get_ca_request("T1")).status == "issued"
    assert (await store.get_issued_certificate("abc")).transaction_id == "T1"
    assert (await store.seen_request("T1", "n1"))[1] and not (await store.seen_request("T1", "n2"))[1]
    assert (await store.seen_request("T9", "n1")) == (None, True)
    # A finished transaction ID may start again (a renewal with the same key) ...
    await store.record_issued(attrs.evolve(request(nonce="n2"), status="issued", issued_serial="def"),
                              certificate("def", nonce="n2"))
    assert (await store.get_ca_request("T1")).issued_serial == "def"
    # ... but a serial is never issued twice, and then nothing of it is kept.
    with pytest.raises(DuplicateError):
        await store.record_issued(attrs.evolve(request(nonce="n3"), status="issued"), certificate("def", nonce="n3"))
    assert (await store.get_ca_request("T1")).sender_nonce == "n2"


@pytest_twisted.ensureDeferred
async def test_answer_is_kept_with_the_certificate_and_one_message_gets_one_certificate(store):
    answered = attrs.evolve(request(), status="issued", issued_serial="abc", answer=b"certrep")
    await store.record_issued(answered, certificate())
    assert (await store.get_ca_request("T1")).answer == b"certrep"
    assert [r.answer for r in await store.list_ca_requests()] == [b"certrep"]
    # The same message (senderNonce) issued again, as a concurrent duplicate would: refused, nothing kept.
    with pytest.raises(AlreadyAnswered):
        await store.record_issued(attrs.evolve(answered, issued_serial="xyz", answer=b"other"),
                                  certificate("xyz", nonce="n1"))
    assert (await store.get_ca_request("T1")).answer == b"certrep"
    assert [c.serial for c in await store.list_issued_certificates()] == ["abc"]


@pytest_twisted.ensureDeferred
async def test_open_transaction_is_not_replaced(store):
    await store.add_pending_request(request())
    with pytest.raises(DuplicateError):
        await store.add_pending_request(request(csr=b"other"))
    with pytest.raises(DuplicateError):
        await store.record_issued(attrs.evolve(request(), status="issued"), certificate())
    assert await store.list_issued_certificates() == []


@pytest_twisted.ensureDeferred
async def test_approve_and_reject_only_pending(store, clock):
    await store.add_pending_request(request("T1"))
    await store.add_pending_request(request("T2"))
    clock.advance(5)
    approved = await store.approve_ca_request("T1", certificate("a1", "T1"))
    assert (approved.status, approved.issued_serial, approved.updated_at) == ("approved", "a1", EPOCH + 5)
    with pytest.raises(StateError) as again:
        await store.approve_ca_request("T1", certificate("a2", "T1"))
    assert again.value.status == "approved"
    assert await store.get_issued_certificate("a2") is None
    with pytest.raises(NotFoundError):
        await store.reject_ca_request("nope", "x")
    rejected = await store.reject_ca_request("T2", "no")
    assert (rejected.status, rejected.detail) == ("rejected", "no")
    with pytest.raises(StateError):
        await store.reject_ca_request("T2", "no")
    assert await store.ca_request_delivered("T1") is True
    assert await store.ca_request_delivered("T1") is False
    assert [r.transaction_id for r in await store.list_ca_requests("issued")] == ["T1"]
    assert [r.transaction_id for r in await store.list_ca_requests("rejected")] == ["T2"]
    with pytest.raises(ValueError):
        await store.list_ca_requests("bogus")


@pytest_twisted.ensureDeferred
async def test_revocation_and_statistics(store, clock):
    for serial, txid in (("a", "T1"), ("b", "T2")):
        await store.record_issued(attrs.evolve(request(txid, nonce=txid), status="issued"),
                                  certificate(serial, txid, txid))
    clock.advance(60)
    revoked = await store.revoke_certificate("a", "superseded")
    assert (revoked.status, revoked.revoked_at, revoked.revocation_reason) == ("revoked", EPOCH + 60, "superseded")
    with pytest.raises(StateError):
        await store.revoke_certificate("a", "superseded")
    with pytest.raises(NotFoundError):
        await store.revoke_certificate("zz", None)
    assert await store.revoked_certificates() == [("a", EPOCH + 60, "superseded")]
    assert [c.serial for c in await store.list_issued_certificates("valid")] == ["b"]
    stats = await store.ca_statistics()
    assert stats == {"requests": {"pending": 0, "approved": 0, "rejected": 0, "issued": 2},
                     "certificates": {"valid": 1, "revoked": 1}}


@pytest_twisted.ensureDeferred
async def test_dynamic_challenge_consumed_once_even_concurrently(store, clock, db_path):
    expires = await store.add_ca_challenge("h" * 64, "wifi", 600)
    assert expires == EPOCH + 600
    results = await defer.gatherResults([store.consume_ca_challenge("h" * 64) for _ in range(10)])
    assert [r for r in results if r is not None] == [CaGrant("wifi", None, None)]
    assert results.count(None) == 9
    # Only hashes are stored.
    rows = sqlite3.connect(db_path).execute("SELECT * FROM ca_challenges").fetchall()
    assert rows == []


@pytest_twisted.ensureDeferred
async def test_expired_challenge_is_refused_and_swept(store, clock, db_path):
    await store.add_ca_challenge("old", "default", 60)
    clock.advance(61)
    assert await store.consume_ca_challenge("old") is None
    await store.add_ca_challenge("stale", "default", 60)
    clock.advance(61)
    await store.add_ca_challenge("new", "default", 60)
    hashes = [h for (h,) in sqlite3.connect(db_path).execute("SELECT challenge_hash FROM ca_challenges")]
    assert hashes == ["new"]


@pytest_twisted.ensureDeferred
async def test_managed_ca_row_is_builtin_and_keeps_no_static_challenge(store, db_path):
    # An install from before one-time CA challenges: the row carries a sealed static challenge.
    await store.add_ca("builtin", "http://a/scep", b"sealed-1")
    assert await store.register_managed_ca("builtin", "http://b/scep") is True  # what changed is reported once
    assert await store.register_managed_ca("builtin", "http://b/scep") is False
    ca = await store.get_ca("builtin")
    assert (ca.url, ca.challenge_ciphertext) == ("http://b/scep", None)
    assert sqlite3.connect(db_path).execute("SELECT builtin FROM cas WHERE name = 'builtin'").fetchone() == (1,)
    assert await store.register_managed_ca("fresh", "http://c/scep") is False


@pytest_twisted.ensureDeferred
async def test_host_profile_ca_challenge_is_bound_retired_and_cascaded(store, clock, db_path):
    await store.add_ca("builtin", "http://ca.test:8080/scep")
    await store.upsert_host("H1", None, "macos")
    await store.add_profile("P1", "p", "macos", b"<plist/>", "builtin")
    await store.assign_profile("H1", "P1")
    assert await store.issue_host_profile_ca_challenge("H1", "P1", "first", "default") == EPOCH + 3600
    await store.issue_host_profile_ca_challenge("H1", "P1", "second", "default")
    # Rendering again retires the older copy's challenge.
    assert await store.consume_ca_challenge("first") is None
    assert await store.consume_ca_challenge("second") == CaGrant("default", "H1", "P1")
    assert await store.consume_ca_challenge("second") is None
    with pytest.raises(NotFoundError):
        await store.issue_host_profile_ca_challenge("H1", "nope", "third", "default")
    await store.issue_host_profile_ca_challenge("H1", "P1", "fourth", "default")
    await store.unassign_profile("P1", ["H1"])
    assert sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM ca_challenges").fetchone() == (0,)


@pytest_twisted.ensureDeferred
async def test_peek_ca_grant_reads_the_challenge_and_its_host_profile_together(store, clock):
    await store.add_ca("builtin", "http://ca.test:8080/scep")
    await store.upsert_host("H1", "SER1", "macos")
    await store.add_profile("P1", "p", "macos", b"<plist/>", "builtin")
    await store.assign_profile("H1", "P1")
    await store.issue_host_profile_ca_challenge("H1", "P1", "bound", "default")
    await store.add_ca_challenge("minted", "wifi", 600)
    grant, facts = await store.peek_ca_grant("bound")
    assert grant == await store.peek_ca_challenge("bound") == CaGrant("default", "H1", "P1")
    assert facts == await store.binding_facts("H1", "P1")
    assert (facts.serial, facts.content) == ("SER1", b"<plist/>")
    assert await store.peek_ca_grant("minted") == (CaGrant("wifi", None, None), None)
    assert await store.peek_ca_grant("unknown") == (None, None)
    # Peeking spends nothing; an expired challenge grants nothing.
    assert (await store.peek_ca_grant("bound"))[0] == CaGrant("default", "H1", "P1")
    clock.advance(601)
    assert await store.peek_ca_grant("minted") == (None, None)


@pytest_twisted.ensureDeferred
async def test_upgrade_from_a_static_challenge_row_is_logged_once(store, logs):
    # An install from before one-time CA challenges: its row rendered the static challenge into profiles.
    await store.add_ca("builtin", "http://a/scep", b"sealed-static")
    builtin = attrs.make_class("Builtin", ["name", "url"])("builtin", "http://b/scep")
    for _ in range(2):
        service = ManagedCaService(store, builtin)
        service.startService()
        await store.get_ca("builtin")  # queued behind the registration on the one DB thread
        service.stopService()
    changed = [line for line in logs.warnings() if "one-time CA challenge" in line]
    assert len(changed) == 1
    assert "static_challenge = yes" in changed[0] and "sealed-static" not in logs.text()
