"""Tests for the store's admin plane: CAs, hosts and profiles."""

from importlib import resources

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from scepproxyd.daemon.lifecycle import StoreService
from scepproxyd.store import (
    CertificateAuthority,
    DuplicateError,
    Host,
    IdentifierInUseError,
    InUseError,
    NotFoundError,
    Profile,
    Store,
    StoreError,
)
from support.store import CA, EPOCH, HOST, PROFILE, SCHEMA_VERSION, database_at_schema, raw, refused_by_schema, seed

URL = "https://ca.example/scep"


def table(store, name):
    return raw(store).execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()


# -- CAs -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_cas_ordered_by_name(store):
    assert await store.list_cas() == []
    for name in ("zeta", "Alpha", "beta"):
        await store.add_ca(name, URL)
    assert [ca.name for ca in await store.list_cas()] == ["Alpha", "beta", "zeta"]


@pytest_twisted.ensureDeferred
async def test_update_ca_fields(store, clock):
    await store.add_ca(CA, URL, b"old")
    clock.advance(7)
    ca = await store.update_ca(CA, url="https://new.example/scep")
    assert ca == CertificateAuthority(CA, "https://new.example/scep", b"old", EPOCH, EPOCH + 7)
    ca = await store.update_ca(CA, challenge_ciphertext=b"new")
    assert (ca.url, ca.challenge_ciphertext) == ("https://new.example/scep", b"new")
    assert await store.get_ca(CA) == ca


@pytest_twisted.ensureDeferred
async def test_rename_unused_ca(store, clock):
    await store.add_ca(CA, URL)
    clock.advance(1)
    ca = await store.update_ca(CA, new_name="renamed", url="https://r.example/scep")
    assert ca == CertificateAuthority("renamed", "https://r.example/scep", None, EPOCH, EPOCH + 1)
    assert await store.get_ca(CA) is None
    assert await store.update_ca("renamed", new_name="renamed") == CertificateAuthority(
        "renamed", "https://r.example/scep", None, EPOCH, EPOCH + 1
    )


@pytest_twisted.ensureDeferred
async def test_update_ca_errors(store):
    with pytest.raises(NotFoundError, match="no CA named 'ghost'"):
        await store.update_ca("ghost", url=URL)
    await store.add_ca(CA, URL)
    await store.add_ca("other", URL)
    before = table(store, "cas")
    with pytest.raises(DuplicateError, match="'other' already exists"):
        await store.update_ca(CA, new_name="other", url="https://changed.example/scep")
    assert table(store, "cas") == before


@pytest_twisted.ensureDeferred
async def test_rename_used_ca_names_profiles(store):
    await seed(store)
    await store.add_profile("profile-0", "another", "ios", b"x", CA)
    await store.add_profile("unrelated", "no CA", "ios", b"x", None)
    before = table(store, "cas")
    with pytest.raises(InUseError) as caught:
        await store.update_ca(CA, new_name="renamed", url="https://changed.example/scep")
    assert caught.value.profiles == ["profile-0", PROFILE]
    assert str(caught.value) == "CA 'acme' is used by profiles: profile-0, profile-1"
    assert isinstance(caught.value, StoreError)
    assert table(store, "cas") == before
    # Changing anything but the name is fine while in use.
    assert (await store.update_ca(CA, new_name=CA, url="https://changed.example/scep")).url.startswith("https://changed")


@pytest_twisted.ensureDeferred
async def test_delete_ca(store):
    with pytest.raises(NotFoundError, match="no CA named 'ghost'"):
        await store.delete_ca("ghost")
    await seed(store)
    with pytest.raises(InUseError, match="CA 'acme' is used by profiles: profile-1") as caught:
        await store.delete_ca(CA)
    assert caught.value.profiles == [PROFILE]
    assert await store.get_ca(CA) is not None
    await store.delete_profile(PROFILE)
    assert await store.delete_ca(CA) is None
    assert await store.get_ca(CA) is None


@pytest_twisted.ensureDeferred
async def test_profiles_using_ca(store):
    assert await store.profiles_using_ca(CA) == []
    await seed(store)
    await store.add_profile("a-profile", "p", "macos", b"x", CA)
    assert await store.profiles_using_ca(CA) == ["a-profile", PROFILE]
    assert await store.profiles_using_ca("ghost") == []


