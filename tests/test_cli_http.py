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
CA = {"name": "UPSTREAM", "url": "http://ca.example/scep", "profiles": [], "created_at": T0, "updated_at": T0}
HOST = {"uuid": "H1", "serial": "C02X", "platform": "macos", "created_at": T0, "updated_at": T0}
PROFILE = {
    "uuid": "0b5f2a3e-1111-4222-8333-944455556666", "name": "WIFI SCEP", "identifier": "Fleet.WiFi",
    "platform": "macos", "kind": "mobileconfig", "ca": "UPSTREAM",
    "variables": ["FLEET_VAR_CUSTOM_SCEP_CHALLENGE_UPSTREAM"], "created_at": T0, "updated_at": T0,
}
HP = {
    "host_uuid": "H1", "profile_uuid": PROFILE["uuid"], "status": None, "detail": None, "retries": 0,
    "updated_at": T0,
}


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


def write_config(directory: Path, listen: str) -> Path:
    state = directory / "state"
    state.mkdir()
    (state / "admin.token").write_text(TOKEN + "\n")
    config = directory / "scepproxyd.ini"
    config.write_text("[state]\ndirectory = state\n[admin]\nlisten = %s\n" % (listen.replace("\\", "\\\\"),))
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
        "NAME       URL                                        PROFILES  UPDATED",
        "UPSTREAM   http://ca.example/scep                     0         " + T0,
        "SECOND_CA  https://ca2.example/cgi-bin/pkiclient.exe  2         " + T0,
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
        "name:         UPSTREAM",
        "url:          http://ca.example/scep",
        "profiles:     p1",
        "tls_verify:   yes",
        "trust_bundle: no",
        "created_at:   " + T0,
        "updated_at:   " + T0,
    ]


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
    path.write_text("uuid,serial,platform\nH1,S1,windows\n")
    tcp_api.answer("POST", "/api/v1/hosts/import", 422,
                   {"error": "row 1: platform must be one of macos, ios, ipados, android", "field": "platform"})
    code, out, err = ctl(tcp_api, "host", "import", str(path))
    assert (code, out) == (1, "")
    assert err == "scepproxyctl: row 1: platform must be one of macos, ios, ipados, android (field: platform)\n"


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
        "HOST  PROFILE                               STATUS  RETRIES  UPDATED                    DETAIL",
        "H1    %s  -       0        %s  -" % (PROFILE["uuid"], T0),
    ]


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
    pending = dict(HP, host_uuid="H2", status="pending", retries=1, detail="CA said FAILURE")
    tcp_api.answer("GET", "/api/v1/host-profiles?host=H1&profile=P&status=null&limit=5000", body={"host_profiles": [HP, pending]})
    code, out, err = ctl(tcp_api, "status", "--host", "H1", "--profile", "P", "--status", "null")
    assert code == 0
    assert out.splitlines() == [
        "HOST  PROFILE                               STATUS   RETRIES  UPDATED                    DETAIL",
        "H1    %s  -        0        %s  -" % (PROFILE["uuid"], T0),
        "H2    %s  pending  1        %s  CA said FAILURE" % (PROFILE["uuid"], T0),
    ]


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
