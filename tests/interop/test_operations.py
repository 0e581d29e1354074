"""Operating the daemon: HTTPS both ways, metrics, health, reload on SIGHUP, graceful stop."""

import signal
import ssl as stdlib_ssl
import http.client
import time

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.web import resource, server

from support.api import Api
from support.certs import PrivateCA, self_signed_der, signed_blob
from support.daemon import Daemon
from scepproxyd.daemon.tls import server_context
from support.site import identifier_path, pending_host_profile


def https_get(port, path, cafile, server_hostname="localhost"):
    context = stdlib_ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    # Connect by address, verify the name we were told to expect.
    connection.sock = context.wrap_socket(
        __import__("socket").create_connection(("127.0.0.1", port), timeout=10), server_hostname=server_hostname
    )
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def test_serves_https_and_wrong_hostname_is_refused(tmp_path):
    ca = PrivateCA(tmp_path)
    cert, key = ca.server("proxy")
    d = Daemon(tmp_path, server={"tls_certificate": str(cert), "tls_key": str(key)}).start()
    try:
        status, body = https_get(d.port, "/healthz", ca.pem)
        assert (status, body) == (200, b"ok\n")
        with pytest.raises(stdlib_ssl.SSLCertVerificationError):
            https_get(d.port, "/healthz", ca.pem, server_hostname="wrong.example")
    finally:
        d.stop()


