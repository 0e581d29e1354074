"""The daemon's two web trees in process: device-facing and admin, wired as service.make_service wires them.

``build_web`` is the one place that constructs them for tests: the real
ScepProxy, ProxyResource, agent API, NanoMDM webhook, health pages, metrics,
built-in CA, admin API and agent-credential routes, over a started temp
Store on a Clock. Requests go through ``treq.testing.StubTreq`` (no sockets);
the upstream UpstreamClient's HTTP client is a StubTreq too, around
``UpstreamCAs``: another scepproxyd's built-in CA served by its own SCEP
resource (real CertReps), beside small CAs that fail in one way each.
Listeners are the real strports services over a MemoryReactor, so the
listener factory (connection cap, body-limited site) can be driven with a
StringTransport for what needs a connection (413, 408).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import attrs
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.web import resource, server

from scepproxyd import service
from scepproxyd.ca.material import prepare_ca_material
from scepproxyd.ca.wiring import build_builtin_ca
from scepproxyd.config import parse_settings
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.keys import ChallengeCipher, load_or_create_key, load_or_create_token
from scepproxyd.daemon.lifecycle import InFlight, write_probe_service
from scepproxyd.daemon.metrics import Metrics
from scepproxyd.web.ca import ScepResource
from scepproxyd.web.site import BodyLimitedSite

from support.store import migrated, started_store

PUBLIC_URL = "http://proxy.test:8080"
ADMIN_URL = "http://admin.test:8081"
#: Where the upstream CAs live; every CA integration a test adds points under it.
UPSTREAM = "http://upstream.test"
UPSTREAM_CA_URL = UPSTREAM + "/scep"
#: The upstream CA keeps PENDING whatever subject does not match this (its auto_approve_subject): the
#: Fleet profile's devices, and the RA identities of CA integrations named RA_* (others wait for an admin).
AUTO_APPROVED_SUBJECT = ".*WIFI.*|CN=scepproxyd RA for RA_.*,O=scepproxyd"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "profiles"
APPLE_PROFILE = FIXTURES / "fleet-custom-scep-apple.mobileconfig"
#: Small enough that a test CA can exceed it cheaply.
MAX_RESPONSE_BYTES = 64 * 1024


def _ini(state: Path, database: Path | None, sections: dict) -> str:
    values = {
        "state": {"directory": str(state)},
        "server": {"public_url": PUBLIC_URL, "listen": "tcp:8080:interface=127.0.0.1"},
        "admin": {"listen": "tcp:8081:interface=127.0.0.1"},
        "upstream": {"max_response_bytes": str(MAX_RESPONSE_BYTES)},
        "ca": {"enabled": "yes", "key_size": "2048"},
    }
    if database is not None:
        values["database"] = {"path": str(database)}
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    return "".join("[%s]\n%s\n" % (s, "".join("%s = %s\n" % kv for kv in keys.items())) for s, keys in values.items())


def settings_in(directory: Path, database: Path | None = None, **sections):
    """Settings as the daemon reads them from an INI in ``directory`` (state there too), CA material made."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = parse_settings(_ini(directory / "state", database, sections), directory / "scepproxyd.ini")
    settings.state_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.ca.enabled:
        if not _reuse_ca_files(settings.ca):
            prepare_ca_material(settings.ca)
        _CA_FILES.setdefault(settings.ca.subject, (settings.ca.key_file.read_bytes(),
                                                   settings.ca.certificate_file.read_bytes()))
    return settings


#: CA key and certificate files by subject, made once per test run: RSA key generation is the slow part.
_CA_FILES: dict[str, tuple[bytes, bytes]] = {}


def _reuse_ca_files(ca) -> bool:
    """Put this run's key and certificate for ``ca.subject`` in place, as prepare_ca_material's first start would."""
    if ca.subject not in _CA_FILES or ca.key_file.exists():
        return False
    key, certificate = _CA_FILES[ca.subject]
    ca.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca.key_file.write_bytes(key)
    ca.key_file.chmod(0o600)
    ca.certificate_file.write_bytes(certificate)
    load_or_create_token(ca.challenge_file)
    return True


