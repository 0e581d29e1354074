"""scepproxyctl against a stand-in admin API (stdlib HTTP server, TCP and unix socket).

The stand-in records each request and answers canned JSON, so these tests pin
down exactly what goes over the wire: method, path, bearer token, body.
"""

from __future__ import annotations

import json
import shutil
import socketserver
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.ctl import ctl_in_process

TOKEN = "admin-token-0123456789abcdef"
SECRET = "s3cr3t-static-challenge"
T0 = "2025-01-02T03:04:05+00:00"
CA = {"name": "UPSTREAM", "url": "http://ca.example/scep", "mode": "passthrough", "ra": None, "profiles": [],
      "created_at": T0, "updated_at": T0}
#: The API's ``ra`` object of a CA in RA mode (never a key).
RA = {"certificate": "enrolled", "subject": "CN=scepproxyd RA for CORP_CA,O=scepproxyd", "issuer": "CN=Corp Issuing CA",
      "serial": "58a9b2a8f9227388be807ee757295403", "not_after": "2026-11-23T06:02:10+00:00",
      "sha256": "e37f3c4bf4603a40b10aa17658c54005e007399e3a8294e4548dff996279fc49"}
RA_CA = dict(CA, name="CORP_CA", url="http://ca.corp/scep", mode="ra", ra=RA)
HOST = {"uuid": "H1", "serial": "C02X", "platform": "macos", "created_at": T0, "updated_at": T0}
PROFILE = {
    "uuid": "0b5f2a3e-1111-4222-8333-944455556666", "name": "WIFI SCEP", "identifier": "Fleet.WiFi",
    "platform": "macos", "kind": "mobileconfig", "ca": "UPSTREAM",
    "variables": ["FLEET_VAR_CUSTOM_SCEP_CHALLENGE_UPSTREAM"], "created_at": T0, "updated_at": T0,
}
HP = {
    "host_uuid": "H1", "profile_uuid": PROFILE["uuid"], "status": None, "lifecycle": "pending", "detail": None,
    "retries": 0, "cert_serial": None, "cert_not_after": None, "updated_at": T0,
}
#: A host profile whose device enrolled: the certificate recorded on it.
NOT_AFTER = "2026-01-02T03:04:05+00:00"
VERIFIED = dict(HP, status="verified", lifecycle="verified", cert_serial="8fb191c539360ab138e53462702193c4", cert_not_after=NOT_AFTER)


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class FakeApi:
    """Answers ``(method, path)`` from a table; anything else is the API's 404."""

    def __init__(self):
        self.requests: list[Request] = []
        self.answers: dict = {}

    def answer(self, method, path, status=200, body=None, raw=None):
        self.answers[(method, path)] = (status, body, raw)

    @property
    def last(self) -> Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        api: FakeApi = self.server.api
        api.requests.append(Request(self.command, self.path, dict(self.headers), body))
        status, answer, raw = api.answers.get(
            (self.command, self.path), (404, {"error": "no such endpoint: %s %s" % (self.command, self.path)}, None))
        data = raw if raw is not None else (b"" if answer is None else json.dumps(answer).encode())
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json" if raw is None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args):
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(server, api):
    server.api = api
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def tcp_api(tmp_path):
    """A stand-in API on 127.0.0.1:<free port> and a config pointing at it."""
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = serve(server, api)
    port = server.server_address[1]
    api.config = write_config(tmp_path, "tcp:%d:interface=0.0.0.0" % (port,))
    api.url = "http://127.0.0.1:%d" % (port,)
    yield api
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def unix_api(tmp_path):
    """A stand-in API on a unix socket (short path: sun_path is 108 bytes) and its config."""
    directory = Path(tempfile.mkdtemp(prefix="ctl", dir="/tmp"))
    socket_path = directory / "admin.sock"
    api = FakeApi()
    server = UnixHTTPServer(str(socket_path), Handler)
    thread = serve(server, api)
    api.config = write_config(tmp_path, "unix:%s:mode=600" % (socket_path,))
    api.socket_path = socket_path
    yield api
    server.shutdown()
    server.server_close()
    thread.join(5)
    shutil.rmtree(directory)


def write_config(directory: Path, listen: str, more: str = "") -> Path:
    """A config in ``directory`` whose ``[admin] listen`` is ``listen``, ``more`` appended; its token file."""
    state = directory / "state"
    state.mkdir(exist_ok=True)
    (state / "admin.token").write_text(TOKEN + "\n")
    config = directory / "scepproxyd.ini"
    config.write_text("[state]\ndirectory = state\n[admin]\nlisten = %s\n%s" % (listen.replace("\\", "\\\\"), more))
    return config


def ctl(api, *argv, stdin=""):
    """Run scepproxyctl against ``api`` via its config: (exit code, stdout, stderr)."""
    return ctl_in_process("--config", str(api.config), *argv, stdin=stdin)


def assert_authorized(request: Request):
    assert request.headers["Authorization"] == "Bearer " + TOKEN


# -- transport -----------------------------------------------------------------


def test_tcp_endpoint_from_config(tcp_api):
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    assert ctl(tcp_api, "jobs") == (0, "cleanup\n", "")
    assert_authorized(tcp_api.last)
    assert tcp_api.last.method == "GET"


def test_unix_socket_endpoint_from_config(unix_api):
    unix_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    assert ctl(unix_api, "jobs") == (0, "cleanup\n", "")
    assert_authorized(unix_api.last)
    assert unix_api.last.headers["Host"] == "localhost"


def test_url_and_token_file_options_override_config(tcp_api, tmp_path):
    other = tmp_path / "other.token"
    other.write_text("another-token-0123456789")
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": []})
    code, out, err = ctl(tcp_api, "--url", tcp_api.url, "--token-file", str(other), "jobs")
    assert (code, out, err) == (0, "no jobs\n", "")
    assert tcp_api.last.headers["Authorization"] == "Bearer another-token-0123456789"


def answer_read_commands(api):
    """Canned answers for a few read-only commands (for the global-option tests)."""
    api.answer("GET", "/api/v1/cas?limit=5000", body={"cas": [CA]})
    api.answer("GET", "/api/v1/cas/UPSTREAM", body=dict(CA, tls_verify=True, trust_bundle=False))
    api.answer("GET", "/api/v1/hosts/H1", body=dict(HOST, profiles=[HP]))
    api.answer("GET", "/api/v1/host-profiles?status=failed&limit=5000", body={"host_profiles": [HP], "next": None})
    api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    api.answer("GET", "/api/v1/ca/certificates?limit=5000", body={"certificates": [], "next": None})


