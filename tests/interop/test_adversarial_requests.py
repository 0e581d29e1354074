"""Adversarial: hostile clients against the running daemon.

Property-based fuzzing (hypothesis) of proxy identifiers, query strings,
PKIOperation bodies and the JSON APIs, sent as raw bytes on the wire; bodies
over the limit; slowloris clients; path traversal and SQL-looking input. The
daemon may refuse (4xx), relay a real CA answer (200 for GetCACaps and
GetCACert), and nothing else: never a 5xx, never a traceback in its log, and
the database is the same afterwards.
"""

import json
import re
import socket
import string
import time
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.certs import signed_blob
from support.api import apis
from support.hostile import CA_CAPS, assert_log_clean, b64, db, integrity, raw_http, request_once, status_of
from support.site import add_ca, challenge_from_url, enrollment_url

STATIC = "hostile-requests-static-secret"
MAX_BODY = 4096
IDLE = 2.0
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAKE_CHALLENGE = "A" * 32  # well-formed, never minted: nothing the fuzzer sends can spend a real challenge

pytestmark = pytest.mark.daemon(server={"max_body_bytes": "4k", "idle_timeout": "2s"},
                                profiles={"process_interval": "1h"})


@pytest.fixture(scope="module")
def agent_credential(module_site, target):
    """The agent credential of the target's host."""
    return module_site[1].credential(target[0])


@pytest.fixture(scope="module")
def target(module_site, hostile_ca):
    """A real host profile on a healthy CA: (host, profile, CA, its live challenge)."""
    admin, agent = module_site
    add_ca(admin, "FUZZ_CA", hostile_ca.url("ok"), STATIC)
    url, profile = enrollment_url(admin, agent, "FUZZ_CA", "fuzz-host")
    return "fuzz-host", profile, "FUZZ_CA", challenge_from_url(url)


@pytest.fixture(scope="module")
def snapshot(module_daemon, target):
    """What the database holds before the attacks, to compare with afterwards."""
    def take():
        with db(module_daemon) as conn:
            return {table: conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
                    for table in ("cas", "hosts", "profiles", "host_profiles", "commands")}
    return take


def ca_answers(hostile_ca) -> set[bytes]:
    return {CA_CAPS, hostile_ca.ca_der}


def assert_refused_or_relayed(status: int, body: bytes, hostile_ca, what) -> None:
    assert status < 500, (status, body, what)
    if status == 200:
        assert body in ca_answers(hostile_ca), (body[:200], what)
    else:
        assert 400 <= status < 500, (status, body, what)


# -- fuzzing -------------------------------------------------------------------------

PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"
SQLISH = ["' OR '1'='1", "1; DROP TABLE hosts; --", "x' UNION SELECT challenge FROM challenges --",
          "%", "_", "*", "\\", "\"", "NULL", "' OR 1=1 --", "\u00e9t\u00e9", "\x00", "..", "../.."]


def part_strategy(real: str):
    return st.one_of(
        st.just(real),
        st.sampled_from(SQLISH),
        st.text(max_size=40),
        st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=300),
        st.just(""),
    )


def identifiers(host, profile, ca_name):
    structured = st.builds(
        lambda parts, sep, extra: sep.join(quote(p, safe="") for p in parts + extra),
        st.tuples(part_strategy(host), part_strategy(profile), part_strategy(ca_name),
                  part_strategy(FAKE_CHALLENGE)).map(list),
        st.sampled_from([",", "%2C", "%2c", ";", "%252C"]),
        st.lists(st.text(max_size=5), max_size=2),
    )
    return st.one_of(
        structured,
        st.text(alphabet=PATH_CHARS, max_size=300),
        st.binary(max_size=200).map(lambda b: quote_from_bytes(b, safe="")),
        st.integers(2000, 15000).map(lambda n: "a" * n),  # twisted drops request lines over 16 KiB unanswered
    )


