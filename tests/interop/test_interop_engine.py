"""The whole device flow with real peers: admin set-up, processing, agent delivery,
enrollment with the real scepclient into a real scepserver, reports, renewal.

The daemon runs as the README runs it; the test talks to it only through the
admin API and the agent API, except to move a certificate's recorded dates
into the renewal window, which no API should be able to do.
"""

import json
import re

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.api import Api, aissue_agent_credential
from support.certs import signed_blob
from support.clients import enroll
from support.site import (
    FIXTURES,
    host_profile_status,
    move_certificate_into_renewal_window,
    scep_settings_from_mobileconfig,
    set_up,
)
from support.upstream import CHALLENGE as STATIC

# Long intervals: the test triggers the jobs itself, through the same code path.
pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h"}, renewal={"interval": "1d"})


@pytest_twisted.ensureDeferred
async def test_apple_flow_enroll_verify_renew(tmp_path, upstream, daemon):
    host = "MAC-0001"
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host, "macos")
    assert (await host_profile_status(admin, host, profile))["status"] is None

    result = await admin.acall("POST", "/api/v1/jobs/process_profiles")
    assert result["result"]["claimed"] == 1
    assert (await host_profile_status(admin, host, profile))["status"] == "pending"

    commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    assert len(commands) == 1 and commands[0]["profile_uuid"] == profile
    url, challenge, cn = scep_settings_from_mobileconfig(commands[0]["payload"])
    assert challenge == STATIC
    assert url.startswith(daemon.url + "/mdm/scep/proxy/")
    renewal_id = re.search(r"sp-[0-9a-f]+", cn).group(0)
    cn = cn.replace("%SerialNumber%", "SER" + host)

    pem = await threads.deferToThread(enroll, tmp_path / "mac", url, challenge, cn)
    assert (await host_profile_status(admin, host, profile))["status"] == "verifying"
    await agent.acall("POST", "/api/v1/agent/hosts/%s/commands/%s" % (host, commands[0]["command_uuid"]),
                      {"status": "acknowledged"})
    report = await agent.acall("POST", "/api/v1/agent/hosts/%s/certificates" % host, {"certificates": [pem]})
    assert report["recorded"] == 1
    assert (await host_profile_status(admin, host, profile))["status"] == "verified"

    # Another host's agent can neither read this host's commands nor claim its certificate.
    await admin.acall("PUT", "/api/v1/hosts/MAC-0002", {"serial": "SERMAC-0002", "platform": "macos"})
    other = await aissue_agent_credential(admin, "MAC-0002")
    response = await treq.get(daemon.url + "/api/v1/agent/hosts/%s/commands" % host,
                              headers={b"Authorization": [b"Bearer " + other.encode()]})
    assert response.code == 401 and (await response.json()) == {"error": "missing or wrong bearer token"}
    report = await Api(daemon.url, other).acall("POST", "/api/v1/agent/hosts/MAC-0002/certificates",
                                                {"certificates": [pem]})
    assert report == {"recorded": 0, "older": 0, "unknown": 1, "not_valid_now": 0}
    assert "belongs to a host profile of host %s" % host in daemon.log()
    assert other not in daemon.log() and agent.token not in daemon.log()

    # Not due yet: a fresh 365-day certificate.
    assert (await admin.acall("POST", "/api/v1/jobs/renew_certificates"))["result"] == {"renewals_due": 0}
    move_certificate_into_renewal_window(daemon, host, profile)
    assert (await admin.acall("POST", "/api/v1/jobs/renew_certificates"))["result"] == {"renewals_due": 1}
    assert (await host_profile_status(admin, host, profile))["status"] is None

    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    new_url, _, new_cn = scep_settings_from_mobileconfig(commands[0]["payload"])
    assert new_url != url, "a renewal must carry a fresh one-time challenge"
    assert renewal_id in new_cn
    new_pem = await threads.deferToThread(enroll, tmp_path / "mac2", new_url, STATIC, cn)
    report = await agent.acall("POST", "/api/v1/agent/hosts/%s/certificates" % host, {"certificates": [new_pem, pem]})
    assert report["recorded"] == 1
    assert (await host_profile_status(admin, host, profile))["status"] == "verified"
    new_serial = x509.load_pem_x509_certificate(new_pem.encode()).serial_number
    assert new_serial != x509.load_pem_x509_certificate(pem.encode()).serial_number
    # The old URL's challenge was spent: replaying it fails and never reaches the CA.
    before = upstream.operations("PKIOperation")
    replay = await treq.post(url + "?operation=PKIOperation", data=signed_blob())
    assert replay.code == 400
    assert await replay.text() == "custom scep challenge failed\n"
    assert upstream.operations("PKIOperation") == before


