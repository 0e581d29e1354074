"""Tests for the store's admin plane: CAs, hosts and profiles."""

import pytest
import pytest_twisted

from scepproxyd.store import (
    CertificateAuthority,
    DuplicateError,
    Host,
    InUseError,
    NotFoundError,
    Profile,
    StoreError,
)
from test_store import CA, EPOCH, HOST, PROFILE, clock, db_path, raw, seed, store  # noqa: F401 (fixtures)

URL = "https://ca.example/scep"


def table(db_path, name):
    return raw(db_path).execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()


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
async def test_update_ca_errors(store, db_path):
    with pytest.raises(NotFoundError, match="no CA named 'ghost'"):
        await store.update_ca("ghost", url=URL)
    await store.add_ca(CA, URL)
    await store.add_ca("other", URL)
    before = table(db_path, "cas")
    with pytest.raises(DuplicateError, match="'other' already exists"):
        await store.update_ca(CA, new_name="other", url="https://changed.example/scep")
    assert table(db_path, "cas") == before


@pytest_twisted.ensureDeferred
async def test_rename_used_ca_names_profiles(store, db_path):
    await seed(store)
    await store.add_profile("profile-0", "another", "ios", b"x", CA)
    await store.add_profile("unrelated", "no CA", "ios", b"x", None)
    before = table(db_path, "cas")
    with pytest.raises(InUseError) as caught:
        await store.update_ca(CA, new_name="renamed", url="https://changed.example/scep")
    assert caught.value.profiles == ["profile-0", PROFILE]
    assert str(caught.value) == "CA 'acme' is used by profiles: profile-0, profile-1"
    assert isinstance(caught.value, StoreError)
    assert table(db_path, "cas") == before
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
        await store.list_hosts("windows")


@pytest_twisted.ensureDeferred
async def test_delete_host_cascades(store, db_path):
    await seed(store)
    await store.new_challenge(HOST, PROFILE)
    assert await store.delete_host(HOST) is True
    assert await store.delete_host(HOST) is False
    assert await store.get_host(HOST) is None
    assert table(db_path, "host_profiles") == []
    assert table(db_path, "challenges") == []
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
        (("h9", "S", "windows"), r"row 2: platform must be one of .*'windows'"),
        (("h9", "S"), r"row 2: expected \(uuid, serial, platform\)"),
        (("", "S", "ios"), "row 2: host uuid must be a non-empty string"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_import_hosts_all_or_nothing(store, db_path, bad_row, message):
    await store.upsert_host("h1", "OLD", "macos")
    before = table(db_path, "hosts")
    with pytest.raises(ValueError, match=message):
        await store.import_hosts([("h1", "NEW", "macos"), ("h2", "S2", "ios"), bad_row, ("h4", "S4", "ios")])
    assert table(db_path, "hosts") == before


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
async def test_add_profile_errors(store, db_path):
    with pytest.raises(NotFoundError, match="uses CA 'ghost', which does not exist"):
        await store.add_profile(PROFILE, "p", "ios", b"x", "ghost")
    with pytest.raises(ValueError, match="profile kind must be one of"):
        await store.add_profile(PROFILE, "p", "ios", b"x", None, kind="pdf")
    with pytest.raises(ValueError, match="platform must be one of"):
        await store.add_profile(PROFILE, "p", "windows", b"x", None)
    assert table(db_path, "profiles") == []
    await store.add_profile(PROFILE, "p", "ios", b"x", None)
    with pytest.raises(DuplicateError, match=f"uuid {PROFILE} already exists"):
        await store.add_profile(PROFILE, "other", "ios", b"y", None)


@pytest_twisted.ensureDeferred
async def test_list_profiles_ordered_by_name_then_uuid(store):
    for uuid, name in (("u3", "b"), ("u2", "a"), ("u1", "b")):
        await store.add_profile(uuid, name, "macos", b"x", None)
    assert [(p.name, p.uuid) for p in await store.list_profiles()] == [("a", "u2"), ("b", "u1"), ("b", "u3")]


@pytest_twisted.ensureDeferred
async def test_delete_profile_unassigns_everywhere(store, db_path):
    await seed(store)
    await seed(store, host="host-2", profile="profile-2")
    await store.assign_profile("host-2", PROFILE)
    await store.new_challenge("host-2", PROFILE)
    assert await store.delete_profile(PROFILE) is True
    assert await store.delete_profile(PROFILE) is False
    assert [(hp.host_uuid, hp.profile_uuid) for hp in await store.list_host_profiles()] == [("host-2", "profile-2")]
    assert table(db_path, "challenges") == []
    assert len(await store.list_hosts()) == 2
