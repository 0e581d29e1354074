"""Windows end to end in process: SyncML upload, outbox delivery, and a Windows-shaped SCEP client.

Everything goes through the documented interfaces: the admin API uploads the
profile and assigns it to a windows host, the processing job queues it, the
agent API hands over the rendered SyncML, and support.windows_client enrolls
with it as Windows' ClientCertificateInstall/SCEP would (GetCACaps and
GetCACert with ``message=default``, ``/pkiclient.exe``, PKIOperation by GET
with percent-encoded base64), through the proxy to an upstream CA and to the
built-in CA.
"""

import re
import urllib.parse
from pathlib import Path

import attrs
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from support.store import TTL
from support.web import PUBLIC_URL, UPSTREAM_CA_URL
from support.windows_client import RECIPIENT_NONCE, Settings, WindowsScepClient

PROFILE = (Path(__file__).parent / "fixtures" / "profiles" / "fleet-custom-scep-windows.xml").read_text()
HOST = "WIN-HOST-1"
FAILED = b"custom scep challenge failed\n"


def transport(web):
    """The client's transport: the device-facing listener in process."""

    async def send(method, url, body):
        assert url.startswith(PUBLIC_URL), url
        answer = await web.device(method, url[len(PUBLIC_URL):], body)
        return answer.status, answer.content_type.decode("ascii"), answer.body

    return send


async def upstream_thumbprint(web) -> str:
    response = await web.settle(web.upstream_stub.get(UPSTREAM_CA_URL + "?operation=GetCACert"))
    der = await web.settle(web.upstream_stub.content(response))
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA1()).hex().upper()


