"""The builders scepproxyd.service.make_service is made of, each alone.

The sites are driven in process: their resource trees over the temp Store
on a Clock (conftest's ``store``), with the upstream CA reached through an
UpstreamClient on ``treq.testing.StubTreq``; each site is served on a
loopback port of the test's own reactor.
"""

from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.application.internet import TimerService
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.web import resource
from zope.interface.verify import verifyObject

from support.daemon import daemon_config
from scepproxyd.ca.local import UpstreamRouter
from scepproxyd.config import load_settings
from scepproxyd.daemon.lifecycle import InFlight
from scepproxyd.daemon.metrics import Metrics
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.keys import ChallengeCipher, load_or_create_key
from scepproxyd.scep.upstream import IUpstream, UpstreamClient, UpstreamTimeouts
from scepproxyd.service import (
    admin_api,
    build_admin_site,
    build_ca,
    build_device_site,
    build_jobs,
    build_store,
    build_upstream,
    device_resource,
    health_pages,
    prepare_state,
)
from scepproxyd.web.health import HealthBeside
from support.store import CA, HOST, PROFILE, seed

PORT, ADMIN_PORT = 18080, 18081
TOKEN = "admin-token-" + "x" * 32
WEBHOOK_TOKEN = "webhook-token-" + "y" * 32
CAPS = b"POSTPKIOperation\nSHA-256\nAES\n"


class FakeCA(resource.Resource):
    """An upstream SCEP CA that answers GetCACaps."""

    isLeaf = True

    def render_GET(self, request):
        assert request.args[b"operation"] == [b"GetCACaps"]
        request.setHeader(b"Content-Type", b"text/plain")
        return CAPS


def settings_for(tmp_path, **sections):
    return load_settings(daemon_config(tmp_path, PORT, ADMIN_PORT, **sections))


@pytest.fixture
def settings(tmp_path):
    """Settings without the built-in CA, state prepared."""
    s = settings_for(tmp_path, ca={"enabled": "no"})
    prepare_state(s)
    return s


@pytest_twisted.async_yield_fixture
async def serve():
    """``await serve(site)`` -> base URL of ``site`` on a loopback port; the ports close afterwards."""
    ports = []

    async def listen(site):
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return "http://127.0.0.1:%d" % (port.getHost().port,)

    yield listen
    for port in ports:
        await port.stopListening()


async def call(method: str, url: str, **kwargs) -> tuple[int, bytes]:
    response = await treq.request(method, url, persistent=False, **kwargs)
    return response.code, await response.content()


def http_upstream(clock) -> UpstreamClient:
    return UpstreamClient(StubTreq(FakeCA()), clock, UpstreamTimeouts(), 0)


def test_build_store_owns_the_store_and_its_write_probe(settings):
    clock = MemoryReactorClock()
    parts = build_store(settings, clock)
    assert [s.name for s in parts.services()] == ["store", "write-probe"]
    assert parts.service.store is parts.store
    assert isinstance(parts.write_probe, TimerService)
    assert parts.write_probe.clock is clock
    assert parts.write_probe.step == settings.database.write_probe_interval


def test_build_upstream_is_the_http_client_without_the_builtin_ca(settings):
    parts = build_upstream(settings, MemoryReactorClock(), Metrics())
    assert isinstance(parts.upstream, UpstreamClient)
    assert verifyObject(IUpstream, parts.upstream)
    assert parts.pool_service.name == "upstream-pool"


def test_build_ca_is_none_when_off(settings, store):
    assert build_ca(settings, store, MemoryReactorClock(), Metrics()) is None


def test_builtin_ca_is_reached_through_a_router(tmp_path, store):
    with_ca = settings_for(tmp_path, ca={"key_size": "2048"})
    prepare_state(with_ca)
    ca = build_ca(with_ca, store, reactor, Metrics())
    assert ca.service.name == "builtin-ca"
    assert ca.builtin.url == with_ca.server.public_url + "/scep"
    assert ca.admin_routes
    parts = build_upstream(with_ca, MemoryReactorClock(), Metrics(), ca.builtin)
    assert isinstance(parts.upstream, UpstreamRouter)
    assert verifyObject(IUpstream, parts.upstream)


def test_build_jobs_names_and_intervals(settings, store):
    clock = MemoryReactorClock()
    jobs = build_jobs(settings, store, None, None, clock, Metrics())
    assert [(job.name, job.interval) for job in jobs] == [
        ("process_profiles", settings.profiles.process_interval),
        ("renew_certificates", settings.renewal.interval),
        ("cleanup", settings.challenges.cleanup_interval),
    ]
    assert all(job.service().clock is clock for job in jobs)


@pytest_twisted.ensureDeferred
async def test_device_site_proxies_to_the_upstream_and_serves_health(settings, store, clock, serve):
    await seed(store)
    challenge = await store.issue_challenge(HOST, PROFILE)
    upstream = http_upstream(clock)
    metrics = Metrics()
    cipher = ChallengeCipher(load_or_create_key(settings.key_file))
    renderer = CommandRenderer(store, cipher, settings.server.public_url, reactor, metrics)
    root = device_resource(
        store=store, upstream=upstream, renderer=renderer, webhook_token=WEBHOOK_TOKEN, clock=clock,
        reactor=reactor, metrics=metrics, health=health_pages(store, upstream, metrics, [], lambda: True),
    )
    site = build_device_site(root, settings.server, reactor, InFlight())
    assert site.resource is root
    base = await serve(site)

    identifier = quote(",".join([HOST, PROFILE, CA, challenge]), safe="")
    assert await call("GET", base + "/mdm/scep/proxy/%s?operation=GetCACaps" % (identifier,)) \
        == (200, CAPS)
    code, body = await call("GET", base + "/mdm/scep/proxy/x,y,z,w?operation=GetCACaps")
    assert (code, body) == (400, b"identifier part challenge is not a well-formed challenge\n")
    assert await call("GET", base + "/healthz") == (200, b"ok\n")
    assert (await call("GET", base + "/api/v1/commands"))[0] == 401
    assert (await call("POST", base + "/webhooks/nanomdm", data=b"{}"))[0] == 401
    # No built-in CA, no /scep.
    assert (await call("GET", base + "/scep?operation=GetCACaps"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_admin_site_answers_on_its_token_beside_the_health_pages(settings, store, clock, serve):
    await seed(store)
    upstream = http_upstream(clock)
    api = admin_api(token=TOKEN, store=store, upstream=upstream, cipher=None, jobs={}, settings=settings,
                    reactor=reactor)
    health = health_pages(store, upstream, Metrics(), [], lambda: True)
    site = build_admin_site(api, health, settings, reactor, InFlight())
    assert isinstance(site.resource, HealthBeside)
    base = await serve(site)

    code, body = await call("GET", base + "/api/v1/cas",
                            headers={b"Authorization": [b"Bearer " + TOKEN.encode()]})
    assert code == 200 and b'"acme"' in body
    assert (await call("GET", base + "/api/v1/cas"))[0] == 401
    assert await call("GET", base + "/healthz") == (200, b"ok\n")