# -- the upstream CAs ------------------------------------------------------------------------


class MisbehavingCA(resource.Resource):
    """A CA that answers GetCACaps and GetCACert like the real one and PKIOperation (or everything) badly.

    ``how``: ``http_500`` (HTTP 500), ``garbage`` (200 with bytes that are not a SCEP message),
    ``oversized`` (a 200 answer over MAX_RESPONSE_BYTES), ``reset`` (the connection closes
    before any answer), ``malformed_http`` (bytes that are not HTTP), ``cut`` (the connection
    closes halfway through the body), ``hang`` (never answers), ``stall`` (headers and part of
    the body, then nothing), ``well`` (answers as the real CA does: a CA that is well again, at the same
    URL). With ``everything`` GetCACaps and GetCACert misbehave too.
    """

    isLeaf = True

    def __init__(self, real: ScepResource, how: str, everything: bool = False):
        super().__init__()
        self._real = real
        self.how = how
        self.everything = everything
        #: Operations that reached this CA, in order.
        self.seen: list[str] = []

    def render(self, request):
        operation = (request.args.get(b"operation") or [b"-"])[0].decode("ascii", "replace")
        self.seen.append(operation)
        if (operation != "PKIOperation" and not self.everything) or self.how == "well":
            return self._real.render(request)
        transport = request.channel.transport
        if self.how == "http_500":
            request.setResponseCode(500)
            return b"internal CA error\n"
        if self.how == "garbage":
            request.setHeader(b"Content-Type", b"application/x-pki-message")
            return b"this is not a CertRep"
        if self.how == "oversized":
            request.setHeader(b"Content-Type", b"application/x-pki-message")
            return b"\x30" * (MAX_RESPONSE_BYTES + 1)
        if self.how == "reset":
            transport.abortConnection()
            return server.NOT_DONE_YET
        if self.how == "malformed_http":
            transport.write(b"SCEP IS NOT HTTP\r\n\r\n")
            transport.loseConnection()
            return server.NOT_DONE_YET
        if self.how == "cut":
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
                            b"Content-Length: 1000\r\n\r\n0123456789")
            transport.loseConnection()
            return server.NOT_DONE_YET
        if self.how == "stall":
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pki-message\r\n"
                            b"Content-Length: 1000\r\n\r\n0123456789")
            return server.NOT_DONE_YET
        assert self.how == "hang", self.how
        return server.NOT_DONE_YET


@attrs.define
class UpstreamCAs:
    """``http://upstream.test/``: ``/scep`` is a real CA; ``/<how>[-all]`` fail as MisbehavingCA says."""

    root: resource.Resource
    ca: object  # ca.wiring.BuiltinCA: another scepproxyd's built-in CA, static challenge on
    store: object
    scep: ScepResource
    misbehaving: dict

    def url(self, how: str | None = None, everything: bool = False) -> str:
        """The URL of the real CA, or of one that misbehaves ``how``."""
        if how is None:
            return UPSTREAM_CA_URL
        key = how + ("-all" if everything else "")
        if key not in self.misbehaving:
            ca = MisbehavingCA(self.scep, how, everything)
            self.misbehaving[key] = ca
            self.root.putChild(key.encode("ascii"), ca)
        return "%s/%s" % (UPSTREAM, key)

    @property
    def static_challenge(self) -> str:
        return self.ca.static_challenge


class ClockWithThreads:
    """What the daemon's reactor is to its wiring, made of a test's Clock for time and the real reactor's
    worker threads (and its callFromThread to come back) for the work it sends off the reactor thread."""

    def __init__(self, clock):
        self._clock = clock

    def __getattr__(self, name):
        return getattr(self._clock, name)

    def getThreadPool(self):
        return reactor.getThreadPool()

    def callFromThread(self, f, *args, **kwargs):
        return reactor.callFromThread(f, *args, **kwargs)