@pytest.mark.parametrize(
    "before, after",
    [
        (["--json", "ca", "list"], ["ca", "list", "--json"]),
        (["--json", "ca", "show", "UPSTREAM"], ["ca", "--json", "show", "UPSTREAM"]),
        (["--json", "host", "show", "H1"], ["host", "show", "H1", "--json"]),
        (["--json", "status", "--status", "failed"], ["status", "--json", "--status", "failed"]),
        (["--json", "jobs"], ["jobs", "--json"]),
        (["--json", "builtin-ca", "certificates"], ["builtin-ca", "certificates", "--json"]),
        (["--timeout", "5", "ca", "list"], ["ca", "list", "--timeout", "5"]),
    ],
)
def test_global_options_before_or_after_the_command_give_the_same_output(tcp_api, before, after):
    answer_read_commands(tcp_api)
    first = ctl(tcp_api, *before)
    assert first[0] == 0 and first[2] == "", first
    assert ctl(tcp_api, *after) == first
    if "--json" in before:
        json.loads(first[1])
    requests = [(r.method, r.path) for r in tcp_api.requests]
    assert requests[: len(requests) // 2] == requests[len(requests) // 2:]


def test_url_and_token_file_after_the_command(tcp_api, tmp_path):
    token = tmp_path / "other.token"
    token.write_text("another-token-0123456789")
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    code, out, err = ctl_in_process("--config", str(tmp_path / "none.ini"), "jobs", "--url", tcp_api.url,
                                     "--token-file", str(token), "--json")
    assert (code, json.loads(out), err) == (0, {"jobs": ["cleanup"]}, "")
    assert tcp_api.last.headers["Authorization"] == "Bearer another-token-0123456789"


def test_admin_url_before_ca_add_and_the_cas_url_after(tcp_api, tmp_path):
    tcp_api.answer("POST", "/api/v1/cas", 201, CA)
    code, out, err = ctl(tcp_api, "--url", tcp_api.url, "ca", "add", "UPSTREAM", "--url", CA["url"], "--json",
                         stdin=SECRET)
    assert (code, json.loads(out), err) == (0, CA, "")
    assert tcp_api.last.json()["url"] == CA["url"]


# -- the daemon's production config: socket activation -------------------------

#: Sections of a production file that scepproxyctl has no use for (docs/operations.md).
SOCKET_ACTIVATED_SERVER = "[server]\nlisten = systemd:domain=INET:name=scep\npublic_url = https://scep.example\n"


def test_config_with_a_systemd_server_listener(tcp_api, tmp_path):
    tcp_api.config = write_config(tmp_path, "tcp:%d:interface=127.0.0.1" % (int(tcp_api.url.rsplit(":", 1)[1]),),
                                  SOCKET_ACTIVATED_SERVER)
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    assert ctl(tcp_api, "jobs") == (0, "cleanup\n", "")
    assert_authorized(tcp_api.last)


def test_config_with_systemd_server_and_admin_listeners_and_admin_url(tcp_api, tmp_path):
    tcp_api.config = write_config(tmp_path, "systemd:domain=INET:name=admin",
                                  "url = %s\n%s" % (tcp_api.url, SOCKET_ACTIVATED_SERVER))
    answer_read_commands(tcp_api)
    assert ctl(tcp_api, "ca", "list", "--json") == (0, json.dumps({"cas": [CA]}, indent=2, sort_keys=True) + "\n", "")
    assert_authorized(tcp_api.last)


def test_admin_url_wins_over_a_tcp_listen(tcp_api, tmp_path):
    tcp_api.config = write_config(tmp_path, "tcp:9:interface=127.0.0.1", "url = %s/\n" % (tcp_api.url,))
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": []})
    assert ctl(tcp_api, "jobs") == (0, "no jobs\n", "")


def test_systemd_admin_listener_without_admin_url_says_what_to_set(tcp_api, tmp_path):
    tcp_api.config = write_config(tmp_path, "systemd:domain=INET:name=admin", SOCKET_ACTIVATED_SERVER)
    code, out, err = ctl(tcp_api, "jobs")
    assert (code, out) == (2, "")
    assert err == (
        "scepproxyctl: [admin] listen 'systemd:domain=INET:name=admin' is a socket that systemd opens, so it does "
        "not say where the admin API is; set [admin] url = http://HOST:PORT in the config (the address of the "
        "socket unit's ListenStream=), or pass --url http://HOST:PORT\n"
    )
    assert tcp_api.requests == []
    # --url is enough: the token file still comes from the config.
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    assert ctl(tcp_api, "--url", tcp_api.url, "jobs") == (0, "cleanup\n", "")
    assert_authorized(tcp_api.last)


def test_only_state_and_admin_are_read(tcp_api, tmp_path):
    """What only the daemon uses cannot stop a command, even where the daemon itself would refuse it."""
    port = int(tcp_api.url.rsplit(":", 1)[1])
    tcp_api.config = write_config(
        tmp_path, "tcp:%d" % (port,),
        SOCKET_ACTIVATED_SERVER + "[ca]\nsubject = not a DN\nimport_key = /root/only-the-daemon.key\n"
        "[database]\nbusy_timeout = soon\n",
    )
    tcp_api.answer("GET", "/api/v1/jobs", body={"jobs": ["cleanup"]})
    assert ctl(tcp_api, "jobs") == (0, "cleanup\n", "")


@pytest.mark.parametrize(
    "more, message",
    [
        ("url = http://127.0.0.1:8081/api\n", "[admin] url: must be http://HOST:PORT or https://HOST:PORT with no path"),
        ("token_fle = x\n", "[admin] token_fle: unknown key; valid keys in [admin] are: "),
        ("max_connections = lots\n", "[admin] max_connections: must be a whole number from 1 to 100000"),
        ("token_file =\n", "[admin] token_file: must not be empty"),
        ("[state]\n", "[state]: section given twice (line 5)"),
    ],
)
def test_state_and_admin_are_checked_as_the_daemon_checks_them(tcp_api, tmp_path, more, message):
    tcp_api.config = write_config(tmp_path, "tcp:9", more)
    code, out, err = ctl(tcp_api, "jobs")
    assert (code, out) == (2, "")
    assert err.startswith("scepproxyctl: %s: %s" % (tcp_api.config, message)), err


def test_unreachable_unix_socket(unix_api):
    unix_api.socket_path.unlink()
    code, out, err = ctl(unix_api, "ca", "list")
    assert (code, out) == (1, "")
    assert err == (
        "scepproxyctl: cannot reach the admin API at unix:%s: No such file or directory; is scepproxyd running?\n"
        % (unix_api.socket_path,)
    )


# -- errors from the API -------------------------------------------------------


def test_api_error_with_field(tcp_api):
    tcp_api.answer("POST", "/api/v1/cas", 422, {"error": "url must not have a fragment", "field": "url"})
    code, out, err = ctl(tcp_api, "ca", "add", "UPSTREAM", "--url", "http://ca/scep#x", stdin=SECRET)
    assert (code, out, err) == (1, "", "scepproxyctl: url must not have a fragment (field: url)\n")


def test_api_error_without_field(tcp_api):
    code, out, err = ctl(tcp_api, "ca", "show", "NOPE")
    assert (code, out) == (1, "")
    assert err == "scepproxyctl: no such endpoint: GET /api/v1/cas/NOPE\n"


def test_401_names_the_token_file(tcp_api, tmp_path):
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", 401, {"error": "missing or wrong bearer token"})
    code, out, err = ctl(tcp_api, "ca", "list")
    assert (code, out) == (1, "")
    token_file = tmp_path / "state" / "admin.token"
    assert err == (
        "scepproxyctl: missing or wrong bearer token (HTTP 401): the admin API refused the token in %s; "
        "is it the token_file of the daemon at %s?\n" % (token_file, tcp_api.url)
    )


def test_non_json_error(tcp_api):
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", 502, raw=b"<html>bad gateway</html>")
    code, out, err = ctl(tcp_api, "ca", "list")
    assert (code, err) == (1, "scepproxyctl: the admin API at %s answered HTTP 502 Bad Gateway\n" % (tcp_api.url,))


# -- CAs -----------------------------------------------------------------------


def test_ca_add_reads_the_challenge_from_a_file(tcp_api, tmp_path):
    challenge = tmp_path / "challenge"
    challenge.write_text(SECRET + "\n")
    tcp_api.answer("POST", "/api/v1/cas", 201, CA)
    code, out, err = ctl(tcp_api, "ca", "add", "UPSTREAM", "--url", CA["url"], "--challenge-file", str(challenge))
    assert (code, out, err) == (0, "added CA UPSTREAM at http://ca.example/scep\n", "")
    request = tcp_api.last
    assert (request.method, request.path) == ("POST", "/api/v1/cas")
    assert_authorized(request)
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {"name": "UPSTREAM", "url": CA["url"], "challenge": SECRET}


def test_ca_add_reads_the_challenge_from_stdin_and_never_prints_it(tcp_api):
    tcp_api.answer("POST", "/api/v1/cas", 201, CA)
    code, out, err = ctl(tcp_api, "--json", "ca", "add", "UPSTREAM", "--url", CA["url"], stdin=SECRET + "\n")
    assert code == 0
    assert tcp_api.last.json()["challenge"] == SECRET
    assert json.loads(out) == CA
    assert SECRET not in out + err


def test_ca_list(tcp_api):
    other = dict(CA, name="SECOND_CA", url="https://ca2.example/cgi-bin/pkiclient.exe", profiles=["p1", "p2"])
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", body={"cas": [CA, other]})
    code, out, err = ctl(tcp_api, "ca", "list")
    assert code == 0
    assert out.splitlines() == [
        "NAME       URL                                        MODE         RA_CERTIFICATE  RA_NOT_AFTER  PROFILES  UPDATED",
        "UPSTREAM   http://ca.example/scep                     passthrough  -               -             0         " + T0,
        "SECOND_CA  https://ca2.example/cgi-bin/pkiclient.exe  passthrough  -               -             2         " + T0,
    ]


def test_ca_list_shows_the_mode_and_the_ra_certificate(tcp_api):
    kept = dict(RA_CA, name="OLD_RA", mode="passthrough", ra=dict(RA, certificate="self-signed"))
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", body={"cas": [RA_CA, kept]})
    code, out, err = ctl(tcp_api, "ca", "list")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "NAME     URL                  MODE         RA_CERTIFICATE  RA_NOT_AFTER               PROFILES  UPDATED",
        "CORP_CA  http://ca.corp/scep  ra           enrolled        2026-11-23T06:02:10+00:00  0         " + T0,
        "OLD_RA   http://ca.corp/scep  passthrough  self-signed     2026-11-23T06:02:10+00:00  0         " + T0,
    ]


def test_empty_ca_list(tcp_api):
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", body={"cas": []})
    assert ctl(tcp_api, "ca", "list") == (0, "no CAs\n", "")


def test_ca_list_json_is_the_api_answer(tcp_api):
    tcp_api.answer("GET", "/api/v1/cas?limit=5000", body={"cas": [CA]})
    code, out, err = ctl(tcp_api, "--json", "ca", "list")
    assert code == 0
    assert out == json.dumps({"cas": [CA]}, indent=2, sort_keys=True) + "\n"


def test_ca_show(tcp_api):
    tcp_api.answer("GET", "/api/v1/cas/UPSTREAM", body=dict(CA, profiles=["p1"], tls_verify=True, trust_bundle=False))
    code, out, err = ctl(tcp_api, "ca", "show", "UPSTREAM")
    assert code == 0
    assert out.splitlines() == [
        "name:           UPSTREAM",
        "url:            http://ca.example/scep",
        "mode:           passthrough",
        "profiles:       p1",
        "tls_verify:     yes",
        "trust_bundle:   no",
        "ra_certificate: -",
        "created_at:     " + T0,
        "updated_at:     " + T0,
    ]


