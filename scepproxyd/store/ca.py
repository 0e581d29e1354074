"""
The built-in CA's records: issued certificates, request transactions, one-time challenges.

Issuing is recorded in the same transaction as the request it answers, so
a certificate never exists without its transaction and a transaction never
claims a certificate that was not kept. Dynamic challenges are stored only
as SHA-256 hashes and consumed with one ``DELETE ... RETURNING``.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer


from scepproxyd.store.assignments import count_failed_attempt
from scepproxyd.profiles.model import EndUser
from scepproxyd.store.database import IntegrityError, keyset, one, order_by
from scepproxyd.store.end_users import read_end_user
from scepproxyd.store.models import DuplicateError, NotFoundError, StoreError, check_filter

CERTIFICATE_STATUSES = ("valid", "revoked")
CA_REQUEST_STATUSES = ("pending", "approved", "rejected", "issued")


class StateError(StoreError):
    """The row exists but is not in a state that allows the change; ``status`` is its current one."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


@attrs.frozen
class IssuedCertificate:
    serial: str
    subject: str
    not_before: float
    not_after: float
    status: str
    revoked_at: float | None
    revocation_reason: str | None
    requester: str | None
    transaction_id: str | None
    template: str
    renewal_of: str | None
    der: bytes = attrs.field(repr=False)
    created_at: float
    sender_nonce: str | None = None
    #: The host profile whose one-time challenge authorised it; None for static or admin-minted challenges.
    host_uuid: str | None = None
    profile_uuid: str | None = None


@attrs.frozen
class CaRequest:
    transaction_id: str
    status: str
    subject: str
    csr: bytes = attrs.field(repr=False)
    signer_certificate: bytes | None = attrs.field(repr=False)
    requester: str | None
    template: str
    detail: str | None
    issued_serial: str | None
    created_at: float
    updated_at: float
    sender_nonce: str | None = None
    host_uuid: str | None = None
    profile_uuid: str | None = None
    #: The CertRep that answered the message with ``sender_nonce`` by issuing at once (see schema 0010).
    answer: bytes | None = attrs.field(default=None, repr=False)


class AlreadyAnswered(StoreError):
    """A certificate was issued already for the request message with this senderNonce (a concurrent replay)."""


@attrs.frozen
class CaGrant:
    """What a spent one-time CA challenge authorised: a template, and the host profile it was rendered for."""

    template: str
    host_uuid: str | None
    profile_uuid: str | None


@attrs.frozen
class BindingFacts:
    """What the CA needs to know of a host profile to judge a CSR against it."""

    host_uuid: str
    profile_uuid: str
    serial: str | None
    platform: str
    kind: str
    content: bytes = attrs.field(repr=False)
    renewal_id: str
    status: str | None
    #: The host's end user (IdP attributes the end-user variables render), None when none is recorded.
    end_user: EndUser | None = None


#: Sort keys of the request and certificate lists, newest first (keyset pagination).
REQUEST_ORDER = (("created_at", True), ("transaction_id", False))
CERTIFICATE_ORDER = (("created_at", True), ("serial", False))
_CERT_COLUMNS = (
    "serial, subject, not_before, not_after, status, revoked_at, revocation_reason,"
    " requester, transaction_id, template, renewal_of, der, created_at, sender_nonce, host_uuid, profile_uuid"
)
_REQUEST_COLUMNS = (
    "transaction_id, status, subject, csr, signer_certificate, requester, template, detail,"
    " issued_serial, created_at, updated_at, sender_nonce, host_uuid, profile_uuid, answer"
)
# A certificate the CA issued for a host profile lands there at once, on
# that host profile only; dates never move backwards. An awaiting host
# profile becomes verified, as when its device reports the certificate.
RECORD_ON_HOST_PROFILE = (
    "UPDATE host_profiles SET cert_serial = ?, cert_not_before = ?, cert_not_after = ?,"
    " status = CASE WHEN status IN ('pending', 'verifying') THEN 'verified' ELSE status END, updated_at = ?"
    " WHERE host_uuid = ? AND profile_uuid = ? AND (cert_not_before IS NULL OR cert_not_before < ?)"
)
# A new request under a known transaction ID replaces it only once that one is finished.
_UPSERT_REQUEST = (
    f"INSERT INTO ca_requests ({_REQUEST_COLUMNS}) VALUES ({', '.join('?' * 15)})"
    " ON CONFLICT (transaction_id) DO UPDATE SET status = excluded.status, subject = excluded.subject,"
    " csr = excluded.csr, signer_certificate = excluded.signer_certificate, requester = excluded.requester,"
    " template = excluded.template, detail = excluded.detail, issued_serial = excluded.issued_serial,"
    " created_at = excluded.created_at, updated_at = excluded.updated_at, sender_nonce = excluded.sender_nonce,"
    " host_uuid = excluded.host_uuid, profile_uuid = excluded.profile_uuid, answer = excluded.answer"
    " WHERE ca_requests.status IN ('issued', 'rejected') RETURNING transaction_id"
)


