"""Adversarial: races on the one-time challenge and on the processing job.

The daemon runs as the README runs it, in front of a real micromdm
scepserver; everything is set up and driven through the admin and agent
APIs. Concurrency comes from treq in the test's reactor (64 requests in
flight at once), and for the processing job also from a second daemon
sharing the same database, which the README says is safe.
"""

import base64
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, threads

from support.certs import signed_blob
from support.api import apis
from support.hostile import assert_log_clean, db
from support.site import add_ca, challenge_from_url, enrollment_url, upload_profile
from support.daemon import Daemon
from support.upstream import CHALLENGE as STATIC

# Small batches, so a processing run is many transactions that others can interleave with.
pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h", "batch_size": "25"})
CHALLENGE_FAILED = "custom scep challenge failed\n"


@pytest.fixture(scope="module", autouse=True)
def race_ca(module_daemon, module_upstream):
    """RACE_CA on the module's scepserver."""
    admin, _ = apis(module_daemon)
    add_ca(admin, "RACE_CA", module_upstream.url, STATIC)


@pytest_twisted.ensureDeferred
async def test_64_concurrent_pkioperations_one_challenge_one_upstream_request(module_daemon, module_upstream):
    admin, agent = apis(module_daemon)
    url, profile = enrollment_url(admin, agent, "RACE_CA", "race-host-1")
    challenge = challenge_from_url(url)
    caps = await treq.get(url + "?operation=GetCACaps")  # cached: all 64 go straight to spending
    assert caps.code == 200
    await caps.content()
    before = module_upstream.operations("PKIOperation")

    blob = signed_blob()
    get_url = url + "?operation=PKIOperation&message=" + quote(base64.b64encode(blob).decode(), safe="")
    requests = [treq.post(url + "?operation=PKIOperation", data=blob) for _ in range(48)]
    requests += [treq.get(get_url) for _ in range(16)]
    responses = await defer.gatherResults(requests, consumeErrors=True)
    bodies = await defer.gatherResults([r.text() for r in responses])
    answers = sorted(zip((r.code for r in responses), bodies))

    assert module_upstream.operations("PKIOperation") - before == 1
    refused = [a for a in answers if a == (400, CHALLENGE_FAILED)]
    assert len(refused) == 63, answers
    (winner,) = [a for a in answers if a != (400, CHALLENGE_FAILED)]
    # scepserver cannot decrypt a blob that is not a SCEP request; what matters is that it got there once.
    assert winner[0] in (200, 502), winner
    assert challenge not in "".join(bodies)
    # The spent challenge stays spent.
    replay = await treq.post(url + "?operation=PKIOperation", data=blob)
    assert (replay.code, await replay.text()) == (400, CHALLENGE_FAILED)
    assert module_upstream.operations("PKIOperation") - before == 1
    # Losers that came while the winner's request was in flight moved nothing; the first refusal after
    # its answer (the host profile still pending, its latest challenge spent) sends it again, once.
    (row,) = admin.call("GET", "/api/v1/host-profiles?host=race-host-1&profile=%s" % (profile,))["host_profiles"]
    assert (row["status"], row["retries"]) == (None, 1), row
    assert admin.call("POST", "/api/v1/jobs/process_profiles")["result"]["claimed"] == 1
    assert_log_clean(module_daemon, [challenge, STATIC])


def seed_null_host_profiles(admin, prefix: str, hosts: int, profiles: list[str]) -> list[str]:
    names = ["%s-%04d" % (prefix, i) for i in range(hosts)]
    admin.call("POST", "/api/v1/hosts/import",
               [{"uuid": n, "serial": "S" + n, "platform": "macos"} for n in names])
    for profile in profiles:
        assert admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": names}) == {"assigned": hosts}
    return names


