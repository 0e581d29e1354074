"""The SCEP message codec: round trips, refusals, BER, and OpenSSL reading what we write."""

import datetime
import os
import subprocess

import pytest
from asn1crypto import algos, cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from support.ber_forms import to_indefinite_ber
from support.certs import signed_blob
from support.processes import need
from support.scep_capture import der, issue, make_ca, make_device, pem
from scepproxyd.scep import codec
from scepproxyd.scep.codec import attributes as scep_attributes
from scepproxyd.scep.codec import ber
from scepproxyd.scep.codec import signed as scep_signed
from scepproxyd.scep.codec.algorithms import digest
from scepproxyd.scep.codec.csr import load_csr
from scepproxyd.scep.codec.enveloped import envelope as make_envelope


@pytest.fixture(scope="module")
def device():
    return make_device("unit-device", challenge="unit-challenge")


def pkcs_req(codec_ca, device, **kwargs):
    ca_cert, _ = codec_ca
    key, cert, csr = device
    return codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=cert,
                               recipient_certificate=ca_cert, csr=csr, **kwargs)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def run_openssl(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([need("openssl"), *args], input=stdin, capture_output=True, timeout=30)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_transport", ["pkcs1v15", "oaep"])
@pytest.mark.parametrize("digest_algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("content_encryption", ["des", "des3", "aes128", "aes192", "aes256"])
def test_pkcs_req_and_cert_rep_round_trip(codec_ca, device, content_encryption, digest_algorithm, key_transport):
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    message, header = pkcs_req(codec_ca, device, content_encryption=content_encryption,
                               digest_algorithm=digest_algorithm, key_transport=key_transport)

    assert codec.read_header(message) == header
    assert header.digest_algorithm == digest_algorithm
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header == header
    assert request.content_encryption == content_encryption
    assert request.csr == csr
    assert request.issuer_and_subject is None and request.issuer_and_serial is None
    assert codec.csr_challenge_password(request.csr) == "unit-challenge"

    issued = issue(ca_cert, ca_key, request.csr)
    answer = codec.build_cert_rep(header=request.header, status="SUCCESS", signer_key=ca_key,
                                  signer_certificate=ca_cert, certificates=[issued],
                                  content_encryption=codec.choose_content_encryption(request.content_encryption))
    assert codec.read_response(answer, key, cert, ca_cert) == ("SUCCESS", None, [issued])
    assert codec.cert_rep_status(answer) == ("SUCCESS", None)


def test_default_transaction_id_is_a_hash_of_the_csr_key(codec_ca, device):
    message, header = pkcs_req(codec_ca, device)
    again, header_again = pkcs_req(codec_ca, device)
    assert header.transaction_id == header_again.transaction_id
    assert len(header.transaction_id) == 64
    assert header.sender_nonce != header_again.sender_nonce
    assert pkcs_req(codec_ca, device, transaction_id="chosen-id")[1].transaction_id == "chosen-id"


def test_renewal_req_round_trip(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    message, header = codec.build_request(message_type="RenewalReq", signer_key=key, signer_certificate=cert,
                                          recipient_certificate=ca_cert, csr=csr)
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == "RenewalReq"
    assert request.csr == csr


def test_cert_poll_round_trip(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    message, _ = codec.build_request(message_type="CertPoll", signer_key=key, signer_certificate=cert,
                                     recipient_certificate=ca_cert, transaction_id="tid-1",
                                     issuer_and_subject=(ca_cert.subject, csr.subject))
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == "CertPoll"
    assert request.header.transaction_id == "tid-1"
    assert request.issuer_and_subject == (ca_cert.subject, csr.subject)
    assert request.csr is None


@pytest.mark.parametrize("message_type", ["GetCert", "GetCRL"])
def test_get_cert_and_get_crl_round_trip(codec_ca, device, message_type):
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    message, _ = codec.build_request(message_type=message_type, signer_key=key, signer_certificate=cert,
                                     recipient_certificate=ca_cert, issuer_and_serial=(ca_cert.subject, 2 ** 100 + 7))
    request = codec.read_request(message, ca_key, ca_cert)
    assert request.header.message_type == message_type
    assert request.issuer_and_serial == (ca_cert.subject, 2 ** 100 + 7)


def test_get_crl_answer_carries_the_crl(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
           .next_update(now + datetime.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    message, header = codec.build_request(message_type="GetCRL", signer_key=key, signer_certificate=cert,
                                          recipient_certificate=ca_cert, issuer_and_serial=(ca_cert.subject, 1))
    answer = codec.build_cert_rep(header=header, status="SUCCESS", signer_key=ca_key, signer_certificate=ca_cert,
                                  crl=crl)
    assert codec.read_response(answer, key, cert, ca_cert) == ("SUCCESS", None, [crl])


def test_unsorted_signed_attributes_still_verify(codec_ca, device):
    """Clients may send signed attributes in non-DER order; the signature covers that order."""
    ca_cert, ca_key = codec_ca
    message, header = pkcs_req(codec_ca, device, sort_attributes=False)
    signer_info = scep_signed.load_signed_data(message)["signer_infos"][0]
    sent = [attribute.dump() for attribute in signer_info["signed_attrs"]]
    assert sent != sorted(sent)
    assert codec.read_header(message) == header
    assert codec.read_request(message, ca_key, ca_cert).header == header


def test_failure_and_pending_cert_reps(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    _, header = pkcs_req(codec_ca, device)
    failure = codec.build_cert_rep(header=header, status="FAILURE", fail_info="badCertId",
                                   fail_info_text="no such cert", signer_key=ca_key, signer_certificate=ca_cert)
    assert codec.read_response(failure, key, cert, ca_cert) == ("FAILURE", "badCertId", [])
    assert codec.cert_rep_status(failure) == ("FAILURE", "badCertId")
    pending = codec.build_cert_rep(header=header, status="PENDING", signer_key=ca_key, signer_certificate=ca_cert)
    assert codec.read_response(pending, key, cert, ca_cert) == ("PENDING", None, [])
    assert codec.cert_rep_status(pending) == ("PENDING", None)
    # An empty content, as micromdm scepserver writes: eContent present, a zero-length OCTET STRING
    # (OpenSSL-based clients refuse a SignedData whose eContent is absent), signed over its digest.
    for answer in (failure, pending):
        encapsulated = scep_signed.load_signed_data(answer)["encap_content_info"]
        assert encapsulated["content_type"].native == "data"
        assert encapsulated["content"].native == b""
        assert encapsulated.dump() == bytes.fromhex("300f06092a864886f70d010701a0020400")
        assert scep_signed.open_signed_data(answer).content == b""


def test_cert_rep_attributes_mirror_the_request(codec_ca, device):
    ca_cert, ca_key = codec_ca
    _, header = pkcs_req(codec_ca, device, digest_algorithm="sha512")
    answer = codec.build_cert_rep(header=header, status="PENDING", signer_key=ca_key, signer_certificate=ca_cert)
    opened = scep_signed.open_signed_data(answer)
    assert opened.digest_algorithm == "sha512"
    assert opened.signer_certificate == ca_cert
    assert opened.attributes.string(scep_attributes.TRANSACTION_ID_OID, "transactionID") == header.transaction_id
    assert opened.attributes.octets(scep_attributes.RECIPIENT_NONCE_OID, "recipientNonce") == header.sender_nonce
    sender_nonce = opened.attributes.octets(scep_attributes.SENDER_NONCE_OID, "senderNonce")
    assert len(sender_nonce) == 16 and sender_nonce != header.sender_nonce
    assert opened.attributes.string(scep_attributes.MESSAGE_TYPE_OID, "messageType") == "3"
    signer_info = opened.signed_data["signer_infos"][0]
    # strongSwan refuses sha*WithRSAEncryption here: plain rsaEncryption it is.
    assert signer_info["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"
    assert opened.signed_data["version"].native == "v1"


def test_cert_rep_signed_by_an_ra_carries_the_ca(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    ra_key, _, ra_csr = make_device("Codec RA", challenge=None)
    ra_cert = issue(ca_cert, ca_key, ra_csr)
    _, header = pkcs_req(codec_ca, device)
    answer = codec.build_cert_rep(header=header, status="SUCCESS", signer_key=ra_key, signer_certificate=ra_cert,
                                  certificates=[cert], extra_certificates=[ca_cert])
    assert codec.read_response(answer, key, cert, ca_cert) == ("SUCCESS", None, [cert])
    bag = scep_signed.load_signed_data(answer)["certificates"]
    assert [c.chosen.dump() for c in bag] == [der(ra_cert), der(ca_cert)]
    # Signed by someone the CA never certified: refused.
    stranger_cert, stranger_key = make_ca("Stranger")
    forged = codec.build_cert_rep(header=header, status="SUCCESS", signer_key=stranger_key,
                                  signer_certificate=stranger_cert, certificates=[cert])
    with pytest.raises(codec.MessageError):
        codec.read_response(forged, key, cert, ca_cert)


def test_build_cert_rep_refuses_inconsistent_arguments(codec_ca, device):
    ca_cert, ca_key = codec_ca
    _, header = pkcs_req(codec_ca, device)
    common = {"header": header, "signer_key": ca_key, "signer_certificate": ca_cert}
    with pytest.raises(ValueError):
        codec.build_cert_rep(status="FAILURE", **common)
    with pytest.raises(ValueError):
        codec.build_cert_rep(status="FAILURE", fail_info="badLuck", **common)
    with pytest.raises(ValueError):
        codec.build_cert_rep(status="SUCCESS", **common)
    with pytest.raises(ValueError):
        codec.build_cert_rep(status="PENDING", fail_info="badAlg", **common)
    with pytest.raises(ValueError):
        codec.build_cert_rep(status="OK", **common)


@pytest.mark.parametrize("client, ours", [
    ("des", "des"), ("des3", "des3"), ("aes128", "aes128"), ("aes192", "aes192"), ("aes256", "aes256"),
])
def test_choose_content_encryption_mirrors_the_client(client, ours):
    assert codec.choose_content_encryption(client) == ours


def test_public_constants():
    assert codec.MESSAGE_TYPES == {"CertRep": "3", "RenewalReq": "17", "PKCSReq": "19", "CertPoll": "20",
                                   "GetCert": "21", "GetCRL": "22"}


# -- refusals ------------------------------------------------------------------------------------


def signature_offset(message: bytes) -> int:
    signature = scep_signed.load_signed_data(message)["signer_infos"][0]["signature"].native
    return message.index(signature)


def test_tampered_signature_is_refused(codec_ca, device):
    ca_cert, ca_key = codec_ca
    message, _ = pkcs_req(codec_ca, device)
    tampered = flip(message, signature_offset(message) + 10)
    with pytest.raises(codec.MessageError):
        codec.read_header(tampered)
    with pytest.raises(codec.MessageError):
        codec.read_request(tampered, ca_key, ca_cert)


def test_tampered_content_is_refused(codec_ca, device):
    ca_cert, ca_key = codec_ca
    message, _ = pkcs_req(codec_ca, device)
    content = bytes(scep_signed.load_signed_data(message)["encap_content_info"]["content"])
    tampered = flip(message, message.index(content) + len(content) - 5)
    with pytest.raises(codec.MessageError, match="messageDigest"):
        codec.read_header(tampered)


def test_tampered_signed_attribute_is_refused(codec_ca, device):
    message, header = pkcs_req(codec_ca, device)
    tampered = message.replace(header.sender_nonce, bytes(16))
    with pytest.raises(codec.MessageError):
        codec.read_header(tampered)


def test_wrong_recipient_is_refused(codec_ca, device):
    message, _ = pkcs_req(codec_ca, device)
    other_cert, other_key = make_ca("Other CA")
    with pytest.raises(codec.MessageError, match="not addressed"):
        codec.read_request(message, other_key, other_cert)
    # The right certificate with the wrong key: PKCS#1 v1.5 implicit rejection gives random bytes.
    ca_cert, _ = codec_ca
    with pytest.raises(codec.MessageError):
        codec.read_request(message, other_key, ca_cert)


def test_names_match_by_encoding_first_and_by_rfc5280_otherwise():
    """The issuer of an IssuerAndSerialNumber: the same bytes match at once; another encoding of
    the same name (string type, case, spaces) still matches; another name does not."""
    from asn1crypto import x509 as asn1_x509

    printable = asn1_x509.Name.build({"common_name": "Corp CA", "country_name": "US"})
    utf8 = asn1_x509.Name.build({"common_name": "corp  ca", "country_name": "US"}, use_printable=False)
    assert printable.dump() != utf8.dump()
    assert scep_signed.same_name(printable, asn1_x509.Name.load(printable.dump()))
    assert scep_signed.same_name(printable, utf8)
    assert not scep_signed.same_name(printable, asn1_x509.Name.build({"common_name": "Corp CA 2", "country_name": "US"}))


@pytest.mark.parametrize("content_encryption, wrong_key_size", [("des3", 16), ("aes256", 16), ("des", 24)])
def test_key_length_mismatch_after_decrypt_is_refused(codec_ca, device, content_encryption, wrong_key_size):
    """The envelope's RSA-wrapped key has the wrong length for its cipher."""
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    message, _ = pkcs_req(codec_ca, device, content_encryption=content_encryption)
    envelope = cms.ContentInfo.load(bytes(scep_signed.load_signed_data(message)["encap_content_info"]["content"]))
    recipient = envelope["content"]["recipient_infos"][0].chosen
    recipient["encrypted_key"] = ca_cert.public_key().encrypt(os.urandom(wrong_key_size), padding.PKCS1v15())
    resigned = resign(envelope.dump(force=True), key, cert)
    with pytest.raises(codec.MessageError, match="content key is %d bytes" % (wrong_key_size,)):
        codec.read_request(resigned, ca_key, ca_cert)


def resign(envelope: bytes, key, cert, message_type="19", digest_algorithm="sha256") -> bytes:
    """A request around an envelope made elsewhere (OpenSSL, or a tampered one)."""
    attributes = scep_attributes.encode_attributes(
        content_digest=digest(digest_algorithm, envelope), message_type=message_type,
        transaction_id="resigned", sender_nonce=os.urandom(16))
    return scep_signed.build_signed_data(content=envelope, attributes=attributes, signer_key=key,
                                         signer_certificate=cert, digest_algorithm=digest_algorithm)


@pytest.mark.parametrize("length", [0, 1, 2, 10, 100, 1000, -300, -1])
def test_truncated_message_is_refused(codec_ca, device, length):
    ca_cert, ca_key = codec_ca
    message, _ = pkcs_req(codec_ca, device)
    with pytest.raises(codec.MessageError):
        codec.read_request(message[:length], ca_key, ca_cert)
    with pytest.raises(codec.MessageError):
        codec.read_header(message[:length])


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"hello world", b"\x30\x80", b"\x30\x84\xff\xff\xff\xff",
                                     b"\x30" + b"\x80" * 200, b"\x30\x03\x02\x01\x01", os.urandom(2000)])
def test_garbage_is_refused(codec_ca, garbage):
    ca_cert, ca_key = codec_ca
    with pytest.raises(codec.MessageError):
        codec.read_header(garbage)
    with pytest.raises(codec.MessageError):
        codec.read_request(garbage, ca_key, ca_cert)
    assert not codec.looks_like_pki_message(garbage)
    assert codec.cert_rep_status(garbage) == (None, None)
    assert codec.ca_certificates(garbage) == []


def test_cms_without_scep_attributes_is_refused():
    with pytest.raises(codec.MessageError, match="messageType"):
        codec.read_header(signed_blob())
    assert codec.looks_like_pki_message(signed_blob())


def test_a_cert_rep_is_not_a_request(codec_ca, device):
    ca_cert, ca_key = codec_ca
    _, header = pkcs_req(codec_ca, device)
    answer = codec.build_cert_rep(header=header, status="PENDING", signer_key=ca_key, signer_certificate=ca_cert)
    with pytest.raises(codec.MessageError, match="not a request"):
        codec.read_header(answer)


def test_csr_with_a_bad_signature_is_refused(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    bad = bytearray(der(csr))
    bad[-3] ^= 0x01
    envelope = make_envelope(bytes(bad), ca_cert, "aes128")
    with pytest.raises(codec.MessageError, match="CSR"):
        codec.read_request(resign(envelope, key, cert), ca_key, ca_cert)


def test_csr_without_challenge_password(device):
    assert codec.csr_challenge_password(make_device("no-challenge", challenge=None)[2]) is None


def _tlv(identifier: bytes, body: bytes) -> bytes:
    return identifier + ber.length_octets(len(body)) + body


def unsorted_csr(key, names, challenge="s3cret", signature_ok=True) -> bytes:
    """A CSR the way strongSwan pki writes one: extension request first, challengePassword second, not DER-sorted."""
    good = (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name.from_rfc4514_string("CN=vpn-gw,O=Example"))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
            .sign(key, hashes.SHA256()))
    info = asn1_csr.CertificationRequest.load(good.public_bytes(Encoding.DER))["certification_request_info"]
    attributes = sorted(info["attributes"], key=lambda a: a["type"].native != "extension_request")
    fields = b"".join(info[name].dump() for name in ("version", "subject", "subject_pk_info"))
    cri = _tlv(b"\x30", fields + _tlv(b"\xa0", b"".join(a.dump() for a in attributes)))
    signature = key.sign(cri if signature_ok else cri + b"x", padding.PKCS1v15(), hashes.SHA256())
    sha256_with_rsa = bytes.fromhex("300d06092a864886f70d01010b0500")
    return _tlv(b"\x30", cri + sha256_with_rsa + _tlv(b"\x03", b"\x00" + signature))


def test_strongswan_style_unsorted_csr_attributes_are_read(device):
    key = device[0]
    names = ["vpn-gw-a.site-one.example", "vpn-gw-b.site-one.example"]
    raw = unsorted_csr(key, names)
    with pytest.raises(ValueError, match="InvalidSetOrdering"):
        x509.load_der_x509_csr(raw)
    csr = load_csr(raw)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == names
    assert codec.csr_challenge_password(csr) == "s3cret"
    assert csr.subject.rfc4514_string() == "CN=vpn-gw,O=Example"
    assert sorted(csr.public_bytes(Encoding.DER)) == sorted(raw)  # the same bytes, only the order changed
    with pytest.raises(codec.MessageError, match="signature does not verify"):
        load_csr(unsorted_csr(key, names, signature_ok=False))


# -- BER -----------------------------------------------------------------------------------------


def test_indefinite_length_ber_request_decodes(codec_ca, device):
    ca_cert, ca_key = codec_ca
    message, header = pkcs_req(codec_ca, device)
    ber = to_indefinite_ber(message)
    assert ber != message and b"\x30\x80" in ber
    assert codec.read_header(ber) == header
    assert codec.read_request(ber, ca_key, ca_cert).csr == device[2]
    assert codec.looks_like_pki_message(ber)


@pytest.mark.parametrize("cipher, ours", [("-aes256", "aes256"), ("-des3", "des3"), ("-aes128", "aes128")])
@pytest.mark.parametrize("keyopt", [[], ["-keyopt", "rsa_padding_mode:oaep"]], ids=["pkcs1v15", "oaep-sha1"])
def test_openssl_streamed_envelope_decodes(tmp_path, codec_ca, device, cipher, ours, keyopt):
    """OpenSSL's streaming CMS: indefinite lengths and a chunked encryptedContent (and OAEP defaults)."""
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    (tmp_path / "ca.pem").write_bytes(pem(ca_cert))
    made = run_openssl("cms", "-encrypt", "-binary", "-stream", "-outform", "DER", cipher,
                       "-recip", str(tmp_path / "ca.pem"), *keyopt, stdin=der(csr))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(b"\x30\x80")
    request = codec.read_request(resign(made.stdout, key, cert), ca_key, ca_cert)
    assert request.csr == csr
    assert request.content_encryption == ours


# -- what OpenSSL makes of our messages ----------------------------------------------------------


def test_openssl_verifies_and_decrypts_our_request(tmp_path, codec_ca, device):
    ca_cert, ca_key = codec_ca
    message, _ = pkcs_req(codec_ca, device, content_encryption="aes128", digest_algorithm="sha256")
    (tmp_path / "ca.pem").write_bytes(pem(ca_cert))
    (tmp_path / "ca.key").write_bytes(pem(ca_key))
    verified = run_openssl("cms", "-verify", "-inform", "DER", "-noverify", stdin=message)
    assert verified.returncode == 0, verified.stderr
    decrypted = run_openssl("cms", "-decrypt", "-inform", "DER", "-recip", str(tmp_path / "ca.pem"),
                            "-inkey", str(tmp_path / "ca.key"), stdin=verified.stdout)
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout == der(device[2])


@pytest.mark.parametrize("content_encryption", ["des3", "aes256"])
def test_openssl_verifies_and_decrypts_our_success_cert_rep(tmp_path, codec_ca, device, content_encryption):
    ca_cert, ca_key = codec_ca
    key, cert, csr = device
    _, header = pkcs_req(codec_ca, device, digest_algorithm="sha1")
    issued = issue(ca_cert, ca_key, csr)
    answer = codec.build_cert_rep(header=header, status="SUCCESS", signer_key=ca_key, signer_certificate=ca_cert,
                                  certificates=[issued], content_encryption=content_encryption)
    (tmp_path / "device.pem").write_bytes(pem(cert))
    (tmp_path / "device.key").write_bytes(pem(key))
    verified = run_openssl("cms", "-verify", "-inform", "DER", "-noverify", stdin=answer)
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    decrypted = run_openssl("cms", "-decrypt", "-inform", "DER", "-recip", str(tmp_path / "device.pem"),
                            "-inkey", str(tmp_path / "device.key"), stdin=verified.stdout)
    assert decrypted.returncode == 0, decrypted.stderr
    printed = run_openssl("pkcs7", "-inform", "DER", "-print_certs", stdin=decrypted.stdout)
    assert printed.returncode == 0, printed.stderr
    assert x509.load_pem_x509_certificate(printed.stdout) == issued


def test_openssl_prints_fail_info_of_our_failure_cert_rep(codec_ca, device):
    ca_cert, ca_key = codec_ca
    _, header = pkcs_req(codec_ca, device)
    answer = codec.build_cert_rep(header=header, status="FAILURE", fail_info="badMessageCheck",
                                  fail_info_text="signature did not verify", signer_key=ca_key,
                                  signer_certificate=ca_cert)
    printed = run_openssl("cms", "-cmsout", "-print", "-inform", "DER", stdin=answer)
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout.decode()
    assert "2.16.840.1.113733.1.9.4" in text  # failInfo
    fail_info = text.split("2.16.840.1.113733.1.9.4")[1]
    assert "PRINTABLESTRING:1" in fail_info.split("object:")[0]
    assert "1.3.6.1.5.5.7.24.1" in text and "UTF8STRING:signature did not verify" in text
    assert "eContent: <ABSENT>" not in text


@pytest.mark.parametrize("status", ["FAILURE", "PENDING"])
def test_openssl_verifies_our_failure_and_pending_cert_reps(tmp_path, codec_ca, device, status):
    """What certmonger does with a refusal: verify the SignedData, its (empty) content included."""
    ca_cert, ca_key = codec_ca
    _, header = pkcs_req(codec_ca, device)
    fail = {"fail_info": "badRequest", "fail_info_text": "no"} if status == "FAILURE" else {}
    answer = codec.build_cert_rep(header=header, status=status, signer_key=ca_key, signer_certificate=ca_cert,
                                  **fail)
    (tmp_path / "ca.pem").write_bytes(pem(ca_cert))
    verified = run_openssl("cms", "-verify", "-inform", "DER", "-CAfile", str(tmp_path / "ca.pem"), stdin=answer)
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    assert verified.stdout == b""
    # A tampered digest is refused, so the empty content really is covered by the signature.
    broken = answer.replace(digest(header.digest_algorithm, b""), digest(header.digest_algorithm, b"x"))
    assert broken != answer
    refused = run_openssl("cms", "-verify", "-inform", "DER", "-noverify", stdin=broken)
    assert refused.returncode != 0


def test_degenerate_certificates_for_get_ca_cert(codec_ca):
    ca_cert, ca_key = codec_ca
    _, _, ra_csr = make_device("Codec RA", challenge=None)
    ra_cert = issue(ca_cert, ca_key, ra_csr)
    chain = codec.degenerate_certificates([ra_cert, ca_cert])
    printed = run_openssl("pkcs7", "-inform", "DER", "-print_certs", stdin=chain)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count(b"BEGIN CERTIFICATE") == 2
    assert codec.ca_certificates(chain) == [der(ra_cert), der(ca_cert)]
    assert codec.ca_certificates(der(ca_cert)) == [der(ca_cert)]
    assert codec.looks_like_pki_message(chain) is False


# -- the builders write DER directly (codec.der) ---------------------------------------------------


def _asn1crypto_signed_data(attributes, signature, signer, digest_algorithm, content, certificates):
    """The SignedData the builders wrote before codec.der, assembled from asn1crypto objects."""
    signer = scep_signed.to_asn1_certificate(signer)
    digest_identifier = algos.DigestAlgorithm({"algorithm": digest_algorithm})
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber(
            {"issuer": signer.issuer, "serial_number": signer.serial_number})),
        "digest_algorithm": digest_identifier,
        "signed_attrs": cms.CMSAttributes.load(scep_signed.universal_set(b"".join(sorted(attributes)))),
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
        "signature": signature,
    })
    encapsulated = {"content_type": "data"}
    if content is not None:
        encapsulated["content"] = content
    return cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData({
        "version": "v1", "digest_algorithms": [digest_identifier], "encap_content_info": encapsulated,
        "certificates": cms.CertificateSet([
            cms.CertificateChoices(name="certificate", value=scep_signed.to_asn1_certificate(c)) for c in certificates
        ]),
        "signer_infos": [signer_info],
    })}).dump()


@pytest.mark.parametrize("content", [None, b"", b"inner content"])
@pytest.mark.parametrize("digest_algorithm", ["sha1", "sha256"])
def test_signed_data_is_the_der_asn1crypto_wrote(codec_ca, device, content, digest_algorithm):
    ca_cert, ca_key = codec_ca
    _, cert, _ = device
    attributes = scep_attributes.encode_attributes(
        content_digest=digest(digest_algorithm, content or b""), message_type="3", transaction_id="T-1",
        sender_nonce=b"n" * 16, recipient_nonce=b"r" * 16, pki_status="2", fail_info="2",
        fail_info_text="déjà refusé", signing_time=datetime.datetime(2026, 11, 29, tzinfo=datetime.timezone.utc))
    built = scep_signed.build_signed_data(content=content, attributes=attributes, signer_key=ca_key,
                                          signer_certificate=ca_cert, digest_algorithm=digest_algorithm,
                                          certificates=[cert])
    signature = scep_signed.load_signed_data(built)["signer_infos"][0]["signature"].native
    assert built == _asn1crypto_signed_data(attributes, signature, ca_cert, digest_algorithm, content, [ca_cert, cert])


def test_envelope_and_certs_only_are_the_der_asn1crypto_wrote(codec_ca, device):
    ca_cert, ca_key = codec_ca
    key, cert, _ = device
    sealed = make_envelope(b"inner", cert, "aes256")
    parsed = cms.ContentInfo.load(sealed)["content"]
    recipient = parsed["recipient_infos"][0].chosen
    asn1_cert = scep_signed.to_asn1_certificate(cert)
    rebuilt = cms.ContentInfo({"content_type": "enveloped_data", "content": cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
            "version": "v0",
            "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber(
                {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number})),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()},
            "encrypted_key": recipient["encrypted_key"].native,
        }))],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": parsed["encrypted_content_info"]["content_encryption_algorithm"],
            "encrypted_content": parsed["encrypted_content_info"]["encrypted_content"].native,
        },
    })}).dump()
    assert sealed == rebuilt
    crl = _tiny_crl(ca_cert, ca_key)
    chain = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData({
        "version": "v1", "digest_algorithms": [], "encap_content_info": {"content_type": "data"},
        "certificates": cms.CertificateSet([
            cms.CertificateChoices(name="certificate", value=scep_signed.to_asn1_certificate(c)) for c in (cert, ca_cert)
        ]),
        "crls": [cms.RevocationInfoChoice(name="crl", value=asn1_crl.CertificateList.load(crl))],
        "signer_infos": [],
    })}).dump()
    assert codec.degenerate_certificates([cert, ca_cert], crl=crl) == chain


def _tiny_crl(ca_cert, ca_key) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
           .next_update(now + datetime.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    return crl.public_bytes(Encoding.DER)


def test_open_request_reads_what_read_header_and_read_request_read(codec_ca, device):
    ca_cert, ca_key = codec_ca
    message, header = pkcs_req(codec_ca, device)
    assert codec.open_request(message, ca_key, ca_cert) == (header, codec.read_request(message, ca_key, ca_cert))
    # Addressed to another CA: the header is read, the content is the MessageError read_request raises.
    other_cert, other_key = make_ca("Other CA")
    read_header, content = codec.open_request(message, other_key, other_cert)
    assert read_header == header
    assert isinstance(content, codec.MessageError)
    with pytest.raises(codec.MessageError):
        codec.read_request(message, other_key, other_cert)
    # Not a SCEP message at all: raised, as read_header raises.
    with pytest.raises(codec.MessageError):
        codec.open_request(flip(message, len(message) - 5), ca_key, ca_cert)