# -- hosts -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upsert_host_tells_created_from_updated(store, clock):
    assert await store.upsert_host(HOST, "S1", "macos") is True
    clock.advance(3)
    assert await store.upsert_host(HOST, None, "ios") is False
    assert await store.get_host(HOST) == Host(HOST, None, "ios", EPOCH, EPOCH + 3)
    assert await store.get_host("ghost") is None


@pytest_twisted.ensureDeferred
async def test_list_hosts(store):
    assert await store.list_hosts() == []
    for uuid, platform in (("c", "ios"), ("a", "android"), ("b", "ios")):
        await store.upsert_host(uuid, "S-" + uuid, platform)
    assert [h.uuid for h in await store.list_hosts()] == ["a", "b", "c"]
    assert await store.list_hosts("ios") == [Host("b", "S-b", "ios", EPOCH, EPOCH), Host("c", "S-c", "ios", EPOCH, EPOCH)]
    assert await store.list_hosts("macos") == []
    with pytest.raises(ValueError, match="platform must be one of"):
        await store.list_hosts("beos")


@pytest_twisted.ensureDeferred
async def test_delete_host_cascades(store):
    await seed(store)
    await store.new_challenge(HOST, PROFILE)
    assert await store.delete_host(HOST) is True
    assert await store.delete_host(HOST) is False
    assert await store.get_host(HOST) is None
    assert table(store, "host_profiles") == []
    assert table(store, "challenges") == []
    assert await store.get_profile(PROFILE) is not None


