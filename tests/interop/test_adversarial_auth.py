"""Adversarial: the APIs refuse every credential but their own, and secrets never leak.

The daemon runs as the README runs it in front of a real micromdm scepserver.
The admin API and the agent API are tried with no token, wrong tokens, each
other's credentials, another host's agent credential and the webhook token, in malformed headers and in the query
string, and over the wrong listener. Then a whole enrollment runs (admin
set-up, processing, agent fetch, real scepclient, reports) while every
answer is recorded: no API answer and no line of the daemon's log may carry
the CA's static challenge, a token or a one-time challenge; the only place
they may appear is the profile rendered for the agent, which must carry its
one-time challenge.
"""

import base64
import subprocess

import pytest

from support.api import Api, apis, webhook_token
from support.hostile import assert_log_clean, pki_post, raw_http, request_once
from support.site import add_ca, challenge_from_url, fetch_urls, scep_url_from, upload_profile
from support.processes import need
from support.upstream import CHALLENGE as STATIC

pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h"})
NEW_STATIC = "auth-rotated-static-Kp3w-secret"


@pytest.fixture(scope="module", autouse=True)
def auth_site(module_daemon, module_upstream, module_site):
    """AUTH_CA on the module's scepserver, and host auth-host with its agent credential (issued once)."""
    admin, _ = apis(module_daemon)
    add_ca(admin, "AUTH_CA", module_upstream.url, STATIC)
    admin.call("PUT", "/api/v1/hosts/auth-host", {"serial": "SER-AUTH", "platform": "macos"})
    module_site[1].credential("auth-host")


def credentials(module_daemon, agent_credential) -> dict[str, dict]:
    """Authorization headers that must not open the admin API, by name."""
    admin, agent, hook = module_daemon.admin_token, agent_credential, webhook_token(module_daemon)
    basic = base64.b64encode(("admin:" + admin).encode()).decode()
    return {
        "none": {},
        "empty": {"Authorization": ""},
        "scheme only": {"Authorization": "Bearer"},
        "empty token": {"Authorization": "Bearer "},
        "wrong": {"Authorization": "Bearer " + "w" * 43},
        "agent credential": {"Authorization": "Bearer " + agent},
        "webhook token": {"Authorization": "Bearer " + hook},
        "basic with admin token": {"Authorization": "Basic " + basic},
        "admin token without scheme": {"Authorization": admin},
        "admin token plus a byte": {"Authorization": "Bearer " + admin + "x"},
        "admin token less a byte": {"Authorization": "Bearer " + admin[:-1]},
        "admin token in another scheme": {"Authorization": "Token " + admin},
        "admin token as a cookie": {"Cookie": "token=" + admin},
        "admin token in another header": {"X-Auth-Token": admin},
    }


ADMIN_ENDPOINTS = [
    ("GET", "/api/v1/cas"), ("GET", "/api/v1/cas/AUTH_CA"), ("DELETE", "/api/v1/cas/AUTH_CA"),
    ("PATCH", "/api/v1/cas/AUTH_CA"), ("POST", "/api/v1/cas"), ("GET", "/api/v1/hosts"),
    ("PUT", "/api/v1/hosts/intruder"), ("DELETE", "/api/v1/hosts/auth-host"), ("POST", "/api/v1/hosts/import"),
    ("GET", "/api/v1/profiles"), ("GET", "/api/v1/host-profiles"), ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/process_profiles"), ("GET", "/api/v1/nowhere"),
]


