"""The built-in CA's SCEP operations in process: a real store file, a fake clock, the codec as client.

Real clients against the running daemon are in interop/test_ca_interop.py; these
pin down each rule (challenges, approval, polling, renewal, GetCert, GetCRL,
hostile messages) one at a time.
"""

import ipaddress
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from asn1crypto import cms
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import resource
from treq.testing import StubTreq
from zope.interface.verify import verifyObject

from scepproxyd.ca.authority import CAPS, ScepCA
from scepproxyd.ca.local import LocalUpstream, UpstreamRouter
from scepproxyd.ca.manage import CaManager, ManageError
from scepproxyd.store.models import mint_challenge
from scepproxyd.ca.policy import WRONG_CHALLENGE, challenge_hash
from scepproxyd.daemon.metrics import Metrics
from scepproxyd.scep import codec
from scepproxyd.scep.codec import attributes as codec_attributes
from scepproxyd.scep.codec import signed as codec_signed
from scepproxyd.scep.codec.algorithms import digest as codec_digest
from scepproxyd.scep.upstream import IUpstream, UpstreamClient, UpstreamTimeouts
from scepproxyd.store.models import StoreUnavailable
from support.builtin_ca import DAY, STATIC, TEMPLATES, Device, ca_material, in_line, make_ca, policy
from support.certs import self_signed
from support.processes import need
from support.scep_capture import fail_info_text
from support.store import EPOCH

async def enroll(ca, device, requester="10.0.0.5", **csr_args):
    answer = await ca.pki_operation(device.request(ca, csr=device.csr(**csr_args)), requester)
    return answer, device.read(ca, answer)


# -- GetCACaps / GetCACert -------------------------------------------------------------


def test_caps_list_what_strongswan_needs(store, clock):
    ca = make_ca(store, clock)
    answer = ca.get_ca_caps()
    assert answer.body == CAPS
    assert set(CAPS.decode().split()) >= {"POSTPKIOperation", "Renewal", "SHA-256", "SHA-384", "AES", "DES3",
                                          "SCEPStandard"}


class RemoteCaps(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"remote caps"


def remote_upstream(clock):
    """An HTTP UpstreamClient whose every CA answers GetCACaps with ``remote caps``, over StubTreq (no sockets)."""
    return UpstreamClient(StubTreq(RemoteCaps()), clock, UpstreamTimeouts(), 0)


def test_local_upstream_and_router_provide_iupstream(store, clock):
    local = LocalUpstream(make_ca(store, clock))
    assert verifyObject(IUpstream, local)
    assert verifyObject(IUpstream, UpstreamRouter(remote_upstream(clock), local, "http://ca.test:8080/scep"))


@pytest_twisted.ensureDeferred
async def test_router_sends_its_own_url_in_process_and_others_over_http(store, clock):
    router = UpstreamRouter(remote_upstream(clock), LocalUpstream(make_ca(store, clock)), "http://ca.test:8080/scep")
    assert (await router.get_ca_caps("http://ca.test:8080/scep")).body == CAPS
    assert (await router.get_ca_caps("http://other.test/scep")).body == b"remote caps"
    assert await router.supports_post("http://ca.test:8080/scep") is True
    # No pool behind either side here: dropping connections is done at once, and nothing is cached to forget.
    assert await router.drop_connections() is None
    router.forget("http://ca.test:8080/scep")


def test_ca_cert_alone_or_with_ra(store, clock):
    plain = make_ca(store, clock).get_ca_cert()
    assert plain.content_type == b"application/x-x509-ca-cert"
    assert x509.load_der_x509_certificate(plain.body) == ca_material().certificate
    with_ra = make_ca(store, clock, ra=True).get_ca_cert()
    assert with_ra.content_type == b"application/x-x509-ca-ra-cert"
    assert codec.ca_certificates(with_ra.body)[1] == ca_material().certificate.public_bytes(Encoding.DER)


# -- PKCSReq -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_static_challenge_issues_per_template(store, clock):
    ca, device = make_ca(store, clock), Device()
    answer, (status, fail, certs) = await enroll(ca, device, san=[x509.DNSName("device-1.example")])
    assert (status, fail, answer.outcome) == ("SUCCESS", None, "issued")
    issued = certs[0]
    issued.verify_directly_issued_by(ca.material.certificate)
    assert issued.public_key().public_numbers() == device.key.public_key().public_numbers()
    assert issued.subject == device.csr().subject
    assert issued.signature_hash_algorithm.name == "sha256"
    assert issued.not_valid_before_utc.timestamp() == EPOCH
    assert issued.not_valid_after_utc.timestamp() == EPOCH + 365 * DAY
    ext = issued.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.key_encipherment is True
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "device-1.example"]
    points = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == "http://ca.test:8080/scep/crl"
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert 0 < issued.serial_number < 2 ** 128
    record = await store.get_issued_certificate("%x" % issued.serial_number)
    assert (record.status, record.requester, record.template, record.subject) == (
        "valid", "10.0.0.5", "default", "CN=device-1")
    request = await store.get_ca_request(record.transaction_id)
    assert (request.status, request.issued_serial) == ("issued", record.serial)


