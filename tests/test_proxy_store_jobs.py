"""A passthrough PKIOperation costs one store job before the upstream call and one after, whatever the CA says.

On PostgreSQL each store job is several network round trips (pool check,
BEGIN, statements, COMMIT), so the proxy reads the host profile, spends the
challenge and records it in flight in one job (begin_enrollment), and
settles it in one more (finish_enrollment). The tests record the store's jobs
(``Database._submit``) and the upstream PKIOperation in the order they happen.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor

from scepproxyd.scep.upstream import UpstreamClient
from support.store import migrated, raw, started_store
from support.web import build_web, stop_web

CHALLENGE_FAILED = b"custom scep challenge failed\n"
SENT, ANSWERED = "upstream: sent", "upstream: answered"


@pytest.fixture
def events(web, monkeypatch):
    """Store jobs (by name) and the upstream PKIOperation (sent, answered), in order; clear it to start afresh."""
    recorded = []
    submit = web.store._submit

    def recording_submit(fn, *args, **kwargs):
        recorded.append(fn.__name__)
        return submit(fn, *args, **kwargs)

    pki_operation = UpstreamClient.pki_operation

    def recording_pki_operation(self, *args, **kwargs):
        recorded.append(SENT)
        return pki_operation(self, *args, **kwargs).addBoth(lambda result: recorded.append(ANSWERED) or result)

    monkeypatch.setattr(web.store, "_submit", recording_submit)
    monkeypatch.setattr(UpstreamClient, "pki_operation", recording_pki_operation)
    return recorded


def around_the_upstream_call(events) -> tuple:
    """``(jobs before, jobs while the CA works, jobs after)``."""
    sent, answered = events.index(SENT), events.index(ANSWERED)
    return events[:sent], events[sent + 1:answered], events[answered + 1:]


def pki(e) -> str:
    return e.path + "?operation=PKIOperation"


async def after_a_first_enrollment(web, **enrollment):
    """
    A second host profile of a CA through which a first host enrolled since the last admin change.

    The proxy then knows the CA's URL (it learns it from the store, and
    forgets it at every admin change on this node); ``enrollment`` names the CA.
    """
    first = await web.enrollment(host="HOST-A", **enrollment)
    second = await web.enrollment(host="HOST-B", identifier="Fleet.WiFi.B", **enrollment)
    await web.device("POST", pki(first), (await web.pkcs_req(first)).message)
    return second


@pytest.mark.parametrize("cn, challenge, pki_status, status", [
    (None, None, "SUCCESS", "verifying"),
    ("held-device", None, "PENDING", "pending"),
    (None, "not-the-static-challenge", "FAILURE", None),
])
@pytest_twisted.ensureDeferred
async def test_one_job_before_and_one_after_the_upstream_call(web, events, cn, challenge, pki_status, status):
    e = await after_a_first_enrollment(web)
    request = await web.pkcs_req(e, cn=cn, challenge=challenge)
    del events[:]
    assert request.read(await web.device("POST", pki(e), request.message))[0] == pki_status
    assert around_the_upstream_call(events) == (["begin_enrollment"], [], ["finish_enrollment"])
    assert (await web.host_profile(e.host, e.profile))["status"] == status


@pytest_twisted.ensureDeferred
async def test_one_job_after_a_ca_that_never_answered(web, events):
    e = await after_a_first_enrollment(web, ca="BROKEN_CA", ca_url=web.upstream_cas.url("reset"))
    request = await web.pkcs_req(e)
    restored = await web.metric("scepproxyd_challenges_total", event="restored")
    del events[:]
    answer = await web.device("POST", pki(e), request.message)
    assert (answer.status, answer.text) == (502, "upstream CA unreachable (ResponseNeverReceived)\n")
    assert around_the_upstream_call(events) == (["begin_enrollment"], [], ["finish_enrollment"])
    assert await web.metric("scepproxyd_challenges_total", event="restored") == restored + 1


@pytest_twisted.ensureDeferred
async def test_a_refused_challenge_or_a_host_profile_not_pending_costs_one_job_and_no_upstream_call(web, events):
    e = await after_a_first_enrollment(web)
    request = await web.pkcs_req(e)
    del events[:]
    forged = await web.device("POST", e.with_challenge("Z" * 43) + "?operation=PKIOperation", request.message)
    assert (forged.status, forged.body) == (400, CHALLENGE_FAILED)
    assert events == ["begin_enrollment"]

    await web.ok(web.agent("POST", e.host, "/commands/" + e.command, e.credential, {"status": "acknowledged"}))
    assert (await web.host_profile(e.host, e.profile))["status"] == "verifying"
    del events[:]
    answer = await web.device("POST", pki(e), request.message)
    assert (answer.status, answer.body) == (400, b"host profile is not awaiting enrollment\n")
    assert events == ["begin_enrollment"]


# -- the CA's URL is a guess, checked in the job that spends --------------------------------------


def behind_the_proxys_back(web, sql: str, *params) -> None:
    """A change another node sharing the database would make: this node's proxy is not told."""
    conn = raw(web.store)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest_twisted.ensureDeferred
