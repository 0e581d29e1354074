"""The issuance policy on real CSRs: keys, the CA's own subject, extension requests, subjectAltNames.

The binding of a CSR to what a host profile rendered is in test_profile_binding.py.
"""

import functools
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from support.certs import csr, extension_der, name, raw_csr, self_signed, upn, weak_rsa_key
from scepproxyd.ca.csr_policy import KeyPolicy, Refusal, SanPolicy, refusal, same_name, shown
from scepproxyd.ca.issuer import CsrError, build_certificate
from scepproxyd.config import CertificateTemplate

CA_SUBJECT = name([(NameOID.COMMON_NAME, "scepproxyd CA")], [(NameOID.ORGANIZATION_NAME, "Example")])
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
MS_EXTENSION_REQUEST = "1.3.6.1.4.1.311.2.1.14"
EVERY_SAN = SanPolicy.from_patterns({"dns": ".*", "email": ".*", "uri": ".*", "ip": ".*", "upn": ".*"})


@functools.cache
def rsa_key(bits=2048, exponent=65537):
    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


@functools.cache
def ec_key(curve=ec.SECP256R1):
    return ec.generate_private_key(curve())


def judge(request, key_policy=KeyPolicy(), san_policy=SanPolicy(), ca_subject=CA_SUBJECT):
    return refusal(request, key_policy=key_policy, san_policy=san_policy, ca_subject=ca_subject, expected=None)


# -- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, reason", [
    (lambda: weak_rsa_key(512),
     "CSR key is RSA-512; the CA requires RSA keys of at least 2048 bits ([ca] key_rsa_min_bits)"),
    (lambda: rsa_key(1024),
     "CSR key is RSA-1024; the CA requires RSA keys of at least 2048 bits ([ca] key_rsa_min_bits)"),
    (lambda: rsa_key(2048, 3),
     "CSR RSA key has public exponent 3; the CA accepts 65537 ([ca] key_rsa_exponents)"),
    (lambda: ec_key(ec.SECP192R1),
     "CSR key is on curve secp192r1; the CA accepts secp256r1, secp384r1, secp521r1 ([ca] key_ec_curves)"),
    (lambda: ec_key(ec.SECP256K1),
     "CSR key is on curve secp256k1; the CA accepts secp256r1, secp384r1, secp521r1 ([ca] key_ec_curves)"),
    (ed25519.Ed25519PrivateKey.generate,
     "CSR key is Ed25519; the CA does not accept Ed25519 keys ([ca] key_allow_ed25519)"),
    (ed448.Ed448PrivateKey.generate, "CSR key is Ed448; the CA accepts RSA and EC keys"),
    (lambda: dsa.generate_private_key(2048), "CSR key is DSA-2048; the CA accepts RSA and EC keys"),
], ids=["rsa512", "rsa1024", "exponent3", "secp192r1", "secp256k1", "ed25519", "ed448", "dsa"])
def test_weak_or_unknown_keys_refused(key, reason):
    assert judge(csr(key(), "device")) == Refusal("badAlg", reason)


@pytest.mark.parametrize("key", [
    lambda: rsa_key(2048), lambda: rsa_key(3072), lambda: ec_key(ec.SECP256R1), lambda: ec_key(ec.SECP384R1),
    lambda: ec_key(ec.SECP521R1),
], ids=["rsa2048", "rsa3072", "p256", "p384", "p521"])
def test_good_keys_accepted(key):
    assert judge(csr(key(), "device")) is None


def test_key_policy_is_configurable():
    lenient = KeyPolicy(rsa_min_bits=1024, rsa_exponents=(65537, 3), ec_curves=("secp192r1",), allow_ed25519=True)
    assert judge(csr(rsa_key(1024), "old-printer"), lenient) is None
    assert judge(csr(rsa_key(2048, 3), "legacy"), lenient) is None
    assert judge(csr(ec_key(ec.SECP192R1), "tiny"), lenient) is None
    assert judge(csr(ed25519.Ed25519PrivateKey.generate(), "modern"), lenient) is None
    assert judge(csr(ec_key(), "p256"), lenient).reason == (
        "CSR key is on curve secp256r1; the CA accepts secp192r1 ([ca] key_ec_curves)")
    assert judge(csr(ec_key(), "p256"), KeyPolicy(ec_curves=())).reason == (
        "CSR key is on curve secp256r1; the CA accepts no EC keys ([ca] key_ec_curves)")
    assert judge(csr(rsa_key(2048), "d"), KeyPolicy(rsa_min_bits=3072)).reason.startswith("CSR key is RSA-2048;")


# -- the CA's own subject -----------------------------------------------------------------------


