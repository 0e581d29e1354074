"""A site set up the way an admin and an agent do it: through the admin API and the agent API.

Blocking helpers take ``support.api.Api`` clients for a daemon in another
process; the ``async`` ones (``a...``/``set_up``) go through treq. The one
thing written to the database directly is the renewal window (no API can
move a certificate's recorded dates), and ``pending_host_profile``, which
seeds a Store as the processing job would.
"""

import plistlib
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote, unquote

from twisted.internet import defer

from support.api import Api, aissue_agent_credential
from support.upstream import CHALLENGE as STATIC

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "profiles"
# The built-in CA's bound profile asks for exactly OU + CN (tests/fixtures/profiles/builtin-ca-wifi.mobileconfig).
OU = "FLEET DEVICE MANAGEMENT"
# A host profile seeded straight into a Store (pending_host_profile).
HOST = "C8QHT3K1Q6L4"
PROFILE = "a1b2c3d4-profile"
CA = "UPSTREAM_CA"


def mobileconfig(ca_name: str, identifier: str = "Fleet.WiFi") -> bytes:
    template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes()
    return template.replace(b"CA_NAME", ca_name.encode()).replace(b"Fleet.WiFi", identifier.encode())


def add_ca(admin: Api, name: str, url: str, static: str) -> None:
    admin.call("POST", "/api/v1/cas", {"name": name, "url": url, "challenge": static})


def upload_profile(admin: Api, ca_name: str, identifier: str | None = None) -> str:
    profile = admin.call("POST", "/api/v1/profiles?platform=macos",
                         raw=mobileconfig(ca_name, identifier or "test." + ca_name.lower()),
                         content_type="application/x-apple-aspen-config")
    return profile["uuid"]


def scep_url_from(payload: str) -> str:
    profile = plistlib.loads(payload.encode())
    (scep,) = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
    return scep.get("PayloadContent", scep)["URL"]


def challenge_from_url(url: str) -> str:
    return unquote(url.rsplit("/", 1)[1]).split(",")[3]


def fetch_urls(agent: Api, host: str) -> dict[str, str]:
    """What an agent does: fetch the host's commands; {profile uuid: proxy URL} (fresh challenges)."""
    commands = agent.call("GET", "/api/v1/agent/hosts/%s/commands" % (host,))["commands"]
    return {c["profile_uuid"]: scep_url_from(c["payload"]) for c in commands}


def enrollment_url(admin: Api, agent: Api, ca_name: str, host: str, profile: str | None = None) -> tuple[str, str]:
    """A pending host profile of ``host`` for a profile on ``ca_name``; (proxy URL, profile uuid).

    Goes the way a device's profile does: assign, process, agent fetch.
    """
    if profile is None:
        profile = upload_profile(admin, ca_name)
    admin.call("PUT", "/api/v1/hosts/" + host, {"serial": "SER-" + host, "platform": "macos"})
    admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": [host]})
    admin.call("POST", "/api/v1/jobs/process_profiles")
    return fetch_urls(agent, host)[profile], profile


def bound_mobileconfig(ca_name: str) -> bytes:
    """The built-in CA's bound Wi-Fi profile (OU, then CN ``%SerialNumber% WIFI <renewal ID>``) for the CA
    integration ``ca_name``, with a PayloadIdentifier of its own."""
    template = (FIXTURES / "builtin-ca-wifi.mobileconfig").read_bytes()
    return template.replace(b"_builtin<", b"_%s<" % (ca_name.encode(),)).replace(
        b"Builtin.WiFi", b"Bound.%s" % (ca_name.encode(),))


def deliver_to(admin: Api, agent: Api, host: str, profile: str) -> tuple[str, str, str]:
    """``host`` (made if new, serial ``SER-<host>``) with ``profile`` assigned, processed and fetched by its
    agent: (proxy URL, challenge, CN as a Mac expands ``%SerialNumber%``). Fleet.deliver, blocking, any CA."""
    admin.call("PUT", "/api/v1/hosts/" + host, {"serial": "SER-" + host, "platform": "macos"})
    admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": [host]})
    admin.call("POST", "/api/v1/jobs/process_profiles")
    commands = agent.call("GET", "/api/v1/agent/hosts/%s/commands" % (host,))["commands"]
    (command,) = [c for c in commands if c["profile_uuid"] == profile]
    url, challenge, cn = scep_settings_from_mobileconfig(command["payload"])
    return url, challenge, cn.replace("%SerialNumber%", "SER-" + host)


def identifier_path(host: str, profile: str, ca: str, challenge: str) -> str:
    return "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca, challenge), safe="")


