"""PKCS#10 CSRs as real clients send them: BER read, signature checked over the bytes sent.

cryptography reads only DER. strongSwan ``pki --scep`` writes the
attributes of its CertificationRequestInfo (challengePassword and the
extension request) in the order it built them, not DER-sorted, and signs
that; cryptography then refuses the CSR (``InvalidSetOrdering``). So a CSR
cryptography cannot read is parsed with asn1crypto, its signature checked
over the CertificationRequestInfo exactly as sent, and it is re-encoded in
DER (the SETs sorted) for the rest of the CA. The re-encoding keeps the
client's signature, which then covers the bytes sent and not the
re-encoding: so the CA trusts the codec's check of a request's CSR
(``issuer.check_csr(csr, signature_verified=True)``) rather than
``csr.is_signature_valid``.
"""

from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from scepproxyd.scep.codec import ber
from scepproxyd.scep.codec.algorithms import digest_hash
from scepproxyd.scep.codec.errors import MessageError


def _verify(public_key, algorithm, signature: bytes, data: bytes) -> None:
    """Check ``signature`` over ``data``; InvalidSignature or MessageError when it does not hold."""
    kind = algorithm.signature_algo
    if kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), digest_hash(algorithm.hash_algo))
    elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
        parameters = algorithm["parameters"]
        if parameters["mask_gen_algorithm"]["algorithm"].native != "mgf1":
            raise MessageError("CSR signed with RSASSA-PSS and a mask generation other than MGF1")
        mgf = padding.MGF1(digest_hash(parameters["mask_gen_algorithm"]["parameters"]["algorithm"].native))
        pss = padding.PSS(mgf=mgf, salt_length=parameters["salt_length"].native)
        public_key.verify(signature, data, pss, digest_hash(parameters["hash_algorithm"]["algorithm"].native))
    elif kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest_hash(algorithm.hash_algo)))
    elif kind in ("ed25519", "ed448") and isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        public_key.verify(signature, data)
    else:
        raise MessageError("CSR signature algorithm %s does not fit its key" % (algorithm["algorithm"].dotted,))


def _reencoded(normalized: bytes) -> x509.CertificateSigningRequest:
    """A CSR cryptography refused as written: its signature checked as sent, then re-encoded in DER."""
    request = ber.load(normalized, asn1_csr.CertificationRequest)
    info = request["certification_request_info"]
    try:
        public_key = serialization.load_der_public_key(info["subject_pk_info"].dump())
        algorithm = request["signature_algorithm"]
        _verify(public_key, algorithm, request["signature"].native, info.dump())
    except (InvalidSignature, UnsupportedAlgorithm) as e:
        raise MessageError("the CSR's own signature does not verify (%s)" % (type(e).__name__,)) from e
    except (ValueError, KeyError) as e:
        raise MessageError("the CSR's key or signature algorithm cannot be read (%s)" % (e,)) from e
    try:
        return x509.load_der_x509_csr(_sorted_attributes(normalized))
    except ValueError as e:
        raise MessageError("the CSR cannot be read even in DER (%s)" % (e,)) from e


def _tagged(identifier: int, children) -> bytes:
    body = b"".join(children)
    return bytes([identifier]) + ber.length_octets(len(body)) + body


def _sorted_attributes(normalized: bytes) -> bytes:
    """
    The CSR with its attributes, and each attribute's values, in DER SET OF order.

    Only those SETs are touched, byte for byte otherwise: re-encoding the
    whole CSR would rewrite strings (names, SANs) the client chose.
    """
    info, algorithm, signature = ber.children(normalized)
    *fields, attributes = ber.children(info)
    if attributes[0] != 0xA0:
        raise MessageError("the CSR has no attributes field")
    resorted = []
    for attribute in ber.children(attributes):
        kind, values = ber.children(attribute)
        resorted.append(_tagged(0x30, [kind, _tagged(values[0], sorted(ber.children(values)))]))
    info = _tagged(0x30, [*fields, _tagged(0xA0, sorted(resorted))])
    return _tagged(0x30, [info, algorithm, signature])


def load_csr(content: bytes) -> x509.CertificateSigningRequest:
    """The CSR in ``content`` (BER), in DER; MessageError unless its own signature verifies over the bytes sent."""
    normalized = ber.normalize(content)
    try:
        csr = x509.load_der_x509_csr(normalized)
    except ValueError:
        return _reencoded(normalized)
    if not csr.is_signature_valid:
        raise MessageError("the CSR's own signature does not verify")
    return csr
