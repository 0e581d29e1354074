"""Tests for host profiles: assigning, listing, resending and counting."""

from importlib import resources

import pytest
import pytest_twisted

from twisted.internet import reactor

from scepproxyd.store.models import challenge_hash
from scepproxyd.store import DuplicateError, HostProfile, NotFoundError, PlatformMismatchError, Store
from support.store import (
    CA,
    EPOCH,
    HOST,
    PROFILE,
    RENEWAL_ID,
    SCHEMA_VERSION,
    raw,
    refuse_latest,
    refused_by_schema,
    seed,
)


def host_profiles(store):
    return raw(store).execute("SELECT * FROM host_profiles ORDER BY host_uuid, profile_uuid").fetchall()


async def fleet(store, hosts=(("m1", "macos"), ("m2", "macos"), ("m3", "macos"), ("i1", "ios"))):
    """A CA, a macOS profile and an iOS profile using it, and some hosts; nothing assigned."""
    await store.add_ca(CA, "https://ca.example/scep")
    await store.add_profile("mac-profile", "Mac cert", "macos", b"<plist/>", CA)
    await store.add_profile("ios-profile", "iOS cert", "ios", b"<plist/>", CA)
    await store.import_hosts([(uuid, None, platform) for uuid, platform in hosts])


# -- assign_profile -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_assign_profile_sets_unique_renewal_ids(store):
    await fleet(store)
    assigned = [await store.assign_profile(h, "mac-profile") for h in ("m1", "m2", "m3")]
    ids = [hp.renewal_id for hp in assigned]
    assert all(RENEWAL_ID.match(i) for i in ids)
    assert len(set(ids)) == 3
    assert (await store.get_host_profile("m2", "mac-profile")).renewal_id == ids[1]


@pytest_twisted.ensureDeferred
async def test_assign_profile_errors(store):
    await fleet(store)
    message = "profile mac-profile is for macos and cannot be assigned to host i1, which is ios"
    with pytest.raises(PlatformMismatchError, match=message) as caught:
        await store.assign_profile("i1", "mac-profile")
    e = caught.value
    assert (e.host_uuid, e.host_platform, e.profile_platform, e.profile_uuid) == ("i1", "ios", "macos", "mac-profile")
    with pytest.raises(NotFoundError, match="no host ghost and no profile nothing"):
        await store.assign_profile("ghost", "nothing")
    with pytest.raises(NotFoundError, match="cannot assign: no profile nothing"):
        await store.assign_profile("m1", "nothing")
    assert host_profiles(store) == []
    await store.assign_profile("m1", "mac-profile")
    with pytest.raises(DuplicateError):
        await store.assign_profile("m1", "mac-profile")


@pytest_twisted.ensureDeferred
async def test_renewal_id_is_unique_in_the_schema(store, engine):
    await fleet(store)
    first = await store.assign_profile("m1", "mac-profile")
    await store.assign_profile("m2", "mac-profile")
    conn = raw(store)
    # Each engine names what it refused its own way: SQLite the index's column, PostgreSQL the index.
    message = {"sqlite": "UNIQUE constraint failed: host_profiles.renewal_id",
               "postgresql": 'duplicate key value violates unique constraint "host_profiles_renewal_id"'}[engine]
    with pytest.raises(refused_by_schema(engine), match=message):
        conn.execute("UPDATE host_profiles SET renewal_id = ? WHERE host_uuid = 'm2'", (first.renewal_id,))


# -- assign_profile_to_hosts --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_assign_profile_to_hosts_skips_existing(store):
    await fleet(store)
    await store.assign_profile("m2", "mac-profile")
    assert await store.assign_profile_to_hosts("mac-profile", ["m1", "m2", "m3", "m1"]) == 2
    rows = await store.list_host_profiles(profile_uuid="mac-profile")
    assert [hp.host_uuid for hp in rows] == ["m1", "m2", "m3"]
    assert len({hp.renewal_id for hp in rows}) == 3
    assert all(RENEWAL_ID.match(hp.renewal_id) for hp in rows)
    assert await store.assign_profile_to_hosts("mac-profile", ["m1"]) == 0
    assert await store.assign_profile_to_hosts("mac-profile", []) == 0


