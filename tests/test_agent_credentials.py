"""Per-host agent credentials, in process: the admin API issues them, the agent API is bound by them.

The admin API and the agent API run on real listeners in the test process
over one real store file (the admin side is test_admin_api's fixture). Host
A's agent must not be able to read, report for, or learn of host B; rotated
and revoked credentials stop working at once; credentials are stored hashed
and never logged. scepproxyctl is driven against the same admin API.
"""

import hashlib
import json
import re
import sqlite3
import time
from urllib.parse import quote

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, task, threads
from twisted.logger import formatEvent

from support.certs import self_signed
from scepproxyd.config import parse_settings
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.jobs import ProcessProfilesJob, backends_for
from scepproxyd.keys import ChallengeCipher, load_or_create_key
from scepproxyd.service import warn_retired
from scepproxyd.web.agent import agent_resource
from scepproxyd.web.site import BodyLimitedSite
from support.admin_site import TOKEN, add_ca, sample_profile
from support.api import json_call
from support.ctl import ctl_in_process

WRONG = {"error": "missing or wrong bearer token"}
RENEWAL_ID = re.compile(r"sp-[0-9a-f]{16}")


class Site:
    def __init__(self, admin, agent_url, clock):
        self.admin = admin
        self.agent_url = agent_url
        self.clock = clock
        self.profile = None
        self.tokens = {}

    async def agent(self, method, path, token, body=None):
        """(status, JSON) of an agent API call with ``token`` as the bearer credential."""
        return await json_call(self.agent_url, method, path, token, body)

    async def issue(self, host):
        code, answer = await self.admin.call("POST", "/api/v1/hosts/%s/agent-credential" % (host,))
        assert code == 201, answer
        self.tokens[host] = answer["token"]
        return answer

    async def status(self, host):
        code, answer = await self.admin.call("GET", "/api/v1/host-profiles?host=" + host)
        assert code == 200
        (row,) = answer["host_profiles"]
        return row["status"]


@pytest.fixture
def agent_site(api, tmp_path):
    clock = task.Clock()
    clock.advance(time.time() + 60)  # a minute ahead: certificates the tests make now are valid already
    cipher = ChallengeCipher(load_or_create_key(tmp_path / "secrets.key"))
    renderer = CommandRenderer(api.store, cipher, "https://scep.example", reactor)
    agent_site = BodyLimitedSite(agent_resource(api.store, renderer, clock, reactor), 64 * 1024, 30, reactor=reactor)
    port = reactor.listenTCP(0, agent_site, interface="127.0.0.1")
    yield Site(api, "http://127.0.0.1:%d" % (port.getHost().port,), clock)
    pytest_twisted.blockon(port.stopListening())


async def two_hosts(agent_site):
    """Hosts A and B, each with the profile pending and its own agent credential."""
    api = agent_site.admin
    assert (await add_ca(api))[0] == 201
    code, profile = await api.call("POST", "/api/v1/profiles?platform=macos", raw=sample_profile(),
                                   content_type="application/x-apple-aspen-config")
    assert code == 201, profile
    agent_site.profile = profile["uuid"]
    for host in ("host-a", "host-b"):
        assert (await api.call("PUT", "/api/v1/hosts/" + host, {"serial": "S-" + host, "platform": "macos"}))[0] == 201
    assert (await api.call("POST", "/api/v1/profiles/%s/assign" % (agent_site.profile,), {"hosts": ["host-a", "host-b"]}))[0] == 200
    await ProcessProfilesJob(api.store, 100, backends_for("outbox")).run()
    for host in ("host-a", "host-b"):
        await agent_site.issue(host)


