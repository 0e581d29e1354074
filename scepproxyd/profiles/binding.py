"""What a stored profile asks one host's device to put in its certificate request.

The CA (and, in RA mode, the proxy) compares a CSR with this, so a one-time
challenge bound to a host profile buys exactly the certificate that profile
rendered for that host: its subject, in its order, and no name it did not
render. Pure functions on the stored profile's bytes and plain host facts.

Text in a profile becomes a L{Matcher}:

- the renewal ID variable is filled in with the host profile's renewal ID,
  and each host variable with the host's value now,
  exactly (a host without that value has no certificate to expect: the
  request is refused, naming the variable); a secret never appears here
  (the upload rules keep secrets out of subjects and names);
- ``%SerialNumber%`` must be the host's serial when the daemon knows it
  (compared ignoring case), and is free text otherwise;
- ``%HardwareUUID%``, ``%UDID%`` and every other ``%Name%`` are free text:
  one or more characters, none of them a separator of the place they sit in
  (see ``_FREE``), with the literal text around them required exactly.

The host UUID is deliberately not assumed to be the device's hardware UUID
or UDID: it is whatever name the admin or MDM gave the host (Fleet uses the
hardware UUID on macOS, an import need not), and it is written in the proxy
URL the device was given, so requiring it would refuse honest devices
without telling a device that holds the one-time challenge anything it does
not already know. The serial is not in the URL, so checking it does add
something.
"""

from __future__ import annotations

import re

import attrs

from scepproxyd.profiles import android, android_sans, mobileconfig, syncml, variables
from scepproxyd.profiles.model import ANDROID_TEMPLATE, MOBILECONFIG, WINDOWS_SYNCML, EndUser, ProfileError

#: subjectAltName types a profile can render and the CA can check.
SAN_TYPES = ("dns", "email", "uri", "ip", "upn")

#: Subject attribute types by the names profiles use (case-insensitive), as dotted OIDs.
ATTRIBUTE_TYPES = {
    "CN": "2.5.4.3",
    "SN": "2.5.4.4",
    "SURNAME": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "S": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "T": "2.5.4.12",
    "TITLE": "2.5.4.12",
    "GN": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "DNQUALIFIER": "2.5.4.46",
    "E": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
}
#: How messages name an attribute type: the short name, or the dotted OID.
ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C", "2.5.4.7": "L",
    "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.12": "title",
    "2.5.4.42": "GN", "2.5.4.46": "dnQualifier", "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
}
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")

# Apple's SubjectAltName keys (compared ignoring case) and the SAN type each renders.
_APPLE_SANS = {
    "dnsname": "dns",
    "rfc822name": "email",
    "uniformresourceidentifier": "uri",
    "ntprincipalname": "upn",
}
_APPLE_KEY_TYPES = {"RSA": "rsa", "ECSECPRIMERANDOM": "ec", "EC": "ec"}


def _hostname_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_.")


# What a free placeholder may stand for, by where it sits: any character but
# those that separate or quote parts of such a value (and never a control
# character). A DNS placeholder is host-name characters only, so never "*".
_FREE = {
    "subject": lambda c: c.isprintable() and c not in ',+=\\"<>;',
    "dns": _hostname_char,
    "email": lambda c: c.isprintable() and not c.isspace() and c not in '@<>,;"\\',
    "uri": lambda c: c.isprintable() and not c.isspace() and c not in "/?#@:",
    "upn": lambda c: c.isprintable() and not c.isspace() and c != "@",
    "ip": lambda c: c.isascii() and (c.isalnum() or c in ".:"),
}


@attrs.frozen
class HostFacts:
    """What the daemon knows about the host a request is bound to."""

    uuid: str
    serial: str | None
    platform: str
    #: The host's end user, whose IdP attributes the end-user variables render.
    end_user: EndUser | None = None

    def values(self) -> dict[str, str | None]:
        """What each host variable renders to for this host (None: no value)."""
        return variables.host_values(self.uuid, self.serial, self.platform, self.end_user)


#: A host with a value for every host variable: what a profile is checked against at upload.
UPLOAD_CHECK_END_USER = EndUser("user@example.com", "User", ("group",), "department", "user@example.com")


@attrs.frozen
class _Literal:
    text: str

    def advance(self, value: str, positions: set[int]) -> set[int]:
        return {p + len(self.text) for p in positions if value.startswith(self.text, p)}


@attrs.frozen
class _Known:
    """A device placeholder whose value the daemon knows (the serial); case is ignored."""

    name: str
    value: str

    def advance(self, value: str, positions: set[int]) -> set[int]:
        size = len(self.value)
        wanted = self.value.upper()
        return {p + size for p in positions if value[p : p + size].upper() == wanted}


