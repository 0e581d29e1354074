"""RA mode in front of step-ca, with scepclient, certmonger and strongSwan ``pki`` as devices.

One daemon under twistd and one step-ca (left on its defaults: DES-CBC
CertReps, its own GetCACaps) serve the module. Its CA integrations are
added through the admin API: ``STEP_RA`` in ``ra`` mode (the RA certificate
enrolled from step-ca itself), ``STEP_WATCHED`` the same but reached through
a recording relay (support.scep_capture), and ``STEP_PASS`` in passthrough.
Each test has hosts of its own, with the bound Wi-Fi profile (OU, then CN
``%SerialNumber% WIFI <renewal ID>``) delivered through the admin and agent
APIs. step-ca's own request log says what reached it.
"""

import datetime
import json
import re
from contextlib import closing

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scepproxyd.scep import codec
from support.certmonger import Certmonger
from support.clients import bound_scepclient, common_name, http, load, openssl_verify, pki, scepclient, strongswan_key
from support.hostile import db
from support.scep_capture import CaptureServer, cert_rep_cipher, envelope_cipher
from support.site import OU, bound_mobileconfig, challenge_from_url, deliver_to, enrollment_url, host_profile_row
from support.stepca import assert_chains_to_step_ca
from support.upstream import CHALLENGE as STATIC


def add_ra_ca(admin, name: str, url: str) -> tuple[dict, str]:
    """CA integration ``name`` on ``url`` in ra mode (RA certificate enrolled there) and the bound
    Wi-Fi profile for it: (the CA's JSON, profile uuid)."""
    ca = admin.call("POST", "/api/v1/cas", {"name": name, "url": url, "challenge": STATIC, "mode": "ra"})
    profile = admin.call("POST", "/api/v1/profiles?platform=macos", raw=bound_mobileconfig(name),
                         content_type="application/x-apple-aspen-config")
    return ca, profile["uuid"]


@pytest.fixture(scope="module")
def step_ra(module_site, module_stepca):
    """``STEP_RA``: step-ca in ra mode; (admin, agent, the CA's JSON, profile uuid)."""
    admin, agent = module_site
    ca, profile = add_ra_ca(admin, "STEP_RA", module_stepca.url)
    return admin, agent, ca, profile


def assert_recorded(admin, host, profile, certificate, daemon) -> None:
    """The certificate's serial and dates on the host profile, verified, right after enrollment."""
    row = host_profile_row(admin, host, profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % (certificate.serial_number,)), row
    assert datetime.datetime.fromisoformat(row["cert_not_after"]) == certificate.not_valid_after_utc
    # The admin API shows no not-before; the database has it.
    with closing(db(daemon)) as conn:
        (not_before,) = conn.execute(
            "SELECT cert_not_before FROM host_profiles WHERE host_uuid = ? AND profile_uuid = ?", (host, profile)
        ).fetchone()
    assert not_before == certificate.not_valid_before_utc.timestamp()


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False  # the RA certificate step-ca issues has no basicConstraints


def proxy_ca_files(url: str, directory) -> tuple:
    """GetCACert through the proxy, written out for strongSwan: (RA certificate DER path, [CA DER paths])."""
    status, content_type, body = http(url + "?operation=GetCACert")
    assert (status, content_type) == (200, "application/x-x509-ca-ra-cert")
    directory.mkdir(parents=True, exist_ok=True)
    ra, cas = None, []
    for i, der in enumerate(codec.ca_certificates(body)):
        certificate = x509.load_der_x509_certificate(der)
        if is_ca(certificate):
            cas.append(directory / ("ca-%d.der" % (i,)))
            cas[-1].write_bytes(der)
        else:
            assert ra is None
            ra = directory / "ra.der"
            ra.write_bytes(der)
    return ra, cas


