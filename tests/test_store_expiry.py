"""An expired one-time challenge sends its host profile again without a retry; a backlog mints no faster than devices enroll.

A device that was offline past ``[challenges] ttl`` never used its challenge:
that is no failed attempt, so the host profile goes back to NULL with its
retries as they were, whether the cleanup job finds the expired challenge
or the device presents it. The trust rules hold as for the retry rule: only
the latest challenge of a pending host profile moves anything, once.

Challenges are minted only at hand-over: an agent's fetch (the device asks)
or a push send, and push delivery sends only while fewer than its limit of
the challenges it handed over are still unused.
"""

import plistlib
import urllib.parse
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.delivery.push import PushDelivery
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.jobs import ProcessProfilesJob, backends_for
from scepproxyd.keys import ChallengeCipher
from scepproxyd.store import ChallengeRefusal, challenges as challenges_module
from scepproxyd.store.challenges import EXPIRED_DETAIL
from scepproxyd.store.models import ExpiredChallenges, ResentHostProfile
from support.store import CA, HOST, PROFILE, TTL, assign_to, claim_all, raw, seed, started_store

FAILED = "custom scep challenge failed"
FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
KEY = b"k" * 32


async def pending(s, host=HOST, profile=PROFILE):
    """A host profile as the processing job and a render leave it: pending, with its latest challenge."""
    await s.set_host_profile_status(host, profile, "pending")
    return await s.issue_challenge(host, profile)


async def state(s, host=HOST, profile=PROFILE) -> tuple:
    hp = await s.get_host_profile(host, profile)
    return hp.status, hp.retries, hp.detail


def count(s, table) -> int:
    return raw(s).execute("SELECT COUNT(*) FROM %s" % (table,)).fetchone()[0]


# -- the cleanup job's part ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cleanup_sends_a_host_profile_whose_latest_challenge_expired_unused_again_without_a_retry(store, clock):
    await seed(store)
    await pending(store)
    clock.advance(TTL)
    assert await store.expire_challenges() == ExpiredChallenges(0, ())  # exactly at the TTL it is still valid
    clock.advance(1)
    assert await store.expire_challenges() == ExpiredChallenges(1, (ResentHostProfile(HOST, PROFILE, CA, TTL + 1),))
    assert await state(store) == (None, 0, EXPIRED_DETAIL)
    assert count(store, "challenges") == 0
    # The next claim sends it with a fresh challenge; a device that stays offline never exhausts max_retries (3).
    for _ in range(5):
        assert list(await claim_all(store)) == [(HOST, PROFILE)]
        await store.issue_challenge(HOST, PROFILE)
        clock.advance(TTL + 1)
        assert (await store.expire_challenges()).resent == (ResentHostProfile(HOST, PROFILE, CA, TTL + 1),)
        assert await state(store) == (None, 0, EXPIRED_DETAIL)


@pytest_twisted.ensureDeferred
async def test_two_cleanups_and_two_nodes_send_it_again_once(database, store, clock):
    await seed(store)
    await assign_to(store, ("host-2", "host-3"))
    target, password = database
    other = await started_store(target, reactor, clock, password=password)  # a second node on the database
    try:
        for host in (HOST, "host-2", "host-3"):
            await pending(store, host)
        clock.advance(TTL + 1)
        results = await defer.gatherResults([store.expire_challenges(), other.expire_challenges()])
        assert sum(r.removed for r in results) == 3
        assert sorted(hp.host_uuid for r in results for hp in r.resent) == [HOST, "host-2", "host-3"]
        assert await store.expire_challenges() == ExpiredChallenges(0, ())
        assert [await state(store, host) for host in (HOST, "host-2", "host-3")] == [(None, 0, EXPIRED_DETAIL)] * 3
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_cleanup_works_in_batches_and_reports_each(store, clock, monkeypatch):
    monkeypatch.setattr(challenges_module, "_EXPIRED_BATCH", 3)
    await seed(store)
    hosts = [HOST] + ["host-%d" % i for i in range(2, 8)]
    await assign_to(store, hosts[1:])
    for host in hosts:
        await pending(store, host)
        clock.advance(1)
    clock.advance(TTL)
    batches = []
    expired = await store.expire_challenges(on_resent=batches.append)
    assert expired.removed == 7 and [len(batch) for batch in batches] == [3, 3, 1]
    assert sorted(hp.host_uuid for hp in expired.resent) == sorted(hosts)
    assert {hp.host_uuid: hp.waited for hp in expired.resent}[HOST] == TTL + 7  # oldest first
    assert await store.delete_expired_challenges() == 0