def pem_with_cn(common_name: str) -> str:
    cert, _ = self_signed(common_name, days=30)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- issuing, showing, storing ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_credential_is_shown_once_and_stored_hashed(agent_site):
    await two_hosts(agent_site)
    token = agent_site.tokens["host-a"]
    assert token.startswith("scepagent_") and len(token) >= len("scepagent_") + 43
    assert re.fullmatch(r"scepagent_[A-Za-z0-9_-]{43,}", token)
    assert agent_site.tokens["host-a"] != agent_site.tokens["host-b"]

    code, shown = await agent_site.admin.call("GET", "/api/v1/hosts/host-a/agent-credential")
    assert code == 200
    assert set(shown) == {"host_uuid", "issued", "created_at", "last_used_at"}
    assert shown["issued"] is True and shown["created_at"] and shown["last_used_at"] is None
    code, listed = await agent_site.admin.call("GET", "/api/v1/agent-credentials")
    assert [c["host_uuid"] for c in listed["agent_credentials"]] == ["host-a", "host-b"]
    for answer in (shown, listed):
        assert token not in json.dumps(answer)
        assert hashlib.sha256(token.encode()).hexdigest() not in json.dumps(answer)

    # Only the SHA-256 is in the database: not in the main file, not in the WAL.
    stored = b"".join(p.read_bytes() for p in agent_site.admin.db_path.parent.glob(agent_site.admin.db_path.name + "*"))
    assert token.encode() not in stored
    with sqlite3.connect(str(agent_site.admin.db_path)) as db:
        hashes = dict(db.execute("SELECT host_uuid, token_hash FROM agent_credentials"))
    assert hashes["host-a"] == hashlib.sha256(token.encode()).hexdigest()

    assert await agent_site.admin.call("POST", "/api/v1/hosts/nobody/agent-credential") == (404, {"error": "no host 'nobody'"})
    assert await agent_site.admin.call("GET", "/api/v1/hosts/nobody/agent-credential") == (404, {"error": "no host 'nobody'"})
    # The agent API refuses the admin token, and the admin API refuses an agent credential.
    assert await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", TOKEN) == (401, WRONG)
    assert await agent_site.admin.call("GET", "/api/v1/hosts", token=token) == (401, WRONG)


# -- one host's credential, another host -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_credential_cannot_reach_another_host_nor_tell_it_exists(agent_site):
    await two_hosts(agent_site)
    a, b = agent_site.tokens["host-a"], agent_site.tokens["host-b"]
    unknown = "scepagent_" + "x" * 43
    code, fetched_b = await agent_site.agent("GET", "/api/v1/agent/hosts/host-b/commands", b)
    assert code == 200
    (command_b,) = fetched_b["commands"]
    renewal_b = RENEWAL_ID.search(command_b["payload"]).group(0)
    requests = [
        ("GET", "/commands", None),
        ("POST", "/commands/" + command_b["command_uuid"], {"status": "error", "error": "spoofed"}),
        ("POST", "/profiles", {"installed": [agent_site.profile]}),
        ("POST", "/certificates", {"certificates": [pem_with_cn("dev " + renewal_b)]}),
    ]
    for method, tail, body in requests:
        other = await agent_site.agent(method, "/api/v1/agent/hosts/host-b" + tail, a, body)
        missing = await agent_site.agent(method, "/api/v1/agent/hosts/no-such-host" + tail, a, body)
        wrong = await agent_site.agent(method, "/api/v1/agent/hosts/host-b" + tail, unknown, body)
        assert other == missing == wrong == (401, WRONG), (method, tail)
    # None of it touched host B: its command and host profile are as its own agent left them.
    assert await agent_site.status("host-b") == "pending"
    code, again = await agent_site.agent("GET", "/api/v1/agent/hosts/host-b/commands", b)
    assert code == 200 and [c["command_uuid"] for c in again["commands"]] == [command_b["command_uuid"]]
    # Host A's own requests work.
    code, fetched_a = await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", a)
    assert code == 200 and len(fetched_a["commands"]) == 1


@pytest_twisted.ensureDeferred
async def test_a_certificate_naming_another_hosts_renewal_id_is_ignored_with_a_warning(agent_site, logs):
    await two_hosts(agent_site)
    a, b = agent_site.tokens["host-a"], agent_site.tokens["host-b"]
    payloads = {}
    for host, token in (("host-a", a), ("host-b", b)):
        code, fetched = await agent_site.agent("GET", "/api/v1/agent/hosts/%s/commands" % (host,), token)
        payloads[host] = fetched["commands"][0]["payload"]
    renewal_a = RENEWAL_ID.search(payloads["host-a"]).group(0)
    renewal_b = RENEWAL_ID.search(payloads["host-b"]).group(0)

    foreign = pem_with_cn("device " + renewal_b)
    code, report = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/certificates", a, {"certificates": [foreign]})
    # Answered as an unknown renewal ID would be: nothing tells A that B's exists.
    assert (code, report) == (200, {"recorded": 0, "older": 0, "unknown": 1, "not_valid_now": 0})
    unknown = pem_with_cn("device sp-0123456789abcdef")
    code, report_unknown = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/certificates", a,
                                            {"certificates": [unknown]})
    assert report_unknown == report
    assert await agent_site.status("host-b") == "pending" and await agent_site.status("host-a") == "pending"
    (warning,) = [w for w in logs.warnings() if "ignored certificate" in w]
    assert "reported by the agent of host host-a" in warning
    assert "renewal ID %s belongs to a host profile of host host-b" % (renewal_b,) in warning
    # A certificate carrying both its own and another host's renewal ID is ignored too.
    both = pem_with_cn("%s %s" % (renewal_a, renewal_b))
    code, report = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/certificates", a, {"certificates": [both]})
    assert report["unknown"] == 1 and report["recorded"] == 0
    # Its own certificate is recorded.
    own = pem_with_cn("device " + renewal_a)
    code, report = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/certificates", a, {"certificates": [own]})
    assert report["recorded"] == 1
    assert await agent_site.status("host-a") == "verified" and await agent_site.status("host-b") == "pending"


