"""``/api/v1/ca/...`` through a real listener in the test process, with the CA answering in process."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock

from scepproxyd.ca.manage import CaManager
from scepproxyd.scep import codec
from scepproxyd.store import Store
from scepproxyd.web.admin import AdminRoutes
from scepproxyd.web.admin_ca import CaAdminRoutes
from scepproxyd.web.api import JsonApi
from scepproxyd.web.site import BodyLimitedSite
from test_ca_authority import EPOCH, TEMPLATES, Device, make_ca

TOKEN = "a" * 43


class Api:
    def __init__(self, url, ca, store):
        self.url, self.ca, self.store = url, ca, store

    async def call(self, method, path, body=None, token=TOKEN):
        headers = {b"Authorization": [b"Bearer " + token.encode()]} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        response = await treq.request(method, self.url + path, headers=headers, data=data)
        text = await response.text()
        return response.code, (json.loads(text) if text else None)


@pytest.fixture
def api(tmp_path):
    path = tmp_path / "db.sqlite3"
    Store.migrate(path)
    clock = Clock()
    clock.advance(EPOCH)
    store = Store(path, reactor, clock=clock)
    pytest_twisted.blockon(store.start())
    pytest_twisted.blockon(store.register_managed_ca("builtin", "http://ca.test:8080/scep"))
    ca = make_ca(store, clock, auto_approve=False)
    routes = CaAdminRoutes(ca, CaManager(ca, store, TEMPLATES, 3600), store, "builtin").routes()
    routes += AdminRoutes(store, None, None, {}, reactor=reactor).routes()
    port = reactor.listenTCP(0, BodyLimitedSite(JsonApi(TOKEN, routes, realm="admin", reactor=reactor), 1 << 20, 30, reactor=reactor),
                             interface="127.0.0.1")
    yield Api("http://127.0.0.1:%d" % (port.getHost().port,), ca, store)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(store.stop())


async def pending_request(api, cn="device-1"):
    device = Device(cn)
    message = device.request(api.ca, csr=device.csr())
    await api.ca.pki_operation(message, "10.0.0.9")
    return codec.read_header(message).transaction_id


@pytest_twisted.ensureDeferred
async def test_show_ca(api):
    code, body = await api.call("GET", "/api/v1/ca")
    assert code == 200
    assert body["name"] == "builtin"
    assert body["subject"] == "CN=Test Builtin CA,O=scepproxyd tests"
    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert len(body["fingerprint"].split(":")) == 32
    assert body["crl_url"] == "http://ca.test:8080/scep/crl"
    assert body["requests"]["pending"] == 0 and body["certificates"] == {"valid": 0, "revoked": 0}
    assert (await api.call("GET", "/api/v1/ca", token=None))[0] == 401


@pytest_twisted.ensureDeferred
async def test_managed_ca_row_cannot_be_edited_or_deleted(api):
    for method, body in (("PATCH", {"url": "http://elsewhere/scep"}), ("DELETE", None)):
        code, answer = await api.call(method, "/api/v1/cas/builtin", body)
        assert (code, answer["error"]) == (409, "CA 'builtin' is managed by the [ca] section of the configuration")
    assert (await api.call("GET", "/api/v1/cas/builtin"))[1]["url"] == "http://ca.test:8080/scep"


@pytest_twisted.ensureDeferred
async def test_challenges(api):
    code, body = await api.call("POST", "/api/v1/ca/challenges", {"template": "wifi", "ttl": "2h"})
    assert code == 201
    assert len(body["challenge"]) == 32 and body["template"] == "wifi"
    assert body["expires_at"] == "2023-11-15T00:13:20+00:00"
    code, body = await api.call("POST", "/api/v1/ca/challenges")
    assert (code, body["template"]) == (201, "default")
    assert await api.call("POST", "/api/v1/ca/challenges", {"template": "nope"}) == (
        422, {"error": "template must be one of default, wifi", "field": "template"})
    for ttl in ("soon", -5, True, 40 * 86400):
        code, body = await api.call("POST", "/api/v1/ca/challenges", {"ttl": ttl})
        assert (code, body["field"]) == (422, "ttl")


@pytest_twisted.ensureDeferred
async def test_requests_approve_reject(api):
    first, second = await pending_request(api, "one"), await pending_request(api, "two")
    code, body = await api.call("GET", "/api/v1/ca/requests?status=pending")
    assert code == 200 and {r["transaction_id"] for r in body["requests"]} == {first, second}
    assert (await api.call("GET", "/api/v1/ca/requests?status=bogus"))[0] == 422

    code, body = await api.call("POST", "/api/v1/ca/requests/%s/approve" % (first,))
    assert (code, body["status"]) == (200, "approved") and body["issued_serial"]
    code, body = await api.call("POST", "/api/v1/ca/requests/%s/approve" % (first,))
    assert code == 409 and "not pending" in body["error"]
    code, body = await api.call("POST", "/api/v1/ca/requests/%s/reject" % (second,), {"reason": "who is this"})
    assert (code, body["status"], body["detail"]) == (200, "rejected", "who is this")
    assert (await api.call("POST", "/api/v1/ca/requests/nope/approve"))[0] == 404
    assert (await api.call("POST", "/api/v1/ca/requests/nope/reject", {"reason": 5}))[0] == 422


@pytest_twisted.ensureDeferred
async def test_certificates_and_revoke(api):
    txid = await pending_request(api)
    serial = (await api.call("POST", "/api/v1/ca/requests/%s/approve" % (txid,)))[1]["issued_serial"]
    code, body = await api.call("GET", "/api/v1/ca/certificates?status=valid")
    assert [c["serial"] for c in body["certificates"]] == [serial]
    assert body["certificates"][0]["subject"] == "CN=device-1"
    assert (await api.call("GET", "/api/v1/ca/certificates?status=nope"))[0] == 422
    code, body = await api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,), {"reason": "meh"})
    assert (code, body["field"]) == (422, "reason")
    code, body = await api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,), {"reason": "superseded"})
    assert (code, body["status"], body["revocation_reason"]) == (200, "revoked", "superseded")
    assert (await api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,)))[0] == 409
    assert (await api.call("POST", "/api/v1/ca/certificates/ffff/revoke"))[0] == 404
    code, body = await api.call("GET", "/api/v1/ca")
    assert body["certificates"] == {"valid": 0, "revoked": 1}
