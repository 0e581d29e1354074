"""The admin API, through a real listener in the test process, against a real store file."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from support.web import settings_in
from support.admin_site import PROFILE_LIMIT, STATIC, TOKEN, add_ca, sample_profile
from support.api import json_call
from scepproxyd.store import Store
from scepproxyd.service import admin_api
from scepproxyd.web import api as api_module
from scepproxyd.web.site import BodyLimitedSite

# -- auth ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_token_and_wrong_token_are_401(api):
    assert await api.call("GET", "/api/v1/cas", token=None) == (401, {"error": "missing or wrong bearer token"})
    assert (await api.call("GET", "/api/v1/cas", token="x" * 43))[0] == 401
    assert (await api.call("GET", "/api/v1/nope", token=None))[0] == 401


@pytest_twisted.ensureDeferred
async def test_unknown_endpoint_and_method(api):
    assert await api.call("GET", "/api/v1/nope") == (404, {"error": "no such endpoint: GET /api/v1/nope"})
    code, body = await api.call("PUT", "/api/v1/cas")
    assert code == 405 and "use GET, POST" in body["error"]


# -- CAs -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_list_show_ca_never_returns_challenge(api):
    code, body = await add_ca(api)
    assert code == 201
    assert body["name"] == "CA_NAME" and body["url"] == api.ca_url and body["profiles"] == []
    for path in ("/api/v1/cas", "/api/v1/cas/CA_NAME"):
        code, body = await api.call("GET", path)
        assert code == 200
        assert STATIC not in json.dumps(body)
    # Encrypted at rest: no plaintext in the database file (WAL checkpointed or not).
    for f in api.db_path.parent.rglob("*"):
        assert not f.is_file() or STATIC.encode() not in f.read_bytes()


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"url": "http://x", "challenge": "c"}, "name", "name is required"),
        ({"name": "bad-name", "url": "http://x", "challenge": "c"}, "name", "name must be 1-255 letters, digits or underscores"),
        ({"name": "A" * 256, "url": "http://x", "challenge": "c"}, "name", "name must be 1-255"),
        ({"name": "A", "url": "ftp://x", "challenge": "c"}, "url", "url must be an absolute http:// or https:// URL with a host"),
        ({"name": "A", "url": "http://", "challenge": "c"}, "url", "url must be an absolute http:// or https:// URL with a host"),
        ({"name": "A", "url": "http://u:p@host/", "challenge": "c"}, "url", "url must not contain a user name or password"),
        ({"name": "A", "url": "http://host:99999/", "challenge": "c"}, "url", "url must be an absolute"),
        ({"name": "A", "url": "http://host/x#frag", "challenge": "c"}, "url", "url must not have a fragment"),
        ({"name": "A", "url": "http://host/ x", "challenge": "c"}, "url", "url must not contain spaces or control characters"),
        ({"name": "A", "url": "http://x", "challenge": ""}, "challenge", "challenge must not be empty"),
        ({"name": "A", "url": "http://x"}, "challenge", "challenge is required"),
        ({"name": 5, "url": "http://x", "challenge": "c"}, "name", "name must be a string"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ca_validation(api, body, field, message):
    code, answer = await api.call("POST", "/api/v1/cas", body)
    assert code == 422
    assert answer["field"] == field
    assert answer["error"].startswith(message)


@pytest_twisted.ensureDeferred
async def test_ca_that_gives_no_certificate_is_refused(api):
    code, body = await api.call("POST", "/api/v1/cas", {"name": "BROKEN", "url": api.broken_ca_url, "challenge": "c"})
    assert (code, body) == (422, {"error": "CA answered GetCACert with HTTP 500, not a certificate", "field": "url"})
    code, body = await api.call("POST", "/api/v1/cas", {"name": "GONE", "url": "http://127.0.0.1:9/scep", "challenge": "c"})
    assert code == 422 and body["error"].startswith("CA did not answer GetCACert: upstream CA unreachable")
    assert (await api.call("GET", "/api/v1/cas/GONE"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_duplicate_ca_409(api):
    await add_ca(api)
    assert await add_ca(api) == (409, {"error": "a CA named 'CA_NAME' already exists", "field": "name"})


@pytest_twisted.ensureDeferred
async def test_bad_json_bodies(api):
    assert await api.call("POST", "/api/v1/cas", raw=b"{nope", content_type="application/json") == (
        400, {"error": "request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"})
    assert await api.call("POST", "/api/v1/cas", raw=b"[1]", content_type="application/json") == (
        400, {"error": "request body must be a JSON object"})


@pytest_twisted.ensureDeferred
async def test_edit_ca_url_needs_challenge_and_rename_of_used_ca_conflicts(api):
    await add_ca(api)
    code, body = await api.call("PATCH", "/api/v1/cas/CA_NAME", {"url": api.ca_url + "?x=1"})
    assert (code, body) == (422, {"error": "changing the URL requires the challenge again", "field": "challenge"})
    code, body = await api.call("PATCH", "/api/v1/cas/CA_NAME", {"url": api.ca_url + "?x=1", "challenge": "new"})
    assert code == 200 and body["url"] == api.ca_url + "?x=1"
    code, profile = await api.call("POST", "/api/v1/profiles", raw=sample_profile(), content_type="application/x-apple-aspen-config")
    assert code == 201, profile
    code, body = await api.call("PATCH", "/api/v1/cas/CA_NAME", {"name": "RENAMED"})
    assert code == 409 and profile["uuid"] in body["error"]
    code, body = await api.call("DELETE", "/api/v1/cas/CA_NAME")
    assert code == 409 and profile["uuid"] in body["error"]
    assert (await api.call("DELETE", "/api/v1/profiles/" + profile["uuid"]))[0] == 204
    assert (await api.call("PATCH", "/api/v1/cas/CA_NAME", {"name": "RENAMED"}))[0] == 200
    assert (await api.call("DELETE", "/api/v1/cas/RENAMED"))[0] == 204
    assert (await api.call("DELETE", "/api/v1/cas/RENAMED")) == (404, {"error": "no CA named 'RENAMED'"})


# -- hosts ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_host_put_list_show_delete(api):
    code, body = await api.call("PUT", "/api/v1/hosts/HOST-1", {"serial": "C02X", "platform": "macos"})
    assert code == 201 and body["platform"] == "macos"
    assert (await api.call("PUT", "/api/v1/hosts/HOST-1", {"serial": "C02Y", "platform": "macos"}))[0] == 200
    code, body = await api.call("GET", "/api/v1/hosts")
    assert [h["serial"] for h in body["hosts"]] == ["C02Y"]
    assert (await api.call("GET", "/api/v1/hosts/HOST-1"))[1]["profiles"] == []
    assert (await api.call("PUT", "/api/v1/hosts/HOST-2", {"serial": "s", "platform": "beos"})) == (
        422, {"error": "platform must be one of macos, ios, ipados, android, windows", "field": "platform"})
    assert (await api.call("PUT", "/api/v1/hosts/bad%20uuid", {"serial": "s", "platform": "ios"}))[0] == 422
    assert (await api.call("DELETE", "/api/v1/hosts/HOST-1"))[0] == 204
    assert (await api.call("GET", "/api/v1/hosts/HOST-1")) == (404, {"error": "no host 'HOST-1'"})


@pytest_twisted.ensureDeferred
async def test_host_import_csv_and_json_all_or_nothing(api):
    csv_text = b"uuid,serial,platform\nA1,S1,macos\nA2,S2,ios\n"
    assert await api.call("POST", "/api/v1/hosts/import", raw=csv_text, content_type="text/csv") == (
        200, {"created": 2, "updated": 0})
    rows = [{"uuid": "A2", "serial": "S2b", "platform": "ios"}, {"uuid": "A3", "serial": "S3", "platform": "android"}]
    assert await api.call("POST", "/api/v1/hosts/import", raw=json.dumps(rows).encode(), content_type="application/json") == (
        200, {"created": 1, "updated": 1})
    bad = b"uuid,serial,platform\nB1,S,macos\nB2,S,amiga\n"
    assert await api.call("POST", "/api/v1/hosts/import", raw=bad, content_type="text/csv") == (
        422, {"error": "row 2: platform must be one of macos, ios, ipados, android, windows", "field": "platform"})
    assert (await api.call("GET", "/api/v1/hosts/B1"))[0] == 404
    code, body = await api.call("POST", "/api/v1/hosts/import", raw=b"serial\nx\n", content_type="text/csv")
    assert (code, body["error"]) == (422, "CSV import needs a header line with uuid, serial, platform")


# -- profiles, assignments, status -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_profile_upload_assign_status_resend(api):
    await add_ca(api)
    for uuid, platform in [("M1", "macos"), ("M2", "macos"), ("I1", "ios")]:
        await api.call("PUT", "/api/v1/hosts/" + uuid, {"serial": "s", "platform": platform})
    code, profile = await api.call("POST", "/api/v1/profiles", raw=sample_profile(), content_type="application/x-apple-aspen-config")
    assert code == 201
    assert profile["ca"] == "CA_NAME" and profile["platform"] == "macos" and profile["kind"] == "mobileconfig"
    assert "FLEET_VAR_SCEP_RENEWAL_ID" in profile["variables"]
    uuid = profile["uuid"]

    assert await api.call("POST", "/api/v1/profiles/%s/assign" % uuid, {"hosts": ["M1", "I1"]}) == (
        422, {"error": "host I1 is ios but profile %s is for macos" % uuid, "field": "hosts"})
    assert (await api.call("GET", "/api/v1/host-profiles"))[1] == {"host_profiles": [], "next": None}
    assert await api.call("POST", "/api/v1/profiles/%s/assign" % uuid, {"hosts": ["M1", "NOPE"]}) == (
        422, {"error": "cannot assign profile %s: no host NOPE" % uuid, "field": "hosts"})
    assert (await api.call("GET", "/api/v1/host-profiles"))[1] == {"host_profiles": [], "next": None}
    assert await api.call("POST", "/api/v1/profiles/%s/assign" % uuid, {"platform": "macos"}) == (200, {"assigned": 2})
    assert await api.call("POST", "/api/v1/profiles/%s/assign" % uuid, {"hosts": ["M1"]}) == (200, {"assigned": 0})

    code, body = await api.call("GET", "/api/v1/host-profiles?profile=" + uuid + "&status=null")
    assert [(r["host_uuid"], r["status"], r["retries"]) for r in body["host_profiles"]] == [("M1", None, 0), ("M2", None, 0)]

    await api.store.set_host_profile_status("M1", uuid, "failed", "gave up")
    code, body = await api.call("POST", "/api/v1/host-profiles/M1/%s/resend" % uuid)
    assert code == 200 and body["status"] is None and body["retries"] == 0
    assert (await api.call("POST", "/api/v1/host-profiles/I1/%s/resend" % uuid))[0] == 404

    for hosts in ([[]], [1], [""]):
        code, body = await api.call("POST", "/api/v1/profiles/%s/unassign" % uuid, {"hosts": hosts})
        assert (code, body["field"], body["error"]) == (422, "hosts", "hosts must be a list of host UUIDs")
    assert await api.call("POST", "/api/v1/profiles/%s/unassign" % uuid, {"hosts": ["M2"]}) == (200, {"unassigned": 1})
    assert (await api.call("GET", "/api/v1/profiles/" + uuid))[1]["hosts"] == 1
    assert (await api.call("DELETE", "/api/v1/profiles/" + uuid))[0] == 204
    assert (await api.call("GET", "/api/v1/host-profiles"))[1] == {"host_profiles": [], "next": None}


@pytest_twisted.ensureDeferred
async def test_a_profile_past_the_large_json_size_is_read_as_itself(api, monkeypatch):
    """
    Bodies past LARGE_BODY are parsed as JSON ahead, on a worker thread; a profile upload is not JSON, so its
    bytes must reach the upload as they came. (The daemon's default profile limit is 1 MiB, this site's is
    LARGE_BODY itself: the threshold is lowered here instead, so the fixture profile is past it.)
    """
    monkeypatch.setattr(api_module, "LARGE_BODY", 1024)
    await add_ca(api)
    assert len(sample_profile()) > 1024
    code, profile = await api.call("POST", "/api/v1/profiles", raw=sample_profile(),
                                   content_type="application/x-apple-aspen-config")
    assert code == 201, profile
    assert profile["kind"] == "mobileconfig"


@pytest_twisted.ensureDeferred
async def test_profile_upload_refusals(api):
    code, body = await api.call("POST", "/api/v1/profiles", raw=sample_profile(), content_type="application/x-apple-aspen-config")
    assert (code, body) == (422, {"error": "profile uses CA 'CA_NAME', which does not exist; add it first", "field": "profile"})
    await add_ca(api)
    code, body = await api.call("POST", "/api/v1/profiles?platform=android", raw=sample_profile())
    assert (code, body["field"]) == (422, "platform")
    code, body = await api.call("POST", "/api/v1/profiles", raw=b"garbage")
    assert code == 422 and body["field"]
    code, body = await api.call("POST", "/api/v1/profiles", raw=sample_profile("fleet-custom-scep-braces.mobileconfig"))
    assert code == 422 and "RENEWAL_ID" in body["error"]


async def upload(api, content, query=""):
    return await api.call("POST", "/api/v1/profiles" + query, raw=content, content_type="application/x-apple-aspen-config")


@pytest_twisted.ensureDeferred
async def test_same_payload_identifier_twice_is_409_naming_the_holder(api):
    await add_ca(api)
    code, first = await upload(api, sample_profile())
    assert code == 201 and first["identifier"] == "Fleet.WiFi"
    message = (
        "PayloadIdentifier 'Fleet.WiFi' is already used by profile %s (SCEP proxy cert);"
        " give this one another PayloadIdentifier, or delete that profile first" % (first["uuid"],)
    )
    # Another name or another Apple platform does not make it another profile on a device.
    for query in ("", "?platform=ios", "?name=Other"):
        assert await upload(api, sample_profile(), query) == (409, {"error": message, "field": "PayloadIdentifier"})
    assert [p["uuid"] for p in (await api.call("GET", "/api/v1/profiles"))[1]["profiles"]] == [first["uuid"]]
    code, second = await upload(api, sample_profile().replace(b"Fleet.WiFi", b"Fleet.WiFi.ios"), "?platform=ios")
    assert code == 201 and second["identifier"] == "Fleet.WiFi.ios"
    assert (await api.call("DELETE", "/api/v1/profiles/" + first["uuid"]))[0] == 204
    assert (await upload(api, sample_profile()))[0] == 201


@pytest_twisted.ensureDeferred
async def test_same_android_template_twice_is_409_naming_the_holder(api):
    await add_ca(api, "CORP_CA")
    template = sample_profile("android-corp-wifi.json")
    code, first = await api.call("POST", "/api/v1/profiles", raw=template, content_type="application/json")
    assert code == 201 and first["identifier"] == "Corporate Wi-Fi"
    assert await api.call("POST", "/api/v1/profiles?name=Again", raw=template, content_type="application/json") == (409, {
        "error": "template name 'Corporate Wi-Fi' is already used by profile %s (Corporate Wi-Fi);"
                 " give this one another template name, or delete that profile first" % (first["uuid"],),
        "field": "name",
    })
    renamed = template.replace(b'"name": "Corporate Wi-Fi"', b'"name": "Guest Wi-Fi"')
    assert renamed != template
    assert (await api.call("POST", "/api/v1/profiles", raw=renamed, content_type="application/json"))[0] == 201


@pytest_twisted.ensureDeferred
async def test_concurrent_uploads_of_one_identifier_one_wins(api):
    await add_ca(api)
    answers = await defer.gatherResults([defer.ensureDeferred(upload(api, sample_profile())) for _ in range(6)])
    assert sorted(code for code, _ in answers) == [201] + [409] * 5
    (winner,) = [body["uuid"] for code, body in answers if code == 201]
    assert all(winner in body["error"] for code, body in answers if code == 409)
    assert [p["uuid"] for p in (await api.call("GET", "/api/v1/profiles"))[1]["profiles"]] == [winner]


@pytest_twisted.ensureDeferred
async def test_contradicting_profiles_are_422_and_store_nothing(api):
    await add_ca(api)
    repeated = sample_profile().replace(
        b"<key>Challenge</key>", b"<key>Challenge</key><string>static-secret</string><key>Challenge</key>", 1)
    assert await upload(api, repeated) == (422, {
        "error": 'key "Challenge" appears more than once in the dictionary at PayloadContent > item 1 >'
                 " PayloadContent; each key may appear only once in a dictionary",
        "field": "profile",
    })
    nested = sample_profile().replace(
        b"<key>PayloadDisplayName</key>\n    <string>SCEP proxy cert</string>",
        b"<key>Hidden</key><dict><key>PayloadType</key><string>com.apple.security.scep</string>"
        b"<key>Challenge</key><string>static-secret</string></dict>",
    )
    assert nested != sample_profile()
    code, body = await upload(api, nested)
    assert (code, body["error"]) == (422, "profile has a com.apple.security.scep payload at Hidden; a profile may"
                                          " have one SCEP payload, directly in its top-level PayloadContent")
    assert (await api.call("GET", "/api/v1/profiles"))[1] == {"profiles": [], "next": None}


@pytest_twisted.ensureDeferred
async def test_trigger_jobs(api):
    assert await api.call("GET", "/api/v1/jobs") == (200, {"jobs": ["cleanup"]})
    assert await api.call("POST", "/api/v1/jobs/cleanup") == (
        200, {"job": "cleanup", "result": {"expired_challenges_removed": 0, "expired_profiles_resent": 0,
                                            "finished_commands_removed": 0, "stuck_deliveries_resent": 0}})
    assert await api.call("POST", "/api/v1/jobs/nope") == (404, {"error": "no job 'nope'; jobs are cleanup"})


# -- load: size limits, pages, work off the reactor ------------------------------


def padded_profile(size: int) -> bytes:
    """The sample Apple profile grown to exactly ``size`` bytes (trailing whitespace after the plist)."""
    content = sample_profile()
    assert len(content) <= size
    return content + b"\n" * (size - len(content))


def on_worker_thread(monkeypatch, module, name, minimum_size=-1) -> list:
    """
    Wrap ``module.name`` to record, per call, whether it ran off the reactor (main) thread.

    Calls whose first argument is bytes of at most ``minimum_size`` are not recorded.
    """
    import threading

    original, seen = getattr(module, name), []

    def wrapped(*args, **kwargs):
        if not (args and isinstance(args[0], bytes) and len(args[0]) <= minimum_size):
            seen.append(threading.current_thread() is not threading.main_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


@pytest_twisted.ensureDeferred
async def test_profile_at_the_limit_is_parsed_off_the_reactor_and_one_byte_more_is_413(api, monkeypatch):
    import scepproxyd.web.admin as admin_web
    from support.hostile import body_of, raw_http, status_of
    from twisted.internet import threads

    await add_ca(api)
    threads_seen = on_worker_thread(monkeypatch, admin_web, "parse_profile")
    code, body = await api.call("POST", "/api/v1/profiles", raw=padded_profile(PROFILE_LIMIT),
                                content_type="application/x-apple-aspen-config")
    assert code == 201, body
    assert threads_seen == [True]
    refusal = {"error": "profile larger than %d bytes; the limit is [admin] max_profile_bytes" % (PROFILE_LIMIT,),
               "field": "profile"}
    # Declared too large: refused on the headers, before the body is sent.
    head = b"POST /api/v1/profiles?platform=ios HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % TOKEN.encode()
    reply = await threads.deferToThread(raw_http, api.port, head + b"Content-Length: %d\r\n\r\n" % (PROFILE_LIMIT + 1,))
    assert status_of(reply) == 413 and json.loads(body_of(reply)) == refusal
    # Streamed (chunked, no length): cut as the bytes pass the limit.
    chunk = b"x" * 4096
    frames = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(PROFILE_LIMIT // len(chunk) + 1))
    reply = await threads.deferToThread(raw_http, api.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + frames)
    assert status_of(reply) == 413 and json.loads(body_of(reply)) == refusal
    # Other routes keep the site's own limit.
    code, _ = await api.call("PUT", "/api/v1/hosts/H1", {"serial": "x" * (PROFILE_LIMIT + 10), "platform": "ios"})
    assert code == 422
    assert [p["uuid"] for p in (await api.call("GET", "/api/v1/profiles"))[1]["profiles"]] != []
    assert len((await api.call("GET", "/api/v1/profiles"))[1]["profiles"]) == 1


@pytest_twisted.ensureDeferred
async def test_profile_limit_is_kept_by_the_handler_on_a_site_without_route_limits(tmp_path):
    db = tmp_path / "db.sqlite3"
    Store.migrate(db)
    store = Store(db, reactor)
    await store.start()
    settings = settings_in(tmp_path / "daemon", database=db, ca={"enabled": "no"}, admin={"max_profile_bytes": "2048"})
    api = admin_api(token=TOKEN, store=store, upstream=None, cipher=None, jobs={}, settings=settings, reactor=reactor)
    site = BodyLimitedSite(api, 1024 * 1024, 30, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        code, body = await json_call("http://127.0.0.1:%d" % (port.getHost().port,), "POST", "/api/v1/profiles",
                                     TOKEN, raw=padded_profile(4096), content_type="application/x-apple-aspen-config")
        assert (code, body["field"]) == (413, "profile")
        assert body["error"] == "profile larger than 2048 bytes; the limit is [admin] max_profile_bytes"
    finally:
        await port.stopListening()
        await store.stop()


def csv_hosts(count: int, platform: str = "ios") -> bytes:
    return ("uuid,serial,platform\n" + "".join("h%06d,S%d,%s\n" % (i, i, platform) for i in range(count))).encode()


async def all_pages(api, path: str, name: str, limit=None) -> tuple[list, int]:
    """Every row of a list by following ``next``, and how many pages it took."""
    rows, cursor, pages = [], None, 0
    while True:
        query = [("limit", limit)] if limit else []
        if cursor:
            query.append(("cursor", cursor))
        sep = "&" if "?" in path else "?"
        code, body = await api.call("GET", path + (sep + "&".join("%s=%s" % q for q in query) if query else ""))
        assert code == 200, body
        pages += 1
        rows += body[name]
        cursor = body["next"]
        if cursor is None:
            return rows, pages


@pytest_twisted.ensureDeferred
async def test_hosts_are_paged_by_keyset_in_a_stable_order(api):
    assert await api.call("POST", "/api/v1/hosts/import", raw=csv_hosts(1203), content_type="text/csv") == (
        200, {"created": 1203, "updated": 0})
    code, first = await api.call("GET", "/api/v1/hosts")
    assert code == 200 and len(first["hosts"]) == 500 and first["next"]  # the default limit
    rows, pages = await all_pages(api, "/api/v1/hosts", "hosts")
    assert pages == 3 and [h["uuid"] for h in rows] == ["h%06d" % i for i in range(1203)]
    rows, pages = await all_pages(api, "/api/v1/hosts", "hosts", limit=5000)
    assert pages == 1 and len(rows) == 1203
    # A host added behind the cursor moves nothing across pages; one ahead of it is seen.
    code, page = await api.call("GET", "/api/v1/hosts?limit=600")
    await api.call("PUT", "/api/v1/hosts/a-early", {"platform": "ios"})
    await api.call("PUT", "/api/v1/hosts/z-late", {"platform": "ios"})
    code, rest = await api.call("GET", "/api/v1/hosts?limit=5000&cursor=" + page["next"])
    assert [h["uuid"] for h in page["hosts"] + rest["hosts"]] == ["h%06d" % i for i in range(1203)] + ["z-late"]
    assert rest["next"] is None
    # Filters apply to every page.
    await api.call("PUT", "/api/v1/hosts/m1", {"platform": "macos"})
    assert [h["uuid"] for h in (await api.call("GET", "/api/v1/hosts?platform=macos&limit=1"))[1]["hosts"]] == ["m1"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("query, code, field, message", [
    ("limit=0", 422, "limit", "limit must be a whole number from 1 to 5000"),
    ("limit=5001", 422, "limit", "limit must be a whole number from 1 to 5000"),
    ("limit=ten", 422, "limit", "limit must be a whole number from 1 to 5000"),
    ("limit=-1", 422, "limit", "limit must be a whole number from 1 to 5000"),
    ("cursor=not-a-cursor", 400, "cursor", None),
    ("cursor=WyJob3N0cyJd", 400, "cursor", None),  # ["hosts"]: no key
    ("cursor=WyJwcm9maWxlcyIsImEiXQ", 400, "cursor", None),  # ["profiles","a"]: another list's
    ("cursor=WyJob3N0cyIsdHJ1ZV0", 400, "cursor", None),  # ["hosts",true]
])
async def test_bad_page_parameters_are_refused(api, query, code, field, message):
    status, body = await api.call("GET", "/api/v1/hosts?" + query)
    assert (status, body["field"]) == (code, field)
    assert body["error"] == (message or 'cursor is not one this list gave out; start again without a cursor'
                                        ' and follow "next"')


@pytest_twisted.ensureDeferred
async def test_every_list_is_paged(api):
    await add_ca(api)
    await add_ca(api, "SECOND_CA")
    await api.call("POST", "/api/v1/hosts/import", raw=csv_hosts(7, "macos"), content_type="text/csv")
    uploaded = []
    for n in range(3):
        content = sample_profile().replace(b">Fleet.WiFi<", b">Fleet.WiFi%d<" % n)
        code, body = await api.call("POST", "/api/v1/profiles?name=P%d" % (2 - n), raw=content,
                                    content_type="application/x-apple-aspen-config")
        assert code == 201, body
        uploaded.append(body["uuid"])
        await api.call("POST", "/api/v1/profiles/%s/assign" % body["uuid"], {"platform": "macos"})
    for n in range(3):
        await api.call("POST", "/api/v1/hosts/h%06d/agent-credential" % n)
    cas, pages = await all_pages(api, "/api/v1/cas", "cas", limit=1)
    assert ([c["name"] for c in cas], pages) == (["CA_NAME", "SECOND_CA"], 2)
    assert cas[0]["profiles"] and STATIC not in json.dumps(cas)
    profiles, pages = await all_pages(api, "/api/v1/profiles", "profiles", limit=2)
    assert ([p["name"] for p in profiles], pages) == (["P0", "P1", "P2"], 2)
    hps, pages = await all_pages(api, "/api/v1/host-profiles?status=null", "host_profiles", limit=4)
    assert pages == 6 and len(hps) == 21
    assert [(hp["host_uuid"], hp["profile_uuid"]) for hps_ in [hps] for hp in hps_] == sorted(
        (h, p) for h in ["h%06d" % i for i in range(7)] for p in uploaded)
    creds, pages = await all_pages(api, "/api/v1/agent-credentials", "agent_credentials", limit=2)
    assert ([c["host_uuid"] for c in creds], pages) == (["h000000", "h000001", "h000002"], 2)
    assert (await api.call("GET", "/api/v1/profiles/" + uploaded[0]))[1]["hosts"] == 7


@pytest_twisted.ensureDeferred
async def test_big_import_is_parsed_off_the_reactor_and_written_in_batches_others_run_between(api, monkeypatch):
    import scepproxyd.admin as admin_rules
    import scepproxyd.web.api as api_module
    from scepproxyd.web.admin import IMPORT_BATCH

    count = 20000
    assert count >= 5 * IMPORT_BATCH
    parsed_off = on_worker_thread(monkeypatch, admin_rules, "parse_host_import")
    encoded_off = on_worker_thread(monkeypatch, api_module, "_encode")
    first, last = "h%06d" % 0, "h%06d" % (count - 1)
    seen = []  # (first host present, last host present) as other store jobs saw the hosts table
    done = []

    async def probe():
        while not done:
            present_first = await api.store.get_host(first) is not None
            present_last = await api.store.get_host(last) is not None
            seen.append((present_first, present_last))

    probing = defer.ensureDeferred(probe())
    answer = await api.call("POST", "/api/v1/hosts/import", raw=csv_hosts(count), content_type="text/csv")
    done.append(True)
    await probing
    assert answer == (200, {"created": count, "updated": 0})
    assert parsed_off == [True]
    # Store jobs ran while the import was half written: it is not one long transaction.
    assert (True, False) in seen, sorted(set(seen))
    # A second run of the same file is an idempotent upsert.
    assert await api.call("POST", "/api/v1/hosts/import", raw=csv_hosts(count), content_type="text/csv") == (
        200, {"created": 0, "updated": count})
    rows, _ = await all_pages(api, "/api/v1/hosts", "hosts", limit=5000)
    assert len(rows) == count and encoded_off and all(encoded_off[-4:])


@pytest_twisted.ensureDeferred
async def test_large_json_body_is_parsed_off_the_reactor(api, monkeypatch):
    import scepproxyd.web.api as api_module

    parsed_off = on_worker_thread(monkeypatch, api_module, "_parse_json", minimum_size=api_module.LARGE_BODY)
    await add_ca(api)
    code, profile = await api.call("POST", "/api/v1/profiles", raw=sample_profile(),
                                   content_type="application/x-apple-aspen-config")
    await api.call("POST", "/api/v1/hosts/import", raw=csv_hosts(7000, "macos"), content_type="text/csv")
    hosts = ["h%06d" % i for i in range(7000)]
    assert len(json.dumps({"hosts": hosts})) > api_module.LARGE_BODY
    assert await api.call("POST", "/api/v1/profiles/%s/assign" % profile["uuid"], {"hosts": hosts}) == (
        200, {"assigned": 7000})
    assert parsed_off == [True]
    code, body = await api.call("POST", "/api/v1/profiles/%s/assign" % profile["uuid"],
                                raw=b"[" * (api_module.LARGE_BODY + 1), content_type="application/json")
    assert code == 400 and body["error"] == "request body nests arrays and objects deeper than 32 levels"
    assert parsed_off == [True, True]


@pytest_twisted.ensureDeferred
async def test_profile_the_builtin_ca_cannot_enforce_is_refused_at_upload(api):
    await api.store.register_managed_ca("builtin", "http://127.0.0.1:8080/scep")
    fleet = sample_profile().replace(b"CA_NAME", b"builtin")
    unknown_type = fleet.replace(b"<string>OU</string>", b"<string>FAVOURITE_COLOUR</string>")
    code, body = await api.call("POST", "/api/v1/profiles", raw=unknown_type,
                                content_type="application/x-apple-aspen-config")
    assert code == 422 and body["error"].startswith("the built-in CA cannot enforce this profile: ")
    assert "FAVOURITE_COLOUR" in body["error"]
    # The same profile for an upstream CA is the CA's to judge; the sample itself is fine for the built-in CA.
    await add_ca(api)
    code, _ = await api.call("POST", "/api/v1/profiles", raw=unknown_type.replace(b"builtin", b"CA_NAME"),
                             content_type="application/x-apple-aspen-config")
    assert code == 201
    fleet = fleet.replace(b"<string>Fleet.WiFi</string>", b"<string>Fleet.WiFi.builtin</string>")
    code, _ = await api.call("POST", "/api/v1/profiles", raw=fleet, content_type="application/x-apple-aspen-config")
    assert code == 201
