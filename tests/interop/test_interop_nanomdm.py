"""NanoMDM delivery through the running daemon: InstallProfile commands, outages, webhook reports.

The NanoMDM here is a small fake written for the tests (tests/support/nanomdm_fake.py),
listening on loopback; the daemon is the real one, started by twistd.
"""

import plistlib

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web import server

from support.nanomdm_fake import FakeNanoMDM, PROFILE_ERROR_CHAIN
from support.processes import free_port
from support.api import Api
from support.site import FIXTURES, host_profile_status
from support.upstream import CHALLENGE as STATIC

API_KEY = "nanomdm-api-key-for-tests"


@pytest.fixture
def nanomdm():
    fake = FakeNanoMDM(api_key=API_KEY)
    port = free_port()
    listening = reactor.listenTCP(port, server.Site(fake), interface="127.0.0.1")
    fake.url = "http://127.0.0.1:%d" % (port,)
    fake.listening = listening
    yield fake
    if fake.listening is not None:
        pytest_twisted.blockon(fake.listening.stopListening())


@pytest.fixture
def nanomdm_daemon(tmp_path, nanomdm, start_daemon):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "nanomdm.key").write_text(API_KEY + "\n")
    return start_daemon(
        profiles={"process_interval": "1h"},
        delivery={"backend": "nanomdm", "nanomdm_url": nanomdm.url},
    )


def webhook_url(daemon):
    token = (daemon.directory / "state" / "nanomdm-webhook.token").read_text().strip()
    return daemon.url + "/webhooks/nanomdm/" + token


@pytest_twisted.ensureDeferred
async def test_install_profile_outage_and_webhook(upstream, nanomdm, nanomdm_daemon):
    daemon = nanomdm_daemon
    admin = Api(daemon.admin_url, daemon.admin_token)
    await admin.acall("POST", "/api/v1/cas", {"name": "CORP_CA", "url": upstream.url, "challenge": STATIC})
    hosts = ["UDID-A", "UDID-B"]
    for host in hosts:
        await admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "S", "platform": "ios"})
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    profile = (await admin.acall("POST", "/api/v1/profiles?platform=ios", raw=template,
                                 content_type="application/x-apple-aspen-config"))["uuid"]
    await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile, {"platform": "ios"})

    # NanoMDM down: commands stay queued for a retry, host profiles stay pending.
    nanomdm.down()
    result = (await admin.acall("POST", "/api/v1/jobs/process_profiles"))["result"]
    assert result["claimed"] == 2 and result["delivery_retries"] == 2 and result["delivered"] == 0
    assert all([(await host_profile_status(admin, h, profile))["status"] == "pending" for h in hosts])

    # Back up; the retry is due after its backoff (5 s for the first).
    nanomdm.up()
    await deferLater(6)
    result = (await admin.acall("POST", "/api/v1/jobs/process_profiles"))["result"]
    assert result["delivered"] == 2

    for host in hosts:
        (command,) = nanomdm.queues[host]
        assert command["Command"]["RequestType"] == "InstallProfile"
        delivered = plistlib.loads(command["Command"]["Payload"])
        (scep,) = [p for p in delivered["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
        content = scep.get("PayloadContent", scep)
        assert content["Challenge"] == STATIC
        assert content["URL"].startswith(daemon.url + "/mdm/scep/proxy/" + host + "%2C" + profile + "%2CCORP_CA%2C")
    assert all(r.auth == ("nanomdm", API_KEY) for r in nanomdm.requests)

    uuid_a = nanomdm.queues["UDID-A"][0]["CommandUUID"]
    uuid_b = nanomdm.queues["UDID-B"][0]["CommandUUID"]
    assert await nanomdm.acknowledge(treq, webhook_url(daemon), uuid_a) == 200
    assert await nanomdm.acknowledge(treq, webhook_url(daemon), uuid_b, status="Error",
                                     error_chain=PROFILE_ERROR_CHAIN) == 200
    assert (await host_profile_status(admin, "UDID-A", profile))["status"] == "verifying"
    row_b = await host_profile_status(admin, "UDID-B", profile)
    assert (row_b["status"], row_b["retries"]) == (None, 1)
    assert "SCEP server returned an invalid response" in row_b["detail"]

    # The errored host profile is sent again with a new command.
    result = (await admin.acall("POST", "/api/v1/jobs/process_profiles"))["result"]
    assert result["claimed"] == 1 and result["delivered"] == 1
    assert nanomdm.queues["UDID-B"][0]["CommandUUID"] != uuid_b

    bad = await treq.post(daemon.url + "/webhooks/nanomdm/wrong-token", data=b"{}")
    assert bad.code == 401
    await bad.content()
    assert API_KEY not in daemon.log()
    assert STATIC not in daemon.log()


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
