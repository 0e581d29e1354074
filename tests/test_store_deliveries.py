"""A host profile's lifecycle as Fleet shows it, and deliveries stuck after the agent fetched them.

The lifecycle (pending, delivering, delivered, verified, failed) is read from
the host profile and its current command: list_host_profiles carries the
command's status. A host profile its agent fetched and never reported on
goes back to NULL after ``stuck_after`` seconds, every challenge it was given
retired, without a retry; only once, whichever node finds it.
"""

import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.delivery.lifecycle import lifecycle
from scepproxyd.store import deliveries as deliveries_module
from scepproxyd.store.deliveries import STUCK_DETAIL
from scepproxyd.store.models import ResentHostProfile, challenge_hash
from support.store import CA, HOST, PROFILE, assign_to, claim_all, raw, seed, started_store

STUCK_AFTER = 12 * 3600.0


async def lifecycle_of(s, host=HOST, profile=PROFILE) -> str:
    (hp,) = await s.list_host_profiles(host_uuid=host, profile_uuid=profile)
    return lifecycle(hp.status, hp.command_status)


def count(s, table, host=HOST) -> int:
    return raw(s).execute("SELECT COUNT(*) FROM %s WHERE host_uuid = ?" % (table,), (host,)).fetchone()[0]


async def fetched(s):
    """What an agent's fetch leaves: the command delivered, a proxy and a built-in CA challenge minted."""
    (command,) = (await claim_all(s)).values()
    await s.command_delivered(command.command_uuid)
    challenge = await s.issue_challenge(HOST, PROFILE)
    await s.issue_host_profile_ca_challenge(HOST, PROFILE, challenge_hash("ca-challenge"), "default")
    return command, challenge


@pytest_twisted.ensureDeferred
async def test_lifecycle_follows_the_host_profile_and_its_command(store):
    await seed(store)
    assert await lifecycle_of(store) == "pending"  # assigned, not claimed yet
    (command,) = (await claim_all(store)).values()
    assert await lifecycle_of(store) == "pending"  # claimed, waiting for the agent
    await store.command_delivered(command.command_uuid)
    assert await lifecycle_of(store) == "delivering"  # the agent has it
    await store.command_result(command.command_uuid, ok=True)
    assert await lifecycle_of(store) == "delivered"  # acknowledged: verifying
    await store.set_host_profile_status(HOST, PROFILE, "verified")
    assert await lifecycle_of(store) == "verified"
    await store.set_host_profile_status(HOST, PROFILE, "failed", "CA said no")
    assert await lifecycle_of(store) == "failed"


@pytest_twisted.ensureDeferred
async def test_a_delivery_stuck_past_stuck_after_is_sent_again_with_its_challenges_retired(store, clock):
    await seed(store)
    command, _ = await fetched(store)
    clock.advance(STUCK_AFTER)
    assert await store.recover_stuck_deliveries(STUCK_AFTER) == ()  # exactly at the limit it is not stuck yet
    clock.advance(1)
    assert await store.recover_stuck_deliveries(STUCK_AFTER) == (
        ResentHostProfile(HOST, PROFILE, CA, STUCK_AFTER + 1),)
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail) == (None, 0, STUCK_DETAIL)
    assert await lifecycle_of(store) == "pending"
    # The copy the agent holds cannot enroll: no proxy challenge, no built-in CA challenge.
    assert (count(store, "challenges"), count(store, "ca_challenges")) == (0, 0)
    assert (await store.get_command(command.command_uuid)).status == "superseded"
    # The old command's late report changes nothing; the next claim sends a new command.
    after = await store.command_result(command.command_uuid, ok=True, host_uuid=HOST)
    assert (after.status, after.retries) == (None, 0)
    (again,) = (await claim_all(store)).values()
    assert again.command_uuid != command.command_uuid
    assert await store.recover_stuck_deliveries(STUCK_AFTER) == ()


