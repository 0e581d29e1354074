"""A device enrolls through the proxy into a real upstream CA (micromdm scepserver).

The daemon runs as the README runs it (twistd, an INI file); the test sets up
its database through the store's API, then drives real scepclient and plain
HTTP against the proxy.
"""


import pytest_twisted
import treq
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, threads
from twisted.web import resource, server

from support.certs import signed_blob
from support.clients import scepclient
from support.site import CA, HOST, PROFILE, identifier_path, pending_host_profile
from support.upstream import CHALLENGE as STATIC_CHALLENGE

@pytest_twisted.inlineCallbacks
def test_scepclient_enrolls_through_proxy_and_replay_fails(tmp_path, upstream, daemon, daemon_store):
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    url = daemon.url + identifier_path(HOST, PROFILE, CA, challenge)

    result = yield threads.deferToThread(scepclient, tmp_path / "device", url, STATIC_CHALLENGE, "device-1")
    assert result.returncode == 0, result.stderr
    issued = x509.load_pem_x509_certificate((tmp_path / "device" / "client.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate(upstream.ca_pem.read_bytes())
    assert issued.issuer == ca_cert.subject
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "device-1"
    assert (yield daemon_store.get_host_profile(HOST, PROFILE)).status == "verifying"
    assert upstream.operations("PKIOperation") == 1

    # Same identifier again: the one-time challenge is spent; the CA never sees it.
    (tmp_path / "device" / "csr.pem").unlink()
    (tmp_path / "device" / "client.pem").unlink()
    again = yield threads.deferToThread(scepclient, tmp_path / "device", url, STATIC_CHALLENGE, "device-1")
    assert again.returncode != 0
    response = yield treq.post(url + "?operation=PKIOperation", data=signed_blob())
    assert response.code == 400
    assert (yield response.text()) == "custom scep challenge failed\n"
    assert upstream.operations("PKIOperation") == 1
    # The replay is harmless: the host profile that enrolled is not knocked back.
    host_profile = yield daemon_store.get_host_profile(HOST, PROFILE)
    assert (host_profile.status, host_profile.retries) == ("verifying", 0)

    log = daemon.log()
    assert challenge not in log
    assert "outcome=challenge_stale" in log
    assert "outcome=challenge_failed" not in log
    assert "outcome=ok" in log


@pytest_twisted.inlineCallbacks
def test_caps_and_cacert_pass_through_without_consuming(upstream, daemon, daemon_store):
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    base = daemon.url + identifier_path(HOST, PROFILE, CA, challenge)
    caps = yield treq.get(base + "?operation=GetCACaps")
    assert caps.code == 200
    assert b"POSTPKIOperation" in (yield caps.content())
    for suffix in ("/PKIClient.exe", "/PKICLIENT.EXE"):  # the segment is matched in any case
        mixed = yield treq.get(base + suffix + "?operation=GetCACaps")
        assert mixed.code == 200
        assert b"POSTPKIOperation" in (yield mixed.content())
    cert = yield treq.get(base + "/pkiclient.exe?operation=GetCACert&message=anything")
    assert cert.code == 200
    assert cert.headers.getRawHeaders(b"Content-Type")[0].startswith(b"application/x-x509-ca")
    der = yield cert.content()
    assert x509.load_der_x509_certificate(der).subject == x509.load_pem_x509_certificate(
        upstream.ca_pem.read_bytes()).subject
    # Nothing was consumed: the challenge still works for the real enrollment.
    assert (yield daemon_store.consume_challenge(challenge, HOST, PROFILE)) is not None


@pytest_twisted.inlineCallbacks
def test_unknown_pieces_give_one_answer(upstream, daemon, daemon_store):
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    answers = set()
    for ident in [("nohost", PROFILE, CA), (HOST, "noprofile", CA), (HOST, PROFILE, "NO_CA")]:
        r = yield treq.get(daemon.url + identifier_path(*ident, challenge) + "?operation=GetCACaps")
        answers.add((r.code, (yield r.text())))
    assert answers == {(400, "unknown host, profile or CA\n")}


@pytest_twisted.inlineCallbacks
def test_malformed_identifier_gets_reason(daemon):
    r = yield treq.get(daemon.url + "/mdm/scep/proxy/x,y,z,w?operation=GetCACaps")
    assert r.code == 400
    assert "challenge" in (yield r.text())
    r = yield treq.get(daemon.url + "/mdm/scep/proxy/a%2Cb%2Cc?operation=GetCACaps")
    assert r.code == 400
    assert "4 comma-separated parts" in (yield r.text())


@pytest_twisted.inlineCallbacks
def test_32_concurrent_pkioperations_one_reaches_upstream(upstream, daemon, daemon_store):
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    url = daemon.url + identifier_path(HOST, PROFILE, CA, challenge) + "?operation=PKIOperation"
    blob = signed_blob()
    responses = yield defer.gatherResults([treq.post(url, data=blob) for _ in range(32)])
    codes = sorted(r.code for r in responses)
    bodies = yield defer.gatherResults([r.text() for r in responses])
    assert upstream.operations("PKIOperation") == 1
    assert bodies.count("custom scep challenge failed\n") == 31
    assert codes.count(400) >= 31


@pytest_twisted.inlineCallbacks
def test_pkioperation_by_get_with_literal_plus(upstream, daemon, daemon_store, tmp_path):
    """GET PKIOperation: base64 with unescaped '+' reaches the CA intact."""
    import base64

    challenge = yield pending_host_profile(daemon_store, upstream.url)
    blob = signed_blob()
    encoded = base64.b64encode(blob).decode()
    url = daemon.url + identifier_path(HOST, PROFILE, CA, challenge) + "?operation=PKIOperation&message=" + encoded
    r = yield treq.get(url)
    # The blob is not a SCEP request, so scepserver refuses it; what matters is that it got there.
    assert upstream.operations("PKIOperation") == 1
    assert r.code in (200, 502)


class _HangingCA(resource.Resource):
    """Answers GetCACaps, then accepts PKIOperation and never answers it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pki_requests = 0
        self.pending = []

    def render(self, request):
        if request.args.get(b"operation") == [b"GetCACaps"]:
            request.setHeader(b"Content-Type", b"text/plain")
            return b"POSTPKIOperation\nSHA-256\nAES\n"
        self.pki_requests += 1
        self.pending.append(request)
        return server.NOT_DONE_YET


@pytest_twisted.inlineCallbacks
def test_slow_upstream_gives_504_and_challenge_survives(daemon, daemon_store):
    hanging = _HangingCA()
    port = reactor.listenTCP(0, server.Site(hanging), interface="127.0.0.1")
    try:
        ca_url = "http://127.0.0.1:%d/scep" % (port.getHost().port,)
        challenge = yield pending_host_profile(daemon_store, ca_url, ca="HANGING")
        url = daemon.url + identifier_path(HOST, PROFILE, "HANGING", challenge) + "?operation=PKIOperation"
        blob = signed_blob()
        first = yield treq.post(url, data=blob)
        assert first.code == 504
        # The upstream never answered, so the challenge was put back: the retry goes upstream again.
        second = yield treq.post(url, data=blob)
        assert second.code == 504
        assert hanging.pki_requests == 2
    finally:
        for request in hanging.pending:
            if request.channel is not None:
                request.channel.transport.abortConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_stopped_upstream_gives_502_and_challenge_survives(tmp_path, upstream, daemon, daemon_store):
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    url = daemon.url + identifier_path(HOST, PROFILE, CA, challenge)
    caps = yield treq.get(url + "?operation=GetCACaps")  # warms the caps cache
    assert caps.code == 200
    yield caps.content()
    upstream.stop()
    r = yield treq.post(url + "?operation=PKIOperation", data=signed_blob())
    assert r.code == 502
    assert "unreachable" in (yield r.text())
    upstream.start()
    result = yield threads.deferToThread(scepclient, tmp_path / "device", url, STATIC_CHALLENGE, "device-2")
    assert result.returncode == 0, result.stderr
    assert (yield daemon_store.get_host_profile(HOST, PROFILE)).status == "verifying"


@pytest_twisted.inlineCallbacks
def test_upstream_refusal_sends_profile_back(tmp_path, upstream, daemon, daemon_store):
    """The CA answers FAILURE (wrong static challenge in the CSR): no certificate, profile resent."""
    challenge = yield pending_host_profile(daemon_store, upstream.url)
    url = daemon.url + identifier_path(HOST, PROFILE, CA, challenge)
    result = yield threads.deferToThread(scepclient, tmp_path / "device", url, "wrong-static", "device-3")
    assert result.returncode != 0
    assert not (tmp_path / "device" / "client.pem").exists()
    host_profile = yield daemon_store.get_host_profile(HOST, PROFILE)
    assert host_profile.status is None
    assert host_profile.retries == 1
    assert "upstream CA refused the request" in host_profile.detail
    assert "outcome=refused" in daemon.log()
