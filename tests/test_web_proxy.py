"""The SCEP proxy in process: the README's answer table ("### Answers and what they mean"), row by row.

Everything goes through the daemon's real device-facing tree (support.web):
a profile delivered by the admin and agent APIs, a device request built in
process, the upstream CA another scepproxyd's built-in CA behind StubTreq.
"""

import base64

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from support.store import TTL, migrated, started_store
from support.web import build_web, stop_web

CHALLENGE_FAILED = b"custom scep challenge failed\n"


def pki(path: str) -> str:
    return path + "?operation=PKIOperation"


async def status_of(web, e) -> tuple:
    hp = await web.host_profile(e.host, e.profile)
    return hp["status"], hp["retries"]


# -- a real enrollment ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_enrollment_through_the_proxy_issues_and_moves_the_host_profile_to_verifying(web):
    e = await web.enrollment()
    caps = await web.device("GET", e.path + "?operation=GetCACaps")
    assert caps.status == 200 and b"POSTPKIOperation" in caps.body.split(b"\n")
    request = await web.pkcs_req(e)
    answer = await web.device("POST", pki(e.path), request.message)
    status, fail, (certificate,) = request.read(answer)
    assert (status, fail) == ("SUCCESS", None)
    certificate.verify_directly_issued_by(request.ca_certificate)
    assert request.cn in certificate.subject.rfc4514_string()
    assert await status_of(web, e) == ("verifying", 0)
    # The challenge is spent: the very same request again is refused, and moves nothing back.
    again = await web.device("POST", pki(e.path), request.message)
    assert (again.status, again.body) == (400, CHALLENGE_FAILED)
    assert await status_of(web, e) == ("verifying", 0)


@pytest_twisted.ensureDeferred
async def test_pkioperation_by_get_with_pkiclient_exe_in_any_case(web):
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    message = base64.b64encode(request.message).decode("ascii")  # '+' and '/' kept literal: they are data
    answer = await web.device("GET", e.path + "/PKIClient.exe?operation=PKIOperation&message=" + message)
    assert request.read(answer)[0] == "SUCCESS"
    assert await status_of(web, e) == ("verifying", 0)


@pytest_twisted.ensureDeferred
async def test_certrep_pending_puts_the_challenge_back_for_the_polls(web):
    e = await web.enrollment()
    # The upstream CA holds for an admin whatever subject it does not auto-approve.
    request = await web.pkcs_req(e, cn="held-device")
    first = await web.device("POST", pki(e.path), request.message)
    assert request.read(first)[0] == "PENDING"
    assert await status_of(web, e) == ("pending", 0)
    poll = await web.device("POST", pki(e.path), request.message)
    assert request.read(poll)[0] == "PENDING"


@pytest_twisted.ensureDeferred
async def test_certrep_failure_sends_the_host_profile_back_with_the_reason(web):
    e = await web.enrollment()
    request = await web.pkcs_req(e, challenge="not-the-static-challenge")
    answer = await web.device("POST", pki(e.path), request.message)
    assert request.read(answer)[:2] == ("FAILURE", "badRequest")
    hp = await web.host_profile(e.host, e.profile)
    assert (hp["status"], hp["retries"]) == (None, 1)
    assert "upstream CA refused the request (badRequest)" in hp["detail"]


# -- 400: the URL is not a proxy URL ------------------------------------------------------------

CHALLENGE = "A" * 32


