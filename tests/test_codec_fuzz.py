"""Hostile bytes into the codec's readers: MessageError, or a valid result; never another exception."""

from hypothesis import HealthCheck, given, settings
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import strategies as st

from support.ber_forms import BER_SIGNED_DATA_PREFIX
from support.scep_capture import issue, make_ca, make_device
from scepproxyd.scep import codec
from scepproxyd.scep.codec import attributes, enveloped, signed
from scepproxyd.scep.codec.algorithms import digest

CA_CERT, CA_KEY = make_ca("Fuzz CA")
DEVICE_KEY, DEVICE_CERT, DEVICE_CSR = make_device("fuzz-device")
REQUESTS = {
    name: codec.build_request(message_type="PKCSReq", signer_key=DEVICE_KEY, signer_certificate=DEVICE_CERT,
                              recipient_certificate=CA_CERT, csr=DEVICE_CSR, content_encryption=cipher,
                              digest_algorithm="sha1")
    for name, cipher in [("des", "des"), ("aes", "aes128")]
}
CERT_REP = codec.build_cert_rep(header=REQUESTS["aes"][1], status="SUCCESS", signer_key=CA_KEY,
                                signer_certificate=CA_CERT, certificates=[issue(CA_CERT, CA_KEY, DEVICE_CSR)])

ENVELOPE = bytes(signed.load_signed_data(REQUESTS["aes"][0])["encap_content_info"]["content"])


def signed_around(envelope: bytes, message_type: str = "19") -> bytes:
    """A validly signed request around any envelope bytes, so fuzzing reaches the layers inside."""
    signed_attributes = attributes.encode_attributes(
        content_digest=digest("sha256", envelope), message_type=message_type, transaction_id="fuzz",
        sender_nonce=b"0123456789abcdef")
    return signed.build_signed_data(content=envelope, attributes=signed_attributes, signer_key=DEVICE_KEY,
                                    signer_certificate=DEVICE_CERT, digest_algorithm="sha256")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_message_errors(der: bytes) -> None:
    for read in (
        lambda: codec.read_header(der),
        lambda: codec.read_request(der, CA_KEY, CA_CERT),
        lambda: codec.read_response(der, DEVICE_KEY, DEVICE_CERT, CA_CERT),
    ):
        try:
            read()
        except codec.MessageError:
            pass
    # The proxy's peeks never raise at all.
    assert codec.looks_like_pki_message(der) in (True, False)
    codec.cert_rep_status(der)
    codec.ca_certificates(der)


@st.composite
def mutated(draw, original: bytes):
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        index = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[index] = draw(st.sampled_from([0x00, 0x80, 0x81, 0x84, 0xFF, 0x30, 0x24, 0xA0]))
        elif kind == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[index:index + draw(st.integers(1, 8))]
        else:
            del data[index:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(der):
    only_message_errors(der)


@FUZZ
@given(st.binary(max_size=400).map(lambda tail: BER_SIGNED_DATA_PREFIX + tail))
def test_random_bytes_after_a_ber_signed_data_prefix(der):
    only_message_errors(der)


@FUZZ
@given(data=st.data())
def test_mutated_requests(data):
    name = data.draw(st.sampled_from(sorted(REQUESTS)))
    only_message_errors(data.draw(mutated(REQUESTS[name][0])))


@FUZZ
@given(data=st.data())
def test_mutated_cert_rep(data):
    only_message_errors(data.draw(mutated(CERT_REP)))


@FUZZ
@given(data=st.data())
def test_mutated_envelopes_behind_a_valid_signature(data):
    only_message_errors(signed_around(data.draw(mutated(ENVELOPE))))


@FUZZ
@given(data=st.data(), message_type=st.sampled_from(["17", "19", "20", "21", "22"]))
def test_mutated_inner_content_behind_a_valid_envelope(data, message_type):
    """Garbled CSR / IssuerAndSubject / IssuerAndSerialNumber, correctly encrypted and signed."""
    content = data.draw(st.one_of(mutated(DEVICE_CSR.public_bytes(Encoding.DER)), st.binary(max_size=300)))
    envelope = enveloped.envelope(content, CA_CERT, "aes128")
    only_message_errors(signed_around(envelope, message_type))


def test_unmutated_messages_still_read():
    for der, header in REQUESTS.values():
        assert codec.read_request(der, CA_KEY, CA_CERT).header == header
    assert codec.read_response(CERT_REP, DEVICE_KEY, DEVICE_CERT, CA_CERT)[0] == "SUCCESS"
    assert codec.read_request(signed_around(ENVELOPE), CA_KEY, CA_CERT).csr == DEVICE_CSR
