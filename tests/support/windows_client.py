"""A SCEP client that behaves as Windows' ClientCertificateInstall/SCEP does, for tests.

Written from RFC 8894 and Microsoft's published notes on its SCEP client and
the ClientCertificateInstall CSP, independently of the daemon's codec: it
builds its CSR with ``cryptography`` and its CMS with asn1crypto, and reads
the CertRep the same way, so a fault in scepproxyd's codec cannot hide
behind a matching fault here. What it does, in Windows' order:

1. ``GET <ServerURL>/pkiclient.exe?operation=GetCACaps&message=default``;
2. ``GET <ServerURL>/pkiclient.exe?operation=GetCACert&message=default``
   (one DER certificate, or a PKCS#7 of the CA and its RA), and checks the
   CA against the profile's CAThumbprint (SHA-1 of its DER);
3. a CSR for an RSA key of KeyLength bits whose subject is the rendered
   SubjectName, RDNs in the order written, with the Challenge as its
   challengePassword, KeyUsage and the EKUMapping's extended key usages;
4. a PKCSReq: the CSR in an EnvelopedData for the RA (or CA) certificate,
   AES-256-CBC when GetCACaps lists AES, else 3DES, RSA PKCS#1 v1.5 key
   transport; in a SignedData by a self-signed certificate of the same key,
   SHA-256 when GetCACaps lists it, with RFC 8894's signed attributes;
5. ``GET …/pkiclient.exe?operation=PKIOperation&message=<percent-encoded
   base64>`` (or POST, when asked to);
6. checks the CertRep: signed by the CA or its RA, the signature and
   messageDigest good, and every authenticated attribute RFC 8894 lists for
   a CertRep present with the right value; then decrypts the certificate.

``send(method, url, body)`` is the transport: an awaitable returning
``(status, content_type, body)``, so the same client runs in process (the
Web test harness) and over real sockets (interop tests).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import urllib.parse

import attrs
from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import AttributeOID, NameOID

# RFC 8894 section 3.2.1's attribute types (the VeriSign arc) and the CMS ones signed beside them.
MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"
PKCS_REQ, CERT_REP = "19", "3"
STATUSES = {"0": "SUCCESS", "2": "FAILURE", "3": "PENDING"}
_ATTRIBUTE_NAMES = {"2.5.4.3": NameOID.COMMON_NAME, "CN": NameOID.COMMON_NAME,
                    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "O": NameOID.ORGANIZATION_NAME,
                    "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
                    "E": NameOID.EMAIL_ADDRESS, "DC": NameOID.DOMAIN_COMPONENT}


# The CSP's SubjectAlternativeNames formats (Windows' CERT_ALT_NAME_* numbers) this client writes.
_SAN_FORMATS = {
    "2": x509.RFC822Name,
    "3": x509.DNSName,
    "7": x509.UniformResourceIdentifier,
    "8": lambda value: x509.IPAddress(ipaddress.ip_address(value)),
}


class _AnySet(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _AnySet)]


@attrs.frozen
class Settings:
    """What the rendered profile's ClientCertificateInstall/SCEP install tells the client."""

    server_url: str
    challenge: str = attrs.field(repr=False)
    subject_name: str
    key_length: int = 2048
    hash_algorithm: str = "SHA-256"
    key_usage: int = 0xA0
    eku: str = "1.3.6.1.5.5.7.3.2"
    ca_thumbprint: str = ""
    #: SubjectAlternativeNames as the CSP writes it: ``format+value`` pairs separated by ``;``.
    subject_alternative_names: str = ""

    @classmethod
    def from_syncml(cls, rendered: str) -> "Settings":
        """The install's settings, read from a rendered SyncML profile as Windows reads its nodes."""
        from xml.etree import ElementTree

        nodes = {}
        for item in ElementTree.fromstring("<SyncBody>%s</SyncBody>" % (rendered,)).iter("Item"):
            uri = item.findtext("Target/LocURI").strip()
            nodes[uri.rsplit("/", 1)[1]] = item.findtext("Data")
        return cls(server_url=nodes["ServerURL"], challenge=nodes["Challenge"], subject_name=nodes["SubjectName"],
                   key_length=int(nodes["KeyLength"]), hash_algorithm=nodes["HashAlgorithm"],
                   key_usage=int(nodes["KeyUsage"]), eku=nodes["EKUMapping"], ca_thumbprint=nodes["CAThumbprint"],
                   subject_alternative_names=nodes.get("SubjectAlternativeNames") or "")