def test_ca_show_in_ra_mode_has_the_ra_certificate_and_never_a_key(tcp_api):
    tcp_api.answer("GET", "/api/v1/cas/CORP_CA", body=dict(RA_CA, tls_verify=True, trust_bundle=False))
    code, out, err = ctl(tcp_api, "ca", "show", "CORP_CA")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "name:           CORP_CA",
        "url:            http://ca.corp/scep",
        "mode:           ra",
        "profiles:       -",
        "tls_verify:     yes",
        "trust_bundle:   no",
        "ra_certificate: enrolled",
        "ra_subject:     CN=scepproxyd RA for CORP_CA,O=scepproxyd",
        "ra_issuer:      CN=Corp Issuing CA",
        "ra_serial:      58a9b2a8f9227388be807ee757295403",
        "ra_not_after:   2026-11-23T06:02:10+00:00",
        "ra_sha256:      e37f3c4bf4603a40b10aa17658c54005e007399e3a8294e4548dff996279fc49",
        "created_at:     " + T0,
        "updated_at:     " + T0,
    ]
    code, out, err = ctl(tcp_api, "--json", "ca", "show", "CORP_CA")
    assert json.loads(out)["ra"] == RA


def test_ca_add_in_ra_mode_sends_mode_and_source_and_says_what_it_got(tcp_api):
    tcp_api.answer("POST", "/api/v1/cas", 201, RA_CA)
    code, out, err = ctl(tcp_api, "ca", "add", "CORP_CA", "--url", RA_CA["url"], "--mode", "ra", stdin=SECRET + "\n")
    assert (code, err) == (0, "")
    assert tcp_api.last.json() == {"name": "CORP_CA", "url": RA_CA["url"], "challenge": SECRET, "mode": "ra"}
    assert out == ("added CA CORP_CA at http://ca.corp/scep in ra mode (RA certificate enrolled, issued by "
                   "CN=Corp Issuing CA, expires 2026-11-23T06:02:10+00:00)\n")
    tcp_api.requests.clear()
    self_signed = dict(RA_CA, ra=dict(RA, certificate="self-signed", issuer=RA["subject"]))
    tcp_api.answer("POST", "/api/v1/cas", 201, self_signed)
    code, out, err = ctl(tcp_api, "ca", "add", "CORP_CA", "--url", RA_CA["url"], "--mode", "ra",
                         "--ra-certificate", "self-signed", stdin=SECRET + "\n")
    assert code == 0
    assert tcp_api.last.json()["ra_certificate"] == "self-signed"
    assert "in ra mode (RA certificate self-signed, issued by CN=scepproxyd RA for CORP_CA,O=scepproxyd" in out


def test_ca_add_without_mode_sends_none_and_the_api_default_applies(tcp_api):
    tcp_api.answer("POST", "/api/v1/cas", 201, CA)
    assert ctl(tcp_api, "ca", "add", "UPSTREAM", "--url", CA["url"], stdin=SECRET)[:2] == (
        0, "added CA UPSTREAM at http://ca.example/scep\n")
    assert set(tcp_api.last.json()) == {"name", "url", "challenge"}


def test_ca_add_in_ra_mode_refused_by_the_ca_shows_the_reason_and_field(tcp_api):
    tcp_api.answer("POST", "/api/v1/cas", 422, {
        "error": "no RA certificate: the CA answered PENDING to the RA's enrollment; approve it at the CA and "
                 "save again, or use ra_certificate self-signed", "field": "ra_certificate"})
    code, out, err = ctl(tcp_api, "ca", "add", "CORP_CA", "--url", RA_CA["url"], "--mode", "ra", stdin=SECRET)
    assert (code, out) == (1, "")
    assert err == ("scepproxyctl: no RA certificate: the CA answered PENDING to the RA's enrollment; approve it at "
                   "the CA and save again, or use ra_certificate self-signed (field: ra_certificate)\n")


def test_ca_edit_mode_needs_no_challenge_and_says_which_ra(tcp_api):
    tcp_api.answer("PATCH", "/api/v1/cas/CORP_CA", body=RA_CA)
    code, out, err = ctl(tcp_api, "ca", "edit", "CORP_CA", "--mode", "ra", stdin="must not be read")
    assert (code, err) == (0, "")
    assert tcp_api.last.json() == {"mode": "ra"}
    assert out == ("changed CA CORP_CA (mode) in ra mode (RA certificate enrolled, issued by CN=Corp Issuing CA, "
                   "expires 2026-11-23T06:02:10+00:00)\n")
    tcp_api.requests.clear()
    code, out, err = ctl(tcp_api, "ca", "edit", "CORP_CA", "--ra-certificate", "self-signed")
    assert tcp_api.last.json() == {"ra_certificate": "self-signed"}
    tcp_api.requests.clear()
    tcp_api.answer("PATCH", "/api/v1/cas/CORP_CA", body=dict(RA_CA, mode="passthrough"))
    code, out, err = ctl(tcp_api, "ca", "edit", "CORP_CA", "--mode", "passthrough")
    assert (code, out) == (0, "changed CA CORP_CA (mode)\n")  # the kept RA identity is for a later switch
    assert tcp_api.last.json() == {"mode": "passthrough"}


def test_ca_edit_ra_certificate_for_a_passthrough_ca_is_the_apis_refusal(tcp_api):
    tcp_api.answer("PATCH", "/api/v1/cas/UPSTREAM", 422,
                   {"error": "ra_certificate applies to a CA in mode ra", "field": "ra_certificate"})
    code, out, err = ctl(tcp_api, "ca", "edit", "UPSTREAM", "--ra-certificate", "enroll")
    assert (code, out, err) == (1, "", "scepproxyctl: ra_certificate applies to a CA in mode ra "
                                       "(field: ra_certificate)\n")


def test_ca_add_with_trust_bundle_and_insecure(tcp_api, tmp_path):
    bundle = tmp_path / "root.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    tcp_api.answer("POST", "/api/v1/cas", status=201, body=CA)
    code, out, err = ctl(tcp_api, "ca", "add", "UPSTREAM", "--url", "https://ca/scep", "--trust-bundle", str(bundle),
                         "--insecure-skip-verify", stdin="secret\n")
    assert code == 0, err
    sent = tcp_api.last.json()
    assert sent["trust_bundle"] == bundle.read_text() and sent["tls_verify"] is False


def test_ca_edit_rename_only_sends_no_challenge(tcp_api):
    tcp_api.answer("PATCH", "/api/v1/cas/UPSTREAM", body=dict(CA, name="RENAMED"))
    code, out, err = ctl(tcp_api, "ca", "edit", "UPSTREAM", "--name", "RENAMED", stdin="must not be read")
    assert (code, out) == (0, "changed CA RENAMED (name)\n")
    assert tcp_api.last.method == "PATCH"
    assert tcp_api.last.json() == {"name": "RENAMED"}


def test_ca_edit_url_reads_the_challenge_from_stdin(tcp_api):
    tcp_api.answer("PATCH", "/api/v1/cas/UPSTREAM", body=dict(CA, url="http://new/scep"))
    code, out, err = ctl(tcp_api, "ca", "edit", "UPSTREAM", "--url", "http://new/scep", stdin=SECRET + "\n")
    assert (code, out) == (0, "changed CA UPSTREAM (challenge, url)\n")
    assert tcp_api.last.json() == {"url": "http://new/scep", "challenge": SECRET}


def test_ca_edit_challenge_only(tcp_api, tmp_path):
    challenge = tmp_path / "c"
    challenge.write_text(SECRET)
    tcp_api.answer("PATCH", "/api/v1/cas/UPSTREAM", body=CA)
    assert ctl(tcp_api, "ca", "edit", "UPSTREAM", "--challenge-file", str(challenge))[0] == 0
    assert tcp_api.last.json() == {"challenge": SECRET}
    tcp_api.requests.clear()
    assert ctl(tcp_api, "ca", "edit", "UPSTREAM", "--challenge-stdin", stdin=SECRET + "\n")[0] == 0
    assert tcp_api.last.json() == {"challenge": SECRET}


def test_ca_delete_conflict(tcp_api):
    tcp_api.answer("DELETE", "/api/v1/cas/UPSTREAM", 409,
                   {"error": "CA 'UPSTREAM' is used by profiles p1; delete those first"})
    code, out, err = ctl(tcp_api, "ca", "delete", "UPSTREAM")
    assert (code, out, err) == (1, "", "scepproxyctl: CA 'UPSTREAM' is used by profiles p1; delete those first\n")


def test_ca_delete(tcp_api):
    tcp_api.answer("DELETE", "/api/v1/cas/UPSTREAM", 204)
    assert ctl(tcp_api, "ca", "delete", "UPSTREAM") == (0, "deleted CA UPSTREAM\n", "")
    assert ctl(tcp_api, "--json", "ca", "delete", "UPSTREAM") == (0, "", "")


# -- hosts ---------------------------------------------------------------------


