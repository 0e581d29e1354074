"""Host end users, custom secrets, and host profiles sent again when a value they render changes (both engines)."""

import pytest
import pytest_twisted

from scepproxyd.platforms import PLATFORMS
from scepproxyd.profiles.model import EndUser
from scepproxyd.store import NotFoundError, SecretInUseError
from scepproxyd.store import secrets as secrets_module
from support.store import CA, raw

#: Every platform delivered through the outbox.
OUTBOX = dict.fromkeys(PLATFORMS, "outbox")

USERNAME = "FLEET_VAR_HOST_END_USER_IDP_USERNAME"
SERIAL = "FLEET_VAR_HOST_HARDWARE_SERIAL"
SECRET = "FLEET_SECRET_WIFI"


async def fleet(store):
    """Two macOS hosts; a profile using the username, one using the serial, one using a secret; all sent."""
    await store.add_ca(CA, "https://ca.example/scep")
    await store.add_profile("p-user", "user", "macos", b"<plist/>", CA, identifier="u", variables=(USERNAME,))
    await store.add_profile("p-serial", "serial", "macos", b"<plist/>", CA, identifier="s", variables=(SERIAL,))
    await store.add_profile("p-secret", "secret", "macos", b"<plist/>", CA, identifier="x", variables=(SECRET,))
    await store.import_hosts([("m1", "S1", "macos"), ("m2", "S2", "macos")])
    for profile in ("p-user", "p-serial", "p-secret"):
        await store.assign_profile_to_hosts(profile, ["m1", "m2"])
    await store.claim_host_profiles(100, OUTBOX)


def statuses(store):
    return dict(((h, p), s) for h, p, s in raw(store).execute(
        "SELECT host_uuid, profile_uuid, status FROM host_profiles ORDER BY host_uuid, profile_uuid"))


@pytest_twisted.ensureDeferred
async def test_end_user_round_trip_and_partial_changes(store):
    await fleet(store)
    user, _ = await store.set_end_user("m1", {"idp_username": "a@x", "idp_groups": ["g1", "g2"]})
    assert user == EndUser("a@x", None, ("g1", "g2"), None, None)
    user, _ = await store.set_end_user("m1", {"idp_department": "R&D"})
    assert user == EndUser("a@x", None, ("g1", "g2"), "R&D", None)
    assert (await store.get_host("m1")).end_user == user
    assert (await store.get_host("m2")).end_user is None
    with pytest.raises(NotFoundError, match="no host ghost"):
        await store.set_end_user("ghost", {"idp_username": "a"})


@pytest_twisted.ensureDeferred
async def test_changed_username_resends_only_profiles_using_it(store):
    await fleet(store)
    _, sent = await store.set_end_user("m1", {"idp_username": "a@x"})
    assert sent == [("m1", "p-user")]
    now = statuses(store)
    assert now[("m1", "p-user")] is None
    assert {k: v for k, v in now.items() if k != ("m1", "p-user")} == dict.fromkeys(
        [("m1", "p-secret"), ("m1", "p-serial"), ("m2", "p-secret"), ("m2", "p-serial"), ("m2", "p-user")], "pending")
    hp = await store.get_host_profile("m1", "p-user")
    assert hp.detail == "sent again: a value it renders changed ($%s)" % (USERNAME,)
    assert raw(store).execute("SELECT status FROM commands WHERE host_uuid = 'm1' AND profile_uuid = 'p-user'"
                              ).fetchone()[0] == "superseded"


@pytest_twisted.ensureDeferred
async def test_unchanged_value_resends_nothing(store):
    await fleet(store)
    await store.set_end_user("m1", {"idp_username": "a@x"})
    await store.claim_host_profiles(100, OUTBOX)
    _, sent = await store.set_end_user("m1", {"idp_username": "a@x", "idp_full_name": "A"})
    assert sent == []
    assert set(statuses(store).values()) == {"pending"}


@pytest_twisted.ensureDeferred
async def test_serial_change_resends_through_put_and_import(store):
    await fleet(store)
    await store.upsert_host("m1", "S1", "macos")
    assert set(statuses(store).values()) == {"pending"}
    await store.upsert_host("m1", "S1-new", "macos")
    assert statuses(store)[("m1", "p-serial")] is None
    await store.import_hosts_batch([("m2", "S2-new", "macos", {"idp_username": "b@x"})])
    now = statuses(store)
    assert now[("m2", "p-serial")] is None and now[("m2", "p-user")] is None and now[("m2", "p-secret")] == "pending"
    assert (await store.get_host("m2")).end_user.idp_username == "b@x"


@pytest_twisted.ensureDeferred
async def test_update_host_partial(store):
    await fleet(store)
    host, sent = await store.update_host("m1", end_user={"idp_email": "a@mail"})
    assert (host.serial, host.end_user.idp_email, sent) == ("S1", "a@mail", [])
    host, sent = await store.update_host("m1", serial=None)
    assert (host.serial, sent) == (None, [("m1", "p-serial")])
    assert statuses(store)[("m1", "p-serial")] is None
    with pytest.raises(NotFoundError):
        await store.update_host("ghost", serial="x")