@pytest_twisted.ensureDeferred
async def test_assign_profile_to_hosts_all_or_nothing(store):
    await fleet(store)
    await store.assign_profile("m3", "mac-profile")
    before = host_profiles(store)
    with pytest.raises(NotFoundError, match="no host ghost-1$"):
        await store.assign_profile_to_hosts("mac-profile", ["m1", "i1", "ghost-1", "m2", "ghost-2"])
    assert host_profiles(store) == before
    with pytest.raises(PlatformMismatchError) as caught:
        await store.assign_profile_to_hosts("mac-profile", ["m1", "m2", "i1"])
    assert (caught.value.host_uuid, caught.value.host_platform, caught.value.profile_platform) == ("i1", "ios", "macos")
    assert host_profiles(store) == before
    with pytest.raises(NotFoundError, match="no profile ghost"):
        await store.assign_profile_to_hosts("ghost", ["m1"])


@pytest_twisted.ensureDeferred
async def test_assign_profile_to_many_hosts(store):
    hosts = [(f"m{i:04}", "macos") for i in range(1200)]  # more than one IN (...) chunk
    await fleet(store, hosts)
    assert await store.assign_profile_to_hosts("mac-profile", [uuid for uuid, _ in hosts]) == 1200
    assert await store.unassign_profile("mac-profile", [uuid for uuid, _ in hosts[:700]]) == 700
    assert len(await store.list_host_profiles()) == 500


# -- assign_profile_to_platform ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_assign_profile_to_platform(store, clock):
    await fleet(store)
    first = await store.assign_profile("m1", "mac-profile")
    clock.advance(1)
    assert await store.assign_profile_to_platform("mac-profile", "macos") == 2
    rows = await store.list_host_profiles(profile_uuid="mac-profile")
    assert [(hp.host_uuid, hp.created_at) for hp in rows] == [("m1", EPOCH), ("m2", EPOCH + 1), ("m3", EPOCH + 1)]
    assert rows[0] == first
    assert all(RENEWAL_ID.match(hp.renewal_id) for hp in rows) and len({hp.renewal_id for hp in rows}) == 3
    assert await store.assign_profile_to_platform("mac-profile", "macos") == 0


@pytest_twisted.ensureDeferred
async def test_assign_profile_to_platform_errors(store):
    await fleet(store)
    with pytest.raises(PlatformMismatchError, match="cannot be assigned to ios hosts") as caught:
        await store.assign_profile_to_platform("mac-profile", "ios")
    assert (caught.value.host_uuid, caught.value.host_platform, caught.value.profile_platform) == (None, "ios", "macos")
    with pytest.raises(NotFoundError, match="no profile ghost"):
        await store.assign_profile_to_platform("ghost", "macos")
    with pytest.raises(ValueError, match="platform must be one of"):
        await store.assign_profile_to_platform("mac-profile", "beos")
    assert host_profiles(store) == []


# -- unassign_profile ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unassign_profile(store):
    await fleet(store)
    await store.assign_profile_to_platform("mac-profile", "macos")
    await store.assign_profile("i1", "ios-profile")
    await store.new_challenge("m1", "mac-profile")
    assert await store.unassign_profile("mac-profile", ["m1", "ghost", "i1"]) == 1
    assert raw(store).execute("SELECT COUNT(*) FROM challenges").fetchone()[0] == 0
    assert await store.unassign_profile("mac-profile", []) == 0
    assert await store.unassign_profile("mac-profile", None) == 2
    assert await store.unassign_profile("mac-profile") == 0
    assert await store.unassign_profile("ghost") == 0
    assert [(hp.host_uuid, hp.profile_uuid) for hp in await store.list_host_profiles()] == [("i1", "ios-profile")]


