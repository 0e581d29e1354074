"""The upstream client's answers, failures and cache, driven through StubTreq and a Clock."""

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from scepproxyd.scep.upstream import IUpstream, UpstreamClient, UpstreamError, UpstreamTimeouts


class FakeCA(resource.Resource):
    isLeaf = True

    def __init__(self, caps=b"POSTPKIOperation\nSHA-256\n", pki_code=200, hang=False, big=0):
        super().__init__()
        self.caps = caps
        self.pki_code = pki_code
        self.hang = hang
        self.big = big
        self.seen = []

    def render(self, request):
        op = request.args[b"operation"][0]
        self.seen.append((request.method, op, request.content.read()))
        if op == b"GetCACaps":
            request.setHeader(b"Content-Type", b"text/plain")
            return self.caps
        if self.hang:
            return server.NOT_DONE_YET
        if self.big:
            return b"x" * self.big
        request.setResponseCode(self.pki_code)
        request.setHeader(b"Content-Type", b"application/x-pki-message")
        return b"certrep"


def client_for(ca, clock=None, cache=60.0):
    clock = clock or Clock()
    stub = StubTreq(ca)
    timeouts = UpstreamTimeouts(connect=1, response=5, body=5, max_response_bytes=1024)
    return UpstreamClient(stub, clock, timeouts, cache), stub, clock


def test_client_provides_iupstream():
    client, _, _ = client_for(FakeCA())
    assert verifyObject(IUpstream, client)


@pytest_twisted.ensureDeferred
async def test_drop_connections_without_a_pool_is_done_at_once():
    client, _, _ = client_for(FakeCA())
    assert await client.drop_connections() is None


@pytest_twisted.ensureDeferred
async def test_caps_cached_until_expiry():
    ca = FakeCA()
    client, stub, clock = client_for(ca)
    assert (await client.get_ca_caps("http://ca/scep")).body.startswith(b"POSTPKIOperation")
    await client.get_ca_caps("http://ca/scep")
    assert len(ca.seen) == 1
    clock.advance(61)
    await client.get_ca_caps("http://ca/scep")
    assert len(ca.seen) == 2


@pytest_twisted.ensureDeferred
async def test_post_when_caps_allow_else_get():
    ca = FakeCA()
    client, _, _ = client_for(ca)
    assert await client.supports_post("http://ca/scep")
    answer = await client.pki_operation("http://ca/scep", b"\x30\x03+/=", use_post=True)
    assert answer.status == 200 and answer.content_type == b"application/x-pki-message"
    assert ca.seen[-1] == (b"POST", b"PKIOperation", b"\x30\x03+/=")

    get_only = FakeCA(caps=b"SHA-256\n")
    client, _, _ = client_for(get_only)
    assert not await client.supports_post("http://ca/scep")
    await client.pki_operation("http://ca/scep", b"\x30\x03+/=", use_post=False)
    method, op, _ = get_only.seen[-1]
    assert method == b"GET" and op == b"PKIOperation"


@pytest_twisted.ensureDeferred
async def test_hanging_upstream_times_out_unanswered():
    ca = FakeCA(hang=True)
    client, stub, clock = client_for(ca)
    d = client.pki_operation("http://ca/scep", b"x", use_post=True)
    stub.flush()
    clock.advance(5.1)
    with pytest.raises(UpstreamError) as e:
        await d
    assert e.value.timed_out and not e.value.answered


@pytest_twisted.ensureDeferred
async def test_oversized_answer_refused():
    ca = FakeCA(big=4096)
    client, _, _ = client_for(ca)
    with pytest.raises(UpstreamError, match="larger than 1024 bytes") as e:
        await client.pki_operation("http://ca/scep", b"x", use_post=True)
    assert e.value.answered


@pytest_twisted.ensureDeferred
async def test_unreachable_is_unanswered():
    class Refusing:
        def request(self, *a, **kw):
            from twisted.internet import defer
            from twisted.internet.error import ConnectionRefusedError

            return defer.fail(ConnectionRefusedError())

    client = UpstreamClient(Refusing(), Clock(), UpstreamTimeouts(), 60)
    with pytest.raises(UpstreamError, match="unreachable") as e:
        await client.pki_operation("http://ca/scep", b"x", use_post=True)
    assert not e.value.answered and not e.value.timed_out


@pytest_twisted.ensureDeferred
async def test_ca_url_with_query_keeps_it():
    ca = FakeCA()
    client, _, _ = client_for(ca)
    await client.get_ca_cert("http://ca/cgi-bin/pkiclient.exe?tenant=a", "ca-ident")
    assert ca.seen[-1][1] == b"GetCACert"
