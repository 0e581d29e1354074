"""step-ca (smallstep's CA, built from Debian's Go sources) as a real upstream SCEP CA.

Real clients enroll with it directly (micromdm scepclient; strongSwan ``pki``
gets its certificate issued but refuses step-ca's CertRep), the codec probes
what it accepts and how it answers (what RA mode must bridge: ciphers,
digests, a request signed by a key other than the CSR's), and a device
enrolls through the proxy in passthrough mode with step-ca as the CA
integration's upstream.
"""

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scepproxyd.scep import codec
from support.api import apis
from support.certs import csr, self_signed
from support.clients import common_name, enroll, http, pki, scepclient, strongswan_key
from support.scep_capture import cert_rep_cipher
from support.site import add_ca, challenge_from_url, enrollment_url
from support.stepca import AES256_CBC, DEFAULT_CAPS, STRONGSWAN_CAPS, StepCA, assert_chains_to_step_ca
from support.upstream import CHALLENGE


@pytest.fixture(scope="module")
def module_stepca_aes(tmp_path_factory):
    """A second step-ca for the module, its provisioner set to AES-256-CBC CertReps (encryptionAlgorithmIdentifier 2)."""
    ca = StepCA(tmp_path_factory.mktemp("step-ca-aes"), encryption=AES256_CBC).start()
    yield ca
    ca.stop()


def post_pki_operation(url: str, message: bytes) -> tuple[int, str, bytes]:
    return http(url + "?operation=PKIOperation", message)