def strongswan(workdir, url, cn, ra, cas, *extra):
    """``pki --scep`` with a new key (``workdir``/key.der) for OU + ``cn``, AES and SHA-256, encrypting to
    and trusting the RA, the static challenge in the CSR: the finished run (its stdout the issued
    certificate, DER)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = strongswan_key(workdir / "key.der")
    ca_args = [a for path in cas for a in ("--cacert", str(path))]
    return pki("--scep", "--url", url, "--in", str(key), "--dn", "OU=%s, CN=%s" % (OU, cn), "--password", STATIC,
               "--cacert-enc", str(ra), "--cacert-sig", str(ra), *ca_args, "--cipher", "aes", "--digest", "sha256",
               "--maxpolltime", "1", *extra)


# -- enrollment ---------------------------------------------------------------------------------------


def test_scepclient_enrolls_through_the_ra_and_the_certificate_is_recorded_at_once(
        step_ra, module_stepca, module_daemon, tmp_path):
    admin, agent, ca, profile = step_ra
    # The RA certificate was enrolled from step-ca itself: issued by its intermediate, in its log.
    assert ca["mode"] == "ra"
    assert ca["ra"]["certificate"] == "enrolled"
    assert ca["ra"]["issuer"] == module_stepca.intermediate.subject.rfc4514_string()
    assert int(ca["ra"]["serial"], 16) in module_stepca.issued_serials()

    url, _, cn = deliver_to(admin, agent, "RA-STEP-MAC", profile)
    # GetCACert: the RA certificate and step-ca's own answer (its intermediate).
    status, content_type, body = http(url + "?operation=GetCACert")
    assert (status, content_type) == (200, "application/x-x509-ca-ra-cert")
    certificates = [x509.load_der_x509_certificate(der) for der in codec.ca_certificates(body)]
    (ra_certificate,) = [c for c in certificates if c != module_stepca.intermediate]
    assert len(certificates) == 2
    assert ra_certificate.subject.rfc4514_string() == ca["ra"]["subject"]
    ra_certificate.verify_directly_issued_by(module_stepca.intermediate)

    before = module_stepca.operations("PKIOperation")
    result = bound_scepclient(tmp_path / "mac", url, STATIC, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert module_stepca.operations("PKIOperation") == before + 1
    certificate = assert_chains_to_step_ca(module_stepca, tmp_path / "mac" / "client.pem")
    assert common_name(certificate) == cn
    assert certificate.serial_number in module_stepca.issued_serials()
    assert_recorded(admin, "RA-STEP-MAC", profile, certificate, module_daemon)

    log = module_daemon.log()
    assert "RA recorded certificate %x from CA STEP_RA for host RA-STEP-MAC" % (certificate.serial_number,) in log
    assert challenge_from_url(url) not in log and STATIC not in log


def test_certmonger_aes256_sha256_enrolls_with_step_ca_on_des(module_site, module_stepca, module_daemon, tmp_path):
    """certmonger speaks AES-256-CBC and SHA-256; step-ca stays on its DES-CBC CertReps. Relays on both
    sides of the proxy show what each side said: the RA reads the device's AES-256 and answers it in
    AES-256, asks step-ca with what step-ca's GetCACaps offers (AES-128, SHA-256), and reads step-ca's DES."""
    admin, agent = module_site
    provisioner, = json.loads(module_stepca.config_path.read_text())["authority"]["provisioners"]
    assert "encryptionAlgorithmIdentifier" not in provisioner  # step-ca's default: DES-CBC CertReps

    with CaptureServer(forward_to=module_stepca.url) as upstream_relay:
        ca, profile = add_ra_ca(admin, "STEP_WATCHED", upstream_relay.url)
        assert ca["ra"]["certificate"] == "enrolled"
        url, _, cn = deliver_to(admin, agent, "RA-STEP-RHEL", profile)
        client = Certmonger(tmp_path / "certmonger").start()
        try:
            with CaptureServer(forward_to=url) as device_relay:
                client.add_scep_ca("ra", device_relay.url, module_stepca.ca_pem)
                client.request("wifi", "ra", "OU=%s,CN=%s" % (OU, cn), STATIC)
                fields = client.wait_for("wifi", Certmonger.DONE, Certmonger.REJECTED, Certmonger.UNREACHABLE)
        finally:
            client.stop()
    assert fields["status"] == Certmonger.DONE, fields
    certificate = assert_chains_to_step_ca(module_stepca, client.certificate_path("wifi"))
    assert common_name(certificate) == cn
    assert_recorded(admin, "RA-STEP-RHEL", profile, certificate, module_daemon)

    # The device's side: its PKCSReq in AES-256 signed with SHA-256; the RA's SUCCESS in AES-256 too.
    (request,), (answer,) = device_relay.messages, device_relay.answers
    header = codec.read_header(request)
    assert (header.message_type, header.digest_algorithm, envelope_cipher(request)) == ("PKCSReq", "sha256", "aes256")
    key = serialization.load_pem_private_key(client.key_path("wifi").read_bytes(), None)
    assert cert_rep_cipher(answer, key, header.signer_certificate) == "aes256"

    # step-ca's side: the RA's own request (its enrollment came first) with the device's CSR inside, in what
    # step-ca's GetCACaps offers (AES-128, SHA-256); step-ca's CertRep to the RA in DES-CBC.
    assert len(upstream_relay.messages) == 2
    upstream = codec.read_request(upstream_relay.messages[-1], module_stepca.intermediate_key,
                                  module_stepca.intermediate)
    assert upstream.header.signer_certificate.subject.rfc4514_string() == ca["ra"]["subject"]
    assert (upstream.content_encryption, upstream.header.digest_algorithm) == ("aes128", "sha256")
    assert upstream.csr.public_key().public_numbers() == key.public_key().public_numbers()
    assert envelope_cipher(upstream_relay.answers[-1]) == "des"


@pytest.mark.parametrize("upstream_name", ["step-ca", "scepserver"])
def test_strongswan_enrolls_through_the_ra(upstream_name, step_ra, module_site, module_stepca, module_upstream,
                                           module_daemon, tmp_path):
    """strongSwan refuses step-ca's and scepserver's own CertReps (sha1WithRSAEncryption signatures,
    tests/interop/test_stepca.py), but reads the RA's."""
    admin, agent = module_site
    if upstream_name == "step-ca":
        _, _, _, profile = step_ra
        upstream, host = module_stepca, "RA-STEP-VPN"
    else:
        _, profile = add_ra_ca(admin, "SCEPSERVER_RA", module_upstream.url)
        upstream, host = module_upstream, "RA-SCEPSERVER-VPN"
    url, _, cn = deliver_to(admin, agent, host, profile)
    if upstream_name == "scepserver":
        # scepserver's CA is a root: pki --scepca finds it and the RA, and writes both, as an admin runs it.
        fetched = pki("--scepca", "--url", url, "--caout", "ca.der", "--raout", "ra.der", cwd=tmp_path)
        assert fetched.returncode == 0, fetched.stderr.decode()
        ra, cas = tmp_path / "ra.der", [tmp_path / "ca.der"]
    else:
        # step-ca's GetCACert is its intermediate alone, which pki --scepca does not write (no root).
        ra, cas = proxy_ca_files(url, tmp_path / "ca")
    before = upstream.operations("PKIOperation")
    result = strongswan(tmp_path / "vpn", url, cn, ra, cas)
    assert result.returncode == 0, result.stderr.decode()
    assert upstream.operations("PKIOperation") == before + 1
    (tmp_path / "issued.der").write_bytes(result.stdout)
    certificate = load(tmp_path / "issued.der")
    if upstream_name == "step-ca":
        assert_chains_to_step_ca(module_stepca, tmp_path / "issued.der")
    else:
        openssl_verify(module_upstream.ca_pem, tmp_path / "issued.der", der=True)
    assert common_name(certificate) == cn
    assert_recorded(admin, host, profile, certificate, module_daemon)


