"""Seeding a running daemon the way an admin and an agent do: its admin API and agent API only.

Nothing here touches the database directly. A site is: one CA integration
(scepserver, its static challenge), the fleet-custom-scep-apple fixture profile
naming that CA, N macOS hosts imported as JSON in chunks, the profile assigned
by platform (N host profiles, status NULL), the process_profiles job triggered
(N commands queued, host profiles pending), each host's agent credential issued
in one bulk call, then, per host, its agent's fetch of its commands: that renders the profile with a fresh one-time challenge in the
proxy URL. The URL, the (rendered) static challenge and the subject are read back
from the SCEP payload, exactly what a device would use (``%SerialNumber%``
expanded with the host's serial, as a Mac does).

An RA-mode site (bench/peers.py's ``ra`` leg) is the same with the CA
integration added with ``mode: ra`` and its own copy of the profile (another
PayloadIdentifier) for another platform, so assigning each by platform keeps
the two sets of hosts apart.
"""

import plistlib
import time
from urllib.parse import urlsplit

import attrs
from cryptography import x509

from _peers_procs import Api, site_mobileconfig
from scepproxyd.profiles import binding, variables

REPO_FIXTURE = "tests/fixtures/profiles/fleet-custom-scep-apple.mobileconfig"
IMPORT_CHUNK = 5000


def client(port: int, token: str | None) -> Api:
    """The tests' API client for one listener with one bearer token, kept alive, 10 minutes a call (big imports)."""
    return Api(port, token, timeout=600.0, keep_alive=True, record=False)


def add_ca(admin: Api, name: str, url: str, challenge: str, mode: str = "passthrough") -> dict:
    """The CA integration; in ``ra`` mode the daemon enrolls its RA certificate from the CA first."""
    return admin.call("POST", "/api/v1/cas", {"name": name, "url": url, "challenge": challenge, "mode": mode})


def upload_profile(admin: Api, ca_name: str, platform: str = "macos", identifier: str = "Fleet.WiFi") -> str:
    """The fleet-custom-scep-apple fixture naming ``ca_name`` (tests/support/site.py's mobileconfig)."""
    answer = admin.call("POST", f"/api/v1/profiles?platform={platform}&name=bench",
                        raw=site_mobileconfig(ca_name, identifier), content_type="application/x-apple-aspen-config")
    return answer["uuid"]


def serial_of(host: str) -> str:
    """The serial number import_hosts gives a host."""
    return "SN" + host


def import_hosts(admin: Api, prefix: str, count: int, chunk: int = IMPORT_CHUNK, platform: str = "macos") -> list[str]:
    """``count`` hosts named PREFIX-00000000..., imported as JSON in chunks."""
    names = [f"{prefix}-{i:08d}" for i in range(count)]
    for first in range(0, count, chunk):
        rows = [{"uuid": n, "serial": serial_of(n), "platform": platform} for n in names[first:first + chunk]]
        admin.call("POST", "/api/v1/hosts/import", rows)
    return names


def assign_platform(admin: Api, profile_uuid: str, platform: str = "macos") -> int:
    return admin.call("POST", f"/api/v1/profiles/{profile_uuid}/assign", {"platform": platform})["assigned"]


def process_profiles(admin: Api) -> tuple[dict, float]:
    started = time.perf_counter()
    answer = admin.call("POST", "/api/v1/jobs/process_profiles")
    return answer.get("result", answer), time.perf_counter() - started


def scep_payload(mobileconfig: str) -> dict:
    """The com.apple.security.scep payload's content of a rendered profile."""
    plist = plistlib.loads(mobileconfig.encode())
    for payload in plist["PayloadContent"]:
        if payload.get("PayloadType") == "com.apple.security.scep":
            return payload["PayloadContent"]
    raise ValueError("rendered profile has no SCEP payload")


def issue_agent_credentials(admin: Api, hosts: list[str]) -> dict[str, str]:
    """Each host's own agent credential, issued in one bulk admin call: ``{host: credential}``."""
    answer = admin.call("POST", "/api/v1/agent-credentials", {"hosts": hosts, "rotate": True})
    return {item["host_uuid"]: item["token"] for item in answer["issued"]}


@attrs.frozen
class Enrollment:
    """What a device reads from its delivered SCEP payload."""

    #: The proxy URL's path, with the host profile's one-time challenge in it.
    path: str
    #: The (rendered) static challenge, the CSR's challengePassword.
    challenge: str
    #: The subject the profile renders for this host, as the device writes it in its CSR.
    subject: x509.Name


def device_subject(rdns: list, serial: str) -> x509.Name:
    """A payload's ``Subject`` (RDNs of [type, value] pairs) as a device fills it in: ``%SerialNumber%`` expanded."""
    placeholder = "%" + variables.SERIAL_NUMBER + "%"
    return x509.Name([
        x509.RelativeDistinguishedName([
            x509.NameAttribute(x509.ObjectIdentifier(binding.ATTRIBUTE_TYPES[kind.upper()]),
                               value.replace(placeholder, serial))
            for kind, value in rdn
        ])
        for rdn in rdns
    ])


def fetch_enrollment(agent: Api, host: str, credential: str) -> Enrollment:
    """The host's agent fetches its commands; what its device then enrolls with."""
    commands = agent.call("GET", f"/api/v1/agent/hosts/{host}/commands", token=credential)["commands"]
    if len(commands) != 1:
        raise RuntimeError(f"host {host} has {len(commands)} commands, expected 1")
    scep = scep_payload(commands[0]["payload"])
    return Enrollment(urlsplit(scep["URL"]).path, scep["Challenge"], device_subject(scep["Subject"], serial_of(host)))
