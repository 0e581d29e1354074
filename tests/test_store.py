"""Tests for scepproxyd.store: schema, threading rules and the challenge life cycle."""

import base64
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from scepproxyd.store.models import challenge_hash
from scepproxyd.store import challenges as challenges_module
from scepproxyd.store import database as database_module
from scepproxyd.store.database import _schema_files
from scepproxyd.store import (
    CertificateAuthority,
    ChallengeRefusal,
    ConsumedChallenge,
    DuplicateError,
    HostProfile,
    NotFoundError,
    ProxyTarget,
    Store,
    StoreError,
)

from support.store import (
    CA,
    EPOCH,
    HOST,
    PROFILE,
    RENEWAL_ID,
    SCHEMA_VERSION,
    TTL,
    bytes_on_disk,
    database_at_schema,
    make_clock,
    raw,
    refuse_latest,
    refused_by_schema,
    seed,
    set_schema_version,
    wal_position,
)


# -- migrate -------------------------------------------------------------------


def test_migrate_is_idempotent_and_sets_wal_and_version(tmp_path):
    path = tmp_path / "db.sqlite"
    assert Store.migrate(path) == SCHEMA_VERSION
    assert Store.migrate(path) == SCHEMA_VERSION
    conn = raw(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"cas", "hosts", "profiles", "host_profiles", "challenges"} <= tables


def test_migrate_refuses_newer_schema(database):
    target, password = database
    set_schema_version(database, 99)
    with pytest.raises(StoreError, match="schema version 99, newer than this scepproxyd knows"):
        Store.migrate(target, password=password)


def test_migrate_missing_directory_has_clear_message(tmp_path):
    with pytest.raises(StoreError, match="does its directory exist"):
        Store.migrate(tmp_path / "nope" / "db.sqlite")


@pytest_twisted.ensureDeferred
async def test_start_refuses_unmigrated_database(empty_database):
    target, password = empty_database
    s = Store(target, reactor, clock=make_clock(), password=password)
    with pytest.raises(StoreError, match="run migrate first"):
        await s.start()
    await s.stop()  # nothing to stop; still fine


@pytest_twisted.ensureDeferred
async def test_start_refuses_newer_database(database):
    target, password = database
    set_schema_version(database, SCHEMA_VERSION + 1)
    s = Store(target, reactor, clock=make_clock(), password=password)
    with pytest.raises(StoreError, match="newer than this scepproxyd knows"):
        await s.start()
    await s.stop()


@pytest_twisted.ensureDeferred
async def test_stop_during_failing_start(empty_database):
    target, password = empty_database
    s = Store(target, reactor, clock=make_clock(), password=password)
    started, stopped = s.start(), s.stop()
    with pytest.raises(StoreError, match="run migrate first"):
        await started
    await stopped


# -- threading and lifecycle -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_used_only_from_db_thread(db_path, monkeypatch):
    seen = []

    class Recording(sqlite3.Connection):
        def __init__(self, *args, **kwargs):
            seen.append(threading.current_thread())
            super().__init__(*args, **kwargs)

        def execute(self, *args, **kwargs):
            seen.append(threading.current_thread())
            return super().execute(*args, **kwargs)

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real_connect(*a, factory=Recording, **kw))
    s = Store(db_path, reactor, clock=make_clock())
    await s.start()
    await seed(s)
    challenge = await s.new_challenge(HOST, PROFILE)
    await s.consume_challenge(challenge, HOST, PROFILE)
    await s.stop()
    assert len(seen) > 10
    assert {t.name for t in seen} == {seen[0].name}
    assert seen[0] is not threading.main_thread()
    assert seen[0].name.startswith("PoolThread-scepproxyd-db")


@pytest_twisted.ensureDeferred
async def test_stop_twice_then_new_store_starts(database, clock):
    target, password = database
    s = Store(target, reactor, clock=clock, password=password)
    await s.start()
    await s.add_ca(CA, "https://ca.example/scep")
    await defer.gatherResults([s.stop(), s.stop()])
    await s.stop()
    with pytest.raises(StoreError, match="not running"):
        await s.get_ca(CA)
    again = Store(target, reactor, clock=clock, password=password)
    await again.start()
    assert (await again.get_ca(CA)).url == "https://ca.example/scep"
    await again.stop()