def test_host_add_created_and_updated(tcp_api):
    tcp_api.answer("PUT", "/api/v1/hosts/H1", 201, HOST)
    code, out, err = ctl(tcp_api, "host", "add", "H1", "--serial", "C02X", "--platform", "macos")
    assert (code, out) == (0, "created host H1 (macos, serial C02X)\n")
    assert (tcp_api.last.method, tcp_api.last.json()) == ("PUT", {"serial": "C02X", "platform": "macos"})
    tcp_api.answer("PUT", "/api/v1/hosts/H1", 200, HOST)
    assert ctl(tcp_api, "host", "add", "H1", "--serial", "C02X", "--platform", "macos")[1] == (
        "updated host H1 (macos, serial C02X)\n")


@pytest.mark.parametrize(
    "name, argv, content_type",
    [
        ("hosts.csv", [], "text/csv"),
        ("hosts.txt", [], "text/csv"),
        ("hosts.JSON", [], "application/json"),
        ("hosts.txt", ["--format", "json"], "application/json"),
    ],
)
def test_host_import_content_type_by_extension(tcp_api, tmp_path, name, argv, content_type):
    path = tmp_path / name
    path.write_bytes(b"uuid,serial,platform\nH1,S1,macos\n")
    tcp_api.answer("POST", "/api/v1/hosts/import", body={"created": 1, "updated": 0})
    code, out, err = ctl(tcp_api, "host", "import", str(path), *argv)
    assert (code, out) == (0, "imported 1 hosts: 1 created, 0 updated\n")
    assert tcp_api.last.headers["Content-Type"] == content_type
    assert tcp_api.last.body == path.read_bytes()


def test_host_import_from_stdin(tcp_api):
    tcp_api.answer("POST", "/api/v1/hosts/import", body={"created": 1, "updated": 2})
    code, out, err = ctl(tcp_api, "host", "import", "-", stdin="uuid,serial,platform\nH1,,ios\n")
    assert (code, out) == (0, "imported 3 hosts: 1 created, 2 updated\n")
    assert tcp_api.last.body == b"uuid,serial,platform\nH1,,ios\n"
    assert tcp_api.last.headers["Content-Type"] == "text/csv"


def test_host_import_refused_row(tcp_api, tmp_path):
    path = tmp_path / "hosts.csv"
    path.write_text("uuid,serial,platform\nH1,S1,beos\n")
    tcp_api.answer("POST", "/api/v1/hosts/import", 422,
                   {"error": "row 1: platform must be one of macos, ios, ipados, android, windows", "field": "platform"})
    code, out, err = ctl(tcp_api, "host", "import", str(path))
    assert (code, out) == (1, "")
    assert err == "scepproxyctl: row 1: platform must be one of macos, ios, ipados, android, windows (field: platform)\n"


def test_host_import_missing_file(tcp_api, tmp_path):
    code, out, err = ctl(tcp_api, "host", "import", str(tmp_path / "none.csv"))
    assert (code, err) == (1, "scepproxyctl: cannot read %s: No such file or directory\n" % (tmp_path / "none.csv",))
    assert tcp_api.requests == []


def test_host_list_with_platform(tcp_api):
    tcp_api.answer("GET", "/api/v1/hosts?platform=ios&limit=5000", body={"hosts": [dict(HOST, platform="ios", serial=None)]})
    code, out, err = ctl(tcp_api, "host", "list", "--platform", "ios")
    assert out.splitlines() == ["UUID  SERIAL  PLATFORM  UPDATED", "H1    -       ios       " + T0]


def test_host_show_with_profiles(tcp_api):
    tcp_api.answer("GET", "/api/v1/hosts/H1", body=dict(HOST, profiles=[HP]))
    code, out, err = ctl(tcp_api, "host", "show", "H1")
    assert code == 0
    assert out.splitlines() == [
        "uuid:       H1",
        "serial:     C02X",
        "platform:   macos",
        "created_at: " + T0,
        "updated_at: " + T0,
        "",
        "HOST  PROFILE                               STATUS  LIFECYCLE  RETRIES  CERT_SERIAL  CERT_NOT_AFTER  UPDATED"
        "                    DETAIL",
        "H1    %s  -       pending    0        -            -               %s  -" % (PROFILE["uuid"], T0),
    ]


def test_host_show_has_the_recorded_certificate_and_json_carries_it(tcp_api):
    tcp_api.answer("GET", "/api/v1/hosts/H1", body=dict(HOST, profiles=[VERIFIED]))
    code, out, err = ctl(tcp_api, "host", "show", "H1")
    assert (code, err) == (0, "")
    assert out.splitlines()[-2:] == [
        "HOST  PROFILE                               STATUS    LIFECYCLE  RETRIES  CERT_SERIAL                       CERT_NOT_AFTER"
        "             UPDATED                    DETAIL",
        "H1    %s  verified  verified   0        8fb191c539360ab138e53462702193c4  %s  %s  -" % (PROFILE["uuid"], NOT_AFTER, T0),
    ]
    shown = json.loads(ctl(tcp_api, "host", "show", "H1", "--json")[1])
    assert (shown["profiles"][0]["cert_serial"], shown["profiles"][0]["cert_not_after"]) == (
        "8fb191c539360ab138e53462702193c4", NOT_AFTER)


def test_host_delete(tcp_api):
    tcp_api.answer("DELETE", "/api/v1/hosts/H1", 204)
    assert ctl(tcp_api, "host", "delete", "H1") == (0, "deleted host H1\n", "")


# -- profiles ------------------------------------------------------------------


def test_profile_upload_sends_the_raw_file(tcp_api, tmp_path):
    path = tmp_path / "wifi.mobileconfig"
    path.write_bytes(b"<?xml version='1.0'?><plist/>")
    tcp_api.answer("POST", "/api/v1/profiles?platform=ios&name=Office+Wi-Fi", 201,
                   dict(PROFILE, platform="ios", name="Office Wi-Fi"))
    code, out, err = ctl(tcp_api, "profile", "upload", str(path), "--platform", "ios", "--name", "Office Wi-Fi")
    assert (code, out, err) == (0, "uploaded profile %s (Office Wi-Fi) for ios, CA UPSTREAM\n" % (PROFILE["uuid"],), "")
    assert tcp_api.last.body == path.read_bytes()
    assert tcp_api.last.headers["Content-Type"] == "application/x-apple-aspen-config"


def test_profile_upload_android_template(tcp_api, tmp_path):
    path = tmp_path / "template.json"
    path.write_text("{}")
    tcp_api.answer("POST", "/api/v1/profiles", 201, dict(PROFILE, platform="android", kind="android_template"))
    assert ctl(tcp_api, "profile", "upload", str(path))[0] == 0
    assert tcp_api.last.headers["Content-Type"] == "application/json"


def test_profile_list_and_show(tcp_api):
    tcp_api.answer("GET", "/api/v1/profiles?limit=5000", body={"profiles": [PROFILE]})
    code, out, err = ctl(tcp_api, "profile", "list")
    assert out.splitlines() == [
        "UUID                                  NAME       PLATFORM  KIND          CA        UPDATED",
        "%s  WIFI SCEP  macos     mobileconfig  UPSTREAM  %s" % (PROFILE["uuid"], T0),
    ]
    tcp_api.answer("GET", "/api/v1/profiles/" + PROFILE["uuid"], body=dict(PROFILE, hosts=3))
    code, out, err = ctl(tcp_api, "profile", "show", PROFILE["uuid"])
    assert "hosts:      3" in out.splitlines()
    assert "variables:  FLEET_VAR_CUSTOM_SCEP_CHALLENGE_UPSTREAM" in out.splitlines()


def test_profile_assign_to_hosts_and_to_a_platform(tcp_api):
    path = "/api/v1/profiles/P/assign"
    tcp_api.answer("POST", path, body={"assigned": 2})
    assert ctl(tcp_api, "profile", "assign", "P", "H1", "H2") == (0, "assigned profile P to 2 new hosts\n", "")
    assert tcp_api.last.json() == {"hosts": ["H1", "H2"]}
    tcp_api.requests.clear()
    tcp_api.answer("POST", path, body={"assigned": 1})
    assert ctl(tcp_api, "profile", "assign", "P", "--platform", "ios")[1] == "assigned profile P to 1 new host\n"
    assert tcp_api.last.json() == {"platform": "ios"}


def test_profile_assign_refused(tcp_api):
    tcp_api.answer("POST", "/api/v1/profiles/P/assign", 422,
                   {"error": "host H3 is ios but profile P is for macos", "field": "hosts"})
    code, out, err = ctl(tcp_api, "profile", "assign", "P", "H3")
    assert (code, err) == (1, "scepproxyctl: host H3 is ios but profile P is for macos (field: hosts)\n")


def test_profile_unassign_some_or_all(tcp_api):
    tcp_api.answer("POST", "/api/v1/profiles/P/unassign", body={"unassigned": 1})
    assert ctl(tcp_api, "profile", "unassign", "P", "H1")[1] == "unassigned profile P from 1 host\n"
    assert tcp_api.last.json() == {"hosts": ["H1"]}
    tcp_api.requests.clear()
    assert ctl(tcp_api, "profile", "unassign", "P")[0] == 0
    assert tcp_api.last.json() == {}


def test_profile_delete(tcp_api):
    tcp_api.answer("DELETE", "/api/v1/profiles/P", 204)
    assert ctl(tcp_api, "profile", "delete", "P") == (0, "deleted profile P\n", "")


