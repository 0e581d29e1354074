"""Profile variables: the one module that knows their names.

Profiles written for Fleet's custom SCEP CA feature carry placeholders that
the daemon fills in for each host. Keeping every name, and the one pattern
that finds them, in this module means the parsers, the renderer, the docs'
messages and any future variable agree by construction.

Both ``$NAME`` and ``${NAME}`` are accepted. ``$NAME`` takes the longest run
of letters, digits and underscores, so ``$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_CA_NAME``
names the CA ``CA_NAME``; ``${...}`` delimits the name explicitly. Any other
``$FLEET_VAR_...`` is refused, so a typo is caught at upload instead of being
delivered to a device verbatim. ``$FLEET_SECRET_<NAME>`` names a custom
secret (managed like a CA's challenge, encrypted at rest). Text such as ``%SerialNumber%`` belongs to
the device and is left alone when rendering; the CA's issuance policy reads
it (L{device_placeholders}) to know what the device will write there.
"""

import re
from collections.abc import Callable, Mapping

import attrs

from scepproxyd.profiles.model import EndUser, ProfileError
from scepproxyd.scep.identifier import CA_NAME

PREFIX = "FLEET_VAR_"
CHALLENGE_PREFIX = PREFIX + "CUSTOM_SCEP_CHALLENGE_"
PROXY_URL_PREFIX = PREFIX + "CUSTOM_SCEP_PROXY_URL_"
RENEWAL_ID = PREFIX + "SCEP_RENEWAL_ID"
RENEWAL_ID_ALIAS = PREFIX + "CERTIFICATE_RENEWAL_ID"
#: Custom secrets: ``$FLEET_SECRET_<NAME>``, filled in with the secret's value.
SECRET_PREFIX = "FLEET_SECRET_"

# Host and end-user variables: each renders one of the host's attributes.
HOST_UUID = PREFIX + "HOST_UUID"
HOST_HARDWARE_SERIAL = PREFIX + "HOST_HARDWARE_SERIAL"
HOST_PLATFORM = PREFIX + "HOST_PLATFORM"
HOST_END_USER_IDP_USERNAME = PREFIX + "HOST_END_USER_IDP_USERNAME"
HOST_END_USER_IDP_USERNAME_LOCAL_PART = PREFIX + "HOST_END_USER_IDP_USERNAME_LOCAL_PART"
HOST_END_USER_IDP_FULL_NAME = PREFIX + "HOST_END_USER_IDP_FULL_NAME"
HOST_END_USER_IDP_GROUPS = PREFIX + "HOST_END_USER_IDP_GROUPS"
HOST_END_USER_IDP_DEPARTMENT = PREFIX + "HOST_END_USER_IDP_DEPARTMENT"
#: The older spelling Fleet keeps for the end user's IdP email.
HOST_END_USER_EMAIL_IDP = PREFIX + "HOST_END_USER_EMAIL_IDP"
#: Every host variable, in the order the docs list them.
HOST_VARIABLES = (
    HOST_UUID,
    HOST_HARDWARE_SERIAL,
    HOST_PLATFORM,
    HOST_END_USER_IDP_USERNAME,
    HOST_END_USER_IDP_USERNAME_LOCAL_PART,
    HOST_END_USER_IDP_FULL_NAME,
    HOST_END_USER_IDP_GROUPS,
    HOST_END_USER_IDP_DEPARTMENT,
    HOST_END_USER_EMAIL_IDP,
)
#: Windows SyncML profiles only: the ClientCertificateInstall/SCEP node's name in every LocURI.
WINDOWS_CERTIFICATE_ID = PREFIX + "SCEP_WINDOWS_CERTIFICATE_ID"

# What a variable stands for; also the attribute names of L{Values}.
CHALLENGE = "challenge"
PROXY_URL = "proxy_url"
RENEWAL = "renewal_id"
HOST = "host"
SECRET = "secret"
WINDOWS_ID = "windows_certificate_id"
#: The kinds of the custom-SCEP variables: only in the SCEP payload, each at most once.
SCEP_KINDS = (CHALLENGE, PROXY_URL, RENEWAL)