@pytest_twisted.ensureDeferred
async def test_policy_refusals_are_failures_with_their_reason_and_a_metric(store, clock):
    metrics = Metrics()
    ca = ScepCA(store, ca_material(), policy(), TEMPLATES, "http://ca.test:8080", 7 * DAY, clock,
                run_in_thread=in_line, metrics=metrics)
    device = Device()
    cases = [
        (dict(san=[x509.DNSName("*.example")]), "badRequest", "san", "dns '*.example'"),
        (dict(san=[x509.DNSName("device-1.other")]), "badRequest", "san", "[ca] san_dns does not allow"),
        (dict(key=rsa.generate_private_key(public_exponent=65537, key_size=1024)), "badAlg", "key", "1024"),
        (dict(cn="Test Builtin CA"), None, None, None),  # not the CA's whole subject: fine
    ]
    for csr_args, fail, check, text in cases:
        answer, (status, fail_info, _) = await enroll(ca, device, **csr_args)
        if fail is None:
            assert status == "SUCCESS"
            continue
        assert (status, fail_info, answer.outcome) == ("FAILURE", fail, "refused")
        assert text in fail_info_text(answer.body)
        assert metrics.ca_refusals.labels(check)._value.get() >= 1
    ca_subject = ca.material.certificate.subject
    answer, (status, fail_info, _) = await enroll(ca, Device(), subject=ca_subject)
    assert (status, fail_info) == ("FAILURE", "badRequest")
    assert [c.subject for c in await store.list_issued_certificates()] == ["CN=Test Builtin CA"]


@pytest.mark.parametrize("challenge", [None, "wrong", STATIC + "x", ""])
@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_challenge_is_bad_request(store, clock, challenge):
    ca, device = make_ca(store, clock), Device()
    answer, (status, fail, _) = await enroll(ca, device, challenge=challenge)
    assert (status, fail, answer.outcome) == ("FAILURE", "badRequest", "failed")
    assert fail_info_text(answer.body) == WRONG_CHALLENGE
    assert await store.list_issued_certificates() == []
    assert ca.outcomes["failed"] == 1


