"""The admin API served in the test's own reactor against a real store file (the conftest ``api`` and ``ca_api`` fixtures)."""

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.web import resource, server

from scepproxyd.ca.manage import CaManager
from scepproxyd.jobs import CleanupJob, ScheduledJob
from scepproxyd.keys import ChallengeCipher, load_or_create_key
from scepproxyd.scep.upstream import UpstreamClient, UpstreamTimeouts, make_http_client
from scepproxyd.store import Store
from scepproxyd.service import admin_api
from scepproxyd.web.admin import AdminRoutes, admin_route_limits
from scepproxyd.web.admin_ca import CaAdminRoutes
from scepproxyd.web.api import JsonApi
from scepproxyd.web.site import BodyLimitedSite

from support.web import settings_in
from support.api import Api
from support.builtin_ca import TEMPLATES, make_ca
from support.certs import self_signed_der

TOKEN = "t" * 43
#: [admin] max_profile_bytes of the test site: above every sample profile, well below its 1 MiB body limit.
PROFILE_LIMIT = 64 * 1024
STATIC = "the-static-challenge-9f8e7d"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "profiles"


def sample_profile(name="fleet-custom-scep-apple.mobileconfig") -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeCA(resource.Resource):
    """Answers GetCACert with a real DER certificate, or with nothing useful."""

    isLeaf = True

    def __init__(self, der: bytes):
        super().__init__()
        self.der = der

    def render_GET(self, request):
        if self.der is None:
            request.setResponseCode(500)
            return b"broken"
        request.setHeader(b"Content-Type", b"application/x-x509-ca-cert")
        return self.der


class AdminSite:
    """The admin API on a listener in the test's reactor, its store, and two upstream CAs (one broken)."""

    def __init__(self, url, ca_url, broken_ca_url, db_path, store, port):
        self.port = port
        self.url = url
        self.ca_url = ca_url
        self.broken_ca_url = broken_ca_url
        self.db_path = db_path
        self.store = store
        self.client = Api(url, TOKEN)

    async def call(self, method, path, body=None, token=TOKEN, raw=None, content_type=None):
        """(status, JSON) of one call, with the admin token unless ``token`` says otherwise (None: none)."""
        return await self.client.arequest(method, path, body, raw=raw, content_type=content_type, token=token)


def admin_site(tmp_path):
    """Serve an AdminSite (a generator: yields it, then stops everything; the conftest ``api`` fixture)."""
    db = tmp_path / "db.sqlite3"
    Store.migrate(db)
    store = Store(db, reactor)
    pytest_twisted.blockon(store.start())
    ca_port = reactor.listenTCP(0, server.Site(FakeCA(self_signed_der())), interface="127.0.0.1")
    broken_port = reactor.listenTCP(0, server.Site(FakeCA(None)), interface="127.0.0.1")
    http, pool = make_http_client(reactor, 2)
    upstream = UpstreamClient(http, reactor, UpstreamTimeouts(connect=2, response=2, body=2), 60)
    cipher = ChallengeCipher(load_or_create_key(tmp_path / "secrets.key"))
    jobs = {"cleanup": ScheduledJob(CleanupJob(store), 300, reactor)}
    settings = settings_in(tmp_path / "daemon", database=db, ca={"enabled": "no"},
                           admin={"max_profile_bytes": str(PROFILE_LIMIT)})
    site = BodyLimitedSite(
        admin_api(token=TOKEN, store=store, upstream=upstream, cipher=cipher, jobs=jobs, settings=settings,
                  reactor=reactor),
        1024 * 1024, 30, reactor=reactor, route_limits=admin_route_limits(PROFILE_LIMIT), json_refusals=True,
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield AdminSite(
        "http://127.0.0.1:%d" % (port.getHost().port,),
        "http://127.0.0.1:%d/scep" % (ca_port.getHost().port,),
        "http://127.0.0.1:%d/scep" % (broken_port.getHost().port,),
        db,
        store,
        port.getHost().port,
    )
    for p in (port, ca_port, broken_port):
        pytest_twisted.blockon(p.stopListening())
    pytest_twisted.blockon(pool.closeCachedConnections())
    pytest_twisted.blockon(store.stop())


async def add_ca(api, name="CA_NAME"):
    return await api.call("POST", "/api/v1/cas", {"name": name, "url": api.ca_url, "challenge": STATIC})


CA_TOKEN = "a" * 43


class CaAdminSite:
    """``/api/v1/ca/...`` (and the admin routes) on a listener in the test's reactor, the built-in CA answering in process."""

    def __init__(self, url, ca, store):
        self.url, self.ca, self.store = url, ca, store
        self.client = Api(url, CA_TOKEN)

    async def call(self, method, path, body=None, token=CA_TOKEN):
        """(status, JSON) of one call, with the admin token unless ``token`` says otherwise (None: none)."""
        return await self.client.arequest(method, path, body, token=token)


def ca_admin_site(store, clock):
    """Serve a CaAdminSite on ``store`` and ``clock`` (a generator: yields it, then stops listening)."""
    pytest_twisted.blockon(store.register_managed_ca("builtin", "http://ca.test:8080/scep"))
    ca = make_ca(store, clock, auto_approve=False)
    routes = CaAdminRoutes(ca, CaManager(ca, store, TEMPLATES, 3600), store, "builtin").routes()
    routes += AdminRoutes(store, None, None, {}, reactor=reactor).routes()
    api = JsonApi(CA_TOKEN, routes, realm="admin", reactor=reactor)
    port = reactor.listenTCP(0, BodyLimitedSite(api, 1 << 20, 30, reactor=reactor), interface="127.0.0.1")
    yield CaAdminSite("http://127.0.0.1:%d" % (port.getHost().port,), ca, store)
    pytest_twisted.blockon(port.stopListening())