async def test_the_first_pkioperation_after_an_admin_change_reads_the_target_first(web, events):
    e = await after_a_first_enrollment(web)
    request = await web.pkcs_req(e)
    await web.ok(web.admin("PUT", "/api/v1/hosts/HOST-Z", {"serial": "SER-Z", "platform": "macos"}))
    del events[:]
    assert request.read(await web.device("POST", pki(e), request.message))[0] == "SUCCESS"
    assert around_the_upstream_call(events) == (["proxy_target", "begin_enrollment"], [], ["finish_enrollment"])


@pytest_twisted.ensureDeferred
async def test_a_ca_moved_on_another_node_is_followed_and_the_challenge_spent_once(web, events):
    e = await after_a_first_enrollment(web)
    request = await web.pkcs_req(e)
    moved = web.upstream_cas.url("well")  # the same CA, at another URL
    behind_the_proxys_back(web, "UPDATE cas SET url = ? WHERE name = ?", moved, e.ca)
    del events[:]
    assert request.read(await web.device("POST", pki(e), request.message))[0] == "SUCCESS"
    # The first begin_enrollment found another URL and spent nothing; the second spent for the new one.
    assert around_the_upstream_call(events) == (["begin_enrollment", "begin_enrollment"], [], ["finish_enrollment"])
    assert web.upstream_cas.misbehaving["well"].seen == ["GetCACaps", "PKIOperation"]
    assert (await web.host_profile(e.host, e.profile))["status"] == "verifying"


@pytest_twisted.ensureDeferred
async def test_a_guessed_url_whose_ca_is_down_is_looked_up_again(web, events, clock):
    e = await after_a_first_enrollment(web, ca_url=web.upstream_cas.url("well"))
    request = await web.pkcs_req(e)
    old = web.upstream_cas.misbehaving["well"]
    old.how, old.everything = "reset", True  # down, GetCACaps too
    behind_the_proxys_back(web, "UPDATE cas SET url = ? WHERE name = ?", web.upstream_cas.url(), e.ca)
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)  # its capabilities are asked again
    seen = len(old.seen)
    del events[:]
    assert request.read(await web.device("POST", pki(e), request.message))[0] == "SUCCESS"
    assert around_the_upstream_call(events) == (["proxy_target", "begin_enrollment"], [], ["finish_enrollment"])
    assert set(old.seen[seen:]) == {"GetCACaps"}  # asked at the guessed URL, which failed; nothing sent there


@pytest_twisted.ensureDeferred
async def test_a_ca_switched_to_ra_mode_on_another_node_goes_to_the_ra_flow_unspent(web, events):
    e = await after_a_first_enrollment(web)
    request = await web.pkcs_req(e)
    behind_the_proxys_back(web, "UPDATE cas SET mode = 'ra' WHERE name = ?", e.ca)
    del events[:]
    answer = await web.device("POST", pki(e), request.message)
    # What the RA flow says of a CA in RA mode without an RA identity, as when the store was read first.
    assert (answer.status, answer.text) == (502, "the CA integration has no RA identity; save it again in ra mode\n")
    assert events[0] == "begin_enrollment" and SENT not in events
    assert await web.store.consume_challenge(e.one_time_challenge, e.host, e.profile) is not None


@pytest_twisted.ensureDeferred
async def test_a_full_disk_still_gives_an_unknown_identifier_its_one_answer(tmp_path, clock, small_tmpfs, fill_up):
    """begin_enrollment is a write job; for an unknown identifier it writes nothing, so it commits on a full disk."""
    state = small_tmpfs(tmp_path / "state", "16m")
    database = migrated(state / "scepproxyd.sqlite")
    store = await started_store(database, reactor, clock)
    web = await build_web(store, clock, tmp_path, database=database)
    try:
        e = await after_a_first_enrollment(web)
        request = await web.pkcs_req(e)
        unknown = e.with_challenge(e.one_time_challenge).replace(e.host, "NO-SUCH-HOST", 1)
        filler = fill_up(state)
        answer = await web.device("POST", unknown + "?operation=PKIOperation", request.message)
        assert (answer.status, answer.body) == (400, b"unknown host, profile or CA\n")
        answer = await web.device("POST", pki(e), request.message)
        assert answer.status == 503
        filler.unlink()
        assert request.read(await web.device("POST", pki(e), request.message))[0] == "SUCCESS"
    finally:
        await stop_web(web)
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_ca_down_at_the_remembered_url_is_asked_once_and_the_challenge_kept(web, events, clock):
    e = await after_a_first_enrollment(web, ca_url=web.upstream_cas.url("well"))
    request = await web.pkcs_req(e)
    ca = web.upstream_cas.misbehaving["well"]
    ca.how, ca.everything = "reset", True
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)  # its capabilities are asked again
    seen = len(ca.seen)
    caps = await web.device("GET", e.path + "?operation=GetCACaps")
    assert caps.status == 502
    asked_once = len(ca.seen) - seen  # what one GetCACaps costs the CA (a dead pooled connection is retried)
    seen = len(ca.seen)
    del events[:]
    answer = await web.device("POST", pki(e), request.message)
    assert (answer.status, answer.text) == (502, caps.text)
    assert ca.seen[seen:] == ["GetCACaps"] * asked_once
    assert events == ["proxy_target"]  # the store still names that URL: nothing spent, nothing to put back
    assert await web.store.consume_challenge(e.one_time_challenge, e.host, e.profile) is not None
