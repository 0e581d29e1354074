"""The proxy's cheap look at messages (codec/skim.py) answers exactly as the full asn1crypto parse does.

``peek.looks_like_pki_message`` and ``peek.cert_rep_status`` read the common
shapes straight from the bytes and fall back to the full parse, which stays
reachable as ``peek._full_looks_like_pki_message`` and
``peek._full_cert_rep_status``: on real messages, their BER forms, garbage and
mutated bytes, both give the same answers. ``ber.scan`` refuses exactly what
``ber.normalize`` refuses.
"""

import os
from pathlib import Path

import pytest
from asn1crypto import cms, core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.ber_forms import BER_SIGNED_DATA_PREFIX, to_chunked_strings, to_indefinite_ber, to_long_lengths
from support.certs import signed_blob
from support.scep_capture import der, issue, make_ca, make_device
from test_codec_fuzz import mutated
from scepproxyd.scep import codec
from scepproxyd.scep.codec import ber, peek, signed
from scepproxyd.scep.codec import attributes as scep_attributes
from scepproxyd.scep.codec.algorithms import digest
from scepproxyd.scep.codec.skim import CannotJudge, skim

CA_CERT, CA_KEY = make_ca("Skim CA")
DEVICE_KEY, DEVICE_CERT, DEVICE_CSR = make_device("skim-device")


def request(**kwargs) -> tuple[bytes, codec.MessageHeader]:
    return codec.build_request(message_type="PKCSReq", signer_key=DEVICE_KEY, signer_certificate=DEVICE_CERT,
                               recipient_certificate=CA_CERT, csr=DEVICE_CSR, **kwargs)


PKCS_REQ, HEADER = request()
SHA1_REQ, SHA1_HEADER = request(digest_algorithm="sha1", content_encryption="des")
REQUESTS = {
    "pkcsreq": PKCS_REQ,
    "pkcsreq-sha1-des": SHA1_REQ,
    "pkcsreq-sha512-oaep": request(digest_algorithm="sha512", key_transport="oaep")[0],
    "pkcsreq-unsorted": request(sort_attributes=False)[0],
}
CERT_REPS = {
    "success": codec.build_cert_rep(header=HEADER, status="SUCCESS", signer_key=CA_KEY, signer_certificate=CA_CERT,
                                    certificates=[issue(CA_CERT, CA_KEY, DEVICE_CSR)]),
    "success-sha1": codec.build_cert_rep(header=SHA1_HEADER, status="SUCCESS", signer_key=CA_KEY,
                                         signer_certificate=CA_CERT, certificates=[issue(CA_CERT, CA_KEY, DEVICE_CSR)]),
    "pending": codec.build_cert_rep(header=HEADER, status="PENDING", signer_key=CA_KEY, signer_certificate=CA_CERT),
}
CERT_REPS.update({
    "failure-" + fail: codec.build_cert_rep(header=HEADER, status="FAILURE", fail_info=fail, fail_info_text="no",
                                            signer_key=CA_KEY, signer_certificate=CA_CERT)
    for fail in codec.FAIL_INFO_NAMES.values()
})
EXPECTED = {name: ("SUCCESS", None) for name in ("success", "success-sha1")}
EXPECTED.update({"pending": ("PENDING", None)})
EXPECTED.update({"failure-" + fail: ("FAILURE", fail) for fail in codec.FAIL_INFO_NAMES.values()})
PEERS = {path.stem: path.read_bytes() for path in (Path(__file__).parent / "fixtures" / "scep").glob("*.der")}
PEER_ANSWERS = {
    "scepclient-pkcsreq-success": (True, None, None), "scepclient-pkcsreq-failure": (True, None, None),
    "scepserver-certrep-success": (True, "SUCCESS", None), "scepserver-certrep-failure": (True, "FAILURE", "badRequest"),
    "step-ca-certrep-success": (True, "SUCCESS", None), "step-ca-certrep-failure": (True, "FAILURE", "badRequest"),
    "strongswan-pkcsreq-default": (True, None, None), "strongswan-pkcsreq-pss": (True, None, None),
}
FORMS = {"der": lambda m: m, "indefinite": to_indefinite_ber, "chunked": to_chunked_strings, "long": to_long_lengths}
MESSAGES = {"%s/%s" % (name, form): encode(message)
            for name, message in {**REQUESTS, **CERT_REPS}.items() for form, encode in FORMS.items()}


def full_answers(der_bytes) -> tuple:
    return (peek._full_looks_like_pki_message(der_bytes), *peek._full_cert_rep_status(der_bytes))


def cheap_answers(der_bytes) -> tuple:
    answers = (codec.looks_like_pki_message(der_bytes), *codec.cert_rep_status(der_bytes))
    assert codec.pki_message_status(der_bytes) == answers
    return answers


def normalize_fails(data: bytes) -> bool:
    try:
        ber.normalize(data)
    except codec.MessageError:
        return True
    return False


def scan_fails(data: bytes) -> bool:
    try:
        ber.scan(data)
    except codec.MessageError:
        return True
    return False