# -- status, resend, jobs ------------------------------------------------------


def test_status_with_filters(tcp_api):
    pending = dict(HP, host_uuid="H2", status="pending", lifecycle="delivering", retries=1, detail="CA said FAILURE")
    tcp_api.answer("GET", "/api/v1/host-profiles?host=H1&profile=P&status=null&limit=5000", body={"host_profiles": [HP, pending]})
    code, out, err = ctl(tcp_api, "status", "--host", "H1", "--profile", "P", "--status", "null")
    assert code == 0
    assert out.splitlines() == [
        "HOST  PROFILE                               STATUS   LIFECYCLE   RETRIES  CERT_SERIAL  CERT_NOT_AFTER  UPDATED"
        "                    DETAIL",
        "H1    %s  -        pending     0        -            -               %s  -" % (PROFILE["uuid"], T0),
        "H2    %s  pending  delivering  1        -            -               %s  CA said FAILURE" % (PROFILE["uuid"], T0),
    ]


def test_status_has_the_recorded_certificate_and_json_carries_it(tcp_api):
    renewing = dict(VERIFIED, host_uuid="H2", status="pending", lifecycle="pending", detail="renewing: certificate expires " + NOT_AFTER)
    tcp_api.answer("GET", "/api/v1/host-profiles?limit=5000", body={"host_profiles": [VERIFIED, renewing]})
    code, out, err = ctl(tcp_api, "status")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "HOST  PROFILE                               STATUS    LIFECYCLE  RETRIES  CERT_SERIAL                       CERT_NOT_AFTER"
        "             UPDATED                    DETAIL",
        "H1    %s  verified  verified   0        8fb191c539360ab138e53462702193c4  %s  %s  -" % (PROFILE["uuid"], NOT_AFTER, T0),
        "H2    %s  pending   pending    0        8fb191c539360ab138e53462702193c4  %s  %s  renewing: certificate expires %s"
        % (PROFILE["uuid"], NOT_AFTER, T0, NOT_AFTER),
    ]
    listed = json.loads(ctl(tcp_api, "status", "--json")[1])["host_profiles"]
    assert [(hp["cert_serial"], hp["cert_not_after"]) for hp in listed] == [
        ("8fb191c539360ab138e53462702193c4", NOT_AFTER)] * 2


def test_status_empty(tcp_api):
    tcp_api.answer("GET", "/api/v1/host-profiles?limit=5000", body={"host_profiles": []})
    assert ctl(tcp_api, "status") == (0, "no host profiles\n", "")


def test_resend(tcp_api):
    tcp_api.answer("POST", "/api/v1/host-profiles/H1/P/resend", body=dict(HP, profile_uuid="P"))
    code, out, err = ctl(tcp_api, "resend", "H1", "P")
    assert (code, out) == (0, "profile P will be sent again to host H1 with a fresh challenge\n")
    assert tcp_api.last.method == "POST"


def test_trigger_and_jobs(tcp_api):
    tcp_api.answer("POST", "/api/v1/jobs/cleanup", body={"job": "cleanup", "result": {"deleted": 3}})
    assert ctl(tcp_api, "trigger", "cleanup") == (0, "ran job cleanup: deleted=3\n", "")
    tcp_api.answer("POST", "/api/v1/jobs/nope", 404, {"error": "no job 'nope'; jobs are cleanup"})
    assert ctl(tcp_api, "trigger", "nope") == (1, "", "scepproxyctl: no job 'nope'; jobs are cleanup\n")


def test_trigger_prints_a_count_per_ca_as_ca_and_count(tcp_api):
    result = {"renewals_due": 17, "renewals_deferred": {"ndes": 8203, "builtin": 4}, "renewals_at_risk": {}}
    tcp_api.answer("POST", "/api/v1/jobs/renew_certificates", body={"job": "renew_certificates", "result": result})
    assert ctl(tcp_api, "trigger", "renew_certificates") == (
        0, "ran job renew_certificates: renewals_at_risk=- renewals_deferred=builtin:4,ndes:8203 renewals_due=17\n", "")


def test_path_segments_are_escaped(tcp_api):
    ctl(tcp_api, "host", "show", "a/b")
    assert tcp_api.last.path == "/api/v1/hosts/a%2Fb"


def test_list_commands_follow_pages_and_print_one_table_or_one_document(tcp_api):
    second = dict(HOST, uuid="H2", serial="C02Y", platform="ios")
    third = dict(HOST, uuid="H3", serial=None)
    tcp_api.answer("GET", "/api/v1/hosts?limit=5000", body={"hosts": [HOST, second], "next": "CUR+1/"})
    tcp_api.answer("GET", "/api/v1/hosts?limit=5000&cursor=CUR%2B1%2F", body={"hosts": [third], "next": None})
    code, out, err = ctl(tcp_api, "host", "list")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "UUID  SERIAL  PLATFORM  UPDATED",
        "H1    C02X    macos     " + T0,
        "H2    C02Y    ios       " + T0,
        "H3    -       macos     " + T0,
    ]
    assert [r.path for r in tcp_api.requests] == ["/api/v1/hosts?limit=5000", "/api/v1/hosts?limit=5000&cursor=CUR%2B1%2F"]
    code, out, err = ctl(tcp_api, "--json", "host", "list")
    assert code == 0 and json.loads(out) == {"hosts": [HOST, second, third], "next": None}


def test_list_commands_keep_filters_on_every_page(tcp_api):
    tcp_api.answer("GET", "/api/v1/host-profiles?status=failed&limit=5000", body={"host_profiles": [HP], "next": "C"})
    tcp_api.answer("GET", "/api/v1/host-profiles?status=failed&limit=5000&cursor=C",
                   body={"host_profiles": [dict(HP, host_uuid="H2")], "next": None})
    code, out, err = ctl(tcp_api, "status", "--status", "failed")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["HOST", "H1", "H2"]


# -- docs/cli.md: its examples are what the commands print ---------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
D_PROFILE = "ab589f64-6d55-4804-adf5-8d54e73433c3"
D_HOST = "C8QHT3K1Q6L4"
D_T52, D_T55, D_T56, D_T57 = ("2025-11-23T06:01:%d+00:00" % s for s in (52, 55, 56, 57))
D_CA = {"name": "UPSTREAM_CA", "url": "http://ca.internal:2016/scep", "mode": "passthrough", "ra": None,
        "profiles": [D_PROFILE], "tls_verify": True, "trust_bundle": False, "created_at": D_T52, "updated_at": D_T52}
D_RA = {"certificate": "enrolled", "subject": "CN=scepproxyd RA for CORP_CA,O=scepproxyd",
        "issuer": "CN=Corp Issuing CA,O=Example", "serial": "58a9b2a8f9227388be807ee757295403",
        "not_after": "2027-11-23T06:01:52+00:00",
        "sha256": "e37f3c4bf4603a40b10aa17658c54005e007399e3a8294e4548dff996279fc49"}
D_RA_CA = dict(D_CA, name="CORP_CA", url="http://ca.corp.internal/scep", mode="ra", ra=D_RA, profiles=[])
D_SELF_SIGNED = dict(D_CA, mode="ra", ra=dict(
    D_RA, certificate="self-signed", subject="CN=scepproxyd RA for UPSTREAM_CA,O=scepproxyd",
    issuer="CN=scepproxyd RA for UPSTREAM_CA,O=scepproxyd", not_after="2030-11-22T05:56:52+00:00"))
D_HOSTS = [
    {"uuid": D_HOST, "serial": "C02XL0GHJG5J", "platform": "macos", "created_at": D_T55, "updated_at": D_T55},
    {"uuid": "D25ZQ0AAHTD8", "serial": "DMPXK9ZZQ1GC", "platform": "ipados", "created_at": D_T55, "updated_at": D_T55},
    {"uuid": "F9FXK2LMQ1GC", "serial": "C02YT1AAJG5J", "platform": "macos", "created_at": D_T55, "updated_at": D_T55},
]
D_VERIFIED = {"host_uuid": D_HOST, "profile_uuid": D_PROFILE, "status": "verified", "lifecycle": "verified",
              "detail": None, "retries": 0,
              "cert_serial": "8fb191c539360ab138e53462702193c4", "cert_not_after": "2026-11-23T06:02:10+00:00",
              "updated_at": "2025-11-23T06:02:11+00:00"}
D_NULL = dict(D_VERIFIED, host_uuid="F9FXK2LMQ1GC", status=None, lifecycle="pending", cert_serial=None, cert_not_after=None,
              updated_at=D_T57)
D_DELIVERING = dict(D_NULL, host_uuid="PIXEL8A4F2C1", status="pending", lifecycle="delivering")
D_PROFILE_JSON = {
    "uuid": D_PROFILE, "name": "Office Wi-Fi", "identifier": "Fleet.WiFi", "platform": "macos",
    "kind": "mobileconfig", "ca": "UPSTREAM_CA", "created_at": D_T56, "updated_at": D_T56,
    "variables": ["FLEET_VAR_CUSTOM_SCEP_CHALLENGE_UPSTREAM_CA", "FLEET_VAR_CUSTOM_SCEP_PROXY_URL_UPSTREAM_CA",
                  "FLEET_VAR_SCEP_RENEWAL_ID"],
}
D_REQUEST = {"transaction_id": "aqncs5+93c13cm/OdsR2EBf9GZ8=", "status": "pending", "subject": "CN=printer-7,O=Example",
             "requester": "10.1.2.41", "template": "default", "issued_serial": None,
             "created_at": "2025-11-23T07:31:03+00:00"}
