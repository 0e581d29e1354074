"""The codec and requests shaped as Windows sends them, read back by an independent CertRep reader.

support.windows_client builds its PKCSReq with asn1crypto and cryptography
(AES-256 or 3DES, SHA-256); the codec must read it, and every CertRep the
codec builds for it (SUCCESS, PENDING, FAILURE) must carry each authenticated
attribute RFC 8894 lists, as the client's own reader checks (fleet#38341 was
a CA answer without one that Windows requires).
"""

import pytest

from scepproxyd.scep import codec
from support.scep_capture import issue
from support.windows_client import FAIL_INFO, PKI_STATUS, RECIPIENT_NONCE, SENDER_NONCE, Settings, WindowsScepClient


def windows_request(codec_ca, prefer_aes=True):
    ca_cert, _ = codec_ca
    client = WindowsScepClient(Settings("http://unused", "one-time", "CN=WIN-WIFI,OU=sp-0123456789abcdef"),
                               send=None, prefer_aes=prefer_aes)
    client.caps = ["AES", "DES3", "SHA-256", "POSTPKIOperation"]
    client.ca_certificate = client.recipient = ca_cert
    client.ca_certificates = [ca_cert]
    return client, client.pkcs_req()


@pytest.mark.parametrize("prefer_aes, cipher", [(True, "aes256"), (False, "des3")])
def test_the_codec_reads_a_windows_pkcs_req(codec_ca, prefer_aes, cipher):
    ca_cert, ca_key = codec_ca
    client, message = windows_request(codec_ca, prefer_aes)
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == "PKCSReq"
    assert request.header.transaction_id == client.transaction_id
    assert request.header.sender_nonce == client.sender_nonce
    assert request.header.digest_algorithm == "sha256"
    assert request.content_encryption == cipher
    assert codec.csr_challenge_password(request.csr) == "one-time"


@pytest.mark.parametrize("status", ["SUCCESS", "PENDING", "FAILURE"])
def test_every_cert_rep_carries_each_attribute_rfc_8894_lists(codec_ca, status):
    ca_cert, ca_key = codec_ca
    client, message = windows_request(codec_ca)
    request = codec.read_request(message, ca_key, ca_cert)
    extra = {}
    if status == "SUCCESS":
        extra = {"certificates": [issue(ca_cert, ca_key, request.csr)],
                 "content_encryption": codec.choose_content_encryption(request.content_encryption)}
    elif status == "FAILURE":
        extra = {"fail_info": "badRequest", "fail_info_text": "not for this host"}
    answer = codec.build_cert_rep(header=request.header, status=status, signer_key=ca_key,
                                  signer_certificate=ca_cert, **extra)
    read = client.read(answer)  # asserts contentType, messageDigest, messageType, transactionID, nonces, pkiStatus
    assert read.status == status
    assert read.attributes[RECIPIENT_NONCE] == client.sender_nonce
    assert len(read.attributes[SENDER_NONCE]) == 16
    assert read.attributes[PKI_STATUS] == {"SUCCESS": "0", "FAILURE": "2", "PENDING": "3"}[status]
    assert (FAIL_INFO in read.attributes) == (status == "FAILURE")
    if status == "SUCCESS":
        (certificate,) = read.certificates
        assert certificate.public_key().public_numbers() == client.key.public_key().public_numbers()
    if status == "FAILURE":
        assert read.fail_info == "2"
