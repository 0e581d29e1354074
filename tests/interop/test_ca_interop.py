"""The built-in CA in the real daemon, with real clients: micromdm scepclient and strongSwan pki.

Directly at ``/scep``: enrollment, renewal, wrong challenge, the pending
flow with an admin's approval, revocation and the CRL, RA mode, hostile
bodies. Through the proxy: a host profile using CA ``builtin``. Admin
actions go through ``scepproxyctl`` and the admin API, as documented.
"""

import base64
import json
import os
import signal
import subprocess
import time
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AttributeOID, NameOID

from support.certs import self_signed
from support.clients import load, openssl_verify, pki, scepclient, strongswan_key
from support.daemon import Site
from support.processes import need
from scepproxyd.scep import codec

# -- micromdm scepclient ------------------------------------------------------------------------


def test_scepclient_enrolls_and_renews(ca_site, tmp_path):
    s = ca_site(allow_renew_days="0")
    status, content_type, caps = s.http("GET", s.scep_url + "?operation=GetCACaps")
    assert (status, content_type) == (200, "text/plain")
    assert b"Renewal" in caps and b"DES3" in caps

    device = tmp_path / "device"
    result = scepclient(device, s.scep_url, s.static_challenge, "laptop-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert openssl_verify(s.ca_pem, device / "client.pem").strip().endswith("OK")
    first = load(device / "client.pem")
    assert first.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "laptop-1"

    # Run again with client.pem in place: scepclient sends a RenewalReq signed by it.
    result = scepclient(device, s.scep_url, None, "laptop-1")
    assert result.returncode == 0, result.stdout + result.stderr
    renewed = load(device / "client.pem")
    assert renewed.serial_number != first.serial_number
    openssl_verify(s.ca_pem, device / "client.pem")
    log = s.daemon.log()
    assert "type=PKCSReq" in log and "type=RenewalReq" in log
    assert log.count("outcome=issued") == 2
    assert s.static_challenge not in log
    status, listing = s.admin("GET", "/api/v1/ca/certificates")
    by_serial = {c["serial"]: c for c in listing["certificates"]}
    assert by_serial["%x" % renewed.serial_number]["renewal_of"] == "%x" % first.serial_number


def test_scepclient_renewal_outside_window_and_wrong_challenge_fail(ca_site, tmp_path):
    s = ca_site()  # allow_renew_days = 14, certificates valid 365 days
    result = scepclient(tmp_path / "wrong", s.scep_url, "not-the-challenge", "intruder")
    assert result.returncode != 0
    assert "badRequest" in result.stdout + result.stderr
    assert not (tmp_path / "wrong" / "client.pem").exists()
    assert "outcome=failed" in s.daemon.log()
    assert "challenge password missing or wrong" in s.daemon.log()
    assert "not-the-challenge" not in s.daemon.log()

    device = tmp_path / "device"
    assert scepclient(device, s.scep_url, s.static_challenge, "laptop-2").returncode == 0
    result = scepclient(device, s.scep_url, None, "laptop-2")
    assert result.returncode != 0
    assert "renewal is allowed only in the last 14 days" in s.daemon.log()


def test_dynamic_challenge_from_cli_is_single_use(ca_site, tmp_path):
    s = ca_site()
    minted = s.ctl("builtin-ca", "challenge", "--ttl", "10m")
    assert minted.returncode == 0, minted.stderr
    challenge = minted.stdout.strip()
    assert len(challenge) == 32 and "\n" not in challenge
    assert challenge not in s.daemon.log()
    assert scepclient(tmp_path / "a", s.scep_url, challenge, "one").returncode == 0
    assert scepclient(tmp_path / "b", s.scep_url, challenge, "two").returncode != 0
    assert challenge not in s.daemon.log()


# -- strongSwan pki -------------------------------------------------------------------------------


def test_strongswan_enrolls_and_renews_with_aes_sha256(ca_site, tmp_path):
    s = ca_site(allow_renew_days="0", san_dns=r"[a-z0-9-]+\.example")  # its SAN is allowed by the template
    ca_der = tmp_path / "ca.der"
    result = pki("--scepca", "--url", s.scep_url, "--caout", str(ca_der))
    assert result.returncode == 0, result.stderr
    key = strongswan_key(tmp_path / "key.der")
    cert = tmp_path / "cert.der"
    result = pki("--scep", "--url", s.scep_url, "--in", str(key), "--dn", "CN=vpn-client,O=Example",
                 "--san", "vpn-client.example", "--password", s.static_challenge, "--cacert-enc", str(ca_der),
                 "--cacert-sig", str(ca_der), "--cipher", "aes", "--digest", "sha256")
    assert result.returncode == 0, result.stderr.decode()
    cert.write_bytes(result.stdout)
    openssl_verify(s.ca_pem, cert, der=True)
    issued = load(cert)
    san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "vpn-client.example" in san.get_values_for_type(x509.DNSName)

    new_key = strongswan_key(tmp_path / "key2.der")
    result = pki("--scep", "--url", s.scep_url, "--in", str(new_key), "--dn", "CN=vpn-client,O=Example",
                 "--cacert-enc", str(ca_der), "--cacert-sig", str(ca_der), "--cert", str(cert), "--key", str(key))
    assert result.returncode == 0, result.stderr.decode()
    renewed_path = tmp_path / "renewed.der"
    renewed_path.write_bytes(result.stdout)
    openssl_verify(s.ca_pem, renewed_path, der=True)
    assert load(renewed_path).serial_number != issued.serial_number
    assert "type=RenewalReq" in s.daemon.log()


@pytest.mark.parametrize("sans", [
    ["vpn-gw-a.site-one.example", "vpn-gw-b.site-one.example"],
    ["a-rather-long-name-for-the-vpn-gateway." + "far-end-of-the-site-" * 3 + "x" * 40 + ".example"],
])
def test_strongswan_enrolls_with_several_or_long_sans(ca_site, tmp_path, sans):
    """strongSwan writes its CSR's attributes unsorted (not DER) once the extension request outgrows the challenge."""
    s = ca_site(san_dns=r"([a-z0-9-]+\.)+example")
    ca_der = tmp_path / "ca.der"
    assert pki("--scepca", "--url", s.scep_url, "--caout", str(ca_der)).returncode == 0
    key = strongswan_key(tmp_path / "key.der")
    san_args = [arg for name in sans for arg in ("--san", name)]
    # The CSR strongSwan makes with these arguments is not DER: cryptography refuses it as written.
    made = pki("--req", "--in", str(key), "--dn", "CN=vpn-gw,O=Example", *san_args, "--password",
               s.static_challenge, "--outform", "der")
    assert made.returncode == 0, made.stderr.decode()
    with pytest.raises(ValueError, match="InvalidSetOrdering"):
        x509.load_der_x509_csr(made.stdout)
    result = pki("--scep", "--url", s.scep_url, "--in", str(key), "--dn", "CN=vpn-gw,O=Example", *san_args,
                 "--password", s.static_challenge, "--cacert-enc", str(ca_der), "--cacert-sig", str(ca_der))
    assert result.returncode == 0, result.stderr.decode()
    cert = tmp_path / "cert.der"
    cert.write_bytes(result.stdout)
    openssl_verify(s.ca_pem, cert, der=True)
    san = load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == sans
    assert "outcome=issued" in s.daemon.log() and "outcome=bad_message" not in s.daemon.log()


def test_cisco_path_and_pkiclient_in_any_case(ca_site, tmp_path):
    """Cisco IOS uses /cgi-bin/pkiclient.exe when its enrollment URL has no path; others write PKIClient.exe."""
    s = ca_site()
    root = s.daemon.url
    for path in ("/cgi-bin/pkiclient.exe", "/scep/PKICLIENT.EXE", "/scep/PKIClient.exe", "/cgi-bin/PkiClient.EXE"):
        status, content_type, caps = s.http("GET", root + path + "?operation=GetCACaps")
        assert (status, content_type, caps) == (200, "text/plain", s.http("GET", s.scep_url + "?operation=GetCACaps")[2])
        status, content_type, body = s.http("GET", root + path + "?operation=GetCACert")
        assert (status, content_type) == (200, "application/x-x509-ca-cert")
        assert x509.load_der_x509_certificate(body) == load(s.ca_pem)
    # PKIOperation by POST with the codec, and real clients at the Cisco path.
    message, cert, key = codec_request(s, s.static_challenge, cn="router-1")
    status, content_type, answer = s.http("POST", root + "/cgi-bin/pkiclient.exe?operation=PKIOperation", message)
    assert (status, content_type) == (200, "application/x-pki-message")
    assert codec.read_response(answer, key, cert, load(s.ca_pem))[0] == "SUCCESS"
    ca_der = tmp_path / "ca.der"
    assert pki("--scepca", "--url", root + "/cgi-bin/pkiclient.exe", "--caout", str(ca_der)).returncode == 0
    result = pki("--scep", "--url", root + "/cgi-bin/pkiclient.exe", "--in", str(strongswan_key(tmp_path / "k.der")),
                 "--dn", "CN=router-2", "--password", s.static_challenge, "--cacert-enc", str(ca_der),
                 "--cacert-sig", str(ca_der))
    assert result.returncode == 0, result.stderr.decode()
    result = scepclient(tmp_path / "device", root + "/scep/PKIClient.exe", s.static_challenge, "router-3")
    assert result.returncode == 0, result.stdout + result.stderr
    # Only pkiclient.exe lives under /cgi-bin; the CRL stays at /scep/crl.
    for path in ("/cgi-bin", "/cgi-bin/", "/cgi-bin/crl", "/cgi-bin/other.exe", "/scep/pkiclient.exe/x"):
        status, _, body = s.http("GET", root + path + "?operation=GetCACaps")
        assert status == 404, path
        assert body == b"no such SCEP resource\n" or path == "/cgi-bin", (path, body)
    assert s.http("GET", s.scep_url + "/crl")[0] == 200


def stranger_poll(s: Site, transaction_id: str, subject: str):
    """A CertPoll for someone else's transaction, signed with a key of its own, over HTTP: (pkiStatus, failInfo)."""
    ca_certificate = load(s.ca_pem)
    certificate, key = self_signed("stranger")
    message, _ = codec.build_request(
        message_type="CertPoll", signer_key=key, signer_certificate=certificate,
        recipient_certificate=ca_certificate, transaction_id=transaction_id,
        issuer_and_subject=(ca_certificate.subject, x509.Name.from_rfc4514_string(subject)),
    )
    status, _, body = s.http("POST", s.scep_url + "?operation=PKIOperation", message,
                             {"Content-Type": "application/x-pki-message"})
    assert status == 200, body
    return codec.read_response(body, key, certificate, ca_certificate)[:2]


def test_pending_request_approved_by_admin_reaches_polling_client(ca_site, tmp_path):
    s = ca_site(auto_approve="no")
    ca_der = tmp_path / "ca.der"
    assert pki("--scepca", "--url", s.scep_url, "--caout", str(ca_der)).returncode == 0
    key = strongswan_key(tmp_path / "key.der")
    client = subprocess.Popen(
        [need("pki"), "--scep", "--url", s.scep_url, "--in", str(key), "--dn", "CN=waiting-device",
         "--password", s.static_challenge, "--cacert-enc", str(ca_der), "--cacert-sig", str(ca_der),
         "--interval", "1", "--maxpolltime", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        pending = []
        for _ in range(100):
            _, answer = s.admin("GET", "/api/v1/ca/requests?status=pending")
            pending = answer["requests"]
            if pending:
                break
            time.sleep(0.1)
        assert [r["subject"] for r in pending] == ["CN=waiting-device"]
        transaction_id = pending[0]["transaction_id"]
        time.sleep(1.5)  # let it poll at least once while pending
        # A transaction ID is no secret: someone else polling it learns and changes nothing.
        assert stranger_poll(s, transaction_id, "CN=waiting-device") == ("FAILURE", "badRequest")
        approved = s.ctl("builtin-ca", "approve", transaction_id)
        assert approved.returncode == 0, approved.stderr
        assert "approved request" in approved.stdout
        assert stranger_poll(s, transaction_id, "CN=waiting-device") == ("FAILURE", "badRequest")
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGTERM)
            client.wait(10)
    assert client.returncode == 0, err.decode()
    cert = tmp_path / "cert.der"
    cert.write_bytes(out)
    openssl_verify(s.ca_pem, cert, der=True)
    log = s.daemon.log()
    assert "type=CertPoll" in log and "outcome=pending" in log and "outcome=delivered" in log
    _, answer = s.admin("GET", "/api/v1/ca/requests?status=issued")
    assert [r["transaction_id"] for r in answer["requests"]] == [pending[0]["transaction_id"]]


def test_rejected_request_fails_the_polling_client(ca_site, tmp_path):
    s = ca_site(auto_approve="no")
    ca_der = tmp_path / "ca.der"
    assert pki("--scepca", "--url", s.scep_url, "--caout", str(ca_der)).returncode == 0
    key = strongswan_key(tmp_path / "key.der")
    client = subprocess.Popen(
        [need("pki"), "--scep", "--url", s.scep_url, "--in", str(key), "--dn", "CN=unwanted",
         "--password", s.static_challenge, "--cacert-enc", str(ca_der), "--cacert-sig", str(ca_der),
         "--interval", "1", "--maxpolltime", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            _, answer = s.admin("GET", "/api/v1/ca/requests?status=pending")
            if answer["requests"]:
                break
            time.sleep(0.1)
        txid = answer["requests"][0]["transaction_id"]
        status, rejected = s.admin("POST", "/api/v1/ca/requests/%s/reject" % quote(txid, safe=""),
                                   {"reason": "unknown device"})
        assert (status, rejected["status"]) == (200, "rejected")
        client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGTERM)
            client.wait(10)
    assert client.returncode != 0
    assert "outcome=rejected" in s.daemon.log()


def test_ra_mode_serves_chain_and_clients_enroll(ca_site, tmp_path):
    s = ca_site(ra="yes")
    status, content_type, body = s.http("GET", s.scep_url + "?operation=GetCACert")
    assert (status, content_type) == (200, "application/x-x509-ca-ra-cert")
    assert len(codec.ca_certificates(body)) == 2
    ca_der, ra_der = tmp_path / "ca.der", tmp_path / "ra.der"
    result = pki("--scepca", "--url", s.scep_url, "--caout", str(ca_der), "--raout", str(ra_der))
    assert result.returncode == 0, result.stderr
    key = strongswan_key(tmp_path / "key.der")
    result = pki("--scep", "--url", s.scep_url, "--in", str(key), "--dn", "CN=ra-client",
                 "--password", s.static_challenge, "--cacert-enc", str(ra_der), "--cacert-sig", str(ra_der),
                 "--cacert", str(ca_der))
    assert result.returncode == 0, result.stderr.decode()
    (tmp_path / "cert.der").write_bytes(result.stdout)
    openssl_verify(s.ca_pem, tmp_path / "cert.der", der=True)
    result = scepclient(tmp_path / "micromdm", s.scep_url, s.static_challenge, "ra-scepclient")
    assert result.returncode == 0, result.stdout + result.stderr
    openssl_verify(s.ca_pem, tmp_path / "micromdm" / "client.pem")


# -- revocation and the CRL ------------------------------------------------------------------------


def test_revoked_certificate_is_in_the_crl(ca_site, tmp_path):
    s = ca_site()
    assert scepclient(tmp_path / "device", s.scep_url, s.static_challenge, "to-revoke").returncode == 0
    serial = "%x" % load(tmp_path / "device" / "client.pem").serial_number
    listed = s.ctl("builtin-ca", "certificates", "--status", "valid")
    assert serial in listed.stdout
    revoked = s.ctl("builtin-ca", "revoke", serial, "--reason", "key_compromise")
    assert revoked.returncode == 0, revoked.stderr
    status, content_type, crl = s.http("GET", s.scep_url + "/crl")
    assert (status, content_type) == (200, "application/pkix-crl")
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(crl)
    text = subprocess.run([need("openssl"), "crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert serial.upper().rjust(len(serial) + len(serial) % 2, "0") in text.replace(":", "").upper()
    assert "Key Compromise" in text
    verified = subprocess.run([need("openssl"), "crl", "-inform", "DER", "-in", str(crl_file), "-noout",
                               "-CAfile", str(s.ca_pem)], capture_output=True, text=True)
    assert "verify OK" in verified.stdout + verified.stderr
    issued = load(tmp_path / "device" / "client.pem")
    points = issued.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == s.scep_url + "/crl"
    shown = s.ctl("--json", "builtin-ca", "show")
    assert json.loads(shown.stdout)["certificates"] == {"valid": 0, "revoked": 1}


# -- hostile bodies --------------------------------------------------------------------------------


def codec_request(s: Site, challenge, cn="hostile", recipient=None):
    cert, key = self_signed(cn)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode()).sign(key, hashes.SHA256()))
    der, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=cert,
                                 recipient_certificate=recipient or load(s.ca_pem), csr=csr)
    return der, cert, key


def test_hostile_bodies_get_failure_or_400_and_the_daemon_keeps_serving(ca_site, tmp_path):
    s = ca_site()
    url = s.scep_url + "?operation=PKIOperation"
    good, cert, key = codec_request(s, s.static_challenge)
    flipped = bytearray(good)
    flipped[-10] ^= 0x01
    for body in (b"garbage", good[:100], good[:-1], bytes(flipped), b"\x30\x80\x00\x00", os.urandom(4096)):
        status, content_type, answer = s.http("POST", url, body)
        assert (status, content_type, answer) == (400, "text/plain; charset=utf-8", b"not a SCEP message\n")

    stranger, _ = self_signed("Another CA")
    wrong, wcert, wkey = codec_request(s, s.static_challenge, recipient=stranger)
    status, content_type, answer = s.http("POST", url, wrong)
    assert (status, content_type) == (200, "application/x-pki-message")
    assert codec.read_response(answer, wkey, wcert, load(s.ca_pem))[:2] == ("FAILURE", "badMessageCheck")

    status, _, answer = s.http("POST", url, good)
    assert codec.read_response(answer, key, cert, load(s.ca_pem))[0] == "SUCCESS"
    answer_file = tmp_path / "certrep.der"
    answer_file.write_bytes(answer)
    cms = subprocess.run([need("openssl"), "cms", "-verify", "-inform", "DER", "-in", str(answer_file),
                          "-CAfile", str(s.ca_pem), "-binary", "-purpose", "any", "-out", os.devnull],
                         capture_output=True, text=True)
    assert cms.returncode == 0, cms.stderr
    first = answer
    for _ in range(2):  # the same message again (its answer was lost): the same answer, never a second certificate
        status, _, answer = s.http("POST", url, good)
        assert (status, answer) == (200, first)
    status, listing = s.admin("GET", "/api/v1/ca/certificates")
    assert [c["subject"] for c in listing["certificates"]] == ["CN=hostile"]

    # By GET: standard base64 with a literal "+" is data, as on the proxy.
    for _ in range(20):
        by_get, gcert, gkey = codec_request(s, s.static_challenge, cn="by-get")
        encoded = base64.b64encode(by_get).decode()
        if "+" in encoded:
            break
    status, _, answer = s.http("GET", s.scep_url + "?operation=PKIOperation&message=" + encoded)
    assert codec.read_response(answer, gkey, gcert, load(s.ca_pem))[0] == "SUCCESS"

    status, _, _ = s.http("GET", s.scep_url + "?operation=PKIOperation&message=%%%")
    assert status == 400
    status, _, body = s.http("GET", s.scep_url + "?operation=Nope")
    assert status == 400 and b"unsupported operation" in body
    assert s.http("GET", s.scep_url + "?operation=GetCACaps")[0] == 200
    log = s.daemon.log()
    assert "Traceback" not in log and "outcome=bad_message" in log and "outcome=not_scep" in log
