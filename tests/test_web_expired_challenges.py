"""An offline device's expired challenge, through the daemon's real trees (support.web).

The device that comes back after ``[challenges] ttl`` hears what any refused
challenge hears; its host profile is sent again without a retry counted,
whether the device or the cleanup job finds the expiry first, with one info
line (never the challenge) and the figures in /metrics.
"""

import plistlib

import attrs
import pytest_twisted
from twisted.logger import formatEvent

from scepproxyd.store.challenges import EXPIRED_DETAIL
from support.store import TTL

PROXY = "scepproxyd_proxy_requests_total"
CHALLENGES = "scepproxyd_challenges_total"
RESENT = "one-time challenge expired unused; host profile sent again, no retry counted"


def pki(path: str) -> str:
    return path + "?operation=PKIOperation"


async def status_of(web, e) -> tuple:
    hp = await web.host_profile(e.host, e.profile)
    return hp["status"], hp["retries"], hp["detail"]


def lines(logs, text: str) -> list[str]:
    return [formatEvent(event) for event in logs.events if text in formatEvent(event)]


async def fetched_again(web, e):
    """The processing job runs and the agent fetches: the Enrollment the device holds now."""
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
    scep = plistlib.loads(command["payload"].encode("utf-8"))["PayloadContent"][0]["PayloadContent"]
    return attrs.evolve(e, payload=command["payload"], url=scep["URL"], command=command["command_uuid"])


@pytest_twisted.ensureDeferred
async def test_a_device_back_after_the_ttl_hears_the_same_and_gets_its_profile_again_without_a_retry(web, clock, logs):
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    made_up = await web.device("POST", pki(e.with_challenge("Z" * 43)), request.message)
    clock.advance(TTL + 1)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.content_type, answer.body) == (made_up.status, made_up.content_type, made_up.body)
    assert answer.body == b"custom scep challenge failed\n"
    assert await status_of(web, e) == (None, 0, EXPIRED_DETAIL)
    assert await web.metric(PROXY, operation="PKIOperation", outcome="challenge_expired") == 1
    assert await web.metric(CHALLENGES, event="expired_resent") == 1
    (line,) = lines(logs, RESENT)
    assert line.endswith("host=%s profile=%s ca=%s waited=%ds found_by=device" % (e.host, e.profile, e.ca, TTL + 1))
    assert e.one_time_challenge not in logs.text()
    # The next run sends it with a fresh challenge, which enrolls.
    fresh = await fetched_again(web, e)
    assert fresh.one_time_challenge != e.one_time_challenge
    request = await web.pkcs_req(fresh)
    assert request.read(await web.device("POST", pki(fresh.path), request.message))[0] == "SUCCESS"
    assert (await status_of(web, e))[:2] == ("verifying", 0)


@pytest_twisted.ensureDeferred
async def test_the_cleanup_job_sends_an_offline_devices_profile_again_once(web, clock, logs):
    e = await web.enrollment()
    clock.advance(TTL + 1)
    result = (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]
    assert result == {"expired_challenges_removed": 1, "expired_profiles_resent": 1, "finished_commands_removed": 0,
                      "stuck_deliveries_resent": 0}
    assert await status_of(web, e) == (None, 0, EXPIRED_DETAIL)
    assert await web.metric(CHALLENGES, event="expired_resent") == 1
    (line,) = lines(logs, RESENT)
    assert line.endswith("host=%s profile=%s ca=%s waited=%ds found_by=cleanup" % (e.host, e.profile, e.ca, TTL + 1))
    assert e.one_time_challenge not in logs.text()
    # A second run finds nothing more to send; the device's late request changes nothing either.
    result = (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]
    assert (result["expired_challenges_removed"], result["expired_profiles_resent"]) == (0, 0)
    request = await web.pkcs_req(e)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (400, b"custom scep challenge failed\n")
    assert await web.metric(PROXY, operation="PKIOperation", outcome="challenge_stale") == 1
    assert await status_of(web, e) == (None, 0, EXPIRED_DETAIL)
    assert await web.metric(CHALLENGES, event="expired_resent") == 1
    assert len(lines(logs, RESENT)) == 1


@pytest_twisted.ensureDeferred
async def test_an_enrolled_host_profile_is_left_alone(web, clock):
    e = await web.enrollment()
    request = await web.pkcs_req(e)
    assert request.read(await web.device("POST", pki(e.path), request.message))[0] == "SUCCESS"
    clock.advance(TTL + 1)
    result = (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]
    assert (result["expired_challenges_removed"], result["expired_profiles_resent"]) == (0, 0)
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (400, b"custom scep challenge failed\n")
    assert (await status_of(web, e))[:2] == ("verifying", 0)
