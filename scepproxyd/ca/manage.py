"""What an admin does to the built-in CA: approve, reject, revoke, mint one-time challenges.

Kept apart from the SCEP message handling so that the admin API and the CLI
share one set of rules and messages. A minted challenge is returned once to
the caller and otherwise exists only as its SHA-256 in the store; it is
never logged.
"""

from __future__ import annotations


from cryptography import x509

from scepproxyd.ca.authority import RefusedToIssue
from scepproxyd.ca.crl import REVOCATION_REASONS
from scepproxyd.ca.policy import challenge_hash
from scepproxyd.daemon.logs import get_logger
from scepproxyd.store import NotFoundError, StateError
from scepproxyd.store.models import mint_challenge

log = get_logger(__name__)

MAX_REASON_LENGTH = 500
#: A dynamic challenge lives at most this long; minting is for enrollments about to happen.
MAX_CHALLENGE_TTL = 30 * 86400.0


class ManageError(Exception):
    """A refused admin action; ``kind`` is "not_found", "conflict" or "invalid", ``field`` the input at fault."""

    def __init__(self, message: str, kind: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.field = field


class CaManager:
    def __init__(self, authority, store, templates: dict, default_ttl: float):
        self._ca = authority
        self._store = store
        self._templates = templates
        self._default_ttl = default_ttl

    async def approve(self, transaction_id: str):
        """Issue a pending request's certificate; the device picks it up with its next poll."""
        request = await self._store.get_ca_request(transaction_id)
        if request is None:
            raise ManageError("no request with transaction ID %r" % (transaction_id,), "not_found")
        if request.status != "pending":
            raise ManageError("request %s is %s, not pending" % (transaction_id, request.status), "conflict")
        if request.template not in self._templates:
            raise ManageError("its certificate template %r no longer exists" % (request.template,), "conflict")
        csr = x509.load_der_x509_csr(request.csr)
        try:
            await self._ca.issue(csr, request.template, request, approve=True)
        except RefusedToIssue as e:
            raise ManageError("request %s cannot be issued: %s" % (transaction_id, e), "conflict") from None
        except StateError as e:
            raise ManageError("request %s is %s, not pending" % (transaction_id, e.status), "conflict") from None
        self._ca.outcomes["issued"] += 1
        approved = await self._store.get_ca_request(transaction_id)
        log.info("ca admin approved {transaction_id}: serial={serial}", transaction_id=transaction_id,
                 serial=approved.issued_serial)
        return approved

    async def reject(self, transaction_id: str, reason: str | None):
        reason = _reason_text(reason) or "rejected by the CA's administrator"
        try:
            request = await self._store.reject_ca_request(transaction_id, reason)
        except NotFoundError:
            raise ManageError("no request with transaction ID %r" % (transaction_id,), "not_found") from None
        except StateError as e:
            raise ManageError("request %s is %s, not pending" % (transaction_id, e.status), "conflict") from None
        self._ca.outcomes["rejected"] += 1
        log.info("ca admin rejected {transaction_id}", transaction_id=transaction_id)
        return request

    async def revoke(self, serial: str, reason: str | None):
        reason = reason or "unspecified"
        if reason not in REVOCATION_REASONS:
            raise ManageError("reason must be one of %s" % (", ".join(REVOCATION_REASONS),), "invalid", "reason")
        serial = serial.lower().replace(":", "").lstrip("0") or "0"
        try:
            record = await self._store.revoke_certificate(serial, reason)
        except NotFoundError:
            raise ManageError("no certificate with serial %s" % (serial,), "not_found") from None
        except StateError:
            raise ManageError("certificate %s is revoked already" % (serial,), "conflict") from None
        self._ca.crl.invalidate()
        log.info("ca admin revoked {serial} ({reason})", serial=serial, reason=reason)
        return record

    async def new_challenge(self, template: str | None, ttl: float | None):
        """A one-time challenge for ``template``; fires ``(challenge, expires_at)``."""
        template = template or self._ca.default_template
        if template not in self._templates:
            raise ManageError(
                "template must be one of %s" % (", ".join(sorted(self._templates)),), "invalid", "template"
            )
        ttl = self._default_ttl if ttl is None else ttl
        if not 0 < ttl <= MAX_CHALLENGE_TTL:
            raise ManageError("ttl must be more than 0 and at most 30 days (in seconds)", "invalid", "ttl")
        challenge = mint_challenge()
        expires_at = await self._store.add_ca_challenge(challenge_hash(challenge), template, ttl)
        log.info("ca admin minted a one-time challenge for template {template}, expires {expires_at}",
                 template=template, expires_at=expires_at)
        return challenge, expires_at


def _reason_text(reason: str | None) -> str | None:
    if reason is None:
        return None
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON_LENGTH:
        raise ManageError("reason must be at most %d characters" % (MAX_REASON_LENGTH,), "invalid", "reason")
    return reason or None
