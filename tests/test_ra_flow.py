"""RA mode through the proxy resource: what a device hears when its request, the CA or the RA goes wrong.

Everything goes through the daemon's real device-facing tree (support.web):
a CA integration in ``ra`` mode added through the admin API, a profile
delivered by the admin and agent APIs, device requests built in process with
codec.build_request, the upstream CA another scepproxyd's built-in CA behind
StubTreq (or one that misbehaves in one way, support.web.MisbehavingCA).
Whether a one-time challenge was spent is proved the way a device finds out:
its next valid request enrolls, or is refused.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from scepproxyd.keys import load_or_create_key
from scepproxyd.scep import codec
from support.certs import csr as make_csr
from support.scep_capture import fail_info_text, make_device
from support.web import bound_subject, build_web, stop_web

CHALLENGE_FAILED = b"custom scep challenge failed\n"
UNUSABLE = b"the CA integration's RA identity is unusable\n"


def pki(path: str) -> str:
    return path + "?operation=PKIOperation"


async def ra_enrollment(web, url=None, source="self-signed"):
    """RA_CA in ra mode at ``url`` (the real upstream CA by default), and the host profile its device holds."""
    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "RA_CA", "url": url or web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge,
        "mode": "ra", "ra_certificate": source}))
    return await web.enrollment(ca="RA_CA")


async def proxied(web, outcome: str) -> float:
    return await web.metric("scepproxyd_proxy_requests_total", operation="PKIOperation", outcome=outcome)


async def enrolls(web, e) -> None:
    """The device's next valid request enrolls: the challenge was not spent."""
    request = await web.pkcs_req(e, subject=bound_subject(e))
    status, _, (certificate,) = request.read(await web.device("POST", pki(e.path), request.message))
    assert status == "SUCCESS"
    assert (await web.host_profile(e.host, e.profile))["cert_serial"] == "%x" % (certificate.serial_number,)


# -- the RA cannot read the request ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_cms_is_400_and_spends_nothing(web):
    e = await ra_enrollment(web)
    answer = await web.device("POST", pki(e.path), b"this is not a SCEP message")
    assert (answer.status, answer.body) == (400, b"PKIOperation message is not a CMS SignedData\n")
    assert await proxied(web, "bad_request") == 1
    await enrolls(web, e)


@pytest_twisted.ensureDeferred
async def test_a_signed_scep_message_that_is_no_request_is_400_and_spends_nothing(web):
    e = await ra_enrollment(web)
    key, certificate, _ = make_device("device", None)
    _, header = codec.build_request(message_type="GetCert", signer_key=key, signer_certificate=certificate,
                                    recipient_certificate=certificate, issuer_and_serial=(certificate.subject, 1))
    # A CertRep, as if the device echoed an answer back: signed, but not a request the RA could answer.
    cert_rep = codec.build_cert_rep(header=header, status="PENDING", signer_key=key, signer_certificate=certificate)
    answer = await web.device("POST", pki(e.path), cert_rep)
    assert (answer.status, answer.body) == (400, b"not a SCEP message\n")
    assert (await web.host_profile(e.host, e.profile))["status"] == "pending"
    await enrolls(web, e)


@pytest_twisted.ensureDeferred
async def test_a_request_encrypted_to_another_certificate_is_badmessagecheck_signed_by_the_ra(web):
    e = await ra_enrollment(web)
    ra_certificate = await web.ca_certificate(e)
    key, certificate, _ = make_device("device", None)
    csr = make_csr(key, bound_subject(e), challenge=e.challenge_password)
    # Encrypted to the upstream CA (the other certificate in the GetCACert answer): the RA cannot open it.
    message, _ = codec.build_request(
        message_type="PKCSReq", signer_key=key, signer_certificate=certificate, csr=csr,
        recipient_certificate=web.upstream_cas.ca.authority.material.certificate)
    answer = await web.device("POST", pki(e.path), message)
    assert answer.status == 200 and answer.content_type == b"application/x-pki-message"
    # Verified against the RA certificate the device was given: the RA signed it.
    assert codec.read_response(answer.body, key, certificate, ra_certificate) == ("FAILURE", "badMessageCheck", [])
    assert await proxied(web, "bad_message") == 1
    assert (await web.upstream_cas.store.list_ca_requests()) == []
    await enrolls(web, e)


