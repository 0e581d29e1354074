"""The built-in CA in process, for the tests that drive it without the daemon: its material
(made once per session), a policy, the templates, and a Device made of the codec's client side."""

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.internet import defer

from scepproxyd.ca.authority import ScepCA
from scepproxyd.ca.csr_policy import SanPolicy
from scepproxyd.ca.material import CaMaterial, create_ca, create_ra
from scepproxyd.ca.policy import Policy
from scepproxyd.config import CertificateTemplate
from scepproxyd.scep import codec

from support.certs import self_signed

DAY = 86400.0
STATIC = "static-challenge-0123456789abcdef"
TEMPLATES = {
    # The default template may carry DNS names under .example; "wifi" carries no subjectAltName (the default).
    "default": CertificateTemplate("default", 365 * DAY, ("digital_signature", "key_encipherment"), ("client_auth",),
                                   SanPolicy.from_patterns({"dns": r"[a-z0-9-]+\.example"})),
    "wifi": CertificateTemplate("wifi", 30 * DAY, ("digital_signature",), ("client_auth", "server_auth")),
}
_CA_CACHE = {}


def ca_material(ra=False) -> CaMaterial:
    """One CA (and RA) per test session: RSA key generation is the slow part."""
    if "ca" not in _CA_CACHE:
        _CA_CACHE["ca"] = create_ca("CN=Test Builtin CA,O=scepproxyd tests", 2048, 3650 * DAY)
    key, cert = _CA_CACHE["ca"]
    if not ra:
        return CaMaterial(key, cert)
    if "ra" not in _CA_CACHE:
        _CA_CACHE["ra"] = create_ra(key, cert)
    return CaMaterial(key, cert, *_CA_CACHE["ra"])


def policy(**changes) -> Policy:
    values = dict(
        static_challenge=STATIC, static_enabled=True, auto_approve=True, auto_approve_subject=".*",
        auto_approve_networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        allow_renew_days=14, default_template="default",
    )
    values.update(changes)
    return Policy(**values)


def in_line(function, *args, **kwargs):
    return defer.maybeDeferred(function, *args, **kwargs)


def make_ca(store, clock, ra=False, material=None, **policy_changes) -> ScepCA:
    """A ScepCA on ``store``; ``material`` another's key material (a second node of the same CA)."""
    return ScepCA(store, material or ca_material(ra), policy(**policy_changes), TEMPLATES, "http://ca.test:8080",
                  7 * DAY, clock, run_in_thread=in_line)


class Device:
    """A SCEP client made of the codec's client side: a key, a self-signed cert, requests."""

    def __init__(self, cn="device-1", key=None):
        self.cert, self.key = self_signed(cn, key=key or rsa.generate_private_key(public_exponent=65537,
                                                                                   key_size=2048))
        self.cn = cn

    def csr(self, challenge=STATIC, cn=None, san=None, key=None, subject=None):
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or self.cn)])
        )
        if challenge is not None:
            builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(key or self.key, hashes.SHA256())

    def request(self, ca: ScepCA, message_type="PKCSReq", signer=None, **kwargs) -> bytes:
        cert, key = signer or (self.cert, self.key)
        der, _ = codec.build_request(
            message_type=message_type, signer_key=key, signer_certificate=cert,
            recipient_certificate=ca.material.message_certificate, **kwargs,
        )
        return der

    def read(self, ca: ScepCA, answer, signer=None):
        cert, key = signer or (self.cert, self.key)
        assert answer.status == 200, answer.body
        return codec.read_response(answer.body, key, cert, ca.material.certificate)