#: How messages spell "the challenge variable of some CA".
CHALLENGE_PLACEHOLDER = "$" + CHALLENGE_PREFIX + "<CA>"
#: How messages spell "the proxy URL variable of some CA".
PROXY_URL_PLACEHOLDER = "$" + PROXY_URL_PREFIX + "<CA>"
#: How messages spell the renewal ID variable.
RENEWAL_ID_PLACEHOLDER = "$" + RENEWAL_ID
#: How messages spell "some custom secret".
SECRET_PLACEHOLDER = "$" + SECRET_PREFIX + "<NAME>"
#: A custom secret's name (what follows ``FLEET_SECRET_``).
SECRET_NAME = re.compile(r"[A-Za-z0-9_]{1,255}")
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

_P = "(?:%s|%s)" % (re.escape(PREFIX), re.escape(SECRET_PREFIX))
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
    #: A secret's name (after ``FLEET_SECRET_``); None for other kinds.
    secret_name: str | None = None

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


class MissingValue(ProfileError):
    """The host has no value for a variable its profile uses; ``variable`` is its spelling."""

    def __init__(self, variable: str) -> None:
        super().__init__("host has no value for %s" % (variable,))
        self.variable = variable


@attrs.frozen
class Values:
    """What the variables of one (host, profile) render to.

    The challenge, the proxy URL (which carries a one-time challenge) and the
    secrets are kept out of ``repr`` so they cannot leak through a log line or
    traceback. A kind of variable is looked up by L{value_of} through
    ``_LOOKUPS``: a new kind adds its field here and its line there.
    """

    challenge: str = attrs.field(repr=False)
    proxy_url: str = attrs.field(repr=False)
    renewal_id: str
    #: Host variables by name (see L{host_values}); None or absent: the host has no value.
    host: Mapping[str, str | None] = attrs.field(factory=dict, eq=False)
    #: Custom secrets' values by secret name.
    secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)

    def value_of(self, variable: Variable) -> str:
        """The value ``variable`` renders to; L{MissingValue} when there is none."""
        value = _LOOKUPS[variable.kind](self, variable)
        if value is None:
            raise MissingValue(variable.spelled)
        return value


_LOOKUPS: dict[str, Callable[[Values, Variable], str | None]] = {
    CHALLENGE: lambda values, variable: values.challenge,
    PROXY_URL: lambda values, variable: values.proxy_url,
    RENEWAL: lambda values, variable: values.renewal_id,
    # The Windows certificate ID (the ClientCertificateInstall/SCEP node name) is the host
    # profile's renewal ID: stable while the profile is assigned to the host, so a resend or a
    # renewal enrolls again in the same node, replacing its certificate instead of leaving the
    # old one behind in another node, and an agent removing the profile knows its node; unique
    # per host profile, so two profiles on one host never share a node (the CSP wants a
    # different ID per certificate); and it reveals nothing the issued certificate's subject
    # does not already carry.
    WINDOWS_ID: lambda values, variable: values.renewal_id,
    HOST: lambda values, variable: values.host.get(variable.name),
    SECRET: lambda values, variable: values.secrets.get(variable.secret_name),
}


def host_values(uuid: str, serial: str | None, platform: str, end_user: EndUser | None) -> dict[str, str | None]:
    """What each host variable renders to for this host; None where the host has no value.

    ``..._LOCAL_PART`` is the IdP username up to its last ``@`` (the whole
    username when it has none); ``..._GROUPS`` is the groups joined with
    commas, as Fleet renders them, and missing when there are none.
    """
    user = end_user or EndUser()
    username = user.idp_username
    local_part = username.rpartition("@")[0] or username if username else None
    return {
        HOST_UUID: uuid,
        HOST_HARDWARE_SERIAL: serial or None,
        HOST_PLATFORM: platform,
        HOST_END_USER_IDP_USERNAME: username or None,
        HOST_END_USER_IDP_USERNAME_LOCAL_PART: local_part or None,
        HOST_END_USER_IDP_FULL_NAME: user.idp_full_name or None,
        HOST_END_USER_IDP_GROUPS: ",".join(user.idp_groups) or None,
        HOST_END_USER_IDP_DEPARTMENT: user.idp_department or None,
        HOST_END_USER_EMAIL_IDP: user.idp_email or None,
    }