async def upstream_cas(directory: Path, clock) -> UpstreamCAs:
    """A second scepproxyd's built-in CA, with its own store, as the upstream CA the proxy talks HTTP to."""
    settings = settings_in(directory, ca={
        "static_challenge": "yes", "auto_approve_subject": AUTO_APPROVED_SUBJECT,
        "auto_approve_networks": "127.0.0.0/8", "subject": "CN=Upstream Test CA",
    })
    store = await started_store(migrated(settings.database.path), reactor, clock)
    ca = build_builtin_ca(settings, store, ClockWithThreads(clock))
    scep = ScepResource(ca.authority)
    root = resource.Resource()
    root.putChild(b"scep", scep)
    return UpstreamCAs(root, ca, store, scep, {})


# -- the daemon's web layer ------------------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    headers: object
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)

    @property
    def content_type(self) -> bytes:
        return (self.headers.getRawHeaders(b"Content-Type") or [b""])[0]


@attrs.define
class Enrollment:
    """A host profile delivered through the agent API: what its device holds."""

    host: str
    profile: str
    ca: str
    payload: str
    url: str  # the proxy URL the profile carries, challenge included
    challenge_password: str  # the profile's Challenge field (the CA's static challenge)
    subject_cn: str
    command: str = ""  # the command that carried it
    credential: str = attrs.field(default="", repr=False)  # the host's agent credential

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    @property
    def one_time_challenge(self) -> str:
        return urllib.parse.unquote(self.path.rsplit("/", 1)[1]).split(",")[3]

    def with_challenge(self, challenge: str) -> str:
        """This profile's proxy path with another one-time challenge in it."""
        host, profile, ca, _ = urllib.parse.unquote(self.path.rsplit("/", 1)[1]).split(",")
        return "/mdm/scep/proxy/" + urllib.parse.quote(",".join((host, profile, ca, challenge)), safe="")


