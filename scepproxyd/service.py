"""Wire settings into one MultiService: store, upstream client, listeners, jobs."""

from pathlib import Path

from twisted.application import service, strports
from twisted.internet import defer
from scepproxyd.logs import get_logger, set_level
from twisted.web import resource

from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.jobs import CleanupJob, ProcessProfilesJob, RenewalJob, ScheduledJob, backends_for
from scepproxyd.keys import ChallengeCipher, KeyFileError, load_or_create_key, load_or_create_token
from scepproxyd.scep.proxy import ScepProxy
from scepproxyd.scep.upstream import UpstreamClient, UpstreamTimeouts, make_http_client
from scepproxyd.store import Store
from scepproxyd.web.admin import AdminRoutes
from scepproxyd.web.agent import NanoMDMWebhook, agent_resource
from scepproxyd.web.api import JsonApi
from scepproxyd.web.proxy import ProxyResource
from scepproxyd.web.site import BodyLimitedSite

log = get_logger(__name__)

#: Profiles and host imports are small; this bounds what an admin client can make us buffer.
ADMIN_MAX_BODY_BYTES = 16 * 1024 * 1024


class StoreService(service.Service):
    """Opens the store's DB thread on start; closes the database on stop."""

    def __init__(self, store):
        self.store = store

    def startService(self):
        super().startService()
        return self.store.start()

    def stopService(self):
        super().stopService()
        return self.store.stop()


class HTTPPoolService(service.Service):
    """Closes the upstream connection pool on stop, so shutdown leaves no sockets behind."""

    def __init__(self, pool):
        self.pool = pool

    def stopService(self):
        super().stopService()
        return self.pool.closeCachedConnections()


def build_resource_tree(proxy, agent_api, webhook, clock, builtin_ca=None) -> resource.Resource:
    """The device-facing listener: the SCEP proxy, the agent API, NanoMDM's webhook and the built-in CA."""
    root = resource.Resource()
    if builtin_ca is not None:
        from scepproxyd.web.ca import ScepResource

        root.putChild(b"scep", ScepResource(builtin_ca.authority))
    mdm = resource.Resource()
    scep = resource.Resource()
    root.putChild(b"mdm", mdm)
    mdm.putChild(b"scep", scep)
    scep.putChild(b"proxy", ProxyResource(proxy, clock))
    root.putChild(b"api", agent_api)
    webhooks = resource.Resource()
    root.putChild(b"webhooks", webhooks)
    webhooks.putChild(b"nanomdm", webhook)
    return root


def prepare_state(settings) -> None:
    """Create the state directory and bring the database schema up to date.

    Runs once before the reactor does, so a problem here stops twistd with a
    clear message instead of a half-started daemon.
    """
    state: Path = settings.state_directory
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.database.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    Store.migrate(settings.database.path)
    load_or_create_key(settings.key_file)
    load_or_create_token(settings.admin.token_file)
    load_or_create_token(settings.agent.token_file)
    load_or_create_token(settings.delivery.webhook_token_file)
    if settings.delivery.backend == "nanomdm":
        read_nanomdm_api_key(settings.delivery.nanomdm_api_key_file)
    if settings.ca.enabled:
        from scepproxyd.ca.material import prepare_ca_material

        prepare_ca_material(settings.ca)


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


def make_service(settings, reactor) -> service.MultiService:
    set_level(settings.logging.level)
    top = service.MultiService()

    store = Store(
        settings.database.path,
        reactor,
        clock=reactor,
        challenge_ttl=settings.challenges.ttl,
        busy_timeout=settings.database.busy_timeout,
        max_retries=settings.profiles.max_retries,
    )
    StoreService(store).setServiceParent(top)

    http_client, pool = make_http_client(reactor, settings.upstream.connect_timeout)
    HTTPPoolService(pool).setServiceParent(top)
    timeouts = UpstreamTimeouts(
        connect=settings.upstream.connect_timeout,
        response=settings.upstream.response_timeout,
        body=settings.upstream.body_timeout,
        max_response_bytes=settings.upstream.max_response_bytes,
    )
    upstream = UpstreamClient(http_client, reactor, timeouts, settings.upstream.caps_cache_seconds)

    cipher = ChallengeCipher(load_or_create_key(settings.key_file))
    builtin_ca, admin_ca_routes = None, []
    if settings.ca.enabled:
        from scepproxyd.ca.local import UpstreamRouter
        from scepproxyd.ca.wiring import ManagedCaService, build_builtin_ca
        from scepproxyd.web.admin_ca import CaAdminRoutes

        builtin_ca = build_builtin_ca(settings, store, reactor)
        ManagedCaService(store, builtin_ca, cipher).setServiceParent(top)
        # The proxy reaches the built-in CA in process, never over HTTP to itself.
        upstream = UpstreamRouter(upstream, builtin_ca.local, builtin_ca.url)
        admin_ca_routes = CaAdminRoutes(builtin_ca.authority, builtin_ca.manager, store, builtin_ca.name).routes()
    renderer = CommandRenderer(store, cipher, settings.server.public_url, reactor)
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
            settings.profiles.process_interval,
            reactor,
        ),
        ScheduledJob(
            RenewalJob(store, settings.renewal.threshold, settings.renewal.short_fraction),
            settings.renewal.interval,
            reactor,
        ),
        ScheduledJob(
            CleanupJob(store, settings.delivery.command_retention), settings.challenges.cleanup_interval, reactor
        ),
    ]
    jobs = {job.name: job for job in scheduled}
    for job in scheduled:
        job.service().setServiceParent(top)

    agent_token = load_or_create_token(settings.agent.token_file)
    proxy = ScepProxy(store, upstream)
    site = BodyLimitedSite(
        build_resource_tree(
            proxy,
            agent_resource(agent_token, store, renderer, reactor),
            NanoMDMWebhook(store, load_or_create_token(settings.delivery.webhook_token_file)),
            reactor,
            builtin_ca,
        ),
        max_body_bytes=settings.server.max_body_bytes,
        idle_timeout=settings.server.idle_timeout,
        reactor=reactor,
    )
    listener = strports.service(settings.server.listen, site, reactor=reactor)
    listener.setName("proxy-listener")
    listener.setServiceParent(top)

    admin_site = BodyLimitedSite(
        JsonApi(
            load_or_create_token(settings.admin.token_file),
            # The built-in CA's routes first: they guard its CA row before the generic CA routes match.
            admin_ca_routes + AdminRoutes(store, upstream, cipher, jobs).routes(),
            realm="admin",
        ),
        max_body_bytes=ADMIN_MAX_BODY_BYTES,
        idle_timeout=settings.server.idle_timeout,
        reactor=reactor,
    )
    admin_listener = strports.service(settings.admin.listen, admin_site, reactor=reactor)
    admin_listener.setName("admin-listener")
    admin_listener.setServiceParent(top)
    return top