def _insert_certificate(conn, cert: IssuedCertificate) -> None:
    if conn.execute("SELECT 1 FROM issued_certificates WHERE serial = ?", (cert.serial,)).fetchone():
        raise DuplicateError(f"a certificate with serial {cert.serial} was issued already")
    conn.execute(
        f"INSERT INTO issued_certificates ({_CERT_COLUMNS}) VALUES ({', '.join('?' * 16)})",
        attrs.astuple(cert),
    )
    if cert.host_uuid is not None:
        conn.execute(
            RECORD_ON_HOST_PROFILE,
            (cert.serial, cert.not_before, cert.not_after, cert.created_at, cert.host_uuid, cert.profile_uuid,
             cert.not_before),
        )


class ChallengeSpent(StoreError):
    """The one-time CA challenge a request was judged under was spent by another request meanwhile."""


def _spend_challenge(conn, challenge_hash: str | None) -> None:
    """Spend a one-time CA challenge in the caller's transaction; ChallengeSpent if it is gone."""
    if challenge_hash is None:
        return
    if conn.execute("DELETE FROM ca_challenges WHERE challenge_hash = ?", (challenge_hash,)).rowcount != 1:
        raise ChallengeSpent("the one-time challenge was spent meanwhile")


def _save_request(conn, request: CaRequest) -> None:
    if conn.execute(_UPSERT_REQUEST, attrs.astuple(request)).fetchone() is None:
        raise DuplicateError(f"transaction {request.transaction_id} is still open")


