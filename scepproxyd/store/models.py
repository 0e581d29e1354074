"""
The store's value objects and errors: what callers get back and what they catch.

Value objects are frozen attrs classes built straight from rows, so their
field order is the column order of the queries that make them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid

import attrs

from scepproxyd.platforms import PLATFORMS  # noqa: F401 - re-exported for the store's modules
from scepproxyd.profiles.model import KINDS, EndUser

HOST_PROFILE_STATUSES = (None, "pending", "verifying", "verified", "failed")
COMMAND_STATUSES = ("queued", "delivered", "acknowledged", "error", "superseded")
PROFILE_KINDS = KINDS


class StoreError(Exception):
    """A store operation failed; the message is meant for the operator."""


class StoreUnavailable(StoreError):
    """
    The database file cannot be written (or read) right now: disk full, I/O error, read-only.

    Nothing the caller sent is at fault and nothing was changed, so clients
    are answered 503 (try again later) and /readyz reports the reason until
    a write succeeds again. ``reason`` is short and names SQLite's code.
    """

    def __init__(self, reason: str):
        super().__init__("the database cannot be written: %s" % (reason,))
        self.reason = reason


class DuplicateError(StoreError):
    """The row being added already exists."""


class IdentifierInUseError(DuplicateError):
    """
    Another profile of the same kind already has this identifier.

    The identifier (Apple PayloadIdentifier, Android template name) is how
    an installed-profiles report names a profile, so two profiles sharing one
    would verify each other. ``profile_uuid`` and ``profile_name`` say which
    profile holds it, so the admin can tell which to change or delete.
    """

    def __init__(self, kind: str, identifier: str, profile_uuid: str, profile_name: str):
        super().__init__(f"{kind} identifier {identifier!r} is already used by profile {profile_uuid} ({profile_name})")
        self.kind = kind
        self.identifier = identifier
        self.profile_uuid = profile_uuid
        self.profile_name = profile_name


class NotFoundError(StoreError):
    """An operation names a CA, host, profile or host profile that does not exist."""


class InUseError(StoreError):
    """
    A CA cannot be renamed or deleted while profiles use it.

    The name appears in those profiles' variables, so changing it under them
    would break every device they reach. ``profiles`` lists their uuids, so
    the admin knows what to change or delete first.
    """

    def __init__(self, ca_name: str, profiles: list[str]):
        super().__init__(f"CA {ca_name!r} is used by profiles: {', '.join(profiles)}")
        self.ca_name = ca_name
        self.profiles = profiles


class PlatformMismatchError(StoreError):
    """
    A profile was assigned to a host (or a platform) it is not made for.

    ``host_uuid`` is None when a whole platform was asked for.
    """

    def __init__(self, host_uuid: str | None, host_platform: str, profile_platform: str, profile_uuid: str | None = None):
        profile = "profile" if profile_uuid is None else f"profile {profile_uuid}"
        hosts = f"{host_platform} hosts" if host_uuid is None else f"host {host_uuid}, which is {host_platform}"
        super().__init__(f"{profile} is for {profile_platform} and cannot be assigned to {hosts}")
        self.host_uuid = host_uuid
        self.host_platform = host_platform
        self.profile_platform = profile_platform
        self.profile_uuid = profile_uuid


@attrs.frozen
class CertificateAuthority:
    name: str
    url: str
    challenge_ciphertext: bytes | None = attrs.field(repr=False)
    created_at: float
    updated_at: float
    tls_trust_bundle: str | None = None
    tls_verify: bool = attrs.field(default=True, converter=bool)
    #: The built-in CA's own row ([ca] name): one-time CA challenges, and the issuance policy binds its CSRs.
    builtin: bool = attrs.field(default=False, converter=bool)
    #: "passthrough" (forward the device's bytes) or "ra" (the proxy is this CA's registration authority).
    mode: str = "passthrough"
    #: RA mode: the RA's private key sealed with the secrets key, and its certificate (DER).
    ra_key_ciphertext: bytes | None = attrs.field(default=None, repr=False)
    ra_certificate: bytes | None = attrs.field(default=None, repr=False)
    #: Whether the upstream CA issued the RA certificate (else it is self-signed).
    ra_enrolled: bool = attrs.field(default=False, converter=bool)


@attrs.frozen
class RaIdentityRecord:
    """An RA identity as the store keeps it: the sealed key, the certificate (DER), and who issued it."""

    key_ciphertext: bytes = attrs.field(repr=False)
    certificate: bytes = attrs.field(repr=False)
    enrolled: bool = False


@attrs.frozen
class Host:
    uuid: str
    serial: str | None
    platform: str
    created_at: float
    updated_at: float
    #: The host's end user (IdP attributes); filled in by get_host only, None when none is recorded.
    end_user: EndUser | None = None


@attrs.frozen
class Profile:
    uuid: str
    name: str
    platform: str
    kind: str
    identifier: str | None
    ca_name: str | None
    variables: tuple[str, ...]
    content: bytes = attrs.field(repr=False)
    created_at: float
    updated_at: float


@attrs.frozen
class HostProfile:
    host_uuid: str
    profile_uuid: str
    status: str | None
    detail: str | None
    retries: int
    created_at: float
    updated_at: float
    renewal_id: str | None = None
    command_uuid: str | None = None
    cert_serial: str | None = None
    cert_not_before: float | None = None
    cert_not_after: float | None = None
    #: The current command's status, where a list asked for it (list_host_profiles): what
    #: scepproxyd.delivery.lifecycle reads to tell "pending" from "delivering". Not compared:
    #: it describes the command, and is None where the host profile was read alone.
    command_status: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ProxyTarget:
    host_uuid: str
    profile_uuid: str
    ca_name: str
    ca_url: str
    status: str | None
    #: The CA integration's mode ("passthrough" or "ra").
    ca_mode: str = "passthrough"
    #: The serial (hex) of the certificate recorded for this host profile, if any.
    cert_serial: str | None = None


@attrs.frozen
class ConsumedChallenge:
    """A spent proxy challenge, by its SHA-256 (the store never keeps the challenge itself)."""

    challenge_hash: str
    host_uuid: str
    profile_uuid: str
    created_at: float


@attrs.frozen
class ChallengeRefusal:
    """
    What a refused proxy challenge did to its host profile.

    ``counted``: it was the challenge most recently issued to the host
    profile, the host profile was 'pending', and the retry rule applied
    (``status`` is then NULL or 'failed'). ``reason`` ``expired``: it was
    that latest challenge, unused past its TTL (the device was offline), so
    the host profile was sent again (``status`` NULL) without a retry
    counted; ``waited`` is how long it had been out, in seconds. Otherwise
    nothing changed and ``reason`` says why, in one word for logs:
    ``not_latest`` (an older, unknown or another host profile's challenge),
    ``not_pending`` (the host profile is in ``status``), ``in_flight``
    (another request holds it right now; its answer decides) or ``gone`` (no
    such host profile).
    """

    counted: bool
    reason: str
    status: str | None
    waited: float | None = None


#: The info line for a host profile sent again because the agent fetched it and never reported.
RESENT_AFTER_STUCK = (
    "agent fetched the profile and never reported; host profile sent again with a fresh challenge, no retry"
    " counted: host={host} profile={profile} ca={ca} waited={waited:.0f}s"
)
#: The info line (cleanup job and proxy alike) for a host profile sent again because its latest
#: challenge expired unused; ``found_by`` is "cleanup" or "device". Never names the challenge.
RESENT_AFTER_EXPIRY = (
    "one-time challenge expired unused; host profile sent again, no retry counted: host={host} profile={profile}"
    " ca={ca} waited={waited:.0f}s found_by={found_by}"
)


@attrs.frozen
class ResentHostProfile:
    """A pending host profile sent again, no retry counted: its latest challenge expired unused, or its delivery stuck."""

    host_uuid: str
    profile_uuid: str
    ca_name: str | None
    #: Seconds it waited: from the challenge's minting to its expiry being acted on, or from the agent's fetch.
    waited: float


@attrs.frozen
class ExpiredChallenges:
    """What ChallengeQueries.expire_challenges did: rows deleted, and the host profiles it sent again."""

    removed: int
    resent: tuple[ResentHostProfile, ...]


#: How a forwarded enrollment ends (ChallengeQueries.finish_enrollment): the challenge spent for good
#: ("spent"), spent and the host profile moved pending -> verifying ("forwarded"), put back ("restored"),
#: or spent and the CA's refusal counted ("refused").
ENROLLMENT_ENDINGS = ("spent", "forwarded", "restored", "refused")


@attrs.frozen
class EnrollmentStart:
    """
    What ChallengeQueries.begin_enrollment found and did, in one transaction.

    ``target`` is the identifier's ProxyTarget read in that transaction
    (None: unknown host, profile or CA). ``consumed`` is the challenge taken
    (left in flight while the host profile is 'pending', else settled
    already); ``refusal`` says what a challenge that could not be taken did
    to its host profile. Both None: nothing was tried, because the target is
    unknown, its CA is in RA mode, or its CA's URL is not the one the caller
    prepared for.
    """

    target: ProxyTarget | None
    consumed: ConsumedChallenge | None = None
    refusal: ChallengeRefusal | None = None


@attrs.frozen
class Command:
    """One attempt to deliver a host profile; only the host profile's current command is delivered."""

    command_uuid: str
    host_uuid: str
    profile_uuid: str
    backend: str
    status: str
    detail: str | None
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float


@attrs.frozen
class RenderJob:
    """Everything needed to render one command, read in one query at hand-over time."""

    command_uuid: str
    host_uuid: str
    profile_uuid: str
    kind: str
    content: bytes = attrs.field(repr=False)
    ca_name: str | None
    challenge_ciphertext: bytes | None = attrs.field(repr=False)
    renewal_id: str | None
    platform: str
    #: The profile names the built-in CA: its challenge variable gets a one-time CA challenge.
    ca_builtin: bool = False
    #: The variable names the profile writes (what the renderer must look up beyond this row).
    variables: tuple[str, ...] = attrs.field(default=(), eq=False)


@attrs.frozen
class ClaimResult:
    """
    What one claiming batch did.

    ``claimed`` holds the new queued commands; ``failed`` the host profiles
    that could not be sent, as ``(host_uuid, profile_uuid, detail)``.
    """

    claimed: tuple[Command, ...]
    failed: tuple[tuple[str, str, str], ...]


def mint_challenge() -> str:
    """A one-time challenge (proxy or built-in CA): 24 random bytes, base64url, unpadded."""
    return base64.urlsafe_b64encode(secrets.token_bytes(24)).rstrip(b"=").decode("ascii")


def challenge_hash(challenge: str) -> str:
    """What the store keeps of a challenge it must recognise later without keeping it: its SHA-256, hex."""
    return hashlib.sha256(challenge.encode("utf-8")).hexdigest()
#: What new_renewal_id() makes, to find renewal IDs in a certificate subject.
RENEWAL_ID_PATTERN = re.compile(r"sp-[0-9a-f]{16}")


def new_renewal_id() -> str:
    """A token unique to one host profile, found later in its certificate's CN or OU."""
    return "sp-" + secrets.token_hex(8)


def new_command_uuid() -> str:
    return str(uuid.uuid4())


def check_choice(value, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def check_filter(value, allowed: tuple, what: str) -> None:
    """L{check_choice} for a filter of a list, where None means "do not filter"."""
    if value is not None:
        check_choice(value, allowed, what)


def check_positive(value, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
