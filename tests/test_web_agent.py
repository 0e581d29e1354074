"""The agent API in process: per-host credentials, fetching profiles, reports."""

import json

import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding

from scepproxyd.web import api as api_module

WRONG = {"error": "missing or wrong bearer token"}


def refused_like_a_wrong_credential(answer):
    assert (answer.status, answer.json()) == (401, WRONG)
    assert answer.headers.getRawHeaders(b"WWW-Authenticate") == [b'Bearer realm="agent"']


@pytest_twisted.ensureDeferred
async def test_a_credential_opens_only_its_own_hosts_paths(web, logs):
    a = await web.enrollment(host="HOST-A")
    await web.ok(web.admin("PUT", "/api/v1/hosts/HOST-B", {"serial": "B", "platform": "macos"}))
    b_credential = await web.credential("HOST-B")
    assert (await web.agent("GET", "HOST-B", "/commands", b_credential)).json() == {"commands": []}
    for host in ("HOST-B", "NO-SUCH-HOST"):
        refused_like_a_wrong_credential(await web.agent("GET", host, "/commands", a.credential))
        refused_like_a_wrong_credential(
            await web.agent("POST", host, "/profiles", a.credential, {"installed": [a.profile]}))
    refused_like_a_wrong_credential(await web.agent("GET", "HOST-A", "/commands", "scepagent_" + "x" * 43))
    refused_like_a_wrong_credential(await web.agent("GET", "HOST-A", "/commands", web.admin_token))
    assert (await web.admin("GET", "/api/v1/cas", token=a.credential)).status == 401
    assert any("made with the agent credential of host HOST-A" in w for w in logs.warnings())
    assert a.credential not in logs.text()
    assert (await web.host_profile("HOST-A", a.profile))["status"] == "pending"


@pytest_twisted.ensureDeferred
async def test_reissuing_a_credential_stops_the_old_one(web):
    a = await web.enrollment(host="HOST-A")
    new = await web.credential("HOST-A")
    refused_like_a_wrong_credential(await web.agent("GET", "HOST-A", "/commands", a.credential))
    assert (await web.agent("GET", "HOST-A", "/commands", new)).status == 200
    await web.ok(web.admin("DELETE", "/api/v1/hosts/HOST-A/agent-credential"))
    refused_like_a_wrong_credential(await web.agent("GET", "HOST-A", "/commands", new))


@pytest_twisted.ensureDeferred
async def test_fetching_again_renders_a_fresh_challenge_and_retires_the_old(web):
    e = await web.enrollment()
    await web.ok(web.admin("POST", "/api/v1/host-profiles/%s/%s/resend" % (e.host, e.profile)))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
    assert command["kind"] == "mobileconfig" and command["content_type"] == "application/x-apple-aspen-config"
    assert e.one_time_challenge not in command["payload"]
    request = await web.pkcs_req(e)
    old = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert (old.status, old.body) == (400, b"custom scep challenge failed\n")


@pytest_twisted.ensureDeferred
async def test_command_results(web):
    e = await web.enrollment()
    answer = await web.ok(web.agent("POST", e.host, "/commands/" + e.command, e.credential,
                                    {"status": "error", "error": "profile rejected"}))
    assert answer == {"host_uuid": e.host, "profile_uuid": e.profile, "status": None, "retries": 1}
    bad = await web.agent("POST", e.host, "/commands/" + e.command, e.credential, {"status": "maybe"})
    assert (bad.status, bad.json()) == (422, {"error": "status must be acknowledged or error", "field": "status"})
    unknown = await web.agent("POST", e.host, "/commands/nope", e.credential, {"status": "acknowledged"})
    assert unknown.status == 404
    malformed = await web.agent("POST", e.host, "/commands/" + e.command, e.credential, b"{not json")
    assert malformed.status == 400


@pytest_twisted.ensureDeferred
async def test_acknowledged_then_installed_profiles_verify(web):
    e = await web.enrollment()
    answer = await web.ok(web.agent("POST", e.host, "/commands/" + e.command, e.credential,
                                    {"status": "acknowledged"}))
    assert answer["status"] == "verifying"
    assert await web.ok(web.agent("POST", e.host, "/profiles", e.credential, {"installed": [e.profile]})) == {
        "verified": 1}
    assert (await web.host_profile(e.host, e.profile))["status"] == "verified"


@pytest_twisted.ensureDeferred
async def test_a_pem_report_past_the_large_json_size_is_read_whole(web, monkeypatch):
    """A body past LARGE_BODY is parsed as JSON ahead on a worker thread; a PEM bundle must still be read whole."""
    monkeypatch.setattr(api_module, "LARGE_BODY", 256)
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    status, _, (certificate,) = request.read(
        await web.device("POST", e.path + "?operation=PKIOperation", request.message))
    assert status == "SUCCESS"
    pem = certificate.public_bytes(Encoding.PEM)
    assert len(pem) > 256
    counts = await web.ok(web.agent("POST", e.host, "/certificates", e.credential, pem,
                                    content_type="application/x-pem-file"))
    assert counts == {"recorded": 1, "older": 0, "unknown": 0, "not_valid_now": 0}


@pytest_twisted.ensureDeferred
async def test_reporting_the_enrolled_certificate_records_it_and_others_renewal_ids_are_unknown(web, logs):
    a = await web.enrollment(host="HOST-A")
    b = await web.enrollment(host="HOST-B", identifier="Fleet.WiFi.B")
    request = await web.pkcs_req(a)
    status, _, (certificate,) = request.read(
        await web.device("POST", a.path + "?operation=PKIOperation", request.message))
    assert status == "SUCCESS"
    pem = certificate.public_bytes(Encoding.PEM).decode("ascii")
    assert await web.ok(web.agent("POST", "HOST-B", "/certificates", b.credential, {"certificates": [pem]})) == {
        "recorded": 0, "older": 0, "unknown": 1, "not_valid_now": 0}
    assert any("belongs to a host profile of host HOST-A" in w for w in logs.warnings())
    # As a PEM bundle, from its own host.
    counts = await web.ok(web.agent("POST", "HOST-A", "/certificates", a.credential, pem.encode("ascii"),
                                    content_type="application/x-pem-file"))
    assert counts == {"recorded": 1, "older": 0, "unknown": 0, "not_valid_now": 0}
    hp = await web.host_profile("HOST-A", a.profile)
    assert hp["status"] == "verified" and hp["cert_serial"] is not None
    assert (await web.host_profile("HOST-B", b.profile))["status"] == "pending"
    empty = await web.agent("POST", "HOST-A", "/certificates", a.credential, json.dumps({"certificates": []}).encode())
    assert (empty.status, empty.json()["error"]) == (422, "no certificates in the report")
