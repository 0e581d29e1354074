"""Whether a CSR may be signed: the key and SAN policies, and the binding to a host profile.

Pure functions on the CSR and plain values, so the built-in CA and the
proxy in RA mode judge a request the same way and every rule is tested
without a network or a database. A refusal carries the RFC 8894 failInfo
name and one line that is written to the log, kept as the host profile's
detail and sent to the device as failInfoText: it names what differs and
never a secret (subjects and names are not secret; a challenge never
appears in a CSR's subject or names, and this module never reads the
challengePassword).

The certificate takes from the CSR only its subject, public key and
subjectAltName (see issuer.py); every other extension request is ignored,
except a request for a CA certificate, which is refused so the device hears
why instead of receiving something else.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import attrs
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from scepproxyd.profiles.binding import ATTRIBUTE_NAMES, SAN_TYPES, ExpectedRequest

BAD_ALG = "badAlg"
BAD_REQUEST = "badRequest"
UPN_OID = "1.3.6.1.4.1.311.20.2.3"
#: PKCS#9 extensionRequest and Microsoft's older spelling; cryptography reads either.
EXTENSION_REQUEST_OIDS = ("1.2.840.113549.1.9.14", "1.3.6.1.4.1.311.2.1.14")
#: Curve names as cryptography spells them; what ``key_ec_curves`` may list.
EC_CURVES = (
    "secp192r1", "secp224r1", "secp256r1", "secp384r1", "secp521r1", "secp256k1",
    "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1",
)
CA_SUBJECT = "CSR subject is the CA's own subject; a certificate with it would pass for the CA"
# RSA modulus sizes of the same strength as an elliptic curve of a size (NIST SP 800-57 part 1).
_RSA_EQUIVALENT = {192: 1024, 224: 2048, 256: 3072, 384: 7680, 512: 15360, 521: 15360}
_EXTENSION_NAMES = {
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string: "subjectAltName",
    ExtensionOID.BASIC_CONSTRAINTS.dotted_string: "basicConstraints",
    ExtensionOID.KEY_USAGE.dotted_string: "keyUsage",
    ExtensionOID.EXTENDED_KEY_USAGE.dotted_string: "extendedKeyUsage",
}
_SHOWN_LENGTH = 80


@attrs.frozen
class KeyPolicy:
    """Which public keys the CA signs, whatever the profile says."""

    rsa_min_bits: int = 2048
    rsa_exponents: tuple = (65537,)
    ec_curves: tuple = ("secp256r1", "secp384r1", "secp521r1")
    allow_ed25519: bool = False


@attrs.frozen
class SanPolicy:
    """
    The subjectAltNames a certificate template may carry.

    ``allowed`` holds (SAN type, compiled pattern) pairs; a name is allowed
    when a pattern of its type matches all of it. Empty (the default): no
    certificate carries a subjectAltName. ``section`` is the config section
    the patterns came from, for messages.
    """

    allowed: tuple = ()
    section: str = "ca"

    @classmethod
    def from_patterns(cls, patterns: dict, section: str = "ca") -> "SanPolicy":
        """From ``{"dns": r"[a-z0-9-]+\\.example\\.com", ...}``; DNS patterns ignore case."""
        allowed = []
        for san_type in SAN_TYPES:
            pattern = patterns.get(san_type)
            if pattern is not None:
                allowed.append((san_type, re.compile(pattern, re.IGNORECASE if san_type == "dns" else 0)))
        return cls(tuple(allowed), section)

    def pattern_for(self, san_type: str):
        for allowed_type, pattern in self.allowed:
            if allowed_type == san_type:
                return pattern
        return None


@attrs.frozen
class Refusal:
    """Why a CSR is not signed: RFC 8894 failInfo name and one line for log, admin and device."""

    fail_info: str
    reason: str
    #: Which rule refused it, a metric label: extensions, key, ca_subject, subject, san (or profile).
    check: str = attrs.field(default="policy", eq=False)


class Refused(Exception):
    """Raised by the checks below; carries the L{Refusal}."""

    def __init__(self, fail_info: str, reason: str):
        super().__init__(reason)
        self.fail_info = fail_info
        self.reason = reason


def refusal(
    csr: x509.CertificateSigningRequest,
    *,
    key_policy: KeyPolicy,
    san_policy: SanPolicy | None,
    ca_subject: x509.Name,
    expected: ExpectedRequest | None,
) -> Refusal | None:
    """
    Why ``csr`` may not be signed, or None when it may.

    ``expected`` is what the host profile whose one-time challenge the
    request spent renders for its host (L{scepproxyd.profiles.binding.expected_request});
    None for a request with no host profile (the static challenge, a
    challenge an admin minted), which the key and SAN policies alone judge.
    The CSR's own signature is checked elsewhere (issuer.check_csr).
    ``san_policy`` None (RA mode, with ``expected``) allows exactly the
    subjectAltNames the profile renders.
    """
    check = "extensions"
    try:
        extensions = requested_extensions(csr)
        check = "key"
        key = _public_key(csr)
        _check_key(key, key_policy)
        if expected is not None:
            _check_profile_key(key, expected)
        check = "ca_subject"
        if same_name(csr.subject, ca_subject):
            raise Refused(BAD_REQUEST, CA_SUBJECT)
        check = "subject"
        if expected is not None:
            _check_subject(csr.subject, expected.subject)
        check = "extensions"
        _check_basic_constraints(extensions)
        check = "san"
        _check_sans(requested_sans(extensions), san_policy, expected)
    except Refused as refused:
        return Refusal(refused.fail_info, refused.reason, check)
    return None


# -- reading the CSR -------------------------------------------------------------------


def requested_extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    """The CSR's extension requests; refused when unreadable, repeated or given twice."""
    try:
        count = sum(1 for a in csr.attributes if a.oid.dotted_string in EXTENSION_REQUEST_OIDS)
    except Exception:  # cryptography reports malformed attributes through assorted types
        raise Refused(BAD_REQUEST, "CSR attributes cannot be read") from None
    if count > 1:
        raise Refused(BAD_REQUEST, "CSR carries %d extension requests; at most one is allowed" % (count,))
    try:
        return csr.extensions
    except x509.DuplicateExtension as e:
        name = _EXTENSION_NAMES.get(e.oid.dotted_string, e.oid.dotted_string)
        raise Refused(BAD_REQUEST, "CSR asks for the %s extension more than once" % (name,)) from None
    except Exception:
        raise Refused(BAD_REQUEST, "CSR extension requests cannot be read") from None


