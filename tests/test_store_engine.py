"""Tests for the profile engine's storage: claiming, commands, device reports, renewal and cleanup."""

import hashlib
import time
import uuid
from importlib import resources

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.store.models import challenge_hash
from scepproxyd.store import (
    ChallengeRefusal,
    ClaimResult,
    Command,
    DuplicateError,
    HostProfile,
    NotFoundError,
    RenderJob,
    Store,
    StoreError,
)
from scepproxyd.store import commands as commands_module
from scepproxyd.store import database as database_module
from support.store import (
    BACKENDS,
    CA,
    EPOCH,
    RENEWAL_ID,
    SCHEMA_VERSION,
    TTL,
    claim_all,
    make_clock,
    raw,
    refuse_latest,
    refused_by_schema,
    without_foreign_keys,
)

DAY = 86400.0
MAC, ANDROID = "mac-profile", "android-profile"


async def fleet(store, clock, macs=("m1", "m2"), androids=("a1",)):
    """A CA with a sealed challenge, a macOS and an Android profile using it, assigned to every host."""
    await store.add_ca(CA, "https://ca.example/scep", b"sealed")
    await store.add_profile(MAC, "Mac cert", "macos", b"<plist/>", CA, identifier="com.example.wifi")
    await store.add_profile(ANDROID, "Android cert", "android", b"{}", CA, kind="android_template", identifier="wifi")
    await store.import_hosts([(h, None, "macos") for h in macs] + [(h, None, "android") for h in androids])
    for host in macs:
        await store.assign_profile(host, MAC)
        clock.advance(1)
    for host in androids:
        await store.assign_profile(host, ANDROID)
        clock.advance(1)


def commands_table(store):
    return raw(store).execute(
        "SELECT host_uuid, profile_uuid, backend, status FROM commands ORDER BY created_at, host_uuid"
    ).fetchall()


@pytest_twisted.async_yield_fixture
async def strict_store(database, clock):
    """A store that gives up after one retry."""
    target, password = database
    s = Store(target, reactor, clock=clock, challenge_ttl=TTL, max_retries=1, password=password)
    await s.start()
    yield s
    await s.stop()


def test_max_retries_must_be_a_whole_number(database):
    target, password = database
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="max_retries must be a non-negative integer"):
            Store(target, reactor, max_retries=bad, password=password)


# -- claim_host_profiles -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_claim_makes_pending_host_profiles_with_queued_commands(store, clock):
    await fleet(store, clock)
    await store.set_host_profile_status("m1", MAC, "pending")
    assert (await refuse_latest(store, "m1", MAC, "earlier trouble")).counted  # detail is cleared by the claim
    clock.advance(10)
    now = clock.seconds()
    result = await store.claim_host_profiles(10, BACKENDS)
    assert isinstance(result, ClaimResult) and result.failed == ()
    by_host = {c.host_uuid: c for c in result.claimed}
    assert set(by_host) == {"m1", "m2", "a1"}
    assert (by_host["m1"].backend, by_host["a1"].backend) == ("nanomdm", "outbox")
    for command in result.claimed:
        assert str(uuid.UUID(command.command_uuid)) == command.command_uuid
        assert command == Command(
            command.command_uuid, command.host_uuid, command.profile_uuid, command.backend, "queued", None, 0, now, now, now
        )
        assert await store.get_command(command.command_uuid) == command
        hp = await store.get_host_profile(command.host_uuid, command.profile_uuid)
        assert (hp.status, hp.detail, hp.command_uuid, hp.updated_at) == ("pending", None, command.command_uuid, now)
    assert (await store.get_host_profile("m1", MAC)).retries == 1  # claiming does not reset retries
    assert len({c.command_uuid for c in result.claimed}) == 3
    assert await store.claim_host_profiles(10, BACKENDS) == ClaimResult((), ())


@pytest_twisted.ensureDeferred
async def test_claim_respects_limit_oldest_first(store, clock):
    await fleet(store, clock, macs=("m1", "m2", "m3", "m4", "m5"), androids=())
    await store.set_host_profile_status("m1", MAC, None)  # touched last: now the newest
    batches = []
    while True:
        result = await store.claim_host_profiles(2, BACKENDS)
        if not result.claimed:
            break
        assert len(result.claimed) <= 2
        batches.append(sorted(c.host_uuid for c in result.claimed))
    assert batches == [["m2", "m3"], ["m4", "m5"], ["m1"]]


