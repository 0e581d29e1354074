"""Adversarial: upstream CAs that misbehave in every way a network peer can.

The daemon runs as the README runs it (twistd, an INI file) with small
upstream timeouts. The misbehaving CA is ``hostile.HostileCA``, threads in
this process on loopback; the healthy one is a real micromdm scepserver. Each
case checks the README's answer table (502 / 504 and the reason), that the
answer comes within the configured timeouts, and what became of the one-time
challenge: put back when the CA never answered (a second PKIOperation
reaches the CA again), still spent once it did (the second one is a 400 and
the CA never sees it).
"""

import concurrent.futures

import pytest

from support.api import apis
from support.hostile import HostileCA, assert_log_clean, pki_post, request_once
from support.site import add_ca, challenge_from_url, enrollment_url
from support.upstream import CHALLENGE as STATIC  # also the healthy scepserver's (module_upstream)

TIMEOUTS = {"connect_timeout": "1s", "response_timeout": "1s", "body_timeout": "1s",
            "max_response_bytes": "64k", "caps_cache_seconds": "300s"}
# Connect, response and body timeouts together, and room for a loaded 2-core CI machine.
WITHIN = 3.0 + 15.0
pytestmark = pytest.mark.daemon(upstream=TIMEOUTS, profiles={"process_interval": "1h"})
CHALLENGE_FAILED = b"custom scep challenge failed\n"


def pending_url(module_site, ca_url: str, name: str) -> str:
    """A CA, a host and its pending host profile for it; the proxy URL its device got."""
    admin, agent = module_site
    add_ca(admin, name, ca_url, STATIC)
    url, _ = enrollment_url(admin, agent, name, "host-" + name.lower().replace("_", "-"))
    return url


# behaviour, status, reason, whether the CA never answered (so the challenge is put back)
CASES = [
    ("reset_before_headers", 502, "upstream CA unreachable (", True),
    ("hang", 504, "upstream CA sent no answer in time", True),
    ("headers_trickle", 504, "upstream CA sent no answer in time", True),
    ("reset_after_headers", 502, "upstream connection failed while sending its answer", False),
    ("trickle", 504, "upstream CA did not finish its answer in time", False),
    ("http500", 502, "upstream CA failed (HTTP 500)", False),
    ("huge_declared", 502, "upstream answer larger than 65536 bytes", False),
    ("huge_streamed", 502, "upstream answer larger than 65536 bytes", False),
]


def check_fault(module_daemon, module_site, hostile_ca, behaviour, status, reason, never_answered):
    url = pending_url(module_site, hostile_ca.url(behaviour), "F_" + behaviour.upper())
    code, body, took = pki_post(url)
    assert (code, body.decode()[:len(reason)]) == (status, reason), body
    assert took < WITHIN
    assert hostile_ca.pki_requests(behaviour) == 1
    challenge = challenge_from_url(url)
    assert challenge.encode() not in body

    again, again_body, took = pki_post(url)
    assert took < WITHIN
    if never_answered:
        # Put back: the device's retry reaches the CA again (and meets the same fault).
        assert (again, again_body.decode()[:len(reason)]) == (status, reason), again_body
        assert hostile_ca.pki_requests(behaviour) == 2
    else:
        # The CA started to answer: spent for good, and the retry never reaches the CA.
        assert (again, again_body) == (400, CHALLENGE_FAILED)
        assert hostile_ca.pki_requests(behaviour) == 1
    outcome = "outcome=upstream_timeout" if status == 504 else "outcome=upstream_error"
    assert outcome in module_daemon.log()
    assert_log_clean(module_daemon, [challenge, STATIC])


@pytest.mark.parametrize("behaviour, status, reason, never_answered", CASES, ids=[c[0] for c in CASES])
def test_upstream_fault(module_daemon, module_site, hostile_ca, behaviour, status, reason, never_answered):
    check_fault(module_daemon, module_site, hostile_ca, behaviour, status, reason, never_answered)


def test_upstream_reset_in_close_delimited_body(module_daemon, module_site, hostile_ca):
    # With no Content-Length, a reset looks like the end of the body to HTTP;
    # the cut-short body then fails to parse as a SCEP message.
    check_fault(module_daemon, module_site, hostile_ca, "reset_close_delimited", 502,
                "upstream CA's answer is not a SCEP message", False)


def test_upstream_garbage_is_502(module_daemon, module_site, hostile_ca):
    url = pending_url(module_site, hostile_ca.url("garbage"), "F_GARBAGE")
    before = hostile_ca.pki_requests("garbage")
    code, body, took = pki_post(url)
    assert code == 502, body
    assert took < WITHIN
    assert hostile_ca.pki_requests("garbage") == before + 1
    assert_log_clean(module_daemon, [challenge_from_url(url), STATIC])


def test_upstream_garbage_keeps_challenge_spent(module_daemon, module_site, hostile_ca):
    url = pending_url(module_site, hostile_ca.url("garbage"), "F_GARBAGE_TWICE")
    before = hostile_ca.pki_requests("garbage")
    code, _, _ = pki_post(url)
    assert code == 502
    again, again_body, _ = pki_post(url)
    assert hostile_ca.pki_requests("garbage") == before + 1, "the same challenge reached the CA twice"
    assert (again, again_body) == (400, CHALLENGE_FAILED)