@pytest_twisted.ensureDeferred
async def test_dynamic_challenge_is_single_use_and_picks_its_template(store, clock):
    ca = make_ca(store, clock)
    manager = CaManager(ca, store, TEMPLATES, 3600)
    challenge, expires_at = await manager.new_challenge("wifi", None)
    assert expires_at == EPOCH + 3600
    assert challenge not in str(await store.list_ca_requests())
    answer, (status, _, certs) = await enroll(ca, Device(), challenge=challenge)
    assert status == "SUCCESS"
    assert certs[0].not_valid_after_utc.timestamp() == EPOCH + 30 * DAY
    assert ExtendedKeyUsageOID.SERVER_AUTH in certs[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    again, (status, fail, _) = await enroll(ca, Device("device-2"), challenge=challenge)
    assert (status, fail) == ("FAILURE", "badRequest")


@pytest_twisted.ensureDeferred
async def test_dynamic_challenge_expires(store, clock):
    ca = make_ca(store, clock)
    challenge, _ = await CaManager(ca, store, TEMPLATES, 3600).new_challenge(None, 60)
    clock.advance(61)
    _, (status, fail, _) = await enroll(ca, Device(), challenge=challenge)
    assert (status, fail) == ("FAILURE", "badRequest")


@pytest_twisted.ensureDeferred
async def test_minting_refuses_unknown_template_and_bad_ttl(store, clock):
    manager = CaManager(make_ca(store, clock), store, TEMPLATES, 3600)
    with pytest.raises(ManageError, match="template must be one of default, wifi"):
        await manager.new_challenge("nope", None)
    with pytest.raises(ManageError, match="ttl"):
        await manager.new_challenge(None, 0)


@pytest_twisted.ensureDeferred
async def test_subject_or_network_outside_rules_waits_for_admin(store, clock):
    ca = make_ca(store, clock, auto_approve_subject=r"CN=laptop-\d+",
                 auto_approve_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    answer, (status, _, _) = await enroll(ca, Device("laptop-7"), requester="10.1.2.3")
    assert status == "SUCCESS"
    answer, (status, _, _) = await enroll(ca, Device("printer"), requester="10.1.2.3")
    assert (status, answer.outcome) == ("PENDING", "pending")
    answer, (status, _, _) = await enroll(ca, Device("laptop-8"), requester="192.168.1.1")
    assert status == "PENDING"
    # The static challenge through the proxy has no network to match: a reusable secret waits for an admin.
    answer, (status, _, _) = await enroll(ca, Device("laptop-9"), requester=None)
    assert status == "PENDING"
    assert sorted(r.subject for r in await store.list_ca_requests("pending")) == ["CN=laptop-8", "CN=laptop-9", "CN=printer"]


# -- pending, approval, polling, retransmission --------------------------------------------


def poll(ca, device, transaction_id):
    return device.request(
        ca, "CertPoll", transaction_id=transaction_id,
        issuer_and_subject=(ca.material.certificate.subject, device.cert.subject),
    )


@pytest_twisted.ensureDeferred
async def test_pending_then_approved_then_polled(store, clock):
    ca, device = make_ca(store, clock, auto_approve=False), Device()
    manager = CaManager(ca, store, TEMPLATES, 3600)
    request = device.request(ca, csr=device.csr())
    header = codec.read_header(request)
    first = await ca.pki_operation(request, "10.0.0.5")
    assert device.read(ca, first)[0] == "PENDING"
    polled = await ca.pki_operation(poll(ca, device, header.transaction_id), "10.0.0.5")
    assert device.read(ca, polled)[0] == "PENDING"

    approved = await manager.approve(header.transaction_id)
    assert approved.status == "approved" and approved.issued_serial
    with pytest.raises(ManageError, match="not pending"):
        await manager.approve(header.transaction_id)

    polled = await ca.pki_operation(poll(ca, device, header.transaction_id), "10.0.0.5")
    status, _, certs = device.read(ca, polled)
    assert status == "SUCCESS" and "%x" % certs[0].serial_number == approved.issued_serial
    assert (await store.get_ca_request(header.transaction_id)).status == "issued"
    # A second poll still gets it, and so does the requester resending its PKCSReq (its answer may have
    # been lost); the same message signed by anyone else does not. Never a second certificate.
    assert device.read(ca, await ca.pki_operation(poll(ca, device, header.transaction_id), "x"))[0] == "SUCCESS"
    again = await ca.pki_operation(request, "10.0.0.5")
    status, _, certs = device.read(ca, again)
    assert (status, "%x" % certs[0].serial_number, again.outcome) == ("SUCCESS", approved.issued_serial,
                                                                        "answered_again")
    assert codec.read_response(again.body, device.key, device.cert, ca.material.certificate)
    stranger = Device("stranger")
    replay = await ca.pki_operation(resigned(request, stranger), "10.0.0.5")
    assert device.read(ca, replay, signer=(stranger.cert, stranger.key))[:2] == ("FAILURE", "badRequest")
    assert fail_info_text(replay.body) == "this message was answered already"
    assert len(await store.list_issued_certificates()) == 1


@pytest_twisted.ensureDeferred
async def test_resent_pkcsreq_is_how_scepclient_polls(store, clock):
    ca, device = make_ca(store, clock, auto_approve=False), Device()
    request = device.request(ca, csr=device.csr())
    txid = codec.read_header(request).transaction_id
    assert device.read(ca, await ca.pki_operation(request, "h"))[0] == "PENDING"
    assert device.read(ca, await ca.pki_operation(request, "h"))[0] == "PENDING"
    # While it is open, the transaction ID is not taken by another CSR.
    other = device.request(ca, csr=device.csr(cn="someone-else"), transaction_id=txid)
    assert device.read(ca, await ca.pki_operation(other, "h"))[:2] == ("FAILURE", "badRequest")
    await CaManager(ca, store, TEMPLATES, 3600).approve(txid)
    status, _, certs = device.read(ca, await ca.pki_operation(request, "h"))
    assert status == "SUCCESS" and certs
    # Resent once more (the answer was lost): the same certificate, not a second one.
    status, _, again = device.read(ca, await ca.pki_operation(request, "h"))
    assert status == "SUCCESS" and again[0] == certs[0]
    assert len(await store.list_issued_certificates()) == 1


@pytest_twisted.ensureDeferred
async def test_rejected_request_fails_its_poll(store, clock):
    ca, device = make_ca(store, clock, auto_approve=False), Device()
    request = device.request(ca, csr=device.csr())
    txid = codec.read_header(request).transaction_id
    await ca.pki_operation(request, "h")
    rejected = await CaManager(ca, store, TEMPLATES, 3600).reject(txid, "not one of ours")
    assert (rejected.status, rejected.detail) == ("rejected", "not one of ours")
    answer = await ca.pki_operation(poll(ca, device, txid), "h")
    assert device.read(ca, answer)[:2] == ("FAILURE", "badRequest")
    assert fail_info_text(answer.body) == "not one of ours"
    assert answer.outcome == "rejected"
    unknown = await ca.pki_operation(poll(ca, device, "no-such-transaction"), "h")
    assert device.read(ca, unknown)[:2] == ("FAILURE", "badRequest")


# -- RenewalReq ------------------------------------------------------------------------------


async def issued_pair(ca, device):
    _, (_, _, certs) = await enroll(ca, device)
    return certs[0], device.key


@pytest.mark.parametrize("allow_days, days_before_expiry, allowed", [
    (0, 300, True), (14, 15, False), (14, 14, True), (14, 1, True), (14, -1, False),
])
@pytest_twisted.ensureDeferred
async def test_renewal_window(store, clock, allow_days, days_before_expiry, allowed):
    ca, device = make_ca(store, clock, allow_renew_days=allow_days), Device()
    old = await issued_pair(ca, device)
    clock.advance(365 * DAY - days_before_expiry * DAY)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = device.request(ca, "RenewalReq", signer=old, csr=device.csr(challenge=None, key=new_key))
    answer = await ca.pki_operation(request, "10.9.9.9")
    status, fail, certs = device.read(ca, answer, signer=old)
    if allowed:
        assert status == "SUCCESS"
        record = await store.get_issued_certificate("%x" % certs[0].serial_number)
        assert record.renewal_of == "%x" % old[0].serial_number
        assert certs[0].public_key().public_numbers() == new_key.public_key().public_numbers()
    else:
        assert (status, fail) == ("FAILURE", "badRequest")


@pytest_twisted.ensureDeferred
async def test_renewal_refused_for_revoked_foreign_or_other_subject(store, clock):
    ca, device = make_ca(store, clock, allow_renew_days=0), Device()
    old = await issued_pair(ca, device)
    other_subject = device.request(ca, "RenewalReq", signer=old, csr=device.csr(challenge=None, cn="admin"))
    answer = await ca.pki_operation(other_subject, "h")
    assert device.read(ca, answer, signer=old)[:2] == ("FAILURE", "badRequest")
    assert "keep the subject" in fail_info_text(answer.body)

    foreign = self_signed("device-1", key=device.key)
    answer = await ca.pki_operation(device.request(ca, "RenewalReq", signer=foreign, csr=device.csr(None)), "h")
    assert fail_info_text(answer.body) == "renewal must be signed by a certificate this CA issued"

    await CaManager(ca, store, TEMPLATES, 3600).revoke("%x" % old[0].serial_number, "superseded")
    answer = await ca.pki_operation(device.request(ca, "RenewalReq", signer=old, csr=device.csr(None)), "h")
    assert fail_info_text(answer.body) == "the certificate being renewed is revoked"


# -- GetCert / GetCRL / revocation ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_cert_and_get_crl(store, clock):
    ca, device = make_ca(store, clock), Device()
    issued, _ = await issued_pair(ca, device)
    subject = ca.material.certificate.subject
    answer = await ca.pki_operation(
        device.request(ca, "GetCert", issuer_and_serial=(subject, issued.serial_number)), "h")
    assert device.read(ca, answer)[2] == [issued]
    answer = await ca.pki_operation(device.request(ca, "GetCert", issuer_and_serial=(subject, 12345)), "h")
    assert device.read(ca, answer)[:2] == ("FAILURE", "badCertId")

    record = await CaManager(ca, store, TEMPLATES, 3600).revoke("%X" % issued.serial_number, "key_compromise")
    assert record.status == "revoked" and record.revocation_reason == "key_compromise"
    answer = await ca.pki_operation(
        device.request(ca, "GetCRL", issuer_and_serial=(subject, issued.serial_number)), "h")
    status, _, found = device.read(ca, answer)
    crl = found[0]
    assert status == "SUCCESS" and isinstance(crl, x509.CertificateRevocationList)
    assert crl.is_signature_valid(ca.material.certificate.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(issued.serial_number)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.next_update_utc.timestamp() == EPOCH + 7 * DAY


@pytest_twisted.ensureDeferred
async def test_revoke_refusals(store, clock):
    ca, device = make_ca(store, clock), Device()
    manager = CaManager(ca, store, TEMPLATES, 3600)
    issued, _ = await issued_pair(ca, device)
    with pytest.raises(ManageError, match="reason must be one of"):
        await manager.revoke("%x" % issued.serial_number, "because")
    with pytest.raises(ManageError) as missing:
        await manager.revoke("abc", None)
    assert missing.value.kind == "not_found"
    await manager.revoke("%x" % issued.serial_number, None)
    with pytest.raises(ManageError) as twice:
        await manager.revoke("%x" % issued.serial_number, None)
    assert twice.value.kind == "conflict"


@pytest_twisted.ensureDeferred
async def test_crl_is_cached_until_a_revocation(store, clock):
    ca = make_ca(store, clock)
    first = await ca.crl.der()
    assert await ca.crl.der() is first
    issued, _ = await issued_pair(ca, Device())
    await CaManager(ca, store, TEMPLATES, 3600).revoke("%x" % issued.serial_number, None)
    second = await ca.crl.der()
    assert second != first
    crl = x509.load_der_x509_crl(second)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial_number) is not None


@pytest_twisted.ensureDeferred
async def test_a_revocation_on_another_node_reaches_this_nodes_crl_within_its_check_interval(store, clock):
    here = make_ca(store, clock)
    elsewhere = make_ca(store, clock, material=here.material)  # a second node: same key, same database
    first = await here.crl.der()
    issued, _ = await issued_pair(elsewhere, Device())
    await CaManager(elsewhere, store, TEMPLATES, 3600).revoke("%x" % issued.serial_number, None)
    assert await here.crl.der() is first  # nobody told this node; it looks again after its interval
    clock.advance(here.crl.check_interval)
    crl = x509.load_der_x509_crl(await here.crl.der())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial_number) is not None


# -- RA ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ra_decrypts_and_signs_with_ca_as_extra_certificate(store, clock):
    ca, device = make_ca(store, clock, ra=True), Device()
    answer, (status, _, certs) = await enroll(ca, device)
    assert status == "SUCCESS"
    certs[0].verify_directly_issued_by(ca.material.certificate)
    signed = cms.ContentInfo.load(answer.body)["content"]
    included = {c.chosen.dump() for c in signed["certificates"]}
    assert ca.material.certificate.public_bytes(Encoding.DER) in included
    assert ca.material.ra_certificate.public_bytes(Encoding.DER) in included


# -- the profile engine ------------------------------------------------------------------------


FLEET_PROFILE = (Path(__file__).parent / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig")


async def host_profile_challenge(store, host="H1", serial="S1", profile="P1"):
    """A pending host profile using the Fleet sample with CA builtin, and its rendered one-time CA challenge."""
    if await store.get_ca("builtin") is None:
        await store.add_ca("builtin", "http://ca.test:8080/scep")
    await store.upsert_host(host, serial, "macos")
    if await store.get_profile(profile) is None:
        content = FLEET_PROFILE.read_bytes().replace(b"CA_NAME", b"builtin")
        await store.add_profile(profile, "Wi-Fi", "macos", content, "builtin")
    hp = await store.assign_profile(host, profile)
    await store.set_host_profile_status(host, profile, "pending")
    challenge = mint_challenge()
    await store.issue_host_profile_ca_challenge(host, profile, challenge_hash(challenge), "default")
    return hp, challenge


def rendered_subject(serial, renewal_id):
    """The subject the Fleet sample renders: CN '<serial> WIFI <renewal ID>', OU 'FLEET DEVICE MANAGEMENT'."""
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "%s WIFI %s" % (serial, renewal_id))]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                           "FLEET DEVICE MANAGEMENT")]),
    ])