D_CERTIFICATE = {"serial": "8fb191c539360ab138e53462702193c4", "status": "valid", "subject": "CN=printer-7,O=Example",
                 "not_after": "2026-11-23T07:31:11+00:00", "template": "default", "requester": "10.1.2.41"}
D_END_USER = {"idp_username": "alice@example.com", "idp_full_name": "Alice Martin",
              "idp_groups": ["wifi-staff", "engineering"], "idp_department": None, "idp_email": None}
D_SECRET = {"name": "RADIUS_PASSWORD", "created_at": "2025-11-23T06:01:52+00:00",
            "updated_at": "2025-11-23T07:12:40+00:00"}
D_BACKUP = "/var/backups/scepproxyd/2025-11-23"
D_BACKUP_FILES = ["MANIFEST.json", "scepproxyd.sqlite3", "secrets.key", "admin.token", "nanomdm-webhook.token",
                  "ca/ca.key", "ca/ca.pem", "ca/challenge", "ca/ra.key"]


def error(status, message, field=None):
    return status, dict({"error": message}, **({"field": field} if field else {}))


#: (the example's command line, which of its occurrences in docs/cli.md) -> the admin API's answers to it,
#: {(method, path): (status, body)}; or a config file to run it with, {"config": INI text}.
DOC_EXAMPLES = {
    ("scepproxyctl ca list --jsn", 0): {},
    ("scepproxyctl jobs", 0): {"config": "[admin]\nlisten = systemd:domain=INET:name=admin\n"},
    ("scepproxyctl host list", 0): {("GET", "/api/v1/hosts?limit=5000"): (200, {"hosts": [
        {"uuid": "host-a", "serial": "C02\x1b]0;owned\x07\nfake-row\u202e", "platform": "macos",
         "created_at": "2025-01-01T00:00:00+00:00", "updated_at": "2025-01-01T00:00:00+00:00"}], "next": None})},
    ("scepproxyctl --config etc/typo.ini jobs", 0): {"config": "[admin]\nlisen = tcp:1\n"},
    ("scepproxyctl ca list", 0): {("GET", "/api/v1/cas?limit=5000"): (200, {"cas": [D_RA_CA, D_CA], "next": None})},
    ("scepproxyctl ca show UPSTREAM_CA", 0): {("GET", "/api/v1/cas/UPSTREAM_CA"): (200, D_CA)},
    ("scepproxyctl ca show CORP_CA", 0): {("GET", "/api/v1/cas/CORP_CA"): (200, D_RA_CA)},
    ("scepproxyctl ca add CORP_CA --url http://ca.corp.internal/scep --mode ra < /root/corp-challenge", 0): {
        "stdin": SECRET + "\n", ("POST", "/api/v1/cas"): (201, D_RA_CA)},
    ("scepproxyctl ca add HELD_CA --url http://held-ca.internal/scep --mode ra < /root/held-challenge", 0): {
        "stdin": SECRET + "\n", ("POST", "/api/v1/cas"): error(
            422, "no RA certificate: the CA answered PENDING to the RA's enrollment; approve it at the CA and save "
                 "again, or use ra_certificate self-signed", "ra_certificate")},
    ("scepproxyctl ca edit UPSTREAM_CA --mode ra --ra-certificate self-signed", 0): {
        ("PATCH", "/api/v1/cas/UPSTREAM_CA"): (200, D_SELF_SIGNED)},
    ("scepproxyctl ca edit UPSTREAM_CA --mode passthrough", 0): {
        ("PATCH", "/api/v1/cas/UPSTREAM_CA"): (200, dict(D_SELF_SIGNED, mode="passthrough"))},
    ("scepproxyctl ca edit UPSTREAM_CA --ra-certificate enroll", 0): {("PATCH", "/api/v1/cas/UPSTREAM_CA"): error(
        422, "ra_certificate applies to a CA in mode ra", "ra_certificate")},
    ("scepproxyctl --json ca show UPSTREAM_CA", 0): {("GET", "/api/v1/cas/UPSTREAM_CA"): (200, D_CA)},
    ("scepproxyctl ca edit UPSTREAM_CA --name CORP_CA", 0): {("PATCH", "/api/v1/cas/UPSTREAM_CA"): error(
        409, "CA 'UPSTREAM_CA' is used by profiles %s; its name ties them and their renewals to it" % (D_PROFILE,),
        "name")},
    ("scepproxyctl ca edit UPSTREAM_CA", 0): {},
    ("scepproxyctl ca edit UPSTREAM_CA --no-trust-bundle --tls-verify yes", 0): {
        ("PATCH", "/api/v1/cas/UPSTREAM_CA"): (200, D_CA)},
    ("scepproxyctl ca edit UPSTREAM_CA --challenge-stdin < /root/new-challenge", 0): {
        "stdin": SECRET + "\n", ("PATCH", "/api/v1/cas/UPSTREAM_CA"): (200, D_CA)},
    ("scepproxyctl ca add BAD --url http://127.0.0.1:1/scep < /root/ca-challenge", 0): {
        "stdin": SECRET + "\n", ("POST", "/api/v1/cas"): error(
            422, "CA did not answer GetCACert: upstream CA unreachable (ConnectionRefusedError)", "url")},
    ("scepproxyctl ca edit builtin --tls-verify no", 0): {("PATCH", "/api/v1/cas/builtin"): error(
        422, "CA 'builtin' is managed by the [ca] section of the configuration", "name")},
    ("scepproxyctl ca delete UPSTREAM_CA", 0): {("DELETE", "/api/v1/cas/UPSTREAM_CA"): error(
        409, "CA 'UPSTREAM_CA' is used by profiles %s; delete those first" % (D_PROFILE,))},
    ("scepproxyctl profile delete %s" % (D_PROFILE,), 0): {("DELETE", "/api/v1/profiles/" + D_PROFILE): (204, None)},
    ("scepproxyctl ca delete UPSTREAM_CA", 1): {("DELETE", "/api/v1/cas/UPSTREAM_CA"): (204, None)},
    ("scepproxyctl host add C8QHT3K1Q6L4 --serial C02XL0GHJG5J --platform macos", 0): {
        ("PUT", "/api/v1/hosts/" + D_HOST): (201, D_HOSTS[0])},
    ("scepproxyctl host list", 1): {("GET", "/api/v1/hosts?limit=5000"): (200, {"hosts": D_HOSTS, "next": None})},
    ("scepproxyctl host show C8QHT3K1Q6L4", 0): {
        ("GET", "/api/v1/hosts/" + D_HOST): (200, dict(D_HOSTS[0], profiles=[D_VERIFIED], **D_END_USER))},
    ("scepproxyctl host set C8QHT3K1Q6L4 --idp-username alice@example.com --idp-groups wifi-staff,engineering", 0): {
        ("PATCH", "/api/v1/hosts/" + D_HOST): (200, dict(D_HOSTS[0], resent=1, **D_END_USER))},
    ("scepproxyctl host set C8QHT3K1Q6L4 --idp-email 'alice example.com'", 0): {
        ("PATCH", "/api/v1/hosts/" + D_HOST): error(
            422, "idp_email must be an address such as user@example.com", "idp_email")},
    ("scepproxyctl secret list", 0): {("GET", "/api/v1/secrets"): (200, {"secrets": [D_SECRET]})},
    ("scepproxyctl secret show RADIUS_PASSWORD", 0): {
        ("GET", "/api/v1/secrets/RADIUS_PASSWORD"): (200, dict(D_SECRET, profiles=[D_PROFILE]))},
    ("scepproxyctl secret delete RADIUS_PASSWORD", 0): {("DELETE", "/api/v1/secrets/RADIUS_PASSWORD"): error(
        409, "secret RADIUS_PASSWORD is used by profiles: %s; change or delete them first" % (D_PROFILE,), "name")},
    ("scepproxyctl host delete C8QHT3K1Q6L4", 0): {("DELETE", "/api/v1/hosts/" + D_HOST): (204, None)},
    ("scepproxyctl agent-credential issue C8QHT3K1Q6L4", 0): {
        ("POST", "/api/v1/hosts/%s/agent-credential" % (D_HOST,)): (201, {
            "host_uuid": D_HOST, "token": "scepagent_Zb3M1kq0yq8hJ7Xc2uT9vV0rGQyq0c1e4f6E9b8nXwA",
            "created_at": "2025-11-23T06:04:10+00:00", "replaced": False})},
    ("scepproxyctl --json agent-credential rotate C8QHT3K1Q6L4", 0): {
        ("POST", "/api/v1/hosts/%s/agent-credential" % (D_HOST,)): (201, {
            "host_uuid": D_HOST, "token": "scepagent_p0V4y8Jq3nX2m5cL1sT7dW9kR6hF0bZ3aE8uQ4gY2iO",
            "created_at": "2025-11-23T06:04:10+00:00", "replaced": True})},
    ("scepproxyctl agent-credential issue NOPE", 0): {
        ("POST", "/api/v1/hosts/NOPE/agent-credential"): error(404, "no host 'NOPE'")},
    ("scepproxyctl agent-credential show C8QHT3K1Q6L4", 0): {
        ("GET", "/api/v1/hosts/%s/agent-credential" % (D_HOST,)): (200, {
            "host_uuid": D_HOST, "issued": True, "created_at": "2025-11-23T06:04:10+00:00",
            "last_used_at": "2025-11-23T06:05:02+00:00"})},
    ("scepproxyctl agent-credential revoke C8QHT3K1Q6L4", 0): {
        ("DELETE", "/api/v1/hosts/%s/agent-credential" % (D_HOST,)): (204, None)},
    ("scepproxyctl agent-credential revoke C8QHT3K1Q6L4", 1): {
        ("DELETE", "/api/v1/hosts/%s/agent-credential" % (D_HOST,)): error(
            404, "host '%s' has no agent credential" % (D_HOST,))},
    ("scepproxyctl agent-credential list", 0): {("GET", "/api/v1/agent-credentials?limit=5000"): (200, {
        "agent_credentials": [
            {"host_uuid": D_HOST, "created_at": "2025-11-23T06:04:10+00:00",
             "last_used_at": "2025-11-23T06:05:02+00:00"},
            {"host_uuid": "D9XKT1M2P3Q4", "created_at": "2025-11-23T06:04:11+00:00", "last_used_at": None}],
        "next": None})},
    ("scepproxyctl agent-credential issue-bulk --rotate C8QHT3K1Q6L4", 0): {
        ("POST", "/api/v1/agent-credentials"): (200, {"issued": [
            {"host_uuid": D_HOST, "token": "scepagent_k2Jd8sL0qW3eR5tY7uI9oP1aS3dF5gH7jK9lZ1xC3vB"}], "kept": 0})},
    ("scepproxyctl profile list", 0): {
        ("GET", "/api/v1/profiles?limit=5000"): (200, {"profiles": [D_PROFILE_JSON], "next": None})},
    ("scepproxyctl profile show %s" % (D_PROFILE,), 0): {
        ("GET", "/api/v1/profiles/" + D_PROFILE): (200, dict(D_PROFILE_JSON, hosts=2))},
    ("scepproxyctl profile delete %s" % (D_PROFILE,), 1): {("DELETE", "/api/v1/profiles/" + D_PROFILE): (204, None)},
    ("scepproxyctl profile assign %s C8QHT3K1Q6L4 F9FXK2LMQ1GC" % (D_PROFILE,), 0): {
        ("POST", "/api/v1/profiles/%s/assign" % (D_PROFILE,)): (200, {"assigned": 2})},
    ("scepproxyctl profile assign %s --platform macos" % (D_PROFILE,), 0): {
        ("POST", "/api/v1/profiles/%s/assign" % (D_PROFILE,)): (200, {"assigned": 0})},
    ("scepproxyctl profile assign %s D25ZQ0AAHTD8" % (D_PROFILE,), 0): {
        ("POST", "/api/v1/profiles/%s/assign" % (D_PROFILE,)): error(
            422, "host D25ZQ0AAHTD8 is ipados but profile %s is for macos" % (D_PROFILE,), "hosts")},
    ("scepproxyctl profile unassign %s F9FXK2LMQ1GC" % (D_PROFILE,), 0): {
        ("POST", "/api/v1/profiles/%s/unassign" % (D_PROFILE,)): (200, {"unassigned": 1})},
    ("scepproxyctl status", 0): {
        ("GET", "/api/v1/host-profiles?limit=5000"): (200, {"host_profiles": [D_VERIFIED, D_NULL], "next": None})},
    ("scepproxyctl status --status pending", 0): {
        ("GET", "/api/v1/host-profiles?status=pending&limit=5000"): (200, {"host_profiles": [], "next": None})},
    ("scepproxyctl status --lifecycle delivering", 0): {
        ("GET", "/api/v1/host-profiles?lifecycle=delivering&limit=5000"): (200, {"host_profiles": [D_DELIVERING],
                                                                                "next": None})},
    ("scepproxyctl status --host C8QHT3K1Q6L4 --json", 0): {
        ("GET", "/api/v1/host-profiles?host=%s&limit=5000" % (D_HOST,)): (
            200, {"host_profiles": [D_VERIFIED], "next": None})},
    ("scepproxyctl resend C8QHT3K1Q6L4 %s" % (D_PROFILE,), 0): {
        ("POST", "/api/v1/host-profiles/%s/%s/resend" % (D_HOST, D_PROFILE)): (200, dict(D_NULL, host_uuid=D_HOST))},
    ("scepproxyctl jobs", 2): {
        ("GET", "/api/v1/jobs"): (200, {"jobs": ["cleanup", "process_profiles", "renew_certificates"]})},
    ("scepproxyctl trigger cleanup", 0): {("POST", "/api/v1/jobs/cleanup"): (200, {
        "job": "cleanup", "result": {"expired_challenges_removed": 4, "expired_profiles_resent": 1,
                                     "finished_commands_removed": 0, "stuck_deliveries_resent": 0}})},
    ("scepproxyctl trigger nope", 0): {("POST", "/api/v1/jobs/nope"): error(
        404, "no job 'nope'; jobs are cleanup, process_profiles, renew_certificates")},
    ("scepproxyctl builtin-ca requests --status pending", 0): {
        ("GET", "/api/v1/ca/requests?status=pending&limit=5000"): (200, {"requests": [
            dict(D_REQUEST, transaction_id="6uIuqOKGzduyi6oc0yeOyZTWkCw=", subject="CN=kiosk-2,O=Example",
                 requester="10.1.2.40"),
            D_REQUEST], "next": None})},
    ("scepproxyctl builtin-ca requests --status waiting", 0): {
        ("GET", "/api/v1/ca/requests?status=waiting&limit=5000"): error(
            422, "status must be one of pending, approved, rejected, issued", "status")},
    ("scepproxyctl builtin-ca approve 'aqncs5+93c13cm/OdsR2EBf9GZ8='", 0): {
        ("POST", "/api/v1/ca/requests/aqncs5%2B93c13cm%2FOdsR2EBf9GZ8%3D/approve"): (200, dict(
            D_REQUEST, status="issued", issued_serial="8fb191c539360ab138e53462702193c4"))},
    ("scepproxyctl builtin-ca approve 'aqncs5+93c13cm/OdsR2EBf9GZ8='", 1): {
        ("POST", "/api/v1/ca/requests/aqncs5%2B93c13cm%2FOdsR2EBf9GZ8%3D/approve"): error(
            409, "request aqncs5+93c13cm/OdsR2EBf9GZ8= is approved, not pending")},
    ("scepproxyctl builtin-ca reject '6uIuqOKGzduyi6oc0yeOyZTWkCw=' --reason \"kiosks enroll through the proxy\"", 0): {
        ("POST", "/api/v1/ca/requests/6uIuqOKGzduyi6oc0yeOyZTWkCw%3D/reject"): (200, dict(
            D_REQUEST, transaction_id="6uIuqOKGzduyi6oc0yeOyZTWkCw=", status="rejected"))},
    ("scepproxyctl builtin-ca certificates", 0): {("GET", "/api/v1/ca/certificates?limit=5000"): (200, {
        "certificates": [D_CERTIFICATE, dict(D_CERTIFICATE, serial="8d3f4cd57604f85953c624e9b640ba",
                                             subject="CN=laptop-1,O=Example", not_after="2026-11-23T07:31:02+00:00",
                                             requester="10.1.2.17")], "next": None})},
    ("scepproxyctl builtin-ca revoke 8d3f4cd57604f85953c624e9b640ba --reason key_compromise", 0): {
        ("POST", "/api/v1/ca/certificates/8d3f4cd57604f85953c624e9b640ba/revoke"): (200, dict(
            D_CERTIFICATE, serial="8d3f4cd57604f85953c624e9b640ba", status="revoked",
            revocation_reason="key_compromise"))},
    ("scepproxyctl builtin-ca revoke 8d3f4cd57604f85953c624e9b640ba", 0): {
        ("POST", "/api/v1/ca/certificates/8d3f4cd57604f85953c624e9b640ba/revoke"): error(
            409, "certificate 8d3f4cd57604f85953c624e9b640ba is revoked already")},
    ("scepproxyctl builtin-ca challenge --template vpn --ttl 30m", 0): {("POST", "/api/v1/ca/challenges"): (201, {
        "challenge": "JdpnwIGoUG2OFPq1eT7x33kOhh0n4-9N", "expires_at": "2025-11-23T08:01:26+00:00",
        "template": "vpn"})},
    ("scepproxyctl --json builtin-ca challenge --template vpn --ttl 30m", 0): {
        ("POST", "/api/v1/ca/challenges"): (201, {
            "challenge": "eskfCKy229Yz4-no5FyvoQqZQHKo9Au8", "expires_at": "2025-11-23T08:01:26+00:00",
            "template": "vpn"})},
    ("scepproxyctl builtin-ca challenge --template nope", 0): {("POST", "/api/v1/ca/challenges"): error(
        422, "template must be one of default, vpn", "template")},
    ("scepproxyctl backup %s" % (D_BACKUP,), 0): {("POST", "/api/v1/backup"): (200, {
        "directory": D_BACKUP, "files": D_BACKUP_FILES, "database_bytes": 81920})},
    ("scepproxyctl backup %s" % (D_BACKUP,), 1): {("POST", "/api/v1/backup"): error(
        409, "%s is not empty; back up into a new or empty directory" % (D_BACKUP,), "directory")},
    ("scepproxyctl backup %s" % (D_BACKUP,), 2): {("POST", "/api/v1/backup"): (201, {
        "directory": D_BACKUP, "files": [f for f in D_BACKUP_FILES if f != "scepproxyd.sqlite3"],
        "database_bytes": None, "database_included": False,
        "not_included": "the database is not in this backup: it is on PostgreSQL "
                        "(postgresql://scepproxyd@db.internal/scepproxyd), shared by every node; back it up with "
                        "pg_dump (docs/operations.md, Several nodes)"})},
    ("scepproxyctl backup /root/backup", 0): {("POST", "/api/v1/backup"): error(
        422, "cannot create /root/backup: permission denied (scepproxyd must be able to write there)", "directory")},
}