@pytest.mark.parametrize("subject", [
    CA_SUBJECT,
    name([(NameOID.COMMON_NAME, "SCEPPROXYD  ca")], [(NameOID.ORGANIZATION_NAME, " example ")]),
], ids=["same", "case-and-spaces"])
def test_ca_subject_refused(subject):
    assert judge(csr(rsa_key(), subject)) == Refusal(
        "badRequest", "CSR subject is the CA's own subject; a certificate with it would pass for the CA")


def test_other_subjects_are_not_the_ca():
    reordered = name([(NameOID.ORGANIZATION_NAME, "Example")], [(NameOID.COMMON_NAME, "scepproxyd CA")])
    assert not same_name(reordered, CA_SUBJECT)
    assert judge(csr(rsa_key(), reordered)) is None
    assert judge(csr(rsa_key(), "scepproxyd CA")) is None


# -- extension requests -------------------------------------------------------------------------


def test_two_subject_alt_name_extensions_refused():
    der = extension_der(x509.SubjectAlternativeName([x509.DNSName("a.example")]))
    request = raw_csr(rsa_key(), name([(NameOID.COMMON_NAME, "d")]), [(EXTENSION_REQUEST, [der, der])])
    assert judge(request, san_policy=EVERY_SAN) == Refusal(
        "badRequest", "CSR asks for the subjectAltName extension more than once")


@pytest.mark.parametrize("oids", [
    (EXTENSION_REQUEST, EXTENSION_REQUEST), (EXTENSION_REQUEST, MS_EXTENSION_REQUEST),
], ids=["pkcs9-twice", "pkcs9-and-microsoft"])
def test_two_extension_requests_refused(oids):
    """cryptography reads only the first one; the second must not slip past the policy unseen."""
    first = extension_der(x509.SubjectAlternativeName([x509.DNSName("a.example")]))
    second = extension_der(x509.SubjectAlternativeName([x509.DNSName("b.example")]))
    request = raw_csr(rsa_key(), name([(NameOID.COMMON_NAME, "d")]), [(oids[0], [first]), (oids[1], [second])])
    assert judge(request, san_policy=EVERY_SAN) == Refusal(
        "badRequest", "CSR carries 2 extension requests; at most one is allowed")


def test_microsoft_extension_request_is_read():
    der = extension_der(x509.SubjectAlternativeName([x509.DNSName("a.example")]))
    request = raw_csr(rsa_key(), name([(NameOID.COMMON_NAME, "d")]), [(MS_EXTENSION_REQUEST, [der])])
    assert judge(request).reason == (
        "CSR asks for subjectAltName dns 'a.example'; no dns names are issued ([ca] san_dns is not set)")
    assert judge(request, san_policy=EVERY_SAN) is None


