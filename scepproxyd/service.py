"""Wire settings into the daemon's services from small builders: store, upstream, built-in CA, jobs, sites.

``make_service`` composes the builders below; each takes plain values and
its collaborators (store, upstream, reactor or clock, metrics, ...), so a
test can build any one of them alone, e.g. the real device and admin
resource trees over a temp Store, a Clock and an upstream on StubTreq.

Children start in the order they are added and stop in reverse, one after
another (lifecycle.OrderedMultiService): systemd is told STOPPING, the
listeners stop accepting, jobs finish their run, in-flight requests get a
grace period, then the upstream pool and finally the database close.

``prepare_state`` runs before any of that, once, from the tap: every
problem it meets becomes one L{StartupError}.
"""

import hashlib
import hmac
import time
from functools import partial
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes
from twisted.application import strports
from twisted.internet.endpoints import serverFromString
from twisted.web import resource

from scepproxyd.ca.local import UpstreamRouter
from scepproxyd.ca.material import prepare_ca_material
from scepproxyd.ca.wiring import BuiltinCA, ManagedCaService, build_builtin_ca
from scepproxyd.daemon.connections import ConnectionCap, OpenFilesError, ensure_open_files, open_files_needed
from scepproxyd.daemon.lifecycle import (
    DrainService,
    HTTPPoolService,
    InFlight,
    OrderedMultiService,
    StoreService,
    freeze_start_up_heap,
    write_probe_service,
)
from scepproxyd.daemon.logs import get_logger, set_level
from scepproxyd.daemon.metrics import Metrics
from scepproxyd.daemon.reload import ReloadService
from scepproxyd.daemon.sdnotify import SystemdNotifier
from scepproxyd.daemon.tls import TLSConfigError, UpstreamTrust, server_context, wrap_tls
from scepproxyd.delivery.nanomdm import NanoMDMClient
from scepproxyd.delivery.push import PushDelivery
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.jobs import CleanupJob, ProcessProfilesJob, RenewalJob, ScheduledJob, backends_for
from scepproxyd.pacing import RenewalPacing
from scepproxyd.keys import ChallengeCipher, KeyFileError, load_or_create_key, load_or_create_token
from scepproxyd.scep.proxy import ScepProxy
from scepproxyd.scep.ra_flow import RaFlow
from scepproxyd.scep.upstream import UpstreamClient, UpstreamTimeouts, make_http_client
from scepproxyd.scep.targets import TargetCache
from scepproxyd.store import Store, StoreError
from scepproxyd.store.fingerprints import differing_state_files
from scepproxyd.store.postgres import redacted
from scepproxyd.web.api import off_reactor
from scepproxyd.web.admin import AdminRoutes, admin_route_limits
from scepproxyd.web.admin_agents import AgentCredentialRoutes
from scepproxyd.web.admin_secrets import SecretRoutes
from scepproxyd.web.admin_backup import backup_routes
from scepproxyd.web.admin_ca import CaAdminRoutes
from scepproxyd.web.agent import NanoMDMWebhook, agent_resource
from scepproxyd.web.api import JsonApi
from scepproxyd.web.ca import ScepResource
from scepproxyd.web.health import CaMonitor, Health, HealthBeside, MetricsPage, Ready
from scepproxyd.web.proxy import ProxyResource
from scepproxyd.web.site import BodyLimitedSite

log = get_logger(__name__)

#: Profiles and host imports are small; this bounds what an admin client can make us buffer.
ADMIN_MAX_BODY_BYTES = 16 * 1024 * 1024


class StartupError(Exception):
    """The daemon cannot start. The tap prints ``scepproxyd: <str()>`` on stderr and exits 1.

    Everything ``prepare_state`` meets (listeners, the open-files limit,
    the state directory, the database, key and token files, the built-in
    CA's material, the TLS server files) arrives as this one type, its
    text naming the file or setting to fix.
    """


def check_listeners(settings) -> None:
    """A systemd: listener needs the socket systemd passes in; say so before anything starts."""
    for section, description in (("server", settings.server.listen), ("admin", settings.admin.listen)):
        if description.startswith("systemd:"):
            try:
                serverFromString(object(), description)
            except (LookupError, ValueError):
                raise StartupError(
                    "%s: [%s] listen: systemd passed in no such socket (%s); is the socket unit active?"
                    % (settings.config_path, section, description)
                ) from None