@pytest_twisted.ensureDeferred
async def test_host_profile_challenge_issues_once_and_records_on_that_host_profile(store, clock):
    hp, challenge = await host_profile_challenge(store)
    ca = make_ca(store, clock, static_enabled=False, auto_approve_networks=())
    device = Device()
    subject = rendered_subject("S1", hp.renewal_id)
    answer, (status, _, certs) = await enroll(ca, device, challenge=challenge, subject=subject)
    assert (status, answer.outcome) == ("SUCCESS", "issued")
    after = await store.get_host_profile("H1", "P1")
    assert after.status == "verified"
    assert after.cert_serial == "%x" % certs[0].serial_number
    assert after.cert_not_after == certs[0].not_valid_after_utc.timestamp()
    record = (await store.list_issued_certificates())[0]
    assert (record.host_uuid, record.profile_uuid) == ("H1", "P1")
    # The one-time challenge works once: a second request with it gets no certificate.
    again, (status, fail, _) = await enroll(ca, Device("device-2"), challenge=challenge, subject=subject)
    assert (status, fail, fail_info_text(again.body)) == ("FAILURE", "badRequest", WRONG_CHALLENGE)
    assert len(await store.list_issued_certificates()) == 1


@pytest_twisted.ensureDeferred
async def test_one_time_challenge_survives_a_failure_before_the_outcome_is_recorded(store, clock, monkeypatch):
    """The challenge is spent in the transaction that records the certificate: a crash before it costs nothing."""
    hp, challenge = await host_profile_challenge(store)
    ca = make_ca(store, clock, static_enabled=False)
    device = Device()
    message = device.request(ca, csr=device.csr(challenge=challenge, subject=rendered_subject("S1", hp.renewal_id)))
    record_issued = store.record_issued

    def fails_once(*args, **kwargs):
        monkeypatch.setattr(store, "record_issued", record_issued)
        return defer.fail(StoreUnavailable("disk full (SQLITE_FULL)"))

    monkeypatch.setattr(store, "record_issued", fails_once)
    with pytest.raises(StoreUnavailable):
        await ca.pki_operation(message, "10.0.0.5")  # the daemon answers 503 here; nothing was recorded
    assert await store.list_issued_certificates() == []
    status, _, certs = device.read(ca, await ca.pki_operation(message, "10.0.0.5"))  # the device's retry
    assert status == "SUCCESS" and certs
    assert (await store.get_host_profile("H1", "P1")).status == "verified"