@pytest.mark.parametrize("message_type", ["GetCert", "GetCRL"])
@pytest_twisted.ensureDeferred
async def test_getcert_and_getcrl_are_refused_as_not_supported(web, message_type):
    e = await ra_enrollment(web)
    ra_certificate = await web.ca_certificate(e)
    key, certificate, _ = make_device("device", None)
    message, _ = codec.build_request(
        message_type=message_type, signer_key=key, signer_certificate=certificate,
        recipient_certificate=ra_certificate,
        issuer_and_serial=(web.upstream_cas.ca.authority.material.certificate.subject, 7))
    answer = await web.device("POST", pki(e.path), message)
    assert codec.read_response(answer.body, key, certificate, ra_certificate) == ("FAILURE", "badRequest", [])
    assert fail_info_text(answer.body) == "%s is not supported through the proxy" % (message_type,)
    assert await proxied(web, "unsupported") == 1
    await enrolls(web, e)


# -- the upstream CA does not answer, or answers what the RA cannot read -------------------------


async def _until_the_ca_has_it(web, ca, answer):
    while "PKIOperation" not in ca.seen and not answer.called:
        for stub in (web.device_stub, web.upstream_stub):
            stub.flush()
        await deferLater(reactor, 0.001, lambda: None)


@pytest.mark.parametrize("how, status, reason", [
    ("reset", 502, b"upstream CA unreachable (ResponseNeverReceived)\n"),
    ("hang", 504, b"upstream CA sent no answer in time\n"),
])
@pytest_twisted.ensureDeferred
async def test_a_ca_that_never_answers_puts_the_challenge_back_for_the_retry(web, clock, how, status, reason):
    e = await ra_enrollment(web, url=web.upstream_cas.url(how))
    ca = web.upstream_cas.misbehaving[how]
    request = await web.pkcs_req(e, subject=bound_subject(e))
    pending = defer.ensureDeferred(web.device("POST", pki(e.path), request.message))
    await _until_the_ca_has_it(web, ca, pending)
    clock.advance(web.settings.upstream.response_timeout + 0.1)
    answer = await pending
    assert (answer.status, answer.body) == (status, reason)
    assert ca.seen.count("PKIOperation") == 1
    assert (await web.host_profile(e.host, e.profile))["status"] == "pending"
    ca.how = "well"
    retry = await web.device("POST", pki(e.path), request.message)  # the device sends the same request again
    assert request.read(retry)[0] == "SUCCESS"
    assert (await web.host_profile(e.host, e.profile))["status"] == "verified"


@pytest.mark.parametrize("how, reason", [
    ("garbage", b"upstream CA's answer is not a SCEP message the RA can read\n"),
    ("http_500", b"upstream CA failed (HTTP 500)\n"),
])
@pytest_twisted.ensureDeferred
async def test_a_ca_answer_the_ra_cannot_use_is_502_and_the_challenge_stays_spent(web, logs, how, reason):
    e = await ra_enrollment(web, url=web.upstream_cas.url(how))
    request = await web.pkcs_req(e, subject=bound_subject(e))
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (502, reason)
    if how == "garbage":
        assert "RA could not read the answer of CA RA_CA" in logs.text()
    web.upstream_cas.misbehaving[how].how = "well"
    retry = await web.device("POST", pki(e.path), request.message)
    assert (retry.status, retry.body) == (400, CHALLENGE_FAILED)


# -- the RA identity cannot be used ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_ra_key_the_secrets_key_no_longer_opens_is_a_clear_502_never_a_500(
        store, clock, db_path, tmp_path, logs):
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        e = await ra_enrollment(web, source="enroll")
        request = await web.pkcs_req(e, subject=bound_subject(e))
    finally:
        await stop_web(web)
    web.settings.key_file.unlink()  # secrets.key replaced: the sealed RA key (and challenge) no longer open
    load_or_create_key(web.settings.key_file)
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        caps = await web.device("GET", e.path + "?operation=GetCACaps")
        assert caps.status == 200  # the proxy's own caps: no key needed
        for answer in (await web.device("GET", e.path + "?operation=GetCACert"),
                       await web.device("POST", pki(e.path), request.message)):
            assert (answer.status, answer.body) == (502, UNUSABLE)
        assert "RA identity of CA RA_CA is unusable" in logs.text()
        assert (await web.host_profile(e.host, e.profile))["status"] == "pending"
        # The CA is still shown, and saving it with a new RA certificate mends it.
        assert (await web.ok(web.admin("GET", "/api/v1/cas/RA_CA")))["mode"] == "ra"
        mended = await web.ok(web.admin("PATCH", "/api/v1/cas/RA_CA", {"ra_certificate": "self-signed"}))
        assert mended["ra"]["certificate"] == "self-signed"
        assert (await web.device("GET", e.path + "?operation=GetCACert")).status == 200
        answer = await web.device("POST", pki(e.path), request.message)  # still encrypted to the old RA
        assert codec.read_response(answer.body, request.key, request.certificate,
                                   await web.ca_certificate(e))[:2] == ("FAILURE", "badMessageCheck")
    finally:
        await stop_web(web)