def check_open_files(settings) -> None:
    """The open-files limit must hold both listeners' connection caps; raise the soft limit if it must."""
    needed = open_files_needed(settings.server.max_connections, settings.admin.max_connections)
    try:
        raised = ensure_open_files(needed)
    except OpenFilesError as e:
        raise StartupError("%s: %s" % (settings.config_path, e)) from None
    if raised is not None:
        log.info("raised the open-files soft limit (RLIMIT_NOFILE) to {limit} for the connection caps",
                 limit=raised)


def prepare_state(settings) -> None:
    """Create the state directory, bring the schema up to date, make keys and tokens.

    Runs once before the reactor does, so a problem here stops twistd with a
    clear message instead of a half-started daemon: every problem is raised
    as a L{StartupError}.
    """
    check_listeners(settings)
    check_open_files(settings)
    try:
        _prepare_files(settings)
    except (OSError, StoreError, KeyFileError, TLSConfigError) as e:
        raise StartupError("cannot prepare state in %s: %s" % (settings.state_directory, e)) from None


def _prepare_files(settings) -> None:
    state: Path = settings.state_directory
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.database.engine == "sqlite":
        settings.database.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.migrate(settings.database.target, password=database_password(settings))
    secrets_key = load_or_create_key(settings.key_file)
    admin_token = load_or_create_token(settings.admin.token_file)
    webhook_token = load_or_create_token(settings.delivery.webhook_token_file)
    if settings.delivery.backend == "nanomdm":
        read_nanomdm_api_key(settings.delivery.nanomdm_api_key_file)
    material = prepare_ca_material(settings.ca) if settings.ca.enabled else None
    if settings.database.engine == "postgresql":
        _check_shared_state(settings, {
            "secrets_key": hmac.new(secrets_key, b"scepproxyd node fingerprint", hashlib.sha256).hexdigest(),
            "admin_token": hashlib.sha256(admin_token.encode()).hexdigest(),
            "webhook_token": hashlib.sha256(webhook_token.encode()).hexdigest(),
            **({"builtin_ca": material.certificate.fingerprint(hashes.SHA256()).hex()} if material else {}),
        })
    if settings.server.tls_certificate is not None:
        server_context(settings.server.tls_certificate, settings.server.tls_key, settings.server.tls_chain)


#: Which setting names each shared state file, for the message when a node's differ.
_SHARED_FILES = {
    "secrets_key": "[state] key_file", "admin_token": "[admin] token_file",
    "webhook_token": "[delivery] webhook_token_file", "builtin_ca": "[ca] key_file and certificate_file",
}


def _check_shared_state(settings, fingerprints: dict) -> None:
    """Several nodes: refuse to start with state files other than those the first node recorded."""
    differing = differing_state_files(settings.database.target, database_password(settings), fingerprints, time.time())
    if differing:
        raise StoreError(
            "this node's %s differ from those of the nodes already using database %s: copy them from a "
            "running node (mode 0600) before starting it (docs/operations.md, Several nodes)"
            % (", ".join(_SHARED_FILES[name] for name in differing), redacted(settings.database.target))
        )


def database_password(settings) -> str | None:
    """The PostgreSQL password from ``[database] password_file``; KeyFileError naming the file if unreadable."""
    try:
        return settings.database.password()
    except OSError as e:
        raise KeyFileError("cannot read the database password from %s ([database] password_file): %s"
                           % (settings.database.password_file, e.strerror or e)) from None


def warn_retired(settings) -> None:
    """One warn line per retired setting still in the file, and for the old shared agent token file."""
    for message in settings.ignored:
        log.warn("{config}: {message}", config=str(settings.config_path), message=message)
    if settings.retired_agent_token_file.exists():
        log.warn(
            "{path} holds the old shared agent token, which is no longer accepted: issue each host's agent its own "
            "credential (scepproxyctl agent-credential issue HOST, or issue-bulk), give it to that host's agent, "
            "then delete the file (docs/agent-api.md, Migrating from the shared agent token)",
            path=str(settings.retired_agent_token_file),
        )


def read_nanomdm_api_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise KeyFileError(
            "cannot read the NanoMDM API key from %s ([delivery] nanomdm_api_key_file): %s" % (path, e.strerror)
        ) from None
    if not key:
        raise KeyFileError("%s ([delivery] nanomdm_api_key_file) is empty" % (path,))
    return key


# -- builders, in the order make_service adds their services ------------------------------


@attrs.frozen
class StoreParts:
    """The store and the services that own it: opened first, closed last."""

    store: Store
    #: ``ready`` fires once the database is open and orphaned challenges are put back.
    service: StoreService
    write_probe: object

    def services(self) -> list:
        return [self.service, self.write_probe]