def test_strongswan_renews_through_the_ra_once(step_ra, module_stepca, module_daemon, tmp_path):
    """A RenewalReq signed by the certificate recorded for the host profile needs no challenge in the URL
    (step-ca checks its static challenge in every CSR, renewals too: strongSwan puts it in the CSR again).
    The new certificate replaces the old one on the host profile at once, though both have the same
    not-before (same second), and the old one cannot renew again."""
    admin, agent, _, profile = step_ra
    url, _, cn = deliver_to(admin, agent, "RA-STEP-RENEW", profile)
    ra, cas = proxy_ca_files(url, tmp_path / "ca")
    first = strongswan(tmp_path / "first", url, cn, ra, cas)
    assert first.returncode == 0, first.stderr.decode()
    (tmp_path / "old.der").write_bytes(first.stdout)
    old = load(tmp_path / "old.der")
    renewing = ("--cert", str(tmp_path / "old.der"), "--key", str(tmp_path / "first" / "key.der"))

    requests = module_stepca.operations("PKIOperation")
    result = strongswan(tmp_path / "renew", url, cn, ra, cas, *renewing)
    assert result.returncode == 0, result.stderr.decode()
    assert module_stepca.operations("PKIOperation") == requests + 1
    (tmp_path / "renewed.der").write_bytes(result.stdout)
    renewed = assert_chains_to_step_ca(module_stepca, tmp_path / "renewed.der")
    assert common_name(renewed) == cn and renewed.public_key() != old.public_key()
    assert_recorded(admin, "RA-STEP-RENEW", profile, renewed, module_daemon)
    assert "RA recorded certificate %x from CA STEP_RA" % (renewed.serial_number,) in module_daemon.log()

    again = strongswan(tmp_path / "again", url, cn, ra, cas, *renewing)
    assert again.returncode != 0
    assert re.search(r"failInfo:\s+badRequest", again.stderr.decode())
    assert module_stepca.operations("PKIOperation") == requests + 1
    assert host_profile_row(admin, "RA-STEP-RENEW", profile)["cert_serial"] == "%x" % (renewed.serial_number,)
    assert "host=RA-STEP-RENEW profile=%s ca=STEP_RA outcome=renewal_refused" % (profile,) in module_daemon.log()


# -- refusals: before step-ca sees anything --------------------------------------------------------------


def _other_subject(tmp_path, url, cn, **_):
    return bound_scepclient(tmp_path, url, STATIC, "SER-SOMEONE-ELSE WIFI x")


