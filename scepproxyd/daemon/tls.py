"""TLS both ways: serving HTTPS from PEM files, and verifying upstream CAs.

Serving wraps the site's factory in TLS, so the same code covers a port we
bind and a socket systemd hands us. Upstream connections are verified
against the system trust store by default (hostname checked with
service-identity), or against a CA's own trust bundle, or, when an admin
explicitly opted out for that CA, not at all (with a warning in the log).
"""

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from scepproxyd.daemon.logs import get_logger

log = get_logger(__name__)


class TLSConfigError(ValueError):
    """A certificate, key or bundle cannot be used; ``str()`` says which and why."""


def load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TLSConfigError("%s holds no PEM certificate (%s)" % (what, e)) from None
    if not certificates:
        raise TLSConfigError("%s holds no PEM certificate" % (what,))
    return certificates


def server_context(certificate_path, key_path, chain_path=None) -> ssl.CertificateOptions:
    """CertificateOptions for serving HTTPS: certificate, key, optional intermediate chain."""
    try:
        certificate = load_certificates(certificate_path.read_bytes(), str(certificate_path))[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        chain = load_certificates(chain_path.read_bytes(), str(chain_path)) if chain_path else []
    except OSError as e:
        raise TLSConfigError("cannot read %s: %s" % (e.filename, e.strerror)) from None
    except (ValueError, TypeError) as e:
        raise TLSConfigError("%s is not an unencrypted PEM private key (%s)" % (key_path, e)) from None
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():
        raise TLSConfigError("%s does not match the key in %s" % (certificate_path, key_path))
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(certificate),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def wrap_tls(factory, context: ssl.CertificateOptions):
    return TLSMemoryBIOFactory(context, False, factory)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """A client connection creator that checks nothing: only for CAs an admin opted out for."""

    def __init__(self, hostname: str):
        self._hostname = hostname
        self._context = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tls_protocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


@implementer(IPolicyForHTTPS)
class UpstreamTrust:
    """Per-CA TLS policy for the upstream HTTP client, keyed by host and port.

    ``configure`` is called with the CA rows at start, after every admin
    change and on SIGHUP, so a new trust bundle applies without a restart.
    """

    def __init__(self):
        self._by_netloc: dict[tuple[str, int], tuple[str, object]] = {}

    def configure(self, cas) -> None:
        from urllib.parse import urlsplit

        table = {}
        for ca in cas:
            parts = urlsplit(ca.url)
            if parts.scheme != "https" or not parts.hostname:
                continue
            netloc = (parts.hostname.lower(), parts.port or 443)
            if not getattr(ca, "tls_verify", True):
                log.warn("TLS verification is OFF for CA {ca} at {url} (an admin opted out)", ca=ca.name, url=ca.url)
                table[netloc] = ("insecure", None)
            elif getattr(ca, "tls_trust_bundle", None):
                roots = [ssl.Certificate(crypto.X509.from_cryptography(c))
                         for c in load_certificates(ca.tls_trust_bundle.encode(), "trust bundle of CA %s" % ca.name)]
                table[netloc] = ("bundle", ssl.trustRootFromCertificates(roots))
        self._by_netloc = table

    def creatorForNetloc(self, hostname: bytes, port: int):
        name = hostname.decode("idna")
        kind, roots = self._by_netloc.get((name.lower(), port), ("system", None))
        if kind == "insecure":
            return _Unverified(name)
        if kind == "bundle":
            return ssl.optionsForClientTLS(name, trustRoot=roots)
        return ssl.optionsForClientTLS(name)