def scep_settings_from_mobileconfig(payload: str) -> tuple[str, str, str]:
    """What a Mac does with the delivered profile: read the SCEP payload; (URL, challenge, subject CN)."""
    profile = plistlib.loads(payload.encode())
    (scep,) = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
    content = scep.get("PayloadContent", scep)
    cn = [rdn[0][1] for rdn in content["Subject"] if rdn[0][0] == "CN"][0]
    return content["URL"], content["Challenge"], cn


def move_certificate_into_renewal_window(daemon, host, profile):
    now = time.time()
    with sqlite3.connect(str(daemon.database), timeout=10) as db:
        db.execute(
            "UPDATE host_profiles SET cert_not_before = ?, cert_not_after = ? WHERE host_uuid = ? AND profile_uuid = ?",
            (now - 340 * 86400, now + 20 * 86400, host, profile),
        )


async def set_up(daemon, upstream, template: bytes, content_type: str, host: str, platform: str):
    """CORP_CA on ``upstream`` (once), ``host`` with its agent, ``template`` uploaded and assigned to it:
    (admin Api, agent Api, profile uuid)."""
    admin = Api(daemon.admin_url, daemon.admin_token)
    if "CORP_CA" not in [ca["name"] for ca in (await admin.acall("GET", "/api/v1/cas"))["cas"]]:
        await admin.acall("POST", "/api/v1/cas", {"name": "CORP_CA", "url": upstream.url, "challenge": STATIC})
    await admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER" + host, "platform": platform})
    agent = Api(daemon.url, await aissue_agent_credential(admin, host))
    query = "?platform=" + platform
    profile = await admin.acall("POST", "/api/v1/profiles" + query, raw=template, content_type=content_type)
    assert (await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile["uuid"], {"hosts": [host]})) == {"assigned": 1}
    return admin, agent, profile["uuid"]


def host_profile_row(admin: Api, host: str, profile: str) -> dict:
    """The admin API's row for one host profile (blocking host_profile_status)."""
    (row,) = admin.call("GET", "/api/v1/host-profiles?host=%s&profile=%s" % (host, profile))["host_profiles"]
    return row


async def host_profile_status(admin, host, profile):
    """The admin API's row for one host profile."""
    rows = (await admin.acall("GET", "/api/v1/host-profiles?host=%s&profile=%s" % (host, profile)))["host_profiles"]
    return rows[0]


class Fleet:
    """Macs with the built-in CA's Wi-Fi profile, driven through the admin and agent APIs."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.admin = Api(daemon.admin_url, daemon.admin_token)
        self.agents = {}  # each host's agent holds its own credential
        self.profile = None

    async def set_up(self, hosts):
        for host in hosts:
            await self.admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER-" + host, "platform": "macos"})
            self.agents[host] = Api(self.daemon.url, await aissue_agent_credential(self.admin, host))
        template = (FIXTURES / "builtin-ca-wifi.mobileconfig").read_bytes()
        created = await self.admin.acall("POST", "/api/v1/profiles?platform=macos", raw=template,
                                         content_type="application/x-apple-aspen-config")
        self.profile = created["uuid"]
        await self.admin.acall("POST", "/api/v1/profiles/%s/assign" % self.profile, {"hosts": list(hosts)})

    async def deliver(self, host):
        """Process, then fetch as the host's agent: (proxy URL, challenge, CN as the device expands it)."""
        await self.admin.acall("POST", "/api/v1/jobs/process_profiles")
        commands = (await self.agents[host].acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
        (command,) = [c for c in commands if c["profile_uuid"] == self.profile]
        url, challenge, cn = scep_settings_from_mobileconfig(command["payload"])
        return url, challenge, cn.replace("%SerialNumber%", "SER-" + host)

    async def status(self, host):
        return await host_profile_status(self.admin, host, self.profile)

    async def issued(self):
        return (await self.admin.acall("GET", "/api/v1/ca/certificates"))["certificates"]


@defer.inlineCallbacks
def pending_host_profile(store, ca_url, ca=CA, host=HOST, profile=PROFILE):
    """A CA, a host and its pending host profile, as the processing job would leave them."""
    if (yield store.get_ca(ca)) is None:
        yield store.add_ca(ca, ca_url)
    yield store.upsert_host(host, "SERIAL-" + host, "macos")
    yield store.add_profile(profile, "Wi-Fi certificate", "macos", b"<plist/>", ca)
    yield store.assign_profile(host, profile)
    challenge = yield store.new_challenge(host, profile)
    yield store.set_host_profile_status(host, profile, "pending")
    return challenge