def test_connection_refused_puts_challenge_back(module_daemon, module_site):
    """The CA is down when the challenge is spent: 502 'unreachable', and the retry works once it is back."""
    ca = HostileCA().start()
    try:
        url = pending_url(module_site, ca.url("ok"), "F_REFUSED")
        caps_status, _ = request_once(module_daemon.port, "GET", (url.removeprefix(module_daemon.url) + "?operation=GetCACaps").encode())
        assert caps_status == 200  # cached: the PKIOperation below goes straight to spending
        ca.stop()
        code, body, took = pki_post(url)
        assert (code, body) == (502, b"upstream CA unreachable (ConnectionRefusedError)\n")
        assert took < WITHIN
        ca.start()
        assert ca.pki_requests("ok") == 0
        code, body, _ = pki_post(url)
        assert code == 200, body
        assert ca.pki_requests("ok") == 1
        # Spent by that success: a replay never reaches the CA.
        assert pki_post(url)[:2] == (400, CHALLENGE_FAILED)
        assert ca.pki_requests("ok") == 1
    finally:
        ca.stop()
    assert_log_clean(module_daemon, [challenge_from_url(url), STATIC])


def test_connect_timeout_puts_challenge_back(module_daemon, module_site):
    """The CA's port stops completing handshakes: 504 after connect_timeout, and the retry works."""
    ca = HostileCA().start()
    try:
        url = pending_url(module_site, ca.url("ok"), "F_CONNECT_TIMEOUT")
        caps_status, _ = request_once(module_daemon.port, "GET", (url.removeprefix(module_daemon.url) + "?operation=GetCACaps").encode())
        assert caps_status == 200
        ca.stall()
        code, body, took = pki_post(url)
        assert (code, body) == (504, b"upstream CA sent no answer in time\n")
        assert took < WITHIN
        ca.unstall()
        assert ca.pki_requests("ok") == 0
        code, body, _ = pki_post(url)
        assert code == 200, body
        assert ca.pki_requests("ok") == 1
    finally:
        ca.stop()
    assert_log_clean(module_daemon, [challenge_from_url(url), STATIC])


def test_refused_before_caps_spends_nothing(module_daemon, module_site):
    """With nothing cached, the caps lookup fails first: 502 and the challenge was never touched."""
    ca = HostileCA().start()
    try:
        url = pending_url(module_site, ca.url("ok"), "F_REFUSED_EARLY")
        ca.stop()
        code, body, _ = pki_post(url)
        assert code == 502 and body.startswith(b"upstream CA unreachable"), body
        ca.start()
        assert pki_post(url)[0] == 200
        assert ca.pki_requests("ok") == 1
    finally:
        ca.stop()


@pytest.fixture
def patient_daemon(start_daemon):
    """Long timeouts, so held upstream requests stay pending until the test releases them."""
    return start_daemon(upstream={"response_timeout": "60s", "body_timeout": "60s"},
                        profiles={"process_interval": "1h"})


def test_hanging_upstream_stalls_nothing_else(patient_daemon, module_upstream):
    module_daemon = patient_daemon
    admin, agent = apis(module_daemon)
    held = HostileCA().start()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=24)
    try:
        held_url = pending_url((admin, agent), held.url("hold"), "HELD")
        add_ca(admin, "HELD_ALL", held.url("hold_all"), STATIC)
        held_all_url, _ = enrollment_url(admin, agent, "HELD_ALL", "host-held-all")
        healthy_url = pending_url((admin, agent), module_upstream.url, "HEALTHY")
        # Warm the caps of the held CA so its PKIOperation goes straight upstream and is held there.
        assert request_once(module_daemon.port, "GET", (held_url.removeprefix(module_daemon.url) + "?operation=GetCACaps").encode())[0] == 200
        held.hold()

        pending = [pool.submit(pki_post, held_url)]
        base = held_all_url.removeprefix(module_daemon.url)
        pending += [pool.submit(request_once, module_daemon.port, "GET",
                                ("%s?operation=GetCACert&message=m%d" % (base, i)).encode()) for i in range(16)]
        for _ in range(600):
            if held.open_holds == 17:
                break
            concurrent.futures.wait(pending, timeout=0.05)
        assert held.open_holds == 17, "the held requests did not reach the upstream"

        healthy_path = healthy_url.removeprefix(module_daemon.url)
        for i in range(20):
            status, body = request_once(module_daemon.port, "GET", (healthy_path + "?operation=GetCACaps").encode())
            assert status == 200 and b"POSTPKIOperation" in body
        status, _ = request_once(module_daemon.port, "GET", (healthy_path + "/pkiclient.exe?operation=GetCACert").encode())
        assert status == 200
        assert admin.request("GET", "/api/v1/cas")[0] == 200
        assert agent.request("GET", "/api/v1/agent/hosts/host-healthy/commands")[0] == 200

        # Everything above was answered while the held upstream requests were still pending.
        assert held.open_holds == 17
        assert not any(f.done() for f in pending)
        held.release()
        results = [f.result(timeout=60) for f in pending]
        assert results[0][0] == 200
        assert all(status == 200 for status, _ in results[1:])
    finally:
        held.stop()
        pool.shutdown(wait=True)
    assert_log_clean(module_daemon, [STATIC, module_daemon.admin_token] + list(agent.credentials.values()))