@pytest_twisted.ensureDeferred
async def test_enrolling_a_new_ra_after_the_secrets_key_was_replaced_asks_for_the_challenge(
        store, clock, db_path, tmp_path):
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        await ra_enrollment(web, source="enroll")
    finally:
        await stop_web(web)
    web.settings.key_file.unlink()
    load_or_create_key(web.settings.key_file)
    web = await build_web(store, clock, tmp_path, database=db_path)
    try:
        answer = await web.admin("PATCH", "/api/v1/cas/RA_CA", {"ra_certificate": "enroll"})
        assert answer.status == 422, answer.body
        assert answer.json()["field"] == "challenge"
        assert "give the challenge again" in answer.json()["error"]
        mended = await web.ok(web.admin("PATCH", "/api/v1/cas/RA_CA", {
            "ra_certificate": "enroll", "challenge": web.upstream_cas.static_challenge}))
        assert mended["ra"]["certificate"] == "enrolled"
    finally:
        await stop_web(web)


# -- what the RA decides itself: policy and renewal ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_csr_the_profile_does_not_render_never_reaches_the_ca(web):
    e = await ra_enrollment(web)
    request = await web.pkcs_req(e, cn="SER-%s WIFI another-host" % (e.host,))
    answer = await web.device("POST", pki(e.path), request.message)
    assert request.read(answer)[:2] == ("FAILURE", "badRequest")
    assert "subject" in fail_info_text(answer.body)
    assert await web.upstream_cas.store.list_ca_requests() == []
    hp = await web.host_profile(e.host, e.profile)
    assert (hp["status"], hp["retries"]) == (None, 1)
    assert hp["detail"].startswith("RA refused the request: ")
    assert await proxied(web, "policy_refused") == 1


@pytest_twisted.ensureDeferred
async def test_a_renewal_signed_by_the_recorded_certificate_renews_it_once(web, clock):
    e = await ra_enrollment(web)
    request = await web.pkcs_req(e, subject=bound_subject(e))
    _, _, (first,) = request.read(await web.device("POST", pki(e.path), request.message))
    ra_certificate = request.ca_certificate

    def renewal(signer_key, signer_certificate):
        key, _, _ = make_device("renewed", None)
        csr = make_csr(key, bound_subject(e), challenge=e.challenge_password)
        message, _ = codec.build_request(message_type="RenewalReq", signer_key=signer_key,
                                         signer_certificate=signer_certificate, csr=csr,
                                         recipient_certificate=ra_certificate)
        return key, message

    clock.advance(3600)  # later: the new certificate starts after the old one (dates never move backwards)
    key, message = renewal(request.key, first)
    answer = await web.device("POST", pki(e.path), message)
    status, _, (second,) = codec.read_response(answer.body, request.key, first, ra_certificate)
    assert status == "SUCCESS" and second.serial_number != first.serial_number
    assert (await web.host_profile(e.host, e.profile))["cert_serial"] == "%x" % (second.serial_number,)
    assert await proxied(web, "ok") == 2
    # The old certificate renewed once: a second renewal signed by it is refused, and the CA never sees it.
    issued = len(await web.upstream_cas.store.list_issued_certificates())
    _, again = renewal(request.key, first)
    answer = await web.device("POST", pki(e.path), again)
    assert codec.read_response(answer.body, request.key, first, ra_certificate)[:2] == ("FAILURE", "badRequest")
    assert await proxied(web, "renewal_refused") == 1
    assert len(await web.upstream_cas.store.list_issued_certificates()) == issued


@pytest_twisted.ensureDeferred
async def test_a_renewal_in_the_same_second_replaces_the_certificate_it_renews(web, logs):
    e = await ra_enrollment(web)
    request = await web.pkcs_req(e, subject=bound_subject(e))
    _, _, (first,) = request.read(await web.device("POST", pki(e.path), request.message))
    key, _, _ = make_device("renewed", None)
    message, _ = codec.build_request(  # renewed within the same second: the same notBefore
        message_type="RenewalReq", signer_key=request.key, signer_certificate=first,
        csr=make_csr(key, bound_subject(e), challenge=e.challenge_password),
        recipient_certificate=request.ca_certificate)
    answer = await web.device("POST", pki(e.path), message)
    status, _, (second,) = codec.read_response(answer.body, request.key, first, request.ca_certificate)
    assert status == "SUCCESS"
    # Same notBefore (CAs write whole seconds): the renewal still replaces the certificate it renews,
    # so the old one cannot renew a second time.
    assert (await web.host_profile(e.host, e.profile))["cert_serial"] == "%x" % (second.serial_number,)
    assert "RA recorded certificate %x" % (second.serial_number,) in logs.text()
    again = await web.device("POST", pki(e.path), message)
    status, _, _ = codec.read_response(again.body, request.key, first, request.ca_certificate)
    assert status == "FAILURE"
