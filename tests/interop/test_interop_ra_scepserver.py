"""RA mode in front of micromdm scepserver, with micromdm scepclient as the device.

The daemon runs under twistd as the README runs it; the CA integration is
added in ``ra`` mode through the admin API (its RA certificate enrolled from
scepserver), the profile assigned and delivered through the admin and agent
APIs. The proxy must check every CSR against the host profile before
scepserver sees it, and record every certificate it learns at once.
"""

import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.api import Api, aissue_agent_credential
from support.clients import bound_scepclient as device, load, openssl_verify
from support.site import FIXTURES, host_profile_status, scep_settings_from_mobileconfig
from support.upstream import CHALLENGE as STATIC

HOST = "RA-MAC-1"


async def ra_site(daemon, upstream, mode="ra", **ca_fields):
    """CORP_CA on scepserver in ``mode``, HOST with its agent and the Fleet Wi-Fi profile assigned:
    (admin, agent, profile uuid, CA's JSON)."""
    admin = Api(daemon.admin_url, daemon.admin_token)
    ca = await admin.acall("POST", "/api/v1/cas", {"name": "CORP_CA", "url": upstream.url, "challenge": STATIC,
                                                     "mode": mode, **ca_fields})
    await admin.acall("PUT", "/api/v1/hosts/" + HOST, {"serial": "SER-" + HOST, "platform": "macos"})
    agent = Api(daemon.url, await aissue_agent_credential(admin, HOST))
    # OU then CN, in the order scepclient writes them.
    template = (FIXTURES / "builtin-ca-wifi.mobileconfig").read_bytes().replace(b"_builtin<", b"_CORP_CA<")
    profile = await admin.acall("POST", "/api/v1/profiles?platform=macos", raw=template,
                                content_type="application/x-apple-aspen-config")
    await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile["uuid"], {"hosts": [HOST]})
    return admin, agent, profile["uuid"], ca


async def deliver(admin, agent, profile):
    """Process, then fetch as the agent: (proxy URL, challenge, CN as the Mac expands it)."""
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % HOST))["commands"]
    (command,) = [c for c in commands if c["profile_uuid"] == profile]
    url, challenge, cn = scep_settings_from_mobileconfig(command["payload"])
    return url, challenge, cn.replace("%SerialNumber%", "SER-" + HOST)


@pytest_twisted.ensureDeferred
async def test_enrollment_through_the_ra_is_checked_and_recorded_at_once(tmp_path, upstream, daemon):
    admin, agent, profile, ca = await ra_site(daemon, upstream)
    assert ca["mode"] == "ra"
    assert ca["ra"]["certificate"] == "enrolled"
    ca_cert = load(upstream.ca_pem)
    assert ca["ra"]["issuer"] == ca_cert.subject.rfc4514_string()
    url, challenge, cn = await deliver(admin, agent, profile)
    before = upstream.operations("PKIOperation")

    # Another subject: refused by the proxy, never seen by scepserver; the host profile is sent again.
    result = await threads.deferToThread(device, tmp_path / "wrong", url, challenge, "SER-OTHER WIFI x")
    assert result.returncode != 0
    assert upstream.operations("PKIOperation") == before
    row = await host_profile_status(admin, HOST, profile)
    assert row["status"] is None and row["retries"] == 1
    assert "RA refused" in row["detail"] and "subject" in row["detail"]

    url, challenge, cn = await deliver(admin, agent, profile)
    result = await threads.deferToThread(device, tmp_path / "mac", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert upstream.operations("PKIOperation") == before + 1
    certificate = load(tmp_path / "mac" / "client.pem")
    openssl_verify(upstream.ca_pem, tmp_path / "mac" / "client.pem")
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    row = await host_profile_status(admin, HOST, profile)
    assert row["status"] == "verified"
    assert row["cert_serial"] == "%x" % certificate.serial_number
    assert row["cert_not_after"] is not None

    log = daemon.log()
    assert challenge not in log and STATIC not in log
    assert "outcome=policy_refused" in log and "outcome=ok" in log


@pytest_twisted.ensureDeferred
async def test_getcacert_adds_the_ra_certificate(upstream, daemon):
    admin, agent, profile, ca = await ra_site(daemon, upstream, ra_certificate="self-signed")
    assert ca["ra"]["certificate"] == "self-signed"
    url, challenge, cn = await deliver(admin, agent, profile)
    import treq
    from scepproxyd.scep import codec

    answer = await treq.get(url + "?operation=GetCACert")
    assert answer.headers.getRawHeaders(b"Content-Type") == [b"application/x-x509-ca-ra-cert"]
    certificates = [x509.load_der_x509_certificate(der) for der in codec.ca_certificates(await answer.content())]
    assert sorted(c.subject.rfc4514_string() for c in certificates) == sorted(
        [ca["ra"]["subject"], load(upstream.ca_pem).subject.rfc4514_string()])
    caps = await treq.get(url + "?operation=GetCACaps")
    assert b"Renewal" in await caps.content()