def build_store(settings, reactor) -> StoreParts:
    """The Store on its DB thread, its start/stop service and the periodic write probe."""
    store = Store(
        settings.database.target,
        reactor,
        clock=reactor,
        challenge_ttl=settings.challenges.ttl,
        busy_timeout=settings.database.busy_timeout,
        max_retries=settings.profiles.max_retries,
        password=database_password(settings),
        pool_size=settings.database.pool_size,
        # Longer than any upstream call may last: older in-flight challenges are a dead node's.
        in_flight_limit=settings.upstream.connect_timeout + settings.upstream.response_timeout
        + settings.upstream.body_timeout + 60.0,
    )
    return StoreParts(store, StoreService(store), write_probe_service(store, settings.database.write_probe_interval,
                                                                      reactor))


@attrs.frozen
class UpstreamParts:
    """How the daemon reaches CAs: one pooled HTTP client and the IUpstream everything else calls."""

    #: IUpstream: the HTTP UpstreamClient, or an UpstreamRouter in front of it when the built-in CA is on.
    upstream: object
    #: The pooled treq client; NanoMDM's client shares it.
    http_client: object
    #: Each CA's TLS trust, loaded by the admin routes and on reload.
    trust: UpstreamTrust
    #: Closes the pool on stop.
    pool_service: HTTPPoolService


def build_upstream(settings, reactor, metrics, builtin_ca: BuiltinCA | None = None,
                   http_client=None) -> UpstreamParts:
    """The pooled HTTP client with ``[upstream]`` timeouts; the built-in CA, if any, answered in process.

    ``http_client`` (a treq-like client, e.g. tests' StubTreq around CA
    resources) replaces the pooled client; there is then no pool to close.
    """
    trust = UpstreamTrust()
    pool = None
    if http_client is None:
        http_client, pool = make_http_client(reactor, settings.upstream.connect_timeout, trust)
    timeouts = UpstreamTimeouts(
        connect=settings.upstream.connect_timeout,
        response=settings.upstream.response_timeout,
        body=settings.upstream.body_timeout,
        max_response_bytes=settings.upstream.max_response_bytes,
    )
    upstream = UpstreamClient(http_client, reactor, timeouts, settings.upstream.caps_cache_seconds, metrics, pool)
    if builtin_ca is not None:
        # The proxy reaches the built-in CA in process, never over HTTP to itself.
        upstream = UpstreamRouter(upstream, builtin_ca.local, builtin_ca.url)
    return UpstreamParts(upstream, http_client, trust, HTTPPoolService(pool))


@attrs.frozen
class CaParts:
    """The built-in CA, the service that registers it as a CA integration, and its admin routes."""

    builtin: BuiltinCA
    service: ManagedCaService
    admin_routes: list


def build_ca(settings, store, reactor, metrics) -> CaParts | None:
    """The built-in CA when ``[ca] enabled``, else None."""
    if not settings.ca.enabled:
        return None
    builtin = build_builtin_ca(settings, store, reactor, metrics)
    return CaParts(
        builtin,
        ManagedCaService(store, builtin),
        CaAdminRoutes(builtin.authority, builtin.manager, store, builtin.name).routes(),
    )


def build_jobs(settings, store, renderer, http_client, reactor, metrics) -> list[ScheduledJob]:
    """process_profiles (with NanoMDM push delivery when configured), renew_certificates, cleanup."""
    pusher = None
    if settings.delivery.backend == "nanomdm":
        nanomdm = NanoMDMClient(
            http_client, reactor, settings.delivery.nanomdm_url,
            read_nanomdm_api_key(settings.delivery.nanomdm_api_key_file),
            timeout=settings.upstream.response_timeout,
        )
        pusher = PushDelivery(store, renderer, nanomdm, reactor,
                              max_unused_challenges=settings.delivery.max_unused_challenges)
    return [
        ScheduledJob(
            ProcessProfilesJob(store, settings.profiles.batch_size, backends_for(settings.delivery.backend), pusher),
            settings.profiles.process_interval, reactor, metrics,
        ),
        ScheduledJob(
            RenewalJob(
                store, settings.renewal.threshold, settings.renewal.short_fraction,
                pacing=RenewalPacing.from_settings(settings.renewal), clock=reactor, metrics=metrics,
                min_wake=settings.profiles.process_interval,
            ),
            settings.renewal.interval, reactor, metrics,
        ),
        ScheduledJob(
            CleanupJob(store, settings.delivery.command_retention, settings.delivery.stuck_after),
            settings.challenges.cleanup_interval, reactor, metrics,
        ),
    ]