@pytest.mark.parametrize("identifier, reason", [
    ("", "missing identifier: expected hostUUID,profileUUID,caName,challenge"),
    ("h%2Cp%2CCA", "identifier must have 4 comma-separated parts (hostUUID,profileUUID,caName,challenge), got 3"),
    ("h%2C%2CCA%2C" + CHALLENGE, "identifier part profileUUID is empty"),
    ("h%21%2Cp%2CCA%2C" + CHALLENGE, "identifier part hostUUID must be 1-255 letters, digits, '.', '_' or '-'"),
    ("h%2Cp%2CC-A%2C" + CHALLENGE, "identifier part caName must be 1-255 letters, digits or underscores"),
    ("h%2Cp%2CCA%2Cshort", "identifier part challenge is not a well-formed challenge"),
    ("h%2Cp%2CCA%2C%zz", "identifier has a malformed percent-escape"),
    ("%ff%2Cp%2CCA%2C" + CHALLENGE, "identifier must be ASCII (path-escape it)"),
    ("%25ff%2Cp%2CCA%2C" + CHALLENGE, "identifier is not valid UTF-8"),  # the path is unescaped once on the way in
    ("h" * 2049, "identifier is too long"),
])
@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_a_proxy_url_is_400_with_its_reason(web, identifier, reason):
    answer = await web.device("GET", "/mdm/scep/proxy/%s?operation=GetCACaps" % (identifier,))
    assert (answer.status, answer.text) == (400, reason + "\n")
    assert answer.content_type.startswith(b"text/plain")


@pytest.mark.parametrize("query, reason", [
    ("", "missing operation parameter"),
    ("?operation=GetCRL", "unsupported operation; expected GetCACaps, GetCACert or PKIOperation"),
])
@pytest_twisted.ensureDeferred
async def test_not_a_scep_request_is_400(web, query, reason):
    e = await web.enrollment()
    answer = await web.device("GET", e.path + query)
    assert (answer.status, answer.text) == (400, reason + "\n")
    assert e.one_time_challenge not in answer.text


@pytest_twisted.ensureDeferred
async def test_unknown_host_profile_or_ca_get_one_and_the_same_answer(web):
    e = await web.enrollment()
    host, profile, ca, challenge = e.host, e.profile, e.ca, e.one_time_challenge
    variants = [
        ("nohost", profile, ca), (host, "noprofile", ca), (host, profile, "NO_CA"),
        (host, profile, web.builtin_ca.name),  # a CA that exists, but the profile does not use it
    ]
    for parts in variants:
        path = "/mdm/scep/proxy/" + "%2C".join(parts + (challenge,))
        for operation in ("GetCACaps", "PKIOperation"):
            answer = await web.device("POST", path + "?operation=" + operation, b"0")
            assert (answer.status, answer.body) == (400, b"unknown host, profile or CA\n"), parts
    # Nothing was spent: the device's real URL still enrolls.
    request = await web.pkcs_req(e)
    assert request.read(await web.device("POST", pki(e.path), request.message))[0] == "SUCCESS"


# -- 400: the one-time challenge ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_latest_challenge_expired_while_pending_sends_the_profile_again(web, clock):
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    clock.advance(TTL + 1)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (400, CHALLENGE_FAILED)
    assert await status_of(web, e) == (None, 0)  # the device was offline: no retry counted


@pytest_twisted.ensureDeferred
async def test_made_up_or_replayed_challenge_changes_nothing(web, logs):
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    forged = e.with_challenge("Z" * 43)
    answer = await web.device("POST", pki(forged), request.message)
    assert (answer.status, answer.body) == (400, CHALLENGE_FAILED)
    assert await status_of(web, e) == ("pending", 0)
    warning = [w for w in logs.warnings() if "stale proxy challenge" in w]
    assert warning and "reason=not_latest" in warning[0] and "Z" * 43 not in logs.text()
    # An older copy of the profile: fetching again re-renders, retiring the first challenge.
    commands = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
    assert commands == [] or all(e.one_time_challenge not in c["payload"] for c in commands)


@pytest_twisted.ensureDeferred
async def test_older_copy_of_the_profile_is_refused_and_changes_nothing(web):
    e = await web.enrollment()
    await web.ok(web.admin("POST", "/api/v1/host-profiles/%s/%s/resend" % (e.host, e.profile)))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (fresh,) = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
    assert e.one_time_challenge not in fresh["payload"]
    request = await web.pkcs_req(e)
    old = await web.device("POST", pki(e.path), request.message)
    assert (old.status, old.body) == (400, CHALLENGE_FAILED)
    assert await status_of(web, e) == ("pending", 0)