@attrs.frozen
class CertRep:
    """A CertRep as this client read it: status, failInfo, certificates, and the attributes it carried."""

    status: str
    fail_info: str | None
    certificates: list
    attributes: dict  # OID -> the native value
    #: The content-encryption algorithm of a SUCCESS's envelope (asn1crypto's name), None otherwise.
    cipher: str | None = None


@attrs.define
class WindowsScepClient:
    settings: Settings
    send: object  # async (method, url, body) -> (status, content_type, body)
    use_post: bool = False
    #: False: encrypt with 3DES even when GetCACaps lists AES (what Windows does with a CA that lists no AES).
    prefer_aes: bool = True
    #: True: the GET message's base64 broken by CRLF every 64 characters, as Windows' CryptBinaryToString
    #: writes base64 unless told not to (percent-encoded like the rest).
    wrap_base64: bool = False
    key: rsa.RSAPrivateKey = attrs.field(default=None, repr=False)
    #: (method, url) of every request sent, in order.
    requests: list = attrs.Factory(list)
    caps: list = attrs.Factory(list)
    ca_certificate: x509.Certificate | None = None
    recipient: x509.Certificate | None = None
    #: Every certificate GetCACert gave: a CertRep may be signed by the CA or by its RA among them.
    ca_certificates: list = attrs.Factory(list)
    #: The last PKIOperation: its DER, URL and the nonce and transaction ID it carried.
    last_message: bytes = b""
    last_url: str = ""
    sender_nonce: bytes = b""
    transaction_id: str = ""

    def __attrs_post_init__(self):
        if self.key is None:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=self.settings.key_length)

    def url(self, operation: str, message: str = "default") -> str:
        return "%s/pkiclient.exe?operation=%s&message=%s" % (
            self.settings.server_url, operation, urllib.parse.quote(message, safe=""))

    async def _get(self, method, url, body=None):
        self.requests.append((method, url))
        return await self.send(method, url, body)

    async def get_ca(self) -> None:
        """GetCACaps, then GetCACert: learn the algorithms and the certificate to encrypt to."""
        status, _, body = await self._get("GET", self.url("GetCACaps"))
        assert status == 200, (status, body)
        self.caps = [line.strip() for line in body.decode("ascii").splitlines() if line.strip()]
        status, content_type, body = await self._get("GET", self.url("GetCACert"))
        assert status == 200, (status, body)
        if content_type.startswith("application/x-x509-ca-ra-cert"):
            signed = cms.ContentInfo.load(body)["content"]
            certificates = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed["certificates"]]
        else:
            certificates = [x509.load_der_x509_certificate(body)]
        self.ca_certificates = certificates
        cas = [c for c in certificates if _is_ca(c)]
        thumbprint = self.settings.ca_thumbprint.upper()
        if thumbprint:
            cas = [c for c in cas if c.fingerprint(hashes.SHA1()).hex().upper() == thumbprint]
            assert cas, "no CA certificate from GetCACert matches the profile's CAThumbprint"
        self.ca_certificate = cas[0]
        ras = [c for c in certificates if not _is_ca(c)]
        self.recipient = ras[0] if ras else self.ca_certificate

    def csr(self) -> x509.CertificateSigningRequest:
        """The CSR: the SubjectName's RDNs as written, challengePassword, KeyUsage and EKU."""
        from scepproxyd.profiles.syncml import subject_attributes

        subject = x509.Name([
            x509.RelativeDistinguishedName([x509.NameAttribute(
                _ATTRIBUTE_NAMES.get(kind.upper()) or x509.ObjectIdentifier(kind), value)])
            for kind, value in subject_attributes(self.settings.subject_name)
        ])
        bits = self.settings.key_usage
        usage = x509.KeyUsage(
            digital_signature=bool(bits & 0x80), content_commitment=bool(bits & 0x40),
            key_encipherment=bool(bits & 0x20), data_encipherment=bool(bits & 0x10),
            key_agreement=bool(bits & 0x08), key_cert_sign=bool(bits & 0x04), crl_sign=bool(bits & 0x02),
            encipher_only=False, decipher_only=False)
        ekus = [x509.ObjectIdentifier(oid.strip()) for oid in self.settings.eku.replace("+", ";").split(";")
                if oid.strip()]
        builder = (x509.CertificateSigningRequestBuilder().subject_name(subject)
                   .add_extension(usage, critical=True)
                   .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
                   .add_attribute(AttributeOID.CHALLENGE_PASSWORD, self.settings.challenge.encode("utf-8")))
        names = [_SAN_FORMATS[kind](value) for kind, _, value in
                 (pair.strip().partition("+") for pair in self.settings.subject_alternative_names.split(";"))
                 if value]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def pkcs_req(self, csr: x509.CertificateSigningRequest | None = None) -> bytes:
        """A PKCSReq for ``csr`` (by default this client's own), as Windows builds one."""
        csr = csr or self.csr()
        signer = _self_signed(self.key, csr.subject)
        envelope = _envelope(csr.public_bytes(serialization.Encoding.DER), self.recipient,
                             "aes256_cbc" if "AES" in self.caps and self.prefer_aes else "tripledes_3key")
        digest = "sha256" if "SHA-256" in self.caps else "sha1"
        self.sender_nonce = os.urandom(16)
        spki = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.transaction_id = hashlib.sha256(spki).hexdigest().upper()
        attributes = [
            (CONTENT_TYPE, cms.ContentType("data")),
            (MESSAGE_DIGEST, core.OctetString(hashlib.new(digest, envelope).digest())),
            (SIGNING_TIME, core.UTCTime(datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0))),
            (MESSAGE_TYPE, core.PrintableString(PKCS_REQ)),
            (TRANSACTION_ID, core.PrintableString(self.transaction_id)),
            (SENDER_NONCE, core.OctetString(self.sender_nonce)),
        ]
        return _signed_data(envelope, attributes, self.key, signer, digest)

    async def pki_operation(self, message: bytes) -> tuple[int, str, bytes]:
        """Send one PKIOperation: GET with ``message=`` percent-encoded base64 (Windows' way), or POST."""
        if self.use_post:
            url = "%s/pkiclient.exe?operation=PKIOperation" % (self.settings.server_url,)
            self.last_message, self.last_url = message, url
            return await self._get("POST", url, message)
        encoded = base64.b64encode(message).decode("ascii")
        if self.wrap_base64:
            encoded = "".join(encoded[i:i + 64] + "\r\n" for i in range(0, len(encoded), 64))
        url = self.url("PKIOperation", encoded)
        self.last_message, self.last_url = message, url
        return await self._get("GET", url)

    async def repeat(self) -> tuple[int, str, bytes]:
        """The last PKIOperation again, byte for byte (Windows retrying after an answer it did not get)."""
        self.requests.append(("POST" if self.use_post else "GET", self.last_url))
        return await self.send("POST" if self.use_post else "GET", self.last_url,
                               self.last_message if self.use_post else None)

    async def enroll(self) -> CertRep:
        """The whole exchange, as Windows runs it when the Enroll node is executed."""
        await self.get_ca()
        status, content_type, body = await self.pki_operation(self.pkcs_req())
        assert status == 200, (status, body)
        assert content_type.startswith("application/x-pki-message"), content_type
        return self.read(body)

    def read(self, der: bytes) -> CertRep:
        """Check a CertRep as Windows does and return what it says (raises AssertionError on any fault)."""
        return read_cert_rep(der, self.key, self.ca_certificate, self.sender_nonce, self.transaction_id,
                             self.ca_certificates)


