"""
GetCACaps and GetCACert find their proxy target in memory (scep/targets.py), and never a stale one.

What a device hears stays what it heard before the cache: the tests count
the store's ``proxy_target`` calls to see where an answer came from, and
check the answer itself after every admin change that could alter it.
"""

import pytest
import pytest_twisted
from twisted.logger import formatEvent
from twisted.internet import defer, reactor

from scepproxyd.scep.targets import TargetCache
from scepproxyd.store import InUseError
from support.store import CA, HOST, PROFILE, seed, started_store

UNKNOWN = (400, "unknown host, profile or CA\n")


def count_lookups(store) -> list:
    """Record each ``store.proxy_target`` call (its arguments) in the list returned; the calls still go through."""
    calls = []
    real = store.proxy_target

    def proxy_target(*args):
        calls.append(args)
        return real(*args)

    store.proxy_target = proxy_target
    return calls


def caps(web, path):
    return web.device("GET", path + "?operation=GetCACaps")


def cert(web, path):
    return web.device("GET", path + "?operation=GetCACert")


def other_host_path(e, host):
    """``e``'s proxy path with ``host`` in place of its host."""
    return e.with_challenge(e.one_time_challenge).replace(e.host, host, 1)


# -- the store says when a target may have changed ---------------------------------------------


async def _add_ca(s):
    await s.add_ca("new_ca", "https://new.example/scep")


async def _update_ca(s):
    await s.update_ca(CA, url="https://moved.example/scep")


async def _rename_ca(s):
    await s.add_ca("spare", "https://spare.example/scep")
    await s.update_ca("spare", new_name="renamed")


async def _delete_ca(s):
    await s.add_ca("spare", "https://spare.example/scep")
    await s.delete_ca("spare")


async def _register_managed_ca(s):
    await s.register_managed_ca("builtin", "http://127.0.0.1:8080/scep")


async def _add_profile(s):
    await s.add_profile("profile-2", "VPN cert", "macos", b"<plist/>", CA)


async def _delete_profile(s):
    await s.delete_profile(PROFILE)


async def _upsert_host(s):
    await s.upsert_host("host-2", "C02ABC", "macos")


async def _import_hosts(s):
    await s.import_hosts([("host-2", "C02ABC", "macos")])


async def _import_hosts_batch(s):
    await s.import_hosts_batch([("host-2", "C02ABC", "macos")])


async def _delete_host(s):
    await s.delete_host(HOST)


async def _assign_profile(s):
    await s.upsert_host("host-2", "C02ABC", "macos")
    await s.assign_profile("host-2", PROFILE)


async def _assign_profile_to_hosts(s):
    await s.upsert_host("host-2", "C02ABC", "macos")
    await s.assign_profile_to_hosts(PROFILE, ["host-2"])


async def _assign_profile_to_platform(s):
    await s.upsert_host("host-2", "C02ABC", "macos")
    await s.assign_profile_to_platform(PROFILE, "macos")


async def _unassign_profile(s):
    await s.unassign_profile(PROFILE, [HOST])


TARGET_WRITES = [
    _add_ca, _update_ca, _rename_ca, _delete_ca, _register_managed_ca, _add_profile, _delete_profile,
    _upsert_host, _import_hosts, _import_hosts_batch, _delete_host, _assign_profile, _assign_profile_to_hosts,
    _assign_profile_to_platform, _unassign_profile,
]


@pytest.mark.parametrize("write", TARGET_WRITES, ids=lambda w: w.__name__.lstrip("_"))
@pytest_twisted.ensureDeferred
async def test_every_write_that_can_change_a_target_moves_the_generation(store, write):
    await seed(store)
    before = store.targets_generation
    await write(store)
    assert store.targets_generation > before


@pytest_twisted.ensureDeferred
async def test_a_failed_write_moves_the_generation_too(store):
    """It may have failed after its COMMIT (a lost connection): forgetting costs one query, keeping could mislead."""
    await seed(store)
    before = store.targets_generation
    with pytest.raises(InUseError):
        await store.delete_ca(CA)  # in use
    assert store.targets_generation == before + 1


