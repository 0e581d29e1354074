"""certmonger, the SCEP client of RHEL and FreeIPA hosts, against the built-in CA.

certmonger runs as a real daemon on a private socket in the test's directory
(tests/support/certmonger.py ``Certmonger``) and is driven with ``getcert`` as an operator
would: ``add-scep-ca`` then ``request``, ``refresh`` to poll now. It sends
PKIOperation as GET with percent-encoded base64, AES-256 and SHA-256.

At ``/scep`` with the static challenge (turned on as network gear would use
it): enrollment, a wrong challenge (CA_REJECTED), a request held for an
admin (CA_WORKING until approved, CA_REJECTED if rejected). Through the
proxy URL of a host profile that names the built-in CA: enrollment with the
profile's one-time challenge and exactly its subject, and a different subject
refused.
"""

import re
import time

import pytest_twisted
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.certmonger import Certmonger
from support.clients import load, openssl_verify
from support.daemon import Site
from support.site import OU, Fleet


def outcomes(log: str, transaction: str) -> list[str]:
    """The built-in CA's outcomes for one transaction, in order, from the daemon's log."""
    return re.findall(r"transaction=%s outcome=(\w+)" % (re.escape(transaction),), log)


def pending_request(s: Site, subject: str) -> dict:
    status, answer = s.admin("GET", "/api/v1/ca/requests?status=pending")
    assert status == 200, answer
    (request,) = [r for r in answer["requests"] if r["subject"] == subject]
    return request


# -- at /scep ---------------------------------------------------------------------------------------