#: Examples not run here, and why; every other example in docs/cli.md must be in DOC_EXAMPLES.
DOC_EXAMPLES_NOT_RUN = {
    "scepproxyctl host import hosts.csv": "reads a file of the reader's",
    "scepproxyctl jobs": "occurrence 1 needs nothing listening on 127.0.0.1:8081",
    "scepproxyctl --token-file old.token jobs": "needs the daemon at 127.0.0.1:8081",
    "scepproxyctl ca add UPSTREAM_CA": "reads a challenge file under /root, or prompts on a terminal",
    "scepproxyctl ca add CORP_CA": "reads files under /root",
    "scepproxyctl ca add LAB_CA": "reads a file under /root",
    "scepproxyctl ca edit UPSTREAM_CA --url": "reads a file under /root",
    "scepproxyctl ca edit UPSTREAM_CA --trust-bundle": "reads a file under /root",
    "scepproxyctl agent-credential issue-bulk --all --output": "writes a file under /root",
    "scepproxyctl profile upload": "reads a file of the reader's",
    "scepproxyctl secret set": "reads a file under /root (what it sends: test_secret_set_reads_the_value_...)",
    "scepproxyctl builtin-ca show": "the example elides the PEM",
    "scepproxyctl restore": "offline, on backups and a state directory of the reader's (tests/test_backup.py)",
    "scepproxyctl database copy": "offline, on a SQLite file of the reader's and a PostgreSQL server "
                                  "(tests/test_database_copy.py)",
}