@pytest_twisted.ensureDeferred
async def test_enrollment_writes_leave_the_generation_alone(store):
    """A host profile's status and certificate are not what GetCACaps/GetCACert read: no reason to forget."""
    await seed(store)
    before = store.targets_generation
    challenge = await store.issue_challenge(HOST, PROFILE)
    consumed = await store.consume_challenge(challenge, HOST, PROFILE)
    await store.challenge_settled(consumed)
    await store.set_host_profile_status(HOST, PROFILE, "verifying")
    assert store.targets_generation == before


# -- TargetCache on its own, over a real store ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_cached_target_is_served_without_the_store_until_it_expires(store, clock):
    await seed(store)
    cache = TargetCache(store, clock, 5.0)
    calls = count_lookups(store)
    first = await cache.ca_target(HOST, PROFILE, CA)
    assert (first.ca_name, first.ca_url, first.ca_mode) == (CA, "https://ca.example/scep", "passthrough")
    clock.advance(4.9)
    assert await cache.ca_target(HOST, PROFILE, CA) == first
    assert len(calls) == 1
    clock.advance(0.1)  # 5 s after the query began
    assert await cache.ca_target(HOST, PROFILE, CA) == first
    assert len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_an_unknown_target_is_cached_and_forgotten_when_it_is_added(store, clock):
    cache = TargetCache(store, clock, 5.0)
    calls = count_lookups(store)
    assert await cache.ca_target(HOST, PROFILE, CA) is None
    assert await cache.ca_target(HOST, PROFILE, CA) is None
    assert len(calls) == 1
    await seed(store)
    assert (await cache.ca_target(HOST, PROFILE, CA)).ca_name == CA
    assert len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_the_cache_keeps_at_most_max_entries_dropping_the_least_recently_used(store, clock):
    await seed(store)
    cache = TargetCache(store, clock, 60.0, max_entries=2)
    calls = count_lookups(store)
    await cache.ca_target(HOST, PROFILE, CA)
    await cache.ca_target("host-a", PROFILE, CA)
    await cache.ca_target(HOST, PROFILE, CA)  # now the most recently used
    await cache.ca_target("host-b", PROFILE, CA)  # drops host-a
    assert len(cache) == 2 and len(calls) == 3
    await cache.ca_target(HOST, PROFILE, CA)
    assert len(calls) == 3
    await cache.ca_target("host-a", PROFILE, CA)
    assert len(calls) == 4 and len(cache) == 2


@pytest_twisted.ensureDeferred
async def test_zero_seconds_asks_the_store_every_time(store, clock):
    await seed(store)
    cache = TargetCache(store, clock, 0.0)
    calls = count_lookups(store)
    for _ in range(3):
        assert (await cache.ca_target(HOST, PROFILE, CA)).ca_name == CA
    assert len(calls) == 3 and len(cache) == 0


@pytest_twisted.ensureDeferred
async def test_an_answer_read_while_a_write_ended_is_not_kept(store, clock):
    """The write may have come after the read on the database: the answer is used once, then asked again."""
    await seed(store)
    cache = TargetCache(store, clock, 60.0)
    real = store.proxy_target

    async def read_then_write(*args):
        target = await real(*args)
        await store.delete_host(HOST)  # ends after the read, before its answer is put in the cache
        return target

    store.proxy_target = lambda *args: defer.ensureDeferred(read_then_write(*args))
    assert (await cache.ca_target(HOST, PROFILE, CA)).ca_name == CA
    store.proxy_target = real
    assert len(cache) == 0
    assert await cache.ca_target(HOST, PROFILE, CA) is None


# -- through the proxy: what devices hear ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_getcacaps_and_getcacert_are_answered_without_the_store(web):
    e = await web.enrollment()
    first_caps, first_cert = await caps(web, e.path), await cert(web, e.path)
    calls = count_lookups(web.store)
    for _ in range(3):
        again_caps, again_cert = await caps(web, e.path), await cert(web, e.path)
        assert (again_caps.status, again_caps.body) == (first_caps.status, first_caps.body)
        assert (again_cert.status, again_cert.body) == (first_cert.status, first_cert.body)
    assert calls == []