class TLSCA(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        # No persistent connections, so stopping the port really makes this CA unreachable.
        request.setHeader(b"Connection", b"close")
        request.setHeader(b"Content-Type", b"application/x-x509-ca-cert")
        return self_signed_der("Upstream over TLS")


@pytest.fixture
def tls_upstream(tmp_path):
    ca = PrivateCA(tmp_path)
    cert, key = ca.server("upstream")
    port = reactor.listenSSL(0, server.Site(TLSCA()), server_context(cert, key), interface="127.0.0.1")
    yield ca, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_upstream_https_verified_by_bundle_or_refused(tls_upstream, daemon):
    ca, port = tls_upstream
    admin_headers = {b"Authorization": [b"Bearer " + daemon.admin_token.encode()]}

    async def add(name, url, **extra):
        body = dict({"name": name, "url": url, "challenge": "c"}, **extra)
        r = await treq.post(daemon.admin_url + "/api/v1/cas", json=body, headers=admin_headers)
        return r.code, await r.json()

    url = "https://localhost:%d/scep" % (port,)
    code, body = await add("SYSTEM_TRUST", url)
    assert code == 422 and body["field"] == "url" and "did not answer GetCACert" in body["error"]
    code, body = await add("WITH_BUNDLE", url, trust_bundle=ca.pem.read_text())
    assert code == 201 and body["trust_bundle"] is True and body["tls_verify"] is True
    # Same server, reached by a name its certificate does not carry.
    code, body = await add("WRONG_NAME", "https://127.0.0.1:%d/scep" % (port,), trust_bundle=ca.pem.read_text())
    assert code == 422
    code, body = await add("BAD_BUNDLE", url, trust_bundle="not a pem")
    assert (code, body["field"]) == (422, "trust_bundle")
    code, body = await add("INSECURE", "https://127.0.0.1:%d/scep" % (port,), tls_verify=False)
    assert code == 201 and body["tls_verify"] is False
    assert "TLS verification is OFF for CA INSECURE" in daemon.log()


@pytest_twisted.ensureDeferred
async def test_metrics_parse_and_move_with_traffic(daemon):
    async def scrape():
        r = await treq.get(daemon.url + "/metrics")
        assert r.code == 200
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        return families

    before = await scrape()
    for _ in range(3):
        r = await treq.get(daemon.url + "/mdm/scep/proxy/x,y,z,w?operation=GetCACaps")
        await r.content()
    after = await scrape()

    def count(families):
        family = families.get("scepproxyd_proxy_requests")
        if family is None:
            return 0
        return sum(s.value for s in family.samples
                   if s.name.endswith("_total") and s.labels.get("outcome") == "bad_request")

    assert count(after) == count(before) + 3
    assert "scepproxyd_host_profiles" in after
    await (await treq.post(daemon.admin_url + "/api/v1/jobs/cleanup",
                           headers={b"Authorization": [b"Bearer " + daemon.admin_token.encode()]})).content()
    final = await scrape()
    runs = [s for s in final["scepproxyd_job_runs"].samples if s.labels.get("job") == "cleanup" and s.name.endswith("_total")]
    assert runs and runs[0].value >= 1


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(tmp_path, daemon):
    r = await treq.get(daemon.url + "/healthz")
    assert (r.code, await r.text()) == (200, "ok\n")
    r = await treq.get(daemon.url + "/readyz")
    assert (r.code, await r.text()) == (200, "ready\n")  # only the built-in CA, which always answers
    admin = Api(daemon.admin_url, daemon.admin_token)
    # A CA that answered when added and is gone now: not ready, and says which.
    port = reactor.listenTCP(0, server.Site(TLSCA()), interface="127.0.0.1")
    url = "http://127.0.0.1:%d/scep" % (port.getHost().port,)
    await admin.acall("POST", "/api/v1/cas", {"name": "FLAKY", "url": url, "challenge": "c"})
    await port.stopListening()
    r = await treq.get(daemon.url + "/readyz")
    text = await r.text()
    assert r.code == 503 and "CA FLAKY" in text
    assert (await treq.get(daemon.url + "/healthz")).code == 200


def test_sighup_applies_log_level_and_names_the_rest(tmp_path):
    d = Daemon(tmp_path, logging={"level": "info"}).start()
    try:
        text = d.config.read_text()
        assert "level = info" in text and "body_timeout = 2s" in text
        d.config.write_text(text.replace("level = info", "level = warn").replace("body_timeout = 2s", "body_timeout = 3s"))
        d.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reloaded configuration" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = d.log()
        assert "reloaded configuration: applied logging.level" in log
        assert "needs a restart: upstream.body_timeout" in log
        # A broken file is refused and the daemon keeps running on the old one.
        d.config.write_text("[server]\nlisten = nonsense:1\n")
        d.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload refused" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused, still running on the old configuration" in d.log()
        assert d.process.poll() is None
    finally:
        d.stop()


class Hanging(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render(self, request):
        if request.args.get(b"operation") == [b"GetCACaps"]:
            return b"POSTPKIOperation\n"
        if request.args.get(b"operation") == [b"GetCACert"]:
            request.setHeader(b"Content-Type", b"application/x-x509-ca-cert")
            return self_signed_der()
        self.pending.append(request)
        return server.NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    """A request in flight at SIGTERM still gets its answer (here the 504 after 2 s), then the daemon exits."""
    from scepproxyd.store import Store

    d = Daemon(tmp_path, server={"shutdown_grace": "10s"}).start()
    hanging = Hanging()
    port = reactor.listenTCP(0, server.Site(hanging), interface="127.0.0.1")
    store = Store(d.database, reactor)
    await store.start()
    try:
        challenge = await pending_host_profile(store, "http://127.0.0.1:%d/scep" % port.getHost().port, ca="HANGS")
        url = d.url + identifier_path("C8QHT3K1Q6L4", "a1b2c3d4-profile", "HANGS", challenge)
        in_flight = treq.post(url + "?operation=PKIOperation", data=signed_blob())
        while not hanging.pending:
            await threads.deferToThread(time.sleep, 0.05)
        d.process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.code == 504
        code = await threads.deferToThread(d.process.wait, 30)
        assert code in (0, -signal.SIGTERM)
        assert "waiting up to 10 s for 1 requests in flight" in d.log()
    finally:
        await store.stop()
        await port.stopListening()
        d.stop()
