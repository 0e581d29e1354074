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

from scepproxyd.store.database import one
from scepproxyd.store.models import DuplicateError, NotFoundError, StoreError

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


_CERT_COLUMNS = (
    "serial, subject, not_before, not_after, status, revoked_at, revocation_reason,"
    " requester, transaction_id, template, renewal_of, der, created_at, sender_nonce"
)
_REQUEST_COLUMNS = (
    "transaction_id, status, subject, csr, signer_certificate, requester, template, detail,"
    " issued_serial, created_at, updated_at, sender_nonce"
)
# A new request under a known transaction ID replaces it only once that one is finished.
_UPSERT_REQUEST = (
    f"INSERT INTO ca_requests ({_REQUEST_COLUMNS}) VALUES ({', '.join('?' * 12)})"
    " ON CONFLICT (transaction_id) DO UPDATE SET status = excluded.status, subject = excluded.subject,"
    " csr = excluded.csr, signer_certificate = excluded.signer_certificate, requester = excluded.requester,"
    " template = excluded.template, detail = excluded.detail, issued_serial = excluded.issued_serial,"
    " created_at = excluded.created_at, updated_at = excluded.updated_at, sender_nonce = excluded.sender_nonce"
    " WHERE ca_requests.status IN ('issued', 'rejected') RETURNING transaction_id"
)


def _insert_certificate(conn, cert: IssuedCertificate) -> None:
    if conn.execute("SELECT 1 FROM issued_certificates WHERE serial = ?", (cert.serial,)).fetchone():
        raise DuplicateError(f"a certificate with serial {cert.serial} was issued already")
    conn.execute(
        f"INSERT INTO issued_certificates ({_CERT_COLUMNS}) VALUES ({', '.join('?' * 14)})",
        attrs.astuple(cert),
    )


def _save_request(conn, request: CaRequest) -> None:
    if conn.execute(_UPSERT_REQUEST, attrs.astuple(request)).fetchone() is None:
        raise DuplicateError(f"transaction {request.transaction_id} is still open")


def _check_status(value, allowed, what) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


class CaAuthorityQueries:
    # -- issuing -------------------------------------------------------------

    def record_issued(self, request: CaRequest, certificate: IssuedCertificate) -> defer.Deferred:
        """
        Keep a certificate issued at once, with its transaction; one store transaction.

        DuplicateError if the transaction ID belongs to a request still
        pending or approved: the caller looked it up first, so this is a
        concurrent duplicate and must not end up with two certificates.
        """

        def record_issued(conn):
            _save_request(conn, request)
            _insert_certificate(conn, certificate)

        return self._submit(record_issued)

    def add_pending_request(self, request: CaRequest) -> defer.Deferred:
        """Keep a request that waits for an admin; DuplicateError as for ``record_issued``."""

        def add_pending_request(conn):
            _save_request(conn, request)

        return self._submit(add_pending_request)

    def nonce_answered(self, sender_nonce: str) -> defer.Deferred:
        """Whether a certificate was issued for the request message with this senderNonce (a replay)."""

        def nonce_answered(conn):
            return conn.execute(
                "SELECT 1 FROM issued_certificates WHERE sender_nonce = ?", (sender_nonce,)
            ).fetchone() is not None

        return self._submit(nonce_answered, write=False)

    def get_ca_request(self, transaction_id) -> defer.Deferred:
        def get_ca_request(conn):
            return one(
                CaRequest,
                conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM ca_requests WHERE transaction_id = ?", (transaction_id,)),
            )

        return self._submit(get_ca_request, write=False)

    def list_ca_requests(self, status=None) -> defer.Deferred:
        """Requests, newest first; ``status`` narrows to one of CA_REQUEST_STATUSES."""
        _check_status(status, CA_REQUEST_STATUSES, "status")

        def list_ca_requests(conn):
            where, params = ("WHERE status = ?", (status,)) if status else ("", ())
            return [
                CaRequest(*row)
                for row in conn.execute(
                    f"SELECT {_REQUEST_COLUMNS} FROM ca_requests {where} ORDER BY created_at DESC, transaction_id",
                    params,
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

        return self._submit(ca_request_delivered)

    # -- certificates --------------------------------------------------------

    def get_issued_certificate(self, serial) -> defer.Deferred:
        def get_issued_certificate(conn):
            return one(
                IssuedCertificate,
                conn.execute(f"SELECT {_CERT_COLUMNS} FROM issued_certificates WHERE serial = ?", (serial,)),
            )

        return self._submit(get_issued_certificate, write=False)

    def list_issued_certificates(self, status=None) -> defer.Deferred:
        """Issued certificates, newest first; ``status`` is 'valid' or 'revoked'."""
        _check_status(status, CERTIFICATE_STATUSES, "status")

        def list_issued_certificates(conn):
            where, params = ("WHERE status = ?", (status,)) if status else ("", ())
            return [
                IssuedCertificate(*row)
                for row in conn.execute(
                    f"SELECT {_CERT_COLUMNS} FROM issued_certificates {where} ORDER BY created_at DESC, serial",
                    params,
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

    def consume_ca_challenge(self, challenge_hash: str) -> defer.Deferred:
        """
        Use up a dynamic challenge: fires its template the first time, None after or once expired.

        One statement, so of any number of concurrent requests exactly one wins.
        """
        now = self._clock.seconds()

        def consume_ca_challenge(conn):
            rows = conn.execute(
                "DELETE FROM ca_challenges WHERE challenge_hash = ? RETURNING template, expires_at",
                (challenge_hash,),
            ).fetchall()  # fetched before the COMMIT that _run issues
            if rows and rows[0][1] > now:
                return rows[0][0]
            return None

        return self._submit(consume_ca_challenge)

    # -- the profile engine --------------------------------------------------

    def host_for_renewal_id(self, renewal_id) -> defer.Deferred:
        """The host UUID whose host profile carries this renewal ID, or None."""

        def host_for_renewal_id(conn):
            row = conn.execute("SELECT host_uuid FROM host_profiles WHERE renewal_id = ?", (renewal_id,)).fetchone()
            return None if row is None else row[0]

        return self._submit(host_for_renewal_id, write=False)

    def register_managed_ca(self, name, url, challenge_ciphertext) -> defer.Deferred:
        """Create or refresh the CA integration row of the built-in CA (its URL and sealed static challenge)."""
        now = self._clock.seconds()

        def register_managed_ca(conn):
            conn.execute(
                "INSERT INTO cas (name, url, challenge_ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET url = excluded.url,"
                " challenge_ciphertext = excluded.challenge_ciphertext, updated_at = excluded.updated_at",
                (name, url, challenge_ciphertext, now, now),
            )

        return self._submit(register_managed_ca)


def _refuse_not_pending(conn, transaction_id) -> None:
    found = conn.execute("SELECT status FROM ca_requests WHERE transaction_id = ?", (transaction_id,)).fetchone()
    if found is None:
        raise NotFoundError(f"no request with transaction ID {transaction_id}")
    raise StateError(f"request {transaction_id} is {found[0]}, not pending", found[0])
