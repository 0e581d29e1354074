"""Apple configuration profiles (.mobileconfig): validate at upload, render per host.

Validation reads the parsed plist, because only the structure says which
field a variable sits in. Rendering substitutes in the XML text, so the
device receives the admin's document unchanged apart from the variables. The
two views must agree, so a variable the parser and the text see differently
(inside a comment, a CDATA section, or spelled with character references) is
refused at upload rather than rendered wrongly later.
"""

import plistlib
import re
from xml.parsers.expat import ExpatError
from xml.sax.saxutils import escape

from scepproxyd.profiles import checks, variables
from scepproxyd.profiles.model import MOBILECONFIG, ParsedProfile, ProfileError

SCEP_PAYLOAD_TYPE = "com.apple.security.scep"

# Subject attribute types that may carry the renewal ID: CN and OU, by name or OID.
_BOM = b"\xef\xbb\xbf"
_XML_ENCODING = re.compile(rb"""<\?xml[^>]*\bencoding\s*=\s*["']([^"']*)["']""")
# Characters XML 1.0 cannot carry even as character references.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# plistlib reports bad input through all of these; only the first two say why.
_PLIST_ERRORS = (ExpatError, ValueError, AttributeError, TypeError, IndexError, KeyError)

NO_PROXY_VARIABLES = (
    "SCEP payload uses no proxy variables: scepproxyd only delivers SCEP profiles that"
    " enroll through its proxy with one-time challenges (a fixed URL and static challenge"
    " would be stored in plain text and bypass the proxy). Set URL to %s, Challenge to %s,"
    " and put %s in the Subject's CN or OU"
) % (
    variables.PROXY_URL_PLACEHOLDER,
    variables.CHALLENGE_PLACEHOLDER,
    variables.RENEWAL_ID_PLACEHOLDER,
)


def parse(content: bytes) -> ParsedProfile:
    """Validate an unsigned XML .mobileconfig against the upload rules."""
    text = xml_text(content)
    in_text = variables.find(text)
    plist = _load(content)
    payloads = _payloads(plist)
    identifier = _identifier(plist)
    display_name = plist.get("PayloadDisplayName")
    name = display_name if isinstance(display_name, str) and display_name.strip() else identifier
    occurrences = list(_occurrences(plist, ()))
    checks.refuse_hidden(text, in_text, occurrences, "a <string> value")
    _refuse_nested_scep(plist)

    checks.refuse_in_keys(occurrences)
    custom_scep = [o for o in occurrences if o.variable.kind in variables.SCEP_KINDS]

    scep = [i for i, p in enumerate(payloads) if p.get("PayloadType") == SCEP_PAYLOAD_TYPE]
    if not custom_scep:
        if not scep:
            raise ProfileError(
                "profile has no %s payload; scepproxyd manages certificate profiles only"
                % (SCEP_PAYLOAD_TYPE,)
            )
        raise ProfileError(NO_PROXY_VARIABLES)
    if not scep:
        raise ProfileError(
            "profile uses custom SCEP variables but has no %s payload" % (SCEP_PAYLOAD_TYPE,)
        )
    if len(scep) > 1:
        raise ProfileError("profile has %d SCEP payloads; exactly one is allowed" % (len(scep),))
    checks.refuse_windows_only(occurrences, "an Apple profile")
    checks.refuse_repeats(occurrences)

    scep_path = ("PayloadContent", scep[0])
    for occurrence in custom_scep:
        if occurrence.location[: len(scep_path)] != scep_path:
            raise ProfileError(
                "variable %s is outside the SCEP payload" % (occurrence.variable.spelled,)
            )
    fields_path, fields = _scep_fields(payloads[scep[0]], scep_path)
    challenge_at = fields_path + ("Challenge",)
    url_at = fields_path + ("URL",)
    challenge = checks.whole_variable_at(occurrences, challenge_at, variables.CHALLENGE)
    if challenge is None:
        raise ProfileError(
            "SCEP payload's Challenge must be %s" % (variables.CHALLENGE_PLACEHOLDER,), "Challenge"
        )
    url = checks.whole_variable_at(occurrences, url_at, variables.PROXY_URL)
    if url is None:
        raise ProfileError("SCEP payload's URL must be %s" % (variables.PROXY_URL_PLACEHOLDER,), "URL")
    ca_name = checks.same_ca(challenge, url, "Challenge", "URL")
    checks.refuse_strays(
        occurrences,
        (challenge_at, "the SCEP payload's Challenge"),
        (url_at, "the SCEP payload's URL"),
    )
    _require_renewal_id(occurrences, fields, fields_path)
    _place_host_variables(occurrences, scep_path, fields_path)
    return ParsedProfile(MOBILECONFIG, name, identifier, ca_name, checks.names(occurrences))