@pytest_twisted.ensureDeferred
async def test_android_template_flow(tmp_path, upstream, daemon):
    host = "ANDROID-77"
    template = (FIXTURES / "android-corp-wifi.json").read_bytes()
    admin, agent, profile = await set_up(daemon, upstream, template, "application/json", host, "android")
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    assert command["content_type"] == "application/json"
    rendered = json.loads(command["payload"])
    subject = dict(part.split("=", 1) for part in re.split(r"(?<!\\),", rendered["subject"]))
    pem = await threads.deferToThread(
        enroll, tmp_path / "android", rendered["scep"]["url"], rendered["scep"]["challenge"], subject["CN"], subject["OU"]
    )
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith("sp-")
    await agent.acall("POST", "/api/v1/agent/hosts/%s/commands/%s" % (host, command["command_uuid"]), {"status": "acknowledged"})
    assert (await agent.acall("POST", "/api/v1/agent/hosts/%s/certificates" % host, raw=pem.encode(),
                              content_type="application/x-pem-file"))["recorded"] == 1
    assert (await host_profile_status(admin, host, profile))["status"] == "verified"


@pytest_twisted.ensureDeferred
async def test_device_error_resends_then_fails(tmp_path, upstream, daemon):
    host = "MAC-ERR"
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host, "macos")
    for attempt in range(1, 5):
        await admin.acall("POST", "/api/v1/jobs/process_profiles")
        (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
        answer = await agent.acall("POST", "/api/v1/agent/hosts/%s/commands/%s" % (host, command["command_uuid"]),
                                   {"status": "error", "error": "MDM payload rejected"})
        assert answer["retries"] == attempt
    row = await host_profile_status(admin, host, profile)
    assert row["status"] == "failed"  # max_retries = 3 by default
    assert "MDM payload rejected" in row["detail"]
    await admin.acall("POST", "/api/v1/host-profiles/%s/%s/resend" % (host, profile))
    row = await host_profile_status(admin, host, profile)
    assert (row["status"], row["retries"]) == (None, 0)


@pytest_twisted.ensureDeferred
async def test_agent_api_refuses_other_tokens(daemon):
    admin = Api(daemon.admin_url, daemon.admin_token)
    for host in ("X", "Y"):
        await admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER" + host, "platform": "macos"})
    credential = await aissue_agent_credential(admin, "X")
    for token in ("", "wrong-token-wrong-token", daemon.admin_token, await aissue_agent_credential(admin, "Y")):
        response = await treq.get(daemon.url + "/api/v1/agent/hosts/X/commands",
                                  headers={b"Authorization": [b"Bearer " + token.encode()]})
        assert response.code == 401
        await response.content()
    response = await treq.get(daemon.admin_url + "/api/v1/agent/hosts/X/commands",
                              headers={b"Authorization": [b"Bearer " + credential.encode()]})
    assert response.code == 401
    await response.content()
    response = await treq.get(daemon.url + "/api/v1/agent/hosts/X/commands",
                              headers={b"Authorization": [b"Bearer " + credential.encode()]})
    assert response.code == 200 and (await response.json()) == {"commands": []}