@pytest_twisted.ensureDeferred
async def test_claim_is_exclusive_across_daemons(database, clock):
    """Two stores on one database (as two daemons would be), claiming at once, never share a row."""
    target, password = database
    first = Store(target, reactor, clock=clock, password=password)
    second = Store(target, reactor, clock=clock, password=password)
    await first.start()
    await second.start()
    try:
        await fleet(first, clock, macs=[f"m{i:02}" for i in range(50)], androids=())
        results = await defer.gatherResults(
            [store.claim_host_profiles(15, BACKENDS) for store in (first, second, first, second)]
        )
        claimed = [(c.host_uuid, c.profile_uuid) for result in results for c in result.claimed]
        assert all(len(result.claimed) <= 15 for result in results)
        assert len(claimed) == len(set(claimed)) == 50
        assert raw(first).execute("SELECT COUNT(*) FROM commands").fetchone()[0] == 50
    finally:
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_claim_two_calls_return_disjoint_sets(store, clock):
    await fleet(store, clock, macs=[f"m{i:02}" for i in range(50)], androids=())
    one, two = await defer.gatherResults(
        [store.claim_host_profiles(30, BACKENDS), store.claim_host_profiles(30, BACKENDS)]
    )
    first = {c.host_uuid for c in one.claimed}
    second = {c.host_uuid for c in two.claimed}
    # On PostgreSQL the two run at once (several DB threads), so either may come first.
    assert sorted([len(one.claimed), len(two.claimed)]) == [20, 30]
    assert first.isdisjoint(second) and len(first | second) == 50


