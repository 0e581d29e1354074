"""Android certificate templates: a small JSON document scepproxyd defines.

Android has no configuration-profile format with a SCEP payload, so the
template says what an Android agent needs to enroll one certificate: where to
send SCEP, with which challenge, which subject and key. The shape is strict
(unknown keys refused, a versioned "format" string) so a typo fails at upload
instead of on a device. docs/profiles.md describes it for admins.

Rendering parses the JSON, substitutes inside string values and serialises
again, so the output is always valid JSON whatever the values contain.
"""

import json
import re

from scepproxyd.jsoninput import JsonInputError, read_json
from scepproxyd.printable import printable
from scepproxyd.profiles import android_sans, checks, variables
from scepproxyd.profiles.model import ANDROID_TEMPLATE, TOO_DEEP, ParsedProfile, ProfileError

FORMAT = "scepproxyd.android-certificate-template/1"
_REQUIRED = ("format", "name", "scep", "subject", "key")
_OPTIONAL = ("key_usage", "extended_key_usage", android_sans.OBJECT_KEY, android_sans.STRING_KEY)
KEY_SIZES = {"rsa": (2048, 3072, 4096), "ec": (256, 384)}
KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)
EXTENDED_KEY_USAGES = ("client_auth", "server_auth", "email_protection", "code_signing")

# Where variables may be written; everything else is plain data for the agent.
_URL = "scep.url"
_CHALLENGE = "scep.challenge"
_SUBJECT = "subject"
# Where a subjectAltName's variables are located (with the entry's index).
_SAN = "subject alternative names"
_DN_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+")
_OID = re.compile(r"[0-9]+(\.[0-9]+)+")
_DN_SPECIAL = re.compile(r'([\\,+"<>;=])')


def parse(content: bytes) -> ParsedProfile:
    """Validate an Android certificate template against the upload rules."""
    template = _load(content)
    _check_shape(template)
    occurrences = _occurrences(template)
    checks.refuse_windows_only(occurrences, "an Android certificate template")
    # A name may repeat a host's value (the renewal ID in the CN and in a DNS name);
    # everywhere else each variable is written once.
    checks.refuse_repeats([o for o in occurrences if o.location[0] != _SAN])
    for occurrence in occurrences:
        if occurrence.variable.kind not in variables.SCEP_KINDS:
            _place_host_variable(occurrence)
            continue
        if occurrence.location[0] not in (_URL, _CHALLENGE, _SUBJECT, _SAN):
            raise ProfileError(
                "variable %s may only appear in scep.url, scep.challenge, subject or a subject alternative name"
                " (found in %s)" % (occurrence.variable.spelled, occurrence.location[0])
            )
    challenge = checks.whole_variable_at(occurrences, (_CHALLENGE,), variables.CHALLENGE)
    if challenge is None:
        raise ProfileError(
            'template "scep.challenge" must be %s' % (variables.CHALLENGE_PLACEHOLDER,), _CHALLENGE
        )
    url = checks.whole_variable_at(occurrences, (_URL,), variables.PROXY_URL)
    if url is None:
        raise ProfileError('template "scep.url" must be %s' % (variables.PROXY_URL_PLACEHOLDER,), _URL)
    ca_name = checks.same_ca(challenge, url, _CHALLENGE, _URL)
    checks.refuse_strays(occurrences, ((_CHALLENGE,), _CHALLENGE), ((_URL,), _URL))
    allowed = {
        (_SUBJECT, index)
        for index, (kind, _) in enumerate(_split_dn(template["subject"]))
        if kind.upper() in checks.RENEWAL_ID_TYPES
    }
    renewal = [o for o in occurrences if o.variable.kind == variables.RENEWAL and o.location[0] != _SAN]
    if not renewal or any(o.location not in allowed for o in renewal):
        raise ProfileError(
            'template "subject" must contain %s in its CN or OU' % (variables.RENEWAL_ID_PLACEHOLDER,),
            _SUBJECT,
        )
    name = template["name"]
    return ParsedProfile(ANDROID_TEMPLATE, name, name, ca_name, checks.names(occurrences))


