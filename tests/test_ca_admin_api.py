"""``/api/v1/ca/...`` through a real listener in the test process, with the CA answering in process."""

import pytest_twisted

from scepproxyd.scep import codec
from support.builtin_ca import Device


async def pending_request(ca_api, cn="device-1"):
    device = Device(cn)
    message = device.request(ca_api.ca, csr=device.csr())
    await ca_api.ca.pki_operation(message, "10.0.0.9")
    return codec.read_header(message).transaction_id


@pytest_twisted.ensureDeferred
async def test_show_ca(ca_api):
    code, body = await ca_api.call("GET", "/api/v1/ca")
    assert code == 200
    assert body["name"] == "builtin"
    assert body["subject"] == "CN=Test Builtin CA,O=scepproxyd tests"
    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert len(body["fingerprint"].split(":")) == 32
    assert body["crl_url"] == "http://ca.test:8080/scep/crl"
    assert body["requests"]["pending"] == 0 and body["certificates"] == {"valid": 0, "revoked": 0}
    assert (await ca_api.call("GET", "/api/v1/ca", token=None))[0] == 401


@pytest_twisted.ensureDeferred
async def test_managed_ca_row_cannot_be_edited_or_deleted(ca_api):
    for method, body in (("PATCH", {"url": "http://elsewhere/scep"}), ("DELETE", None)):
        code, answer = await ca_api.call(method, "/api/v1/cas/builtin", body)
        assert (code, answer["error"]) == (409, "CA 'builtin' is managed by the [ca] section of the configuration")
    assert (await ca_api.call("GET", "/api/v1/cas/builtin"))[1]["url"] == "http://ca.test:8080/scep"


@pytest_twisted.ensureDeferred
async def test_challenges(ca_api):
    code, body = await ca_api.call("POST", "/api/v1/ca/challenges", {"template": "wifi", "ttl": "2h"})
    assert code == 201
    assert len(body["challenge"]) == 32 and body["template"] == "wifi"
    assert body["expires_at"] == "2023-11-15T00:13:20+00:00"
    code, body = await ca_api.call("POST", "/api/v1/ca/challenges")
    assert (code, body["template"]) == (201, "default")
    assert await ca_api.call("POST", "/api/v1/ca/challenges", {"template": "nope"}) == (
        422, {"error": "template must be one of default, wifi", "field": "template"})
    for ttl in ("soon", -5, True, 40 * 86400):
        code, body = await ca_api.call("POST", "/api/v1/ca/challenges", {"ttl": ttl})
        assert (code, body["field"]) == (422, "ttl")


@pytest_twisted.ensureDeferred
async def test_requests_approve_reject(ca_api):
    first, second = await pending_request(ca_api, "one"), await pending_request(ca_api, "two")
    code, body = await ca_api.call("GET", "/api/v1/ca/requests?status=pending")
    assert code == 200 and {r["transaction_id"] for r in body["requests"]} == {first, second}
    assert (await ca_api.call("GET", "/api/v1/ca/requests?status=bogus"))[0] == 422

    code, body = await ca_api.call("POST", "/api/v1/ca/requests/%s/approve" % (first,))
    assert (code, body["status"]) == (200, "approved") and body["issued_serial"]
    code, body = await ca_api.call("POST", "/api/v1/ca/requests/%s/approve" % (first,))
    assert code == 409 and "not pending" in body["error"]
    code, body = await ca_api.call("POST", "/api/v1/ca/requests/%s/reject" % (second,), {"reason": "who is this"})
    assert (code, body["status"], body["detail"]) == (200, "rejected", "who is this")
    assert (await ca_api.call("POST", "/api/v1/ca/requests/nope/approve"))[0] == 404
    assert (await ca_api.call("POST", "/api/v1/ca/requests/nope/reject", {"reason": 5}))[0] == 422


@pytest_twisted.ensureDeferred
async def test_certificates_and_revoke(ca_api):
    txid = await pending_request(ca_api)
    serial = (await ca_api.call("POST", "/api/v1/ca/requests/%s/approve" % (txid,)))[1]["issued_serial"]
    code, body = await ca_api.call("GET", "/api/v1/ca/certificates?status=valid")
    assert [c["serial"] for c in body["certificates"]] == [serial]
    assert body["certificates"][0]["subject"] == "CN=device-1"
    assert (await ca_api.call("GET", "/api/v1/ca/certificates?status=nope"))[0] == 422
    code, body = await ca_api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,), {"reason": "meh"})
    assert (code, body["field"]) == (422, "reason")
    code, body = await ca_api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,), {"reason": "superseded"})
    assert (code, body["status"], body["revocation_reason"]) == (200, "revoked", "superseded")
    assert (await ca_api.call("POST", "/api/v1/ca/certificates/%s/revoke" % (serial,)))[0] == 409
    assert (await ca_api.call("POST", "/api/v1/ca/certificates/ffff/revoke"))[0] == 404
    code, body = await ca_api.call("GET", "/api/v1/ca")
    assert body["certificates"] == {"valid": 0, "revoked": 1}