@pytest_twisted.ensureDeferred
async def test_an_expired_older_challenge_changes_nothing(store, clock):
    await seed(store)
    older = await pending(store)
    clock.advance(TTL / 2)
    latest = await store.new_challenge(HOST, PROFILE)  # a second copy, the older one not retired
    clock.advance(TTL / 2 + 1)
    before = await store.get_host_profile(HOST, PROFILE)
    # Presented by a device: refused and deleted, the host profile left waiting for its latest copy.
    assert await store.spend_challenge(older, HOST, PROFILE, FAILED) == (
        None, ChallengeRefusal(False, "not_latest", "pending"))
    assert count(store, "challenges") == 1
    # Found by the cleanup job: the same.
    newest = await store.new_challenge(HOST, PROFILE)
    clock.advance(TTL / 2)  # ``latest`` is now past its TTL, ``newest`` is not
    assert await store.expire_challenges() == ExpiredChallenges(1, ())
    assert await store.get_host_profile(HOST, PROFILE) == before
    assert await store.consume_challenge(latest, HOST, PROFILE) is None
    assert await store.consume_challenge(newest, HOST, PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_verifying_and_verified_host_profiles_are_untouched(store, clock):
    await seed(store)
    for status in ("verifying", "verified"):
        challenge = await pending(store)
        await store.set_host_profile_status(HOST, PROFILE, status)
        before = await store.get_host_profile(HOST, PROFILE)
        clock.advance(TTL + 1)
        assert await store.spend_challenge(challenge, HOST, PROFILE, FAILED) == (
            None, ChallengeRefusal(False, "not_pending", status))
        challenge = await store.issue_challenge(HOST, PROFILE)
        clock.advance(TTL + 1)
        assert await store.expire_challenges() == ExpiredChallenges(1, ())
        assert await store.get_host_profile(HOST, PROFILE) == before


@pytest_twisted.ensureDeferred
async def test_replayed_or_made_up_urls_still_change_nothing(store, clock):
    await seed(store)
    latest = await pending(store)
    clock.advance(TTL + 1)
    before = await store.get_host_profile(HOST, PROFILE)
    for challenge in ("A" * 32, latest[:-1] + ("A" if latest[-1] != "A" else "B")):
        assert await store.spend_challenge(challenge, HOST, PROFILE, FAILED) == (
            None, ChallengeRefusal(False, "not_latest", "pending"))
    assert await store.get_host_profile(HOST, PROFILE) == before
    # Another host profile's URL carrying this challenge does not send this one again either.
    await store.upsert_host("host-2", None, "macos")
    await store.assign_profile("host-2", PROFILE)
    assert (await store.spend_challenge(latest, "host-2", PROFILE, FAILED))[1].reason == "not_pending"
    assert await store.get_host_profile(HOST, PROFILE) == before
    # After the cleanup sent it again, the expired URL replayed any number of times changes nothing.
    assert len((await store.expire_challenges()).resent) == 1
    for _ in range(3):
        assert await store.spend_challenge(latest, HOST, PROFILE, FAILED) == (
            None, ChallengeRefusal(False, "not_pending", None))
    await claim_all(store)
    assert await store.spend_challenge(latest, HOST, PROFILE, FAILED) == (
        None, ChallengeRefusal(False, "not_latest", "pending"))
    assert (await store.get_host_profile(HOST, PROFILE)).retries == 0


@pytest_twisted.ensureDeferred
async def test_a_challenge_in_flight_is_left_to_its_request_then_expires_on_time(store, clock):
    await seed(store)
    latest = await pending(store)
    clock.advance(TTL - 1)
    taken = await store.consume_challenge(latest, HOST, PROFILE)
    clock.advance(2)
    assert await store.expire_challenges() == ExpiredChallenges(0, ())  # the CA has not answered yet
    await store.restore_challenge(taken)  # it never did: put back with its own created_at, already past the TTL
    assert (await store.expire_challenges()).resent == (ResentHostProfile(HOST, PROFILE, CA, TTL + 1),)
    assert await state(store) == (None, 0, EXPIRED_DETAIL)


@pytest_twisted.ensureDeferred
async def test_consume_challenge_alone_sends_an_expired_latest_again_too(store, clock):
    """No path deletes an expired latest challenge and leaves its host profile waiting for it."""
    await seed(store)
    latest = await pending(store)
    clock.advance(TTL + 1)
    assert await store.consume_challenge(latest, HOST, PROFILE) is None
    assert await state(store) == (None, 0, EXPIRED_DETAIL)
    assert count(store, "challenges") == 0


# -- minting: only at hand-over, and push delivery within its budget ---------------------------------


async def fleet(s, cipher, hosts):
    """A CA with a sealed challenge and a Fleet-style profile using it, assigned to every (macOS) host."""
    await s.add_ca(CA, "https://ca.example/scep", cipher.encrypt("corp-static"))
    content = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", CA.encode())
    await s.add_profile(PROFILE, "Wi-Fi", "macos", content, CA)
    await s.import_hosts([(host, None, "macos") for host in hosts])
    await s.assign_profile_to_hosts(PROFILE, hosts)


class RecordingMDM:
    """Takes every command at once, as NanoMDM does when it is up; keeps the profile each host was sent last."""

    def __init__(self):
        self.sent = []
        self.profiles = {}

    def enqueue(self, enrollment_id, command_uuid, payload):
        self.sent.append(command_uuid)
        self.profiles[enrollment_id] = payload
        return defer.succeed(None)


def one_time_challenge(payload: bytes) -> str:
    """The challenge in the proxy URL of a rendered mobileconfig's SCEP payload."""
    profile = plistlib.loads(payload)
    (scep,) = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
    return urllib.parse.unquote(scep["PayloadContent"]["URL"].rsplit("/", 1)[1]).split(",")[3]


async def enroll(s, host, payload):
    """The device enrolls with the profile it got: what the proxy's two store jobs record for a SUCCESS."""
    consumed = await s.consume_challenge(one_time_challenge(payload), host, PROFILE)
    assert consumed is not None
    assert await s.finish_enrollment(consumed, "forwarded") is True


@pytest_twisted.ensureDeferred
async def test_outbox_mints_only_when_an_agent_fetches(store, clock):
    cipher = ChallengeCipher(KEY)
    hosts = ["mac-%03d" % i for i in range(40)]
    await fleet(store, cipher, hosts)
    assert await ProcessProfilesJob(store, 16, backends_for("outbox")).run() == {"claimed": 40, "failed": 0}
    assert count(store, "challenges") == 0  # a backlog claimed is only queued commands
    renderer = CommandRenderer(store, cipher, "http://127.0.0.1:8080", reactor)
    for job in await store.commands_for_host("mac-007", "outbox"):  # one device asks
        await renderer.render(job)
    assert raw(store).execute("SELECT host_uuid FROM challenges").fetchall() == [("mac-007",)]


@pytest_twisted.ensureDeferred
async def test_push_delivery_sends_no_faster_than_devices_use_their_challenges(store, clock):
    cipher = ChallengeCipher(KEY)
    hosts = ["mac-%03d" % i for i in range(25)]
    await fleet(store, cipher, hosts)
    await claim_all(store)  # BACKENDS: macOS through NanoMDM
    mdm = RecordingMDM()
    renderer = CommandRenderer(store, cipher, "http://127.0.0.1:8080", reactor)
    push = PushDelivery(store, renderer, mdm, clock, batch_size=4, max_unused_challenges=10)

    assert await push.deliver_due() == {"delivered": 10, "delivery_retries": 0, "delivery_refused": 0,
                                        "delivery_held": 15}
    assert count(store, "challenges") == 10 and await store.count_live_challenges("nanomdm") == 10
    # Nobody enrolled: the next run sends (and mints) nothing.
    assert (await push.deliver_due())["delivered"] == 0
    assert count(store, "challenges") == 10 and len(mdm.sent) == 10

    # Four devices enroll: four more go out.
    for host in sorted(mdm.profiles)[:4]:
        await enroll(store, host, mdm.profiles[host])
    assert await store.count_live_challenges("nanomdm") == 6
    result = await push.deliver_due()
    assert (result["delivered"], result["delivery_held"]) == (4, 11)
    assert await store.count_live_challenges("nanomdm") == 10

    # The other devices stay offline past the TTL: their challenges no longer count, so the backlog moves on,
    # and the cleanup sends theirs again (at the back of the queue, no retry counted).
    clock.advance(TTL + 1)
    assert await store.count_live_challenges("nanomdm") == 0
    expired = await store.expire_challenges()
    assert (expired.removed, len(expired.resent)) == (10, 10)
    await claim_all(store)
    result = await push.deliver_due()
    assert (result["delivered"], result["delivery_held"]) == (10, 11)  # the longest waiting first
    assert await store.count_live_challenges("nanomdm") == 10
    assert {hp.retries for hp in await store.list_host_profiles()} == {0}


@pytest_twisted.ensureDeferred
async def test_a_failed_send_holds_no_place_in_the_budget(store, clock):
    cipher = ChallengeCipher(KEY)
    await fleet(store, cipher, ["mac-1", "mac-2"])
    await claim_all(store)

    class DownMDM:
        def enqueue(self, enrollment_id, command_uuid, payload):
            from scepproxyd.delivery.nanomdm import DeliveryError

            return defer.fail(DeliveryError("NanoMDM unreachable", retryable=True))

    renderer = CommandRenderer(store, cipher, "http://127.0.0.1:8080", reactor)
    push = PushDelivery(store, renderer, DownMDM(), clock, max_unused_challenges=1)
    assert (await push.deliver_due())["delivery_retries"] == 2  # rendered (minted) but never handed over
    assert await store.count_live_challenges("nanomdm") == 0
    clock.advance(3600)
    push = PushDelivery(store, renderer, RecordingMDM(), clock, max_unused_challenges=1)
    result = await push.deliver_due()
    assert (result["delivered"], result["delivery_held"]) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_due_commands_are_counted_by_backend(store, clock):
    cipher = ChallengeCipher(KEY)
    await fleet(store, cipher, ["mac-1", "mac-2", "mac-3"])
    await claim_all(store)
    assert await store.count_due_commands("nanomdm") == 3
    assert await store.count_due_commands("outbox") == 0