def agree(data: bytes) -> None:
    assert scan_fails(data) == normalize_fails(data)
    full = full_answers(data)
    assert cheap_answers(data) == full
    assert peek._full_pki_message_status(data) == full


# -- real messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_real_messages_are_judged_cheaply_and_alike(name):
    message = MESSAGES[name]
    assert skim(message) is not None  # no CannotJudge: the common path never parses with asn1crypto
    answers = cheap_answers(message)
    assert answers == full_answers(message)
    assert answers[0] is True
    kind = name.split("/")[0]
    assert answers[1:] == EXPECTED.get(kind, (None, None))


@pytest.mark.parametrize("name", sorted(PEER_ANSWERS))
def test_real_peers_messages_are_judged_alike(name):
    """What micromdm scepclient and scepserver, step-ca and strongSwan sent (tests/fixtures/scep)."""
    message = PEERS[name]
    agree(message)
    assert cheap_answers(message) == PEER_ANSWERS[name]
    if name.endswith("-pss"):
        with pytest.raises(CannotJudge):
            skim(message)  # RSASSA-PSS parameters: the full parse reads them
    else:
        assert skim(message) is not None


def signed_with(extra_attributes: list[bytes], pki_status: str | None = "3") -> bytes:
    """A CertRep-like message whose signed attributes include ``extra_attributes``."""
    envelope = b""
    attributes = scep_attributes.encode_attributes(
        content_digest=digest("sha256", envelope), message_type="3", transaction_id="t", sender_nonce=b"n" * 16,
        pki_status=pki_status)
    return signed.build_signed_data(content=envelope, attributes=attributes + extra_attributes,
                                    signer_key=CA_KEY, signer_certificate=CA_CERT, digest_algorithm="sha256")


def test_attributes_asn1crypto_has_no_spec_for_are_read_as_any():
    """step-ca's failInfoText type, or any unregistered one; not a registered type, nor a known one re-encoded."""
    unregistered = signed_with([scep_attributes._attribute("1.3.6.1.5.5.7.24", core.PrintableString("why").dump())])
    assert skim(unregistered) == (1, "3", None)
    agree(unregistered)
    registered = signed_with([scep_attributes._attribute("1.2.840.113549.1.9.15", core.PrintableString("x").dump())])
    with pytest.raises(CannotJudge):
        skim(registered)
    agree(registered)
    # pkiStatus's OID with a non-minimal arc (0x80 padding): asn1crypto still reads it as pkiStatus.
    padded_oid = bytes.fromhex("06 0b 60 86 48 80 01 86 f8 45 01 09 03")
    padded = signed_with([b"\x30\x12" + padded_oid + b"\x31\x03\x13\x012"], pki_status=None)
    with pytest.raises(CannotJudge):
        skim(padded)
    assert full_answers(padded) == (True, "FAILURE", None)
    agree(padded)


def test_asn1crypto_registries_are_as_skim_reads_them():
    """skim reads SCEP attributes as SET OF ANY and the CMS ones by asn1crypto's specs: if someone
    registers the SCEP attributes in asn1crypto (the codec never does), skim must change too."""
    scep = ["2.16.840.1.113733.1.9.%d" % n for n in range(2, 8)] + ["1.3.6.1.5.5.7.24.1", "1.3.6.1.5.5.7.24"]
    assert not set(scep) & set(cms.CMSAttributeType._map)
    assert {name: cms.CMSAttribute._oid_specs[name] for name in ("content_type", "message_digest", "signing_time")} \
        == {"content_type": cms.SetOfContentType, "message_digest": cms.SetOfOctetString,
            "signing_time": cms.SetOfTime}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_ber_forms_differ_from_der_and_still_read(form):
    encoded = FORMS[form](CERT_REPS["failure-badRequest"])
    assert (encoded != CERT_REPS["failure-badRequest"]) == (form != "der")
    if form != "long":  # normalize keeps a primitive element's own header as sent
        assert ber.normalize(encoded) == CERT_REPS["failure-badRequest"]
    assert ber.scan(encoded) is not None


def test_raw_pki_status_strings_follow_the_full_parse():
    """skim returns what was sent; peek maps it to names as the full parse does (unknown failInfo kept)."""
    assert skim(CERT_REPS["failure-badCertId"])[1:] == ("2", "4")
    assert skim(PKCS_REQ) == (1, None, None)


def test_other_signed_data_falls_back_to_the_full_parse():
    """Shapes the cheap reader does not know exactly: PKCS#7 from cryptography, a certs-only chain."""
    for message in (signed_blob(), codec.degenerate_certificates([CA_CERT]), der(CA_CERT)):
        agree(message)
    assert codec.looks_like_pki_message(signed_blob())
    assert not codec.looks_like_pki_message(codec.degenerate_certificates([CA_CERT]))
    assert skim(codec.degenerate_certificates([CA_CERT])) == (0, None, None)
    with pytest.raises(CannotJudge):
        skim(signed_blob())  # its signed attributes include S/MIME capabilities


