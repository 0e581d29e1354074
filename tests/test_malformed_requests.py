"""Malformed requests, in process, against the daemon as twistd makes it (``tap.makeService``).

Every documented JSON endpoint (admin API with the built-in CA's and the
backup's routes, agent API, NanoMDM webhook) gets hostile bodies from
hypothesis: random JSON, nesting past any stack, lone surrogates in values
and keys, integers of thousands of digits, NaN, duplicate keys, wrong types,
binary garbage, huge strings. The answer must be a 4xx (or a success) in the
endpoint's own format, never a 5xx, and a normal request afterwards must
still work. The built-in CA and the proxy get malformed query strings.
"""

import json
from urllib.parse import quote_from_bytes

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task, threads

from support.site import mobileconfig
from support.daemon import daemon_config
from support.processes import free_port
from scepproxyd.config import load_settings
from scepproxyd.jsoninput import MAX_INTEGER_DIGITS, MAX_NESTING, JsonInputError, nests_deeper_than, read_json
from scepproxyd.tap import makeService
from support.api import json_call

FUZZ = settings(
    max_examples=120, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOST = "host-a"


class Running:
    """The daemon's two listeners, its admin token and a host with a profile and an agent credential."""

    def __init__(self, port, admin_port, admin_token, webhook_token):
        self.url = "http://127.0.0.1:%d" % (port,)
        self.admin_url = "http://127.0.0.1:%d" % (admin_port,)
        self.admin_token = admin_token
        self.webhook_token = webhook_token
        self.profile = None

    async def admin(self, method, path, body=None):
        return await json_call(self.admin_url, method, path, self.admin_token, body)

    async def agent_credential(self):
        code, answer = await self.admin("POST", "/api/v1/hosts/%s/agent-credential" % (HOST,))
        assert code == 201, answer
        return answer["token"]


@pytest.fixture
def service(tmp_path):
    port, admin_port = free_port(), free_port()
    settings_ = load_settings(daemon_config(tmp_path, port, admin_port, logging={"level": "info"},
                                            profiles={"process_interval": "1h"}))
    top = makeService({"settings": settings_}, reactor)  # what twistd runs: state prepared, then the service
    top.privilegedStartService()
    top.startService()
    running = Running(port, admin_port, settings_.admin.token_file.read_text().strip(),
                      settings_.delivery.webhook_token_file.read_text().strip())
    pytest_twisted.blockon(defer.ensureDeferred(_set_up(running)))
    yield running
    pytest_twisted.blockon(defer.maybeDeferred(top.stopService))


async def _set_up(running):
    for _ in range(200):  # until the store is open and the built-in CA's row is registered
        try:
            code, answer = await running.admin("GET", "/api/v1/cas/builtin")
            if code == 200:
                break
        except Exception:  # noqa: BLE001 - the listener may not be up on the first tries
            pass
        await task.deferLater(reactor, 0.05, lambda: None)
    else:
        raise AssertionError("the daemon did not come up")
    code, profile = await json_call(running.admin_url, "POST", "/api/v1/profiles", running.admin_token,
                                    raw=mobileconfig("builtin"), content_type="application/x-apple-aspen-config")
    assert code == 201, profile
    running.profile = profile["uuid"]
    assert (await running.admin("PUT", "/api/v1/hosts/" + HOST, {"serial": "S1", "platform": "macos"}))[0] == 201
    assert (await running.admin("POST", "/api/v1/profiles/%s/assign" % (running.profile,), {"hosts": [HOST]}))[0] == 200


# -- hostile bodies --------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(SURROGATES, st.characters()), min_size=1, max_size=10),
    st.text(st.characters(max_codepoint=0x9F), max_size=20),  # controls, NUL included
    st.integers(1_000, 300_000).map(lambda n: "x" * n),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), NASTY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NASTY_TEXT, children, max_size=4),
    max_leaves=10,
)
NUMBERS = st.one_of(
    st.integers(MAX_INTEGER_DIGITS + 1, 6000).map(lambda n: "9" * n),
    st.integers(MAX_INTEGER_DIGITS + 1, 6000).map(lambda n: "-" + "1" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 5000 + ".5"]),
)


def _dump(value) -> bytes:
    """JSON text of a value that may hold lone surrogates (written as \\u escapes) and NaN."""
    return json.dumps(value, ensure_ascii=True).encode("ascii")