def health_pages(store, upstream, metrics, listeners: list, started) -> dict:
    """/healthz, /readyz and /metrics, served on both listeners.

    ``listeners`` is the list the listener services are appended to (the
    pages read it when asked); ``started()`` says whether the store is open
    and orphaned challenges are put back.
    """
    return {
        b"healthz": Health(store, listeners, started),
        b"readyz": Ready(store, listeners, CaMonitor(store, upstream), started),
        b"metrics": MetricsPage(store, metrics),
    }


def build_ra_flow(settings, store, upstream, cipher, reactor, metrics=None) -> RaFlow:
    """RA mode's request flow: the built-in CA's key policy, ``reactor``'s worker threads for RSA and parsing."""
    timeouts = settings.upstream
    return RaFlow(
        store, upstream, cipher, reactor, key_policy=settings.ca.key_policy,
        run_in_thread=partial(off_reactor, reactor),
        # A renewal claim outlives any upstream call; older, its node died mid-call.
        stale_renewal_after=timeouts.connect_timeout + timeouts.response_timeout + timeouts.body_timeout + 60.0,
        metrics=metrics,
    )


def device_resource(*, store, upstream, renderer, webhook_token: str, clock, reactor, metrics=None,
                    builtin_ca: BuiltinCA | None = None, health: dict | None = None,
                    ra_flow: RaFlow | None = None, target_cache_seconds: float = 0.0) -> resource.Resource:
    """The device-facing tree: SCEP proxy, agent API, NanoMDM webhook, built-in CA, health, metrics.

    ``upstream`` provides IUpstream; ``clock`` times requests and dates
    agent reports; ``reactor``'s worker threads parse and encode JSON;
    ``ra_flow`` answers for CAs in RA mode; GetCACaps and GetCACert find
    their target in a cache kept ``target_cache_seconds`` (0: no cache).
    """
    root = resource.Resource()
    if builtin_ca is not None:
        root.putChild(b"scep", ScepResource(builtin_ca.authority))
        # Cisco IOS asks for /cgi-bin/pkiclient.exe when the enrollment URL names no path.
        root.putChild(b"cgi-bin", ScepResource(builtin_ca.authority, cgi_bin=True))
    mdm = resource.Resource()
    scep = resource.Resource()
    root.putChild(b"mdm", mdm)
    mdm.putChild(b"scep", scep)
    targets = TargetCache(store, clock, target_cache_seconds)
    scep.putChild(b"proxy", ProxyResource(ScepProxy(store, upstream, metrics, ra_flow, targets), clock, metrics))
    root.putChild(b"api", agent_resource(store, renderer, clock, reactor))
    webhooks = resource.Resource()
    root.putChild(b"webhooks", webhooks)
    webhooks.putChild(b"nanomdm", NanoMDMWebhook(store, webhook_token))
    for name, page in (health or {}).items():
        root.putChild(name, page)
    return root


def build_device_site(root: resource.Resource, server_settings, reactor, in_flight: InFlight) -> BodyLimitedSite:
    """``root`` (see L{device_resource}) behind ``[server]``'s body, idle and request limits."""
    return BodyLimitedSite(
        root,
        max_body_bytes=server_settings.max_body_bytes,
        idle_timeout=server_settings.idle_timeout,
        reactor=reactor,
        in_flight=in_flight,
        request_timeout=server_settings.request_timeout,
    )


def admin_api(*, token: str, store, upstream, cipher, jobs: dict, settings, reactor, trust=None,
              ca_routes: list = ()) -> JsonApi:
    """The admin JSON API under /api/v1 on one bearer token.

    ``jobs`` maps job names to ScheduledJobs (for triggers); ``settings`` is
    the whole Settings (backups copy the state files it names, and
    ``[admin] max_profile_bytes`` bounds uploads); ``ca_routes`` are the
    built-in CA's routes, which go first: they guard its CA row before the
    generic CA routes match.
    """
    routes = AdminRoutes(store, upstream, cipher, jobs, trust, reactor=reactor,
                         max_profile_bytes=settings.admin.max_profile_bytes)
    return JsonApi(
        token,
        list(ca_routes) + backup_routes(store, settings, reactor) + routes.routes() + AgentCredentialRoutes(store).routes()
        + SecretRoutes(store, cipher).routes(),
        realm="admin",
        reactor=reactor,
    )