def requested_sans(extensions: x509.Extensions) -> list[tuple[str, str]]:
    """(SAN type, value) for each subjectAltName asked for; refused for types the CA never issues."""
    sans = []
    for extension in extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            sans.extend(san_entry(name) for name in extension.value)
    return sans


def san_entry(name: x509.GeneralName) -> tuple[str, str]:
    """One subjectAltName as (type, text); raises L{Refused} for a type outside L{SAN_TYPES}."""
    if isinstance(name, x509.DNSName):
        return "dns", name.value
    if isinstance(name, x509.RFC822Name):
        return "email", name.value
    if isinstance(name, x509.UniformResourceIdentifier):
        return "uri", name.value
    if isinstance(name, x509.IPAddress):
        if isinstance(name.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return "ip", str(name.value)
        described = "an IP network"
    elif isinstance(name, x509.OtherName) and name.type_id.dotted_string == UPN_OID:
        try:
            upn = core.load(name.value, strict=True)
        except ValueError:
            upn = None
        if isinstance(upn, core.UTF8String):
            return "upn", upn.native
        described = "a UPN that is not a UTF8String"
    elif isinstance(name, x509.OtherName):
        described = "an otherName (%s)" % (name.type_id.dotted_string,)
    elif isinstance(name, x509.DirectoryName):
        described = "a directoryName"
    elif isinstance(name, x509.RegisteredID):
        described = "a registeredID"
    else:
        described = "a %s" % (type(name).__name__,)
    raise Refused(
        BAD_REQUEST,
        "CSR asks for %s subjectAltName; only %s names can be issued" % (described, ", ".join(SAN_TYPES)),
    )


def same_name(a: x509.Name, b: x509.Name) -> bool:
    """Names equal as certificate path building compares them: case and runs of spaces ignored."""
    return _normalised(a) == _normalised(b)


def _normalised(name: x509.Name) -> list:
    def value(v):
        return " ".join(v.casefold().split()) if isinstance(v, str) else v

    return [sorted((a.oid.dotted_string, repr(value(a.value))) for a in rdn) for rdn in name.rdns]


def shown(value: str) -> str:
    """A device-supplied value quoted for a one-line message: escaped, and cut when long."""
    text = "".join(c if c.isprintable() else "\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c)
                   for c in value[: _SHOWN_LENGTH + 1])
    if len(value) > _SHOWN_LENGTH:
        text = text[:_SHOWN_LENGTH] + "..."
    return "'%s'" % (text,)


# -- the key -----------------------------------------------------------------------------


def _public_key(csr):
    try:
        return csr.public_key()
    except Exception:  # an algorithm cryptography cannot load
        raise Refused(BAD_ALG, "CSR key type is not supported") from None


def describe_key(key) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA-%d" % (key.key_size,)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC %s" % (key.curve.name,)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA-%d" % (key.key_size,)
    return type(key).__name__


def _check_key(key, policy: KeyPolicy) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < policy.rsa_min_bits:
            raise Refused(BAD_ALG, "CSR key is %s; the CA requires RSA keys of at least %d bits ([ca] key_rsa_min_bits)"
                          % (describe_key(key), policy.rsa_min_bits))
        exponent = key.public_numbers().e
        if exponent not in policy.rsa_exponents:
            raise Refused(BAD_ALG, "CSR RSA key has public exponent %d; the CA accepts %s ([ca] key_rsa_exponents)"
                          % (exponent, ", ".join(str(e) for e in policy.rsa_exponents)))
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in policy.ec_curves:
            accepted = ", ".join(policy.ec_curves) if policy.ec_curves else "no EC keys"
            raise Refused(BAD_ALG, "CSR key is on curve %s; the CA accepts %s ([ca] key_ec_curves)"
                          % (key.curve.name, accepted))
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        if not policy.allow_ed25519:
            raise Refused(BAD_ALG, "CSR key is Ed25519; the CA does not accept Ed25519 keys ([ca] key_allow_ed25519)")
        return
    raise Refused(BAD_ALG, "CSR key is %s; the CA accepts RSA and EC keys" % (describe_key(key),))


def _strength(key) -> int:
    """The key's size in RSA-modulus bits of the same strength."""
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _RSA_EQUIVALENT.get(key.curve.key_size, 0)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return 3072
    return 0


def _check_profile_key(key, expected: ExpectedRequest) -> None:
    """At least the key the profile asks for: same type when it names one, and no smaller."""
    is_rsa = isinstance(key, rsa.RSAPublicKey)
    is_ec = isinstance(key, ec.EllipticCurvePublicKey)
    if expected.key_type == "rsa" and not is_rsa:
        raise Refused(BAD_ALG, "CSR key is %s but the profile asks for an RSA key" % (describe_key(key),))
    if expected.key_type == "ec" and not is_ec:
        raise Refused(BAD_ALG, "CSR key is %s but the profile asks for an EC key" % (describe_key(key),))
    wanted = expected.min_key_bits
    if wanted is None:
        return
    if expected.key_type == "ec":
        enough = key.curve.key_size >= wanted
    elif expected.key_type == "rsa":
        enough = key.key_size >= wanted
    else:  # a size without a type is an RSA size (Apple's default key type)
        enough = _strength(key) >= wanted
    if not enough:
        raise Refused(BAD_ALG, "CSR key is %s but the profile asks for at least %d bits" % (describe_key(key), wanted))


# -- subject ---------------------------------------------------------------------------------


def _name_of(oid: str) -> str:
    return ATTRIBUTE_NAMES.get(oid, oid)


def _rdn_label(oids) -> str:
    return "+".join(sorted(_name_of(oid) for oid in oids))


def _check_subject(subject: x509.Name, expected_rdns: tuple) -> None:
    """The same attributes in the same RDNs and order as the profile renders, each value matched."""
    actual = []
    for rdn in subject.rdns:
        attributes = []
        for attribute in rdn:
            oid = attribute.oid.dotted_string
            if not isinstance(attribute.value, str):
                raise Refused(BAD_REQUEST, "subject %s is not text" % (_name_of(oid),))
            attributes.append((oid, attribute.value))
        actual.append(attributes)
    actual_shape = [tuple(sorted(oid for oid, _ in rdn)) for rdn in actual]
    expected_shape = [tuple(sorted(oid for oid, _ in rdn)) for rdn in expected_rdns]
    if actual_shape != expected_shape:
        raise Refused(BAD_REQUEST, _shape_difference(actual_shape, expected_shape))
    for rdn, wanted in zip(actual, expected_rdns):
        candidates = [[j for j, (w_oid, m) in enumerate(wanted) if w_oid == oid and m.matches(value)]
                      for oid, value in rdn]
        unmatched = _unmatched(candidates)
        if unmatched is not None:
            oid, value = rdn[unmatched]
            renders = [m.describe() for w_oid, m in wanted if w_oid == oid]
            raise Refused(BAD_REQUEST, "subject %s %s is not what the profile renders (%s)" % (
                _name_of(oid), shown(value), " or ".join(renders)))


def _shape_difference(actual: list, expected: list) -> str:
    have = Counter(oid for rdn in actual for oid in rdn)
    want = Counter(oid for rdn in expected for oid in rdn)
    missing = sorted((want - have).elements(), key=lambda o: (_name_of(o), o))
    extra = sorted((have - want).elements(), key=lambda o: (_name_of(o), o))
    problems = []
    if missing:
        problems.append("subject lacks %s, which the profile renders" % (", ".join(map(_name_of, missing)),))
    if extra:
        problems.append("subject has %s, which the profile does not render" % (", ".join(map(_name_of, extra)),))
    if problems:
        return "; ".join(problems)
    return "subject attributes are in the order %s; the profile renders %s" % (
        ", ".join(map(_rdn_label, actual)), ", ".join(map(_rdn_label, expected)))


def _unmatched(candidates: list[list[int]]) -> int | None:
    """
    Pair each item with a distinct candidate slot (bipartite matching).

    ``candidates[i]`` lists the slots item i may take. Returns the index of
    an item left without a slot, or None when every item has one. Sizes are
    those of an RDN or a SAN list, so the simple augmenting-path search is enough.
    """
    taken: dict[int, int] = {}

    def place(item: int, seen: set[int]) -> bool:
        for slot in candidates[item]:
            if slot in seen:
                continue
            seen.add(slot)
            if slot not in taken or place(taken[slot], seen):
                taken[slot] = item
                return True
        return False

    for item in range(len(candidates)):
        if not place(item, set()):
            return item
    return None


# -- extensions and subjectAltNames -----------------------------------------------------------


def _check_basic_constraints(extensions: x509.Extensions) -> None:
    for extension in extensions:
        if isinstance(extension.value, x509.BasicConstraints) and extension.value.ca:
            raise Refused(BAD_REQUEST, "CSR asks for a CA certificate (basicConstraints cA=true);"
                                       " this CA issues end-entity certificates only")


def _refuse_missing_san(sans: list[tuple[str, str]], expected: ExpectedRequest) -> None:
    """Every CSR name found its own rendered one, but some rendered name is left over: say which."""
    for san_type, wanted in expected.sans:
        if not any(t == san_type and wanted.matches(value) for t, value in sans):
            raise Refused(BAD_REQUEST, "CSR lacks subjectAltName %s %s, which the profile renders"
                          % (san_type, wanted.describe()))
    raise Refused(BAD_REQUEST, "CSR asks for %d subjectAltNames; the profile renders %d"
                  % (len(sans), len(expected.sans)))


def _check_sans(sans: list[tuple[str, str]], policy: SanPolicy | None, expected: ExpectedRequest | None) -> None:
    if expected is not None:
        candidates = []
        for san_type, value in sans:
            slots = [j for j, (t, m) in enumerate(expected.sans) if t == san_type and m.matches(value)]
            if not slots:
                raise Refused(BAD_REQUEST, "CSR asks for subjectAltName %s %s, which the profile does not render"
                              % (san_type, shown(value)))
            candidates.append(slots)
        unmatched = _unmatched(candidates)
        if unmatched is not None:
            san_type, value = sans[unmatched]
            raise Refused(BAD_REQUEST, "CSR asks for more subjectAltNames like %s %s than the profile renders"
                          % (san_type, shown(value)))
        if expected.all_sans and len(sans) < len(expected.sans):
            _refuse_missing_san(sans, expected)
    if policy is None:
        return  # RA mode: the upstream CA's own policy applies after the profile's
    for san_type, value in sans:
        pattern = policy.pattern_for(san_type)
        where = "[%s] san_%s" % (policy.section, san_type)
        if pattern is None:
            raise Refused(BAD_REQUEST, "CSR asks for subjectAltName %s %s; no %s names are issued (%s is not set)"
                          % (san_type, shown(value), san_type, where))
        if pattern.fullmatch(value) is None:
            raise Refused(BAD_REQUEST, "CSR asks for subjectAltName %s %s, which %s does not allow"
                          % (san_type, shown(value), where))