@st.composite
def hostile_bodies(draw, fields):
    """A hostile body for an endpoint whose JSON object has ``fields``."""
    names = st.sampled_from(fields) | NASTY_TEXT if fields else NASTY_TEXT
    kind = draw(st.sampled_from(
        ["object", "any", "deep", "number", "duplicate", "garbage", "bad_utf8", "wrong_top", "empty"]
    ))
    if kind == "object":
        return _dump(draw(st.dictionaries(names, JSON_VALUES, max_size=5)))
    if kind == "any":
        return _dump(draw(JSON_VALUES))
    if kind == "deep":
        depth = draw(st.integers(MAX_NESTING - 2, 50_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"a":[', b"]}")]))
        inner = draw(st.sampled_from([b"1", b'"x"', b"", b"[]"]))
        name = draw(names)
        return b'{"%s": ' % (_dump(name)[1:-1],) + opener * depth + inner + closer * depth + b"}"
    if kind == "number":
        body = _dump(draw(st.dictionaries(names, JSON_VALUES, max_size=3)) | {draw(names): "@NUMBER@"})
        return body.replace(b'"@NUMBER@"', draw(NUMBERS).encode())
    if kind == "duplicate":
        name = _dump(draw(names))
        return b"{%s: %s, %s: %s}" % (name, _dump(draw(JSON_VALUES)), name, _dump(draw(JSON_VALUES)))
    if kind == "garbage":
        return draw(st.binary(max_size=300))
    if kind == "bad_utf8":
        text = _dump(draw(st.dictionaries(names, st.text(max_size=10), min_size=1, max_size=3)))
        return text.replace(b'"', b'"\xed\xa0\x80', 1) if draw(st.booleans()) else text + b"\xff"
    if kind == "wrong_top":
        return _dump(draw(st.one_of(st.lists(JSON_VALUES, max_size=3), SCALARS)))
    return b""


CA = ("name", "url", "challenge", "trust_bundle", "tls_verify")
# (method, path, JSON fields, content types); {profile} is the fixture's profile.
ADMIN_ENDPOINTS = [
    ("POST", "/api/v1/cas", CA, ["application/json"]),
    ("PATCH", "/api/v1/cas/NO_SUCH_CA", CA, ["application/json"]),
    ("PUT", "/api/v1/hosts/fuzz-host", ("serial", "platform"), ["application/json"]),
    ("POST", "/api/v1/hosts/import", ("hosts", "uuid", "serial", "platform"), ["application/json", "text/csv"]),
    ("POST", "/api/v1/hosts/%s/agent-credential" % (HOST,), (), ["application/json"]),
    ("POST", "/api/v1/agent-credentials", ("hosts", "platform", "all", "rotate"), ["application/json"]),
    ("POST", "/api/v1/profiles?platform=android", ("format", "name", "scep", "subject", "challenge", "url"),
     ["application/json", "application/x-apple-aspen-config"]),
    ("POST", "/api/v1/profiles/{profile}/assign", ("hosts", "platform"), ["application/json"]),
    ("POST", "/api/v1/profiles/{profile}/unassign", ("hosts",), ["application/json"]),
    ("POST", "/api/v1/host-profiles/%s/{profile}/resend" % (HOST,), (), ["application/json"]),
    ("POST", "/api/v1/jobs/cleanup", (), ["application/json"]),
    ("POST", "/api/v1/backup", ("directory",), ["application/json"]),
    ("POST", "/api/v1/ca/requests/NO-SUCH-TX/approve", (), ["application/json"]),
    ("POST", "/api/v1/ca/requests/NO-SUCH-TX/reject", ("reason",), ["application/json"]),
    ("POST", "/api/v1/ca/certificates/0A0B/revoke", ("reason",), ["application/json"]),
    ("POST", "/api/v1/ca/challenges", ("template", "ttl"), ["application/json"]),
]
AGENT_ENDPOINTS = [
    ("POST", "/api/v1/agent/hosts/%s/commands/0c0ffee0-0000-4000-8000-000000000000" % (HOST,),
     ("status", "error"), ["application/json"]),
    ("POST", "/api/v1/agent/hosts/%s/profiles" % (HOST,), ("installed",), ["application/json"]),
    ("POST", "/api/v1/agent/hosts/%s/certificates" % (HOST,), ("certificates",),
     ["application/json", "application/x-pem-file"]),
    ("GET", "/api/v1/agent/hosts/%s/commands" % (HOST,), (), ["application/json"]),
]
WEBHOOK_FIELDS = ("topic", "acknowledge_event", "status", "udid", "command_uuid", "raw_payload", "enrollment_id")
# Admin queries whose values the handlers read; hostile values are percent-escaped bytes.
ADMIN_QUERIES = [
    ("GET", "/api/v1/hosts", "platform"),
    ("GET", "/api/v1/host-profiles", "host"),
    ("GET", "/api/v1/host-profiles", "status"),
    ("GET", "/api/v1/agent-credentials", "platform"),
    ("GET", "/api/v1/ca/requests", "status"),
    ("GET", "/api/v1/ca/certificates", "status"),
    ("POST", "/api/v1/profiles", "name"),
]


async def send(url, method, body, content_type, token=None):
    """(status, content type, body bytes) of one request with a raw body."""
    headers = {b"Content-Type": [content_type.encode()]}
    if token is not None:
        headers[b"Authorization"] = [b"Bearer " + token.encode()]
    response = await treq.request(method, url, headers=headers, data=body)
    return response.code, (response.headers.getRawHeaders(b"Content-Type") or [b""])[0], await response.content()


def assert_json_refusal_or_answer(status, content_type, body, what):
    assert status < 500, (what, status, body[:300])
    if status == 204:
        assert body == b"", what
        return
    assert content_type == b"application/json", (what, status, content_type, body[:300])
    answer = json.loads(body)
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"], (what, answer)
        assert set(answer) <= {"error", "field"}, (what, answer)
        assert isinstance(answer.get("field", ""), str), (what, answer)
        assert "internal error" not in answer["error"], (what, answer)


async def admin_still_works(service):
    code, hosts = await service.admin("GET", "/api/v1/hosts/" + HOST)
    assert code == 200 and hosts["serial"] == "S1", hosts


def in_reactor(example):
    """Run ``example()`` (a coroutine function) on the reactor from hypothesis's thread and wait for it."""
    return threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(example()))


def fuzz(given_kwargs):
    """Hypothesis examples in a thread, so each can wait on the reactor that serves the daemon.

    The decorated function draws (in hypothesis's thread) and returns the coroutine function to run on the reactor.
    """

    def decorate(body):
        def test(service):
            @FUZZ
            @given(**given_kwargs)
            def example(**drawn):
                in_reactor(body(service, **drawn))

            return threads.deferToThread(example)

        test.__name__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return decorate


@fuzz({"data": st.data()})
def test_admin_api_refuses_hostile_bodies_in_its_json_format(service, data):
    method, path, fields, content_types = data.draw(st.sampled_from(ADMIN_ENDPOINTS))
    body = data.draw(hostile_bodies(fields))
    content_type = data.draw(st.sampled_from(content_types))
    path = path.format(profile=service.profile)

    async def go():
        status, got_type, answer = await send(service.admin_url + path, method, body, content_type, service.admin_token)
        assert_json_refusal_or_answer(status, got_type, answer, (method, path, body[:200]))
        await admin_still_works(service)

    return go


@fuzz({"data": st.data()})
def test_admin_query_parameters_never_fail_the_daemon(service, data):
    method, path, name = data.draw(st.sampled_from(ADMIN_QUERIES))
    value = data.draw(st.one_of(st.binary(max_size=60), st.text(max_size=30).map(lambda t: t.encode("utf-8"))))
    url = "%s%s?%s=%s" % (service.admin_url, path, name, quote_from_bytes(value, safe=""))
    body = mobileconfig("builtin").replace(b"Fleet.WiFi", b"Fuzz.Query") if method == "POST" else None

    async def go():
        status, got_type, answer = await send(url, method, body, "application/x-apple-aspen-config", service.admin_token)
        assert_json_refusal_or_answer(status, got_type, answer, (method, url))
        if status == 201:  # a profile with that name was stored: delete it again, so its identifier stays free
            assert (await service.admin("DELETE", "/api/v1/profiles/" + json.loads(answer)["uuid"]))[0] == 204
        await admin_still_works(service)

    return go


@fuzz({"data": st.data()})
def test_agent_api_refuses_hostile_bodies_in_its_json_format(service, data):
    method, path, fields, content_types = data.draw(st.sampled_from(AGENT_ENDPOINTS))
    body = data.draw(hostile_bodies(fields))
    content_type = data.draw(st.sampled_from(content_types))

    async def go():
        token = await service.agent_credential()
        status, got_type, answer = await send(service.url + path, method, body, content_type, token)
        if status == 413:  # over [server] max_body_bytes: the documented plain-text refusal
            assert got_type.startswith(b"text/plain") and len(body) > 64 * 1024
        else:
            assert_json_refusal_or_answer(status, got_type, answer, (method, path, body[:200]))
        code, commands = await json_call(service.url, "GET", "/api/v1/agent/hosts/%s/commands" % (HOST,), token)
        assert code == 200 and isinstance(commands["commands"], list), commands

    return go


@fuzz({"data": st.data()})
def test_nanomdm_webhook_refuses_hostile_bodies_in_plain_text(service, data):
    body = data.draw(hostile_bodies(WEBHOOK_FIELDS))
    if data.draw(st.booleans()):  # inside an acknowledge_event, where the device's report is read
        inner = data.draw(hostile_bodies(WEBHOOK_FIELDS))
        body = b'{"topic": "mdm.Connect", "acknowledge_event": %s}' % (inner or b"null",)
    url = "%s/webhooks/nanomdm/%s" % (service.url, service.webhook_token)

    async def go():
        status, got_type, answer = await send(url, "POST", body, "application/json")
        assert status < 500, (status, answer[:300], body[:200])
        if status == 413:
            assert len(body) > 64 * 1024
        assert status in (200, 400, 413, 422), (status, answer[:300])
        assert got_type.startswith(b"text/plain"), (status, got_type, answer[:300])
        assert answer.endswith(b"\n") and b"Traceback" not in answer and b"<html" not in answer.lower()
        status, _, answer = await send(url, "POST", b'{"topic": "mdm.Authenticate"}', "application/json")
        assert (status, answer) == (200, b"ok\n")

    return go


@fuzz({
    "query": st.one_of(
        st.binary(max_size=200).map(lambda b: quote_from_bytes(b, safe="=&%+/")),
        st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5).map(
            lambda pairs: "&".join("%s=%s" % (quote_from_bytes(k.encode("utf-8", "surrogatepass"), safe="%"),
                                              quote_from_bytes(v.encode("utf-8", "surrogatepass"), safe="%+/="))
                                   for k, v in pairs)),
        st.sampled_from(["operation=GetCACaps&%ED%A0%80=1", "operation=%ff", "operation=GetCACert&message=%",
                         "operation=PKIOperation&message=" + "A" * 8_000, "operation=PKIOperation&message=%00",
                         "operation=" + "%" * 300]),
    ),
    "where": st.sampled_from(["/scep", "/scep/pkiclient.exe", "/mdm/scep/proxy/a%2Cb%2Cbuiltin%2C" + "A" * 32]),
    "method": st.sampled_from(["GET", "POST"]),
})
def test_builtin_ca_and_proxy_never_fail_on_malformed_queries(service, query, where, method):

    async def go():
        status, _, answer = await send("%s%s?%s" % (service.url, where, query), method, b"\x00garbage" * 3,
                                       "application/x-www-form-urlencoded")
        assert status < 500, (status, answer[:300])
        status, _, answer = await send(service.url + "/scep?operation=GetCACaps", "GET", None, "text/plain")
        assert status == 200 and answer, answer

    return go


# -- the refusals' words ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_refusal_names_its_reason(service):
    """The messages docs/admin-api.md lists under "Malformed requests", one by one."""
    admin = service.admin_url
    cases = [
        (b'{"serial": "\\ud800", "platform": "macos"}', 422,
         {"error": "request body has a lone surrogate (\\ud800) in a string; text must be valid Unicode",
          "field": "serial"}),
        (b'{"\\udc00": 1}', 422,
         {"error": "request body has a lone surrogate (\\udc00) in a string; text must be valid Unicode",
          "field": "\\udc00"}),
        (b'{"serial": "a\\u0000b", "platform": "macos"}', 422,
         {"error": "request body has a NUL character (\\u0000) in a string", "field": "serial"}),
        (b'{"serial": ' + b"[" * 33 + b"]" * 33 + b"}", 400,
         {"error": "request body nests arrays and objects deeper than 32 levels"}),
        (b'{"serial": "a", "serial": "b"}', 422, {"error": 'request body has the key "serial" twice', "field": "serial"}),
        (b'{"serial": ' + b"9" * 5000 + b"}", 422, {"error": "request body has an integer of more than 40 digits"}),
        (b'{"serial": NaN}', 422, {"error": "request body has NaN, which is not a JSON number"}),
        (b'{"serial": 1e999}', 422, {"error": "request body has a number too large to represent (1e999)"}),
        (b'{"serial": "\xff"}', 400, {"error": "request body is not valid UTF-8: byte 0xff at position 12"}),
        (b'["macos"]', 400, {"error": "request body must be a JSON object"}),
    ]
    for body, status, answer in cases:
        assert await json_call(admin, "PUT", "/api/v1/hosts/h1", service.admin_token, raw=body,
                               content_type="application/json") == (status, answer), body[:60]
    assert (await service.admin("GET", "/api/v1/hosts"))[1]["hosts"][0]["uuid"] == HOST  # nothing else written


@pytest_twisted.ensureDeferred
async def test_host_import_names_the_csv_line_at_fault(service):
    def csv_import(body):
        return json_call(service.admin_url, "POST", "/api/v1/hosts/import", service.admin_token, raw=body,
                         content_type="text/csv")

    huge = b"uuid,serial,platform\nh1,S1,macos\nh2," + b"x" * 200_000 + b",macos\n"
    assert await csv_import(huge) == (
        422, {"error": "CSV line 3 has a field longer than 131072 characters", "field": "file"})
    assert await csv_import(b"uuid,serial,platform\nh1,S1,macos\nh2,S\x002,macos\n") == (
        422, {"error": "CSV line 3 has a NUL character", "field": "file"})
    assert await csv_import(b"uuid,serial,platform\nh1,\xe9t\xe9,macos\n") == (
        422, {"error": "import must be UTF-8 text", "field": "file"})
    code, answer = await json_call(service.admin_url, "POST", "/api/v1/hosts/import", service.admin_token,
                                   raw=b'[{"uuid": "h1", "serial": "\\udfff", "platform": "macos"}]',
                                   content_type="application/json")
    assert (code, answer) == (422, {"error": "import has a lone surrogate (\\udfff) in a string; text must be valid"
                                             " Unicode", "field": "file"})
    code, answer = await json_call(service.admin_url, "POST", "/api/v1/hosts/import", service.admin_token,
                                   raw=b"[" * 5000 + b"]" * 5000, content_type="application/json")
    assert (code, answer) == (422, {"error": "import nests arrays and objects deeper than 32 levels", "field": "file"})
    assert [h["uuid"] for h in (await service.admin("GET", "/api/v1/hosts"))[1]["hosts"]] == [HOST]


@pytest_twisted.ensureDeferred
async def test_android_template_with_a_huge_integer_or_surrogate_is_422(service):
    path = "/api/v1/profiles?platform=android"
    for body, message in [
        (b'{"format": "scepproxyd-android-v1", "key_size": ' + b"7" * 5000 + b"}",
         "Android certificate template has an integer of more than 40 digits"),
        (b'{"format": "scepproxyd-android-v1", "name": "\\ud800"}',
         "Android certificate template has a lone surrogate (\\ud800) in a string; text must be valid Unicode"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "profile is nested too deeply"),
    ]:
        assert await json_call(service.admin_url, "POST", path, service.admin_token, raw=body,
                               content_type="application/json") == (422, {"error": message, "field": "profile"})


@pytest_twisted.ensureDeferred
async def test_webhook_refusals_are_plain_text_with_the_reason(service):
    url = "%s/webhooks/nanomdm/%s" % (service.url, service.webhook_token)
    assert await send(url, "POST", b"[" * 60_000, "application/json") == (
        400, b"text/plain; charset=utf-8", b"webhook body nests arrays and objects deeper than 32 levels\n")
    event = b'{"topic": "mdm.Connect", "acknowledge_event": {"udid": "\\ud800", "status": "Error", "command_uuid": "C"}}'
    assert await send(url, "POST", event, "application/json") == (
        422, b"text/plain; charset=utf-8",
        b"webhook body has a lone surrogate (\\ud800) in a string; text must be valid Unicode\n")


def test_depth_is_measured_outside_strings():
    assert read_json(b'["' + b"[" * 1000 + b'"]') == ["[" * 1000]
    assert not nests_deeper_than('[[1], {"a": [2]}]', 3)
    assert nests_deeper_than('[[1], {"a": [2]}]', 2)
    assert not nests_deeper_than("[]" * 1000, 1)
    assert not nests_deeper_than('{"a": "]]]]"}', 1) and nests_deeper_than('{"a": "]]]]", "b": [[]]}', 2)
    nested = b"[" * MAX_NESTING + b"]" * MAX_NESTING
    assert read_json(nested) is not None
    with pytest.raises(JsonInputError):
        read_json(b"[" + nested + b"]")