# -- list_host_profiles ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_host_profiles_filters(store):
    await fleet(store)
    await store.add_profile("mac-2", "Mac cert 2", "macos", b"<plist/>", None)
    await store.assign_profile_to_platform("mac-profile", "macos")
    await store.assign_profile_to_platform("mac-2", "macos")
    await store.assign_profile("i1", "ios-profile")
    await store.set_host_profile_status("m1", "mac-profile", "pending")
    await store.set_host_profile_status("m2", "mac-2", "verified")
    await store.set_host_profile_status("m3", "mac-2", "verified")

    def pairs(rows):
        return [(hp.host_uuid, hp.profile_uuid) for hp in rows]

    everything = await store.list_host_profiles()
    assert pairs(everything) == [
        ("i1", "ios-profile"),
        ("m1", "mac-2"), ("m1", "mac-profile"),
        ("m2", "mac-2"), ("m2", "mac-profile"),
        ("m3", "mac-2"), ("m3", "mac-profile"),
    ]
    assert all(isinstance(hp, HostProfile) for hp in everything)
    assert pairs(await store.list_host_profiles(host_uuid="m2")) == [("m2", "mac-2"), ("m2", "mac-profile")]
    assert pairs(await store.list_host_profiles(profile_uuid="mac-2")) == [("m1", "mac-2"), ("m2", "mac-2"), ("m3", "mac-2")]
    assert pairs(await store.list_host_profiles(status="verified")) == [("m2", "mac-2"), ("m3", "mac-2")]
    assert pairs(await store.list_host_profiles(status="pending")) == [("m1", "mac-profile")]
    assert pairs(await store.list_host_profiles(status="null")) == [
        ("i1", "ios-profile"), ("m1", "mac-2"), ("m2", "mac-profile"), ("m3", "mac-profile"),
    ]
    assert pairs(await store.list_host_profiles(host_uuid="m1", profile_uuid="mac-2", status="null")) == [("m1", "mac-2")]
    assert pairs(await store.list_host_profiles(host_uuid="m1", status="verified")) == []
    assert pairs(await store.list_host_profiles(status="failed")) == []
    assert pairs(await store.list_host_profiles(host_uuid="ghost")) == []
    assert pairs(await store.list_host_profiles(limit=2, offset=1)) == [("m1", "mac-2"), ("m1", "mac-profile")]
    assert pairs(await store.list_host_profiles(status="null", limit=1, offset=3)) == [("m3", "mac-profile")]
    assert await store.list_host_profiles(limit=0) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"status": "bogus"}, "status filter must be one of pending, verifying, verified, failed, null"),
        ({"limit": -1}, "limit must be a non-negative integer"),
        ({"offset": "3"}, "offset must be a non-negative integer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_list_host_profiles_bad_arguments(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        await store.list_host_profiles(**kwargs)


# -- resend and counts ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resend_resets_and_removes_challenges(store, clock):
    assigned = await seed(store)
    await seed(store, host="host-2", profile="profile-2")
    await store.set_host_profile_status(HOST, PROFILE, "pending")
    assert (await refuse_latest(store)).counted
    await store.set_host_profile_status(HOST, PROFILE, "failed", "gave up")
    stale = [await store.new_challenge(HOST, PROFILE) for _ in range(2)]
    other = await store.new_challenge("host-2", "profile-2")
    clock.advance(9)
    resent = await store.resend_host_profile(HOST, PROFILE)
    assert resent == HostProfile(HOST, PROFILE, None, None, 0, EPOCH, EPOCH + 9, assigned.renewal_id)
    assert await store.get_host_profile(HOST, PROFILE) == resent
    for challenge in stale:
        assert await store.consume_challenge(challenge, HOST, PROFILE) is None
    assert await store.consume_challenge(other, "host-2", "profile-2") is not None
    assert await store.resend_host_profile(HOST, "ghost") is None
    assert await store.resend_host_profile("ghost", PROFILE) is None


@pytest_twisted.ensureDeferred
async def test_count_host_profiles_by_status(store):
    assert await store.count_host_profiles_by_status() == {
        None: 0, "pending": 0, "verifying": 0, "verified": 0, "failed": 0
    }
    await fleet(store)
    await store.assign_profile_to_platform("mac-profile", "macos")
    await store.assign_profile("i1", "ios-profile")
    await store.set_host_profile_status("m1", "mac-profile", "verified")
    await store.set_host_profile_status("m2", "mac-profile", "verified")
    await store.set_host_profile_status("m3", "mac-profile", "failed")
    assert await store.count_host_profiles_by_status() == {
        None: 1, "pending": 0, "verifying": 0, "verified": 2, "failed": 1
    }


# -- migration 0001 -> 0002 ---------------------------------------------------------------


def schema_1_database(path):
    """A database as the first release left it: only 0001 applied, with data in it."""
    conn = raw(path)
    sql = resources.files("scepproxyd.store").joinpath("schema/0001_initial.sql").read_text(encoding="utf-8")
    conn.executescript(sql)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO cas VALUES (?, ?, ?, ?, ?)", (CA, "https://ca.example/scep", b"sealed", EPOCH, EPOCH))
    conn.execute("INSERT INTO hosts VALUES ('h1', 'S1', 'macos', ?, ?), ('h2', NULL, 'macos', ?, ?)", (EPOCH,) * 4)
    conn.execute("INSERT INTO profiles VALUES ('p1', 'Wi-Fi', 'macos', ?, ?, ?, ?)", (b"<plist/>", CA, EPOCH, EPOCH))
    conn.execute(
        "INSERT INTO host_profiles VALUES ('h1', 'p1', 'pending', NULL, 2, ?, ?), ('h2', 'p1', NULL, 'x', 0, ?, ?)",
        (EPOCH,) * 4,
    )
    conn.execute("INSERT INTO challenges VALUES ('c1', 'h1', 'p1', ?)", (EPOCH,))
    conn.commit()
    conn.close()


def test_migrate_from_schema_1_keeps_data_and_backfills_renewal_ids(tmp_path):
    path = tmp_path / "old.sqlite"
    schema_1_database(path)
    assert Store.migrate(path) == SCHEMA_VERSION
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # Later versions add TLS columns with their defaults (no bundle, verified), the built-in flag (off)
    # and RA mode's (passthrough, no RA identity).
    assert conn.execute("SELECT * FROM cas").fetchall() == [
        (CA, "https://ca.example/scep", b"sealed", EPOCH, EPOCH, None, 1, 0, "passthrough", None, None, 0)
    ]
    assert conn.execute("SELECT COUNT(*) FROM hosts").fetchone()[0] == 2
    # The live challenge is kept as its hash only (schema 13): its device still enrolls with it.
    assert conn.execute("SELECT * FROM challenges").fetchall() == [(challenge_hash("c1"), "h1", "p1", EPOCH)]
    assert conn.execute("SELECT uuid, kind, identifier, variables, content FROM profiles").fetchall() == [
        ("p1", "mobileconfig", None, None, b"<plist/>")
    ]
    rows = conn.execute(
        "SELECT host_uuid, profile_uuid, status, detail, retries, renewal_id FROM host_profiles ORDER BY host_uuid"
    ).fetchall()
    assert [row[:5] for row in rows] == [("h1", "p1", "pending", None, 2), ("h2", "p1", None, "x", 0)]
    renewal_ids = [row[5] for row in rows]
    assert all(RENEWAL_ID.match(i) for i in renewal_ids)
    assert len(set(renewal_ids)) == 2
    indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(host_profiles)")}
    assert indexes["host_profiles_renewal_id"] == 1  # unique
    assert Store.migrate(path) == SCHEMA_VERSION
    assert [r[0] for r in conn.execute("SELECT renewal_id FROM host_profiles ORDER BY host_uuid")] == renewal_ids


@pytest_twisted.ensureDeferred
async def test_store_works_on_migrated_schema_1_database(tmp_path, clock):
    path = tmp_path / "old.sqlite"
    schema_1_database(path)
    Store.migrate(path)
    s = Store(path, reactor, clock=clock)
    await s.start()
    try:
        profile = await s.get_profile("p1")
        assert (profile.kind, profile.identifier, profile.variables) == ("mobileconfig", None, ())
        assert [hp.retries for hp in await s.list_host_profiles()] == [2, 0]
        assert await s.assign_profile_to_platform("p1", "macos") == 0
        assert await s.consume_challenge("c1", "h1", "p1") is not None
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_kind_is_checked_by_the_schema(store, engine):
    conn = raw(store)
    # Each engine words a refused CHECK its own way (PostgreSQL names the constraint it made for the column).
    message = {"sqlite": "CHECK constraint failed",
               "postgresql": 'violates check constraint "profiles_kind_check"'}[engine]
    with pytest.raises(refused_by_schema(engine), match=message):
        conn.execute("INSERT INTO profiles (uuid, name, platform, content, kind, created_at, updated_at)"
                     " VALUES ('p', 'n', 'macos', ?, 'pdf', 0, 0)", (b"\x00",))
