"""Host and end-user variables with real clients: the certificate carries the host's IdP username.

An Apple profile with ``$FLEET_VAR_HOST_END_USER_IDP_USERNAME`` in its SCEP subject, rendered for a host
whose end user was set through the admin API, delivered through the agent API and enrolled by micromdm
``scepclient``: through the built-in CA (which binds the CSR to the rendered username, so another user's
name is refused) and through the upstream ``scepserver``. A custom secret rides along in a Wi-Fi payload
and never reaches the daemon's log.
"""

import plistlib
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.api import Api, aissue_agent_credential
from support.clients import enroll, load, openssl_verify
from support.site import FIXTURES, OU, host_profile_status, scep_settings_from_mobileconfig, set_up
from support.upstream import CHALLENGE as STATIC

USERNAME = "$FLEET_VAR_HOST_END_USER_IDP_USERNAME"
ALICE = "alice@corp.example"
SECRET_VALUE = "radius-pw-<&>-0123"


def with_username(template: bytes, cn_before: bytes) -> bytes:
    """``template`` with its CN ``cn_before`` made '<username> WIFI <renewal ID>' and a Wi-Fi payload using a secret."""
    profile = plistlib.loads(template.replace(cn_before, b"%s WIFI $FLEET_VAR_SCEP_RENEWAL_ID" % (USERNAME.encode(),)))
    profile["PayloadContent"].append({
        "PayloadType": "com.apple.wifi.managed", "PayloadIdentifier": "wifi.corp", "PayloadUUID": "W-1",
        "PayloadVersion": 1, "SSID_STR": "corp",
        "EAPClientConfiguration": {"UserName": USERNAME, "UserPassword": "$FLEET_SECRET_RADIUS"},
    })
    return plistlib.dumps(profile)


def device(workdir, url, challenge, cn):
    """scepclient asking for exactly OU + CN, as the bound profile renders them."""
    from support.clients import scepclient

    return scepclient(workdir, url, challenge, cn, "-organization", "", "-country", "", "-ou", OU)


async def fetch(admin, agent, host, profile):
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % (host,)))["commands"]
    (command,) = [c for c in commands if c["profile_uuid"] == profile]
    return command["payload"]