async def upstream_requests(web) -> float:
    """GetCACaps and GetCACert requests the daemon sent its upstream CAs so far (its /metrics)."""
    name = "scepproxyd_upstream_latency_seconds_count"
    return sum([await web.metric(name, operation=operation) for operation in ("GetCACaps", "GetCACert")])


def proxy_lines(logs) -> list[str]:
    return [formatEvent(e) for e in logs.events if formatEvent(e).startswith("proxy ")]


@pytest_twisted.ensureDeferred
async def test_an_answer_from_memory_is_the_answer_and_log_line_of_a_first_request(web, logs):
    e = await web.enrollment()
    unknown = other_host_path(e, "NO-SUCH-HOST")
    asked = [(ask, path) for path in (e.path, unknown) for ask in (caps, cert)]
    first = [await ask(web, path) for ask, path in asked]  # through the store and the CA
    first_lines = proxy_lines(logs)
    del logs.events[:]
    calls, upstream = count_lookups(web.store), await upstream_requests(web)
    again = [await ask(web, path) for ask, path in asked]  # from memory
    assert calls == [] and await upstream_requests(web) == upstream > 0
    for one, other in zip(first, again):
        assert (other.status, other.content_type, other.body) == (one.status, one.content_type, one.body)
    strip_ms = [line.rpartition(" ms=")[0] for line in first_lines]
    assert [line.rpartition(" ms=")[0] for line in proxy_lines(logs)] == strip_ms
    assert [line.split()[1] for line in strip_ms] == ["GetCACaps", "GetCACert"] * 2


@pytest_twisted.ensureDeferred
async def test_pkioperation_reads_its_target_from_the_store_every_time(web):
    e = await web.enrollment()
    await caps(web, e.path)
    calls = count_lookups(web.store)
    request = await web.pkcs_req(e)  # GetCACert: cached
    assert calls == []
    answer = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert request.read(answer)[0] == "SUCCESS"
    assert calls == [(e.host, e.profile, e.ca)]


@pytest_twisted.ensureDeferred
async def test_the_cache_expires_after_target_cache_seconds(web):
    e = await web.enrollment()
    await caps(web, e.path)
    calls = count_lookups(web.store)
    web.clock.advance(web.settings.server.target_cache_seconds)
    assert (await caps(web, e.path)).status == 200
    assert len(calls) == 1


@pytest_twisted.ensureDeferred
async def test_unknown_host_profile_or_ca_is_one_answer_cached_or_not(web):
    e = await web.enrollment()
    wrong = [
        other_host_path(e, "NO-SUCH-HOST"),
        e.with_challenge(e.one_time_challenge).replace(e.profile, "no-such-profile", 1),
        e.with_challenge(e.one_time_challenge).replace(e.ca, "NO_SUCH_CA", 1),
    ]
    calls = count_lookups(web.store)
    for _ in range(2):
        for path in wrong:
            for ask in (caps, cert):
                answer = await ask(web, path)
                assert (answer.status, answer.text) == UNKNOWN
    assert len(calls) == 3  # each unknown identifier asked once


# -- every admin change counts from the next request on this node --------------------------------


@pytest_twisted.ensureDeferred
async def test_deleting_the_host_is_seen_at_once(web):
    e = await web.enrollment()
    assert (await caps(web, e.path)).status == 200
    await web.ok(web.admin("DELETE", "/api/v1/hosts/%s" % (e.host,)))
    assert ((answer := await caps(web, e.path)).status, answer.text) == UNKNOWN


@pytest_twisted.ensureDeferred
async def test_unassigning_the_profile_is_seen_at_once(web):
    e = await web.enrollment()
    assert (await cert(web, e.path)).status == 200
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/unassign" % (e.profile,), {"hosts": [e.host]}))
    assert ((answer := await cert(web, e.path)).status, answer.text) == UNKNOWN


@pytest_twisted.ensureDeferred
async def test_deleting_the_profile_then_its_ca_is_seen_at_once(web):
    e = await web.enrollment()
    assert (await caps(web, e.path)).status == 200
    await web.ok(web.admin("DELETE", "/api/v1/profiles/%s" % (e.profile,)))
    assert ((answer := await caps(web, e.path)).status, answer.text) == UNKNOWN
    await web.ok(web.admin("DELETE", "/api/v1/cas/%s" % (e.ca,)))
    assert ((answer := await caps(web, e.path)).status, answer.text) == UNKNOWN