@FUZZ
@given(data=st.data())
def test_fuzz_identifiers(module_daemon, hostile_ca, target, data):
    host, profile, ca_name, _ = target
    identifier = data.draw(identifiers(host, profile, ca_name))
    suffix = data.draw(st.sampled_from(["", "/pkiclient.exe", "/", "/x", "/pkiclient.exe/x"]))
    operation = data.draw(st.sampled_from(["GetCACaps", "GetCACert", "PKIOperation", "", "getcacaps"]))
    method = data.draw(st.sampled_from(["GET", "POST"]))
    body = signed_blob() if method == "POST" else None
    target_bytes = ("/mdm/scep/proxy/%s%s?operation=%s" % (identifier, suffix, operation)).encode()
    status, answer = request_once(module_daemon.port, method, target_bytes, body=body)
    assert_refused_or_relayed(status, answer, hostile_ca, target_bytes[:300])


QUERY_CHARS = string.ascii_letters + string.digits + "%+=&;-_./~!$'()*,:@ "


def queries():
    pair = st.tuples(
        st.one_of(st.sampled_from(["operation", "message", "Operation", "operation%00", "op%65ration", ""]),
                  st.text(alphabet=QUERY_CHARS, max_size=20)),
        st.one_of(st.sampled_from(["GetCACaps", "GetCACert", "PKIOperation", "PKIOperation%00", "GetCACaps%20",
                                   b64(signed_blob()), "%ZZ", "%", "+++", "=", ""]),
                  st.text(alphabet=QUERY_CHARS, max_size=200),
                  st.binary(max_size=300).map(lambda b: quote_from_bytes(b, safe="")),
                  st.binary(max_size=300).map(lambda b: b64(b))),
    ).map(lambda kv: "%s=%s" % kv if kv[1] != "" else kv[0])
    return st.lists(pair, max_size=6).map(lambda pairs: "&".join(pairs).replace(" ", "%20"))


@FUZZ
@given(query=queries(), method=st.sampled_from(["GET", "POST"]), pkiclient=st.booleans())
def test_fuzz_query_strings(module_daemon, hostile_ca, target, query, method, pkiclient):
    host, profile, ca_name, _ = target
    path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
    if pkiclient:
        path += "/pkiclient.exe"
    target_bytes = (path + "?" + query).encode()
    status, answer = request_once(module_daemon.port, method, target_bytes, body=signed_blob() if method == "POST" else None)
    assert_refused_or_relayed(status, answer, hostile_ca, target_bytes[:300])


def pki_bodies():
    blob = signed_blob()
    return st.one_of(
        st.binary(max_size=MAX_BODY + 200),
        st.binary(min_size=MAX_BODY - 2, max_size=MAX_BODY + 300),
        st.integers(0, len(blob) - 1).map(lambda n: blob[:n]),
        st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)).map(
            lambda t: blob[:t[0]] + bytes([blob[t[0]] ^ t[1]]) + blob[t[0] + 1:]),
        st.binary(min_size=1, max_size=100).map(lambda junk: blob + junk),
        st.binary(min_size=1, max_size=100).map(lambda junk: junk + blob),
        st.just(blob),
        st.just(b"0\x80" + b"\x00" * 2000),  # indefinite length, never terminated
        st.just(b"0\x84\xff\xff\xff\xff"),  # claims a 4 GiB SEQUENCE
        st.just(b"0\x82\x0f\xa0" * 20),
    )


@FUZZ
@given(body=pki_bodies(), by_get=st.booleans())
def test_fuzz_pkioperation_bodies(module_daemon, hostile_ca, target, body, by_get):
    host, profile, ca_name, _ = target
    path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
    before = hostile_ca.pki_requests("ok")
    if by_get:
        status, answer = request_once(
            module_daemon.port, "GET", ("%s?operation=PKIOperation&message=%s" % (path, quote(b64(body), safe=""))).encode())
    else:
        status, answer = request_once(module_daemon.port, "POST", (path + "?operation=PKIOperation").encode(), body=body)
    assert 400 <= status < 500, (status, answer)
    if len(body) > MAX_BODY and not by_get:
        assert status == 413
    # A challenge nobody minted never lets anything through to the CA.
    assert hostile_ca.pki_requests("ok") == before


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=50))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=12)
FIELDS = ["status", "error", "installed", "certificates", "uuid", "serial", "platform", "hosts", "name", "url",
          "challenge"]
OBJECTS = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4)