def documented_examples() -> list[tuple[str, int, str]]:
    """Each ``$ scepproxyctl ...`` line of docs/cli.md's code blocks: (line, occurrence, what it printed)."""
    examples, seen, current, in_block = [], {}, None, False
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block, current = not in_block, None
        elif in_block and line.startswith("$ "):
            current = None
            if line.startswith("$ scepproxyctl "):
                command = line[2:].split("  #")[0].rstrip()
                seen[command] = seen.get(command, -1) + 1
                current = [command, seen[command], []]
                examples.append(current)
        elif in_block and current is not None:
            current[2].append(line)
    return [(command, n, "".join(out + "\n" for out in printed)) for command, n, printed in examples]


def not_run_reason(command: str, occurrence: int) -> str | None:
    for prefix, reason in DOC_EXAMPLES_NOT_RUN.items():
        if command.startswith(prefix) and not (prefix == "scepproxyctl jobs" and occurrence != 1):
            return reason
    return None


def test_every_documented_example_is_run_or_says_why_not():
    found = {(command, n) for command, n, _ in documented_examples()}
    unaccounted = sorted(k for k in found if k not in DOC_EXAMPLES and not_run_reason(*k) is None)
    assert unaccounted == []
    assert sorted(k for k in DOC_EXAMPLES if k not in found) == []
    assert len(DOC_EXAMPLES) >= 50


@pytest.mark.parametrize("command, occurrence, printed",
                         [e for e in documented_examples() if (e[0], e[1]) in DOC_EXAMPLES],
                         ids=lambda value: value if isinstance(value, str) and value.startswith("scepproxyctl") else "")
def test_documented_example_prints_what_the_docs_show(tcp_api, tmp_path, monkeypatch, command, occurrence, printed):
    import contextlib
    import io
    import shlex

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps its usage lines to the terminal's width
    spec = dict(DOC_EXAMPLES[(command, occurrence)])
    stdin = spec.pop("stdin", "")
    argv = shlex.split(command.split(" < ")[0])[1:]
    if "config" in spec:
        # A config of the example's own, at the path it names (relative, so run from tmp_path).
        monkeypatch.chdir(tmp_path)
        path = Path(argv[argv.index("--config") + 1]) if "--config" in argv else tmp_path / "scepproxyd.ini"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.pop("config"))
        argv = ["--config", str(path)] + argv
    else:
        argv = ["--config", str(tcp_api.config)] + argv
    for (method, path), (status, body) in spec.items():
        tcp_api.answer(method, path, status, body)
    refusal = io.StringIO()
    with contextlib.redirect_stderr(refusal):  # argparse's own refusals go to sys.stderr, before anything is printed
        try:
            _, out, err = ctl_in_process(*argv, stdin=stdin)
        except SystemExit:
            out, err = "", refusal.getvalue()
    assert out + err == printed
    if spec:
        assert [(r.method, r.path) for r in tcp_api.requests] == list(spec)
    if stdin:
        assert tcp_api.last.json()["challenge"] == SECRET


# -- host end users and custom secrets (docs/cli.md) ---------------------------------------------

END_USER = {"idp_username": "alice@corp.example", "idp_full_name": None, "idp_groups": ["wifi", "staff"],
            "idp_department": None, "idp_email": None}


def test_host_set_sends_only_what_is_given_and_empty_clears(tcp_api):
    tcp_api.answer("PATCH", "/api/v1/hosts/H1", body=dict(HOST, **END_USER))
    code, out, err = ctl(tcp_api, "host", "set", "H1", "--idp-username", "alice@corp.example",
                         "--idp-groups", "wifi, staff", "--idp-department", "")
    assert (code, out, err) == (0, "changed host H1 (idp_department, idp_groups, idp_username)\n", "")
    assert tcp_api.last.json() == {"idp_username": "alice@corp.example", "idp_groups": ["wifi", "staff"],
                                   "idp_department": None}


def test_host_set_needs_something_to_change(tcp_api):
    code, out, err = ctl(tcp_api, "host", "set", "H1")
    assert code == 2 and "nothing to change; give --serial, --idp-username" in err


def test_host_show_lists_the_end_user(tcp_api):
    tcp_api.answer("GET", "/api/v1/hosts/H1", body=dict(HOST, profiles=[], **END_USER))
    code, out, err = ctl(tcp_api, "host", "show", "H1")
    assert code == 0
    assert "idp_username:   alice@corp.example\n" in out and "idp_groups:     wifi, staff\n" in out


def test_secret_set_reads_the_value_from_stdin_or_a_file_never_argv(tcp_api, tmp_path):
    answer = {"name": "RADIUS", "created_at": T0, "updated_at": T0, "changed": True, "resent": 3}
    tcp_api.answer("PUT", "/api/v1/secrets/RADIUS", body=answer)
    code, out, err = ctl(tcp_api, "secret", "set", "RADIUS", stdin=SECRET + "\n")
    assert (code, out, err) == (0, "changed secret RADIUS; 3 host profiles sent again\n", "")
    assert tcp_api.last.json() == {"value": SECRET}
    value_file = tmp_path / "value"
    value_file.write_text("from-a-file\n")
    tcp_api.requests.clear()
    assert ctl(tcp_api, "secret", "set", "RADIUS", "--value-file", str(value_file))[0] == 0
    assert tcp_api.last.json() == {"value": "from-a-file"}
    for argv in (["secret", "set", "RADIUS", "--value", SECRET], ["secret", "set", "RADIUS", "--value=" + SECRET]):
        code, out, err = ctl(tcp_api, *argv)
        assert code == 2 and SECRET not in out + err and "there is no --value option" in err


def test_secret_list_show_delete(tcp_api):
    tcp_api.answer("GET", "/api/v1/secrets", body={"secrets": [{"name": "RADIUS", "created_at": T0,
                                                                "updated_at": T0}]})
    tcp_api.answer("GET", "/api/v1/secrets/RADIUS", body={"name": "RADIUS", "created_at": T0, "updated_at": T0,
                                                          "profiles": ["P1"]})
    tcp_api.answer("DELETE", "/api/v1/secrets/RADIUS", status=409,
                   body={"error": "secret RADIUS is used by profiles: P1; change or delete them first",
                         "field": "name"})
    code, out, _ = ctl(tcp_api, "secret", "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "CREATED", "UPDATED"] and "RADIUS" in out
    code, out, _ = ctl(tcp_api, "secret", "show", "RADIUS")
    assert code == 0 and "profiles:   P1" in out
    code, out, err = ctl(tcp_api, "secret", "delete", "RADIUS")
    assert code != 0 and "secret RADIUS is used by profiles: P1; change or delete them first" in err
