"""Profile variables: the one module that knows their names.

Profiles written for Fleet's custom SCEP CA feature carry placeholders that
the daemon fills in for each host. Keeping every name, and the one pattern
that finds them, in this module means the parsers, the renderer, the docs'
messages and any future variable agree by construction.

Both ``$NAME`` and ``${NAME}`` are accepted. ``$NAME`` takes the longest run
of letters, digits and underscores, so ``$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME``
names the CA ``CA_NAME``; ``${...}`` delimits the name explicitly. Any other
``$FLEET_VAR_...`` is refused, so a typo is caught at upload instead of being
delivered to a device verbatim. Text such as ``%SerialNumber%`` belongs to
the device and is left alone when rendering; the CA's issuance policy reads
it (L{device_placeholders}) to know what the device will write there.
"""

import re
from collections.abc import Callable

import attrs

from scepproxyd.profiles.model import ProfileError
from scepproxyd.scep.identifier import CA_NAME

PREFIX = "FLEET_VAR_"
CHALLENGE_PREFIX = PREFIX + "CUSTOM_SCEP_CHALLENGE_"
PROXY_URL_PREFIX = PREFIX + "CUSTOM_SCEP_PROXY_URL_"
RENEWAL_ID = PREFIX + "SCEP_RENEWAL_ID"
RENEWAL_ID_ALIAS = PREFIX + "CERTIFICATE_RENEWAL_ID"
#: Windows SyncML profiles only: the ClientCertificateInstall/SCEP node's name in every LocURI.
WINDOWS_CERTIFICATE_ID = PREFIX + "SCEP_WINDOWS_CERTIFICATE_ID"

# What a variable stands for; also the attribute names of L{Values}.
CHALLENGE = "challenge"
PROXY_URL = "proxy_url"
RENEWAL = "renewal_id"
WINDOWS_ID = "windows_certificate_id"

#: How messages spell "the challenge variable of some CA".
CHALLENGE_PLACEHOLDER = "$" + CHALLENGE_PREFIX + "<CA>"
#: How messages spell "the proxy URL variable of some CA".
PROXY_URL_PLACEHOLDER = "$" + PROXY_URL_PREFIX + "<CA>"
#: How messages spell the renewal ID variable.
RENEWAL_ID_PLACEHOLDER = "$" + RENEWAL_ID
#: How messages spell the Windows certificate ID variable.
WINDOWS_CERTIFICATE_ID_PLACEHOLDER = "$" + WINDOWS_CERTIFICATE_ID

#: Device-side placeholders: written as ``%Name%``, filled in by the device
#: itself when it builds its certificate request, never by scepproxyd.
SERIAL_NUMBER = "SerialNumber"
HARDWARE_UUID = "HardwareUUID"
UDID = "UDID"
#: The placeholders scepproxyd knows by name. Only ``%SerialNumber%`` is
#: checked against a known value (the host's serial); the others, and any
#: other ``%Name%``, stand for whatever the device writes (see
#: scepproxyd.profiles.binding for why the host UUID is not assumed).
DEVICE_PLACEHOLDERS = (
    SERIAL_NUMBER,
    HARDWARE_UUID,
    UDID,
    "ComputerName",
    "HostName",
    "LocalHostName",
    "MACAddress",
)
_DEVICE_PLACEHOLDER = re.compile(r"%([A-Za-z][A-Za-z0-9_]*)%")

_P = re.escape(PREFIX)
_C = "[A-Za-z0-9_]"
_OCCURRENCE = re.compile(
    rf"\$\{{(?P<braced>{_P}{_C}*)\}}|\$\{{(?P<unclosed>{_P}{_C}*)|\$(?P<bare>{_P}{_C}*)"
)


@attrs.frozen
class Variable:
    """One variable as written (without ``$`` or braces) and what it means."""

    name: str
    kind: str
    ca_name: str | None

    @property
    def spelled(self) -> str:
        return "$" + self.name


@attrs.frozen
class Found:
    """One occurrence of a variable in a string."""

    variable: Variable
    start: int
    end: int
    whole: bool  # the occurrence is the entire string, nothing around it


@attrs.frozen
class Values:
    """What the variables of one (host, profile) render to.

    The challenge and the proxy URL (which carries a one-time challenge) are
    kept out of ``repr`` so they cannot leak through a log line or traceback.
    """

    challenge: str = attrs.field(repr=False)
    proxy_url: str = attrs.field(repr=False)
    renewal_id: str
    #: The ClientCertificateInstall/SCEP node name (Windows SyncML profiles only; see profiles.syncml).
    windows_certificate_id: str = ""


def classify(name: str) -> Variable:
    """Say what the variable ``name`` (without ``$``) means, or refuse it."""
    if name in (RENEWAL_ID, RENEWAL_ID_ALIAS):
        return Variable(name, RENEWAL, None)
    if name == WINDOWS_CERTIFICATE_ID:
        return Variable(name, WINDOWS_ID, None)
    for prefix, kind in ((CHALLENGE_PREFIX, CHALLENGE), (PROXY_URL_PREFIX, PROXY_URL)):
        if name.startswith(prefix):
            ca_name = name[len(prefix):]
            if not CA_NAME.fullmatch(ca_name):
                raise ProfileError(
                    "variable $%s must end with a CA name of 1-255 letters, digits or underscores"
                    % (name,)
                )
            return Variable(name, kind, ca_name)
    raise ProfileError("unknown variable $%s" % (name,))


def find(text: str) -> list[Found]:
    """Every variable occurrence in ``text``; refuses unknown or malformed ones."""
    found = []
    for match in _OCCURRENCE.finditer(text):
        if match.group("unclosed") is not None:
            raise ProfileError("variable ${%s has no closing brace" % (match.group("unclosed"),))
        name = match.group("braced") or match.group("bare")
        found.append(
            Found(
                classify(name),
                match.start(),
                match.end(),
                whole=match.start() == 0 and match.end() == len(text),
            )
        )
    return found


def substitute(text: str, values: Values, escape: Callable[[str], str]) -> str:
    """Replace every variable in ``text`` with its value passed through ``escape``."""
    pieces = []
    position = 0
    for occurrence in find(text):
        pieces.append(text[position : occurrence.start])
        pieces.append(escape(getattr(values, occurrence.variable.kind)))
        position = occurrence.end
    pieces.append(text[position:])
    return "".join(pieces)


def substitute_renewal_id(text: str, renewal_id: str) -> str:
    """Replace the renewal ID variable in ``text``; any other variable is refused.

    What a subject or subjectAltName value of an accepted profile says once
    the daemon has filled in the one variable the upload rules allow there.
    """
    pieces = []
    position = 0
    for occurrence in find(text):
        if occurrence.variable.kind != RENEWAL:
            raise ProfileError(
                "variable %s cannot appear in a certificate's subject or names"
                % (occurrence.variable.spelled,)
            )
        pieces.append(text[position : occurrence.start])
        pieces.append(renewal_id)
        position = occurrence.end
    pieces.append(text[position:])
    return "".join(pieces)


def device_placeholders(text: str) -> list[tuple[int, int, str]]:
    """Every ``%Name%`` in ``text``: (start, end, name), left to right."""
    return [(m.start(), m.end(), m.group(1)) for m in _DEVICE_PLACEHOLDER.finditer(text)]