@pytest_twisted.ensureDeferred
async def test_one_time_challenge_issues_once_under_concurrent_requests(store, clock):
    minted, _ = await CaManager(make_ca(store, clock), store, TEMPLATES, 3600).new_challenge(None, None)
    ca = make_ca(store, clock, static_enabled=False)
    devices = [Device("device-%d" % i) for i in range(6)]
    answers = await defer.gatherResults([
        defer.ensureDeferred(ca.pki_operation(d.request(ca, csr=d.csr(challenge=minted)), "10.0.0.5")) for d in devices
    ])
    statuses = sorted(d.read(ca, a)[0] for d, a in zip(devices, answers))
    assert statuses == ["FAILURE"] * 5 + ["SUCCESS"]
    assert len(await store.list_issued_certificates()) == 1


@pytest_twisted.ensureDeferred
async def test_certificate_never_lands_on_the_host_profile_its_subject_names(store, clock):
    victim, _ = await host_profile_challenge(store, host="H2", serial="S2")
    ca = make_ca(store, clock)  # static challenge on, any network auto-approved: the loosest configuration
    answer, (status, _, _) = await enroll(ca, Device("wifi %s" % victim.renewal_id))
    assert status == "SUCCESS"
    record = (await store.list_issued_certificates())[0]
    assert (record.host_uuid, record.profile_uuid) == (None, None)
    after = await store.get_host_profile("H2", "P1")
    assert (after.status, after.cert_serial) == ("pending", None)


@pytest_twisted.ensureDeferred
async def test_static_challenge_is_refused_while_off(store, clock):
    ca = make_ca(store, clock, static_enabled=False)
    answer, (status, fail, _) = await enroll(ca, Device())
    assert (status, fail, fail_info_text(answer.body)) == ("FAILURE", "badRequest", WRONG_CHALLENGE)
    assert await store.list_issued_certificates() == []