async def windows_profile(web, ca: str, thumbprint: str, host: str = HOST) -> dict:
    """The admin's steps: CA (if needed), a windows host, the SyncML profile, assigned, queued; the agent's fetch."""
    if ca != web.builtin_ca.name and (await web.admin("GET", "/api/v1/cas/%s" % (ca,))).status == 404:
        await web.ok(web.admin("POST", "/api/v1/cas", {
            "name": ca, "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge}))
    await web.ok(web.admin("PUT", "/api/v1/hosts/%s" % (host,), {"serial": "SER-" + host, "platform": "windows"}))
    text = PROFILE.replace("WIFI_CA", ca).replace("0123456789ABCDEF0123456789ABCDEF01234567", thumbprint)
    profile = await web.ok(web.admin("POST", "/api/v1/profiles", text.encode(), content_type="application/xml"))
    assert (profile["kind"], profile["platform"], profile["ca"]) == ("windows_syncml", "windows", ca)
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": [host]}))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    credential = await web.credential(host)
    (command,) = (await web.ok(web.agent("GET", host, "/commands", credential)))["commands"]
    assert (command["kind"], command["content_type"]) == ("windows_syncml", "application/vnd.syncml.dm+xml")
    # The node name the certificate ID rendered to: the host profile's renewal ID (also in the SubjectName).
    (renewal_id,) = set(re.findall(r"ClientCertificateInstall/SCEP/(sp-[0-9a-f]{16})/", command["payload"]))
    return {"uuid": profile["uuid"], "command": command, "credential": credential, "renewal_id": renewal_id}


def subject(certificate) -> dict:
    return {a.oid: a.value for a in certificate.subject}


@pytest_twisted.ensureDeferred
async def test_windows_enrolls_through_the_proxy_and_verifies_only_with_a_certificate(web):
    thumbprint = await upstream_thumbprint(web)
    delivered = await windows_profile(web, "WIN_CA", thumbprint)
    payload = delivered["command"]["payload"]
    assert "$FLEET_VAR" not in payload
    assert "ClientCertificateInstall/SCEP/%s/Install/Enroll" % (delivered["renewal_id"],) in payload
    settings = Settings.from_syncml(payload)
    assert urllib.parse.urlsplit(settings.server_url).path.startswith("/mdm/scep/proxy/")
    assert settings.subject_name == "CN=WIN-WIFI,OU=" + delivered["renewal_id"]

    client = WindowsScepClient(settings, transport(web))
    answer = await client.enroll()
    assert answer.status == "SUCCESS"
    assert answer.attributes[RECIPIENT_NONCE] == client.sender_nonce
    (certificate,) = answer.certificates
    assert subject(certificate) == {NameOID.COMMON_NAME: "WIN-WIFI",
                                    NameOID.ORGANIZATIONAL_UNIT_NAME: delivered["renewal_id"]}
    # Windows' order and shape of requests.
    assert [urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["operation"][0] for _, url in client.requests] == [
        "GetCACaps", "GetCACert", "PKIOperation"]
    assert all(method == "GET" and urllib.parse.urlsplit(url).path.endswith("/pkiclient.exe")
               for method, url in client.requests)

    # The agent acknowledges once Windows' Install/Status says the enrollment finished (docs/agent-api.md);
    # "installed" alone never verifies a Windows profile (fleet#45550), a certificate does.
    credential, uuid = delivered["credential"], delivered["uuid"]
    await web.ok(web.agent("POST", HOST, "/commands/" + delivered["command"]["command_uuid"], credential,
                           {"status": "acknowledged"}))
    assert await web.ok(web.agent("POST", HOST, "/profiles", credential, {"installed": [uuid]})) == {"verified": 0}
    assert (await web.host_profile(HOST, uuid))["status"] == "verifying"
    # The agent reports the certificate the device installed: now verified.
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert (await web.ok(web.agent("POST", HOST, "/certificates", credential, {"certificates": [pem]})))["recorded"] == 1
    assert (await web.host_profile(HOST, uuid))["status"] == "verified"


@pytest_twisted.ensureDeferred
async def test_a_get_message_in_crlf_wrapped_base64_enrolls(web):
    delivered = await windows_profile(web, "WIN_CA", await upstream_thumbprint(web))
    client = WindowsScepClient(Settings.from_syncml(delivered["command"]["payload"]), transport(web), wrap_base64=True)
    assert (await client.enroll()).status == "SUCCESS"
    assert "%0D%0A" in client.last_url


@pytest_twisted.ensureDeferred
async def test_a_repeated_pki_operation_is_refused_without_a_second_issuance(web):
    delivered = await windows_profile(web, "WIN_CA", await upstream_thumbprint(web))
    settings = Settings.from_syncml(delivered["command"]["payload"])
    client = WindowsScepClient(settings, transport(web))
    assert (await client.enroll()).status == "SUCCESS"
    status_before = await web.host_profile(HOST, delivered["uuid"])

    # The same bytes again (Windows retrying after a lost answer): the same 400 as any spent challenge, no CA call.
    for _ in range(2):
        status, _, body = await client.repeat()
        assert (status, body) == (400, FAILED)
    # A different request presenting the spent challenge: refused too.
    other = WindowsScepClient(settings, transport(web))
    await other.get_ca()
    status, _, body = await other.pki_operation(other.pkcs_req())
    assert (status, body) == (400, FAILED)
    # And by POST.
    other.use_post = True
    status, _, body = await other.pki_operation(other.pkcs_req())
    assert (status, body) == (400, FAILED)
    after = await web.host_profile(HOST, delivered["uuid"])
    assert (after["status"], after["retries"]) == (status_before["status"], status_before["retries"])
    # One PKIOperation ever reached the CA with success; the repeats and the others were answered by the proxy.
    assert await web.metric("scepproxyd_proxy_requests_total", operation="PKIOperation", outcome="ok") == 1


@pytest_twisted.ensureDeferred
async def test_a_challenge_never_reaches_the_ca_without_the_one_time_challenge(web):
    """fleet#51014: a proxy URL whose one-time challenge is unknown is refused before anything is forwarded."""
    delivered = await windows_profile(web, "WIN_CA", await upstream_thumbprint(web))
    settings = Settings.from_syncml(delivered["command"]["payload"])
    forged = settings.server_url.rsplit("%2C", 1)[0] + "%2C" + "A" * 32
    client = WindowsScepClient(attrs.evolve(settings, server_url=forged), transport(web))
    await client.get_ca()  # GetCACaps and GetCACert spend nothing and need no challenge
    status, _, body = await client.pki_operation(client.pkcs_req())
    assert (status, body) == (400, FAILED)
    # The real URL still enrolls: the forged attempt spent nothing.
    real = WindowsScepClient(settings, transport(web))
    assert (await real.enroll()).status == "SUCCESS"


@pytest_twisted.ensureDeferred
async def test_windows_enrolls_at_the_builtin_ca_whose_cert_rep_carries_every_attribute(web):
    response = await web.device("GET", "/scep?operation=GetCACert")
    thumbprint = x509.load_der_x509_certificate(response.body).fingerprint(hashes.SHA1()).hex().upper()
    delivered = await windows_profile(web, web.builtin_ca.name, thumbprint)
    settings = Settings.from_syncml(delivered["command"]["payload"])
    client = WindowsScepClient(settings, transport(web))
    answer = await client.enroll()  # read_cert_rep asserts every RFC 8894 CertRep attribute
    assert answer.status == "SUCCESS", answer
    (certificate,) = answer.certificates
    assert subject(certificate)[NameOID.ORGANIZATIONAL_UNIT_NAME] == delivered["renewal_id"]
    # The built-in CA records the certificate on the host profile that earned it: verified, with no agent report.
    row = await web.host_profile(HOST, delivered["uuid"])
    assert row["status"] == "verified"
    # The same bytes again: refused at the proxy, no second certificate.
    assert (await client.repeat())[0] == 400


@pytest_twisted.ensureDeferred
async def test_the_builtin_ca_refuses_a_windows_request_for_another_subject(web):
    response = await web.device("GET", "/scep?operation=GetCACert")
    thumbprint = x509.load_der_x509_certificate(response.body).fingerprint(hashes.SHA1()).hex().upper()
    delivered = await windows_profile(web, web.builtin_ca.name, thumbprint)
    settings = Settings.from_syncml(delivered["command"]["payload"])
    client = WindowsScepClient(attrs.evolve(settings, subject_name="CN=SOMEONE-ELSE,OU=x"),
                               transport(web))
    answer = await client.enroll()
    assert (answer.status, answer.fail_info) == ("FAILURE", "2")  # badRequest, with failInfo as RFC 8894 asks
    assert (await web.host_profile(HOST, delivered["uuid"]))["status"] != "verified"


@pytest_twisted.ensureDeferred
async def test_after_a_refused_repeat_the_agents_error_report_brings_a_fresh_challenge_that_enrolls(web):
    """What docs/agent-api.md tells the agent: Windows reports the failed enrollment, the agent reports the
    error, and the host profile is sent again with a fresh one-time challenge in the same certificate node."""
    delivered = await windows_profile(web, "WIN_CA", await upstream_thumbprint(web))
    settings = Settings.from_syncml(delivered["command"]["payload"])
    client = WindowsScepClient(settings, transport(web))
    assert (await client.enroll()).status == "SUCCESS"
    assert (await client.repeat())[0] == 400
    answer = await web.ok(web.agent("POST", HOST, "/commands/" + delivered["command"]["command_uuid"],
                                    delivered["credential"], {"status": "error", "error": "SCEP Status 16"}))
    assert (answer["status"], answer["retries"]) == (None, 1)
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", HOST, "/commands", delivered["credential"])))["commands"]
    again = Settings.from_syncml(command["payload"])
    assert again.server_url != settings.server_url  # a fresh one-time challenge
    assert "SCEP/%s/Install/Enroll" % (delivered["renewal_id"],) in command["payload"]  # the same node
    assert (await WindowsScepClient(again, transport(web)).enroll()).status == "SUCCESS"


@pytest_twisted.ensureDeferred
async def test_upload_refusals_name_the_platform_and_what_the_builtin_ca_cannot_enforce(web):
    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "WIN_CA", "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge}))
    text = PROFILE.replace("WIFI_CA", "WIN_CA")
    answer = await web.admin("POST", "/api/v1/profiles?platform=macos", text.encode(), content_type="application/xml")
    assert (answer.status, answer.json()) == (
        422, {"error": "a Windows SyncML profile is for platform windows", "field": "platform"})
    apple = (Path(__file__).parent / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig").read_bytes()
    answer = await web.admin("POST", "/api/v1/profiles?platform=windows", apple.replace(b"CA_NAME", b"WIN_CA"))
    assert (answer.status, answer.json()["field"]) == (422, "platform")
    answer = await web.admin("POST", "/api/v1/profiles", text.replace("WIN_CA", "NO_SUCH_CA").encode())
    assert (answer.status, answer.json()) == (
        422, {"error": "profile uses CA 'NO_SUCH_CA', which does not exist; add it first", "field": "profile"})
    # A SAN the built-in CA's policy cannot read is refused at upload, not at every device's enrollment.
    san = ("<Replace><Item><Target><LocURI>./Device/Vendor/MSFT/ClientCertificateInstall/SCEP/"
           "$FLEET_VAR_SCEP_WINDOWS_CERTIFICATE_ID/Install/SubjectAlternativeNames</LocURI></Target>"
           "<Data>1+someone@example.com</Data></Item></Replace>\n<Exec>")
    builtin = PROFILE.replace("WIFI_CA", web.builtin_ca.name).replace("<Exec>", san, 1)
    answer = await web.admin("POST", "/api/v1/profiles", builtin.encode(), content_type="application/xml")
    assert answer.status == 422
    assert answer.json()["error"].startswith(
        "the built-in CA cannot enforce this profile: SCEP node SubjectAlternativeNames has '1+someone@example.com',"
        " which scepproxyd cannot check")
    # With formats it can check, the same profile uploads; Windows asks for those names in its CSR, and the CA's
    # own SAN policy ([ca] san_dns, unset here) still decides: refused with failInfo and its reason.
    accepted = builtin.replace("1+someone@example.com", "3+win.example.com;2+someone@example.com")
    profile = await web.ok(web.admin("POST", "/api/v1/profiles", accepted.encode()))
    await web.ok(web.admin("PUT", "/api/v1/hosts/%s" % (HOST,), {"serial": "S", "platform": "windows"}))
    await web.ok(web.admin("POST", "/api/v1/profiles/%s/assign" % (profile["uuid"],), {"hosts": [HOST]}))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", HOST, "/commands", await web.credential(HOST))))["commands"]
    settings = Settings.from_syncml(command["payload"])
    assert settings.subject_alternative_names == "3+win.example.com;2+someone@example.com"
    response = await web.device("GET", "/scep?operation=GetCACert")
    settings = attrs.evolve(settings, ca_thumbprint=x509.load_der_x509_certificate(response.body).fingerprint(
        hashes.SHA1()).hex().upper())
    answer = await WindowsScepClient(settings, transport(web)).enroll()
    assert (answer.status, answer.fail_info) == ("FAILURE", "2")
    assert "no dns names are issued ([ca] san_dns is not set)" in answer.attributes["1.3.6.1.5.5.7.24.1"]


@pytest_twisted.ensureDeferred
async def test_windows_enrolls_through_an_upstream_ca_in_ra_mode(web):
    """RA mode: GetCACert gives the CA and the proxy's RA (Windows encrypts to the RA), the proxy checks the CSR
    against the rendered SubjectName and answers with its own CertRep, which must carry every attribute too."""
    await web.ok(web.admin("POST", "/api/v1/cas", {
        "name": "RA_WIN", "url": web.upstream_cas.url(), "challenge": web.upstream_cas.static_challenge,
        "mode": "ra", "ra_certificate": "self-signed"}))
    delivered = await windows_profile(web, "RA_WIN", await upstream_thumbprint(web))
    settings = Settings.from_syncml(delivered["command"]["payload"])
    client = WindowsScepClient(settings, transport(web))
    answer = await client.enroll()
    assert answer.status == "SUCCESS", answer
    assert client.recipient != client.ca_certificate  # encrypted to the RA, as Windows does with an RA
    (certificate,) = answer.certificates
    row = await web.host_profile(HOST, delivered["uuid"])
    assert row["cert_serial"] == "%x" % (certificate.serial_number,)
    # Another subject with a fresh copy of the profile never reaches the CA.
    await web.ok(web.admin("POST", "/api/v1/host-profiles/%s/%s/resend" % (HOST, delivered["uuid"])))
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", HOST, "/commands", delivered["credential"])))["commands"]
    other = WindowsScepClient(attrs.evolve(Settings.from_syncml(command["payload"]), subject_name="CN=EVIL-WIFI,OU=x"),
                              transport(web))
    refused = await other.enroll()
    assert (refused.status, refused.fail_info) == ("FAILURE", "2")


@pytest_twisted.ensureDeferred
async def test_windows_with_3des_gets_its_answer_in_3des_from_the_builtin_ca(web):
    response = await web.device("GET", "/scep?operation=GetCACert")
    thumbprint = x509.load_der_x509_certificate(response.body).fingerprint(hashes.SHA1()).hex().upper()
    delivered = await windows_profile(web, web.builtin_ca.name, thumbprint)
    client = WindowsScepClient(Settings.from_syncml(delivered["command"]["payload"]), transport(web), prefer_aes=False)
    answer = await client.enroll()
    assert (answer.status, answer.cipher) == ("SUCCESS", "tripledes_3key")


@pytest_twisted.ensureDeferred
async def test_at_the_builtin_cas_own_scep_url_a_repeat_gets_the_same_answer_and_no_second_certificate(web):
    """A built-in CA reached directly (``/scep/pkiclient.exe``, static challenge on, as for network gear):
    the same PKIOperation again, byte for byte, is answered with the certificate already issued."""
    async def send(method, url, body):
        response = await web.settle(web.upstream_stub.request(method, url, data=body))
        content = await web.settle(web.upstream_stub.content(response))
        return response.code, (response.headers.getRawHeaders(b"Content-Type") or [b""])[0].decode(), content

    settings = Settings(server_url=UPSTREAM_CA_URL, challenge=web.upstream_cas.static_challenge,
                        subject_name="CN=GEAR-WIFI,OU=network")
    client = WindowsScepClient(settings, send)
    first = await client.enroll()
    assert first.status == "SUCCESS", first
    status, _, body = await client.repeat()
    assert status == 200
    again = client.read(body)
    assert again.status == "SUCCESS"
    assert [c.serial_number for c in again.certificates] == [c.serial_number for c in first.certificates]


@pytest_twisted.ensureDeferred
async def test_a_windows_host_back_after_the_ttl_is_refused_and_gets_a_fresh_copy_without_a_retry(web, clock):
    """The one-time challenge is always enforced, expired too: the request never reaches the CA, and the
    profile is sent again (no retry counted) into the same certificate node."""
    delivered = await windows_profile(web, "WIN_CA", await upstream_thumbprint(web))
    client = WindowsScepClient(Settings.from_syncml(delivered["command"]["payload"]), transport(web))
    await client.get_ca()
    message = client.pkcs_req()
    clock.advance(TTL + 1)
    status, _, body = await client.pki_operation(message)
    assert (status, body) == (400, FAILED)
    row = await web.host_profile(HOST, delivered["uuid"])
    assert (row["status"], row["retries"]) == (None, 0)
    assert await web.metric("scepproxyd_proxy_requests_total", operation="PKIOperation", outcome="ok") == 0
    await web.ok(web.admin("POST", "/api/v1/jobs/process_profiles"))
    (command,) = (await web.ok(web.agent("GET", HOST, "/commands", delivered["credential"])))["commands"]
    assert "SCEP/%s/Install/Enroll" % (delivered["renewal_id"],) in command["payload"]
    assert (await WindowsScepClient(Settings.from_syncml(command["payload"]), transport(web)).enroll()).status == \
        "SUCCESS"
