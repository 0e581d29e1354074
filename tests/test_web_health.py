"""/healthz and /readyz in process, on the device listener and the admin listener (no token there)."""

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_healthy_and_ready_on_both_listeners(web):
    await web.enrollment()  # a CA integration besides the built-in CA
    for page, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        for answer in (await web.device("GET", page), await web.admin("GET", page, token="not-the-admin-token")):
            assert (answer.status, answer.body) == (200, body)
            assert answer.headers.getRawHeaders(b"Cache-Control") == [b"no-store"]


@pytest_twisted.ensureDeferred
async def test_a_ca_that_stops_answering_makes_readyz_fail_but_not_healthz(web, clock):
    await web.enrollment(ca="FLAKY_CA", ca_url=web.upstream_cas.url("http_500"))
    web.upstream_cas.misbehaving["http_500"].everything = True
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)
    ready = await web.device("GET", "/readyz")
    assert (ready.status, ready.body) == (503, b"not ready: CA FLAKY_CA: GetCACaps answered HTTP 500\n")
    assert (await web.device("GET", "/healthz")).status == 200
    web.upstream_cas.misbehaving["http_500"].everything = False
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)
    assert (await web.device("GET", "/readyz")).body == b"ready\n"


@pytest_twisted.ensureDeferred
async def test_an_unreachable_ca_is_named_with_why(web, clock):
    await web.enrollment(ca="GONE_CA", ca_url=web.upstream_cas.url("reset"))
    web.upstream_cas.misbehaving["reset"].everything = True
    clock.advance(web.settings.upstream.caps_cache_seconds + 1)
    ready = await web.admin("GET", "/readyz")
    assert ready.status == 503
    assert ready.text.startswith("not ready: CA GONE_CA: upstream CA unreachable (")


@pytest_twisted.ensureDeferred
async def test_a_stopped_listener_is_unhealthy_and_the_admin_copy_says_so(web):
    await web.listeners[0].stopService()
    for page, word in (("/healthz", b"unhealthy"), ("/readyz", b"not ready")):
        answer = await web.admin("GET", page)
        assert (answer.status, answer.body) == (503, word + b": listener proxy-listener is not running\n")