@pytest_twisted.ensureDeferred
async def test_cert_poll_answers_only_the_requesting_key(store, clock):
    ca, device = make_ca(store, clock, auto_approve=False), Device()
    request = device.request(ca, csr=device.csr())
    txid = codec.read_header(request).transaction_id
    await ca.pki_operation(request, "h")
    await CaManager(ca, store, TEMPLATES, 3600).approve(txid)
    stranger = Device("stranger")
    for message in (poll(ca, stranger, txid), stranger.request(ca, csr=device.csr())):
        answer = await ca.pki_operation(message, "h")
        assert stranger.read(ca, answer)[:2] == ("FAILURE", "badRequest")
    assert (await store.get_ca_request(txid)).status == "approved"  # the stranger changed nothing
    status, _, certs = device.read(ca, await ca.pki_operation(poll(ca, device, txid), "h"))
    assert status == "SUCCESS" and certs
    assert (await store.get_ca_request(txid)).status == "issued"


@pytest_twisted.ensureDeferred
async def test_get_cert_answers_only_the_holder_or_requester(store, clock):
    ca, device = make_ca(store, clock), Device()
    _, (_, _, certs) = await enroll(ca, device)
    subject, serial = ca.material.certificate.subject, certs[0].serial_number
    stranger = Device("stranger")
    answer = await ca.pki_operation(stranger.request(ca, "GetCert", issuer_and_serial=(subject, serial)), "h")
    assert stranger.read(ca, answer)[:2] == ("FAILURE", "badCertId")
    answer = await ca.pki_operation(device.request(ca, "GetCert", issuer_and_serial=(subject, serial)), "h")
    assert device.read(ca, answer)[0] == "SUCCESS"
    holder = (certs[0], device.key)  # signed with the issued certificate itself
    answer = await ca.pki_operation(device.request(ca, "GetCert", signer=holder, issuer_and_serial=(subject, serial)),
                                    "h")
    assert device.read(ca, answer, signer=holder)[0] == "SUCCESS"