@attrs.frozen
class _Free:
    """A device placeholder standing for one or more characters that ``allowed`` accepts."""

    name: str
    context: str

    def advance(self, value: str, positions: set[int]) -> set[int]:
        allowed = _FREE[self.context]
        reached: set[int] = set()
        covered = -1  # every end up to here is reached already
        for start in sorted(positions):
            # Ends up to ``covered`` were reached from an earlier start whose
            # run of allowed characters went through this one.
            end = max(start, covered)
            while end < len(value) and allowed(value[end]):
                end += 1
                reached.add(end)
            covered = max(covered, end)
        return reached


@attrs.frozen
class Matcher:
    """One value a profile renders, with the device's placeholders still in it.

    ``matches`` runs in time proportional to the value's length times the
    number of parts, whatever a device sends (no backtracking).
    """

    template: str
    parts: tuple
    serial: str | None = None

    def matches(self, value: str) -> bool:
        positions = {0}
        for part in self.parts:
            positions = part.advance(value, positions)
            if not positions:
                return False
        return len(value) in positions

    def describe(self) -> str:
        """The value as the profile renders it, quoted, for messages; says what %SerialNumber% must be."""
        if self.serial is None:
            return "'%s'" % (self.template,)
        return "'%s' with %%%s%% = '%s'" % (self.template, variables.SERIAL_NUMBER, self.serial)


@attrs.frozen
class ExpectedRequest:
    """What a device enrolling with one host profile asks for."""

    #: RDNs in encoding order (first RDN first), each a tuple of (dotted OID, Matcher).
    subject: tuple
    #: (SAN type, Matcher) pairs the profile renders; the type is one of L{SAN_TYPES}.
    sans: tuple
    #: "rsa", "ec", or None when the profile does not say.
    key_type: str | None
    min_key_bits: int | None
    #: Whether the CSR must ask for every name in ``sans`` too (Android templates: the agent is
    #: given the names and writes each, so a CSR short of one is a broken request, not a choice).
    all_sans: bool = False


def matcher(text: str, *, renewal_id: str, host: HostFacts, context: str = "subject") -> Matcher:
    """The L{Matcher} for ``text`` of a profile, rendered for ``host``; ``context`` is where it sits."""
    if context not in _FREE:
        raise ValueError("unknown context %r" % (context,))
    parts = []
    shown = []
    position = 0
    uses_serial = False
    values = host.values()
    for start, end, name in variables.device_placeholders(text):
        literal = variables.substitute_in_names(text[position:start], renewal_id, values)
        if literal:
            parts.append(_Literal(literal))
        shown.append(literal + text[start:end])
        if name == variables.SERIAL_NUMBER and host.serial:
            parts.append(_Known(name, host.serial))
            uses_serial = True
        else:
            parts.append(_Free(name, context))
        position = end
    literal = variables.substitute_in_names(text[position:], renewal_id, values)
    if literal:
        parts.append(_Literal(literal))
    shown.append(literal)
    return Matcher("".join(shown), tuple(parts), host.serial if uses_serial else None)


def expected_request(kind: str, content: bytes, *, renewal_id: str, host: HostFacts) -> ExpectedRequest:
    """
    What the stored profile (``kind``, ``content``) asks ``host``'s device to request.

    Raises L{ProfileError} when the profile says something the CA cannot
    check (an unknown subject attribute type, an unknown SubjectAltName key);
    the message is written for the admin, like the upload rules'.
    """
    if kind == MOBILECONFIG:
        return _apple(mobileconfig.scep_fields(content), renewal_id, host)
    if kind == ANDROID_TEMPLATE:
        return _android(android.load(content), renewal_id, host)
    if kind == WINDOWS_SYNCML:
        return _windows(syncml.install_settings(content).nodes, renewal_id, host)
    raise ProfileError("unknown profile kind %r" % (kind,))


def attribute_oid(name: str, where: str, field: str) -> str:
    """The dotted OID of a subject attribute type written ``name`` in a profile."""
    name = name.strip()
    if _OID.fullmatch(name):
        return name
    oid = ATTRIBUTE_TYPES.get(name.upper())
    if oid is None:
        raise ProfileError(
            "%s has attribute type '%s', which scepproxyd cannot check; use one of %s or a dotted OID"
            % (where, name, ", ".join(sorted({n for n in ATTRIBUTE_TYPES if len(n) <= 2}))),
            field,
        )
    return oid