def _extra_san(tmp_path, url, cn, **_):
    ra, cas = proxy_ca_files(url, tmp_path / "ca")
    return strongswan(tmp_path / "vpn", url, cn, ra, cas, "--san", "intranet.example.com")


def _weak_key(tmp_path, url, cn, **_):
    return bound_scepclient(tmp_path, url, STATIC, cn, "-keySize", "1024")


def _renewal_id_of_another_host(tmp_path, url, cn, other_cn, **_):
    serial, _, _ = cn.partition(" WIFI ")
    return bound_scepclient(tmp_path, url, STATIC, "%s WIFI %s" % (serial, renewal_id(other_cn)))


def renewal_id(cn: str) -> str:
    return cn.partition(" WIFI ")[2]


@pytest.mark.parametrize("attempt, fail_info, reason", [
    (_other_subject, "badRequest", lambda other_cn: "subject CN 'SER-SOMEONE-ELSE WIFI x' is not what the profile"),
    (_extra_san, "badRequest",
     lambda other_cn: "subjectAltName dns 'intranet.example.com', which the profile does not render"),
    (_weak_key, "badAlg", lambda other_cn: "CSR key is RSA-1024; the CA requires RSA keys of at least 2048 bits"),
    (_renewal_id_of_another_host, "badRequest",
     lambda other_cn: "WIFI %s' is not what the profile renders" % (renewal_id(other_cn),)),
], ids=["other-subject", "extra-san", "weak-key", "other-renewal-id"])
def test_a_csr_the_profile_did_not_render_is_refused_before_step_ca_sees_it(
        attempt, fail_info, reason, step_ra, module_stepca, module_daemon, tmp_path):
    admin, agent, _, profile = step_ra
    host = "RA-STEP-" + attempt.__name__.strip("_").upper().replace("_", "-")
    other_cn = deliver_to(admin, agent, host + "-B", profile)[2]
    url, _, cn = deliver_to(admin, agent, host, profile)
    assert renewal_id(other_cn) != renewal_id(cn)
    requests, issued = module_stepca.operations("PKIOperation"), module_stepca.issued_serials()

    result = attempt(tmp_path, url, cn, other_cn=other_cn)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    output = output.decode() if isinstance(output, bytes) else output
    assert re.search(r"failInfo:\s+%s" % (fail_info,), output), output  # the RA's FAILURE, as the device read it
    assert module_stepca.operations("PKIOperation") == requests
    assert module_stepca.issued_serials() == issued

    row = host_profile_row(admin, host, profile)
    assert (row["status"], row["retries"], row["cert_serial"]) == (None, 1, None), row
    assert row["detail"].startswith("RA refused the request: "), row["detail"]
    assert reason(other_cn) in row["detail"], row["detail"]
    assert "RA refused" in module_daemon.log() and "outcome=policy_refused" in module_daemon.log()

    # Sent again with a fresh challenge: exactly what the profile renders goes through.
    url, _, cn = deliver_to(admin, agent, host, profile)
    result = bound_scepclient(tmp_path / "again", url, STATIC, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert module_stepca.operations("PKIOperation") == requests + 1
    assert host_profile_row(admin, host, profile)["status"] == "verified"


# -- passthrough, unchanged -------------------------------------------------------------------------------


def test_passthrough_to_step_ca_is_untouched(module_site, module_stepca, module_daemon, tmp_path):
    """A passthrough integration: GetCACert is step-ca's own answer, and the device's PKIOperation and
    step-ca's CertRep cross the proxy byte for byte (relays on both sides); nothing is recorded yet."""
    admin, agent = module_site
    with CaptureServer(forward_to=module_stepca.url) as upstream_relay:
        ca = admin.call("POST", "/api/v1/cas", {"name": "STEP_PASS", "url": upstream_relay.url, "challenge": STATIC})
        assert (ca["mode"], ca["ra"]) == ("passthrough", None)
        url, profile = enrollment_url(admin, agent, "STEP_PASS", "PASS-STEP-1")
        assert http(url + "?operation=GetCACert") == http(module_stepca.url + "?operation=GetCACert")
        with CaptureServer(forward_to=url) as device_relay:
            result = scepclient(tmp_path / "device", device_relay.url, STATIC, "pass-device-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(device_relay.messages) == 1
    assert upstream_relay.messages == device_relay.messages
    assert upstream_relay.answers == device_relay.answers
    certificate = assert_chains_to_step_ca(module_stepca, tmp_path / "device" / "client.pem")
    assert common_name(certificate) == "pass-device-1"
    row = host_profile_row(admin, "PASS-STEP-1", profile)
    assert (row["status"], row["cert_serial"]) == ("verifying", None), row

