"""
The SQLite store: schema, migrations and every SQL statement of scepproxyd.

``Store`` is one object for callers; its methods are grouped by subject in
the modules here (CAs, hosts and their end users, profiles, assignments, challenges, commands,
renewals, RA mode, agent credentials, custom secrets) and all run on the DB thread that ``database.Database`` owns.
Every method returns a Deferred; every write is one transaction, so a
failed one leaves nothing behind.
"""

from scepproxyd.store.agents import AgentCredential, AgentCredentialQueries, AgentIdentity
from scepproxyd.store.assignments import STATUS_FILTERS, AssignmentQueries
from scepproxyd.store.backup import BackupQueries
from scepproxyd.store.ca import (
    CA_REQUEST_STATUSES,
    CERTIFICATE_STATUSES,
    AlreadyAnswered,
    CaAuthorityQueries,
    CaRequest,
    IssuedCertificate,
    StateError,
)
from scepproxyd.store.cas import CaQueries
from scepproxyd.store.challenges import ChallengeQueries
from scepproxyd.store.commands import CommandQueries
from scepproxyd.store.database import Database
from scepproxyd.store.deliveries import DeliveryQueries
from scepproxyd.store.end_users import END_USER_FIELDS, EndUserQueries, RenderInputs
from scepproxyd.store.hosts import HostQueries
from scepproxyd.store.models import (
    COMMAND_STATUSES,
    HOST_PROFILE_STATUSES,
    PLATFORMS,
    PROFILE_KINDS,
    CertificateAuthority,
    ChallengeRefusal,
    ClaimResult,
    Command,
    ConsumedChallenge,
    DuplicateError,
    Host,
    HostProfile,
    IdentifierInUseError,
    InUseError,
    NotFoundError,
    PlatformMismatchError,
    Profile,
    ProxyTarget,
    RaIdentityRecord,
    RenderJob,
    StoreError,
    StoreUnavailable,
    new_renewal_id,
)
from scepproxyd.store.profiles import ProfileQueries
from scepproxyd.store.ra import RaQueries
from scepproxyd.store.renewals import RenewalQueries
from scepproxyd.store.secrets import CustomSecret, SecretInUseError, SecretQueries


class Store(
    CaQueries,
    CaAuthorityQueries,
    HostQueries,
    ProfileQueries,
    AssignmentQueries,
    ChallengeQueries,
    CommandQueries,
    DeliveryQueries,
    RenewalQueries,
    RaQueries,
    AgentCredentialQueries,
    BackupQueries,
    EndUserQueries,
    SecretQueries,
    Database,
):
    """
    Async access to the scepproxyd database; every method returns a Deferred.

    Call ``Store.migrate(path)`` once before ``start()``; ``start()`` refuses
    a database whose schema is not exactly the one this code knows.
    """


__all__ = [
    "CA_REQUEST_STATUSES",
    "CERTIFICATE_STATUSES",
    "COMMAND_STATUSES",
    "END_USER_FIELDS",
    "HOST_PROFILE_STATUSES",
    "PLATFORMS",
    "PROFILE_KINDS",
    "STATUS_FILTERS",
    "AgentCredential",
    "AgentIdentity",
    "AlreadyAnswered",
    "CaRequest",
    "CertificateAuthority",
    "ChallengeRefusal",
    "ClaimResult",
    "Command",
    "CustomSecret",
    "ConsumedChallenge",
    "DuplicateError",
    "Host",
    "HostProfile",
    "IdentifierInUseError",
    "InUseError",
    "IssuedCertificate",
    "NotFoundError",
    "PlatformMismatchError",
    "Profile",
    "ProxyTarget",
    "RaIdentityRecord",
    "RenderInputs",
    "RenderJob",
    "SecretInUseError",
    "StateError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "new_renewal_id",
]
