"""Admin API routes for custom secrets (``$FLEET_SECRET_<NAME>`` in profiles): set, list, show, delete.

A value goes in sealed with the daemon's key (the cipher of CA static
challenges) and never comes out: answers and logs carry names, dates and the
profiles that use a secret, never a value. Setting a new value sends again
every host profile that renders it; setting the same value sends nothing.
The contract is in docs/admin-api.md.
"""

from scepproxyd import admin
from scepproxyd.daemon.logs import get_logger
from scepproxyd.keys import KeyFileError
from scepproxyd.store import SecretInUseError
from scepproxyd.timestamps import utc_iso_or_none as _time
from scepproxyd.web.api import Conflict, Invalid, NotFound, json_body, refusing

log = get_logger(__name__)

_rules = refusing(admin.InvalidAdminInput, lambda e: Invalid(e.message, field=e.field))


def secret_json(secret, profiles=None) -> dict:
    body = {"name": secret.name, "created_at": _time(secret.created_at), "updated_at": _time(secret.updated_at)}
    if profiles is not None:
        body["profiles"] = profiles
    return body


class SecretRoutes:
    def __init__(self, store, cipher):
        self._store = store
        self._cipher = cipher

    def routes(self):
        one = r"/api/v1/secrets/(?P<name>[^/]+)"
        return [
            ("GET", r"/api/v1/secrets", self.list),
            ("GET", one, self.show),
            ("PUT", one, self.put),
            ("DELETE", one, self.delete),
        ]

    async def list(self, request):
        return {"secrets": [secret_json(secret) for secret in await self._store.list_secrets()]}

    async def show(self, request, name):
        secret = await self._store.get_secret(name)
        if secret is None:
            raise NotFound("no secret %r" % (name,))
        return secret_json(secret, await self._store.profiles_using_secret(name))

    @_rules
    async def put(self, request, name):
        admin.check_secret_name(name)
        body = json_body(request)
        unknown = sorted(set(body) - {"value"})
        if unknown:
            raise Invalid("unknown field %s; a secret has only a value" % (unknown[0],), field=unknown[0])
        value = admin.check_secret_value(body.get("value"))
        existing = await self._store.get_secret(name)
        if existing is not None and self._same_value(existing, value):
            return 200, dict(secret_json(existing), changed=False, resent=0)
        created = await self._store.put_secret(name, self._cipher.encrypt(value))
        resent = 0 if created else await self._store.resend_for_secret(name)
        log.info("admin {verb} secret {name}; {resent} host profiles sent again",
                 verb="added" if created else "changed", name=name, resent=resent)
        return 201 if created else 200, dict(secret_json(await self._store.get_secret(name)), changed=True, resent=resent)

    def _same_value(self, existing, value: str) -> bool:
        """Whether ``existing`` holds ``value``; one that no longer opens (the key file was replaced) does not."""
        try:
            return self._cipher.decrypt(existing.value_ciphertext) == value
        except KeyFileError:
            return False

    async def delete(self, request, name):
        try:
            deleted = await self._store.delete_secret(name)
        except SecretInUseError as e:
            raise Conflict("secret %s is used by profiles: %s; change or delete them first"
                           % (name, ", ".join(e.profiles)), field="name") from None
        if not deleted:
            raise NotFound("no secret %r" % (name,))
        log.info("admin deleted secret {name}", name=name)
        return 204, None
