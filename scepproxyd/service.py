"""Wire settings into the daemon's services: store, upstream client, CA, jobs, listeners.

Children start in the order they are added and stop in reverse, one after
another (lifecycle.OrderedMultiService): systemd is told STOPPING, the
listeners stop accepting, jobs finish their run, in-flight requests get a
grace period, then the upstream pool and finally the database close.
"""

from pathlib import Path

from twisted.application import strports
from twisted.web import resource

from scepproxyd.daemon.connections import ConnectionCap, OpenFilesError, ensure_open_files, open_files_needed
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.jobs import CleanupJob, ProcessProfilesJob, RenewalJob, ScheduledJob, backends_for
from scepproxyd.keys import ChallengeCipher, KeyFileError, load_or_create_key, load_or_create_token
from scepproxyd.daemon.lifecycle import (
    DrainService,
    HTTPPoolService,
    InFlight,
    OrderedMultiService,
    StoreService,
    write_probe_service,
)
from scepproxyd.daemon.logs import get_logger, set_level
from scepproxyd.daemon.metrics import Metrics
from scepproxyd.daemon.reload import ReloadService
from scepproxyd.scep.proxy import ScepProxy
from scepproxyd.scep.upstream import UpstreamClient, UpstreamTimeouts, make_http_client
from scepproxyd.daemon.sdnotify import SystemdNotifier
from scepproxyd.store import Store
from scepproxyd.daemon.tls import UpstreamTrust, server_context, wrap_tls
from scepproxyd.web.admin import AdminRoutes, admin_route_limits
from scepproxyd.web.admin_agents import AgentCredentialRoutes
from scepproxyd.web.admin_backup import backup_routes
from scepproxyd.web.agent import NanoMDMWebhook, agent_resource
from scepproxyd.web.api import JsonApi
from scepproxyd.web.health import CaMonitor, Health, HealthBeside, MetricsPage, Ready
from scepproxyd.web.proxy import ProxyResource
from scepproxyd.web.site import BodyLimitedSite

log = get_logger(__name__)

#: Profiles and host imports are small; this bounds what an admin client can make us buffer.
ADMIN_MAX_BODY_BYTES = 16 * 1024 * 1024


def build_resource_tree(proxy, agent_api, webhook, clock, builtin_ca=None, health=None, metrics=None):
    """The device-facing listener: SCEP proxy, agent API, NanoMDM webhook, built-in CA, health, metrics."""
    root = resource.Resource()
    if builtin_ca is not None:
        from scepproxyd.web.ca import ScepResource

        root.putChild(b"scep", ScepResource(builtin_ca.authority))
        # Cisco IOS asks for /cgi-bin/pkiclient.exe when the enrollment URL names no path.
        root.putChild(b"cgi-bin", ScepResource(builtin_ca.authority, cgi_bin=True))
    mdm = resource.Resource()
    scep = resource.Resource()
    root.putChild(b"mdm", mdm)
    mdm.putChild(b"scep", scep)
    scep.putChild(b"proxy", ProxyResource(proxy, clock, metrics))
    root.putChild(b"api", agent_api)
    webhooks = resource.Resource()
    root.putChild(b"webhooks", webhooks)
    webhooks.putChild(b"nanomdm", webhook)
    for name, page in (health or {}).items():
        root.putChild(name, page)
    return root


class StartupError(Exception):
    """Something outside the file stops the daemon at start; ``str()`` says what."""


def check_listeners(settings) -> None:
    """A systemd: listener needs the socket systemd passes in; say so before anything starts."""
    from twisted.internet.endpoints import serverFromString

    for section, description in (("server", settings.server.listen), ("admin", settings.admin.listen)):
        if description.startswith("systemd:"):
            try:
                serverFromString(object(), description)
            except (LookupError, ValueError):
                raise StartupError(
                    "[%s] listen: systemd passed in no such socket (%s); is the socket unit active?"
                    % (section, description)
                ) from None


def check_open_files(settings) -> None:
    """The open-files limit must hold both listeners' connection caps; raise the soft limit if it must."""
    needed = open_files_needed(settings.server.max_connections, settings.admin.max_connections)
    try:
        raised = ensure_open_files(needed)
    except OpenFilesError as e:
        raise StartupError(str(e)) from None
    if raised is not None:
        log.info("raised the open-files soft limit (RLIMIT_NOFILE) to {limit} for the connection caps",
                 limit=raised)