@pytest_twisted.ensureDeferred
async def test_installed_profile_reports_touch_only_the_reporters_host_profiles(agent_site):
    await two_hosts(agent_site)
    a = agent_site.tokens["host-a"]
    code, answer = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/profiles", a, {"installed": [agent_site.profile]})
    assert (code, answer) == (200, {"verified": 1})
    assert await agent_site.status("host-a") == "verified"
    assert await agent_site.status("host-b") == "pending"


# -- rotation, revocation, deletion ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_rotated_credential_stops_working_at_once(agent_site):
    await two_hosts(agent_site)
    old = agent_site.tokens["host-a"]
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", old))[0] == 200
    rotated = await agent_site.issue("host-a")
    assert rotated["replaced"] is True and rotated["token"] != old
    assert await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", old) == (401, WRONG)
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", rotated["token"]))[0] == 200
    # Host B's credential is untouched.
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-b/commands", agent_site.tokens["host-b"]))[0] == 200


@pytest_twisted.ensureDeferred
async def test_a_revoked_credential_stops_working_at_once(agent_site):
    await two_hosts(agent_site)
    token = agent_site.tokens["host-a"]
    assert await agent_site.admin.call("DELETE", "/api/v1/hosts/host-a/agent-credential") == (204, None)
    assert await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token) == (401, WRONG)
    code, shown = await agent_site.admin.call("GET", "/api/v1/hosts/host-a/agent-credential")
    assert shown == {"host_uuid": "host-a", "issued": False, "created_at": None, "last_used_at": None}
    assert await agent_site.admin.call("DELETE", "/api/v1/hosts/host-a/agent-credential") == (
        404, {"error": "host 'host-a' has no agent credential"})
    assert await agent_site.admin.call("DELETE", "/api/v1/hosts/nobody/agent-credential") == (404, {"error": "no host 'nobody'"})
    # Deleting a host deletes its credential with it.
    token_b = agent_site.tokens["host-b"]
    assert (await agent_site.admin.call("DELETE", "/api/v1/hosts/host-b"))[0] == 204
    assert await agent_site.agent("GET", "/api/v1/agent/hosts/host-b/commands", token_b) == (401, WRONG)
    assert (await agent_site.admin.call("GET", "/api/v1/agent-credentials"))[1] == {"agent_credentials": [], "next": None}


@pytest_twisted.ensureDeferred
async def test_last_used_is_written_at_most_once_a_minute(agent_site):
    await two_hosts(agent_site)
    token = agent_site.tokens["host-a"]

    async def last_used():
        return (await agent_site.admin.call("GET", "/api/v1/hosts/host-a/agent-credential"))[1]["last_used_at"]

    await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token)
    first = await last_used()
    assert first is not None
    agent_site.clock.advance(59)
    await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token)
    assert await last_used() == first
    agent_site.clock.advance(2)
    await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token)
    assert await last_used() != first