# -- hostile messages --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unreadable_messages_get_400_and_nothing_else(store, clock):
    ca, device = make_ca(store, clock), Device()
    good = device.request(ca, csr=device.csr())
    for body in (b"", b"garbage", good[: len(good) // 2], good[:-7], b"\x30\x80" + b"\x00" * 10):
        answer = await ca.pki_operation(body, "h")
        assert (answer.status, answer.body, answer.outcome) == (400, b"not a SCEP message\n", "not_scep")
    # One flipped byte in the signature: the header cannot be trusted, so no CertRep either.
    tampered = bytearray(good)
    tampered[-20] ^= 0xFF
    answer = await ca.pki_operation(bytes(tampered), "h")
    assert answer.status == 400
    assert await store.list_issued_certificates() == []


@pytest_twisted.ensureDeferred
async def test_wrong_recipient_gets_bad_message_check(store, clock):
    ca, device = make_ca(store, clock), Device()
    stranger, _ = self_signed("Some Other CA")
    der, _ = codec.build_request(message_type="PKCSReq", signer_key=device.key, signer_certificate=device.cert,
                                 recipient_certificate=stranger, csr=device.csr())
    answer = await ca.pki_operation(der, "h")
    assert (answer.outcome, device.read(ca, answer)[:2]) == ("bad_message", ("FAILURE", "badMessageCheck"))
    assert fail_info_text(answer.body) is None


def resigned(message: bytes, signer: Device) -> bytes:
    """``message`` (its envelope, transactionID and senderNonce) signed by ``signer`` instead: a replay by someone else."""
    opened = codec_signed.open_signed_data(message)
    header = codec.read_header(message)
    attributes = codec_attributes.encode_attributes(
        content_digest=codec_digest(header.digest_algorithm, opened.content),
        message_type=codec.MESSAGE_TYPES[header.message_type], transaction_id=header.transaction_id,
        sender_nonce=header.sender_nonce,
    )
    return codec_signed.build_signed_data(content=opened.content, attributes=attributes, signer_key=signer.key,
                                          signer_certificate=signer.cert, digest_algorithm=header.digest_algorithm)


@pytest_twisted.ensureDeferred
async def test_retried_message_gets_its_answer_again_and_a_replay_nothing(store, clock):
    """A lost answer: the requester's retry of the same message gets the same CertRep; anyone else gets nothing."""
    ca, device = make_ca(store, clock), Device()
    request = device.request(ca, csr=device.csr())
    header = codec.read_header(request)
    first = await ca.pki_operation(request, "10.0.0.5")
    status, _, certs = device.read(ca, first)
    assert (status, first.outcome) == ("SUCCESS", "issued")
    kept = await store.get_ca_request(header.transaction_id)
    assert kept.answer == first.body  # kept with the certificate, in the same store transaction
    for _ in range(3):
        again = await ca.pki_operation(request, "10.0.0.5")
        assert (again.status, again.body, again.outcome, again.serial) == (200, first.body, "answered_again",
                                                                           first.serial)
        status, _, same = device.read(ca, again)
        assert status == "SUCCESS" and same == certs
        # RFC 8894 clients check recipientNonce = their senderNonce: it is that message's.
        recipient_nonce = codec_signed.open_signed_data(again.body).attributes.octets(
            codec_attributes.RECIPIENT_NONCE_OID, "recipientNonce")
        assert recipient_nonce == header.sender_nonce
    stranger = Device("stranger")
    replay = await ca.pki_operation(resigned(request, stranger), "10.0.0.5")
    assert device.read(ca, replay, signer=(stranger.cert, stranger.key))[:2] == ("FAILURE", "badRequest")
    assert fail_info_text(replay.body) == "this message was answered already"
    # A new message from the same device (a new senderNonce) is a new request: the transaction is finished.
    renewed = await ca.pki_operation(device.request(ca, csr=device.csr()), "10.0.0.5")
    assert device.read(ca, renewed)[0] == "SUCCESS" and renewed.serial != first.serial
    assert len(await store.list_issued_certificates()) == 2


@pytest_twisted.ensureDeferred
async def test_the_same_message_twice_at_once_yields_one_certificate(store, clock):
    """Both copies pass the first look-up; the store's transaction lets one issue and the other gets its answer."""
    ca, device = make_ca(store, clock), Device()
    request = device.request(ca, csr=device.csr())
    ca_threaded = ScepCA(store, ca_material(), policy(), TEMPLATES, "http://ca.test:8080", 7 * DAY, clock)
    answers = await defer.gatherResults([
        defer.ensureDeferred(ca_threaded.pki_operation(request, "10.0.0.5")) for _ in range(4)
    ])
    assert sorted(a.outcome for a in answers).count("issued") == 1
    assert {device.read(ca, a)[2][0].serial_number for a in answers} == {int(answers[0].serial, 16)}
    assert len(await store.list_issued_certificates()) == 1



@pytest.mark.parametrize("auto_approve", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_copy_that_finds_the_challenge_spent_by_its_twin_gets_the_twins_answer(store, clock, monkeypatch,
                                                                                       auto_approve):
    """The second copy looked its message up before the first was recorded, then found its one-time challenge spent."""
    ca, device = make_ca(store, clock, auto_approve=auto_approve), Device()
    minted, _ = await CaManager(ca, store, TEMPLATES, 3600).new_challenge(None, None)
    request = device.request(ca, csr=device.csr(challenge=minted))
    first = await ca.pki_operation(request, "10.0.0.5")
    looked_up, recorded = [], store.seen_request

    async def not_yet_recorded_the_first_time(transaction_id, sender_nonce):
        looked_up.append(transaction_id)
        return (None, False) if len(looked_up) == 1 else await recorded(transaction_id, sender_nonce)

    monkeypatch.setattr(store, "seen_request", not_yet_recorded_the_first_time)
    second = await ca.pki_operation(request, "10.0.0.5")
    assert len(looked_up) == 2
    if auto_approve:
        assert (first.outcome, second.outcome) == ("issued", "answered_again")
        assert device.read(ca, second)[2][0].serial_number == int(first.serial, 16)
    else:
        assert (first.outcome, second.outcome) == ("pending", "still_pending")
        assert device.read(ca, second)[0] == "PENDING"
    assert len(await store.list_issued_certificates()) == (1 if auto_approve else 0)
    # Another device's request with that spent challenge is still refused.
    other = Device()
    refused = await ca.pki_operation(other.request(ca, csr=other.csr(challenge=minted)), "10.0.0.5")
    assert other.read(ca, refused)[:2] == ("FAILURE", "badRequest")


@pytest_twisted.ensureDeferred
async def test_openssl_verifies_the_cas_failure_and_pending_answers(store, clock, tmp_path):
    """certmonger and ``openssl cms -verify`` refuse a SignedData without eContent ("no content")."""
    ca, device = make_ca(store, clock, auto_approve=False), Device()
    failure = await ca.pki_operation(device.request(ca, csr=device.csr(challenge="wrong")), "10.0.0.5")
    pending = await ca.pki_operation(device.request(ca, csr=device.csr()), "10.0.0.5")
    assert device.read(ca, failure)[:2] == ("FAILURE", "badRequest")
    assert device.read(ca, pending)[0] == "PENDING"
    (tmp_path / "ca.pem").write_bytes(ca.material.certificate.public_bytes(Encoding.PEM))
    for answer in (failure, pending):
        verified = subprocess.run(
            [need("openssl"), "cms", "-verify", "-inform", "DER", "-CAfile", str(tmp_path / "ca.pem")],
            input=answer.body, capture_output=True, timeout=30,
        )
        assert verified.returncode == 0, verified.stderr
        assert b"Verification successful" in verified.stderr


class _MemoryStore:
    """Just enough store for the property test, with no DB thread: every call finishes at once."""

    def __init__(self):
        self.requests = {}

    async def get_ca_request(self, transaction_id):
        return self.requests.get(transaction_id)

    async def seen_request(self, transaction_id, sender_nonce):
        return self.requests.get(transaction_id), False

    async def peek_ca_challenge(self, challenge_hash):
        return None

    async def add_pending_request(self, request, spend_challenge=None):
        self.requests[request.transaction_id] = request


_FUZZ_DEVICE = Device("fuzzed")
_FUZZ_CA = ScepCA(_MemoryStore(), ca_material(), policy(auto_approve=False), TEMPLATES, "http://ca.test", DAY,
                  Clock(), run_in_thread=in_line)
_FUZZ_GOOD = _FUZZ_DEVICE.request(_FUZZ_CA, csr=_FUZZ_DEVICE.csr())


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_mutated_requests_never_break_the_ca(data):
    """Any byte flipped, cut or inserted: a 400 or a readable CertRep, never an exception."""
    good = _FUZZ_GOOD
    position = data.draw(st.integers(0, len(good) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip":
        body = good[:position] + bytes([good[position] ^ data.draw(st.integers(1, 255))]) + good[position + 1:]
    elif kind == "cut":
        body = good[:position]
    else:
        body = good[:position] + data.draw(st.binary(min_size=1, max_size=8)) + good[position:]
    d = defer.ensureDeferred(_FUZZ_CA.pki_operation(body, "10.0.0.5"))
    answer = d.result  # everything above finishes synchronously
    if answer.status == 400:
        assert answer.body == b"not a SCEP message\n"
    else:
        assert answer.status == 200
        assert _FUZZ_DEVICE.read(_FUZZ_CA, answer)[0] in ("PENDING", "FAILURE")


# -- host and end-user variables: the certificate names exactly this host's values --------------


async def username_profile_challenge(store, host, username):
    """A pending host profile whose subject is CN=<host's IdP username>, OU=<renewal ID>, and its CA challenge."""
    if await store.get_ca("builtin") is None:
        await store.add_ca("builtin", "http://ca.test:8080/scep")
    await store.upsert_host(host, "S-" + host, "macos", end_user={"idp_username": username})
    if await store.get_profile("PU") is None:
        content = FLEET_PROFILE.read_bytes().replace(b"CA_NAME", b"builtin").replace(
            b"%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID", b"$FLEET_VAR_HOST_END_USER_IDP_USERNAME").replace(
            b"FLEET DEVICE MANAGEMENT", b"$FLEET_VAR_SCEP_RENEWAL_ID")
        await store.add_profile("PU", "Wi-Fi user", "macos", content, "builtin",
                                variables=("FLEET_VAR_HOST_END_USER_IDP_USERNAME",))
    hp = await store.assign_profile(host, "PU")
    await store.set_host_profile_status(host, "PU", "pending")
    challenge = mint_challenge()
    await store.issue_host_profile_ca_challenge(host, "PU", challenge_hash(challenge), "default")
    return hp, challenge


def user_subject(username, renewal_id):
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, username)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, renewal_id)]),
    ])