def codec_request(ca, cn: str, challenge: str = CHALLENGE, signer_key=None, message_type: str = "PKCSReq",
                  **algorithms):
    """A request built by the codec for ``ca``: (message, CSR key, signer certificate, signer key).

    The signer is a self-signed certificate of the CSR's key, or of ``signer_key`` when given (RA mode
    signs the device's CSR with its own key).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer_certificate, signer_key = self_signed("signer of " + cn, key=signer_key or key)
    message, _ = codec.build_request(message_type=message_type, signer_key=signer_key,
                                     signer_certificate=signer_certificate, recipient_certificate=ca.intermediate,
                                     csr=csr(key, cn, challenge=challenge), **algorithms)
    return message, key, signer_certificate, signer_key


# -- how step-ca answers ---------------------------------------------------------------------------------


def test_caps_cacert_and_no_pkioperation_by_get(module_stepca):
    status, content_type, caps = http(module_stepca.url + "?operation=GetCACaps")
    assert (status, content_type) == (200, "text/plain")
    assert caps.decode().split("\r\n") == DEFAULT_CAPS  # no SHA-384, SHA-512 nor GetNextCACert

    # The intermediate alone (it signs and decrypts), not the root.
    status, content_type, body = http(module_stepca.url + "?operation=GetCACert")
    assert (status, content_type) == (200, "application/x-x509-ca-cert")
    assert x509.load_der_x509_certificate(body) == module_stepca.intermediate
    assert module_stepca.operations("GetCACert") == 1

    # step-ca 0.19 does not do PKIOperation by GET: an empty 200 (base64url) or a 500 (base64 with '+', '/').
    message, *_ = codec_request(module_stepca, "by-get")
    status, content_type, body = http(module_stepca.url + "?operation=PKIOperation&message="
                                     + base64.urlsafe_b64encode(message).decode())
    assert (status, content_type, body) == (200, "text/plain", b"")
    assert module_stepca.issued_serials() == []


# -- real clients, directly ----------------------------------------------------------------------------


def test_scepclient_enrolls_directly(module_stepca, tmp_path):
    before = module_stepca.operations("PKIOperation")
    enroll(tmp_path / "device", module_stepca.url, CHALLENGE, "laptop-1")
    issued = assert_chains_to_step_ca(module_stepca, tmp_path / "device" / "client.pem")
    assert common_name(issued) == "laptop-1"
    assert issued.serial_number in module_stepca.issued_serials()
    assert module_stepca.operations("PKIOperation") - before == 1


def test_scepclient_reads_an_aes_cert_rep(module_stepca_aes, tmp_path):
    """scepclient sends DES, step-ca answers AES-256-CBC with encryptionAlgorithmIdentifier 2: scepclient copes."""
    enroll(tmp_path / "device", module_stepca_aes.url, CHALLENGE, "laptop-2")
    issued = assert_chains_to_step_ca(module_stepca_aes, tmp_path / "device" / "client.pem")
    assert issued.serial_number in module_stepca_aes.issued_serials()


def test_scepclient_with_a_wrong_challenge_gets_bad_request(module_stepca, tmp_path):
    issued_before = module_stepca.issued_serials()
    result = scepclient(tmp_path / "device", module_stepca.url, "not-the-challenge", "laptop-3")
    assert result.returncode != 0
    assert "failInfo: badRequest" in result.stdout + result.stderr
    assert not (tmp_path / "device" / "client.pem").exists()
    assert module_stepca.issued_serials() == issued_before


def test_strongswan_gets_a_certificate_issued_but_refuses_the_cert_rep(start_stepca, tmp_path):
    """step-ca issues to strongSwan's AES/SHA-256 request, but signs its CertRep with sha1WithRSAEncryption,
    which strongSwan 5.9.8 refuses ("only RSA digest encryption supported"), as it refuses micromdm scepserver's.
    strongSwan cannot enroll with step-ca directly; RA mode, which re-signs the answer, can bridge it."""
    ca = start_stepca(capabilities=STRONGSWAN_CAPS)
    # GetCACert is the intermediate alone, which pki --scepca finds but does not write (it cannot trust it).
    result = pki("--scepca", "--url", ca.url, "--caout", str(tmp_path / "ca.der"))
    assert result.returncode == 0, result.stderr.decode()
    assert 'Sub CA cert "CN=step-ca Test Intermediate"' in (result.stdout + result.stderr).decode()
    intermediate = tmp_path / "intermediate.der"
    intermediate.write_bytes(ca.intermediate.public_bytes(serialization.Encoding.DER))
    key = strongswan_key(tmp_path / "key.der")
    result = pki("--scep", "--url", ca.url, "--in", str(key), "--dn", "CN=vpn-1,O=Example", "--password",
                 CHALLENGE, "--cacert-enc", str(intermediate), "--cacert-sig", str(intermediate),
                 "--cipher", "aes", "--digest", "sha256")
    assert result.returncode != 0
    assert "only RSA digest encryption supported" in result.stderr.decode()
    assert ca.operations("PKIOperation") == 1
    assert len(ca.issued_serials()) == 1


# -- what step-ca accepts (the codec as the client) ----------------------------------------------------


@pytest.mark.parametrize("cipher", ["des", "des3", "aes128", "aes256"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
def test_accepted_request_algorithms_and_its_cert_rep_cipher(module_stepca, module_stepca_aes, cipher, digest):
    """Whatever the request used, the CertRep is DES-CBC by default and AES-256-CBC with identifier 2."""
    for ca, answered_with in ((module_stepca, "des"), (module_stepca_aes, "aes256")):
        message, key, signer_certificate, signer_key = codec_request(
            ca, "algorithms", content_encryption=cipher, digest_algorithm=digest)
        status, content_type, answer = post_pki_operation(ca.url, message)
        assert (status, content_type) == (200, "application/x-pki-message"), answer
        pki_status, fail_info, certificates = codec.read_response(answer, signer_key, signer_certificate,
                                                                  ca.intermediate)
        assert (pki_status, fail_info) == ("SUCCESS", None)
        assert certificates[0].public_key() == key.public_key()
        assert cert_rep_cipher(answer, signer_key, signer_certificate) == answered_with


@pytest.mark.parametrize("algorithms", [{"content_encryption": "aes192"}, {"digest_algorithm": "sha224"},
                                        {"key_transport": "oaep"}], ids=["aes192", "sha224", "oaep"])
def test_refused_request_algorithms_get_http_500(module_stepca, algorithms):
    issued_before = module_stepca.issued_serials()
    message, *_ = codec_request(module_stepca, "refused", **algorithms)
    status, _, answer = post_pki_operation(module_stepca.url, message)
    assert status == 500
    assert answer.startswith(b"scep post request failed")
    assert module_stepca.issued_serials() == issued_before


@pytest.mark.parametrize("message_type", ["PKCSReq", "RenewalReq"])
def test_a_request_signed_by_another_key_is_issued(module_stepca, message_type):
    """What RA mode needs: the device's CSR in a request the RA signs with its own key and certificate.
    step-ca checks the challenge in the CSR, not who signed; the certificate carries the CSR's key and subject."""
    ra_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message, device_key, ra_certificate, _ = codec_request(module_stepca, "device-behind-ra", signer_key=ra_key,
                                                           message_type=message_type)
    assert ra_certificate.public_key() != device_key.public_key()
    status, _, answer = post_pki_operation(module_stepca.url, message)
    assert status == 200, answer
    pki_status, _, (issued, *_) = codec.read_response(answer, ra_key, ra_certificate, module_stepca.intermediate)
    assert pki_status == "SUCCESS"
    assert issued.public_key() == device_key.public_key()
    assert common_name(issued) == "device-behind-ra"
    assert issued.serial_number in module_stepca.issued_serials()

    # The challenge is what it checks: the same with a wrong one is a FAILURE, badRequest.
    message, *_, ra_certificate, _ = codec_request(module_stepca, "device-behind-ra", challenge="wrong",
                                                   signer_key=ra_key, message_type=message_type)
    status, _, answer = post_pki_operation(module_stepca.url, message)
    assert status == 200
    assert codec.read_response(answer, ra_key, ra_certificate, module_stepca.intermediate)[:2] == (
        "FAILURE", "badRequest")


# -- through the proxy, passthrough ----------------------------------------------------------------------


def test_scepclient_enrolls_through_the_proxy_with_step_ca_upstream(daemon, stepca, tmp_path):
    admin, agent = apis(daemon)
    add_ca(admin, "STEP_CA", stepca.url, CHALLENGE)
    url, profile = enrollment_url(admin, agent, "STEP_CA", "step-host-1")

    enroll(tmp_path / "device", url, CHALLENGE, "step-device-1")
    issued = assert_chains_to_step_ca(stepca, tmp_path / "device" / "client.pem")
    assert common_name(issued) == "step-device-1"
    assert stepca.issued_serials() == [issued.serial_number]
    assert stepca.operations("PKIOperation") == 1
    (row,) = admin.call("GET", "/api/v1/host-profiles?host=step-host-1&profile=%s" % (profile,))["host_profiles"]
    assert row["status"] == "verifying"

    # The one-time challenge is spent: the same URL again never reaches step-ca.
    result = scepclient(tmp_path / "again", url, CHALLENGE, "step-device-1")
    assert result.returncode != 0
    assert stepca.operations("PKIOperation") == 1
    log = daemon.log()
    assert challenge_from_url(url) not in log and CHALLENGE not in log
    assert "outcome=ok" in log