# -- bulk ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bulk_issue_by_list_platform_or_all(agent_site):
    api = agent_site.admin
    rows = [{"uuid": "bulk-%04d" % i, "serial": None, "platform": "ios" if i % 2 else "macos"} for i in range(2500)]
    assert (await api.call("POST", "/api/v1/hosts/import", rows))[0] == 200
    code, answer = await api.call("POST", "/api/v1/agent-credentials", {"platform": "ios"})
    assert code == 200 and answer["kept"] == 0 and len(answer["issued"]) == 1250
    ios_tokens = {i["host_uuid"]: i["token"] for i in answer["issued"]}
    assert len(set(ios_tokens.values())) == 1250
    # "all" covers the rest; hosts that have one keep it unless rotate is asked for.
    code, answer = await api.call("POST", "/api/v1/agent-credentials", {"all": True})
    assert answer["kept"] == 1250 and len(answer["issued"]) == 1250
    assert not set(i["host_uuid"] for i in answer["issued"]) & set(ios_tokens)
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/bulk-0001/commands", ios_tokens["bulk-0001"]))[0] == 200
    code, answer = await api.call("POST", "/api/v1/agent-credentials", {"hosts": ["bulk-0001", "bulk-0002"],
                                                                        "rotate": True})
    assert [i["host_uuid"] for i in answer["issued"]] == ["bulk-0001", "bulk-0002"] and answer["kept"] == 0
    assert await agent_site.agent("GET", "/api/v1/agent/hosts/bulk-0001/commands", ios_tokens["bulk-0001"]) == (401, WRONG)
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/bulk-0001/commands", answer["issued"][0]["token"]))[0] == 200
    assert (await api.call("GET", "/api/v1/agent-credentials?platform=ios"))[1]["agent_credentials"][0]["host_uuid"] == "bulk-0001"

    refusals = [
        ({"hosts": ["bulk-0001", "nobody"]}, {"error": "no host 'nobody'", "field": "hosts"}),
        ({}, {"error": "give one of hosts (a list of host UUIDs), platform, or all: true", "field": "hosts"}),
        ({"all": True, "platform": "ios"}, {"error": "give one of hosts (a list of host UUIDs), platform, or all: true",
                                            "field": "hosts"}),
        ({"hosts": []}, {"error": "hosts must be a non-empty list of host UUIDs", "field": "hosts"}),
        ({"platform": "beos"}, {"error": "platform must be one of macos, ios, ipados, android, windows", "field": "platform"}),
        ({"all": True, "rotate": "yes"}, {"error": "rotate must be true or false", "field": "rotate"}),
    ]
    for body, error in refusals:
        assert await api.call("POST", "/api/v1/agent-credentials", body) == (422, error), body
    assert (await api.call("GET", "/api/v1/agent-credentials?platform=beos"))[0] == 422


# -- secrets in logs, the retired shared token -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_credentials_never_appear_in_logs(agent_site, logs):
    await two_hosts(agent_site)
    a, b = agent_site.tokens["host-a"], agent_site.tokens["host-b"]
    await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", a)
    await agent_site.agent("GET", "/api/v1/agent/hosts/host-b/commands", a)  # refused, logged as a warning
    await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/certificates", a, {"certificates": ["junk"]})
    rotated = (await agent_site.issue("host-a"))["token"]
    await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", a)
    _, bulk = await agent_site.admin.call("POST", "/api/v1/agent-credentials", {"all": True, "rotate": True})
    await agent_site.admin.call("DELETE", "/api/v1/hosts/host-b/agent-credential")
    secrets = [a, b, rotated] + [i["token"] for i in bulk["issued"]]
    text = logs.text()
    assert "agent credential of host host-a" in text and "refused an agent request for host host-b" in text
    for secret in secrets:
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text


def test_the_old_shared_token_file_gets_one_warning_and_no_secret(tmp_path, logs):
    state = tmp_path / "state"
    state.mkdir()
    secret = "old-shared-agent-token-0123456789"
    (state / "agent.token").write_text(secret + "\n")
    settings = parse_settings("[state]\ndirectory = state\n[agent]\ntoken_file = agent.token\n", tmp_path / "x.ini")
    warn_retired(settings)
    warnings = logs.warnings()
    assert len(warnings) == 2
    assert "[agent] token_file is ignored" in warnings[0]
    assert "holds the old shared agent token, which is no longer accepted" in warnings[1]
    assert "scepproxyctl agent-credential issue" in warnings[1]
    assert secret not in logs.text()
    # A state without the old file, and a file without the old key, give no warning at all.
    (state / "agent.token").unlink()
    del logs.events[:]
    warn_retired(parse_settings("[state]\ndirectory = state\n", tmp_path / "x.ini"))
    assert logs.warnings() == []


# -- scepproxyctl ----------------------------------------------------------------------


def run_ctl(api, tmp_path, *argv):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    return ctl_in_process("--url", api.url, "--token-file", str(token_file), *argv)