@pytest_twisted.ensureDeferred
async def test_valid_challenge_for_a_host_profile_no_longer_pending(web):
    e = await web.enrollment()
    await web.ok(web.agent("POST", e.host, "/commands/" + e.command, e.credential, {"status": "acknowledged"}))
    assert await status_of(web, e) == ("verifying", 0)
    request = await web.pkcs_req(e)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (400, b"host profile is not awaiting enrollment\n")
    assert await status_of(web, e) == ("verifying", 0)


# -- 400: no SCEP message; 405 ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_requests_without_a_scep_message_spend_nothing(web):
    e = await web.enrollment()
    refusals = [
        ("POST", pki(e.path), b"", "PKIOperation POST has an empty body"),
        ("GET", pki(e.path), None, "PKIOperation GET needs a message parameter"),
        ("GET", pki(e.path) + "&message=!!!!", None, "message parameter is not valid base64"),
        ("POST", pki(e.path), b"\x30\x03\x02\x01\x05", "PKIOperation message is not a CMS SignedData"),
    ]
    for method, path, body, reason in refusals:
        answer = await web.device(method, path, body)
        assert (answer.status, answer.text) == (400, reason + "\n")
    assert await status_of(web, e) == ("pending", 0)
    request = await web.pkcs_req(e)
    assert request.read(await web.device("POST", pki(e.path), request.message))[0] == "SUCCESS"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest_twisted.ensureDeferred
async def test_other_methods_are_405(web, method):
    e = await web.enrollment()
    answer = await web.device(method, pki(e.path), b"x")
    assert (answer.status, answer.body) == (405, b"SCEP uses GET or POST\n")
    assert answer.headers.getRawHeaders(b"Allow") == [b"GET, POST"]
    assert await status_of(web, e) == ("pending", 0)


# -- 408 / 413: on the listener's own connection ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_dribbled_past_request_timeout_is_408_and_closed(web, clock):
    e = await web.enrollment()
    protocol, transport = web.connection()
    protocol.dataReceived(b"GET " + pki(e.path).encode() + b" HTTP/1.1\r\n")
    waited, step = 0.0, web.settings.server.idle_timeout / 2  # each byte keeps the idle timeout away
    while waited <= web.settings.server.request_timeout:
        protocol.dataReceived(b"X")
        clock.advance(step)
        waited += step
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.value().endswith(b"\r\n\r\nrequest took too long to arrive\n")
    assert transport.disconnecting
    assert await status_of(web, e) == ("pending", 0)


def _head(path: str, *headers: bytes) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_declared_body_over_the_limit_is_413_at_once(web):
    e = await web.enrollment()
    limit = web.settings.server.max_body_bytes
    protocol, transport = web.connection()
    protocol.dataReceived(_head(pki(e.path), b"Content-Length: %d" % (limit + 1,)))
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert transport.value().endswith(b"request body larger than %d bytes\n" % (limit,))
    assert transport.disconnecting
    assert await status_of(web, e) == ("pending", 0)


@pytest_twisted.ensureDeferred
async def test_streamed_body_crossing_the_limit_is_cut_with_413(web):
    e = await web.enrollment()
    limit = web.settings.server.max_body_bytes
    protocol, transport = web.connection()
    protocol.dataReceived(_head(pki(e.path), b"Transfer-Encoding: chunked"))
    chunk = b"\x30" * 4096
    sent = 0
    while not transport.disconnecting:
        protocol.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sent += len(chunk)
        assert sent <= limit + len(chunk)
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert transport.value().endswith(b"request body larger than %d bytes\n" % (limit,))
    assert await status_of(web, e) == ("pending", 0)


# -- 502 / 504: the upstream CA ----------------------------------------------------------------------


async def _repoint(web, e, url):
    await web.ok(web.admin("PATCH", "/api/v1/cas/" + e.ca, {"url": url, "challenge": e.challenge_password}))


async def _retry_at_the_real_ca(web, e, request):
    """The device's retry once the CA is well again."""
    await _repoint(web, e, web.upstream_cas.url())
    return await web.device("POST", pki(e.path), request.message)


