"""Replaying a proxy URL is harmless, with the real daemon, micromdm scepclient and scepserver.

A host enrolls through its proxy URL and is driven to `verified` through the
admin and agent APIs (as test_interop_engine does: the certificate report is
the documented way to `verified`). Then the old URL is replayed, by
scepclient itself and by re-POSTing a PKIOperation scepclient made for it:
each time the device gets the same 400, the CA sees nothing and the host
profile stays `verified` with its retries unchanged. A host profile waiting
on a newer copy of the profile is not moved by the old URL either, while the
latest challenge of a pending host profile still requeues it.
"""

import re

import pytest
import pytest_twisted
import treq
from cryptography import x509
from twisted.internet import threads

from support.certs import signed_blob
from support.scep_capture import CaptureServer
from support.clients import enroll, scepclient
from support.site import (
    FIXTURES,
    host_profile_status,
    move_certificate_into_renewal_window,
    scep_settings_from_mobileconfig,
    set_up,
)
from support.upstream import CHALLENGE as STATIC

# Long intervals: the test triggers the jobs itself, through the same code path (as test_interop_engine.py).
pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h"}, renewal={"interval": "1d"})

REPLAYS = 5
CHALLENGE_FAILED = "custom scep challenge failed\n"


def outcomes(daemon, host: str, outcome: str) -> int:
    """Proxied PKIOperations for ``host`` with this outcome and HTTP 400, from the daemon's one line per request."""
    pattern = r"proxy PKIOperation host=%s profile=\S+ ca=\S+ outcome=%s status=400 " % (re.escape(host), outcome)
    return len(re.findall(pattern, daemon.log()))


def captured_pkioperation(upstream, url: str, cn: str, workdir) -> bytes:
    """A PKIOperation exactly as scepclient sends it for ``url``'s challenge and CA, recorded on its way."""
    ca_certificate = x509.load_pem_x509_certificate(upstream.ca_pem.read_bytes())
    with CaptureServer([ca_certificate]) as capture:
        result = scepclient(workdir, capture.url, STATIC, cn)
    assert result.returncode != 0  # the recorder answers 500: the client gives up, the test keeps the request
    assert len(capture.messages) == 1, capture.operations
    return capture.messages[0]


async def verified_host(tmp_path, daemon, upstream, host):
    """Admin set-up, processing, the agent's fetch, scepclient's enrollment, the agent's reports: `verified`."""
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host, "macos")
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    url, _, cn = scep_settings_from_mobileconfig(command["payload"])
    cn = cn.replace("%SerialNumber%", "SER" + host)
    pem = await threads.deferToThread(enroll, tmp_path / "device", url, STATIC, cn)
    assert (await host_profile_status(admin, host, profile))["status"] == "verifying"
    await agent.acall("POST", "/api/v1/agent/hosts/%s/commands/%s" % (host, command["command_uuid"]),
                      {"status": "acknowledged"})
    assert (await agent.acall("POST", "/api/v1/agent/hosts/%s/certificates" % host, {"certificates": [pem]}))[
        "recorded"] == 1
    assert (await host_profile_status(admin, host, profile))["status"] == "verified"
    return admin, agent, profile, url, cn


