"""/metrics in process: the counters a device's requests move."""

import pytest_twisted

PROXY = "scepproxyd_proxy_requests_total"
CHALLENGES = "scepproxyd_challenges_total"


@pytest_twisted.ensureDeferred
async def test_an_enrollment_moves_the_proxy_challenge_and_host_profile_figures(web):
    e = await web.enrollment()
    assert await web.metric(CHALLENGES, event="minted") == 1
    assert await web.metric("scepproxyd_host_profiles", status="pending") == 1
    request = await web.pkcs_req(e)  # asks GetCACert through the proxy
    assert await web.metric(PROXY, operation="GetCACert", outcome="ok") == 1
    await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert await web.metric(PROXY, operation="PKIOperation", outcome="ok") == 1
    assert await web.metric(CHALLENGES, event="consumed") == 1
    assert await web.metric("scepproxyd_upstream_latency_seconds_count", operation="PKIOperation") == 1
    assert await web.metric("scepproxyd_host_profiles", status="verifying") == 1
    assert await web.metric("scepproxyd_host_profiles", status="pending") == 0
    await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert await web.metric(PROXY, operation="PKIOperation", outcome="challenge_stale") == 1


@pytest_twisted.ensureDeferred
async def test_refusals_and_put_backs_are_counted_by_outcome(web):
    e = await web.enrollment(ca_url=web.upstream_cas.url("reset"))
    request = await web.pkcs_req(e)
    await web.device("POST", e.path + "?operation=PKIOperation", request.message)
    assert await web.metric(PROXY, operation="PKIOperation", outcome="upstream_error") == 1
    assert await web.metric(CHALLENGES, event="restored") == 1
    await web.device("GET", "/mdm/scep/proxy/x?operation=GetCACaps")
    assert await web.metric(PROXY, operation="-", outcome="bad_request") == 1
    await web.device("DELETE", e.path)
    assert await web.metric(PROXY, operation="-", outcome="bad_method") == 1
    await web.device("GET", e.with_challenge("Q" * 40).replace(e.ca, "NO_CA") + "?operation=GetCACaps")
    assert await web.metric(PROXY, operation="GetCACaps", outcome="unknown") == 1


@pytest_twisted.ensureDeferred
async def test_the_device_listener_counts_its_open_connections(web):
    before = await web.metric("scepproxyd_open_connections", listener="proxy")
    protocol, transport = web.connection()
    assert await web.metric("scepproxyd_open_connections", listener="proxy") == before + 1
    protocol.connectionLost(None)
    assert await web.metric("scepproxyd_open_connections", listener="proxy") == before