@FUZZ
@given(data=st.data())
def test_fuzz_agent_api(module_daemon, target, agent_credential, data):
    host = data.draw(st.one_of(st.just(target[0]), st.text(alphabet=PATH_CHARS, min_size=1, max_size=40)))
    path = data.draw(st.sampled_from(["/commands", "/commands/%s" % data.draw(st.text(PATH_CHARS, max_size=70)),
                                      "/profiles", "/certificates", ""]))
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    body = data.draw(st.one_of(OBJECTS.map(lambda o: json.dumps(o).encode()), JSON.map(lambda o: json.dumps(o).encode()),
                               st.binary(max_size=300),
                               st.just(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")))
    content_type = data.draw(st.sampled_from(["application/json", "application/x-pem-file", "text/plain", ""]))
    # Any other host in the path is refused like a wrong credential: fuzzed too.
    headers = {"Authorization": "Bearer " + agent_credential}
    if content_type:
        headers["Content-Type"] = content_type
    target_bytes = ("/api/v1/agent/hosts/%s%s" % (host, path)).encode()
    status, answer = request_once(module_daemon.port, method, target_bytes, body=body if method != "GET" else None,
                                  headers=headers)
    assert status < 500, (status, answer, target_bytes, body)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_admin_api(module_daemon, target, data):
    method, path = data.draw(st.sampled_from([
        ("PUT", "/api/v1/hosts/%s"), ("GET", "/api/v1/hosts/%s"), ("POST", "/api/v1/hosts/import"),
        ("POST", "/api/v1/profiles/%s/assign"), ("POST", "/api/v1/profiles/%s/unassign"),
        ("PATCH", "/api/v1/cas/%s"), ("GET", "/api/v1/host-profiles?host=%s"), ("GET", "/api/v1/hosts?platform=%s"),
        ("POST", "/api/v1/host-profiles/%s/x/resend"), ("POST", "/api/v1/profiles?platform=%s"),
    ]))
    ident = data.draw(st.one_of(st.sampled_from(SQLISH + ["macos", "FUZZ_CA", target[1], "fuzz-host"]),
                                st.text(alphabet=PATH_CHARS, min_size=1, max_size=40)))
    body = data.draw(st.one_of(OBJECTS.map(lambda o: json.dumps(o).encode()), JSON.map(lambda o: json.dumps(o).encode()),
                               st.binary(max_size=300), st.just(b"uuid,serial,platform\nx,,macos\n,,\n")))
    if method == "PATCH":  # never let the fuzzer rename or re-point the CA the other tests use
        body = json.dumps({"challenge": data.draw(st.text(max_size=2000))}).encode()
        ident = data.draw(st.sampled_from(SQLISH + ["NO_SUCH_CA"]))
    if path.endswith("/assign") or path.endswith("/unassign"):
        ident = data.draw(st.sampled_from(SQLISH + ["no-such-profile"]))
    content_type = data.draw(st.sampled_from(["application/json", "text/csv", "application/x-apple-aspen-config", ""]))
    headers = {"Authorization": "Bearer " + module_daemon.admin_token}
    if content_type:
        headers["Content-Type"] = content_type
    target_bytes = (path % quote(ident, safe="") if "%s" in path else path).encode()
    status, answer = request_once(module_daemon.admin_port, method, target_bytes,
                                  body=body if method != "GET" else None, headers=headers)
    assert status < 500, (status, answer, method, target_bytes, body[:300])


def test_fuzzing_left_no_trace(module_daemon, target, agent_credential, snapshot):
    """Runs after the fuzzers: no traceback or 500 in the log, and the daemon still serves."""
    assert_log_clean(module_daemon, [STATIC, target[3], module_daemon.admin_token, agent_credential])
    assert integrity(module_daemon) == "ok"


def test_other_methods_on_the_proxy_are_4xx(module_daemon, target):
    host, profile, ca_name, _ = target
    path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"):
        reply = raw_http(module_daemon.port, b"%s %s?operation=GetCACaps HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n" % (method.encode(), path.encode()))
        assert 400 <= status_of(reply) < 500, (method, reply)
        assert b"\r\nContent-Type: text/plain" in reply, (method, reply)


# -- bodies over the limit ---------------------------------------------------------------


def test_declared_huge_body_refused_before_it_is_sent(module_daemon, target):
    host, profile, ca_name, _ = target
    path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
    for port, target_path in ((module_daemon.port, path + "?operation=PKIOperation"),
                              (module_daemon.port, "/api/v1/agent/hosts/fuzz-host/certificates"),
                              (module_daemon.admin_port, "/api/v1/hosts/import")):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n0\x82" % target_path.encode())
            reply = b""
            while True:  # the answer comes although 1 GiB minus two bytes are still owed, then the close
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        assert status_of(reply) == 413, reply
        limit = MAX_BODY if port == module_daemon.port else 16 * 1024 * 1024
        assert b"request body larger than %d bytes" % (limit,) in reply


def test_endless_chunked_body_is_cut(module_daemon, target):
    """A body that never ends: the daemon answers 413 and hangs up long before the client runs out."""
    host, profile, ca_name, _ = target
    path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
    chunk = b"x" * 1024
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with socket.create_connection(("127.0.0.1", module_daemon.port), timeout=30) as s:
        s.sendall(b"POST %s?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  % path.encode())
        try:
            while sent < 256 * 1024 * 1024:
                s.sendall(frame)
                sent += len(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while data := s.recv(65536):
                reply += data
        except ConnectionResetError:
            pass
    # What the kernel buffers on loopback is a few MB at most; 256 MB means nobody hung up.
    assert sent < 64 * 1024 * 1024, sent
    if reply:  # the answer may be lost to the reset that our own unread data causes
        assert status_of(reply) == 413


# -- slow clients ----------------------------------------------------------------------------


def test_slowloris_headers_slower_than_idle_timeout_are_cut(module_daemon):
    header = b"X-Slow: " + b"a" * 50 + b"\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", module_daemon.port), timeout=60) as s:
        s.sendall(b"GET /mdm/scep/proxy/a%2Cb%2CC%2Cdddddddddddddddddddd?operation=GetCACaps HTTP/1.1\r\nHost: x\r\n")
        cut = False
        for byte in header * 10:
            s.settimeout(IDLE + 1.0)  # one byte per idle_timeout + 1 s
            try:
                if s.recv(1) == b"":
                    cut = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = True
                break
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
    assert cut, "a client dribbling its headers slower than idle_timeout was never cut"
    assert time.monotonic() - started < 2 * (IDLE + 1.0) + 10


def test_many_slowloris_connections_do_not_block_others(module_daemon, hostile_ca, target):
    host, profile, ca_name, _ = target
    sockets = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", module_daemon.port), timeout=30)
            s.sendall(b"GET /mdm/scep/proxy/x HTTP/1.1\r\nHost: x\r\nX-Half: ")
            sockets.append(s)
        path = "/mdm/scep/proxy/" + quote("%s,%s,%s,%s" % (host, profile, ca_name, FAKE_CHALLENGE), safe="")
        status, body = request_once(module_daemon.port, "GET", (path + "?operation=GetCACaps").encode())
        assert (status, body) == (200, CA_CAPS)
        # And after idle_timeout every one of them is gone.
        for s in sockets:
            s.settimeout(IDLE + 30)
            try:
                assert s.recv(65536) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in sockets:
            s.close()


# -- path traversal and SQL-looking input ---------------------------------------------------


TRAVERSALS = [
    b"/mdm/scep/proxy/..%2F..%2Fetc%2Fpasswd?operation=GetCACaps",
    b"/mdm/scep/proxy/../../api/v1/cas",
    b"/mdm/scep/proxy/../../api/v1/cas?operation=GetCACaps",
    b"/mdm/scep/proxy/%2e%2e/%2e%2e/api/v1/cas",
    b"/mdm/scep/proxy/..%5c..%5cetc%5cpasswd?operation=GetCACaps",
    b"/mdm/scep/proxy/%252e%252e%252f%252e%252e%252fetc%252fpasswd?operation=GetCACaps",
    b"/mdm/scep/proxy/..;/..;/api/v1/cas",
    b"/mdm/scep/proxy/....//....//etc/passwd",
    b"/mdm/scep/proxy/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd?operation=GetCACaps",
    b"/mdm/scep/proxy/fuzz-host%2C..%2C..%2C" + b"A" * 32 + b"?operation=GetCACaps",
    b"/mdm/scep/proxy/fuzz-host,../../etc/passwd,FUZZ_CA," + b"A" * 32 + b"?operation=GetCACaps",
]
OUTSIDE = [
    b"/../../etc/passwd",
    b"/mdm/../api/v1/cas",
    b"/./api/v1/cas",
    b"//api/v1/cas",
    b"/api/v1/agent/../../mdm/scep/proxy/x",
    b"/mdm/scep/%2e%2e/%2e%2e/api/v1/cas",
    b"/etc/passwd",
]
SQL_IDENTIFIERS = [
    "x' OR '1'='1,p,FUZZ_CA," + "A" * 32,
    "fuzz-host,p' OR 1=1 --,FUZZ_CA," + "A" * 32,
    "fuzz-host,p,FUZZ_CA' OR '1'='1," + "A" * 32,
    "fuzz-host,p,FUZZ_CA,x' OR challenge LIKE '%",
    "fuzz-host,p,FUZZ_CA;DROP TABLE challenges,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "a;DROP TABLE hosts;--,b,C,dddddddddddddddddddd",
    "1 UNION SELECT name FROM cas--,b,C,dddddddddddddddddddd",
    "fuzz-host,p,FUZZ_CA,------------------------",  # all allowed characters, still nothing
    "%25,%25,%25,%25%25%25%25%25%25%25%25%25%25%25%25%25%25%25%25",
    "_,_,_,________________",
]


def test_path_traversal_and_sql_identifiers_are_plain_refusals(module_daemon, target, agent_credential, snapshot):
    before = snapshot()
    admin_token = module_daemon.admin_token.encode()
    for path in TRAVERSALS:
        for token in (b"", admin_token, agent_credential.encode()):
            status, body = request_once(module_daemon.port, "GET", path, headers={"Authorization": b"Bearer " + token})
            assert status == 400, (path, status, body)
            assert b'"cas"' not in body and b"root:" not in body
    for path in OUTSIDE:
        for token in (b"", admin_token):
            status, body = request_once(module_daemon.port, "GET", path, headers={"Authorization": b"Bearer " + token})
            assert status in (400, 401, 404), (path, status, body)
            assert b'"cas"' not in body and b"root:" not in body
    for ident in SQL_IDENTIFIERS:
        for operation in ("GetCACaps", "PKIOperation"):
            path = ("/mdm/scep/proxy/%s?operation=%s" % (quote(ident, safe=","), operation)).encode()
            status, body = request_once(module_daemon.port, "POST", path, body=signed_blob())
            assert status == 400, (ident, status, body)

    # The admin API treats the same strings as data, too.
    admin, _ = apis(module_daemon)  # admin calls only: no agent credential is issued here
    for value in SQLISH + ["%25", "%", "*"]:
        quoted = quote(value, safe="")
        assert admin.request("GET", "/api/v1/hosts/" + quoted)[0] == 404
        assert admin.request("DELETE", "/api/v1/hosts/" + quoted)[0] == 404
        assert admin.request("DELETE", "/api/v1/profiles/" + quoted)[0] == 404
        assert admin.request("DELETE", "/api/v1/cas/" + quoted)[0] == 404
        assert admin.call("GET", "/api/v1/host-profiles?host=" + quoted) == {"host_profiles": [], "next": None}
        assert admin.call("GET", "/api/v1/host-profiles?profile=" + quoted) == {"host_profiles": [], "next": None}
        assert admin.request("GET", "/api/v1/hosts?platform=" + quoted)[0] == 422
        assert admin.request("PUT", "/api/v1/hosts/" + quoted, {"serial": value, "platform": "macos"})[0] in (201, 422)

    assert integrity(module_daemon) == "ok"
    # Only the PUTs whose id is a well-formed host id ("NULL", "..", "_") created a host; nothing else changed.
    well_formed = [v for v in SQLISH + ["%25", "%", "*"] if re.fullmatch(r"[A-Za-z0-9._-]{1,255}", v)]
    assert snapshot() == dict(before, hosts=before["hosts"] + len(well_formed))
    assert admin.call("GET", "/api/v1/cas/FUZZ_CA")["name"] == "FUZZ_CA"
    assert admin.call("GET", "/api/v1/hosts/fuzz-host")["uuid"] == "fuzz-host"
    assert_log_clean(module_daemon, [STATIC, target[3], module_daemon.admin_token, agent_credential])
