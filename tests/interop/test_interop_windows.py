"""Windows custom SCEP with the real daemon and micromdm scepserver as the upstream CA.

The admin uploads a SyncML ClientCertificateInstall profile and assigns it
to a windows host; the agent fetches the rendered SyncML; a client shaped as
Windows' SCEP client (support.windows_client) enrolls through the proxy's
``/pkiclient.exe`` URL with GET ``message=`` requests. Repeating the same
PKIOperation, or presenting the spent challenge in another request, reaches
scepserver no more: only one certificate is in its depot.
"""

import re

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from support.site import FIXTURES, host_profile_status, set_up
from support.windows_client import Settings, WindowsScepClient

pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h"}, renewal={"interval": "1d"})

HOST = "WIN-0001"


async def send(method, url, body):
    response = await treq.request(method, url, data=body)
    content = await response.content()
    return response.code, (response.headers.getRawHeaders(b"Content-Type") or [b""])[0].decode(), content


def issued_in_depot(upstream) -> int:
    """Certificates scepserver issued (its depot keeps each as a .pem beside the CA's)."""
    return len([p for p in upstream.depot.rglob("*.pem") if p.name not in ("ca.pem",)])


@pytest_twisted.ensureDeferred
async def test_windows_enrolls_through_the_proxy_with_scepserver(upstream, daemon):
    ca_der = await (await treq.get(upstream.url + "?operation=GetCACert")).content()
    thumbprint = x509.load_der_x509_certificate(ca_der).fingerprint(hashes.SHA1()).hex().upper()
    template = (FIXTURES / "fleet-custom-scep-windows.xml").read_text()
    template = template.replace("WIFI_CA", "CORP_CA").replace("0123456789ABCDEF0123456789ABCDEF01234567", thumbprint)
    admin, agent, profile = await set_up(daemon, upstream, template.encode(), "application/xml", HOST, "windows")
    assert (await admin.acall("POST", "/api/v1/jobs/process_profiles"))["result"]["claimed"] == 1
    (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % HOST))["commands"]
    assert command["kind"] == "windows_syncml"
    (renewal_id,) = set(re.findall(r"ClientCertificateInstall/SCEP/(sp-[0-9a-f]{16})/", command["payload"]))
    settings = Settings.from_syncml(command["payload"])
    assert settings.server_url.startswith(daemon.url + "/mdm/scep/proxy/")

    before = issued_in_depot(upstream)
    client = WindowsScepClient(settings, send)
    answer = await client.enroll()
    assert answer.status == "SUCCESS"
    (certificate,) = answer.certificates
    assert {a.oid: a.value for a in certificate.subject} == {
        NameOID.COMMON_NAME: "WIN-WIFI", NameOID.ORGANIZATIONAL_UNIT_NAME: renewal_id}
    assert issued_in_depot(upstream) == before + 1
    assert (await host_profile_status(admin, HOST, profile))["status"] == "verifying"

    # Windows asking again with the same bytes, and another request with the spent challenge: refused, nothing upstream.
    assert (await client.repeat())[:1] == (400,)
    other = WindowsScepClient(settings, send)
    await other.get_ca()
    status, _, body = await other.pki_operation(other.pkcs_req())
    assert (status, body) == (400, b"custom scep challenge failed\n")
    assert issued_in_depot(upstream) == before + 1

    # The agent acknowledges after Windows' Install/Status says done, then reports the certificate: verified.
    await agent.acall("POST", "/api/v1/agent/hosts/%s/commands/%s" % (HOST, command["command_uuid"]),
                      {"status": "acknowledged"})
    assert (await agent.acall("POST", "/api/v1/agent/hosts/%s/profiles" % HOST, {"installed": [profile]})) == {
        "verified": 0}
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    report = await agent.acall("POST", "/api/v1/agent/hosts/%s/certificates" % HOST, {"certificates": [pem]})
    assert report["recorded"] == 1
    assert (await host_profile_status(admin, HOST, profile))["status"] == "verified"
