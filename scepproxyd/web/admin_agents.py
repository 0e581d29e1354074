"""Admin API routes for per-host agent credentials: issue (or rotate), show, revoke, list, bulk issue.

A credential appears in exactly one answer, the one that issues it; after
that only its dates are shown. Logs name the host, never the credential.
The contract is in docs/admin-api.md.
"""

from scepproxyd.agent_credentials import new_agent_credential
from scepproxyd.daemon.logs import get_logger
from scepproxyd.platforms import PLATFORMS
from scepproxyd.store import NotFoundError
from scepproxyd.timestamps import utc_iso_or_none as _time
from scepproxyd.web.api import Invalid, NotFound, Page, field, json_body, one_of, query_choice

log = get_logger(__name__)


def credential_json(host_uuid: str, credential) -> dict:
    if credential is None:
        return {"host_uuid": host_uuid, "issued": False, "created_at": None, "last_used_at": None}
    return {
        "host_uuid": host_uuid,
        "issued": True,
        "created_at": _time(credential.created_at),
        "last_used_at": _time(credential.last_used_at),
    }


class AgentCredentialRoutes:
    def __init__(self, store):
        self._store = store

    def routes(self):
        one = r"/api/v1/hosts/(?P<uuid>[^/]+)/agent-credential"
        return [
            ("POST", one, self.issue),
            ("GET", one, self.show),
            ("DELETE", one, self.revoke),
            ("GET", r"/api/v1/agent-credentials", self.list),
            ("POST", r"/api/v1/agent-credentials", self.issue_bulk),
        ]

    async def issue(self, request, uuid):
        token, token_hash = new_agent_credential()
        try:
            credential, replaced = await self._store.set_agent_credential(uuid, token_hash)
        except NotFoundError:
            raise NotFound("no host %r" % (uuid,)) from None
        log.info(
            "admin {verb} the agent credential of host {host}", verb="replaced" if replaced else "issued", host=uuid,
        )
        return (201, {
            "host_uuid": uuid, "token": token, "created_at": _time(credential.created_at), "replaced": replaced,
        })

    async def show(self, request, uuid):
        if await self._store.get_host(uuid) is None:
            raise NotFound("no host %r" % (uuid,))
        return credential_json(uuid, await self._store.agent_credential(uuid))

    async def revoke(self, request, uuid):
        if await self._store.get_host(uuid) is None:
            raise NotFound("no host %r" % (uuid,))
        if not await self._store.revoke_agent_credential(uuid):
            raise NotFound("host %r has no agent credential" % (uuid,))
        log.info("admin revoked the agent credential of host {host}", host=uuid)
        return (204, None)

    async def list(self, request):
        platform = query_choice(request, "platform", PLATFORMS)
        page = Page(request, "agent_credentials", 1)
        rows = await self._store.list_agent_credentials(platform, after=page.after, limit=page.limit + 1)
        return page.answer(rows, lambda row: (row.host_uuid,), lambda row: credential_json(row.host_uuid, row))

    async def issue_bulk(self, request):
        body = json_body(request)
        hosts = field(body, "hosts", kind=list, required=False)
        platform = field(body, "platform", required=False)
        every = field(body, "all", kind=bool, required=False, default=False)
        rotate = field(body, "rotate", kind=bool, required=False, default=False)
        if sum((hosts is not None, platform is not None, every)) != 1:
            raise Invalid("give one of hosts (a list of host UUIDs), platform, or all: true", field="hosts")
        if hosts is not None and (not hosts or not all(isinstance(h, str) and h for h in hosts)):
            raise Invalid("hosts must be a non-empty list of host UUIDs", field="hosts")
        one_of(platform, "platform", PLATFORMS)
        try:
            selected, kept = await self._store.hosts_for_agent_credentials(hosts, platform, rotate)
        except NotFoundError as e:
            raise Invalid(str(e), field="hosts") from None
        tokens = {uuid: new_agent_credential() for uuid in selected}
        written = await self._store.set_agent_credentials(
            [(uuid, token_hash) for uuid, (_, token_hash) in tokens.items()], rotate=rotate,
        )
        issued = [
            {"host_uuid": uuid, "token": tokens[uuid][0], "created_at": _time(written[uuid])}
            for uuid in selected if uuid in written
        ]
        log.info(
            "admin issued {count} agent credentials in bulk ({replaced}; {kept} hosts kept theirs)",
            count=len(issued), replaced="replacing any" if rotate else "new only", kept=kept,
        )
        return {"issued": issued, "kept": kept + len(selected) - len(issued) if not rotate else 0}