@pytest_twisted.ensureDeferred
async def test_replayed_proxy_url_leaves_a_verified_host_profile_alone(tmp_path, upstream, daemon):
    host = "MAC-REPLAY"
    admin, agent, profile, url, cn = await verified_host(tmp_path, daemon, upstream, host)
    before = await host_profile_status(admin, host, profile)
    assert (before["status"], before["retries"]) == ("verified", 0)
    reached_ca = upstream.operations("PKIOperation")

    # The device (or whoever holds the old profile) runs scepclient against the old URL again.
    for attempt in range(1, REPLAYS + 1):
        result = await threads.deferToThread(scepclient, tmp_path / ("replay-%d" % attempt), url, STATIC, cn)
        assert result.returncode != 0, result.stdout + result.stderr
        assert outcomes(daemon, host, "challenge_stale") == attempt
        assert await host_profile_status(admin, host, profile) == before

    # The same with a real PKIOperation re-POSTed as is: the device hears the one refusal, byte for byte.
    message = await threads.deferToThread(captured_pkioperation, upstream, url, cn, tmp_path / "captured")
    for attempt in range(1, REPLAYS + 1):
        response = await treq.post(url + "?operation=PKIOperation", data=message)
        assert response.code == 400
        assert response.headers.getRawHeaders(b"Content-Type") == [b"text/plain; charset=utf-8"]
        assert await response.text() == CHALLENGE_FAILED
        assert outcomes(daemon, host, "challenge_stale") == REPLAYS + attempt

    after = await host_profile_status(admin, host, profile)
    assert after == before and (after["status"], after["retries"]) == ("verified", 0)
    assert upstream.operations("PKIOperation") == reached_ca
    log = daemon.log()
    assert outcomes(daemon, host, "challenge_failed") == 0
    assert log.count("stale proxy challenge refused, host profile unchanged: host=%s" % host) == 2 * REPLAYS
    assert "reason=not_pending host_profile_status=verified" in log
    challenge = url.rsplit("%2C", 1)[1]
    assert challenge not in log


@pytest_twisted.ensureDeferred
async def test_old_url_does_not_move_a_host_profile_waiting_on_its_renewal(tmp_path, upstream, daemon):
    host = "MAC-RENEW"
    admin, agent, profile, old_url, cn = await verified_host(tmp_path, daemon, upstream, host)
    move_certificate_into_renewal_window(daemon, host, profile)
    assert (await admin.acall("POST", "/api/v1/jobs/renew_certificates"))["result"] == {"renewals_due": 1}
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    waiting = await host_profile_status(admin, host, profile)
    assert (waiting["status"], waiting["retries"]) == ("pending", 0)

    # Claimed, not yet fetched: the last attempt's URL is old.
    response = await treq.post(old_url + "?operation=PKIOperation", data=signed_blob())
    assert (response.code, await response.text()) == (400, CHALLENGE_FAILED)
    assert await host_profile_status(admin, host, profile) == waiting

    # Fetched: the new copy carries a new challenge, and the old URL still moves nothing.
    (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    new_url, _, _ = scep_settings_from_mobileconfig(command["payload"])
    assert new_url != old_url
    fetched = await host_profile_status(admin, host, profile)
    assert fetched == {**waiting, "lifecycle": "delivering"}  # the fetch itself is the only change
    for _ in range(REPLAYS):
        response = await treq.post(old_url + "?operation=PKIOperation", data=signed_blob())
        assert (response.code, await response.text()) == (400, CHALLENGE_FAILED)
    assert await host_profile_status(admin, host, profile) == fetched
    assert "reason=not_latest host_profile_status=pending" in daemon.log()

    # The new copy enrolls as if nothing had happened.
    await threads.deferToThread(enroll, tmp_path / "renewed", new_url, STATIC, cn)
    assert (await host_profile_status(admin, host, profile))["status"] == "verifying"


@pytest_twisted.ensureDeferred
async def test_latest_challenge_spent_while_pending_is_resent(tmp_path, upstream, daemon):
    """The one failure that counts: the pending host profile's own latest challenge, spent, presented again."""
    host = "MAC-SPENT"
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host, "macos")
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    url, _, _ = scep_settings_from_mobileconfig(command["payload"])

    # scepserver cannot read this request; its answer is no CertRep, so the challenge is spent and nothing moves.
    first = await treq.post(url + "?operation=PKIOperation", data=signed_blob())
    assert first.code == 502, await first.text()
    await first.content()
    assert (await host_profile_status(admin, host, profile))["status"] == "pending"

    again = await treq.post(url + "?operation=PKIOperation", data=signed_blob())
    assert (again.code, await again.text()) == (400, CHALLENGE_FAILED)
    row = await host_profile_status(admin, host, profile)
    assert (row["status"], row["retries"], row["detail"]) == (None, 1, "custom scep challenge failed")
    assert outcomes(daemon, host, "challenge_failed") == 1
    assert outcomes(daemon, host, "challenge_stale") == 0
