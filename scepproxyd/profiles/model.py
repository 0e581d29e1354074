"""The values the profile engine hands to the rest of the daemon.

They live apart from the parsers so the store, the admin API and the jobs can
import them without pulling in XML or JSON handling.
"""

import attrs

#: ``ParsedProfile.kind`` of an Apple configuration profile.
MOBILECONFIG = "mobileconfig"
#: ``ParsedProfile.kind`` of an Android certificate template.
ANDROID_TEMPLATE = "android_template"
#: ``ParsedProfile.kind`` of a Windows SyncML profile (ClientCertificateInstall CSP).
WINDOWS_SYNCML = "windows_syncml"
#: Every kind, in the order messages list them (the store's CHECK constraint holds the same).
KINDS = (MOBILECONFIG, ANDROID_TEMPLATE, WINDOWS_SYNCML)
#: The refusal of a profile that nests deeper than its reader accepts.
TOO_DEEP = "profile is nested too deeply"


class ProfileError(ValueError):
    """A profile cannot be accepted or rendered.

    ``str()`` is written for the admin who uploaded the profile: it says what
    is wrong and how to fix it, and never contains a secret. ``field`` names
    the part of the profile at fault (``"profile"`` when it is the whole
    document), so an API can point at it.
    """

    def __init__(self, message: str, field: str = "profile") -> None:
        super().__init__(message)
        self.field = field


@attrs.frozen
class ParsedProfile:
    """What an accepted upload is: enough to store it and check its CA exists."""

    kind: str
    name: str
    identifier: str
    ca_name: str | None
    variables: tuple[str, ...]


@attrs.frozen
class EndUser:
    """The end user a host is assigned to, as the IdP knows them: what the end-user variables render.

    Every field is optional; a profile that uses one the host lacks fails
    for that host (see L{scepproxyd.profiles.variables.MissingValue}).
    """

    idp_username: str | None = None
    idp_full_name: str | None = None
    idp_groups: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    idp_department: str | None = None
    idp_email: str | None = None