def read_cert_rep(der, key, ca_certificate, sender_nonce, transaction_id, trusted=()) -> CertRep:
    """A CertRep checked against RFC 8894 section 3.3.2 and the request it answers; its signer must be the CA,
    a certificate the CA issued, or one of ``trusted`` (what GetCACert gave: an RA)."""
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    (signer_info,) = signed["signer_infos"]
    certificates = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed["certificates"] or []]
    sid = signer_info["sid"].chosen
    (signer,) = [c for c in certificates + [ca_certificate]
                 if c.serial_number == sid["serial_number"].native
                 and c.issuer.public_bytes() == sid["issuer"].dump()][:1]
    if signer != ca_certificate and signer not in trusted:
        signer.verify_directly_issued_by(ca_certificate)
    raw_attributes = signer_info["signed_attrs"]
    assert raw_attributes, "a CertRep must carry authenticated attributes"
    attributes = {}
    for attribute in raw_attributes:
        oid = attribute["type"].dotted
        assert oid not in attributes, "attribute %s twice" % (oid,)
        (value,) = attribute["values"]
        attributes[oid] = core.load(value.dump())
    digest = signer_info["digest_algorithm"]["algorithm"].native
    signed_bytes = raw_attributes.dump()
    signed_bytes = b"\x31" + signed_bytes[1:]  # [0] IMPLICIT in the message, SET OF when signed
    signer.public_key().verify(signer_info["signature"].native, signed_bytes, rsa_padding.PKCS1v15(),
                               {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha512": hashes.SHA512()}[digest])
    content = signed["encap_content_info"]["content"]
    content = content.native if content else b""
    for oid in (CONTENT_TYPE, MESSAGE_DIGEST, MESSAGE_TYPE, TRANSACTION_ID, SENDER_NONCE, RECIPIENT_NONCE, PKI_STATUS):
        assert oid in attributes, "CertRep lacks the authenticated attribute %s that RFC 8894 requires" % (oid,)
    assert cms.ContentType.load(attributes[CONTENT_TYPE].dump()).native == "data"
    assert attributes[MESSAGE_DIGEST].native == hashlib.new(digest, content).digest()
    assert attributes[MESSAGE_TYPE].native == CERT_REP
    assert attributes[TRANSACTION_ID].native == transaction_id
    assert attributes[RECIPIENT_NONCE].native == sender_nonce
    assert len(attributes[SENDER_NONCE].native) >= 8
    status = STATUSES[attributes[PKI_STATUS].native]
    fail_info = None
    if status == "FAILURE":
        assert FAIL_INFO in attributes, "a FAILURE CertRep lacks failInfo"
        fail_info = attributes[FAIL_INFO].native
    found, cipher = [], None
    if status == "SUCCESS":
        inner, cipher = _open_envelope(content, key)
        degenerate = cms.ContentInfo.load(inner)["content"]
        found = [x509.load_der_x509_certificate(c.chosen.dump()) for c in degenerate["certificates"]]
        mine = key.public_key().public_numbers()
        found = [c for c in found if c.public_key().public_numbers() == mine] or found
    return CertRep(status, fail_info, found, {oid: value.native for oid, value in attributes.items()}, cipher)


# -- CMS, built and opened with asn1crypto and cryptography ---------------------------------------


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return certificate.issuer == certificate.subject


def _self_signed(key, subject: x509.Name) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


def _issuer_and_serial(certificate: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber({"issuer": parsed.issuer, "serial_number": parsed.serial_number})


def _envelope(plain: bytes, recipient: x509.Certificate, cipher: str) -> bytes:
    if cipher == "aes256_cbc":
        secret, iv = os.urandom(32), os.urandom(16)
        algorithm, block = algorithms.AES(secret), 128
    else:
        secret, iv = os.urandom(24), os.urandom(8)
        algorithm, block = TripleDES(secret), 64
    padder = padding.PKCS7(block).padder()
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    wrapped = recipient.public_key().encrypt(secret, rsa_padding.PKCS1v15())
    enveloped = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
            "version": "v0",
            "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(recipient)),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": wrapped,
        }))],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher, "parameters": iv},
            "encrypted_content": encrypted,
        },
    })
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _open_envelope(der: bytes, key) -> tuple[bytes, str]:
    """The plain content of an EnvelopedData and its cipher's name; its encrypted content may be BER, in constructed chunks
    (Go's pkcs7, which scepserver uses, writes it so), which asn1crypto does not read under an implicit tag."""
    (content_info,) = _ber_children(der)
    _, explicit = _ber_children(content_info[2])
    (enveloped_data,) = _ber_children(explicit[2])
    _, recipients, content = _ber_children(enveloped_data[2])
    (recipient,) = _ber_children(recipients[2])
    recipient = cms.KeyTransRecipientInfo.load(recipient[3])
    secret = key.decrypt(recipient["encrypted_key"].native, rsa_padding.PKCS1v15())
    _, algorithm, encrypted = _ber_children(content[2])
    algorithm = algos.EncryptionAlgorithm.load(algorithm[3])
    name = algorithm["algorithm"].native
    iv = algorithm["parameters"].native
    if name.startswith("aes"):
        cipher, block = algorithms.AES(secret), 128
    else:  # 3DES, or single DES (scepserver answers with it whatever it was sent): 3DES with K1 = K2 = K3 is DES
        cipher, block = TripleDES(secret * 3 if len(secret) == 8 else secret), 64
    decryptor = Cipher(cipher, modes.CBC(iv)).decryptor()
    padded = decryptor.update(_octets(encrypted)) + decryptor.finalize()
    unpadder = padding.PKCS7(block).unpadder()
    return unpadder.update(padded) + unpadder.finalize(), name


