"""Codec interop kit: a tiny SCEP server that records what real clients send, and test PKI.

It answers GetCACaps with the capabilities it is given and GetCACert with the
certificates it is given, and keeps every PKIOperation message. By default it
answers PKIOperation with HTTP 500 (the client gives up, and the test reads the
recorded request); give it ``answer`` to reply with a CertRep instead.

Given ``forward_to`` (a SCEP URL), it is a recording relay instead: every
request goes on to that URL with its query and body unchanged, and its
answer comes back unchanged; each PKIOperation message and the answer to it
are kept (``messages``, ``answers``). Put one between a client and a server
to see what they said to each other, byte for byte.

It runs on loopback on a free port, in a thread of the test process, and is
shut down by the test (``with CaptureServer(...) as server:``).
"""

import base64
import datetime
import http.server
import threading
import urllib.error
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID

from asn1crypto import cms

from scepproxyd.scep.codec import algorithms, ber, degenerate_certificates, enveloped, signed

#: RFC 8894's failInfoText signed attribute (id-scep-failInfoText).
FAIL_INFO_TEXT_OID = "1.3.6.1.5.5.7.24.1"


def fail_info_text(der: bytes) -> str | None:
    """The failInfoText of a CertRep, the reason a FAILURE gives its device (codec.read_response skips it)."""
    from asn1crypto import cms

    signed = cms.ContentInfo.load(der)["content"]
    for attribute in signed["signer_infos"][0]["signed_attrs"]:
        if attribute["type"].dotted == FAIL_INFO_TEXT_OID:
            return attribute["values"][0].native
    return None


CAPS_WITH_AES = "POSTPKIOperation\nSHA-1\nSHA-256\nSHA-384\nSHA-512\nAES\nDES3\nSCEPStandard\nRenewal\n"
CAPS_WITHOUT_AES = "POSTPKIOperation\nSHA-1\nSHA-256\nDES3\n"


def _decode_get_message(text: str) -> bytes:
    """GET messages come in either base64 alphabet, padded or not (scepclient: base64url, unpadded)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _forward(url: str, body: bytes | None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one request passed on as it came."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as response:
            return response.status, response.headers.get("Content-Type") or "", response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type") or "", e.read()


def cert_rep_cipher(answer: bytes, recipient_key, recipient_certificate) -> str:
    """The content encryption of a SUCCESS CertRep's envelope, opened with the requester's key."""
    _, cipher = enveloped.open_envelope(signed.open_signed_data(answer).content, recipient_key, recipient_certificate)
    return cipher


def envelope_cipher(message: bytes) -> str:
    """The content encryption of a request's or SUCCESS CertRep's envelope, read without any key
    (the algorithm identifier is in the clear): what its sender chose."""
    info = ber.load(signed.open_signed_data(message).content, cms.ContentInfo)
    return algorithms.content_cipher_name(info["content"]["encrypted_content_info"]["content_encryption_algorithm"])


class CaptureServer:
    def __init__(self, ca_certificates=(), caps=CAPS_WITH_AES, answer=None, forward_to: str | None = None):
        """``ca_certificates``: cryptography certificates, the CA first; ``answer(message) -> bytes | None``;
        ``forward_to``: a SCEP URL to relay every request to (the other arguments are then unused)."""
        self.ca_certificates = list(ca_certificates)
        self.caps = caps
        self.answer = answer
        self.forward_to = forward_to
        self.messages: list[bytes] = []
        self.answers: list[bytes] = []  # a relay's: the answer to each of ``messages``
        self.operations: list[str] = []
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/scep" % (self._httpd.server_address[1],)

    def __enter__(self) -> "CaptureServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _get_ca_cert(self) -> tuple[bytes, str]:
        if len(self.ca_certificates) == 1:
            return self.ca_certificates[0].public_bytes(serialization.Encoding.DER), "application/x-x509-ca-cert"
        return degenerate_certificates(self.ca_certificates), "application/x-x509-ca-ra-cert"

    def _handler(self):
        capture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _params(self) -> dict:
                query = urllib.parse.urlsplit(self.path).query
                # A literal '+' in a SCEP GET message is base64 data, not a space.
                return dict(urllib.parse.parse_qsl(query.replace("+", "%2B"), keep_blank_values=True))

            def _relay(self, params: dict, body: bytes | None) -> None:
                query = urllib.parse.urlsplit(self.path).query
                status, content_type, answer = _forward(capture.forward_to + "?" + query, body)
                if params.get("operation") == "PKIOperation":
                    capture.messages.append(body if body is not None else _decode_get_message(params.get("message", "")))
                    capture.answers.append(answer)
                self._reply(status, answer, content_type)

            def _operation(self, params: dict, body: bytes | None) -> None:
                operation = params.get("operation", "")
                capture.operations.append(operation)
                if capture.forward_to is not None:
                    self._relay(params, body)
                elif operation == "GetCACaps":
                    self._reply(200, capture.caps.encode())
                elif operation == "GetCACert":
                    self._reply(200, *capture._get_ca_cert())
                elif operation == "PKIOperation":
                    message = body if body is not None else _decode_get_message(params.get("message", ""))
                    capture.messages.append(message)
                    reply = capture.answer(message) if capture.answer else None
                    if reply is None:
                        self._reply(500, b"captured\n")
                    else:
                        self._reply(200, reply, "application/x-pki-message")
                else:
                    self._reply(400, b"unknown operation\n")

            def do_GET(self):
                self._operation(self._params(), None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._operation(self._params(), self.rfile.read(length))

        return Handler


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(common_name: str = "Codec Test CA", key_size: int = 2048):
    """A self-signed RSA CA certificate that real clients accept as a SCEP CA, and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_device(common_name: str = "device-1", challenge: str | None = "s3cret"):
    """A device key, its self-signed signer certificate and a CSR (with a challengePassword)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return key, cert, builder.sign(key, hashes.SHA256())


def issue(ca_cert, ca_key, csr, days: int = 7) -> x509.Certificate:
    """What a CA would issue for ``csr`` (the test stands in for the CA)."""
    return (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_cert.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )


def pem(obj) -> bytes:
    """PEM of a certificate or a private key (unencrypted PKCS#8)."""
    if isinstance(obj, rsa.RSAPrivateKey):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


def der(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)