def build_admin_site(api: JsonApi, health: dict, settings, reactor, in_flight: InFlight) -> BodyLimitedSite:
    """``api`` (see L{admin_api}) and the health pages behind the admin listener's limits."""
    return BodyLimitedSite(
        # /healthz, /readyz and /metrics here too: they keep answering while the device listener is full.
        HealthBeside(api, health),
        max_body_bytes=ADMIN_MAX_BODY_BYTES,
        idle_timeout=settings.server.idle_timeout,
        reactor=reactor,
        in_flight=in_flight,
        request_timeout=settings.server.request_timeout,
        # A profile over the limit is refused as its length is declared or its bytes pass it.
        route_limits=admin_route_limits(settings.admin.max_profile_bytes),
        json_refusals=True,
    )


def _listener(description: str, site, settings, reactor, name: str, metrics):
    factory = site
    if name == "proxy-listener" and settings.server.tls_certificate is not None:
        context = server_context(settings.server.tls_certificate, settings.server.tls_key, settings.server.tls_chain)
        factory = wrap_tls(site, context)
    # Outermost, so a connection over the cap is closed before any TLS work.
    if name == "proxy-listener":
        factory = ConnectionCap(factory, settings.server.max_connections, "proxy", "[server] max_connections",
                                reactor, metrics)
    else:
        factory = ConnectionCap(factory, settings.admin.max_connections, "admin", "[admin] max_connections",
                                reactor, metrics)
    listener = strports.service(description, factory, reactor=reactor)
    listener.setName(name)
    return listener


def make_service(settings, reactor) -> OrderedMultiService:
    """The daemon: every builder's services under one OrderedMultiService, in start order.

    Stop runs in reverse: systemd notifier, listeners, reload, jobs, the
    built-in CA's registration, the drain of in-flight requests, the
    upstream pool, the write probe, and the store last.
    """
    set_level(settings.logging.level)
    metrics = Metrics()
    in_flight = InFlight()
    stored = build_store(settings, reactor)
    store = stored.store
    ca = build_ca(settings, store, reactor, metrics)
    builtin = ca.builtin if ca is not None else None
    upstream = build_upstream(settings, reactor, metrics, builtin)
    cipher = ChallengeCipher(load_or_create_key(settings.key_file))
    renderer = CommandRenderer(
        store, cipher, settings.server.public_url, reactor, metrics, builtin_template=settings.ca.default_template
    )
    jobs = build_jobs(settings, store, renderer, upstream.http_client, reactor, metrics)
    reload_service = ReloadService(settings, store, upstream.trust, reactor)
    warn_retired(settings)

    listeners = []
    # Once started, the start-up heap is left out of every later full collection (no stall walking it).
    stored.service.ready.addCallback(lambda _: freeze_start_up_heap())
    started = lambda: stored.service.ready.called  # noqa: E731 - open, orphaned challenges put back
    health = health_pages(store, upstream.upstream, metrics, listeners, started)
    device_root = device_resource(
        store=store, upstream=upstream.upstream, renderer=renderer,
        webhook_token=load_or_create_token(settings.delivery.webhook_token_file),
        clock=reactor, reactor=reactor, metrics=metrics, builtin_ca=builtin, health=health,
        ra_flow=build_ra_flow(settings, store, upstream.upstream, cipher, reactor, metrics),
        target_cache_seconds=settings.server.target_cache_seconds,
    )
    device_site = build_device_site(device_root, settings.server, reactor, in_flight)
    api = admin_api(
        token=load_or_create_token(settings.admin.token_file), store=store, upstream=upstream.upstream,
        cipher=cipher, jobs={job.name: job for job in jobs}, settings=settings, reactor=reactor,
        trust=upstream.trust, ca_routes=ca.admin_routes if ca is not None else [],
    )
    admin_site = build_admin_site(api, health, settings, reactor, in_flight)
    listeners.append(_listener(settings.server.listen, device_site, settings, reactor, "proxy-listener", metrics))
    listeners.append(_listener(settings.admin.listen, admin_site, settings, reactor, "admin-listener", metrics))

    top = OrderedMultiService()
    for child in [
        *stored.services(),
        upstream.pool_service,
        DrainService(in_flight, settings.server.shutdown_grace, reactor),
        *([ca.service] if ca is not None else []),
        *[job.service() for job in jobs],
        reload_service,
        *listeners,
        SystemdNotifier(listeners, [lambda: stored.service.ready, reload_service.started]),
    ]:
        child.setServiceParent(top)
    return top