def render(content: bytes, values: variables.Values) -> bytes:
    """Fill in the variables of an accepted profile, XML-escaping each value."""
    rendered = variables.substitute(xml_text(content), values, xml_escape).encode("utf-8")
    try:
        plistlib.loads(rendered, fmt=plistlib.FMT_XML)
    except _PLIST_ERRORS as e:
        raise ProfileError("rendered profile is not a valid XML plist: %s" % (_reason(e),)) from None
    return rendered


def scep_fields(content: bytes) -> dict:
    """The keys of the one SCEP payload of a profile (``Subject``, ``Keysize``, ...), as parsed."""
    payloads = _payloads(_load(content))
    scep = [p for p in payloads if p.get("PayloadType") == SCEP_PAYLOAD_TYPE]
    if len(scep) != 1:
        raise ProfileError("profile has %d SCEP payloads; exactly one is allowed" % (len(scep),))
    return _scep_fields(scep[0], ())[1]


def xml_escape(value: str) -> str:
    """A variable's value as XML text (Apple and SyncML profiles alike); refused when XML cannot carry it."""
    if _NOT_XML.search(value):
        raise ProfileError(
            "cannot render the profile: a variable's value contains characters XML cannot carry"
        )
    # \r would be read back as \n by any XML parser; a reference keeps it.
    return escape(value, {'"': "&quot;", "'": "&apos;", "\r": "&#13;"})


def xml_text(content: bytes) -> str:
    """An XML profile's bytes as text (UTF-8 only, BOM dropped), for Apple and SyncML profiles alike."""
    if content.startswith(_BOM):
        content = content[len(_BOM) :]
    declared = _XML_ENCODING.match(content.lstrip())
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise ProfileError(
            "profile declares encoding %s; only UTF-8 is supported"
            % (declared.group(1).decode("ascii", "replace"),)
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProfileError("profile is not valid UTF-8: %s" % (e,)) from None


class _DuplicateKey(Exception):
    """Raised from inside plistlib (so not one of the errors it reports bad input with)."""

    def __init__(self, key: str, where: dict) -> None:
        super().__init__(key)
        self.key = key
        self.where = where


def _load(content: bytes) -> object:
    """Parse the plist, refusing what plistlib would silently drop.

    plistlib keeps the last of two equal keys in a dictionary, and the last
    of two top-level values, so a first one that a device may read instead
    (a static challenge, say) would hide behind a second that passes the
    rules. Its dictionaries are built by ``dict_type``, so a dictionary that
    refuses a key it already has sees exactly the keys plistlib sees, with
    no second reading of the XML.
    """
    made = []

    class Once(dict):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

        def __setitem__(self, key, value) -> None:
            if key in self:
                raise _DuplicateKey(key, self)
            super().__setitem__(key, value)

    try:
        plist = plistlib.loads(content, fmt=plistlib.FMT_XML, dict_type=Once)
    except _DuplicateKey as e:
        # The first dictionary made is the root (a profile's root is one); the
        # one at fault is already linked into it.
        where = _path_to(made[0], e.where) if made else None
        raise ProfileError(
            'key "%s" appears more than once in %s; each key may appear only once in a dictionary'
            % (_shorten(e.key), _dictionary_at(where))
        ) from None
    except _PLIST_ERRORS as e:
        raise ProfileError("profile is not a valid XML plist: %s" % (_reason(e),)) from None
    if made and isinstance(plist, dict) and plist is not made[0]:
        raise ProfileError(
            "profile has more than one top-level value in its <plist>; devices and scepproxyd could"
            " read different ones, so the profile must be a single dictionary"
        )
    return plist


def _walk(plist: object):
    """Every dictionary and array in ``plist`` as (value, link), iteratively.

    ``link`` is (parent link, key or index) back to the root, so a path is
    built only for the one value a message names, whatever the depth.
    """
    pending = [(plist, None)]
    while pending:
        value, link = pending.pop()
        yield value, link
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        children = [(item, (link, step)) for step, item in items if isinstance(item, (dict, list))]
        pending.extend(reversed(children))  # document order


def _path(link) -> tuple:
    steps = []
    while link is not None:
        link, step = link
        steps.append(step)
    return tuple(reversed(steps))


def _path_to(root: object, target: object) -> tuple | None:
    for value, link in _walk(root):
        if value is target:
            return _path(link)
    return None


_SHOWN_STEPS = 8


def _where(path: tuple) -> str:
    """``("PayloadContent", 0, "Subject")`` as ``PayloadContent > item 1 > Subject``."""
    steps = ["item %d" % (step + 1,) if isinstance(step, int) else _shorten(step) for step in path]
    if len(steps) > _SHOWN_STEPS:
        steps = steps[:2] + ["..."] + steps[-(_SHOWN_STEPS - 3):]
    return " > ".join(steps)


def _dictionary_at(path: tuple | None) -> str:
    if path is None:
        return "a dictionary"
    return "the top-level dictionary" if not path else "the dictionary at %s" % (_where(path),)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: Exception) -> str:
    if isinstance(error, (ExpatError, ValueError)):
        return str(error)
    return "its elements do not nest as a plist"  # a Python error from inside plistlib