def render(content: bytes, values: variables.Values) -> bytes:
    """Fill in the variables of an accepted template; the result is valid JSON."""

    def fill(value: object, path: str) -> object:
        if isinstance(value, str):
            escape = _dn_escape if path == _SUBJECT else str
            return variables.substitute(value, values, escape)
        if isinstance(value, dict):
            return {key: fill(item, _join(path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item, path) for item in value]
        return value

    template = _load(content)
    if android_sans.present(template) == android_sans.STRING_KEY:
        # The agent always gets the object spelling: a rendered value may hold a comma.
        names = android_sans.as_object(android_sans.entries(template))
        template = {
            (android_sans.OBJECT_KEY if key == android_sans.STRING_KEY else key):
            (names if key == android_sans.STRING_KEY else value)
            for key, value in template.items()
        }
    rendered = fill(template, "")
    return (json.dumps(rendered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _load(content: bytes) -> dict:
    """The template as a JSON object, by the strict reader every outside JSON goes through."""
    try:
        template = read_json(content, "Android certificate template")
    except JsonInputError as e:
        if e.too_deep:
            raise ProfileError(TOO_DEEP) from None
        if e.duplicate_key is not None:
            # At any depth: JSON readers keep one of the two, so a static challenge could hide behind the variable.
            raise ProfileError('template has duplicate key "%s"' % (printable(e.duplicate_key),)) from None
        raise ProfileError(e.message) from None
    if not isinstance(template, dict):
        raise ProfileError("Android certificate template must be a JSON object")
    return template


def _refuse_unknown_keys(value: dict, allowed: tuple[str, ...], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise ProfileError(
                'template has unknown key "%s"; allowed: %s' % (_join(path, key), ", ".join(allowed)),
                _join(path, key),
            )


def _check_shape(template: dict) -> None:
    """Everything but the variables: the agent must be able to act on every field."""
    if template.get("format") != FORMAT:
        raise ProfileError('template "format" must be "%s"' % (FORMAT,), "format")
    _refuse_unknown_keys(template, _REQUIRED + _OPTIONAL, "")
    for key in _REQUIRED:
        if key not in template:
            raise ProfileError('template is missing "%s"' % (key,), key)
    name = template["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ProfileError(
            'template "name" must be a non-empty string of at most 255 characters', "name"
        )
    scep = template["scep"]
    if not isinstance(scep, dict):
        raise ProfileError('template "scep" must be an object with "url" and "challenge"', "scep")
    _refuse_unknown_keys(scep, ("url", "challenge"), "scep")
    for key in ("challenge", "url"):
        if not isinstance(scep.get(key), str):
            raise ProfileError('template "scep" must be an object with "url" and "challenge"', "scep")
    if not isinstance(template["subject"], str) or _split_dn(template["subject"]) is None:
        raise ProfileError(
            'template "subject" must be a DN such as "CN=name,OU=unit"'
            " (write a comma in a value as \\,)",
            _SUBJECT,
        )
    key = template["key"]
    if not (
        isinstance(key, dict)
        and set(key) == {"type", "size"}
        and isinstance(key["type"], str)
        and type(key["size"]) is int
        and key["size"] in KEY_SIZES.get(key["type"], ())
    ):
        raise ProfileError(
            'template "key" must be {"type": "rsa", "size": 2048, 3072 or 4096}'
            ' or {"type": "ec", "size": 256 or 384}',
            "key",
        )
    if not _list_of(template.get("key_usage", []), lambda u: u in KEY_USAGES):
        raise ProfileError(
            'template "key_usage" must be a list of: %s' % (", ".join(KEY_USAGES),), "key_usage"
        )
    if not _list_of(
        template.get("extended_key_usage", []),
        lambda u: u in EXTENDED_KEY_USAGES or bool(_OID.fullmatch(u)),
    ):
        raise ProfileError(
            'template "extended_key_usage" must be a list of: %s or dotted OIDs'
            % (", ".join(EXTENDED_KEY_USAGES),),
            "extended_key_usage",
        )
    for entry in android_sans.entries(template):
        android_sans.check_value(entry)


def _place_host_variable(occurrence: checks.Occurrence) -> None:
    """Host variables in subject values and subject_alt_names only; secrets nowhere in a template.

    Every other field is for the agent; a template describes one
    certificate, and a secret has no place in what the certificate carries.
    """
    variable, where = occurrence.variable, occurrence.location[0]
    if variable.kind == variables.SECRET:
        shown = occurrence.location[2] if where == _SAN else where
        raise checks.secret_in_certificate(variable, "an Android certificate template (found in %s)" % (shown,))
    if occurrence.in_key or where not in (_SUBJECT, _SAN):
        raise ProfileError(
            "variable %s may only appear in subject or subject_alt_names (found in %s)" % (variable.spelled, where),
            where,
        )


def _list_of(value: object, acceptable) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and acceptable(v) for v in value)


def load(content: bytes) -> dict:
    """An accepted template as a JSON object (the parse rules have been applied at upload)."""
    return _load(content)


def subject_alt_names(template: dict) -> list[tuple[str, str]]:
    """The (kind, value) subjectAltNames an accepted template asks for, in either spelling, as written."""
    return [(entry.kind, entry.value) for entry in android_sans.entries(template)]


def subject_attributes(subject: str) -> list[tuple[str, str]]:
    """The template's subject as written, left to right: (TYPE, value) with escapes undone.

    Raises L{ProfileError} when it is not a DN (the upload rules refuse those).
    """
    attributes = _split_dn(subject)
    if attributes is None:
        raise ProfileError('template "subject" must be a DN such as "CN=name,OU=unit"', _SUBJECT)
    return [(kind, _dn_unescape(value)) for kind, value in attributes]


def _dn_unescape(value: str) -> str:
    """RFC 4514 escapes undone: ``\\,`` is a comma, ``\\2C`` the byte 0x2C (UTF-8)."""
    out = bytearray()
    position = 0
    while position < len(value):
        char = value[position]
        if char == "\\" and re.fullmatch("[0-9A-Fa-f]{2}", value[position + 1 : position + 3]):
            out.append(int(value[position + 1 : position + 3], 16))
            position += 3
        elif char == "\\" and position + 1 < len(value):
            out.extend(value[position + 1].encode("utf-8"))
            position += 2
        else:
            out.extend(char.encode("utf-8"))
            position += 1
    return out.decode("utf-8", "replace")


def _split_dn(subject: str) -> list[tuple[str, str]] | None:
    """``CN=a,OU=b`` into ``[("CN", "a"), ("OU", "b")]``; None when it is not a DN.

    Deliberately simple: RDNs separated by commas that no backslash escapes,
    each ``TYPE=value``. Values keep their escapes; variables never contain a
    backslash, comma or equals sign, so finding them in the raw values is exact.
    """
    parts, current, escaped = [], [], False
    for char in subject:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        return None
    parts.append("".join(current))
    attributes = []
    for part in parts:
        kind, equals, value = part.partition("=")
        if not equals or not _DN_TYPE.fullmatch(kind.strip()):
            return None
        attributes.append((kind.strip(), value))
    return attributes


def _occurrences(template: dict) -> list[checks.Occurrence]:
    """Variables in the template, located by JSON path; subject ones by RDN too."""
    found = []

    def visit(value: object, path: str) -> None:
        if path in (android_sans.OBJECT_KEY, android_sans.STRING_KEY):
            for index, entry in enumerate(android_sans.entries(template)):
                # Never whole (a challenge or proxy URL is no name), but a value, not a key.
                # The entry's label says where it was written ("subject_alt_names.dns[0]", or Fleet's spelling).
                label = entry.label[1:-1] if entry.label[:1] == entry.label[-1:] == '"' else entry.label
                found.extend(checks.occurrences_in(entry.value, (_SAN, index, label), False, in_key=False))
            return
        if isinstance(value, str):
            if path == _SUBJECT:
                for index, (kind, text) in enumerate(_split_dn(value)):
                    found.extend(checks.occurrences_in(kind, (_SUBJECT, index, "type"), False))
                    found.extend(checks.occurrences_in(text, (_SUBJECT, index), False, in_key=False))
            else:
                found.extend(checks.occurrences_in(value, (path,)))
        elif isinstance(value, dict):
            for key, item in value.items():
                found.extend(checks.occurrences_in(key, (_join(path, key),), False))
                visit(item, _join(path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, "%s[%d]" % (path, index))

    visit(template, "")
    return found


def _join(path: str, key: str) -> str:
    return "%s.%s" % (path, key) if path else key


def _dn_escape(value: str) -> str:
    """Keep a substituted value inside its RDN, whatever characters it has."""
    return _DN_SPECIAL.sub(r"\\\1", value)