@pytest_twisted.ensureDeferred
async def test_import_hosts(store, clock):
    await store.upsert_host("h1", "OLD", "macos")
    clock.advance(1)
    rows = [("h1", "NEW", "macos"), ("h2", "S2", "ios"), ("h3", None, "android")]
    assert await store.import_hosts(rows) == (2, 1)
    assert await store.list_hosts() == [
        Host("h1", "NEW", "macos", EPOCH, EPOCH + 1),
        Host("h2", "S2", "ios", EPOCH + 1, EPOCH + 1),
        Host("h3", None, "android", EPOCH + 1, EPOCH + 1),
    ]
    assert await store.import_hosts([]) == (0, 0)


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (("h9", "S", "beos"), r"row 2: platform must be one of .*'beos'"),
        (("h9", "S"), r"row 2: expected \(uuid, serial, platform\)"),
        (("", "S", "ios"), "row 2: host uuid must be a non-empty string"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_import_hosts_all_or_nothing(store, bad_row, message):
    await store.upsert_host("h1", "OLD", "macos")
    before = table(store, "hosts")
    with pytest.raises(ValueError, match=message):
        await store.import_hosts([("h1", "NEW", "macos"), ("h2", "S2", "ios"), bad_row, ("h4", "S4", "ios")])
    assert table(store, "hosts") == before


# -- profiles --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_and_get_profile(store):
    await store.add_ca(CA, URL)
    added = await store.add_profile(
        PROFILE, "Wi-Fi", "android", b"{}", CA, kind="android_template", identifier="wifi-cert",
        variables=["FLEET_VAR_CUSTOM_SCEP_CHALLENGE_acme", "FLEET_VAR_SCEP_RENEWAL_ID"],
    )
    assert added == Profile(
        PROFILE, "Wi-Fi", "android", "android_template", "wifi-cert", CA,
        ("FLEET_VAR_CUSTOM_SCEP_CHALLENGE_acme", "FLEET_VAR_SCEP_RENEWAL_ID"), b"{}", EPOCH, EPOCH,
    )
    assert await store.get_profile(PROFILE) == added
    assert await store.get_profile("ghost") is None
    assert "content" not in repr(added) and "b'{}'" not in repr(added)


@pytest_twisted.ensureDeferred
async def test_add_profile_positional_defaults(store):
    await store.add_profile(PROFILE, "p", "macos", b"<plist/>", None)
    assert await store.get_profile(PROFILE) == Profile(
        PROFILE, "p", "macos", "mobileconfig", None, None, (), b"<plist/>", EPOCH, EPOCH
    )


@pytest_twisted.ensureDeferred
async def test_add_profile_errors(store):
    with pytest.raises(NotFoundError, match="uses CA 'ghost', which does not exist"):
        await store.add_profile(PROFILE, "p", "ios", b"x", "ghost")
    with pytest.raises(ValueError, match="profile kind must be one of"):
        await store.add_profile(PROFILE, "p", "ios", b"x", None, kind="pdf")
    with pytest.raises(ValueError, match="platform must be one of"):
        await store.add_profile(PROFILE, "p", "beos", b"x", None)
    assert table(store, "profiles") == []
    await store.add_profile(PROFILE, "p", "ios", b"x", None)
    with pytest.raises(DuplicateError, match=f"uuid {PROFILE} already exists"):
        await store.add_profile(PROFILE, "other", "ios", b"y", None)


@pytest_twisted.ensureDeferred
async def test_identifier_belongs_to_one_profile_of_its_kind(store):
    await store.add_profile("first", "Wi-Fi", "macos", b"<plist/>", None, identifier="com.example.wifi")
    with pytest.raises(IdentifierInUseError) as e:
        await store.add_profile("second", "Wi-Fi again", "ios", b"<plist/>", None, identifier="com.example.wifi")
    assert (e.value.kind, e.value.identifier, e.value.profile_uuid, e.value.profile_name) == (
        "mobileconfig", "com.example.wifi", "first", "Wi-Fi")
    assert isinstance(e.value, DuplicateError)
    assert [row[0] for row in table(store, "profiles")] == ["first"]
    # The other kind has its own names; profiles without an identifier (older than schema 2) never clash.
    await store.add_profile("android", "t", "android", b"{}", None, kind="android_template", identifier="com.example.wifi")
    with pytest.raises(IdentifierInUseError, match="android_template identifier 'com.example.wifi' is already used by profile android"):
        await store.add_profile("android-2", "t", "android", b"{}", None, kind="android_template", identifier="com.example.wifi")
    await store.add_profile("old-1", "p", "macos", b"<plist/>", None)
    await store.add_profile("old-2", "p", "macos", b"<plist/>", None)
    # Free again once its holder is gone.
    assert await store.delete_profile("first")
    await store.add_profile("second", "Wi-Fi again", "ios", b"<plist/>", None, identifier="com.example.wifi")


@pytest_twisted.ensureDeferred
async def test_concurrent_adds_of_one_identifier_one_wins(store):
    adds = [
        store.add_profile("p%d" % i, "p", "macos", b"<plist/>", None, identifier="com.example.race")
        for i in range(5)
    ]
    results = await defer.DeferredList(adds, consumeErrors=True)
    won = [value for ok, value in results if ok]
    lost = [value.value for ok, value in results if not ok]
    assert len(won) == 1 and len(lost) == 4
    assert all(isinstance(error, IdentifierInUseError) and error.profile_uuid == won[0].uuid for error in lost)
    assert [row[0] for row in table(store, "profiles")] == [won[0].uuid]


@pytest_twisted.ensureDeferred
async def test_unique_index_refuses_a_second_identifier_written_around_the_store(store, engine):
    conn = raw(store)
    insert = ("INSERT INTO profiles (uuid, name, platform, content, created_at, updated_at, kind, identifier)"
              " VALUES (?, 'p', 'macos', ?, 0, 0, 'mobileconfig', 'com.example.wifi')")
    conn.execute(insert, ("a", b"\x00"))
    # Each engine names what it refused its own way: SQLite the index's columns, PostgreSQL the index.
    message = {"sqlite": "UNIQUE constraint failed: profiles.kind, profiles.identifier",
               "postgresql": 'duplicate key value violates unique constraint "profiles_kind_identifier"'}[engine]
    with pytest.raises(refused_by_schema(engine), match=message):
        conn.execute(insert, ("b", b"\x00"))


#: The schema that made profile identifiers unique.
UNIQUE_IDENTIFIERS_SCHEMA = next(n for n, name in enumerate(sorted(
    e.name for e in resources.files("scepproxyd.store").joinpath("schema").iterdir() if e.name.endswith(".sql")
), 1) if name.endswith("_unique_profile_identifiers.sql"))


def pre_unique_identifiers_database(path):
    """A database as the release before one-profile-per-identifier left it, holding a shared identifier."""
    conn = database_at_schema(path, UNIQUE_IDENTIFIERS_SCHEMA - 1)
    conn.executemany(
        "INSERT INTO profiles (uuid, name, platform, content, created_at, updated_at, kind, identifier)"
        " VALUES (?, ?, 'macos', x'00', ?, ?, ?, ?)",
        [
            ("twin-b", "Wi-Fi (copy)", EPOCH + 1, EPOCH + 1, "mobileconfig", "com.example.wifi"),
            ("twin-a", "Wi-Fi", EPOCH, EPOCH, "mobileconfig", "com.example.wifi"),
            ("alone", "VPN", EPOCH, EPOCH, "mobileconfig", "com.example.vpn"),
            ("android", "Wi-Fi", EPOCH, EPOCH, "android_template", "com.example.wifi"),
            ("legacy-1", "p", EPOCH, EPOCH, "mobileconfig", None),
            ("legacy-2", "p", EPOCH, EPOCH, "mobileconfig", None),
        ],
    )
    conn.commit()
    conn.close()


@pytest_twisted.ensureDeferred
async def test_migration_keeps_shared_identifiers_and_still_refuses_new_ones(tmp_path, clock):
    path = tmp_path / "old.sqlite"
    pre_unique_identifiers_database(path)
    assert Store.migrate(path) == SCHEMA_VERSION
    conn = raw(path)
    assert conn.execute("SELECT uuid, identifier, identifier_shared FROM profiles ORDER BY uuid").fetchall() == [
        ("alone", "com.example.vpn", 0), ("android", "com.example.wifi", 0), ("legacy-1", None, 0),
        ("legacy-2", None, 0), ("twin-a", "com.example.wifi", 1), ("twin-b", "com.example.wifi", 1),
    ]
    s = Store(path, reactor, clock=clock)
    await s.start()
    try:
        assert await s.shared_profile_identifiers() == [("mobileconfig", "com.example.wifi", ["twin-a", "twin-b"])]
        with pytest.raises(IdentifierInUseError) as e:
            await s.add_profile("new", "n", "macos", b"<plist/>", None, identifier="com.example.wifi")
        assert (e.value.profile_uuid, e.value.profile_name) == ("twin-a", "Wi-Fi")
        with pytest.raises(IdentifierInUseError):
            await s.add_profile("new", "n", "macos", b"<plist/>", None, identifier="com.example.vpn")
        await s.add_profile("new", "n", "macos", b"<plist/>", None, identifier="com.example.other")
        # The admin deletes one twin: no warning left, and the identifier stays the other's.
        assert await s.delete_profile("twin-b")
        assert await s.shared_profile_identifiers() == []
        with pytest.raises(IdentifierInUseError, match="used by profile twin-a"):
            await s.add_profile("newer", "n", "macos", b"<plist/>", None, identifier="com.example.wifi")
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_start_warns_about_profiles_sharing_an_identifier(tmp_path):
    path = tmp_path / "old.sqlite"
    pre_unique_identifiers_database(path)
    Store.migrate(path)
    events = []
    globalLogPublisher.addObserver(events.append)
    service = StoreService(Store(path, reactor))
    try:
        service.startService()
        await service.ready
    finally:
        globalLogPublisher.removeObserver(events.append)
        await service.stopService()
    warnings = [e for e in events if "share the identifier" in e.get("log_format", "")]
    assert [(e["profiles"], e["kind"], e["identifier"]) for e in warnings] == [
        ("twin-a, twin-b", "mobileconfig", "com.example.wifi")
    ]


@pytest_twisted.ensureDeferred
async def test_list_profiles_ordered_by_name_then_uuid(store):
    for uuid, name in (("u3", "b"), ("u2", "a"), ("u1", "b")):
        await store.add_profile(uuid, name, "macos", b"x", None)
    assert [(p.name, p.uuid) for p in await store.list_profiles()] == [("a", "u2"), ("b", "u1"), ("b", "u3")]


@pytest_twisted.ensureDeferred
async def test_delete_profile_unassigns_everywhere(store):
    await seed(store)
    await seed(store, host="host-2", profile="profile-2")
    await store.assign_profile("host-2", PROFILE)
    await store.new_challenge("host-2", PROFILE)
    assert await store.delete_profile(PROFILE) is True
    assert await store.delete_profile(PROFILE) is False
    assert [(hp.host_uuid, hp.profile_uuid) for hp in await store.list_host_profiles()] == [("host-2", "profile-2")]
    assert table(store, "challenges") == []
    assert len(await store.list_hosts()) == 2