def _payloads(plist: object) -> list[dict]:
    if not isinstance(plist, dict) or not isinstance(plist.get("PayloadContent"), list):
        raise ProfileError("profile must be a plist dictionary with a PayloadContent array")
    payloads = plist["PayloadContent"]
    for number, payload in enumerate(payloads, 1):
        if not isinstance(payload, dict):
            raise ProfileError("PayloadContent item %d is not a dictionary" % (number,))
    return payloads


def _identifier(plist: dict) -> str:
    identifier = plist.get("PayloadIdentifier")
    if not isinstance(identifier, str) or not identifier.strip():
        raise ProfileError(
            "profile has no PayloadIdentifier; devices need it to install and replace the profile",
            "PayloadIdentifier",
        )
    return identifier


def _occurrences(value: object, path: tuple) -> list[checks.Occurrence]:
    """Variables in every string of the plist, keys included, with their paths."""
    if isinstance(value, str):
        return checks.occurrences_in(value, path)
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(checks.occurrences_in(key, path + (key,), is_value=False))
            found.extend(_occurrences(item, path + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_occurrences(item, path + (index,)))
    return found


def _refuse_nested_scep(plist: dict) -> None:
    """A SCEP payload anywhere but directly in the top-level PayloadContent is refused.

    Only those are validated; one nested deeper (in another payload, say)
    would reach the device with whatever URL and challenge it carries.
    """
    for value, link in _walk(plist):
        if not isinstance(value, dict) or value.get("PayloadType") != SCEP_PAYLOAD_TYPE:
            continue
        path = _path(link)
        if len(path) == 2 and path[0] == "PayloadContent" and isinstance(path[1], int):
            continue
        raise ProfileError(
            "profile has a %s payload at %s; a profile may have one SCEP payload, directly in its"
            " top-level PayloadContent" % (SCEP_PAYLOAD_TYPE, _where(path) or "the top level")
        )


def _scep_fields(payload: dict, scep_path: tuple) -> tuple[tuple, dict]:
    """Where the SCEP keys are: Apple nests them in PayloadContent, some tools do not."""
    content = payload.get("PayloadContent")
    if content is None:
        return scep_path, payload
    if not isinstance(content, dict):
        raise ProfileError("SCEP payload's PayloadContent must be a dictionary", "PayloadContent")
    return scep_path + ("PayloadContent",), content


def _require_renewal_id(occurrences: list[checks.Occurrence], fields: dict, fields_path: tuple) -> None:
    """The renewal ID must land in CN or OU, where renewal looks for it in the certificate."""
    allowed = set()
    subject = fields.get("Subject")
    if subject is not None:
        shape_error = ProfileError(
            "SCEP payload's Subject must be an array of RDNs,"
            " each an array of [type, value] string pairs",
            "Subject",
        )
        if not isinstance(subject, list):
            raise shape_error
        for r, rdn in enumerate(subject):
            if not isinstance(rdn, list):
                raise shape_error
            for a, pair in enumerate(rdn):
                if not _is_string_pair(pair):
                    raise shape_error
                if pair[0].strip().upper() in checks.RENEWAL_ID_TYPES:
                    allowed.add(fields_path + ("Subject", r, a, 1))
    renewal = [o for o in occurrences if o.variable.kind == variables.RENEWAL]
    if not renewal or any(o.location not in allowed for o in renewal):
        raise ProfileError(
            "SCEP payload's Subject must contain %s in its CN or OU"
            % (variables.RENEWAL_ID_PLACEHOLDER,),
            "Subject",
        )


def _place_host_variables(occurrences: list[checks.Occurrence], scep_path: tuple, fields_path: tuple) -> None:
    """Where host variables and secrets may not go (they may go in any other string value).

    Not in the PayloadIdentifier, by which devices report the profile
    installed; not as a Subject attribute type, which must name a known
    attribute; and a secret nowhere in the SCEP payload, which describes the
    certificate: its Subject and SubjectAltName are published in it.
    """
    subject_at = fields_path + ("Subject",)
    for occurrence in occurrences:
        variable, location = occurrence.variable, occurrence.location
        if variable.kind in variables.SCEP_KINDS:
            continue
        if location == ("PayloadIdentifier",):
            raise ProfileError(
                "variable %s cannot appear in PayloadIdentifier: devices report an installed profile by it"
                % (variable.spelled,),
                "PayloadIdentifier",
            )
        if location[: len(subject_at)] == subject_at and len(location) == len(subject_at) + 3 and location[-1] == 0:
            raise ProfileError(
                "variable %s cannot be a Subject attribute type; write it in the value" % (variable.spelled,),
                "Subject",
            )
        if variable.kind == variables.SECRET and location[: len(scep_path)] == scep_path:
            raise checks.secret_in_certificate(variable, "the SCEP payload (found in %s)" % (_where(location),))


def _is_string_pair(pair: object) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
