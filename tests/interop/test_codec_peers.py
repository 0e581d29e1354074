"""The codec against real SCEP clients: micromdm scepclient and strongSwan pki.

A capture server (tests/support/scep_capture.py) plays the CA: it answers GetCACaps and
GetCACert, records the PKIOperation request, and either refuses it (HTTP 500)
or answers with a CertRep built by the codec, which the real client must accept.
"""


import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from support.clients import pki, scepclient
from support.scep_capture import CAPS_WITH_AES, CAPS_WITHOUT_AES, CaptureServer, der, issue
from scepproxyd.scep import codec
from scepproxyd.scep.codec import ber, signed

CHALLENGE = "static-challenge-1"


def common_name(name: x509.Name) -> str:
    return name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def certifying_answer(ca_cert, ca_key, seen: list):
    """A CertRep callback for the capture server: issue what the CSR asks for."""

    def answer(message: bytes) -> bytes:
        request = codec.read_request(message, ca_key, ca_cert)
        seen.append(request)
        issued = issue(ca_cert, ca_key, request.csr)
        return codec.build_cert_rep(
            header=request.header, status="SUCCESS", signer_key=ca_key, signer_certificate=ca_cert,
            certificates=[issued], content_encryption=codec.choose_content_encryption(request.content_encryption),
        )

    return answer


def failing_answer(ca_cert, ca_key):
    def answer(message: bytes) -> bytes:
        header = codec.read_header(message)
        return codec.build_cert_rep(header=header, status="FAILURE", fail_info="badRequest",
                                    fail_info_text="challenge refused", signer_key=ca_key, signer_certificate=ca_cert)

    return answer


def pending_answer(ca_cert, ca_key):
    def answer(message: bytes) -> bytes:
        return codec.build_cert_rep(header=codec.read_header(message), status="PENDING",
                                    signer_key=ca_key, signer_certificate=ca_cert)

    return answer


# -- micromdm scepclient -------------------------------------------------------------------------


def chunked_encrypted_content(message: bytes) -> bool:
    """True when EncryptedContentInfo.encryptedContent is a definite-length constructed [0]."""
    envelope = bytes(signed.load_signed_data(message)["encap_content_info"]["content"])
    encrypted_content_info = ber.children(ber.children(ber.children(ber.normalize(envelope))[1])[0])[-1]
    encrypted_content = ber.children(encrypted_content_info)[-1]
    return encrypted_content[0] == 0xA0 and encrypted_content[1] != 0x80


@pytest.mark.parametrize("caps", [CAPS_WITH_AES, CAPS_WITHOUT_AES], ids=["aes-caps", "des3-caps"])
def test_scepclient_request_decodes(tmp_path, codec_ca, caps):
    ca_cert, ca_key = codec_ca
    with CaptureServer([ca_cert], caps=caps) as server:
        result = scepclient(tmp_path / "device", server.url, CHALLENGE, "scepclient-device", timeout=60)
    assert result.returncode != 0  # the capture server answers 500
    assert server.operations[-1] == "PKIOperation"
    [message] = server.messages
    assert codec.looks_like_pki_message(message)

    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == "PKCSReq"
    assert common_name(request.csr.subject) == "scepclient-device"
    assert codec.csr_challenge_password(request.csr) == CHALLENGE
    # What scepclient 2.1.0 sends, whatever the caps say: single DES, SHA-1, and BER.
    assert request.content_encryption == "des"
    assert request.header.digest_algorithm == "sha1"
    assert len(request.header.sender_nonce) == 16
    assert chunked_encrypted_content(message)
    assert codec.read_header(message) == request.header


