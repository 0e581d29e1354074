"""The agent / MDM-facing API (outbox delivery), on the device-facing listener.

An agent on the host (or an MDM acting for it) polls for commands, installs
the rendered profile, then reports back: acknowledgement or error per
command, installed profiles, and the host's certificates. Rendering happens
on fetch, so the one-time challenge is minted when the device can use it.

Each agent's bearer credential is its host's own (scepproxyd.agent_credentials):
a path naming any other host is refused exactly like an unknown credential,
and every report touches only that host's host profiles.
"""

from twisted.web import resource

from scepproxyd.certificates import (
    MAX_CERTIFICATES_PER_REPORT,
    CertificateReportError,
    parse_certificate,
    split_pem_bundle,
)
from scepproxyd.agent_credentials import HostCredentials
from scepproxyd.delivery.render import HostProfileFailed
from scepproxyd.keys import tokens_match
from scepproxyd.daemon.logs import get_logger
from scepproxyd.store.models import StoreUnavailable
from scepproxyd.web.api import Invalid, JsonApi, NotFound, field, json_body
from scepproxyd.web.later import answer_later

log = get_logger(__name__)


def _command_json(rendered) -> dict:
    return {
        "command_uuid": rendered.command_uuid,
        "profile_uuid": rendered.profile_uuid,
        "kind": rendered.kind,
        "content_type": rendered.content_type,
        "payload": rendered.payload.decode("utf-8"),
    }


class AgentRoutes:
    def __init__(self, store, renderer, clock):
        self._store = store
        self._renderer = renderer
        self._clock = clock

    def routes(self):
        host = r"/api/v1/agent/hosts/(?P<host>[A-Za-z0-9._-]{1,255})"
        return [
            ("GET", host + r"/commands", self.fetch_commands),
            ("POST", host + r"/commands/(?P<command>[A-Za-z0-9-]{1,64})", self.command_result),
            ("POST", host + r"/profiles", self.installed_profiles),
            ("POST", host + r"/certificates", self.certificates),
        ]

    # The credential check (HostCredentials.permits) has made sure that ``host``
    # is the credential's own, and so exists: a credential goes with its host.

    async def fetch_commands(self, request, host):
        jobs = await self._store.commands_for_host(host, "outbox")
        commands = []
        for job in jobs:
            try:
                rendered = await self._renderer.render(job)
            except HostProfileFailed:
                continue  # marked failed with the missing value named; the admin sees it in status

            await self._store.command_delivered(job.command_uuid)
            commands.append(_command_json(rendered))
        if commands:
            log.info("agent fetched {count} commands for host {host}", count=len(commands), host=host)
        return {"commands": commands}

    async def command_result(self, request, host, command):
        body = json_body(request)
        status = field(body, "status")
        if status not in ("acknowledged", "error"):
            raise Invalid("status must be acknowledged or error", field="status")
        error = field(body, "error", required=status == "error")
        if error is not None and len(error) > 2000:
            error = error[:2000]
        hp = await self._store.command_result(command, ok=status == "acknowledged", detail=error, host_uuid=host)
        if hp is None:
            raise NotFound("no command %s for host %s" % (command, host))
        log.info(
            "agent reported command {command} for host {host} profile {profile}: {status}; host profile now {now}",
            command=command, host=host, profile=hp.profile_uuid, status=status, now=hp.status or "NULL",
        )
        return {"host_uuid": hp.host_uuid, "profile_uuid": hp.profile_uuid, "status": hp.status, "retries": hp.retries}

    async def installed_profiles(self, request, host):
        installed = field(json_body(request), "installed", kind=list)
        if not all(isinstance(item, str) and item for item in installed):
            raise Invalid("installed must be a list of profile UUIDs or PayloadIdentifiers", field="installed")
        count = await self._store.profiles_installed(host, installed)
        return {"verified": count}

    async def certificates(self, request, host):
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        if "json" in content_type:
            pems = field(json_body(request), "certificates", kind=list)
            if not all(isinstance(item, str) for item in pems):
                raise Invalid("certificates must be a list of PEM strings", field="certificates")
        else:
            pems = [block.decode("ascii") for block in split_pem_bundle(request.content.read().decode("ascii", "replace"))]
        if not pems:
            raise Invalid("no certificates in the report", field="certificates")
        if len(pems) > MAX_CERTIFICATES_PER_REPORT:
            raise Invalid("at most %d certificates per report" % (MAX_CERTIFICATES_PER_REPORT,), field="certificates")
        parsed = []
        for index, pem in enumerate(pems, 1):
            try:
                parsed.append(parse_certificate(pem))
            except CertificateReportError as e:
                raise Invalid("certificate %d: %s" % (index, e), field="certificates") from None
        known = await self._store.renewal_ids_for_host(host)
        foreign = await self._foreign_renewal_ids(host, parsed, known)
        now = self._clock.seconds()
        counts = {"recorded": 0, "older": 0, "unknown": 0, "not_valid_now": 0}
        for cert in parsed:
            if not cert.valid_at(now):
                counts["not_valid_now"] += 1
                continue
            others = [rid for rid in cert.renewal_id_candidates() if rid in foreign]
            if others:
                # Answered as unknown: the reporter learns nothing about other hosts.
                log.warn(
                    "ignored certificate {serial} reported by the agent of host {host}: renewal ID {renewal_id}"
                    " belongs to a host profile of host {owner}",
                    serial=cert.serial, host=host, renewal_id=others[0], owner=foreign[others[0]],
                )
                counts["unknown"] += 1
                continue
            matches = cert.renewal_ids(known)
            if not matches:
                counts["unknown"] += 1
                continue
            for renewal_id in matches:
                outcome = await self._store.record_certificate(
                    host, renewal_id, cert.serial, cert.not_before, cert.not_after
                )
                counts[outcome] += 1
        log.info(
            "agent reported {total} certificates for host {host}: {counts}",
            total=len(parsed), host=host, counts=" ".join("%s=%d" % kv for kv in sorted(counts.items())),
        )
        return counts

    async def _foreign_renewal_ids(self, host, parsed, known) -> dict[str, str]:
        """Renewal IDs in these certificates that belong to other hosts: ``{renewal_id: owner}``."""
        candidates = {rid for cert in parsed for rid in cert.renewal_id_candidates()} - set(known)
        if not candidates:
            return {}
        owners = await self._store.renewal_id_owners(candidates)
        return {rid: owner for rid, owner in owners.items() if owner != host}