class CaAuthorityQueries:
    # -- issuing -------------------------------------------------------------

    def record_issued(self, request: CaRequest, certificate: IssuedCertificate,
                      spend_challenge: str | None = None) -> defer.Deferred:
        """
        Keep a certificate issued at once, with its transaction and the answer (``request.answer``); one store transaction.

        DuplicateError if the transaction ID belongs to a request still
        pending or approved; AlreadyAnswered if a certificate was issued for
        the same request message (senderNonce) meanwhile. The caller looked
        both up first, so either is a concurrent duplicate and must not end
        up with two certificates. ``spend_challenge`` (a one-time CA
        challenge's hash) is spent in the same transaction, so a crash
        leaves the challenge usable or the certificate issued, never
        neither; ChallengeSpent if another request spent it meanwhile.
        """

        def record_issued(conn):
            _spend_challenge(conn, spend_challenge)
            if certificate.sender_nonce is not None and conn.execute(
                "SELECT 1 FROM issued_certificates WHERE sender_nonce = ?", (certificate.sender_nonce,)
            ).fetchone():
                raise AlreadyAnswered(f"a certificate was issued for message {certificate.sender_nonce} already")
            _save_request(conn, request)
            _insert_certificate(conn, certificate)

        return self._submit(record_issued, group=True)

    def add_pending_request(self, request: CaRequest, spend_challenge: str | None = None) -> defer.Deferred:
        """Keep a request that waits for an admin; DuplicateError and ``spend_challenge`` as for ``record_issued``."""

        def add_pending_request(conn):
            _spend_challenge(conn, spend_challenge)
            _save_request(conn, request)

        return self._submit(add_pending_request, group=True)

    def seen_request(self, transaction_id: str, sender_nonce: str) -> defer.Deferred:
        """
        ``(request, answered)``: the transaction with this ID (or None), and whether a certificate was
        issued for the request message with this senderNonce; read together in one look.

        One look, so a copy of a message sent twice at once never sees its
        twin's certificate without the twin's transaction (the two are
        written in one store transaction).
        """

        def seen_request(conn):
            request = one(
                CaRequest,
                conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM ca_requests WHERE transaction_id = ?", (transaction_id,)),
            )
            answered = conn.execute(
                "SELECT 1 FROM issued_certificates WHERE sender_nonce = ?", (sender_nonce,)
            ).fetchone() is not None
            return request, answered

        return self._submit(seen_request, write=False)

    def get_ca_request(self, transaction_id) -> defer.Deferred:
        def get_ca_request(conn):
            return one(
                CaRequest,
                conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM ca_requests WHERE transaction_id = ?", (transaction_id,)),
            )

        return self._submit(get_ca_request, write=False)

    def list_ca_requests(self, status=None, after=None, limit=None) -> defer.Deferred:
        """Requests, newest first; ``status`` narrows to one of CA_REQUEST_STATUSES; ``after``/``limit`` page."""
        check_filter(status, CA_REQUEST_STATUSES, "status")

        def list_ca_requests(conn):
            where, params = keyset(REQUEST_ORDER, after)
            return [
                CaRequest(*row)
                for row in conn.execute(
                    f"SELECT {_REQUEST_COLUMNS} FROM ca_requests WHERE (? IS NULL OR status = ?) AND {where}"
                    f" ORDER BY {order_by(REQUEST_ORDER)} LIMIT ?",
                    (status, status, *params, -1 if limit is None else limit),
                )
            ]

        return self._submit(list_ca_requests, write=False)

    def approve_ca_request(self, transaction_id, certificate: IssuedCertificate) -> defer.Deferred:
        """
        A pending request approved: keep its certificate and mark it approved (awaiting CertPoll).

        NotFoundError if there is no such transaction; StateError if it is
        not pending any more (another admin got there first), in which case
        the certificate is not kept.
        """
        now = self._clock.seconds()

        def approve_ca_request(conn):
            updated = conn.execute(
                "UPDATE ca_requests SET status = 'approved', issued_serial = ?, detail = NULL, updated_at = ?"
                " WHERE transaction_id = ? AND status = 'pending' RETURNING transaction_id",
                (certificate.serial, now, transaction_id),
            ).fetchone()
            if updated is None:
                _refuse_not_pending(conn, transaction_id)
            _insert_certificate(conn, certificate)
            return one(
                CaRequest,
                conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM ca_requests WHERE transaction_id = ?", (transaction_id,)),
            )

        return self._submit(approve_ca_request)

    def reject_ca_request(self, transaction_id, reason) -> defer.Deferred:
        """A pending request refused; NotFoundError or StateError as for approval."""
        now = self._clock.seconds()

        def reject_ca_request(conn):
            row = one(
                CaRequest,
                conn.execute(
                    "UPDATE ca_requests SET status = 'rejected', detail = ?, updated_at = ?"
                    f" WHERE transaction_id = ? AND status = 'pending' RETURNING {_REQUEST_COLUMNS}",
                    (reason, now, transaction_id),
                ),
            )
            if row is None:
                _refuse_not_pending(conn, transaction_id)
            return row

        return self._submit(reject_ca_request)

    def ca_request_delivered(self, transaction_id) -> defer.Deferred:
        """An approved request's certificate reached its device: approved -> issued; fires whether it changed."""
        now = self._clock.seconds()

        def ca_request_delivered(conn):
            return conn.execute(
                "UPDATE ca_requests SET status = 'issued', updated_at = ? WHERE transaction_id = ? AND status = 'approved'",
                (now, transaction_id),
            ).rowcount == 1

        return self._submit(ca_request_delivered, group=True)

    # -- certificates --------------------------------------------------------

    def get_issued_certificate(self, serial) -> defer.Deferred:
        def get_issued_certificate(conn):
            return one(
                IssuedCertificate,
                conn.execute(f"SELECT {_CERT_COLUMNS} FROM issued_certificates WHERE serial = ?", (serial,)),
            )

        return self._submit(get_issued_certificate, write=False)

    def list_issued_certificates(self, status=None, after=None, limit=None) -> defer.Deferred:
        """Issued certificates, newest first; ``status`` is 'valid' or 'revoked'; ``after``/``limit`` page."""
        check_filter(status, CERTIFICATE_STATUSES, "status")

        def list_issued_certificates(conn):
            where, params = keyset(CERTIFICATE_ORDER, after)
            return [
                IssuedCertificate(*row)
                for row in conn.execute(
                    f"SELECT {_CERT_COLUMNS} FROM issued_certificates WHERE (? IS NULL OR status = ?) AND {where}"
                    f" ORDER BY {order_by(CERTIFICATE_ORDER)} LIMIT ?",
                    (status, status, *params, -1 if limit is None else limit),
                )
            ]

        return self._submit(list_issued_certificates, write=False)

    def revoke_certificate(self, serial, reason) -> defer.Deferred:
        """Mark a certificate revoked now; NotFoundError, or StateError if it is revoked already."""
        now = self._clock.seconds()

        def revoke_certificate(conn):
            row = one(
                IssuedCertificate,
                conn.execute(
                    "UPDATE issued_certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ?"
                    f" WHERE serial = ? AND status = 'valid' RETURNING {_CERT_COLUMNS}",
                    (now, reason, serial),
                ),
            )
            if row is None:
                found = conn.execute("SELECT status FROM issued_certificates WHERE serial = ?", (serial,)).fetchone()
                if found is None:
                    raise NotFoundError(f"no certificate with serial {serial}")
                raise StateError(f"certificate {serial} is revoked already", found[0])
            return row

        return self._submit(revoke_certificate)

    def revoked_certificates(self) -> defer.Deferred:
        """``(serial, revoked_at, reason)`` of every revoked certificate, for the CRL."""

        def revoked_certificates(conn):
            return conn.execute(
                "SELECT serial, revoked_at, revocation_reason FROM issued_certificates"
                " WHERE status = 'revoked' ORDER BY revoked_at, serial"
            ).fetchall()

        return self._submit(revoked_certificates, write=False)

    def revocation_mark(self) -> defer.Deferred:
        """``(count, latest revoked_at)`` of revoked certificates: changes with every revocation, on any node."""

        def revocation_mark(conn):
            count, latest = conn.execute(
                "SELECT COUNT(*), MAX(revoked_at) FROM issued_certificates WHERE status = 'revoked'"
            ).fetchone()
            return int(count), latest

        return self._submit(revocation_mark, write=False)

    def ca_statistics(self) -> defer.Deferred:
        """Counts of requests and certificates by status, for the admin's overview."""

        def ca_statistics(conn):
            requests = dict.fromkeys(CA_REQUEST_STATUSES, 0)
            requests.update(conn.execute("SELECT status, COUNT(*) FROM ca_requests GROUP BY status"))
            certificates = dict.fromkeys(CERTIFICATE_STATUSES, 0)
            certificates.update(conn.execute("SELECT status, COUNT(*) FROM issued_certificates GROUP BY status"))
            return {"requests": requests, "certificates": certificates}

        return self._submit(ca_statistics, write=False)

    # -- one-time challenges -------------------------------------------------

    def add_ca_challenge(self, challenge_hash: str, template: str, ttl: float) -> defer.Deferred:
        """Keep the hash of a newly minted challenge; expired ones are swept in the same transaction."""
        now = self._clock.seconds()

        def add_ca_challenge(conn):
            conn.execute("DELETE FROM ca_challenges WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO ca_challenges (challenge_hash, template, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (challenge_hash, template, now, now + ttl),
            )
            return now + ttl

        return self._submit(add_ca_challenge)

    def issue_host_profile_ca_challenge(self, host_uuid, profile_uuid, challenge_hash: str,
                                        template: str) -> defer.Deferred:
        """
        Keep the hash of the one-time CA challenge rendered into a host profile's profile.

        The host profile's older CA challenges are retired in the same
        transaction, so only the newest rendered copy can enroll; it lives
        as long as the proxy's one-time challenges. NotFoundError if the
        host profile does not exist.
        """
        now = self._clock.seconds()

        def issue_host_profile_ca_challenge(conn):
            conn.execute("DELETE FROM ca_challenges WHERE host_uuid = ? AND profile_uuid = ?", (host_uuid, profile_uuid))
            try:
                conn.execute(
                    "INSERT INTO ca_challenges (challenge_hash, template, created_at, expires_at, host_uuid, profile_uuid)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (challenge_hash, template, now, now + self._challenge_ttl, host_uuid, profile_uuid),
                )
            except IntegrityError as e:
                raise NotFoundError(f"no profile {profile_uuid} assigned to host {host_uuid}") from e
            return now + self._challenge_ttl

        return self._submit(issue_host_profile_ca_challenge)

    def peek_ca_challenge(self, challenge_hash: str) -> defer.Deferred:
        """
        What a live one-time CA challenge would authorise (a CaGrant), without spending it; None if gone or expired.

        The CA judges a request under this grant, then spends the challenge
        in the transaction that records the outcome (``spend_challenge``).
        """
        now = self._clock.seconds()

        def peek_ca_challenge(conn):
            return _peek_ca_challenge(conn, challenge_hash, now)

        return self._submit(peek_ca_challenge, write=False)

    def peek_ca_grant(self, challenge_hash: str) -> defer.Deferred:
        """
        ``(grant, facts)``: ``peek_ca_challenge``, and for a challenge rendered into a host profile that
        host profile's ``binding_facts`` (None if it is gone), in one look; ``(None, None)`` when the
        challenge is gone or expired.

        The CA needs both to judge a request bound to a host profile; one
        DB-thread job instead of two saves a round trip per enrollment.
        """
        now = self._clock.seconds()

        def peek_ca_grant(conn):
            grant = _peek_ca_challenge(conn, challenge_hash, now)
            if grant is None or grant.host_uuid is None:
                return grant, None
            return grant, _binding_facts(conn, grant.host_uuid, grant.profile_uuid)

        return self._submit(peek_ca_grant, write=False)

    def consume_ca_challenge(self, challenge_hash: str) -> defer.Deferred:
        """
        Use up a one-time CA challenge: fires a CaGrant the first time, None after or once expired.

        One statement, so of any number of concurrent requests exactly one wins.
        """
        now = self._clock.seconds()

        def consume_ca_challenge(conn):
            rows = conn.execute(
                "DELETE FROM ca_challenges WHERE challenge_hash = ?"
                " RETURNING template, expires_at, host_uuid, profile_uuid",
                (challenge_hash,),
            ).fetchall()  # fetched before the COMMIT that _run issues
            if rows and rows[0][1] > now:
                template, _expires_at, host_uuid, profile_uuid = rows[0]
                return CaGrant(template, host_uuid, profile_uuid)
            return None

        return self._submit(consume_ca_challenge, group=True)

    # -- the profile engine --------------------------------------------------

    def binding_facts(self, host_uuid, profile_uuid) -> defer.Deferred:
        """The host profile's BindingFacts, or None if it is gone."""

        def binding_facts(conn):
            return _binding_facts(conn, host_uuid, profile_uuid)

        return self._submit(binding_facts, write=False)

    def ca_request_refused(self, host_uuid, profile_uuid, detail: str,
                           spend_challenge: str | None = None) -> defer.Deferred:
        """
        The CA refused a request its one-time challenge tied to this host profile.

        The challenge is spent, so a pending host profile goes back to NULL
        (retries + 1, ``detail`` kept) to be sent again with a fresh one;
        one in any other state is left alone. Fires whether it changed.
        """
        now = self._clock.seconds()

        def ca_request_refused(conn):
            try:
                _spend_challenge(conn, spend_challenge)
            except ChallengeSpent:
                return False  # another request spent it: that one's outcome stands
            return count_failed_attempt(
                conn, host_uuid, profile_uuid, detail, now, self._max_retries, " AND status = 'pending'"
            ) is not None

        return self._submit(ca_request_refused, group=True)

    def register_managed_ca(self, name, url) -> defer.Deferred:
        """
        Create or refresh the CA integration row of the built-in CA; fires whether it changed from a static challenge.

        The row is marked built-in and keeps no static challenge: profiles
        that name it are rendered with one-time CA challenges. True means
        the row carried a sealed static challenge until now (an upgrade),
        so the caller can say what changed.
        """
        now = self._clock.seconds()

        def register_managed_ca(conn):
            before = conn.execute("SELECT challenge_ciphertext FROM cas WHERE name = ?", (name,)).fetchone()
            conn.execute(
                "INSERT INTO cas (name, url, challenge_ciphertext, builtin, created_at, updated_at)"
                " VALUES (?, ?, NULL, 1, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET url = excluded.url, challenge_ciphertext = NULL, builtin = 1,"
                " updated_at = excluded.updated_at",
                (name, url, now, now),
            )
            return before is not None and before[0] is not None

        return self._submit(register_managed_ca, changes_targets=True)