@pytest_twisted.ensureDeferred
async def test_claim_fails_host_profiles_whose_ca_is_gone(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    await store.add_profile("no-ca", "Plain", "macos", b"<plist/>", None)
    await store.assign_profile("m1", "no-ca")
    conn = without_foreign_keys(store)  # the state a later bug or hand edit could leave
    conn.execute("DELETE FROM cas WHERE name = ?", (CA,))
    conn.commit()
    clock.advance(5)
    result = await store.claim_host_profiles(10, BACKENDS)
    assert result.failed == (("m1", MAC, "CA 'acme' no longer exists"),)
    assert [(c.host_uuid, c.profile_uuid) for c in result.claimed] == [("m1", "no-ca")]
    hp = await store.get_host_profile("m1", MAC)
    assert (hp.status, hp.detail, hp.command_uuid, hp.updated_at) == ("failed", "CA 'acme' no longer exists", None, EPOCH + 6)
    assert commands_table(store) == [("m1", "no-ca", "nanomdm", "queued")]
    assert await store.claim_host_profiles(10, BACKENDS) == ClaimResult((), ())


@pytest_twisted.ensureDeferred
async def test_claim_needs_a_backend_for_every_platform(store, clock):
    await fleet(store, clock)
    with pytest.raises(ValueError, match="no delivery backend for: android"):
        await store.claim_host_profiles(10, {"macos": "outbox", "ios": "outbox", "ipados": "outbox"})
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        await store.claim_host_profiles(0, BACKENDS)
    assert [hp.status for hp in await store.list_host_profiles()] == [None, None, None]
    assert commands_table(store) == []


def same_command_uuid_every_time(store, monkeypatch):
    """
    Every command uuid the next store makes is one and the same, so a claim fails at its second command.

    SQLite's ``gen_random_uuid`` is the store's Python function; PostgreSQL's is its own, so a function of
    that name goes ahead of it on the database's search path (for connections opened from now on).
    """
    if store.engine == "postgresql":
        conn = raw(store)
        conn.execute("CREATE FUNCTION public.gen_random_uuid() RETURNS text LANGUAGE sql"
                     " AS $$ SELECT 'same-uuid-every-time' $$")
        conn.raw.execute('ALTER DATABASE "%s" SET search_path = public, pg_catalog'
                         % (conn.execute("SELECT current_database()").fetchone()[0],))
        conn.close()
    else:
        monkeypatch.setattr(database_module, "new_command_uuid", lambda: "same-uuid-every-time")


@pytest_twisted.ensureDeferred
async def test_claim_is_all_or_nothing(store, clock, database, engine, monkeypatch):
    """A batch that fails half-way leaves every host profile NULL, with no command."""
    await fleet(store, clock)
    await store.stop()
    same_command_uuid_every_time(store, monkeypatch)
    target, password = database
    broken = Store(target, reactor, clock=clock, password=password)
    await broken.start()
    # Each engine names what it refused its own way: SQLite the key's column, PostgreSQL the key (a
    # duplicate, as a write that lost a race to another node is).
    refused, message = {"sqlite": (StoreError, "UNIQUE constraint failed: commands.command_uuid"),
                        "postgresql": (DuplicateError, r"\(commands_pkey\)")}[engine]
    try:
        with pytest.raises(refused, match=message):
            await broken.claim_host_profiles(10, BACKENDS)
        assert [hp.status for hp in await broken.list_host_profiles()] == [None, None, None]
        assert [hp.command_uuid for hp in await broken.list_host_profiles()] == [None, None, None]
    finally:
        await broken.stop()
    assert commands_table(broken) == []


@pytest_twisted.ensureDeferred
async def test_claim_supersedes_outstanding_commands(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    first = await claim_all(store)
    await store.command_delivered(first[("m1", MAC)].command_uuid)
    await store.command_result(first[("m2", MAC)].command_uuid, ok=True)
    assert (await refuse_latest(store, "m1", MAC)).counted  # back to NULL, command delivered
    assert (await refuse_latest(store, "m2", MAC)).status == "verifying"  # acknowledged: not pending, unchanged
    await store.set_host_profile_status("m2", MAC, None)
    clock.advance(3)
    second = await claim_all(store)
    assert (await store.get_command(first[("m1", MAC)].command_uuid)).status == "superseded"
    assert (await store.get_command(first[("m1", MAC)].command_uuid)).updated_at == EPOCH + 5
    assert (await store.get_command(first[("m2", MAC)].command_uuid)).status == "acknowledged"
    for key in first:
        assert second[key].command_uuid != first[key].command_uuid
        assert (await store.get_command(second[key].command_uuid)).status == "queued"
        assert (await store.get_host_profile(*key)).command_uuid == second[key].command_uuid


@pytest_twisted.ensureDeferred
async def test_resend_supersedes_the_current_command(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    command = (await claim_all(store))[("m1", MAC)]
    challenge = await store.issue_challenge("m1", MAC)
    resent = await store.resend_host_profile("m1", MAC)
    assert (resent.status, resent.command_uuid) == (None, None)
    assert (await store.get_command(command.command_uuid)).status == "superseded"
    assert await store.consume_challenge(challenge, "m1", MAC) is None
    assert await store.commands_for_host("m1", "nanomdm") == []


@pytest_twisted.ensureDeferred
async def test_host_profile_reads_return_the_new_columns(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    hp = await store.get_host_profile("m1", MAC)
    assert (hp.command_uuid, hp.cert_serial, hp.cert_not_before, hp.cert_not_after) == (None, None, None, None)
    command = (await claim_all(store))[("m1", MAC)]
    await store.record_certificate("m1", hp.renewal_id, "0A1B", EPOCH, EPOCH + 365 * DAY)
    expected = HostProfile(
        "m1", MAC, "verified", None, 0, EPOCH, EPOCH + 1, hp.renewal_id,
        command.command_uuid, "0A1B", EPOCH, EPOCH + 365 * DAY,
    )
    assert await store.get_host_profile("m1", MAC) == expected
    assert await store.list_host_profiles(host_uuid="m1") == [expected]


# -- handing commands over ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_commands_for_host_gives_current_commands_with_what_rendering_needs(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    await store.add_profile("second", "Second", "macos", b"<second/>", None)
    first = await claim_all(store)
    clock.advance(1)
    await store.assign_profile("m1", "second")
    later = await claim_all(store)
    hp = await store.get_host_profile("m1", MAC)
    jobs = await store.commands_for_host("m1", "nanomdm")
    assert jobs == [
        RenderJob(
            first[("m1", MAC)].command_uuid, "m1", MAC, "mobileconfig", b"<plist/>", CA, b"sealed", hp.renewal_id, "macos"
        ),
        RenderJob(
            later[("m1", "second")].command_uuid, "m1", "second", "mobileconfig", b"<second/>", None, None,
            (await store.get_host_profile("m1", "second")).renewal_id, "macos",
        ),
    ]
    assert "sealed" not in repr(jobs[0]) and "plist" not in repr(jobs[0])
    assert await store.commands_for_host("m1", "outbox") == []  # another backend
    assert await store.commands_for_host("nobody", "nanomdm") == []


@pytest_twisted.ensureDeferred
async def test_commands_for_host_keeps_delivered_drops_finished(store, clock):
    await fleet(store, clock, macs=("m1",), androids=("a1",))
    await store.add_profile("second", "Second", "macos", b"<second/>", CA)
    await store.add_profile("third", "Third", "macos", b"<third/>", CA)
    await store.assign_profile("m1", "second")
    await store.assign_profile("m1", "third")
    claimed = await claim_all(store)
    await store.command_delivered(claimed[("m1", MAC)].command_uuid)  # delivered: still handed over
    await store.command_result(claimed[("m1", "second")].command_uuid, ok=True)  # acknowledged: not
    await store.resend_host_profile("m1", "third")  # superseded: not
    assert [job.profile_uuid for job in await store.commands_for_host("m1", "nanomdm")] == [MAC]
    await store.enrollment_forwarded("m1", MAC)  # no longer pending: not
    assert await store.commands_for_host("m1", "nanomdm") == []
    assert [(job.host_uuid, job.platform, job.kind) for job in await store.commands_for_host("a1", "outbox")] == [
        ("a1", "android", "android_template")
    ]


@pytest_twisted.ensureDeferred
async def test_due_commands_and_delivery_attempts(store, clock):
    await fleet(store, clock, macs=("m1", "m2", "m3"), androids=("a1",))
    claimed = await claim_all(store)
    m1, m2, m3 = (claimed[(h, MAC)].command_uuid for h in ("m1", "m2", "m3"))
    first = {job.command_uuid for job in await store.due_commands("nanomdm", 2)}
    assert len(first) == 2
    # Taken commands are leased (120 s by default): no second call, here or on another node, takes them.
    assert {job.command_uuid for job in await store.due_commands("nanomdm", 10)} == {m1, m2, m3} - first
    assert await store.due_commands("nanomdm", 10) == []
    assert [job.host_uuid for job in await store.due_commands("outbox", 10)] == ["a1"]
    assert await store.command_delivered(m1) is True
    assert await store.command_delivered(m1) is False  # only from queued
    clock.advance(1)
    await store.command_delivery_failed(m2, "nanomdm unreachable", clock.seconds() + 60)
    command = await store.get_command(m2)
    assert (command.status, command.attempts, command.detail, command.next_attempt_at) == (
        "queued", 1, "nanomdm unreachable", clock.seconds() + 60
    )
    assert await store.due_commands("nanomdm", 10) == []  # m3 is still leased
    clock.advance(60)
    await store.command_delivered(m3)
    assert [job.command_uuid for job in await store.due_commands("nanomdm", 10)] == [m2]
    await store.command_delivery_failed(m2, "again", clock.seconds() + 120)
    assert (await store.get_command(m2)).attempts == 2
    await store.command_delivery_failed(m1, "ignored", 0)  # delivered already: nothing changes
    assert (await store.get_command(m1)).attempts == 0
    assert await store.get_command("no-such-command") is None


@pytest_twisted.ensureDeferred
async def test_a_leased_command_is_sent_again_when_its_sender_died(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    (command,) = (c.command_uuid for c in (await claim_all(store)).values())
    assert [job.command_uuid for job in await store.due_commands("nanomdm", 10, lease=30)] == [command]
    clock.advance(29)
    assert await store.due_commands("nanomdm", 10) == []
    clock.advance(1)  # the lease ended with no result: the node that took it is gone
    assert [job.command_uuid for job in await store.due_commands("nanomdm", 10)] == [command]


@pytest_twisted.ensureDeferred
async def test_due_commands_skips_host_profiles_no_longer_pending(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    await claim_all(store)
    assert (await refuse_latest(store, "m1", MAC)).counted
    assert [job.host_uuid for job in await store.due_commands("nanomdm", 10)] == ["m2"]


@pytest_twisted.ensureDeferred
async def test_issue_challenge_retires_older_challenges(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    other = await store.issue_challenge("m2", MAC)
    old = await store.issue_challenge("m1", MAC)
    minted = await store.new_challenge("m1", MAC)
    new = await store.issue_challenge("m1", MAC)
    assert len(new) == 32 and new not in (old, minted)
    assert await store.consume_challenge(old, "m1", MAC) is None
    assert await store.consume_challenge(minted, "m1", MAC) is None
    assert await store.consume_challenge(new, "m1", MAC) is not None
    assert await store.consume_challenge(other, "m2", MAC) is not None  # another host profile's stays
    with pytest.raises(NotFoundError, match="no profile nothing assigned to host m1"):
        await store.issue_challenge("m1", "nothing")


# -- command results ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_command_acknowledged_moves_pending_to_verifying(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    command = (await claim_all(store))[("m1", MAC)]
    clock.advance(2)
    assert await store.command_result(command.command_uuid, ok=True, host_uuid="m2") is None  # not m2's
    assert await store.command_result("no-such-command", ok=True) is None
    hp = await store.command_result(command.command_uuid, ok=True, host_uuid="m1")
    assert (hp.host_uuid, hp.profile_uuid, hp.status, hp.updated_at) == ("m1", MAC, "verifying", clock.seconds())
    stored = await store.get_command(command.command_uuid)
    assert (stored.status, stored.updated_at) == ("acknowledged", clock.seconds())
    assert (await store.command_result(command.command_uuid, ok=True)).status == "verifying"  # again: no change


@pytest_twisted.ensureDeferred
async def test_command_error_counts_a_retry(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    command = (await claim_all(store))[("m1", MAC)]
    await store.enrollment_forwarded("m1", MAC)  # verifying counts too
    hp = await store.command_result(command.command_uuid, ok=False, detail="MDM refused the profile")
    assert (hp.status, hp.retries, hp.detail) == (None, 1, "device reported an error: MDM refused the profile")
    stored = await store.get_command(command.command_uuid)
    assert (stored.status, stored.detail) == ("error", "MDM refused the profile")


@pytest_twisted.ensureDeferred
async def test_command_errors_past_max_retries_fail(strict_store, clock):
    store = strict_store
    await fleet(store, clock, macs=("m1",), androids=())
    command = (await claim_all(store))[("m1", MAC)]
    hp = await store.command_result(command.command_uuid, ok=False, detail="first")
    assert (hp.status, hp.retries) == (None, 1)  # retries == max_retries: one more try
    command = (await claim_all(store))[("m1", MAC)]
    hp = await store.command_result(command.command_uuid, ok=False, detail="second")
    assert (hp.status, hp.retries, hp.detail) == ("failed", 2, "device reported an error: second")
    assert await store.claim_host_profiles(10, BACKENDS) == ClaimResult((), ())


@pytest_twisted.ensureDeferred
async def test_challenge_failed_applies_max_retries(strict_store, clock):
    store = strict_store
    await fleet(store, clock, macs=("m1",), androids=())
    await claim_all(store)
    assert await refuse_latest(store, "m1", MAC) == ChallengeRefusal(True, "latest", None)
    assert ((await store.get_host_profile("m1", MAC)).status, (await store.get_host_profile("m1", MAC)).retries) == (None, 1)
    await claim_all(store)
    assert await refuse_latest(store, "m1", MAC, "custom scep challenge failed again") == ChallengeRefusal(
        True, "latest", "failed"
    )
    hp = await store.get_host_profile("m1", MAC)
    assert (hp.status, hp.retries, hp.detail) == ("failed", 2, "custom scep challenge failed again")


@pytest_twisted.ensureDeferred
async def test_challenge_failed_default_allows_three_retries(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    statuses = []
    for _ in range(4):
        await claim_all(store)
        await refuse_latest(store, "m1", MAC)
        statuses.append((await store.get_host_profile("m1", MAC)).status)
    assert statuses == [None, None, None, "failed"]


@pytest_twisted.ensureDeferred
async def test_result_of_an_old_command_leaves_the_host_profile_alone(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    old = (await claim_all(store))[("m1", MAC)]
    await store.resend_host_profile("m1", MAC)
    current = (await claim_all(store))[("m1", MAC)]
    before = await store.get_host_profile("m1", MAC)
    clock.advance(1)
    assert await store.command_result(old.command_uuid, ok=False, detail="stale") == before
    assert await store.command_result(old.command_uuid, ok=True) == before
    assert (await store.get_command(old.command_uuid)).status == "acknowledged"
    assert (await store.get_command(current.command_uuid)).status == "queued"


@pytest_twisted.ensureDeferred
async def test_command_error_after_verified_changes_nothing(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    command = (await claim_all(store))[("m1", MAC)]
    await store.profiles_installed("m1", [MAC])
    hp = await store.command_result(command.command_uuid, ok=False, detail="late")
    assert (hp.status, hp.retries) == ("verified", 0)


# -- device reports ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_profiles_installed_by_uuid_or_identifier(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=("a1",))
    await store.add_profile("other", "Other", "macos", b"<plist/>", None, identifier="com.example.other")
    await store.assign_profile("m1", "other")
    assert await store.profiles_installed("m1", [MAC]) == 0  # NULL: not sent yet
    await claim_all(store)
    await store.enrollment_forwarded("m1", MAC)
    assert await store.profiles_installed("m1", ["com.example.wifi", "unknown", "com.example.wifi"]) == 1
    assert (await store.get_host_profile("m1", MAC)).status == "verified"
    assert (await store.get_host_profile("m1", "other")).status == "pending"
    assert (await store.get_host_profile("m2", MAC)).status == "pending"  # another host
    assert await store.profiles_installed("m1", ["other", MAC]) == 1  # MAC is verified already
    assert await store.profiles_installed("a1", ["wifi"]) == 1
    assert await store.profiles_installed("a1", []) == 0


@pytest_twisted.ensureDeferred
async def test_profiles_installed_with_a_long_list(store, clock):
    await fleet(store, clock, macs=("m1",), androids=())
    await claim_all(store)
    installed = [f"com.example.p{i}" for i in range(1200)] + ["com.example.wifi"]
    assert await store.profiles_installed("m1", installed) == 1


@pytest_twisted.ensureDeferred
async def test_renewal_ids_for_host(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    await store.add_profile("other", "Other", "macos", b"<plist/>", None)
    await store.assign_profile("m1", "other")
    ids = await store.renewal_ids_for_host("m1")
    assert sorted(ids.values()) == ["mac-profile", "other"]
    assert all(RENEWAL_ID.match(renewal_id) for renewal_id in ids)
    assert ids[(await store.get_host_profile("m1", "other")).renewal_id] == "other"
    assert await store.renewal_ids_for_host("nobody") == {}


@pytest_twisted.ensureDeferred
async def test_record_certificate_outcomes(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    await claim_all(store)
    renewal_id = (await store.get_host_profile("m1", MAC)).renewal_id
    assert await store.record_certificate("m1", renewal_id, "01", EPOCH, EPOCH + 100 * DAY) == "recorded"
    hp = await store.get_host_profile("m1", MAC)
    assert (hp.status, hp.cert_serial, hp.cert_not_before, hp.cert_not_after) == ("verified", "01", EPOCH, EPOCH + 100 * DAY)
    assert await store.record_certificate("m1", renewal_id, "02", EPOCH, EPOCH + 200 * DAY) == "older"  # same start
    assert await store.record_certificate("m1", renewal_id, "00", EPOCH - DAY, EPOCH + 300 * DAY) == "older"
    assert (await store.get_host_profile("m1", MAC)).cert_serial == "01"  # never moved backwards
    assert await store.record_certificate("m1", renewal_id, "03", EPOCH + DAY, EPOCH + 101 * DAY) == "recorded"
    hp = await store.get_host_profile("m1", MAC)
    assert (hp.cert_serial, hp.cert_not_before, hp.cert_not_after) == ("03", EPOCH + DAY, EPOCH + 101 * DAY)
    assert await store.record_certificate("m2", renewal_id, "04", EPOCH, EPOCH + DAY) == "unknown"  # m1's ID
    assert await store.record_certificate("m1", "sp-0000000000000000", "05", EPOCH, EPOCH + DAY) == "unknown"


@pytest_twisted.ensureDeferred
async def test_record_certificate_verifies_only_pending_or_verifying(store, clock):
    await fleet(store, clock, macs=("m1", "m2", "m3", "m4"), androids=())
    await claim_all(store)
    await store.enrollment_forwarded("m2", MAC)
    await store.set_host_profile_status("m3", MAC, None)
    await store.set_host_profile_status("m4", MAC, "failed", "gave up")
    for host, expected in (("m1", "verified"), ("m2", "verified"), ("m3", None), ("m4", "failed")):
        renewal_id = (await store.get_host_profile(host, MAC)).renewal_id
        assert await store.record_certificate(host, renewal_id, "01", EPOCH, EPOCH + DAY) == "recorded"
        assert (await store.get_host_profile(host, MAC)).status == expected


# -- renewal ---------------------------------------------------------------------------------------


async def verified_with_certificate(store, host, not_before, not_after):
    renewal_id = (await store.get_host_profile(host, MAC)).renewal_id
    await store.set_host_profile_status(host, MAC, "verifying")
    assert await store.record_certificate(host, renewal_id, host, not_before, not_after) == "recorded"


@pytest_twisted.ensureDeferred
async def test_renewal_of_a_long_certificate_at_the_threshold(store, clock):
    """365-day certificate, 30-day threshold: due once less than 30 days are left."""
    await fleet(store, clock, macs=("early", "exact", "late"), androids=())
    now = clock.seconds()
    for host, remaining in (("early", 30 * DAY + 1), ("exact", 30 * DAY), ("late", 30 * DAY - 1)):
        not_after = now + remaining
        await verified_with_certificate(store, host, not_after - 365 * DAY, not_after)
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 100) == 1
    hp = await store.get_host_profile("late", MAC)
    assert (hp.status, hp.retries, hp.detail, hp.updated_at) == (
        None, 0, "renewing: certificate expires 2023-12-14T22:13:22+00:00", now
    )
    assert hp.cert_not_after == now + 30 * DAY - 1
    assert (await store.get_host_profile("exact", MAC)).status == "verified"
    assert (await store.get_host_profile("early", MAC)).status == "verified"
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 100) == 0  # already NULL
    clock.advance(1)
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 100) == 1  # "exact" now has less left
    assert sorted(c.host_uuid for c in (await store.claim_host_profiles(10, BACKENDS)).claimed) == ["exact", "late"]


@pytest_twisted.ensureDeferred
async def test_renewal_of_a_short_certificate_uses_the_fraction(store, clock):
    """20-day certificate, 30-day threshold, fraction 0.5: due once less than 10 days are left."""
    await fleet(store, clock, macs=("early", "late"), androids=())
    now = clock.seconds()
    for host, remaining in (("early", 10 * DAY + 1), ("late", 10 * DAY - 1)):
        not_after = now + remaining
        await verified_with_certificate(store, host, not_after - 20 * DAY, not_after)
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 100) == 1
    assert (await store.get_host_profile("late", MAC)).status is None
    assert (await store.get_host_profile("early", MAC)).status == "verified"
    clock.advance(2)
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 100) == 1


@pytest_twisted.ensureDeferred
async def test_renewal_only_touches_verified_with_dates_and_respects_limit(store, clock):
    hosts = ("v1", "v2", "v3", "pending", "no-cert")
    await fleet(store, clock, macs=hosts, androids=())
    now = clock.seconds()
    for index, host in enumerate(("v3", "v1", "v2")):
        await verified_with_certificate(store, host, now - 360 * DAY, now + index * DAY)
    await verified_with_certificate(store, "pending", now - 360 * DAY, now + DAY)
    await store.set_host_profile_status("pending", MAC, "pending")
    await store.set_host_profile_status("no-cert", MAC, "verified")
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 2) == 2
    assert [hp.host_uuid for hp in await store.list_host_profiles(status="null")] == ["v1", "v3"]  # soonest first
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 2) == 1
    assert await store.mark_due_for_renewal(30 * DAY, 0.5, 2) == 0
    assert (await store.get_host_profile("pending", MAC)).status == "pending"
    assert (await store.get_host_profile("no-cert", MAC)).status == "verified"
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        await store.mark_due_for_renewal(30 * DAY, 0.5, 0)


# -- cleanup ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_finished_commands_in_batches(store, clock, monkeypatch):
    monkeypatch.setattr(commands_module, "_FINISHED_BATCH", 2)
    await fleet(store, clock, macs=[f"m{i}" for i in range(7)], androids=())
    claimed = list((await claim_all(store)).values())
    await store.command_result(claimed[0].command_uuid, ok=True)
    await store.command_result(claimed[1].command_uuid, ok=False, detail="no")
    for command in claimed[2:5]:
        await store.resend_host_profile(command.host_uuid, MAC)  # superseded
    await store.command_delivered(claimed[5].command_uuid)  # delivered, and claimed[6] queued: kept
    clock.advance(DAY)
    await store.command_result(claimed[0].command_uuid, ok=True)  # touched again: too recent
    assert await store.delete_finished_commands(DAY - 1) == 4
    assert await store.delete_finished_commands(DAY - 1) == 0
    left = raw(store).execute("SELECT command_uuid, status FROM commands ORDER BY status").fetchall()
    assert sorted(left) == sorted([
        (claimed[0].command_uuid, "acknowledged"),
        (claimed[5].command_uuid, "delivered"),
        (claimed[6].command_uuid, "queued"),
    ])


@pytest_twisted.ensureDeferred
async def test_commands_go_with_their_host_profile(store, clock):
    await fleet(store, clock, macs=("m1", "m2"), androids=())
    await claim_all(store)
    await store.delete_host("m1")
    await store.unassign_profile(MAC, ["m2"])
    assert commands_table(store) == []


# -- migration 0002 -> 0003 -----------------------------------------------------------------------


def schema_2_database(path):
    """A database as the admin-plane release left it: 0001 and 0002 applied, with data in it."""
    conn = raw(path)
    for name in ("0001_initial.sql", "0002_admin_plane.sql"):
        conn.executescript(resources.files("scepproxyd.store").joinpath(f"schema/{name}").read_text(encoding="utf-8"))
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO cas VALUES (?, ?, ?, ?, ?)", (CA, "https://ca.example/scep", b"sealed", EPOCH, EPOCH))
    conn.execute("INSERT INTO hosts VALUES ('h1', 'S1', 'macos', ?, ?), ('h2', NULL, 'macos', ?, ?)", (EPOCH,) * 4)
    conn.execute(
        "INSERT INTO profiles (uuid, name, platform, content, ca_name, created_at, updated_at, kind, identifier)"
        " VALUES ('p1', 'Wi-Fi', 'macos', ?, ?, ?, ?, 'mobileconfig', 'com.example.wifi')",
        (b"<plist/>", CA, EPOCH, EPOCH),
    )
    conn.execute(
        "INSERT INTO host_profiles (host_uuid, profile_uuid, status, detail, retries, created_at, updated_at, renewal_id)"
        " VALUES ('h1', 'p1', 'pending', NULL, 2, ?, ?, 'sp-00000000000000a1'),"
        " ('h2', 'p1', NULL, 'x', 0, ?, ?, 'sp-00000000000000a2')",
        (EPOCH,) * 4,
    )
    conn.execute("INSERT INTO challenges VALUES ('c1', 'h1', 'p1', ?)", (EPOCH,))
    conn.commit()
    conn.close()


@pytest_twisted.ensureDeferred
async def test_migrate_from_schema_2_keeps_data(tmp_path, clock):
    path = tmp_path / "old.sqlite"
    schema_2_database(path)
    before = raw(path).execute("SELECT * FROM host_profiles ORDER BY host_uuid").fetchall()
    assert Store.migrate(path) == SCHEMA_VERSION
    conn = raw(path)
    # Later columns start empty, except the latest proxy challenge's hash (schema 8): the pending
    # host profile gets its live challenge's SHA-256, the NULL one nothing; no RA renewal claim (schema 14).
    latest = {"h1": hashlib.sha256(b"c1").hexdigest(), "h2": None}
    assert conn.execute("SELECT * FROM host_profiles ORDER BY host_uuid").fetchall() == [
        row + (None, None, None, None, latest[row[0]], None, None) for row in before
    ]
    assert conn.execute("SELECT * FROM challenges").fetchall() == [(challenge_hash("c1"), "h1", "p1", EPOCH)]
    assert conn.execute("SELECT COUNT(*) FROM commands").fetchone()[0] == 0
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(commands)")}
    assert {"commands_host_status", "commands_backend_due", "commands_status_updated_at"} <= indexes
    assert Store.migrate(path) == SCHEMA_VERSION
    s = Store(path, reactor, clock=clock)
    await s.start()
    try:
        hp = await s.get_host_profile("h1", "p1")
        assert (hp.status, hp.retries, hp.renewal_id, hp.command_uuid) == ("pending", 2, "sp-00000000000000a1", None)
        result = await s.claim_host_profiles(10, BACKENDS)
        assert [(c.host_uuid, c.backend) for c in result.claimed] == [("h2", "nanomdm")]
        assert await s.record_certificate("h1", "sp-00000000000000a1", "01", EPOCH, EPOCH + DAY) == "recorded"
        assert await s.consume_challenge("c1", "h1", "p1") is not None
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_command_status_is_checked_by_the_schema(store, engine):
    conn = raw(store)
    conn.execute("INSERT INTO hosts VALUES ('h', NULL, 'macos', 0, 0)")
    conn.execute(
        "INSERT INTO profiles (uuid, name, platform, content, created_at, updated_at)"
        " VALUES ('p', 'n', 'macos', ?, 0, 0)",
        (b"\x00",),
    )
    conn.execute("INSERT INTO host_profiles (host_uuid, profile_uuid, created_at, updated_at) VALUES ('h', 'p', 0, 0)")
    # Each engine words a refused row its own way (PostgreSQL names the constraint it made for the table).
    check, foreign_key = {
        "sqlite": ("CHECK constraint failed", "FOREIGN KEY constraint failed"),
        "postgresql": ('violates check constraint "commands_status_check"',
                       'violates foreign key constraint "commands_host_uuid_profile_uuid_fkey"'),
    }[engine]
    with pytest.raises(refused_by_schema(engine), match=check):
        conn.execute(
            "INSERT INTO commands (command_uuid, host_uuid, profile_uuid, backend, status, created_at, updated_at)"
            " VALUES ('c', 'h', 'p', 'outbox', 'lost', 0, 0)"
        )
    with pytest.raises(refused_by_schema(engine), match=foreign_key):
        conn.execute(
            "INSERT INTO commands (command_uuid, host_uuid, profile_uuid, backend, status, created_at, updated_at)"
            " VALUES ('c', 'h', 'other', 'outbox', 'queued', 0, 0)"
        )


# -- scale -------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_claiming_100000_host_profiles_in_batches(database):
    target, password = database
    s = Store(target, reactor, clock=make_clock(), password=password)
    await s.start()
    try:
        await s.add_ca(CA, "https://ca.example/scep", b"sealed")
        await s.add_profile(MAC, "Mac cert", "macos", b"<plist/>", CA)
        await s.import_hosts((f"host-{i:06}", None, "macos") for i in range(100_000))
        assert await s.assign_profile_to_platform(MAC, "macos") == 100_000
        started = time.perf_counter()
        claimed = batches = 0
        while True:
            result = await s.claim_host_profiles(5000, BACKENDS)
            assert len(result.claimed) <= 5000 and result.failed == ()
            claimed += len(result.claimed)
            batches += 1
            if len(result.claimed) < 5000:
                break
        elapsed = time.perf_counter() - started
        print(f"\nclaimed {claimed} host profiles in {batches} batches of 5000 in {elapsed:.2f} s")
        assert claimed == 100_000
        assert (await s.count_host_profiles_by_status())["pending"] == 100_000
        assert len(await s.due_commands("nanomdm", 5000)) == 5000
    finally:
        await s.stop()