def test_scepclient_accepts_our_success_cert_rep(tmp_path, codec_ca):
    ca_cert, ca_key = codec_ca
    seen = []
    with CaptureServer([ca_cert], answer=certifying_answer(ca_cert, ca_key, seen)) as server:
        result = scepclient(tmp_path / "device", server.url, CHALLENGE, "enrolled-by-scepclient", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    issued = x509.load_pem_x509_certificate((tmp_path / "device" / "client.pem").read_bytes())
    assert common_name(issued.subject) == "enrolled-by-scepclient"
    assert issued.issuer == ca_cert.subject
    assert issued.public_key() == seen[0].csr.public_key()


def test_scepclient_reads_our_failure_cert_rep(tmp_path, codec_ca):
    ca_cert, ca_key = codec_ca
    with CaptureServer([ca_cert], answer=failing_answer(ca_cert, ca_key)) as server:
        result = scepclient(tmp_path / "device", server.url, CHALLENGE, "refused-device", timeout=60)
    assert result.returncode != 0
    assert not (tmp_path / "device" / "client.pem").exists()
    assert "request failed, failInfo: badRequest" in result.stdout + result.stderr


# -- strongSwan pki ------------------------------------------------------------------------------


def strongswan_enroll(workdir, url, dn, *extra):
    """``pki --scepca`` then ``pki --scep`` as an administrator would run them."""
    workdir.mkdir(parents=True, exist_ok=True)
    generated = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "der", cwd=workdir, timeout=60)
    assert generated.returncode == 0, generated.stderr
    (workdir / "key.der").write_bytes(generated.stdout)
    fetched = pki("--scepca", "--url", url, "--caout", "ca.der", cwd=workdir, timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    return pki("--scep", "--url", url, "--in", "key.der", "--dn", dn, "--password", CHALLENGE,
               "--cacert-enc", "ca.der", "--cacert-sig", "ca.der", "--maxpolltime", "1", *extra, cwd=workdir, timeout=60)


def test_strongswan_request_decodes(tmp_path, codec_ca):
    ca_cert, ca_key = codec_ca
    with CaptureServer([ca_cert], caps=CAPS_WITH_AES) as server:
        result = strongswan_enroll(tmp_path / "sw", server.url, "CN=strongswan-device, O=Codec")
    assert result.returncode != 0
    assert (tmp_path / "sw" / "ca.der").read_bytes() == der(ca_cert)
    [message] = server.messages
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == "PKCSReq"
    assert request.content_encryption == "aes128"
    assert request.header.digest_algorithm == "sha256"
    assert common_name(request.csr.subject) == "strongswan-device"
    assert codec.csr_challenge_password(request.csr) == CHALLENGE
    # strongSwan uses hex SHA-1 of the key as transactionID and signs its own certificate.
    assert request.header.signer_certificate.subject == request.csr.subject
    assert len(request.header.transaction_id) == 40


@pytest.mark.parametrize("args, cipher, digest", [
    (["--cipher", "des3", "--digest", "sha512"], "des3", "sha512"),
    (["--digest", "sha1", "--rsa-padding", "pss"], "aes128", "sha1"),
])
def test_strongswan_request_options_decode(tmp_path, codec_ca, args, cipher, digest):
    ca_cert, ca_key = codec_ca
    with CaptureServer([ca_cert], caps=CAPS_WITH_AES) as server:
        strongswan_enroll(tmp_path / "sw", server.url, "CN=strongswan-options", *args)
    [message] = server.messages
    request = codec.read_request(message, ca_key, ca_cert)
    assert (request.content_encryption, request.header.digest_algorithm) == (cipher, digest)


def test_strongswan_accepts_our_success_cert_rep(tmp_path, codec_ca):
    ca_cert, ca_key = codec_ca
    seen = []
    with CaptureServer([ca_cert], caps=CAPS_WITH_AES, answer=certifying_answer(ca_cert, ca_key, seen)) as server:
        result = strongswan_enroll(tmp_path / "sw", server.url, "CN=enrolled-by-strongswan")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    issued = x509.load_der_x509_certificate(result.stdout)
    assert common_name(issued.subject) == "enrolled-by-strongswan"
    assert issued.issuer == ca_cert.subject


def test_strongswan_polls_after_our_pending_cert_rep(tmp_path, codec_ca):
    """PENDING first; strongSwan then polls with a real CertPoll, which we answer with the certificate."""
    ca_cert, ca_key = codec_ca
    requests = []

    def answer(message: bytes) -> bytes:
        request = codec.read_request(message, ca_key, ca_cert)
        requests.append(request)
        if request.header.message_type == "PKCSReq":
            return codec.build_cert_rep(header=request.header, status="PENDING",
                                        signer_key=ca_key, signer_certificate=ca_cert)
        issued = issue(ca_cert, ca_key, requests[0].csr)
        return codec.build_cert_rep(header=request.header, status="SUCCESS", signer_key=ca_key,
                                    signer_certificate=ca_cert, certificates=[issued],
                                    content_encryption=request.content_encryption)

    with CaptureServer([ca_cert], caps=CAPS_WITH_AES, answer=answer) as server:
        result = strongswan_enroll(tmp_path / "sw", server.url, "CN=polled-device", "--interval", "1",
                                   "--maxpolltime", "30")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"pending" in result.stderr.lower()
    first, poll = requests
    assert poll.header.message_type == "CertPoll"
    assert poll.header.transaction_id == first.header.transaction_id
    assert poll.issuer_and_subject == (ca_cert.subject, first.csr.subject)
    assert common_name(x509.load_der_x509_certificate(result.stdout).subject) == "polled-device"


def test_strongswan_reads_our_failure_cert_rep(tmp_path, codec_ca):
    ca_cert, ca_key = codec_ca
    with CaptureServer([ca_cert], caps=CAPS_WITH_AES, answer=failing_answer(ca_cert, ca_key)) as server:
        result = strongswan_enroll(tmp_path / "sw", server.url, "CN=refused-by-us")
    assert result.returncode != 0
    assert not result.stdout
    assert b"failInfo:     badRequest" in result.stderr