def _peek_ca_challenge(conn, challenge_hash: str, now: float) -> CaGrant | None:
    row = conn.execute(
        "SELECT template, host_uuid, profile_uuid FROM ca_challenges WHERE challenge_hash = ? AND expires_at > ?",
        (challenge_hash, now),
    ).fetchone()
    return None if row is None else CaGrant(*row)


def _binding_facts(conn, host_uuid, profile_uuid) -> BindingFacts | None:
    facts = one(
        BindingFacts,
        conn.execute(
            "SELECT hp.host_uuid, hp.profile_uuid, h.serial, h.platform, p.kind, p.content, hp.renewal_id,"
            " hp.status FROM host_profiles hp JOIN hosts h ON h.uuid = hp.host_uuid"
            " JOIN profiles p ON p.uuid = hp.profile_uuid WHERE hp.host_uuid = ? AND hp.profile_uuid = ?",
            (host_uuid, profile_uuid),
        ),
    )
    return None if facts is None else attrs.evolve(facts, end_user=read_end_user(conn, host_uuid))


def _refuse_not_pending(conn, transaction_id) -> None:
    found = conn.execute("SELECT status FROM ca_requests WHERE transaction_id = ?", (transaction_id,)).fetchone()
    if found is None:
        raise NotFoundError(f"no request with transaction ID {transaction_id}")
    raise StateError(f"request {transaction_id} is {found[0]}, not pending", found[0])
