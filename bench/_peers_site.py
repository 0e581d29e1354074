"""Seeding a running daemon the way an admin and an agent do: its admin API and agent API only.

Nothing here touches the database directly. A site is: one CA integration
(scepserver, its static challenge), the fleet-custom-scep-apple fixture profile
naming that CA, N macOS hosts imported as JSON in chunks, the profile assigned
by platform (N host profiles, status NULL), the process_profiles job triggered
(N commands queued, host profiles pending), each host's agent credential issued
in one bulk call, then, per host, its agent's fetch of its commands: that renders the profile with a fresh one-time challenge in the
proxy URL. The URL and the (rendered) static challenge are read back from the
SCEP payload, exactly what a device would use.
"""

import plistlib
import time
from urllib.parse import urlsplit

from _peers_procs import Api

REPO_FIXTURE = "tests/fixtures/profiles/fleet-custom-scep-apple.mobileconfig"
IMPORT_CHUNK = 5000


def client(port: int, token: str | None) -> Api:
    """The tests' API client for one listener with one bearer token, kept alive, 10 minutes a call (big imports)."""
    return Api(port, token, timeout=600.0, keep_alive=True, record=False)


def add_ca(admin: Api, name: str, url: str, challenge: str) -> None:
    admin.call("POST", "/api/v1/cas", {"name": name, "url": url, "challenge": challenge})


def upload_profile(admin: Api, fixture_bytes: bytes, ca_name: str) -> str:
    content = fixture_bytes.replace(b"CA_NAME", ca_name.encode())
    answer = admin.call("POST", "/api/v1/profiles?platform=macos&name=bench", raw=content,
                        content_type="application/x-apple-aspen-config")
    return answer["uuid"]


def import_hosts(admin: Api, prefix: str, count: int, chunk: int = IMPORT_CHUNK) -> list[str]:
    """``count`` macOS hosts named PREFIX-00000000..., imported as JSON in chunks."""
    names = [f"{prefix}-{i:08d}" for i in range(count)]
    for first in range(0, count, chunk):
        rows = [{"uuid": n, "serial": "SN" + n, "platform": "macos"} for n in names[first:first + chunk]]
        admin.call("POST", "/api/v1/hosts/import", rows)
    return names


def assign_platform(admin: Api, profile_uuid: str) -> int:
    return admin.call("POST", f"/api/v1/profiles/{profile_uuid}/assign", {"platform": "macos"})["assigned"]


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


def fetch_enrollment(agent: Api, host: str, credential: str) -> tuple[str, str]:
    """The host's agent fetches its commands: (proxy path with the one-time challenge, static challenge)."""
    commands = agent.call("GET", f"/api/v1/agent/hosts/{host}/commands", token=credential)["commands"]
    if len(commands) != 1:
        raise RuntimeError(f"host {host} has {len(commands)} commands, expected 1")
    scep = scep_payload(commands[0]["payload"])
    parts = urlsplit(scep["URL"])
    return parts.path, scep["Challenge"]