def first_missing(names, host: Mapping[str, str | None], secrets) -> str | None:
    """The first of the variable ``names`` (sorted) that has no value, spelled ``$NAME``; None if all have.

    ``host`` as L{host_values} makes it; ``secrets`` the names of the secrets
    there are. Lets a renderer refuse before it mints a challenge.
    """
    for name in sorted(names):
        variable = classify(name)
        if variable.kind == HOST and host.get(name) is None:
            return variable.spelled
        if variable.kind == SECRET and variable.secret_name not in secrets:
            return variable.spelled
    return None


def needs_host_values(names) -> bool:
    """Whether any of the variable ``names`` is a host variable or a custom secret (values beyond the profile's own)."""
    return any(name in HOST_VARIABLES or name.startswith(SECRET_PREFIX) for name in names)


def secret_names(names) -> list[str]:
    """The custom secrets (names after ``FLEET_SECRET_``) among variable names, sorted, each once."""
    return sorted({name[len(SECRET_PREFIX):] for name in names if name.startswith(SECRET_PREFIX)})


def classify(name: str) -> Variable:
    """Say what the variable ``name`` (without ``$``) means, or refuse it."""
    if name in (RENEWAL_ID, RENEWAL_ID_ALIAS):
        return Variable(name, RENEWAL, None)
    if name == WINDOWS_CERTIFICATE_ID:
        return Variable(name, WINDOWS_ID, None)
    if name in HOST_VARIABLES:
        return Variable(name, HOST, None)
    if name.startswith(SECRET_PREFIX):
        secret = name[len(SECRET_PREFIX):]
        if not SECRET_NAME.fullmatch(secret):
            raise ProfileError(
                "variable $%s must end with a secret name of 1-255 letters, digits or underscores" % (name,)
            )
        return Variable(name, SECRET, None, secret)
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
        pieces.append(escape(values.value_of(occurrence.variable)))
        position = occurrence.end
    pieces.append(text[position:])
    return "".join(pieces)


def substitute_renewal_id(text: str, renewal_id: str) -> str:
    """L{substitute_in_names} for text that may hold only the renewal ID (no host values known)."""
    return substitute_in_names(text, renewal_id, {})


def substitute_in_names(text: str, renewal_id: str, host: Mapping[str, str | None]) -> str:
    """Fill in the renewal ID and host variables in ``text``; any other variable is refused.

    What a subject or subjectAltName value of an accepted profile says once
    the daemon has filled in the variables the upload rules allow there
    (``host`` as L{host_values} makes it). A host variable without a value
    raises L{MissingValue}.
    """
    pieces = []
    position = 0
    for occurrence in find(text):
        variable = occurrence.variable
        if variable.kind == RENEWAL:
            value = renewal_id
        elif variable.kind == HOST:
            value = host.get(variable.name)
            if value is None:
                raise MissingValue(variable.spelled)
        else:
            raise ProfileError(
                "variable %s cannot appear in a certificate's subject or names" % (variable.spelled,)
            )
        pieces.append(text[position : occurrence.start])
        pieces.append(value)
        position = occurrence.end
    pieces.append(text[position:])
    return "".join(pieces)


def device_placeholders(text: str) -> list[tuple[int, int, str]]:
    """Every ``%Name%`` in ``text``: (start, end, name), left to right."""
    return [(m.start(), m.end(), m.group(1)) for m in _DEVICE_PLACEHOLDER.finditer(text)]
