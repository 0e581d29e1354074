"""Subject alternative names of an Android certificate template, in either spelling.

Templates written for scepproxyd list names by kind (``"subject_alt_names":
{"dns": [...], "upn": [...]}``); templates carried over from Fleet write one
string, ``"subject_alternative_name": "DNS=a.example, UPN=ann@example"``.
Both are read here into the same (kind, value, label) entries, so the upload
rules, the renderer and the CSR binding see one list whatever the admin
wrote, and the agent always receives the object spelling (no value can break
a comma-separated string after rendering).

Values are checked as far as they can be before rendering: a value with a
variable or a device placeholder (``%HostName%``) is checked only for what
its literal text shows; an IP address is never built from a variable (no
variable renders to one), so it is checked in full at upload.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from scepproxyd.profiles import variables
from scepproxyd.profiles.model import ProfileError

#: The object spelling's key and the kinds it lists, in the order messages name them.
OBJECT_KEY = "subject_alt_names"
KINDS = ("dns", "email", "uri", "upn", "ip")
#: Fleet's spelling: one string of comma-separated ``KEY=value`` entries.
STRING_KEY = "subject_alternative_name"
STRING_KINDS = {"DNS": "dns", "EMAIL": "email", "URI": "uri", "UPN": "upn", "IP": "ip"}
#: Fleet refuses a SAN string of 4096 bytes or more; so does scepproxyd.
MAX_STRING_BYTES = 4095

_HOSTNAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_HOSTNAME_CHARS = re.compile(r"[A-Za-z0-9_.*-]*")
_HOLE = "\0"  # stands for a variable or placeholder while the literal text is checked
_WHAT = {
    "dns": "a DNS name such as wifi.example.com",
    "email": "an email address such as ann@example.com",
    "uri": "a URI with a scheme, such as urn:example:device or https://example.com/device",
    "upn": "a user principal name such as ann@corp.example",
    "ip": "an IPv4 or IPv6 address such as 10.0.0.1 or 2001:db8::1",
}


@attrs.frozen
class Entry:
    """One subjectAltName the template asks for, with where it was written (for messages)."""

    kind: str
    value: str
    label: str
    #: The template key the entry was written under: an API's ``field``.
    field: str = OBJECT_KEY


def present(template: dict) -> str | None:
    """Which spelling the template uses (the key), or None; refuses both at once."""
    if OBJECT_KEY in template and STRING_KEY in template:
        raise ProfileError(
            'template has both "%s" and "%s"; write the names in one of them' % (OBJECT_KEY, STRING_KEY), STRING_KEY
        )
    for key in (OBJECT_KEY, STRING_KEY):
        if key in template:
            return key
    return None


def entries(template: dict) -> list[Entry]:
    """Every name the template asks for, checked for shape; ProfileError on the first bad one."""
    key = present(template)
    if key == OBJECT_KEY:
        return _object_entries(template[OBJECT_KEY])
    if key == STRING_KEY:
        return _string_entries(template[STRING_KEY])
    return []


def as_object(found: list[Entry]) -> dict[str, list[str]]:
    """The object spelling of ``found``: every kind listed, values in the order written."""
    names: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for entry in found:
        names[entry.kind].append(entry.value)
    return names


def canonical_ip(value: str) -> str:
    """An IP address as certificates are read back (``2001:DB8::0:1`` is ``2001:db8::1``)."""
    return str(ipaddress.ip_address(value.strip()))


def check_value(entry: Entry) -> None:
    """The value can be the kind it is listed under, as far as its literal text shows."""
    holes = [(o.start, o.end) for o in variables.find(entry.value)]
    holes += [(start, end) for start, end, _ in variables.device_placeholders(entry.value)]
    literal = entry.value
    for start, end in sorted(holes, reverse=True):
        literal = literal[:start] + _HOLE + literal[end:]
    if entry.kind == "ip":
        if holes:
            raise ProfileError(
                "template %s: an IP address cannot come from a variable or placeholder; write the address"
                % (entry.label,), entry.field,
            )
        if not _is_ip(entry.value):
            _refuse(entry)
        return
    if holes:
        # Only what the literal text shows: no spaces, and host-name characters in a DNS name.
        pieces = literal.split(_HOLE)
        if any(re.search(r"\s", piece) for piece in pieces) or (
            entry.kind == "dns" and not all(_HOSTNAME_CHARS.fullmatch(piece) for piece in pieces)
        ):
            _refuse(entry)
        return
    pattern = {"dns": _HOSTNAME, "email": _EMAIL, "upn": _EMAIL, "uri": _URI}[entry.kind]
    if not pattern.fullmatch(entry.value) or (entry.kind == "dns" and len(entry.value) > 253):
        _refuse(entry)


def _is_ip(value: str) -> bool:
    """An address a certificate can carry: IPv4 or IPv6, no zone (``fe80::1%eth0``), no network."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return getattr(address, "scope_id", None) is None


def _refuse(entry: Entry) -> None:
    raise ProfileError(
        "template %s must be %s, not '%s'" % (entry.label, _WHAT[entry.kind], entry.value), entry.field
    )


def _object_entries(names: object) -> list[Entry]:
    if not (
        isinstance(names, dict)
        and set(names) <= set(KINDS)
        and all(isinstance(v, list) and all(isinstance(s, str) and s for s in v) for v in names.values())
    ):
        raise ProfileError(
            'template "%s" must be an object with lists of strings under: %s' % (OBJECT_KEY, ", ".join(KINDS)),
            OBJECT_KEY,
        )
    found = []
    for kind in KINDS:
        for index, value in enumerate(names.get(kind, [])):
            found.append(Entry(kind, value, '"%s.%s[%d]"' % (OBJECT_KEY, kind, index)))
    return found


def _string_entries(text: object) -> list[Entry]:
    """Fleet's spelling: entries separated by commas, ``KEY=value`` each, spaces around either ignored."""
    if not isinstance(text, str):
        raise ProfileError(
            'template "%s" must be a string such as "DNS=wifi.example.com, UPN=ann@corp.example"' % (STRING_KEY,),
            STRING_KEY,
        )
    if len(text.encode("utf-8")) > MAX_STRING_BYTES:
        raise ProfileError('template "%s" must be shorter than 4096 bytes' % (STRING_KEY,), STRING_KEY)
    if not text.strip():
        return []
    found = []
    for number, token in enumerate(text.split(","), 1):
        label = '"%s" entry %d' % (STRING_KEY, number)
        key, equals, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise ProfileError(
                "template %s ('%s') is not KEY=value; keys: %s" % (label, token.strip(), ", ".join(STRING_KINDS)),
                STRING_KEY,
            )
        kind = STRING_KINDS.get(key.upper())
        if kind is None:
            raise ProfileError(
                "template %s has key '%s'; allowed: %s" % (label, key, ", ".join(STRING_KINDS)), STRING_KEY
            )
        if not value:
            raise ProfileError("template %s (%s=) has no value" % (label, key), STRING_KEY)
        found.append(Entry(kind, value, "%s (%s)" % (label, key.upper()), STRING_KEY))
    return found