def common_name(path) -> str:
    return load(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest_twisted.ensureDeferred
async def test_builtin_ca_issues_the_hosts_username_and_refuses_another(tmp_path, builtin_ca_daemon):
    daemon = builtin_ca_daemon
    admin = Api(daemon.admin_url, daemon.admin_token)
    host = "MAC-U"
    await admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER-U", "platform": "macos", "idp_username": ALICE})
    agent = Api(daemon.url, await aissue_agent_credential(admin, host))
    await admin.acall("PUT", "/api/v1/secrets/RADIUS", {"value": SECRET_VALUE})
    template = with_username((FIXTURES / "builtin-ca-wifi.mobileconfig").read_bytes(),
                             b"%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID")
    profile = (await admin.acall("POST", "/api/v1/profiles?platform=macos", raw=template,
                                 content_type="application/x-apple-aspen-config"))["uuid"]
    await admin.acall("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": [host]})

    payload = await fetch(admin, agent, host, profile)
    url, challenge, cn = scep_settings_from_mobileconfig(payload)
    assert cn.startswith(ALICE + " WIFI sp-")
    wifi = plistlib.loads(payload.encode())["PayloadContent"][1]["EAPClientConfiguration"]
    assert wifi == {"UserName": ALICE, "UserPassword": SECRET_VALUE}

    # Alice's profile, another user's name: refused, no certificate, the reason kept for the admin.
    result = await threads.deferToThread(device, tmp_path / "bob", url, challenge, cn.replace(ALICE, "bob@corp.example"))
    assert result.returncode != 0
    assert (await admin.acall("GET", "/api/v1/ca/certificates"))["certificates"] == []
    row = await host_profile_status(admin, host, profile)
    assert row["status"] is None and "subject" in row["detail"]

    # The profile sent again, enrolled as rendered: the certificate names alice.
    url, challenge, cn = scep_settings_from_mobileconfig(await fetch(admin, agent, host, profile))
    result = await threads.deferToThread(device, tmp_path / "alice", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    openssl_verify(daemon.directory / "state" / "ca" / "ca.pem", tmp_path / "alice" / "client.pem")
    assert common_name(tmp_path / "alice" / "client.pem") == cn
    assert (await host_profile_status(admin, host, profile))["status"] == "verified"

    # A new username sends the profile again, and the next certificate follows it.
    await admin.acall("PATCH", "/api/v1/hosts/" + host, {"idp_username": "alice.new@corp.example"})
    assert (await host_profile_status(admin, host, profile))["status"] is None
    url, challenge, cn = scep_settings_from_mobileconfig(await fetch(admin, agent, host, profile))
    assert cn.startswith("alice.new@corp.example WIFI ")
    result = await threads.deferToThread(device, tmp_path / "alice-new", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert common_name(tmp_path / "alice-new" / "client.pem") == cn
    log = daemon.log()
    assert SECRET_VALUE not in log and challenge not in log


@pytest.mark.daemon(profiles={"process_interval": "1h"})
@pytest_twisted.ensureDeferred
async def test_upstream_scepserver_issues_the_hosts_username(tmp_path, upstream, daemon):
    host = "MAC-UP"
    template = with_username(
        (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA"),
        b"%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID")
    admin = Api(daemon.admin_url, daemon.admin_token)
    await admin.acall("PUT", "/api/v1/secrets/RADIUS", {"value": SECRET_VALUE})
    admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host, "macos")

    # No username yet: the host profile fails, naming the variable; nothing is delivered.
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    assert (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % (host,)))["commands"] == []
    row = await host_profile_status(admin, host, profile)
    assert (row["status"], row["detail"]) == ("failed", "host has no value for " + USERNAME)

    # Setting it sends the profile; the real client enrolls through the proxy into scepserver.
    await admin.acall("PATCH", "/api/v1/hosts/" + host, {"idp_username": ALICE})
    url, challenge, cn = scep_settings_from_mobileconfig(await fetch(admin, agent, host, profile))
    assert challenge == STATIC and cn.startswith(ALICE + " WIFI sp-")
    pem = await threads.deferToThread(enroll, tmp_path / "mac", url, challenge, cn)
    (tmp_path / "mac.pem").write_text(pem)
    assert common_name(tmp_path / "mac.pem") == cn
    assert (await host_profile_status(admin, host, profile))["status"] == "verifying"
    assert SECRET_VALUE not in daemon.log()


@pytest.mark.daemon(profiles={"process_interval": "1h"})
def test_cli_sets_end_users_and_secrets_on_the_real_daemon(tmp_path, upstream, daemon):
    """The installed scepproxyctl: import with end-user columns, host set/show, secret set/list/show/delete."""
    from support.ctl import Ctl

    ctl = Ctl(daemon.config)
    challenge = tmp_path / "challenge"
    challenge.write_text(STATIC + "\n")
    ctl("ca", "add", "CORP_CA", "--url", upstream.url, "--challenge-file", str(challenge))
    hosts = tmp_path / "hosts.csv"
    hosts.write_text('uuid,serial,platform,idp_username,idp_groups\nMAC-1,S1,macos,alice@corp.example,"a,b"\n')
    assert ctl("host", "import", str(hosts)).stdout == "imported 1 hosts: 1 created, 0 updated\n"

    secret = tmp_path / "radius"
    secret.write_text(SECRET_VALUE + "\n")
    assert ctl("secret", "set", "RADIUS", "--value-file", str(secret)).stdout == "added secret RADIUS\n"
    assert ctl("secret", "set", "RADIUS", input=SECRET_VALUE + "\n").stdout == (
        "kept (the same value) secret RADIUS\n")
    profile_file = tmp_path / "wifi.mobileconfig"
    profile_file.write_bytes(with_username(
        (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA"),
        b"%SerialNumber% WIFI $FLEET_VAR_SCEP_RENEWAL_ID"))
    profile = ctl.json("profile", "upload", str(profile_file))["uuid"]
    ctl("profile", "assign", profile, "MAC-1")
    ctl("trigger", "process_profiles")

    assert ctl("host", "set", "MAC-1", "--idp-username", "bob@corp.example").stdout == (
        "changed host MAC-1 (idp_username); 1 host profiles sent again\n")
    shown = ctl("host", "show", "MAC-1").stdout
    assert "idp_username:   bob@corp.example" in shown and "idp_groups:     a, b" in shown
    assert "sent again: a value it renders changed ($FLEET_VAR_HOST_END_USER_IDP_USERNAME)" in shown

    listed = ctl("secret", "list").stdout
    assert listed.splitlines()[1].split()[0] == "RADIUS"
    assert profile in ctl("secret", "show", "RADIUS").stdout
    refused = ctl("secret", "delete", "RADIUS", expect=1)
    assert "is used by profiles: %s" % (profile,) in refused.stderr
    ctl("profile", "delete", profile)
    assert ctl("secret", "delete", "RADIUS").stdout == "deleted secret RADIUS\n"
    for text in ctl.printed + [daemon.log()]:
        assert SECRET_VALUE not in text
    for path in (Path(str(daemon.database)), Path(str(daemon.database) + "-wal")):
        assert not path.exists() or SECRET_VALUE.encode() not in path.read_bytes()  # sealed at rest


ANDROID_USER_TEMPLATE = {
    "format": "scepproxyd.android-certificate-template/1",
    "name": "Corp Wi-Fi user",
    "scep": {"url": "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_builtin", "challenge": "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_builtin"},
    "subject": "CN=$FLEET_VAR_HOST_END_USER_IDP_USERNAME_LOCAL_PART,OU=$FLEET_VAR_SCEP_RENEWAL_ID",
    "key": {"type": "rsa", "size": 2048},
    "subject_alt_names": {"email": ["$FLEET_VAR_HOST_END_USER_EMAIL_IDP"]},
}


@pytest_twisted.ensureDeferred
async def test_strongswan_enrolls_an_android_template_with_the_end_users_names(tmp_path):
    """strongSwan ``pki --scep`` as the Android agent: local part in the CN, IdP email as the email SAN, bound."""
    import json
    import signal

    from test_interop_bound_issuance import strongswan_enroll

    from support.daemon import Daemon

    daemon = Daemon(tmp_path, ca={"key_size": "2048", "san_email": r"[a-z.]+@corp\.example"},
                    profiles={"process_interval": "1h", "max_retries": "20"}).start()
    try:
        admin = Api(daemon.admin_url, daemon.admin_token)
        host = "PHONE-U"
        await admin.acall("PUT", "/api/v1/hosts/" + host, {
            "serial": "P-U", "platform": "android", "idp_username": ALICE, "idp_email": ALICE})
        agent = Api(daemon.url, await aissue_agent_credential(admin, host))
        profile = (await admin.acall("POST", "/api/v1/profiles?platform=android",
                                     raw=json.dumps(ANDROID_USER_TEMPLATE).encode(),
                                     content_type="application/json"))["uuid"]
        await admin.acall("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": [host]})

        async def delivered():
            template = json.loads(await fetch(admin, agent, host, profile))
            renewal_id = template["subject"].split("OU=", 1)[1]
            return template, renewal_id

        template, renewal_id = await delivered()
        assert template["subject"] == "CN=alice,OU=" + renewal_id
        assert template["subject_alt_names"] == {"email": [ALICE]}
        url, challenge = template["scep"]["url"], template["scep"]["challenge"]
        dn = "OU=%s, CN=alice" % (renewal_id,)
        # Another user's address as the SAN: refused, no certificate.
        result = await threads.deferToThread(strongswan_enroll, tmp_path, "bob", url, challenge, dn,
                                             "bob@corp.example")
        assert result.returncode != 0
        assert (await admin.acall("GET", "/api/v1/ca/certificates"))["certificates"] == []
        row = await host_profile_status(admin, host, profile)  # the [ca] san_email pattern allows bob: the binding refused
        assert row["status"] is None and "subjectAltName email 'bob@corp.example'" in row["detail"]

        template, renewal_id = await delivered()
        url, challenge = template["scep"]["url"], template["scep"]["challenge"]
        result = await threads.deferToThread(strongswan_enroll, tmp_path, "alice", url, challenge,
                                             "OU=%s, CN=alice" % (renewal_id,), ALICE)
        assert result.returncode == 0, result.stdout + result.stderr
        (issued,) = (await admin.acall("GET", "/api/v1/ca/certificates"))["certificates"]
        assert issued["subject"] == "CN=alice,OU=%s" % (renewal_id,)
        assert (await host_profile_status(admin, host, profile))["status"] == "verified"
    finally:
        code = daemon.stop()
        assert code in (0, -signal.SIGTERM), daemon.log()
        assert "Traceback" not in daemon.log(), daemon.log()
