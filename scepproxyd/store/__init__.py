"""
The SQLite store: schema, migrations and every SQL statement of scepproxyd.

``Store`` is one object for callers; its methods are grouped by subject in
the modules here (CAs, hosts, profiles, assignments, challenges) and all run
on the DB thread that ``database.Database`` owns. Every method returns a
Deferred; every write is one transaction, so a failed one leaves nothing behind.
"""

from scepproxyd.store.assignments import STATUS_FILTERS, AssignmentQueries
from scepproxyd.store.cas import CaQueries
from scepproxyd.store.challenges import ChallengeQueries
from scepproxyd.store.database import Database
from scepproxyd.store.hosts import HostQueries
from scepproxyd.store.models import (
    HOST_PROFILE_STATUSES,
    PLATFORMS,
    PROFILE_KINDS,
    CertificateAuthority,
    ConsumedChallenge,
    DuplicateError,
    Host,
    HostProfile,
    InUseError,
    NotFoundError,
    PlatformMismatchError,
    Profile,
    ProxyTarget,
    StoreError,
    new_renewal_id,
)
from scepproxyd.store.profiles import ProfileQueries


class Store(CaQueries, HostQueries, ProfileQueries, AssignmentQueries, ChallengeQueries, Database):
    """
    Async access to the scepproxyd database; every method returns a Deferred.

    Call ``Store.migrate(path)`` once before ``start()``; ``start()`` refuses
    a database whose schema is not exactly the one this code knows.
    """


__all__ = [
    "HOST_PROFILE_STATUSES",
    "PLATFORMS",
    "PROFILE_KINDS",
    "STATUS_FILTERS",
    "CertificateAuthority",
    "ConsumedChallenge",
    "DuplicateError",
    "Host",
    "HostProfile",
    "InUseError",
    "NotFoundError",
    "PlatformMismatchError",
    "Profile",
    "ProxyTarget",
    "Store",
    "StoreError",
    "new_renewal_id",
]