@pytest_twisted.ensureDeferred
async def test_wal_file_readable_by_second_connection(store, db_path):
    await seed(store)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT host_uuid, profile_uuid FROM host_profiles").fetchall() == [(HOST, PROFILE)]


# -- CAs, hosts, profiles -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_and_get_ca(store):
    ca = await store.add_ca(CA, "https://ca.example/scep", b"\x00sealed")
    assert ca == CertificateAuthority(CA, "https://ca.example/scep", b"\x00sealed", EPOCH, EPOCH)
    assert await store.get_ca(CA) == ca
    assert await store.get_ca("other") is None
    with pytest.raises(DuplicateError, match="'acme' already exists"):
        await store.add_ca(CA, "https://elsewhere.example/scep")


@pytest_twisted.ensureDeferred
async def test_profile_and_assignment_errors(store, clock):
    with pytest.raises(ValueError, match="platform must be one of"):
        await store.upsert_host(HOST, "S", "beos")
    with pytest.raises(NotFoundError, match="CA 'ghost', which does not exist"):
        await store.add_profile(PROFILE, "p", "ios", b"x", "ghost")
    hp = await seed(store)
    assert RENEWAL_ID.match(hp.renewal_id)
    assert hp == HostProfile(HOST, PROFILE, None, None, 0, EPOCH, EPOCH, hp.renewal_id)
    with pytest.raises(DuplicateError):
        await store.add_profile(PROFILE, "p", "ios", b"x", None)
    with pytest.raises(DuplicateError, match="already assigned"):
        await store.assign_profile(HOST, PROFILE)
    with pytest.raises(NotFoundError, match="no host nobody"):
        await store.assign_profile("nobody", PROFILE)
    clock.advance(5)
    await store.upsert_host(HOST, "NEWSERIAL", "ipados")  # update, not duplicate
    assert raw(store).execute("SELECT serial, platform, created_at, updated_at FROM hosts").fetchall() == [
        ("NEWSERIAL", "ipados", EPOCH, EPOCH + 5)
    ]


@pytest_twisted.ensureDeferred
async def test_set_host_profile_status_validates(store, clock):
    await seed(store)
    with pytest.raises(ValueError, match="status must be one of"):
        await store.set_host_profile_status(HOST, PROFILE, "bogus")
    clock.advance(1)
    assert await store.set_host_profile_status(HOST, PROFILE, "failed", "no cert") is True
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.detail, hp.updated_at) == ("failed", "no cert", EPOCH + 1)
    assert await store.set_host_profile_status(HOST, "missing", "pending") is False


# -- proxy_target ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_proxy_target_found(store):
    await seed(store)
    assert await store.proxy_target(HOST, PROFILE, CA) == ProxyTarget(HOST, PROFILE, CA, "https://ca.example/scep", None)


@pytest_twisted.ensureDeferred
async def test_proxy_target_none_for_each_missing_piece(store):
    await seed(store)
    await store.add_ca("other", "https://other.example/scep")
    await store.upsert_host("host-2", "S2", "android")
    await store.add_profile("unassigned", "p", "macos", b"x", CA)
    await store.add_profile("no-ca", "p", "macos", b"x", None)
    await store.assign_profile(HOST, "no-ca")
    assert await store.proxy_target("ghost-host", PROFILE, CA) is None  # host
    assert await store.proxy_target(HOST, "ghost-profile", CA) is None  # profile
    assert await store.proxy_target("host-2", PROFILE, CA) is None  # host profile
    assert await store.proxy_target(HOST, "unassigned", CA) is None  # host profile
    assert await store.proxy_target(HOST, PROFILE, "ghost-ca") is None  # CA
    assert await store.proxy_target(HOST, PROFILE, "other") is None  # profile uses another CA
    assert await store.proxy_target(HOST, "no-ca", CA) is None  # profile uses no CA