@attrs.define
class Web:
    settings: object
    store: object
    clock: object
    metrics: Metrics
    upstream_cas: UpstreamCAs
    builtin_ca: object
    site: BodyLimitedSite
    admin_site: BodyLimitedSite
    listeners: list
    listen_reactor: MemoryReactorClock
    write_probe: object
    admin_token: str
    webhook_token: str
    device_stub: StubTreq
    admin_stub: StubTreq
    upstream_stub: StubTreq

    # -- requests ---------------------------------------------------------------------------

    async def settle(self, d):
        """``d``'s result, pumping the in-memory connections while the store's thread and the CAs work."""
        done = []
        d.addBoth(lambda result: done.append(result) or result)
        while not done:
            for stub in (self.device_stub, self.admin_stub, self.upstream_stub):
                stub.flush()
            if not done:
                await deferLater(reactor, 0.001, lambda: None)
        return await d

    async def _request(self, stub, base, method, path, body=None, headers=None) -> Answer:
        kwargs = {"headers": headers or {}}
        if body is not None:
            kwargs["data"] = body
        response = await self.settle(stub.request(method, base + path, **kwargs))
        content = await self.settle(stub.content(response))
        return Answer(response.code, response.headers, content)

    def device(self, method: str, path: str, body: bytes | None = None, headers=None):
        """A request to the device-facing listener."""
        return self._request(self.device_stub, PUBLIC_URL, method, path, body, headers)

    def admin(self, method: str, path: str, body=None, token: str | None = None, content_type="application/json"):
        """A request to the admin listener with the admin token (or ``token``); dicts and lists go as JSON."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        headers = {b"Authorization": [b"Bearer " + (token or self.admin_token).encode("ascii")]}
        if body is not None:
            headers[b"Content-Type"] = [content_type.encode("ascii")]
        return self._request(self.admin_stub, ADMIN_URL, method, path, body, headers)

    def agent(self, method: str, host: str, path: str, credential: str, body=None, content_type="application/json"):
        """A request to the agent API for ``host`` with ``credential``."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        headers = {b"Authorization": [b"Bearer " + credential.encode("ascii")]}
        if body is not None:
            headers[b"Content-Type"] = [content_type.encode("ascii")]
        return self.device(method, "/api/v1/agent/hosts/%s%s" % (host, path), body, headers)

    async def metric(self, name: str, **labels) -> float:
        """A sample of the device listener's ``/metrics`` (0 when it is not there yet)."""
        page = await self.device("GET", "/metrics")
        assert page.status == 200, page.body
        for family in text_string_to_metric_families(page.text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def connection(self, listener: str = "proxy-listener"):
        """A protocol of that listener's real factory on a StringTransport (for what needs a connection)."""
        from twisted.internet.testing import StringTransport

        index = [svc.name for svc in self.listeners].index(listener)
        factory = self.listen_reactor.tcpServers[index][1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    # -- the admin's and the agent's steps ----------------------------------------------------

    async def ok(self, answer_deferred, status=(200, 201, 204)):
        answer = await answer_deferred
        assert answer.status in ((status,) if isinstance(status, int) else status), (answer.status, answer.body)
        return answer.json() if answer.body else None

    async def credential(self, host: str) -> str:
        return (await self.ok(self.admin("POST", "/api/v1/hosts/%s/agent-credential" % (host,))))["token"]

    async def enrollment(self, host: str = "C8QHT3K1Q6L4", ca: str = "UPSTREAM_CA", ca_url: str | None = None,
                         identifier: str | None = None) -> Enrollment:
        """What an admin and an agent do until the device holds its profile: CA, host, profile, job, fetch."""
        if (await self.admin("GET", "/api/v1/cas/%s" % (ca,))).status == 404:
            await self.ok(self.admin("POST", "/api/v1/cas", {
                "name": ca, "url": ca_url or self.upstream_cas.url(), "challenge": self.upstream_cas.static_challenge}))
        await self.ok(self.admin("PUT", "/api/v1/hosts/%s" % (host,), {"serial": "SER-" + host, "platform": "macos"}))
        text = APPLE_PROFILE.read_text().replace("CA_NAME", ca)
        text = text.replace("<string>Fleet.WiFi</string>", "<string>%s</string>" % (identifier or "Fleet.WiFi." + ca))
        profile = await self.ok(self.admin("POST", "/api/v1/profiles", text.encode("utf-8"),
                                           content_type="application/x-apple-aspen-config"))
        await self.ok(self.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": [host]}))
        await self.ok(self.admin("POST", "/api/v1/jobs/process_profiles"))
        credential = await self.credential(host)
        commands = (await self.ok(self.agent("GET", host, "/commands", credential)))["commands"]
        (command,) = [c for c in commands if c["profile_uuid"] == profile["uuid"]]
        return Enrollment(host, profile["uuid"], ca, command["payload"], *_scep_fields(command["payload"]),
                          command=command["command_uuid"], credential=credential)

    async def android_enrollment(self, template: dict, host: str = "PIXEL-8A", ca: str = "builtin") -> Enrollment:
        """
        An Android certificate template (``template``, its variables naming ``ca``) uploaded, assigned to an
        android host and fetched by that host's agent; ``payload`` is the rendered template, ``subject_cn``
        its CN.
        """
        await self.ok(self.admin("PUT", "/api/v1/hosts/%s" % (host,), {"serial": "SER-" + host, "platform": "android"}))
        profile = await self.ok(self.admin("POST", "/api/v1/profiles", json.dumps(template).encode("utf-8"),
                                           content_type="application/json"))
        await self.ok(self.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": [host]}))
        await self.ok(self.admin("POST", "/api/v1/jobs/process_profiles"))
        credential = await self.credential(host)
        commands = (await self.ok(self.agent("GET", host, "/commands", credential)))["commands"]
        (command,) = [c for c in commands if c["profile_uuid"] == profile["uuid"]]
        rendered = json.loads(command["payload"])
        (cn,) = [part[3:] for part in rendered["subject"].split(",") if part.startswith("CN=")]
        return Enrollment(host, profile["uuid"], ca, command["payload"], rendered["scep"]["url"],
                          rendered["scep"]["challenge"], cn, command=command["command_uuid"], credential=credential)

    async def ca_certificate(self, enrollment: Enrollment):
        """
        The certificate the device encrypts to and checks answers with, from GetCACert through the proxy.

        The CA's certificate; for a CA in RA mode (``application/x-x509-ca-ra-cert``) the RA's, the one that
        is not a CA (a PKCS#7 SET OF certificates is sorted by its DER encoding, so its place says nothing).
        """
        from cryptography import x509
        from scepproxyd.scep import codec

        answer = await self.device("GET", enrollment.path + "?operation=GetCACert")
        assert answer.status == 200, answer.body
        if answer.content_type == b"application/x-x509-ca-ra-cert":
            certificates = [x509.load_der_x509_certificate(der) for der in codec.ca_certificates(answer.body)]
            (ra,) = [c for c in certificates
                     if not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca]
            return ra
        return x509.load_der_x509_certificate(answer.body)

    async def pkcs_req(self, enrollment: Enrollment, cn: str | None = None, challenge: str | None = None,
                       subject=None, sans=None):
        """
        A device's PKCSReq for ``enrollment`` (micromdm style, made in process): ``DeviceRequest``.

        The CSR's subject is ``CN=<cn>``, or ``subject`` (an x509.Name; bound_subject(enrollment) is what
        the profile renders, which a CA in RA mode insists on); ``sans`` (x509 GeneralNames) its
        subjectAltNames.
        """
        from support.certs import csr as make_csr
        from support.scep_capture import make_device
        from scepproxyd.scep import codec

        ca_cert = await self.ca_certificate(enrollment)
        cn = cn or enrollment.subject_cn.replace("%SerialNumber%", "SER-" + enrollment.host)
        key, cert, csr = make_device(cn, challenge or enrollment.challenge_password)
        if subject is not None or sans:
            csr = make_csr(key, subject if subject is not None else cn, sans,
                           challenge=challenge or enrollment.challenge_password)
        message, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=cert,
                                         recipient_certificate=ca_cert, csr=csr)
        return DeviceRequest(message, key, cert, ca_cert, cn)

    async def host_profile(self, host: str, profile: str) -> dict:
        page = await self.ok(self.admin("GET", "/api/v1/host-profiles?host=%s&profile=%s" % (host, profile)))
        (only,) = page["host_profiles"]
        return only


@attrs.frozen
class DeviceRequest:
    message: bytes = attrs.field(repr=False)
    key: object = attrs.field(repr=False)
    certificate: object
    ca_certificate: object
    cn: str

    def read(self, answer: Answer):
        """``(pkiStatus, failInfo, certificates)`` of the CertRep in ``answer``, verified and decrypted."""
        from scepproxyd.scep import codec

        assert answer.status == 200, (answer.status, answer.body)
        assert answer.content_type == b"application/x-pki-message"
        return codec.read_response(answer.body, self.key, self.certificate, self.ca_certificate)


def bound_subject(enrollment: Enrollment):
    """The subject APPLE_PROFILE renders for ``enrollment``'s host (CN, then OU), as x509.Name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cn = enrollment.subject_cn.replace("%SerialNumber%", "SER-" + enrollment.host)
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "FLEET DEVICE MANAGEMENT")])


def _scep_fields(payload: str) -> tuple[str, str, str]:
    """URL, Challenge and the CN of the Subject in a rendered mobileconfig's SCEP payload."""
    import plistlib

    scep = plistlib.loads(payload.encode("utf-8"))["PayloadContent"][0]["PayloadContent"]
    cn = [value for ((name, value),) in scep["Subject"] if name == "CN"][0]
    return scep["URL"], scep["Challenge"], cn


async def build_web(store, clock, directory: Path, database: Path | None = None, **sections) -> Web:
    """The device-facing and admin trees over ``store`` and ``clock``, as make_service builds them.

    ``database`` is the store's file (for the backup routes); ``sections`` are INI values (``upstream={"response_timeout": "5s"}``); the state
    directory is under ``directory``. Time is ``clock``; work the daemon sends to worker
    threads (profile parsing, imports) uses the real reactor's pool, as the store does. The upstream CAs run on their own store in
    ``directory / "upstream-ca"``; stop them with ``await web.stop()``.
    """
    settings = settings_in(directory / "daemon", database=database, **sections)
    metrics = Metrics()
    in_flight = InFlight()
    cas = await upstream_cas(directory / "upstream-ca", clock)
    upstream_stub = StubTreq(cas.root)
    daemon_reactor = ClockWithThreads(clock)

    ca = service.build_ca(settings, store, daemon_reactor, metrics)
    builtin_ca = ca.builtin if ca is not None else None
    if builtin_ca is not None:
        await store.register_managed_ca(builtin_ca.name, builtin_ca.url)  # what ManagedCaService does at start
    upstream = service.build_upstream(settings, daemon_reactor, metrics, builtin_ca, http_client=upstream_stub)
    cipher = ChallengeCipher(load_or_create_key(settings.key_file))
    renderer = CommandRenderer(
        store, cipher, settings.server.public_url, daemon_reactor, metrics,
        builtin_template=settings.ca.default_template,
    )
    jobs = service.build_jobs(settings, store, renderer, upstream.http_client, daemon_reactor, metrics)

    listeners = []
    health = service.health_pages(store, upstream.upstream, metrics, listeners, lambda: True)
    webhook_token = load_or_create_token(settings.delivery.webhook_token_file)
    device_root = service.device_resource(
        store=store, upstream=upstream.upstream, renderer=renderer, webhook_token=webhook_token,
        clock=daemon_reactor, reactor=daemon_reactor, metrics=metrics, builtin_ca=builtin_ca, health=health,
        ra_flow=service.build_ra_flow(settings, store, upstream.upstream, cipher, daemon_reactor, metrics),
        target_cache_seconds=settings.server.target_cache_seconds,
    )
    site = service.build_device_site(device_root, settings.server, daemon_reactor, in_flight)
    admin_token = load_or_create_token(settings.admin.token_file)
    api = service.admin_api(
        token=admin_token, store=store, upstream=upstream.upstream, cipher=cipher,
        jobs={job.name: job for job in jobs}, settings=settings, reactor=daemon_reactor, trust=upstream.trust,
        ca_routes=ca.admin_routes if ca is not None else [],
    )
    admin_site = service.build_admin_site(api, health, settings, daemon_reactor, in_flight)
    # Listeners as the daemon makes them (connection caps, TLS), on a reactor that opens no socket.
    listen_reactor = MemoryReactorClock()
    listeners.append(service._listener(settings.server.listen, site, settings, listen_reactor, "proxy-listener",
                                       metrics))
    listeners.append(service._listener(settings.admin.listen, admin_site, settings, listen_reactor, "admin-listener",
                                       metrics))
    for listener in listeners:
        listener.startService()
    probe = write_probe_service(store, settings.database.write_probe_interval, clock)
    return Web(settings, store, clock, metrics, cas, builtin_ca, site, admin_site, listeners, listen_reactor, probe,
               admin_token, webhook_token, StubTreq(site.resource), StubTreq(admin_site.resource), upstream_stub)


async def stop_web(web: Web) -> None:
    """Stop what build_web started besides the caller's store: listeners, the probe, the upstream CA's store."""
    for listener in web.listeners:
        if listener.running:
            await listener.stopService()
    if web.write_probe.running:
        await web.write_probe.stopService()
    await web.upstream_cas.store.stop()