def test_request_for_a_ca_certificate_refused():
    asks_ca = csr(rsa_key(), "sub-ca", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
    assert judge(asks_ca) == Refusal("badRequest", "CSR asks for a CA certificate (basicConstraints cA=true);"
                                                   " this CA issues end-entity certificates only")


def test_harmless_extension_requests_accepted():
    """Devices ask for key usage and CA:false; the template decides those, so they are ignored, not refused."""
    request = csr(rsa_key(), "device", extensions=[
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ])
    assert judge(request) is None


# -- subjectAltNames --------------------------------------------------------------------------------


SANS = {
    "wildcard-dns": (x509.DNSName("*.example.com"), "dns", "'*.example.com'"),
    "dns": (x509.DNSName("gw1.vpn.example.com"), "dns", "'gw1.vpn.example.com'"),
    "email": (x509.RFC822Name("ann@example.com"), "email", "'ann@example.com'"),
    "uri": (x509.UniformResourceIdentifier("https://evil.example/"), "uri", "'https://evil.example/'"),
    "ip": (x509.IPAddress(ipaddress.ip_address("10.20.0.7")), "ip", "'10.20.0.7'"),
    "ipv6": (x509.IPAddress(ipaddress.ip_address("fd00::7")), "ip", "'fd00::7'"),
    "upn": (upn("administrator@corp.example"), "upn", "'administrator@corp.example'"),
}


@pytest.mark.parametrize("case", SANS, ids=list(SANS))
def test_every_san_refused_by_default(case):
    general_name, san_type, value = SANS[case]
    assert judge(csr(rsa_key(), "device", [general_name])) == Refusal(
        "badRequest",
        "CSR asks for subjectAltName %s %s; no %s names are issued ([ca] san_%s is not set)"
        % (san_type, value, san_type, san_type),
    )


@pytest.mark.parametrize("case", SANS, ids=list(SANS))
def test_every_san_allowed_when_configured(case):
    general_name, san_type, _ = SANS[case]
    assert judge(csr(rsa_key(), "device", [general_name]), san_policy=EVERY_SAN) is None


def test_san_pattern_must_match_the_whole_name():
    vpn = SanPolicy.from_patterns({"dns": r"[a-z0-9-]+\.vpn\.example\.com", "ip": r"10\.20\.[0-9]+\.[0-9]+"},
                                  section="template.vpn")
    assert judge(csr(rsa_key(), "gw", [x509.DNSName("GW1.vpn.example.com"),
                                       x509.IPAddress(ipaddress.ip_address("10.20.0.7"))]), san_policy=vpn) is None
    for general_name, reason in [
        (x509.DNSName("*.vpn.example.com"),
         "CSR asks for subjectAltName dns '*.vpn.example.com', which [template.vpn] san_dns does not allow"),
        (x509.DNSName("gw1.vpn.example.com.evil.net"),
         "CSR asks for subjectAltName dns 'gw1.vpn.example.com.evil.net', which [template.vpn] san_dns does not allow"),
        (x509.IPAddress(ipaddress.ip_address("10.21.0.7")),
         "CSR asks for subjectAltName ip '10.21.0.7', which [template.vpn] san_ip does not allow"),
        (x509.RFC822Name("gw@vpn.example.com"),
         "CSR asks for subjectAltName email 'gw@vpn.example.com'; no email names are issued"
         " ([template.vpn] san_email is not set)"),
    ]:
        assert judge(csr(rsa_key(), "gw", [x509.DNSName("gw1.vpn.example.com"), general_name]),
                     san_policy=vpn) == Refusal("badRequest", reason)


@pytest.mark.parametrize("general_name, described", [
    (x509.DirectoryName(name([(NameOID.COMMON_NAME, "root")])), "a directoryName"),
    (x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")), "a registeredID"),
    (x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.9"), b"\x0c\x03bob"), "an otherName (1.3.6.1.5.5.7.8.9)"),
    (x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x16\x03bob"), "a UPN that is not a UTF8String"),
    (x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), "an IP network"),
], ids=["dirname", "registered-id", "other-name", "upn-ia5", "ip-network"])
def test_unissuable_san_types_refused_whatever_the_policy(general_name, described):
    assert judge(csr(rsa_key(), "device", [general_name]), san_policy=EVERY_SAN) == Refusal(
        "badRequest",
        "CSR asks for %s subjectAltName; only dns, email, uri, ip, upn names can be issued" % (described,))


def test_device_text_in_reasons_is_escaped_and_cut():
    assert shown("a\nb\x1b[31m") == "'a\\x0ab\\x1b[31m'"
    assert shown("x" * 200) == "'" + "x" * 80 + "...'"
    long_name = x509.DNSName("a" * 70 + ".example.com\n\x1b[2J")
    reason = judge(csr(rsa_key(), "device", [long_name])).reason
    assert reason == "CSR asks for subjectAltName dns '%s'; no dns names are issued ([ca] san_dns is not set)" % (
        "a" * 70 + ".example.c...",)
    short = judge(csr(rsa_key(), "device", [x509.DNSName("a.example\n\x1b[2J")])).reason
    assert "'a.example\\x0a\\x1b[2J'" in short and "\n" not in short and "\x1b" not in short


# -- the issuer copies only what passed --------------------------------------------------------------


@functools.cache
def ca():
    return self_signed("scepproxyd CA")


def build(request):
    ca_certificate, ca_key = ca()
    template = CertificateTemplate("default", 86400.0, ("digital_signature",), ("client_auth",))
    return build_certificate(request, ca_key, ca_certificate, template, "http://x/scep/crl", 1_700_000_000.0)


def test_issuer_refuses_the_ca_subject_even_without_the_policy():
    with pytest.raises(CsrError, match="CA's own subject"):
        build(csr(rsa_key(), "SCEPproxyd CA"))


def test_issuer_refuses_names_never_issued_even_without_the_policy():
    with pytest.raises(CsrError, match="a directoryName subjectAltName"):
        build(csr(rsa_key(), "d", [x509.DirectoryName(name([(NameOID.COMMON_NAME, "root")]))]))
    der = extension_der(x509.SubjectAlternativeName([x509.DNSName("a.example")]))
    with pytest.raises(CsrError, match="more than once"):
        build(raw_csr(rsa_key(), name([(NameOID.COMMON_NAME, "d")]), [(EXTENSION_REQUEST, [der, der])]))


def test_issuer_copies_allowed_names_and_nothing_else():
    request = csr(rsa_key(), "gw", [x509.DNSName("gw.example"), upn("gw@corp.example")], extensions=[
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.NameConstraints(permitted_subtrees=[x509.DNSName("example")], excluded_subtrees=None), True),
    ])
    issued = build(request)
    assert issued.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        issued.extensions.get_extension_for_class(x509.NameConstraints)
    assert list(issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.DNSName("gw.example"), upn("gw@corp.example")]