def test_admin_api_refuses_every_other_credential(module_daemon, module_site):
    admin, agent = module_site
    secrets = [module_daemon.admin_token, agent.credential("auth-host"), webhook_token(module_daemon), STATIC]
    for name, headers in credentials(module_daemon, agent.credential("auth-host")).items():
        for method, path in ADMIN_ENDPOINTS:
            body = b'{"name": "EVIL", "url": "http://127.0.0.1:9/", "challenge": "x"}' if method != "GET" else None
            status, answer = request_once(module_daemon.admin_port, method, path.encode(), body=body,
                                          headers=dict(headers, **{"Content-Type": "application/json"}))
            assert status == 401, (name, method, path, status, answer)
            assert b"missing or wrong bearer token" in answer
            assert not any(s.encode() in answer for s in secrets)
        status, _ = request_once(module_daemon.admin_port, "GET", b"/api/v1/cas?access_token=" + module_daemon.admin_token.encode())
        assert status == 401
    # Nothing those requests asked for happened.
    assert admin.call("GET", "/api/v1/cas/AUTH_CA")["name"] == "AUTH_CA"
    assert admin.request("GET", "/api/v1/hosts/intruder")[0] == 404
    assert admin.call("GET", "/api/v1/hosts/auth-host")["uuid"] == "auth-host"
    # The refusal names the scheme, as RFC 6750 asks.
    raw = raw_http(module_daemon.admin_port, b"GET /api/v1/cas HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nWWW-Authenticate: Bearer" in raw


def test_admin_api_is_not_on_the_proxy_listener(module_daemon):
    headers = {"Authorization": "Bearer " + module_daemon.admin_token, "Content-Type": "application/json"}
    for method, path in ADMIN_ENDPOINTS:
        for prefix in (b"", b"/mdm/scep/proxy/..", b"/api/v1/agent/.."):
            status, answer = request_once(module_daemon.port, method, prefix + path.encode(),
                                          body=b"{}" if method != "GET" else None, headers=headers)
            # Refused (401/404, or 400 from the proxy; 405 for methods the proxy does not serve).
            assert status in (400, 401, 404, 405), (method, path, status, answer)
            assert b"AUTH_CA" not in answer and b"auth-host" not in answer


def test_agent_api_refuses_every_other_credential(module_daemon, module_site):
    admin, agents = module_site
    admin.call("PUT", "/api/v1/hosts/auth-other", {"serial": "SER-OTHER", "platform": "macos"})
    admin_token, agent, hook = module_daemon.admin_token, agents.credential("auth-host"), webhook_token(module_daemon)
    other = agents.credential("auth-other")
    refused = {
        "none": {},
        "wrong": {"Authorization": "Bearer " + "w" * 43},
        "admin token": {"Authorization": "Bearer " + admin_token},
        "webhook token": {"Authorization": "Bearer " + hook},
        "agent token without scheme": {"Authorization": agent},
        "agent token plus a byte": {"Authorization": "Bearer " + agent + "x"},
        "basic with agent token": {"Authorization": "Basic " + base64.b64encode(b"agent:" + agent.encode()).decode()},
    }
    endpoints = [("GET", "/api/v1/agent/hosts/auth-host/commands"),
                 ("POST", "/api/v1/agent/hosts/auth-host/commands/00000000-0000-0000-0000-000000000000"),
                 ("POST", "/api/v1/agent/hosts/auth-host/profiles"),
                 ("POST", "/api/v1/agent/hosts/auth-host/certificates"),
                 ("GET", "/api/v1/agent/nowhere")]
    for name, headers in refused.items():
        for method, path in endpoints:
            status, answer = request_once(module_daemon.port, method, path.encode(),
                                          body=b'{"status": "acknowledged"}' if method == "POST" else None,
                                          headers=dict(headers, **{"Content-Type": "application/json"}))
            assert status == 401, (name, method, path, status, answer)
            assert admin_token.encode() not in answer and agent.encode() not in answer
            assert b"auth-" not in answer  # names no host
    # Another host's credential opens none of this host's endpoints, and is answered like a wrong one.
    for method, path in endpoints[:-1]:
        for host_path in (path, path.replace("auth-host", "no-such-host")):
            status, answer = request_once(module_daemon.port, method, host_path.encode(),
                                          body=b'{"status": "acknowledged"}' if method == "POST" else None,
                                          headers={"Authorization": "Bearer " + other,
                                                   "Content-Type": "application/json"})
            assert (status, answer) == (401, b'{"error": "missing or wrong bearer token"}\n'), (method, host_path)
    # The agent credential is for the device-facing listener only.
    for method, path in endpoints:
        status, _ = request_once(module_daemon.admin_port, method, path.encode(), headers={"Authorization": "Bearer " + agent},
                                 body=b"{}" if method == "POST" else None)
        assert status in (401, 404)
    # NanoMDM's webhook takes its own token, in its path, and nothing else.
    for token in ("", "wrong-token", admin_token, agent, hook + "x", hook[:-1]):
        status, _ = request_once(module_daemon.port, "POST", ("/webhooks/nanomdm/" + token).encode(), body=b"{}",
                                 headers={"Authorization": "Bearer " + hook})
        assert status in (401, 404), token


def enroll(workdir, url, static, cn):
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [need("scepclient"), "-private-key", str(workdir / "key.pem"), "-server-url", url,
         "-challenge=" + static, "-cn", cn],
        cwd=str(workdir), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return (workdir / "client.pem").read_text()


def test_secrets_never_in_answers_or_log(module_daemon, module_upstream, tmp_path, module_site):
    admin, agent = module_site
    device = Api(module_daemon.port, None)
    profile = upload_profile(admin, "AUTH_CA", "auth.wifi")
    admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": ["auth-host"]})
    admin.call("POST", "/api/v1/jobs/process_profiles")

    # Fetch three times: each render mints a new one-time challenge and retires the one before.
    one_time = []
    for _ in range(3):
        status, fetched = agent.request("GET", "/api/v1/agent/hosts/auth-host/commands")
        agent.seen.pop()  # the rendered profile is the one answer that carries secrets, by design
        (command,) = fetched["commands"]
        url = scep_url_from(command["payload"])
        one_time.append(challenge_from_url(url))
        assert one_time[-1] in command["payload"], "the rendered profile must carry its one-time challenge"
        assert one_time[-1] in url
    assert len(set(one_time)) == 3

    # A stale copy, a replay and garbage at the proxy: refusals that name no challenge.
    stale_url = url.replace(one_time[-1], one_time[0])
    assert pki_post(stale_url)[:2] == (400, b"custom scep challenge failed\n")
    admin.call("POST", "/api/v1/host-profiles/auth-host/%s/resend" % (profile,))
    admin.call("POST", "/api/v1/jobs/process_profiles")
    url = fetch_urls(agent, "auth-host")[profile]
    agent.seen.pop()
    one_time.append(challenge_from_url(url))
    pem = enroll(tmp_path / "device", url, STATIC, "auth-device")
    for attempt in (url, url.replace(one_time[-1], one_time[-1][:-1] + "x")):
        status, body, _ = pki_post(attempt)
        device.seen.append(body)
        assert status == 400
    status, body = request_once(module_daemon.port, "GET", (url.removeprefix(module_daemon.url) + "?operation=GetCACaps").encode())
    assert status == 200
    device.seen.append(body)

    # Reports, and every admin read there is.
    agent.request("POST", "/api/v1/agent/hosts/auth-host/certificates", {"certificates": [pem]})
    agent.request("POST", "/api/v1/agent/hosts/auth-host/profiles", {"installed": [profile]})
    agent.request("POST", "/api/v1/agent/hosts/nobody/certificates", {"certificates": [pem]},
                  token=agent.credential("auth-host"))
    agent.request("GET", "/api/v1/agent/hosts/auth-host/commands")
    for path in ("/api/v1/cas", "/api/v1/cas/AUTH_CA", "/api/v1/hosts", "/api/v1/hosts/auth-host", "/api/v1/profiles",
                 "/api/v1/profiles/" + profile, "/api/v1/host-profiles", "/api/v1/jobs"):
        admin.call("GET", path)
    for job in ("process_profiles", "renew_certificates", "cleanup"):
        admin.call("POST", "/api/v1/jobs/" + job)

    # Admin mistakes that carry the static challenge: the refusals never echo it.
    admin.request("POST", "/api/v1/cas", {"name": "AUTH_CA", "url": module_upstream.url, "challenge": STATIC})
    admin.request("POST", "/api/v1/cas", {"name": "BAD_URL_CA", "url": "http://127.0.0.1:9/scep", "challenge": STATIC})
    admin.request("POST", "/api/v1/cas", {"name": "bad name!", "url": module_upstream.url, "challenge": STATIC})
    admin.request("POST", "/api/v1/cas", {"name": "LONG_CA", "url": module_upstream.url, "challenge": STATIC * 100})
    admin.request("PATCH", "/api/v1/cas/AUTH_CA", {"url": module_upstream.url + "/other", "challenge": STATIC})
    admin.request("PATCH", "/api/v1/cas/AUTH_CA", {"challenge": STATIC, "bogus": STATIC})
    admin.request("POST", "/api/v1/cas", {"name": "x" * 300, "url": "ftp://nope", "challenge": NEW_STATIC})
    # Rotate the static challenge: the new one is as secret as the old.
    admin.call("PATCH", "/api/v1/cas/AUTH_CA", {"challenge": NEW_STATIC})
    admin.call("GET", "/api/v1/cas/AUTH_CA")
    # Presented tokens are not echoed either.
    Api(module_daemon.admin_port, agent.credential("auth-host")).request("GET", "/api/v1/cas")
    Api(module_daemon.port, module_daemon.admin_token).request("GET", "/api/v1/agent/hosts/auth-host/commands")

    secrets = [STATIC, NEW_STATIC, module_daemon.admin_token, webhook_token(module_daemon)] + one_time
    secrets += list(agent.credentials.values())
    answers = admin.seen + agent.seen + device.seen
    assert len(answers) > 30
    for answer in answers:
        for secret in secrets:
            assert secret.encode() not in answer, "a secret is in an API answer: %r" % (answer[:300],)
    assert_log_clean(module_daemon, secrets)
    assert "outcome=ok" in module_daemon.log()  # the enrollment really went through the proxy
