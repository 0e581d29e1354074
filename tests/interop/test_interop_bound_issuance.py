"""Every certificate is bound to its host profile: the attacks, tried with real clients, refused.

The daemon runs with the shipped defaults for the built-in CA (static
challenge off), as the README runs it. Set-up and every check go through
the documented admin and agent APIs; the devices are micromdm scepclient and
strongSwan ``pki --scep``, talking to the proxy URL and to ``/scep``.
"""

import re

import pytest
import pytest_twisted
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.api import Api, aissue_agent_credential
from support.clients import load, openssl_verify, scepclient, strongswan_enroll
from support.site import FIXTURES, OU, Fleet

def device(workdir, url, challenge, cn, *extra):
    """micromdm scepclient asking for exactly OU + CN (no O or C of its own)."""
    return scepclient(workdir, url, challenge, cn, "-organization", "", "-country", "", "-ou", OU, *extra)


def refused(result, text=""):
    output = result.stdout + result.stderr
    return result.returncode != 0 and text in output


@pytest_twisted.ensureDeferred
async def test_rendered_challenge_is_one_time_bound_and_never_the_static_one(tmp_path, builtin_ca_daemon):
    daemon = builtin_ca_daemon
    fleet = Fleet(daemon)
    await fleet.set_up(["MAC-A"])
    url, challenge, cn = await fleet.deliver("MAC-A")
    static = (daemon.directory / "state" / "ca" / "challenge").read_text().strip()
    assert challenge != static and len(challenge) == 32

    # The static challenge is off in the shipped configuration: no certificate at /scep, whatever the subject.
    result = await threads.deferToThread(device, tmp_path / "static", daemon.url + "/scep", static, "anything")
    assert refused(result, "badRequest")
    assert await fleet.issued() == []

    # The profile's own challenge enrolls once, through its proxy URL, for the subject it rendered.
    result = await threads.deferToThread(device, tmp_path / "mac", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    certificate = load(tmp_path / "mac" / "client.pem")
    openssl_verify(daemon.directory / "state" / "ca" / "ca.pem", tmp_path / "mac" / "client.pem")
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    row = await fleet.status("MAC-A")
    assert (row["status"], row["retries"]) == ("verified", 0)
    assert row["cert_serial"] == "%x" % certificate.serial_number

    # ... and never twice: not through the proxy URL, not at /scep.
    for where, target in (("again-proxy", url), ("again-scep", daemon.url + "/scep")):
        result = await threads.deferToThread(device, tmp_path / where, target, challenge, cn)
        assert refused(result), where
    assert len(await fleet.issued()) == 1
    row = await fleet.status("MAC-A")
    assert (row["status"], row["retries"], row["cert_serial"]) == ("verified", 0, "%x" % certificate.serial_number)
    log = daemon.log()
    assert challenge not in log and static not in log
    # Reached in process: every PKIOperation the CA saw came from the proxy, never over HTTP to itself.
    assert "requester=proxy" in log and "outcome=issued" in log
    assert "proxy PKIOperation host=MAC-A" in log
    # The CA row belongs to the [ca] section of the configuration.
    with pytest.raises(AssertionError, match="409"):
        await fleet.admin.acall("PATCH", "/api/v1/cas/builtin", {"url": "http://x/"})
    with pytest.raises(AssertionError, match="409"):
        await fleet.admin.acall("DELETE", "/api/v1/cas/builtin")


@pytest_twisted.ensureDeferred
async def test_csr_that_differs_from_the_profile_gets_failure_and_no_certificate(tmp_path, builtin_ca_daemon):
    daemon = builtin_ca_daemon
    fleet = Fleet(daemon)
    await fleet.set_up(["MAC-A", "MAC-B"])
    _, _, cn_b = await fleet.deliver("MAC-B")
    renewal_id_b = re.search(r"sp-[0-9a-f]{16}", cn_b).group(0)
    attempts = 0

    async def attack(name, make_cn, *extra, text="badRequest"):
        nonlocal attempts
        url, challenge, cn = await fleet.deliver("MAC-A")
        result = await threads.deferToThread(device, tmp_path / name, url, challenge, make_cn(cn), *extra)
        assert refused(result, text), (name, result.stdout + result.stderr)
        attempts += 1
        row = await fleet.status("MAC-A")
        # The spent challenge sends MAC-A's profile again; the reason is kept for the admin.
        assert (row["status"], row["retries"]) == (None, attempts), name
        return row["detail"]

    assert "subject" in await attack("other-cn", lambda cn: "anything")
    # Host A's own one-time challenge with host B's renewal ID in the CN.
    assert "subject" in await attack("hijack", lambda cn: re.sub(r"sp-[0-9a-f]{16}", renewal_id_b, cn))
    assert "key" in await attack("weak-key", lambda cn: cn, "-keySize", "1024", text="badAlg")
    assert await fleet.issued() == []
    # Nothing happened to host B, whose renewal ID the attacker named.
    row = await fleet.status("MAC-B")
    assert (row["status"], row["retries"], row["cert_serial"]) == ("pending", 0, None)


@pytest_twisted.ensureDeferred
async def test_strongswan_gets_only_what_the_profile_renders(tmp_path, builtin_ca_daemon):
    daemon = builtin_ca_daemon
    fleet = Fleet(daemon)
    await fleet.set_up(["MAC-S"])
    url, challenge, cn = await fleet.deliver("MAC-S")
    dn = "OU=%s, CN=%s" % (OU, cn)
    # A subjectAltName the profile did not ask for: FAILURE, no certificate.
    result = await threads.deferToThread(strongswan_enroll, tmp_path, "san", url, challenge, dn, "*.corp.example")
    assert result.returncode != 0
    assert await fleet.issued() == []
    row = await fleet.status("MAC-S")
    assert row["status"] is None and "subjectAltName" in row["detail"]

    # The fresh profile, asked for exactly: issued, over AES and SHA-256.
    url, challenge, cn = await fleet.deliver("MAC-S")
    result = await threads.deferToThread(strongswan_enroll, tmp_path, "ok", url, challenge, "OU=%s, CN=%s" % (OU, cn))
    assert result.returncode == 0, result.stdout + result.stderr
    (issued,) = await fleet.issued()
    assert issued["subject"] == "CN=%s,OU=%s" % (cn, OU)
    assert (await fleet.status("MAC-S"))["status"] == "verified"


@pytest_twisted.ensureDeferred
async def test_fleet_sample_unchanged_enrolls_with_the_builtin_ca(tmp_path, builtin_ca_daemon):
    """Fleet's documented profile, only its CA name set to the built-in CA: CN first, then OU."""
    daemon = builtin_ca_daemon
    fleet = Fleet(daemon)
    host = "MAC-F"
    await fleet.admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER-" + host, "platform": "macos"})
    fleet.agents[host] = Api(daemon.url, await aissue_agent_credential(fleet.admin, host))
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"builtin")
    created = await fleet.admin.acall("POST", "/api/v1/profiles?platform=macos", raw=template,
                                      content_type="application/x-apple-aspen-config")
    fleet.profile = created["uuid"]
    await fleet.admin.acall("POST", "/api/v1/profiles/%s/assign" % fleet.profile, {"hosts": [host]})
    url, challenge, cn = await fleet.deliver(host)
    assert cn.startswith("SER-MAC-F WIFI sp-")
    # strongSwan writes the subject in the order given: the profile's order.
    result = await threads.deferToThread(strongswan_enroll, tmp_path, "fleet", url, challenge, "CN=%s, OU=%s" % (cn, OU))
    assert result.returncode == 0, result.stdout + result.stderr
    (issued,) = await fleet.issued()
    assert (issued["host_uuid"], issued["profile_uuid"]) == (host, fleet.profile)
    row = await fleet.status(host)
    assert (row["status"], row["cert_serial"]) == ("verified", issued["serial"])