@pytest_twisted.ensureDeferred
async def test_what_is_not_stuck_is_left_alone(store, clock):
    await seed(store)
    await assign_to(store, ("queued", "acknowledged", "enrolling", "errored"))
    commands = await claim_all(store)
    for host in ("acknowledged", "enrolling", "errored"):
        await store.command_delivered(commands[(host, PROFILE)].command_uuid)
    await store.command_result(commands[("acknowledged", PROFILE)].command_uuid, ok=True)
    await store.command_result(commands[("errored", PROFILE)].command_uuid, ok=False, detail="no")
    # A device enrolling right now holds its challenge in flight.
    challenge = await store.issue_challenge("enrolling", PROFILE)
    assert await store.consume_challenge(challenge, "enrolling", PROFILE) is not None
    await store.command_delivered(commands[(HOST, PROFILE)].command_uuid)
    before = {hp.host_uuid: hp for hp in await store.list_host_profiles()}
    clock.advance(STUCK_AFTER + 1)
    assert [hp.host_uuid for hp in await store.recover_stuck_deliveries(STUCK_AFTER)] == [HOST]
    after = {hp.host_uuid: hp for hp in await store.list_host_profiles()}
    assert {h: after[h] for h in after if h != HOST} == {h: before[h] for h in before if h != HOST}


@pytest_twisted.ensureDeferred
async def test_two_nodes_recovering_at_once_send_each_again_once(database, store, clock):
    await seed(store)
    hosts = [HOST, "host-2", "host-3"]
    await assign_to(store, hosts[1:])
    for command in (await claim_all(store)).values():
        await store.command_delivered(command.command_uuid)
    target, password = database
    other = await started_store(target, reactor, clock, password=password)  # a second node on the database
    try:
        clock.advance(STUCK_AFTER + 1)
        results = await defer.gatherResults(
            [store.recover_stuck_deliveries(STUCK_AFTER), other.recover_stuck_deliveries(STUCK_AFTER)])
        assert sorted(hp.host_uuid for r in results for hp in r) == hosts
        assert await other.recover_stuck_deliveries(STUCK_AFTER) == ()
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_recovery_works_in_batches_and_reports_each(store, clock, monkeypatch):
    monkeypatch.setattr(deliveries_module, "_BATCH", 2)
    await seed(store)
    hosts = [HOST] + ["host-%d" % i for i in range(2, 6)]
    await assign_to(store, hosts[1:])
    for command in (await claim_all(store)).values():
        await store.command_delivered(command.command_uuid)
        clock.advance(1)
    clock.advance(STUCK_AFTER)
    batches = []
    resent = await store.recover_stuck_deliveries(STUCK_AFTER, on_resent=batches.append)
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert sorted(hp.host_uuid for hp in resent) == sorted(hosts)


@pytest_twisted.ensureDeferred
async def test_an_earlier_attempts_reason_is_not_shown_once_handed_over_again(store):
    """Fleet shows a stale failure detail on a re-delivered template (fleet#52288); here the claim clears it."""
    await seed(store)
    (command,) = (await claim_all(store)).values()
    await store.command_delivered(command.command_uuid)
    failed = await store.command_result(command.command_uuid, ok=False, detail="SCEP server unreachable")
    assert (failed.status, failed.detail) == (None, "device reported an error: SCEP server unreachable")
    assert await lifecycle_of(store) == "pending"
    (command,) = (await claim_all(store)).values()
    await store.command_delivered(command.command_uuid)
    (hp,) = await store.list_host_profiles()
    assert (lifecycle(hp.status, hp.command_status), hp.detail) == ("delivering", None)
    await store.command_result(command.command_uuid, ok=True)
    (hp,) = await store.list_host_profiles()
    assert (lifecycle(hp.status, hp.command_status), hp.detail) == ("delivered", None)


@pytest_twisted.ensureDeferred
async def test_the_lifecycle_filter_agrees_with_the_lifecycle_of_every_state(store):
    await seed(store)
    hosts = ["null", "queued", "delivering", "delivered", "verified", "failed"]
    await assign_to(store, hosts)
    commands = await claim_all(store)
    await store.set_host_profile_status("null", PROFILE, None)
    for host in ("delivering", "delivered"):
        await store.command_delivered(commands[(host, PROFILE)].command_uuid)
    await store.command_result(commands[("delivered", PROFILE)].command_uuid, ok=True)
    await store.set_host_profile_status("verified", PROFILE, "verified")
    await store.set_host_profile_status("failed", PROFILE, "failed", "CA said no")
    every = await store.list_host_profiles()
    for word in ("pending", "delivering", "delivered", "verified", "failed"):
        filtered = [hp.host_uuid for hp in await store.list_host_profiles(lifecycle=word)]
        assert filtered == [hp.host_uuid for hp in every if lifecycle(hp.status, hp.command_status) == word], word
    assert [hp.host_uuid for hp in await store.list_host_profiles(lifecycle="pending")] == [HOST, "null", "queued"]