@pytest_twisted.ensureDeferred
async def test_failed_for_a_missing_value_is_sent_again_once_set(store):
    await fleet(store)
    command = (await store.get_host_profile("m1", "p-user")).command_uuid
    assert await store.render_failed(command, "host has no value for $" + USERNAME) == ("m1", "p-user")
    hp = await store.get_host_profile("m1", "p-user")
    assert (hp.status, hp.detail) == ("failed", "host has no value for $" + USERNAME)
    assert (await store.get_command(command)).status == "error"
    _, sent = await store.set_end_user("m1", {"idp_username": "a@x"})
    assert sent == [("m1", "p-user")]


@pytest_twisted.ensureDeferred
async def test_render_inputs(store):
    await fleet(store)
    await store.set_end_user("m1", {"idp_username": "a@x"})
    await store.put_secret("WIFI", b"sealed")
    inputs = await store.render_inputs("m1", "p-secret")
    assert inputs.variables == (SECRET,)
    assert inputs.host["FLEET_VAR_HOST_END_USER_IDP_USERNAME"] == "a@x"
    assert inputs.sealed_secrets == {"WIFI": b"sealed"}
    assert "sealed" not in repr(inputs)
    assert await store.render_inputs("m1", "nothing") is None


@pytest_twisted.ensureDeferred
async def test_secrets_crud_and_in_use(store, clock):
    assert await store.put_secret("WIFI", b"one") is True
    clock.advance(5)
    assert await store.put_secret("WIFI", b"two") is False
    secret = await store.get_secret("WIFI")
    assert (secret.value_ciphertext, secret.updated_at - secret.created_at) == (b"two", 5)
    assert "two" not in repr(secret)
    listed = await store.list_secrets()
    assert [s.name for s in listed] == ["WIFI"] and listed[0].value_ciphertext == b""
    assert await store.missing_secrets(["WIFI", "NOPE", "A"]) == ["A", "NOPE"]
    await fleet(store)
    with pytest.raises(SecretInUseError, match="secret 'WIFI' is used by profiles: p-secret"):
        await store.delete_secret("WIFI")
    await store.delete_profile("p-secret")
    assert await store.delete_secret("WIFI") is True
    assert await store.delete_secret("WIFI") is False


@pytest_twisted.ensureDeferred
async def test_secret_change_resends_in_batches(store, monkeypatch):
    monkeypatch.setattr(secrets_module, "RESEND_BATCH", 1)
    await fleet(store)
    assert await store.resend_for_secret("WIFI") == 2
    now = statuses(store)
    assert (now[("m1", "p-secret")], now[("m2", "p-secret")]) == (None, None)
    assert [v for k, v in now.items() if k[1] != "p-secret"] == ["pending"] * 4
    assert await store.resend_for_secret("OTHER") == 0


@pytest_twisted.ensureDeferred
async def test_deleting_a_host_deletes_its_end_user(store):
    await fleet(store)
    await store.set_end_user("m1", {"idp_username": "a@x"})
    assert await store.delete_host("m1")
    assert raw(store).execute("SELECT count(*) FROM host_end_users").fetchone()[0] == 0


# -- hand-over: a host without a value fails; the job goes on for the others ---------------------------


@pytest_twisted.ensureDeferred
async def test_push_delivery_fails_the_host_without_a_value_and_delivers_the_others(store, clock, logs):
    import plistlib
    from pathlib import Path

    from twisted.internet import defer, reactor

    from scepproxyd.delivery.push import PushDelivery
    from scepproxyd.delivery.render import CommandRenderer
    from scepproxyd.keys import ChallengeCipher
    from scepproxyd.profiles import parse_profile
    from support.store import claim_all

    class RecordingMDM:
        def __init__(self):
            self.profiles = {}

        def enqueue(self, enrollment_id, command_uuid, payload):
            self.profiles[enrollment_id] = payload
            return defer.succeed(None)

    cipher = ChallengeCipher(b"k" * 32)
    content = (Path(__file__).parent / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig").read_bytes()
    content = content.replace(b"CA_NAME", CA.encode()).replace(b"%SerialNumber% WIFI", b"$" + USERNAME.encode())
    await store.add_ca(CA, "https://ca.example/scep", cipher.encrypt("corp-static"))
    await store.add_profile("P", "Wi-Fi", "macos", content, CA, identifier="w",
                            variables=parse_profile(content).variables)
    await store.import_hosts([("m1", "S1", "macos", {"idp_username": "alice@corp.example"}), ("m2", "S2", "macos")])
    await store.assign_profile_to_hosts("P", ["m1", "m2"])
    await claim_all(store)  # macOS through NanoMDM
    mdm = RecordingMDM()
    push = PushDelivery(store, CommandRenderer(store, cipher, "http://127.0.0.1:8080", reactor), mdm, clock)
    result = await push.deliver_due()
    assert (result["delivered"], result["delivery_refused"]) == (1, 1)
    scep = plistlib.loads(mdm.profiles["m1"])["PayloadContent"][0]["PayloadContent"]
    assert scep["Subject"][0][0][1].startswith("alice@corp.example sp-")
    hp = await store.get_host_profile("m2", "P")
    assert (hp.status, hp.detail, hp.retries) == ("failed", "host has no value for $" + USERNAME, 0)
    assert raw(store).execute("SELECT count(*) FROM challenges WHERE host_uuid = 'm2'").fetchone()[0] == 0
    assert "host has no value for $%s" % (USERNAME,) in logs.text()