# -- garbage -------------------------------------------------------------------------------------


GARBAGE = [b"", b"\x00", b"hello world", b"\x30\x80", b"\x30\x84\xff\xff\xff\xff", b"\x30" + b"\x80" * 200,
           b"\x30\x03\x02\x01\x01", b"\x30\x00", b"\x31\x00", b"\x04\x00", os.urandom(2000),
           b"\x30\x85\x01\x00\x00\x00\x00", b"\x30\x80\x04\x80", b"\x30\x80" * 70 + b"\x00\x00" * 70,
           b"\x30\x80" * 64 + b"\x00\x00" * 64, b"\x30\x80" * 65 + b"\x00\x00" * 65,
           b"\x30\x02" * 63 + b"\x30\x00", b"\x24\x03\x0c\x01a", b"\x24\x80\x24\x80\x04\x01a\x00\x00\x00\x00",
           b"\x3f\x04\x00", b"\x1f\x81\x80\x80\x80\x80\x01\x00", PKCS_REQ + b"\x00", PKCS_REQ[:-1],
           PKCS_REQ[:100], to_indefinite_ber(PKCS_REQ)[:-2]]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_agrees(garbage):
    agree(garbage)


def test_nesting_at_the_depth_limit():
    """normalize allows 64 levels below the top element, and a 65th only when it is empty."""
    for depth in (63, 64, 65, 66):
        nested = b"\x30\x80" * depth + b"\x30\x00" + b"\x00\x00" * depth
        assert scan_fails(nested) == normalize_fails(nested) == (depth > 64)
        with_leaf = b"\x30\x80" * depth + b"\x05\x00" + b"\x00\x00" * depth
        assert scan_fails(with_leaf) == normalize_fails(with_leaf) == (depth > 64)


@pytest.mark.parametrize("value", [None, "text", 42, bytearray(PKCS_REQ), memoryview(PKCS_REQ)])
def test_inputs_of_other_types(value):
    assert cheap_answers(value) == full_answers(value)


# -- property: the cheap path and the full parse never disagree ------------------------------------


AGREE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@AGREE
@given(st.binary(max_size=2000))
def test_random_bytes_agree(data):
    agree(data)


@AGREE
@given(st.binary(max_size=300).map(lambda tail: BER_SIGNED_DATA_PREFIX + tail))
def test_random_bytes_after_a_ber_signed_data_prefix_agree(data):
    agree(data)


@AGREE
@given(data=st.data())
def test_mutated_messages_agree(data):
    messages = {**MESSAGES, **PEERS}
    name = data.draw(st.sampled_from(sorted(messages)))
    agree(data.draw(mutated(messages[name])))


@AGREE
@given(data=st.data())
def test_mutated_cert_rep_attributes_agree(data):
    """Mutations inside the signer info only, where the cheap reader checks every value."""
    message = CERT_REPS[data.draw(st.sampled_from(sorted(CERT_REPS)))]
    signer_info = message.rfind(b"\x31\x82", 0, len(message) - 200)  # the SET OF SignerInfo near the end
    head, tail = message[:signer_info], message[signer_info:]
    agree(head + data.draw(mutated(tail)))


def _element_offsets(message: bytes) -> list[tuple[int, int, int]]:
    """(offset, contents start, contents stop) of every element of a DER message."""
    found = []

    def walk(start, stop):
        while start < stop:
            _, constructed, _, _, length, content = ber._read_header(message, start, stop)
            found.append((start, content, content + length))
            if constructed:
                walk(content, content + length)
            start = content + length

    walk(0, len(message))
    return found


DER_MESSAGES = {**REQUESTS, **CERT_REPS}
ELEMENTS = {name: _element_offsets(message) for name, message in DER_MESSAGES.items()}
IDENTIFIERS = [0x02, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x14, 0x16, 0x17, 0x18, 0x1E, 0x24, 0x2C, 0x30, 0x31, 0x33,
               0x36, 0x80, 0x81, 0x93, 0xA0, 0xA1, 0xA2]


@AGREE
@given(data=st.data())
def test_retagged_and_rewritten_elements_agree(data):
    """Well-formed BER with one element's tag or value changed: the cheap reader's own checks decide."""
    name = data.draw(st.sampled_from(sorted(DER_MESSAGES)))
    message = bytearray(DER_MESSAGES[name])
    offset, start, stop = data.draw(st.sampled_from(ELEMENTS[name]))
    if stop > start and data.draw(st.booleans()):
        index = data.draw(st.integers(start, stop - 1))
        message[index] = data.draw(st.sampled_from(b"\x00\x0a019Z\x80\xc3\xff") | st.integers(0, 255))
    else:
        message[offset] = data.draw(st.sampled_from(IDENTIFIERS) | st.integers(0, 255))
    encode = FORMS[data.draw(st.sampled_from(sorted(FORMS)))] if data.draw(st.booleans()) else (lambda m: m)
    try:
        message = encode(bytes(message))
    except (IndexError, ValueError):
        message = bytes(message)  # the form's re-encoder needs one-octet tags
    agree(message)