@pytest_twisted.ensureDeferred
async def test_a_csr_naming_another_users_username_is_refused(store, clock):
    """Alice's one-time challenge buys a certificate for alice only: bob's name (another host's user) is refused."""
    await username_profile_challenge(store, "H-BOB", "bob@corp.example")
    hp, challenge = await username_profile_challenge(store, "H-ALICE", "alice@corp.example")
    ca = make_ca(store, clock, static_enabled=False, auto_approve_networks=())
    answer, (status, fail, _) = await enroll(ca, Device(), challenge=challenge,
                                             subject=user_subject("bob@corp.example", hp.renewal_id))
    assert (status, fail) == ("FAILURE", "badRequest")
    assert "alice@corp.example" in fail_info_text(answer.body)
    assert await store.list_issued_certificates() == []
    # The refused request spent that challenge; the next rendering's works for alice's own name.
    await store.set_host_profile_status("H-ALICE", "PU", "pending")
    challenge = mint_challenge()
    await store.issue_host_profile_ca_challenge("H-ALICE", "PU", challenge_hash(challenge), "default")
    answer, (status, _, certs) = await enroll(ca, Device("alice-2"), challenge=challenge,
                                              subject=user_subject("alice@corp.example", hp.renewal_id))
    assert status == "SUCCESS"
    assert certs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice@corp.example"


@pytest_twisted.ensureDeferred
async def test_a_host_without_the_value_gets_no_certificate(store, clock):
    hp, _ = await username_profile_challenge(store, "H-ALICE", "alice@corp.example")
    await store.set_end_user("H-ALICE", {"idp_username": None})
    # A challenge that reached the device anyway (rendered just before the value went).
    await store.set_host_profile_status("H-ALICE", "PU", "pending")
    challenge = mint_challenge()
    await store.issue_host_profile_ca_challenge("H-ALICE", "PU", challenge_hash(challenge), "default")
    ca = make_ca(store, clock, static_enabled=False, auto_approve_networks=())
    answer, (status, fail, _) = await enroll(ca, Device(), challenge=challenge,
                                             subject=user_subject("alice@corp.example", hp.renewal_id))
    assert (status, fail) == ("FAILURE", "badRequest")
    assert "host has no value for $FLEET_VAR_HOST_END_USER_IDP_USERNAME" in fail_info_text(answer.body)


@pytest_twisted.ensureDeferred
async def test_a_changed_username_retires_the_challenge_rendered_with_the_old_one(store, clock):
    hp, challenge = await username_profile_challenge(store, "H-ALICE", "alice@corp.example")
    await store.set_end_user("H-ALICE", {"idp_username": "alice.new@corp.example"})
    ca = make_ca(store, clock, static_enabled=False, auto_approve_networks=())
    for name in ("alice@corp.example", "alice.new@corp.example"):
        answer, (status, fail, _) = await enroll(ca, Device(name), challenge=challenge,
                                                 subject=user_subject(name, hp.renewal_id))
        assert (status, fail, fail_info_text(answer.body)) == ("FAILURE", "badRequest", WRONG_CHALLENGE)
    assert await store.list_issued_certificates() == []
