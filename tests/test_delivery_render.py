"""Rendering at hand-over: what a delivered profile carries, for an upstream CA and for the built-in CA."""

import plistlib
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from scepproxyd.ca.policy import challenge_hash
from scepproxyd.delivery.render import CommandRenderer
from scepproxyd.keys import ChallengeCipher
from scepproxyd.store.ca import CaGrant

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
BACKENDS = dict.fromkeys(("macos", "ios", "ipados", "android", "windows"), "outbox")
KEY = b"k" * 32


def scep_payload(rendered) -> dict:
    profile = plistlib.loads(rendered.payload)
    (scep,) = [p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep"]
    return scep["PayloadContent"]


async def claimed_job(store, ca_name, content):
    await store.upsert_host("MAC-1", "SER-1", "macos")
    await store.add_profile("P1", "Wi-Fi", "macos", content, ca_name)
    await store.assign_profile("MAC-1", "P1")
    await store.claim_host_profiles(10, BACKENDS)
    (job,) = await store.commands_for_host("MAC-1", "outbox")
    return job


@pytest_twisted.ensureDeferred
async def test_builtin_ca_profile_gets_a_one_time_ca_challenge_never_a_static_one(store):
    await store.register_managed_ca("builtin", "http://127.0.0.1:8080/scep")
    job = await claimed_job(store, "builtin", (FIXTURES / "builtin-ca-wifi.mobileconfig").read_bytes())
    assert job.ca_builtin
    renderer = CommandRenderer(store, ChallengeCipher(KEY), "http://127.0.0.1:8080", reactor,
                               builtin_template="default")
    first = scep_payload(await renderer.render(job))["Challenge"]
    second = scep_payload(await renderer.render(job))["Challenge"]
    assert len(first) == len(second) == 32 and first != second
    # Only the newest rendered copy enrolls; the challenge authorises this host profile only.
    assert await store.consume_ca_challenge(challenge_hash(first)) is None
    assert await store.consume_ca_challenge(challenge_hash(second)) == CaGrant("default", "MAC-1", "P1")


@pytest_twisted.ensureDeferred
async def test_upstream_ca_profile_carries_its_static_challenge(store):
    cipher = ChallengeCipher(KEY)
    await store.add_ca("CORP_CA", "https://ca.example/scep", cipher.encrypt("corp-static"))
    content = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
    job = await claimed_job(store, "CORP_CA", content)
    assert not job.ca_builtin
    rendered = await CommandRenderer(store, cipher, "http://127.0.0.1:8080", reactor).render(job)
    assert scep_payload(rendered)["Challenge"] == "corp-static"