def test_certmonger_enrolls_at_scep_with_the_static_challenge(ca_site, certmonger):
    s = ca_site()
    certmonger.add_scep_ca("scepproxyd", s.scep_url, s.ca_pem)

    certmonger.request("rhel-1", "scepproxyd", "CN=rhel-1.example", s.static_challenge)
    fields = certmonger.wait_for("rhel-1", Certmonger.DONE, Certmonger.REJECTED, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.DONE, fields
    assert (fields["issuer"], fields["subject"]) == ("CN=scepproxyd CA", "CN=rhel-1.example")

    path = certmonger.certificate_path("rhel-1")
    assert openssl_verify(s.ca_pem, path).strip().endswith("OK")
    certificate = load(path)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "rhel-1.example"
    _, listing = s.admin("GET", "/api/v1/ca/certificates")
    assert ["%x" % certificate.serial_number] == [c["serial"] for c in listing["certificates"]]

    log = s.daemon.log()
    assert "ca GetCACaps outcome=ok" in log and "ca GetCACert outcome=ok" in log
    assert "type=PKCSReq" in log and "outcome=issued" in log and "requester=127.0.0.1" in log
    assert s.static_challenge not in log


def test_certmonger_wrong_challenge_is_ca_rejected(ca_site, certmonger):
    s = ca_site()
    certmonger.add_scep_ca("scepproxyd", s.scep_url, s.ca_pem)
    certmonger.request("intruder", "scepproxyd", "CN=intruder", "not-the-challenge")
    fields = certmonger.wait_for("intruder", Certmonger.DONE, Certmonger.REJECTED, Certmonger.UNREACHABLE)
    # A signed FAILURE (badRequest) that certmonger verifies and reads: the CA said no, not "unreachable".
    assert fields["status"] == Certmonger.REJECTED, fields
    assert not certmonger.certificate_path("intruder").exists()
    log = s.daemon.log()
    assert "outcome=failed" in log and "challenge password missing or wrong" in log
    assert "not-the-challenge" not in log
    _, listing = s.admin("GET", "/api/v1/ca/certificates")
    assert listing["certificates"] == []


def test_certmonger_waits_for_an_admin_then_gets_the_certificate(ca_site, certmonger):
    s = ca_site(auto_approve_networks="-")  # the static challenge is valid, but every request waits
    certmonger.add_scep_ca("scepproxyd", s.scep_url, s.ca_pem)
    certmonger.request("switch-1", "scepproxyd", "CN=switch-1", s.static_challenge)
    assert certmonger.wait_for("switch-1", Certmonger.WAITING, Certmonger.REJECTED,
                               Certmonger.UNREACHABLE, Certmonger.DONE)["status"] == Certmonger.WAITING
    request = pending_request(s, "CN=switch-1")
    transaction = request["transaction_id"]

    # Asked again while nobody has decided: still waiting, nothing issued.
    certmonger.refresh("switch-1")
    for _ in range(200):
        if len(outcomes(s.daemon.log(), transaction)) >= 2:
            break
        time.sleep(0.1)
    assert outcomes(s.daemon.log(), transaction)[1:] in (["still_pending"], ["pending"])
    assert certmonger.wait_for("switch-1", Certmonger.WAITING)["status"] == Certmonger.WAITING
    assert not certmonger.certificate_path("switch-1").exists()

    approved = s.ctl("builtin-ca", "approve", transaction)
    assert approved.returncode == 0, approved.stderr
    certmonger.refresh("switch-1")
    fields = certmonger.wait_for("switch-1", Certmonger.DONE, Certmonger.REJECTED, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.DONE, fields
    path = certmonger.certificate_path("switch-1")
    openssl_verify(s.ca_pem, path)

    _, answer = s.admin("GET", "/api/v1/ca/requests?status=issued")
    (issued,) = [r for r in answer["requests"] if r["transaction_id"] == transaction]
    assert issued["issued_serial"] == "%x" % load(path).serial_number
    # certmonger polls by sending its PKCSReq again (same transaction), or by CertPoll.
    seen = outcomes(s.daemon.log(), transaction)
    assert seen[0] == "pending" and seen[-1] == "delivered", seen
    assert set(seen[1:-1]) <= {"pending", "still_pending"} and len(seen) >= 3, seen
    assert s.static_challenge not in s.daemon.log()


def test_certmonger_request_rejected_by_an_admin_is_ca_rejected(ca_site, certmonger):
    s = ca_site(auto_approve_networks="-")
    certmonger.add_scep_ca("scepproxyd", s.scep_url, s.ca_pem)
    certmonger.request("unwanted", "scepproxyd", "CN=unwanted", s.static_challenge)
    fields = certmonger.wait_for("unwanted", Certmonger.WAITING, Certmonger.REJECTED, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.WAITING, fields
    transaction = pending_request(s, "CN=unwanted")["transaction_id"]
    rejected = s.ctl("builtin-ca", "reject", transaction, "--reason", "unknown device")
    assert rejected.returncode == 0, rejected.stderr
    certmonger.refresh("unwanted")
    fields = certmonger.wait_for("unwanted", Certmonger.REJECTED, Certmonger.DONE, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.REJECTED, fields
    assert not certmonger.certificate_path("unwanted").exists()
    assert outcomes(s.daemon.log(), transaction)[-1] == "rejected"


# -- through the proxy URL of a host profile ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_certmonger_enrolls_through_the_proxy_url_for_exactly_the_rendered_subject(builtin_ca_daemon, certmonger):
    fleet = Fleet(builtin_ca_daemon)
    await fleet.set_up(["RHEL-7"])  # tests/fixtures/profiles/builtin-ca-wifi.mobileconfig: OU, then CN
    ca_pem = builtin_ca_daemon.directory / "state" / "ca" / "ca.pem"

    # A subject other than the profile's: the CA's FAILURE reaches certmonger as a rejection.
    url, challenge, cn = await fleet.deliver("RHEL-7")
    await threads.deferToThread(certmonger.add_scep_ca, "fleet-1", url, ca_pem)
    await threads.deferToThread(certmonger.request, "other", "fleet-1", "CN=anything", challenge)
    fields = await threads.deferToThread(certmonger.wait_for, "other", Certmonger.REJECTED,
                                         Certmonger.DONE, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.REJECTED, fields
    row = await fleet.status("RHEL-7")
    assert row["status"] is None and "subject" in row["detail"]
    assert await fleet.issued() == []

    # The re-rendered profile, asked for exactly: its URL, its challenge, its subject.
    url, challenge, cn = await fleet.deliver("RHEL-7")
    await threads.deferToThread(certmonger.add_scep_ca, "fleet-2", url, ca_pem)
    # certmonger (NSS) writes the subject's RDNs in the order given: the profile's order.
    await threads.deferToThread(certmonger.request, "wifi", "fleet-2", "OU=%s,CN=%s" % (OU, cn), challenge)
    fields = await threads.deferToThread(certmonger.wait_for, "wifi", Certmonger.DONE,
                                         Certmonger.REJECTED, Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.DONE, (fields, (await fleet.status("RHEL-7")))
    path = certmonger.certificate_path("wifi")
    openssl_verify(ca_pem, path)
    certificate = load(path)
    (issued,) = await fleet.issued()
    assert issued["subject"] == "CN=%s,OU=%s" % (cn, OU) and issued["serial"] == "%x" % certificate.serial_number
    row = await fleet.status("RHEL-7")
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % certificate.serial_number)

    log = builtin_ca_daemon.log()
    assert "proxy PKIOperation host=RHEL-7" in log and "requester=proxy" in log
    assert challenge not in log