class NanoMDMWebhook(resource.Resource):
    """``/webhooks/nanomdm/<webhook token>``: NanoMDM cannot send a bearer header, so a token
    of its own (no agent credential: NanoMDM logs URLs) is in the path."""

    isLeaf = True

    def __init__(self, store, token: str):
        super().__init__()
        self._store = store
        self._token = token

    def render_POST(self, request):
        from twisted.internet import defer

        from scepproxyd.delivery.nanomdm import parse_webhook

        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # every answer, refusals included
        presented = request.postpath[0] if len(request.postpath) == 1 else b""
        if not tokens_match(presented, self._token):
            request.setResponseCode(401)
            return b"missing or wrong token\n"
        try:
            reports = parse_webhook(request.content.read())
        except ValueError as e:  # the strict reader's refusals (JsonInputError) carry their own status
            request.setResponseCode(getattr(e, "status", 400))
            return ("%s\n" % (e,)).encode("utf-8")

        async def apply():
            for report in reports:
                if report.status == "NotNow":
                    continue
                ok = report.status == "Acknowledged"
                # A user-channel enrollment id is "UDID:UserID"; hosts are known by UDID.
                host_uuid = report.enrollment_id.partition(":")[0]
                hp = await self._store.command_result(
                    report.command_uuid, ok=ok, detail=report.error, host_uuid=host_uuid
                )
                log.info(
                    "nanomdm reported command {command} for host {host}: {status}",
                    command=report.command_uuid, host=report.enrollment_id, status=report.status,
                    known="yes" if hp else "no",
                )

        d = defer.ensureDeferred(apply())

        def failed(failure):
            if failure.check(StoreUnavailable):
                return (503, b"service unavailable: the database cannot be written; try again later\n")
            log.failure("nanomdm webhook failed", failure)
            return (500, b"internal error\n")

        d.addCallbacks(lambda _: (200, b"ok\n"), failed)
        return answer_later(request, d, _write_text)


def _write_text(request, answer) -> None:
    status, body = answer
    request.setResponseCode(status)
    request.write(body)
    request.finish()


def agent_resource(store, renderer, clock, reactor) -> JsonApi:
    """The agent API; each request's bearer credential is one host's, issued by the admin.

    ``clock`` dates credentials and reports; JSON parsing runs on ``reactor``'s worker threads.
    """
    return JsonApi(
        HostCredentials(store, clock), AgentRoutes(store, renderer, clock).routes(), realm="agent", reactor=reactor
    )