def check_one_current_command_each(module_daemon, hosts: list[str], profiles: list[str]) -> None:
    """Every host profile is pending with exactly one outstanding command, and it is the current one."""
    marks = ",".join("?" * len(profiles))
    with db(module_daemon) as conn:
        rows = conn.execute(
            "SELECT hp.host_uuid, hp.status, hp.command_uuid,"
            " (SELECT count(*) FROM commands c WHERE c.host_uuid = hp.host_uuid AND c.profile_uuid = hp.profile_uuid),"
            " (SELECT count(*) FROM commands c WHERE c.command_uuid = hp.command_uuid AND c.status = 'queued')"
            " FROM host_profiles hp WHERE hp.profile_uuid IN (%s)" % marks, profiles,
        ).fetchall()
    assert len(rows) == len(hosts) * len(profiles)
    bad = [r for r in rows if r[1] != "pending" or r[2] is None or r[3] != 1 or r[4] != 1]
    assert not bad, bad[:10]


async def agent_fetch_all(module_daemon, agent, hosts, profiles):
    """Every host's agent fetches at once, with its own credential; each gets exactly one command per host profile."""
    await threads.deferToThread(agent.issue_bulk, hosts)
    limit = defer.DeferredSemaphore(16)

    async def fetch(host):
        token = {b"Authorization": [b"Bearer " + agent.credential(host).encode()]}
        response = await treq.get(module_daemon.url + "/api/v1/agent/hosts/%s/commands" % (host,), headers=token)
        assert response.code == 200
        return host, await response.json()

    answers = await defer.gatherResults([limit.run(lambda h=h: defer.ensureDeferred(fetch(h))) for h in hosts])
    with db(module_daemon) as conn:
        current = dict(((h, p), c) for h, p, c in conn.execute(
            "SELECT host_uuid, profile_uuid, command_uuid FROM host_profiles"))
    for host, answer in answers:
        got = sorted((c["profile_uuid"], c["command_uuid"]) for c in answer["commands"])
        assert got == sorted((p, current[(host, p)]) for p in profiles), (host, answer)


@pytest_twisted.ensureDeferred
async def test_concurrent_processing_triggers_deliver_each_host_profile_once(module_daemon):
    admin, agent = apis(module_daemon)
    profiles = [upload_profile(admin, "RACE_CA", "race.wifi.%d" % i) for i in range(2)]
    hosts = seed_null_host_profiles(admin, "burst", 250, profiles)
    headers = {b"Authorization": [b"Bearer " + module_daemon.admin_token.encode()]}

    triggers = [treq.post(module_daemon.admin_url + "/api/v1/jobs/process_profiles", headers=headers) for _ in range(8)]
    responses = await defer.gatherResults(triggers)
    assert [r.code for r in responses] == [200] * 8
    results = await defer.gatherResults([r.json() for r in responses])
    assert sum(r["result"]["claimed"] for r in results) == 500
    assert all(r["result"]["failed"] == 0 for r in results)

    check_one_current_command_each(module_daemon, hosts, profiles)
    await agent_fetch_all(module_daemon, agent, hosts, profiles)
    assert_log_clean(module_daemon, [STATIC])


@pytest_twisted.ensureDeferred
async def test_two_daemons_sharing_one_database_never_claim_twice(module_daemon, tmp_path):
    """The README: 'several daemons could share one database'. Both run the job at once, in small batches."""
    admin, agent = apis(module_daemon)
    second = Daemon(tmp_path, state={"directory": str(module_daemon.directory / "state")},
                    profiles={"process_interval": "1h", "batch_size": "25"}).start()
    try:
        profiles = [upload_profile(admin, "RACE_CA", "race.shared.%d" % i) for i in range(2)]
        hosts = seed_null_host_profiles(admin, "shared", 250, profiles)
        headers = {b"Authorization": [b"Bearer " + module_daemon.admin_token.encode()]}
        triggers = []
        for _ in range(4):
            for d in (module_daemon, second):
                triggers.append(treq.post(d.admin_url + "/api/v1/jobs/process_profiles", headers=headers))
        responses = await defer.gatherResults(triggers)
        assert [r.code for r in responses] == [200] * 8
        results = await defer.gatherResults([r.json() for r in responses])
        assert sum(r["result"]["claimed"] for r in results) == 500

        check_one_current_command_each(module_daemon, hosts, profiles)
        await agent_fetch_all(module_daemon, agent, hosts, profiles)
    finally:
        second.stop()
    assert_log_clean(second, [STATIC])
    assert "database is locked" not in module_daemon.log() + second.log()