def _ber_children(data: bytes) -> list:
    """The elements one after another in ``data``, each ``(tag byte, constructed, contents, whole encoding)``;
    definite and indefinite lengths (single-byte tags: all CMS needs)."""
    found, position = [], 0
    while position < len(data) and data[position:position + 2] != b"\x00\x00":
        start, tag = position, data[position]
        size = data[position + 1]
        position += 2
        if size == 0x80:  # indefinite: contents run to the end-of-contents octets
            inner = _ber_children(data[position:])
            length = sum(len(child[3]) for child in inner)
            contents = data[position:position + length]
            position += length + 2
        else:
            if size & 0x80:
                count = size & 0x7F
                size = int.from_bytes(data[position:position + count], "big")
                position += count
            contents = data[position:position + size]
            position += size
        found.append((tag, bool(tag & 0x20), contents, data[start:position]))
    return found


def _octets(element) -> bytes:
    """An OCTET STRING's bytes, primitive or in constructed chunks."""
    tag, constructed, contents, _ = element
    if not constructed:
        return contents
    return b"".join(_octets(child) for child in _ber_children(contents))


def _signed_data(content: bytes, attributes, key, signer: x509.Certificate, digest: str) -> bytes:
    encoded = sorted(_Attribute({"type": oid, "values": [value]}).dump() for oid, value in attributes)
    signed_set = b"\x31" + _length(sum(map(len, encoded))) + b"".join(encoded)
    signature = key.sign(signed_set, rsa_padding.PKCS1v15(), {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[digest])
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value=_issuer_and_serial(signer)),
        "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest}),
        "signed_attrs": cms.CMSAttributes.load(signed_set),
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [algos.DigestAlgorithm({"algorithm": digest})],
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": [asn1_x509.Certificate.load(signer.public_bytes(serialization.Encoding.DER))],
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets
