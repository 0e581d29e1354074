"""Android certificate templates through the daemon's real trees (support.web): names and lifecycle.

A template asking for every subjectAltName kind (DNS, EMAIL, UPN, IP, URI;
Fleet's spelling) is fetched by the host's agent and enrolled with the
built-in CA through the proxy: the certificate carries exactly the names the
template rendered, and a CSR with one more is refused. The host profile's
``lifecycle`` follows pending -> delivering -> delivered / verified, and a
template the agent fetched and never reported on is sent again after
``[delivery] stuck_after`` with a fresh challenge, the fetched copy no
longer enrolling anywhere.
"""

import ipaddress
import json

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.logger import formatEvent

from scepproxyd.store.deliveries import STUCK_DETAIL
from support.certs import name, upn

STUCK_AFTER = 30 * 60
STUCK = "agent fetched the profile and never reported; host profile sent again with a fresh challenge"
SANS = ("DNS=$FLEET_VAR_SCEP_RENEWAL_ID.wifi.example.com, EMAIL=it@example.com, UPN=wifi@corp.example,"
        " IP=10.20.0.1, IP=2001:DB8::1, URI=urn:example:device:$FLEET_VAR_SCEP_RENEWAL_ID")
TEMPLATE = {
    "format": "scepproxyd.android-certificate-template/1",
    "name": "Corporate Wi-Fi (EAP-TLS)",
    "scep": {"url": "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_builtin", "challenge": "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_builtin"},
    "subject": "CN=$FLEET_VAR_SCEP_RENEWAL_ID,OU=Wi-Fi",
    "key": {"type": "rsa", "size": 2048},
    "subject_alternative_name": SANS,
}


@pytest.fixture
def web_sections():
    # The built-in CA issues every name kind the template renders; a delivery is stuck after 30 minutes,
    # before its challenge expires (1 h), so the stuck rule is what acts.
    patterns = {"san_" + kind: ".*" for kind in ("dns", "email", "uri", "upn", "ip")}
    return {"ca": patterns, "delivery": {"stuck_after": "%ds" % STUCK_AFTER}}


def pki(path: str) -> str:
    return path + "?operation=PKIOperation"


def rendered_sans(e) -> list:
    return [x509.DNSName(e.subject_cn + ".wifi.example.com"), x509.RFC822Name("it@example.com"),
            upn("wifi@corp.example"), x509.IPAddress(ipaddress.ip_address("10.20.0.1")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.UniformResourceIdentifier("urn:example:device:" + e.subject_cn)]


def subject(e):
    return name([(NameOID.ORGANIZATIONAL_UNIT_NAME, "Wi-Fi")], [(NameOID.COMMON_NAME, e.subject_cn)])


async def lifecycle(web, e) -> tuple:
    hp = await web.host_profile(e.host, e.profile)
    return hp["lifecycle"], hp["status"], hp["retries"], hp["detail"]


def lines(logs, text: str) -> list[str]:
    return [formatEvent(event) for event in logs.events if text in formatEvent(event)]


@pytest_twisted.ensureDeferred
async def test_the_agent_gets_every_name_and_the_certificate_carries_exactly_them(web):
    e = await web.android_enrollment(TEMPLATE)
    names = json.loads(e.payload)["subject_alt_names"]
    assert names == {"dns": [e.subject_cn + ".wifi.example.com"], "email": ["it@example.com"],
                     "uri": ["urn:example:device:" + e.subject_cn], "upn": ["wifi@corp.example"],
                     "ip": ["10.20.0.1", "2001:DB8::1"]}
    assert (await lifecycle(web, e))[:2] == ("delivering", "pending")
    request = await web.pkcs_req(e, subject=subject(e), sans=rendered_sans(e)[::-1])
    status, _, (certificate,) = request.read(await web.device("POST", pki(e.path), request.message))
    assert status == "SUCCESS"
    issued = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(repr, issued)) == sorted(map(repr, rendered_sans(e)))
    assert (await lifecycle(web, e))[:3] == ("verified", "verified", 0)


@pytest.mark.parametrize("change, why", [
    (lambda sans: sans + [upn("admin@corp.example")],
     "CSR asks for subjectAltName upn 'admin@corp.example', which the profile does not render"),
    (lambda sans: [s for s in sans if not isinstance(s, x509.OtherName)],
     "CSR lacks subjectAltName upn 'wifi@corp.example', which the profile renders"),
])
@pytest_twisted.ensureDeferred
async def test_a_csr_with_one_name_more_or_less_gets_no_certificate(web, change, why):
    e = await web.android_enrollment(TEMPLATE)
    request = await web.pkcs_req(e, subject=subject(e), sans=change(rendered_sans(e)))
    status, fail_info, certificates = request.read(await web.device("POST", pki(e.path), request.message))
    assert (status, fail_info, certificates) == ("FAILURE", "badRequest", [])
    state, status, retries, detail = await lifecycle(web, e)
    assert (state, status, retries) == ("pending", None, 1)
    assert why in detail


@pytest_twisted.ensureDeferred
async def test_a_template_stuck_delivering_is_sent_again_and_the_fetched_copy_stops_working(web, clock, logs):
    e = await web.android_enrollment(TEMPLATE)
    stuck = await web.ok(web.admin("GET", "/api/v1/host-profiles?lifecycle=delivering"))
    assert [(hp["host_uuid"], hp["lifecycle"]) for hp in stuck["host_profiles"]] == [(e.host, "delivering")]
    assert (await web.ok(web.admin("GET", "/api/v1/host-profiles?lifecycle=pending")))["host_profiles"] == []
    clock.advance(STUCK_AFTER)
    result = (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]
    assert result["stuck_deliveries_resent"] == 0 and (await lifecycle(web, e))[0] == "delivering"
    clock.advance(1)
    result = (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]
    assert (result["stuck_deliveries_resent"], result["expired_profiles_resent"]) == (1, 0)
    assert await lifecycle(web, e) == ("pending", None, 0, STUCK_DETAIL)
    assert await web.metric("scepproxyd_stuck_deliveries_resent_total") == 1
    (line,) = lines(logs, STUCK)
    assert line.endswith("host=%s profile=%s ca=builtin waited=%ds" % (e.host, e.profile, STUCK_AFTER + 1))
    assert e.one_time_challenge not in logs.text() and e.challenge_password not in logs.text()
    # The copy the agent fetched enrolls nowhere: not through its proxy URL, not at /scep with its CA challenge.
    request = await web.pkcs_req(e, subject=subject(e), sans=rendered_sans(e))
    answer = await web.device("POST", pki(e.path), request.message)
    assert (answer.status, answer.body) == (400, b"custom scep challenge failed\n")
    assert request.read(await web.device("POST", pki("/scep"), request.message))[0] == "FAILURE"
    assert (await lifecycle(web, e))[:3] == ("pending", None, 0)
    # The next run hands a fresh copy over; the agent acknowledges it.
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
    fresh = json.loads(command["payload"])["scep"]
    assert (fresh["url"], fresh["challenge"]) != (e.url, e.challenge_password)
    assert (await lifecycle(web, e))[:2] == ("delivering", "pending")
    await web.ok(web.agent("POST", e.host, "/commands/" + command["command_uuid"], e.credential,
                           {"status": "acknowledged"}))
    assert (await lifecycle(web, e))[:3] == ("delivered", "verifying", 0)
    assert (await web.ok(web.admin("POST", "/api/v1/jobs/cleanup")))["result"]["stuck_deliveries_resent"] == 0


@pytest_twisted.ensureDeferred
async def test_failed_after_the_retries_says_why(web):
    """[profiles] max_retries (3) refused requests later the template is failed, the last reason in its detail."""
    e = await web.android_enrollment(TEMPLATE)
    for attempt in range(4):
        request = await web.pkcs_req(e, subject=subject(e), sans=rendered_sans(e)[1:])
        assert request.read(await web.device("POST", pki(e.path), request.message))[:2] == ("FAILURE", "badRequest")
        if attempt < 3:
            await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
            (command,) = (await web.ok(web.agent("GET", e.host, "/commands", e.credential)))["commands"]
            fresh = json.loads(command["payload"])["scep"]
            e.url, e.challenge_password = fresh["url"], fresh["challenge"]
    state, status, retries, detail = await lifecycle(web, e)
    assert (state, status, retries) == ("failed", "failed", 4)
    assert detail.endswith("CSR lacks subjectAltName dns '%s.wifi.example.com', which the profile renders" % e.subject_cn)


@pytest_twisted.ensureDeferred
async def test_an_unknown_lifecycle_filter_is_refused(web):
    answer = await web.admin("GET", "/api/v1/host-profiles?lifecycle=stuck")
    assert (answer.status, answer.json()) == (422, {
        "error": "lifecycle must be one of pending, delivering, delivered, verified, failed", "field": "lifecycle"})