def _apple(fields: dict, renewal_id: str, host: HostFacts) -> ExpectedRequest:
    subject = fields.get("Subject", [])
    shape = ProfileError(
        "SCEP payload's Subject must be an array of RDNs, each an array of [type, value] string pairs",
        "Subject",
    )
    if not isinstance(subject, list):
        raise shape
    rdns = []
    for rdn in subject:
        if not isinstance(rdn, list):
            raise shape
        attributes = []
        for pair in rdn:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise shape
            oid = attribute_oid(pair[0], "SCEP payload's Subject", "Subject")
            attributes.append((oid, matcher(pair[1], renewal_id=renewal_id, host=host)))
        if attributes:
            rdns.append(tuple(attributes))
    sans = []
    names = fields.get("SubjectAltName", {})
    if not isinstance(names, dict):
        raise ProfileError("SCEP payload's SubjectAltName must be a dictionary", "SubjectAltName")
    for key, values in names.items():
        san_type = _APPLE_SANS.get(key.lower())
        if san_type is None:
            raise ProfileError(
                "SCEP payload's SubjectAltName has key '%s', which scepproxyd cannot check; use %s"
                % (key, ", ".join(("dNSName", "rfc822Name", "uniformResourceIdentifier", "ntPrincipalName"))),
                "SubjectAltName",
            )
        for value in _strings(values, "SCEP payload's SubjectAltName %s" % (key,), "SubjectAltName"):
            sans.append((san_type, matcher(value, renewal_id=renewal_id, host=host, context=san_type)))
    size = fields.get("Keysize")
    if size is not None and (type(size) is not int or size <= 0):
        raise ProfileError("SCEP payload's Keysize must be a whole number of bits", "Keysize")
    key_type = fields.get("Key Type")
    if key_type is not None:
        if not isinstance(key_type, str) or key_type.strip().upper() not in _APPLE_KEY_TYPES:
            raise ProfileError("SCEP payload's Key Type must be RSA or ECSECPrimeRandom", "Key Type")
        key_type = _APPLE_KEY_TYPES[key_type.strip().upper()]
    return ExpectedRequest(tuple(rdns), tuple(sans), key_type, size)


def _strings(values: object, where: str, field: str) -> list[str]:
    if isinstance(values, str):
        return [values]
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        return list(values)
    raise ProfileError("%s must be a string or an array of strings" % (where,), field)


def _android(template: dict, renewal_id: str, host: HostFacts) -> ExpectedRequest:
    subject = template.get("subject")
    if not isinstance(subject, str):
        raise ProfileError('template "subject" must be a DN such as "CN=name,OU=unit"', "subject")
    # The string is written as RFC 4514 does: the last RDN first.
    rdns = tuple(
        ((attribute_oid(kind, 'template "subject"', "subject"), matcher(value, renewal_id=renewal_id, host=host)),)
        for kind, value in reversed(android.subject_attributes(subject))
    )
    sans = []
    for san_type, value in android.subject_alt_names(template):
        if san_type == "ip":
            # Written as an address (the upload rules allow nothing else); a CSR's reads back canonical.
            value = android_sans.canonical_ip(value)
        sans.append((san_type, matcher(value, renewal_id=renewal_id, host=host, context=san_type)))
    key = template.get("key")
    if not isinstance(key, dict) or key.get("type") not in ("rsa", "ec") or type(key.get("size")) is not int:
        raise ProfileError('template "key" must be {"type": "rsa" or "ec", "size": bits}', "key")
    return ExpectedRequest(rdns, tuple(sans), key["type"], key["size"], all_sans=True)


# The ClientCertificateInstall CSP's SubjectAlternativeNames name formats (Windows' CERT_ALT_NAME_* numbers).
_WINDOWS_SANS = {"2": "email", "3": "dns", "7": "uri", "8": "ip"}


def _windows(nodes: dict, renewal_id: str, host: HostFacts) -> ExpectedRequest:
    """
    A Windows SCEP install's SubjectName, SubjectAlternativeNames and KeyLength.

    The SubjectName's RDNs are expected in the order written: Windows encodes
    an X.500 name string first RDN first unless told to reverse it (the CSP
    does not), unlike the RFC 4514 strings of Android templates.
    SubjectAlternativeNames is ``format+value`` pairs separated by ``;``.
    Windows SCEP keys are RSA (the CSP has no key type), KeyLength bits.
    """
    rdns = tuple(
        ((attribute_oid(kind, "SCEP node SubjectName", "SubjectName"), matcher(value, renewal_id=renewal_id, host=host)),)
        for kind, value in syncml.subject_attributes(nodes.get(syncml.SUBJECT_NAME) or "")
    )
    sans = []
    for pair in filter(None, (p.strip() for p in (nodes.get(syncml.SUBJECT_ALT_NAMES) or "").split(";"))):
        name_format, plus, value = pair.partition("+")
        san_type = _WINDOWS_SANS.get(name_format.strip())
        if not plus or san_type is None or not value:
            raise ProfileError(
                "SCEP node SubjectAlternativeNames has '%s', which scepproxyd cannot check; write format+value pairs"
                " separated by ';' with format 2 (email), 3 (DNS), 7 (URI) or 8 (IP)" % (pair,),
                "SubjectAlternativeNames",
            )
        sans.append((san_type, matcher(value, renewal_id=renewal_id, host=host, context=san_type)))
    size = (nodes.get("Install/KeyLength") or "").strip()
    if not size.isdigit() or int(size) <= 0:
        raise ProfileError("SCEP node KeyLength's <Data> must be a whole number of bits", "KeyLength")
    return ExpectedRequest(rdns, tuple(sans), "rsa", int(size))