@pytest_twisted.ensureDeferred
async def test_editing_the_ca_url_is_seen_at_once(web):
    e = await web.enrollment()
    assert (await caps(web, e.path)).status == 200
    moved = web.upstream_cas.url("http_500")  # the same CA behind another URL; only its PKIOperation fails
    await web.ok(web.admin("PATCH", "/api/v1/cas/%s" % (e.ca,), {
        "url": moved, "challenge": web.upstream_cas.static_challenge}))
    calls = count_lookups(web.store)
    assert (await caps(web, e.path)).status == 200
    assert len(calls) == 1
    request = await web.pkcs_req(e)  # GetCACert: from the cache again
    assert len(calls) == 1
    answer = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert answer.status == 502  # went to the new URL


@pytest_twisted.ensureDeferred
async def test_a_ca_renamed_under_an_unknown_name_is_found(web):
    """A URL naming a CA that does not exist yet is refused, then answered as soon as the CA exists."""
    e = await web.enrollment()
    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "SPARE", "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge}))
    before = await caps(web, e.path)
    renamed_path = e.with_challenge(e.one_time_challenge).replace(e.ca, "SPARE_RENAMED", 1)
    assert ((answer := await caps(web, renamed_path)).status, answer.text) == UNKNOWN
    calls = count_lookups(web.store)
    await web.ok(web.admin("PATCH", "/api/v1/cas/SPARE", {"name": "SPARE_RENAMED"}))
    # Still no profile of this host uses it: the same one answer, asked of the store again after the change.
    assert ((answer := await caps(web, renamed_path)).status, answer.text) == UNKNOWN
    assert (await caps(web, e.path)).body == before.body
    assert len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_a_host_added_and_assigned_after_a_refusal_is_answered_at_once(web):
    e = await web.enrollment()
    path = other_host_path(e, "NEWHOST1")
    assert ((answer := await caps(web, path)).status, answer.text) == UNKNOWN
    await web.ok(web.admin("PUT", "/api/v1/hosts/NEWHOST1", {"serial": "SER-NEW", "platform": "macos"}))
    assert ((answer := await caps(web, path)).status, answer.text) == UNKNOWN
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (e.profile,), {"hosts": ["NEWHOST1"]}))
    assert (await caps(web, path)).status == 200


# -- RA mode ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ca_in_ra_mode_is_cached_and_a_mode_change_is_seen_at_once(web):
    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "RA_CA", "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge,
        "mode": "ra", "ra_certificate": "self-signed"}))
    e = await web.enrollment(ca="RA_CA")
    ra_cert = await cert(web, e.path)
    assert ra_cert.content_type == b"application/x-x509-ca-ra-cert"
    calls = count_lookups(web.store)
    again = await cert(web, e.path)
    assert (again.status, again.content_type, again.body) == (200, ra_cert.content_type, ra_cert.body)
    assert (await caps(web, e.path)).status == 200
    assert calls == []
    await web.ok(web.admin("PATCH", "/api/v1/cas/RA_CA", {"mode": "passthrough"}))
    passthrough = await cert(web, e.path)
    assert (passthrough.status, passthrough.content_type) == (200, b"application/x-x509-ca-cert")
    assert len(calls) == 1


# -- another node sharing the database --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_another_nodes_change_shows_within_the_bound_and_never_lets_a_pkioperation_through(web, db_path):
    e = await web.enrollment()
    request = await web.pkcs_req(e)  # GetCACaps/GetCACert cached here
    other = await started_store(db_path, reactor, web.clock)
    try:
        await other.unassign_profile(e.profile, [e.host])
    finally:
        await other.stop()
    assert (await caps(web, e.path)).status == 200  # this node has not heard yet
    answer = await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert (answer.status, answer.text) == UNKNOWN  # PKIOperation asks the database
    web.clock.advance(web.settings.server.target_cache_seconds)
    assert ((answer := await caps(web, e.path)).status, answer.text) == UNKNOWN