@pytest.mark.parametrize("how, reason, put_back", [
    ("http_500", "upstream CA failed (HTTP 500)", False),
    ("garbage", "upstream CA's answer is not a SCEP message", False),
    ("oversized", "upstream answer larger than 65536 bytes", False),
    ("cut", "upstream connection failed while sending its answer", False),
    ("malformed_http", "upstream CA sent a malformed HTTP answer", False),
    ("reset", "upstream CA unreachable (ResponseNeverReceived)", True),
])
@pytest_twisted.ensureDeferred
async def test_upstream_failure_is_502_and_the_challenge_is_put_back_only_if_the_ca_never_answered(
        web, how, reason, put_back):
    e = await web.enrollment(ca_url=web.upstream_cas.url(how))
    request = await web.pkcs_req(e)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.text) == (502, reason + "\n")
    assert web.upstream_cas.misbehaving[how].seen.count("PKIOperation") == 1
    retry = await _retry_at_the_real_ca(web, e, request)
    if put_back:
        assert request.read(retry)[0] == "SUCCESS"
        assert await status_of(web, e) == ("verifying", 0)
    else:
        assert (retry.status, retry.body) == (400, CHALLENGE_FAILED)


@pytest_twisted.ensureDeferred
async def test_getcacert_from_a_failing_ca_is_502(web, clock):
    e = await web.enrollment(ca_url=web.upstream_cas.url("http_500"))
    web.upstream_cas.misbehaving["http_500"].everything = True
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)  # the answer cached when the CA was added expires
    answer = await web.device("GET", e.path + "?operation=GetCACert")
    assert (answer.status, answer.body) == (502, b"upstream CA failed (HTTP 500)\n")


async def _until_the_ca_has_it(web, how, answer):
    ca = web.upstream_cas.misbehaving[how]
    while "PKIOperation" not in ca.seen and not answer.called:
        for stub in (web.device_stub, web.upstream_stub):
            stub.flush()
        await deferLater(reactor, 0.001, lambda: None)


@pytest.mark.parametrize("how, timeout, reason, put_back", [
    ("hang", "response_timeout", "upstream CA sent no answer in time", True),
    ("stall", "body_timeout", "upstream CA did not finish its answer in time", False),
])
@pytest_twisted.ensureDeferred
async def test_slow_upstream_is_504(web, clock, how, timeout, reason, put_back):
    e = await web.enrollment(ca_url=web.upstream_cas.url(how))
    request = await web.pkcs_req(e)
    answer = defer.ensureDeferred(web.device("POST", pki(e.path), request.message))
    await _until_the_ca_has_it(web, how, answer)
    clock.advance(getattr(web.settings.upstream, timeout) + 0.1)
    answer = await answer
    assert (answer.status, answer.text) == (504, reason + "\n")
    retry = await _retry_at_the_real_ca(web, e, request)
    if put_back:
        assert request.read(retry)[0] == "SUCCESS"
    else:
        assert (retry.status, retry.body) == (400, CHALLENGE_FAILED)


# -- 503: the daemon cannot write its database ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_503_spends_nothing_and_the_retry_enrolls(tmp_path, clock, small_tmpfs, fill_up):
    state = small_tmpfs(tmp_path / "state", "16m")
    database = migrated(state / "scepproxyd.sqlite")
    store = await started_store(database, reactor, clock)
    web = await build_web(store, clock, tmp_path, database=database)
    try:
        e = await web.enrollment()
        request = await web.pkcs_req(e)
        filler = fill_up(state)
        answer = await web.device("POST", pki(e.path), request.message)
        assert (answer.status, answer.text) == (
            503, "service unavailable: the proxy cannot write its database; try again later\n")
        filler.unlink()
        assert await status_of(web, e) == ("pending", 0)
        assert request.read(await web.device("POST", pki(e.path), request.message))[0] == "SUCCESS"
        assert await status_of(web, e) == ("verifying", 0)
    finally:
        await stop_web(web)
        await store.stop()