@pytest_twisted.ensureDeferred
async def test_scepproxyctl_agent_credential_commands(agent_site, tmp_path):
    await two_hosts(agent_site)
    ctl = lambda *argv: threads.deferToThread(run_ctl, agent_site.admin, tmp_path, *argv)  # noqa: E731

    code, out, _ = await ctl("agent-credential", "issue", "host-a")
    token = out.strip()
    assert code == 0 and re.fullmatch(r"scepagent_[A-Za-z0-9_-]{43,}", token)
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token))[0] == 200
    code, out, _ = await ctl("agent-credential", "show", "host-a")
    assert code == 0 and "credential:   issued" in out and "last_used_at:" in out and token not in out
    code, out, _ = await ctl("--json", "agent-credential", "rotate", "host-a")
    rotated = json.loads(out)
    assert rotated["replaced"] is True
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", token))[0] == 401
    code, out, _ = await ctl("agent-credential", "list")
    assert out.splitlines()[0].split() == ["HOST", "CREATED", "LAST_USED"] and "host-b" in out
    code, out, _ = await ctl("agent-credential", "revoke", "host-a")
    assert code == 0 and out.strip() == "revoked the agent credential of host host-a; its agent is refused from now on"
    code, out, err = await ctl("agent-credential", "revoke", "host-a")
    assert code == 1 and "host 'host-a' has no agent credential" in err

    output = tmp_path / "creds.csv"
    code, out, _ = await ctl("agent-credential", "issue-bulk", "--all", "--output", str(output))
    assert code == 0 and out.strip() == (
        "issued 1 agent credential; 1 host already had one (--rotate replaces those); written to %s (mode 0600): "
        "hand each to its host's agent" % (output,))
    assert output.stat().st_mode & 0o777 == 0o600
    lines = output.read_text().splitlines()
    assert lines[0] == "host_uuid,token" and lines[1].startswith("host-a,scepagent_")
    assert (await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", lines[1].split(",")[1]))[0] == 200
    code, out, err = await ctl("agent-credential", "issue-bulk", "--all", "--output", str(output))
    assert code == 1 and "already exists" in err
    code, out, _ = await ctl("agent-credential", "issue-bulk", "--rotate", "host-b")
    assert code == 0 and out.splitlines()[0].split() == ["HOST", "TOKEN"] and "issued 1 agent credential" in out
    code, out, err = await ctl("agent-credential", "issue-bulk", "host-b", "--all")
    assert code == 2 and "exactly one of them" in err


HOSTILE = "a\x1b]0;owned\x07b\x1b[2J\nfake-row  verified\r\u202eevil\u2066x\t\x9b\x7fz"
SHOWN = "a\\x1b]0;owned\\x07b\\x1b[2J\\nfake-row  verified\\r\\u202eevil\\u2066x\\t\\x9b\\x7fz"


@pytest_twisted.ensureDeferred
async def test_scepproxyctl_shows_device_text_escaped_and_json_exact(agent_site, tmp_path, logs):
    """A serial, a profile name and an agent's error text with ESC/OSC sequences, newlines and bidi overrides."""
    await two_hosts(agent_site)
    ctl = lambda *argv: threads.deferToThread(run_ctl, agent_site.admin, tmp_path, *argv)  # noqa: E731
    api = agent_site.admin
    assert (await api.call("PUT", "/api/v1/hosts/host-a", {"serial": HOSTILE, "platform": "macos"}))[0] == 200
    assert (await api.call("DELETE", "/api/v1/profiles/" + agent_site.profile))[0] == 204
    code, profile = await api.call("POST", "/api/v1/profiles?platform=macos&name=" + quote(HOSTILE),
                                   raw=sample_profile(), content_type="application/x-apple-aspen-config")
    assert code == 201 and profile["name"] == HOSTILE, profile
    assert (await api.call("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": ["host-a"]}))[0] == 200
    await ProcessProfilesJob(api.store, 100, backends_for("outbox")).run()
    code, fetched = await agent_site.agent("GET", "/api/v1/agent/hosts/host-a/commands", agent_site.tokens["host-a"])
    (command,) = fetched["commands"]
    code, answer = await agent_site.agent("POST", "/api/v1/agent/hosts/host-a/commands/" + command["command_uuid"],
                                    agent_site.tokens["host-a"], {"status": "error", "error": HOSTILE})
    assert code == 200, answer

    listings = (
        (("host", "list"), "hosts", "serial"),
        (("profile", "list"), "profiles", "name"),
        (("status", "--host", "host-a"), "host_profiles", "detail"),
    )
    for argv, key, column in listings:
        code, out, err = await ctl(*argv)
        assert code == 0, err
        assert SHOWN in out, (argv, out)
        assert not any(c in out for c in "\x1b\u202e\u2066\x9b\r\t"), out
        assert "\nfake-row" not in out, out
        code, out, _ = await ctl("--json", *argv)
        assert code == 0 and any(row[column].endswith(HOSTILE) for row in json.loads(out)[key]), out
    code, out, _ = await ctl("host", "show", "host-a")
    assert code == 0 and "serial:" in out and SHOWN in out and "\x1b" not in out
    # The daemon's own log lines carry device text escaped too.
    logged = "\n".join(formatEvent(e) for e in logs.events)
    assert HOSTILE not in logged and "\x1b" not in logged
    assert any(SHOWN in formatEvent(e) for e in logs.events if "uploaded profile" in formatEvent(e)), logged[-2000:]
