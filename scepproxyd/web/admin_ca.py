"""Admin API routes of the built-in CA (``/api/v1/ca/...``), and the guard on its CA row.

Minting a one-time challenge is the only place a challenge is ever shown,
to the admin who asked for it; the static challenge is never shown at all.
The CA integration row named by ``[ca] name`` belongs to the configuration,
so editing or deleting it through ``/api/v1/cas`` is refused with 409.
"""

from __future__ import annotations

from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization

from scepproxyd.ca.manage import ManageError
from scepproxyd.ca.material import fingerprint
from scepproxyd.config import parse_duration
from scepproxyd.store import CA_REQUEST_STATUSES, CERTIFICATE_STATUSES
from scepproxyd.timestamps import utc_iso, utc_iso_or_none as _time
from scepproxyd.web.api import Conflict, Invalid, NotFound, Page, field, json_body, query_choice, refusing

MANAGED = "managed by the [ca] section of the configuration"


def request_json(r) -> dict:
    return {
        "transaction_id": r.transaction_id, "status": r.status, "subject": r.subject, "requester": r.requester,
        "template": r.template, "detail": r.detail, "issued_serial": r.issued_serial,
        "created_at": _time(r.created_at), "updated_at": _time(r.updated_at),
    }


def certificate_json(c) -> dict:
    return {
        "serial": c.serial, "subject": c.subject, "not_before": _time(c.not_before), "not_after": _time(c.not_after),
        "status": c.status, "revoked_at": _time(c.revoked_at), "revocation_reason": c.revocation_reason,
        "requester": c.requester, "transaction_id": c.transaction_id, "template": c.template,
        "renewal_of": c.renewal_of, "host_uuid": c.host_uuid, "profile_uuid": c.profile_uuid,
        "created_at": _time(c.created_at),
    }


def _refusal(error: ManageError):
    if error.kind == "not_found":
        return NotFound(error.message)
    if error.kind == "conflict":
        return Conflict(error.message, field=error.field)
    return Invalid(error.message, field=error.field)


_managed = refusing(ManageError, _refusal)


def _ttl(body) -> float | None:
    value = body.get("ttl")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid("ttl must be seconds, or a duration like '1h'", field="ttl")
    try:
        return float(value) if not isinstance(value, str) else parse_duration(value)
    except ValueError:
        raise Invalid("ttl must be seconds, or a duration like '1h'", field="ttl") from None


class CaAdminRoutes:
    """Handlers for ``/api/v1/ca``; ``ca_name`` is the managed CA row to protect."""

    def __init__(self, authority, manager, store, ca_name: str):
        self._ca = authority
        self._manager = manager
        self._store = store
        self._ca_name = ca_name

    def routes(self):
        """Put these before the generic CA routes, so the managed row's guard matches first."""
        managed = r"/api/v1/cas/%s" % (self._ca_name,)
        return [
            ("PATCH", managed, self.refuse_managed),
            ("DELETE", managed, self.refuse_managed),
            ("GET", r"/api/v1/ca", self.show),
            ("GET", r"/api/v1/ca/requests", self.list_requests),
            ("POST", r"/api/v1/ca/requests/(?P<transaction_id>[^/]+)/approve", self.approve),
            ("POST", r"/api/v1/ca/requests/(?P<transaction_id>[^/]+)/reject", self.reject),
            ("GET", r"/api/v1/ca/certificates", self.list_certificates),
            ("POST", r"/api/v1/ca/certificates/(?P<serial>[^/]+)/revoke", self.revoke),
            ("POST", r"/api/v1/ca/challenges", self.new_challenge),
        ]

    async def refuse_managed(self, request):
        raise Conflict("CA %r is %s" % (self._ca_name, MANAGED), field="name")

    async def show(self, request):
        material = self._ca.material
        cert = material.certificate
        body = {
            "name": self._ca_name,
            "subject": cert.subject.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(timespec="seconds"),
            "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
            "fingerprint": fingerprint(cert),
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "ra": None,
            "crl_url": self._ca.crl_url,
            "enrollments": dict(self._ca.outcomes),
        }
        if material.ra_certificate is not None:
            body["ra"] = {
                "subject": material.ra_certificate.subject.rfc4514_string(),
                "fingerprint": fingerprint(material.ra_certificate),
                "certificate": material.ra_certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            }
        body.update(await self._store.ca_statistics())
        return body

    async def list_requests(self, request):
        status = query_choice(request, "status", CA_REQUEST_STATUSES)
        page = Page(request, "requests", 2)
        rows = await self._store.list_ca_requests(status, after=page.after, limit=page.limit + 1)
        return page.answer(rows, lambda r: (r.created_at, r.transaction_id), request_json)

    @_managed
    async def approve(self, request, transaction_id):
        # Transaction IDs are often base64 ("+", "/", "="), so clients path-escape them.
        return request_json(await self._manager.approve(unquote(transaction_id)))

    @_managed
    async def reject(self, request, transaction_id):
        body = json_body(request, required=False)
        reason = field(body, "reason", required=False)
        return request_json(await self._manager.reject(unquote(transaction_id), reason))

    async def list_certificates(self, request):
        status = query_choice(request, "status", CERTIFICATE_STATUSES)
        page = Page(request, "certificates", 2)
        rows = await self._store.list_issued_certificates(status, after=page.after, limit=page.limit + 1)
        return page.answer(rows, lambda c: (c.created_at, c.serial), certificate_json)

    @_managed
    async def revoke(self, request, serial):
        body = json_body(request, required=False)
        reason = field(body, "reason", required=False)
        return certificate_json(await self._manager.revoke(unquote(serial), reason))

    @_managed
    async def new_challenge(self, request):
        body = json_body(request, required=False)
        template = field(body, "template", required=False)
        challenge, expires_at = await self._manager.new_challenge(template, _ttl(body))
        return (201, {"challenge": challenge, "expires_at": utc_iso(expires_at), "template": template
                      or self._ca.default_template})