# -- challenges ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_challenge_format_and_uniqueness(store):
    await seed(store)
    challenges = [await store.new_challenge(HOST, PROFILE) for _ in range(50)]
    assert len(set(challenges)) == 50
    for c in challenges:
        assert len(c) == 32
        assert set(c) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert len(base64.urlsafe_b64decode(c)) == 24


@pytest_twisted.ensureDeferred
async def test_new_challenge_needs_host_profile(store):
    with pytest.raises(NotFoundError):
        await store.new_challenge(HOST, PROFILE)


@pytest_twisted.ensureDeferred
async def test_consume_once(store):
    await seed(store)
    c = await store.new_challenge(HOST, PROFILE)
    assert await store.consume_challenge(c, HOST, PROFILE) == ConsumedChallenge(challenge_hash(c), HOST, PROFILE, EPOCH)
    assert await store.consume_challenge(c, HOST, PROFILE) is None
    assert await store.consume_challenge("unknown", HOST, PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_challenges_are_stored_only_as_hashes(store):
    since = wal_position(store)
    await seed(store)
    minted = [await store.new_challenge(HOST, PROFILE), await store.issue_challenge(HOST, PROFILE)]
    taken = await store.consume_challenge(minted[1], HOST, PROFILE)  # now in flight
    stored = bytes_on_disk(store, since)
    for challenge in minted:
        assert challenge.encode() not in stored
    assert challenge_hash(minted[1]).encode() in stored
    # The in-flight one goes back by its hash, and its device's retry spends it.
    await store.restore_challenge(taken)
    assert await store.consume_challenge(minted[1], HOST, PROFILE) == taken


# The schema that stores proxy challenges as hashes (found by what it does: numbers are given out at merge).
HASHED_SCHEMA = next(n for n, script in _schema_files() if "RENAME COLUMN challenge TO challenge_hash" in script)


def plain_challenges_database(path, live: int, in_flight: int) -> list[str]:
    """A database from before hashed challenges, written by a SQLite built without secure delete:
    one pending host profile with ``live`` challenges and ``in_flight`` ones a crash left taken; returns them all."""
    conn = database_at_schema(path, HASHED_SCHEMA - 1)
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("INSERT INTO cas (name, url, created_at, updated_at) VALUES (?, 'https://ca.example/scep', ?, ?)",
                 (CA, EPOCH, EPOCH))
    conn.execute("INSERT INTO hosts VALUES (?, NULL, 'macos', ?, ?)", (HOST, EPOCH, EPOCH))
    conn.execute("INSERT INTO profiles (uuid, name, platform, content, ca_name, created_at, updated_at)"
                 " VALUES (?, 'Wi-Fi', 'macos', x'00', ?, ?, ?)", (PROFILE, CA, EPOCH, EPOCH))
    conn.execute("INSERT INTO host_profiles (host_uuid, profile_uuid, status, retries, created_at, updated_at, renewal_id)"
                 " VALUES (?, ?, 'pending', 0, ?, ?, 'sp-1')", (HOST, PROFILE, EPOCH, EPOCH))
    challenges = [base64.urlsafe_b64encode(b"%024d" % i).decode() for i in range(live + in_flight)]
    conn.executemany("INSERT INTO challenges VALUES (?, ?, ?, ?)",
                     [(c, HOST, PROFILE, EPOCH) for c in challenges[:live]])
    conn.executemany("INSERT INTO challenges_in_flight VALUES (?, ?, ?, ?, ?)",
                     [(c, HOST, PROFILE, EPOCH, EPOCH) for c in challenges[live:]])
    conn.commit()
    conn.close()
    return challenges


def without_secure_delete(monkeypatch):
    """Every database the store opens starts as a SQLite built without secure delete leaves it."""
    opened = database_module._open

    def _open(path, busy_timeout):
        conn = opened(path, busy_timeout)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(database_module, "_open", _open)


def stored_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


@pytest_twisted.ensureDeferred
async def test_upgrade_hashes_live_challenges_leaves_no_plain_copy_and_devices_still_enroll(
    tmp_path, clock, monkeypatch, logs
):
    path = tmp_path / "old.sqlite"
    challenges = plain_challenges_database(path, live=300, in_flight=5)
    assert all(c.encode() in stored_bytes(path) for c in challenges)
    without_secure_delete(monkeypatch)
    assert Store.migrate(path) == SCHEMA_VERSION
    # Neither the file (free pages included) nor its WAL keeps a challenge from before.
    stored = stored_bytes(path)
    assert [c for c in challenges if c.encode() in stored] == []
    assert "compacted %s after schema %d" % (path, HASHED_SCHEMA) in logs.text()
    assert logs.warnings() == []
    conn = raw(path)
    assert sorted(c for (c,) in conn.execute("SELECT challenge_hash FROM challenges")) == sorted(
        challenge_hash(c) for c in challenges[:300])
    conn.close()
    s = Store(path, reactor, clock=clock, challenge_ttl=TTL)
    await s.start()
    try:
        # The ones a crash left in flight come back by their hashes ...
        assert await s.restore_orphaned_challenges() == 5
        # ... and every device enrolls with the challenge its profile carries, once.
        for c in challenges:
            assert await s.consume_challenge(c, HOST, PROFILE) == ConsumedChallenge(challenge_hash(c), HOST, PROFILE, EPOCH)
        assert [await s.consume_challenge(c, HOST, PROFILE) for c in challenges[::50]] == [None] * 7
    finally:
        await s.stop()
    assert Store.migrate(path) == SCHEMA_VERSION
    compacted = [e for e in logs.events if e.get("log_format", "").startswith("compacted")]
    assert len(compacted) == 1  # once, at the upgrade; never for a database already upgraded


def test_upgrade_warns_when_the_file_cannot_be_compacted(tmp_path, logs):
    path = tmp_path / "old.sqlite"
    plain_challenges_database(path, live=3, in_flight=0)
    reader = raw(path)  # another process still reading the database keeps its WAL from being emptied
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM challenges").fetchone()
    try:
        assert Store.migrate(path) == SCHEMA_VERSION
    finally:
        reader.rollback()
        reader.close()
    assert logs.warnings() == [
        "could not compact %s after schema %d (another process has the database open): copies of what it replaced"
        " may stay in the file's free space; run VACUUM on it while scepproxyd is stopped" % (path, HASHED_SCHEMA)
    ]


@pytest_twisted.ensureDeferred
async def test_consume_expired_refused_and_removed(store, clock):
    await seed(store)
    c = await store.new_challenge(HOST, PROFILE)
    clock.advance(TTL)  # exactly at the TTL it is still valid
    fresh = await store.new_challenge(HOST, PROFILE)
    assert await store.consume_challenge(fresh, HOST, PROFILE) is not None
    clock.advance(0.5)
    assert await store.consume_challenge(c, HOST, PROFILE) is None
    assert raw(store).execute("SELECT COUNT(*) FROM challenges").fetchone()[0] == 0


@pytest_twisted.ensureDeferred
async def test_consume_with_wrong_host_profile_refused(store):
    await seed(store)
    await store.upsert_host("host-2", "S2", "macos")
    await store.assign_profile("host-2", PROFILE)
    c = await store.new_challenge(HOST, PROFILE)
    assert await store.consume_challenge(c, "host-2", PROFILE) is None
    assert await store.consume_challenge(c, HOST, "profile-x") is None
    assert await store.consume_challenge(c, HOST, PROFILE) is not None  # still there for its owner


@pytest_twisted.ensureDeferred
async def test_restore_keeps_original_created_at(store, clock):
    await seed(store)
    c = await store.new_challenge(HOST, PROFILE)
    clock.advance(TTL - 10)
    consumed = await store.consume_challenge(c, HOST, PROFILE)
    await store.restore_challenge(consumed)
    await store.restore_challenge(consumed)  # idempotent
    again = await store.consume_challenge(c, HOST, PROFILE)
    assert again == consumed
    assert again.created_at == EPOCH
    await store.restore_challenge(again)
    clock.advance(11)  # past the original expiry, not a fresh TTL
    assert await store.consume_challenge(c, HOST, PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_restore_after_host_profile_gone_is_noop(store):
    await seed(store)
    consumed = await store.consume_challenge(await store.new_challenge(HOST, PROFILE), HOST, PROFILE)
    conn = raw(store)
    conn.execute("DELETE FROM hosts WHERE uuid = ?", (HOST,))
    conn.commit()
    await store.restore_challenge(consumed)
    assert conn.execute("SELECT COUNT(*) FROM challenges").fetchone()[0] == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_consumes_yield_exactly_one(store):
    await seed(store)
    c = await store.new_challenge(HOST, PROFILE)
    results = await defer.gatherResults([store.consume_challenge(c, HOST, PROFILE) for _ in range(32)])
    winners = [r for r in results if r is not None]
    assert winners == [ConsumedChallenge(challenge_hash(c), HOST, PROFILE, EPOCH)]


@pytest_twisted.ensureDeferred
async def test_delete_expired_challenges_counts(store, clock, monkeypatch):
    monkeypatch.setattr(challenges_module, "_EXPIRED_BATCH", 3)  # exercise several batches
    await seed(store)
    for _ in range(7):
        await store.new_challenge(HOST, PROFILE)
    clock.advance(TTL + 1)
    keep = await store.new_challenge(HOST, PROFILE)
    assert await store.delete_expired_challenges() == 7
    assert await store.delete_expired_challenges() == 0
    assert await store.consume_challenge(keep, HOST, PROFILE) is not None


# -- host profile status transitions ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_challenge_failed_resets_and_counts(store, clock):
    await seed(store)
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    latest = await store.issue_challenge(HOST, PROFILE)
    clock.advance(2)
    assert await store.challenge_failed(latest, HOST, PROFILE, "custom scep challenge failed") == ChallengeRefusal(
        True, "latest", None
    )
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    clock.advance(1)
    assert (await refuse_latest(store, detail="again")).counted
    hp = await store.get_host_profile(HOST, PROFILE)
    assert (hp.status, hp.retries, hp.detail, hp.updated_at) == (None, 2, "again", EPOCH + 3)


@pytest_twisted.ensureDeferred
async def test_enrollment_forwarded_only_from_pending(store):
    await seed(store)
    assert await store.enrollment_forwarded(HOST, PROFILE) is False  # NULL
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    assert await store.enrollment_forwarded(HOST, PROFILE) is True
    assert (await store.get_host_profile(HOST, PROFILE)).status == "verifying"
    assert await store.enrollment_forwarded(HOST, PROFILE) is False  # already verifying
    await store.set_host_profile_status(HOST, PROFILE, "verified")
    assert await store.enrollment_forwarded(HOST, PROFILE) is False


# -- schema constraints --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deleting_host_cascades(store):
    await seed(store)
    await store.new_challenge(HOST, PROFILE)
    conn = raw(store)
    conn.execute("DELETE FROM hosts WHERE uuid = ?", (HOST,))
    conn.commit()
    assert await store.get_host_profile(HOST, PROFILE) is None
    assert conn.execute("SELECT COUNT(*) FROM challenges").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == 1


@pytest_twisted.ensureDeferred
async def test_ca_in_use_cannot_be_deleted_or_renamed(store, engine):
    await seed(store)
    conn = raw(store)
    with pytest.raises(refused_by_schema(engine)):
        conn.execute("DELETE FROM cas WHERE name = ?", (CA,))
    with pytest.raises(refused_by_schema(engine)):
        conn.execute("UPDATE cas SET name = 'renamed' WHERE name = ?", (CA,))


@pytest_twisted.ensureDeferred
async def test_one_host_profile_assigned_eight_times_at_once_is_assigned_once(store):
    """On PostgreSQL the eight run on several DB threads: a write that loses the race is a duplicate, never a raw error."""
    await store.upsert_host(HOST, "C02XYZ", "macos")
    await store.add_profile(PROFILE, "Wi-Fi cert", "macos", b"<plist/>", None)
    results = await defer.DeferredList([store.assign_profile(HOST, PROFILE) for _ in range(8)], consumeErrors=True)
    failures = [result for ok, result in results if not ok]
    assert len(failures) == 7
    assert all(failure.check(DuplicateError) for failure in failures), [f.value for f in failures]
    assert [hp.profile_uuid for hp in await store.list_host_profiles(host_uuid=HOST)] == [PROFILE]