def prepare_state(settings) -> None:
    """Create the state directory, bring the schema up to date, make keys and tokens.

    Runs once before the reactor does, so a problem here stops twistd with a
    clear message instead of a half-started daemon.
    """
    check_listeners(settings)
    check_open_files(settings)
    state: Path = settings.state_directory
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.database.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.migrate(settings.database.path)
    load_or_create_key(settings.key_file)
    load_or_create_token(settings.admin.token_file)
    load_or_create_token(settings.delivery.webhook_token_file)
    if settings.delivery.backend == "nanomdm":
        read_nanomdm_api_key(settings.delivery.nanomdm_api_key_file)
    if settings.ca.enabled:
        from scepproxyd.ca.material import prepare_ca_material

        prepare_ca_material(settings.ca)
    if settings.server.tls_certificate is not None:
        server_context(settings.server.tls_certificate, settings.server.tls_key, settings.server.tls_chain)


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
    set_level(settings.logging.level)
    top = OrderedMultiService()
    metrics = Metrics()
    in_flight = InFlight()

    store = Store(
        settings.database.path,
        reactor,
        clock=reactor,
        challenge_ttl=settings.challenges.ttl,
        busy_timeout=settings.database.busy_timeout,
        max_retries=settings.profiles.max_retries,
    )
    store_service = StoreService(store)
    store_service.setServiceParent(top)
    write_probe_service(store, settings.database.write_probe_interval, reactor).setServiceParent(top)

    trust = UpstreamTrust()
    http_client, pool = make_http_client(reactor, settings.upstream.connect_timeout, trust)
    HTTPPoolService(pool).setServiceParent(top)
    DrainService(in_flight, settings.server.shutdown_grace, reactor).setServiceParent(top)
    timeouts = UpstreamTimeouts(
        connect=settings.upstream.connect_timeout,
        response=settings.upstream.response_timeout,
        body=settings.upstream.body_timeout,
        max_response_bytes=settings.upstream.max_response_bytes,
    )
    upstream = UpstreamClient(http_client, reactor, timeouts, settings.upstream.caps_cache_seconds, metrics, pool)

    cipher = ChallengeCipher(load_or_create_key(settings.key_file))
    builtin_ca, admin_ca_routes = None, []
    if settings.ca.enabled:
        from scepproxyd.ca.local import UpstreamRouter
        from scepproxyd.ca.wiring import ManagedCaService, build_builtin_ca
        from scepproxyd.web.admin_ca import CaAdminRoutes

        builtin_ca = build_builtin_ca(settings, store, reactor, metrics)
        ManagedCaService(store, builtin_ca).setServiceParent(top)
        # The proxy reaches the built-in CA in process, never over HTTP to itself.
        upstream = UpstreamRouter(upstream, builtin_ca.local, builtin_ca.url)
        admin_ca_routes = CaAdminRoutes(builtin_ca.authority, builtin_ca.manager, store, builtin_ca.name).routes()
    renderer = CommandRenderer(
        store, cipher, settings.server.public_url, reactor, metrics, builtin_template=settings.ca.default_template
    )
    pusher = None
    if settings.delivery.backend == "nanomdm":
        from scepproxyd.delivery.nanomdm import NanoMDMClient
        from scepproxyd.delivery.push import PushDelivery

        nanomdm = NanoMDMClient(
            http_client, reactor, settings.delivery.nanomdm_url,
            read_nanomdm_api_key(settings.delivery.nanomdm_api_key_file),
            timeout=settings.upstream.response_timeout,
        )
        pusher = PushDelivery(store, renderer, nanomdm, reactor)

    scheduled = [
        ScheduledJob(
            ProcessProfilesJob(store, settings.profiles.batch_size, backends_for(settings.delivery.backend), pusher),
            settings.profiles.process_interval, reactor, metrics,
        ),
        ScheduledJob(
            RenewalJob(store, settings.renewal.threshold, settings.renewal.short_fraction),
            settings.renewal.interval, reactor, metrics,
        ),
        ScheduledJob(
            CleanupJob(store, settings.delivery.command_retention),
            settings.challenges.cleanup_interval, reactor, metrics,
        ),
    ]
    jobs = {job.name: job for job in scheduled}
    for job in scheduled:
        job.service().setServiceParent(top)

    reload_service = ReloadService(settings, store, trust, reactor)
    reload_service.setServiceParent(top)

    warn_retired(settings)
    proxy = ScepProxy(store, upstream, metrics)
    listeners = []
    started = lambda: store_service.ready.called  # noqa: E731 - open, orphaned challenges put back
    health = {
        b"healthz": Health(store, listeners, started),
        b"readyz": Ready(store, listeners, CaMonitor(store, upstream), started),
        b"metrics": MetricsPage(store, metrics),
    }
    site = BodyLimitedSite(
        build_resource_tree(
            proxy,
            agent_resource(store, renderer, reactor),
            NanoMDMWebhook(store, load_or_create_token(settings.delivery.webhook_token_file)),
            reactor,
            builtin_ca,
            health,
            metrics,
        ),
        max_body_bytes=settings.server.max_body_bytes,
        idle_timeout=settings.server.idle_timeout,
        reactor=reactor,
        in_flight=in_flight,
        request_timeout=settings.server.request_timeout,
    )
    listeners.append(_listener(settings.server.listen, site, settings, reactor, "proxy-listener", metrics))

    max_profile = settings.admin.max_profile_bytes
    admin_routes = AdminRoutes(store, upstream, cipher, jobs, trust, reactor=reactor, max_profile_bytes=max_profile)
    admin_api = JsonApi(
        load_or_create_token(settings.admin.token_file),
        # The built-in CA's routes first: they guard its CA row before the generic CA routes match.
        admin_ca_routes + backup_routes(store, settings) + admin_routes.routes()
        + AgentCredentialRoutes(store).routes(),
        realm="admin",
        reactor=reactor,
    )
    admin_site = BodyLimitedSite(
        # /healthz, /readyz and /metrics here too: they keep answering while the device listener is full.
        HealthBeside(admin_api, health),
        max_body_bytes=ADMIN_MAX_BODY_BYTES,
        idle_timeout=settings.server.idle_timeout,
        reactor=reactor,
        in_flight=in_flight,
        request_timeout=settings.server.request_timeout,
        # A profile over the limit is refused as its length is declared or its bytes pass it.
        route_limits=admin_route_limits(max_profile),
        json_refusals=True,
    )
    listeners.append(_listener(settings.admin.listen, admin_site, settings, reactor, "admin-listener", metrics))
    for listener in listeners:
        listener.setServiceParent(top)

    SystemdNotifier(listeners, [lambda: store_service.ready, reload_service.started]).setServiceParent(top)
    return top
