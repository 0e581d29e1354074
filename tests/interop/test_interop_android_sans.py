"""Android certificate templates with subjectAltNames, enrolled by real clients through the real daemon.

The daemon runs under twistd; everything goes through the documented admin
and agent APIs: the template (Fleet's ``subject_alternative_name`` spelling,
the renewal ID in a DNS name) is uploaded, assigned to an android host and
fetched by that host's agent, which hands the rendered names to the device.

strongSwan ``pki --scep`` writes DNS, email and IP (v4 and v6) names; it
cannot write a UPN or a URI (its ``--san`` makes an email of ``upn:…`` and
an empty name of a URI), and micromdm scepclient writes no names at all. So
the template with every kind is enrolled by a device written in the test
(support.clients.csr_enroll), over HTTP like the others. The built-in CA
issues exactly the rendered names and refuses a CSR with one more, or one
short; in front of micromdm scepserver the proxy forwards (passthrough) or,
in RA mode, refuses the extra name before scepserver sees it.
"""

import ipaddress
import json

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import threads

from support.api import Api, aissue_agent_credential
from support.certs import name, upn
from support.clients import csr_enroll, openssl_verify, scepclient, strongswan_enroll
from support.upstream import CHALLENGE as STATIC

pytestmark = pytest.mark.daemon(
    ca={"key_size": "2048", "san_dns": r"[a-z0-9-]+\.wifi\.example\.com", "san_email": r"it@example\.com",
        "san_ip": r"10\.20\.0\.1|2001:db8::1", "san_uri": "urn:example:device:sp-[0-9a-f]+",
        "san_upn": r"wifi@corp\.example"},
    profiles={"process_interval": "1h", "max_retries": "20"},
)
# What strongSwan can write, and every kind.
STRONGSWAN_SANS = "DNS=$FLEET_VAR_SCEP_RENEWAL_ID.wifi.example.com, EMAIL=it@example.com, IP=10.20.0.1, IP=2001:DB8::1"
EVERY_SAN = STRONGSWAN_SANS + ", UPN=wifi@corp.example, URI=urn:example:device:$FLEET_VAR_SCEP_RENEWAL_ID"


def template(ca: str, sans: str, name_: str) -> bytes:
    return json.dumps({
        "format": "scepproxyd.android-certificate-template/1",
        "name": name_,
        "scep": {"url": "$FLEET_VAR_CUSTOM_SCEP_PROXY_URL_" + ca, "challenge": "$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_" + ca},
        "subject": "CN=$FLEET_VAR_SCEP_RENEWAL_ID,OU=Wi-Fi",
        "key": {"type": "rsa", "size": 2048},
        "extended_key_usage": ["client_auth"],
        "subject_alternative_name": sans,
    }).encode()


class Android:
    """An android host with its agent, one template assigned: what the agent fetches, as the device reads it."""

    def __init__(self, daemon, host):
        self.daemon, self.host = daemon, host
        self.admin = Api(daemon.admin_url, daemon.admin_token)

    async def set_up(self, ca: str, sans: str):
        await self.admin.acall("PUT", "/api/v1/hosts/" + self.host, {"serial": "SER-" + self.host, "platform": "android"})
        self.agent = Api(self.daemon.url, await aissue_agent_credential(self.admin, self.host))
        created = await self.admin.acall("POST", "/api/v1/profiles?platform=android",
                                         raw=template(ca, sans, "Wi-Fi " + self.host), content_type="application/json")
        self.profile = created["uuid"]
        await self.admin.acall("POST", "/api/v1/profiles/%s/assign" % self.profile, {"hosts": [self.host]})
        return self

    async def fetch(self) -> dict:
        """Process, then fetch as the agent: the rendered template."""
        await self.admin.acall("POST", "/api/v1/jobs/process_profiles")
        commands = (await self.agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % self.host))["commands"]
        (command,) = [c for c in commands if c["profile_uuid"] == self.profile]
        rendered = json.loads(command["payload"])
        rendered["renewal_id"] = rendered["subject"].split(",")[0][3:]
        return rendered

    async def row(self) -> dict:
        (row,) = (await self.admin.acall("GET", "/api/v1/host-profiles?host=%s&profile=%s"
                                         % (self.host, self.profile)))["host_profiles"]
        return row


def general_names(rendered: dict) -> list:
    """The rendered names as the device writes them into its CSR."""
    names = rendered["subject_alt_names"]
    return ([x509.DNSName(v) for v in names["dns"]] + [x509.RFC822Name(v) for v in names["email"]]
            + [x509.IPAddress(ipaddress.ip_address(v)) for v in names["ip"]] + [upn(v) for v in names["upn"]]
            + [x509.UniformResourceIdentifier(v) for v in names["uri"]])


def strongswan_names(rendered: dict) -> list[str]:
    names = rendered["subject_alt_names"]
    return names["dns"] + names["email"] + names["ip"]


def subject(rendered: dict) -> x509.Name:
    return name([(NameOID.ORGANIZATIONAL_UNIT_NAME, "Wi-Fi")], [(NameOID.COMMON_NAME, rendered["renewal_id"])])


def sans_of(certificate: x509.Certificate) -> list[str]:
    return sorted(map(repr, certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value))


@pytest_twisted.ensureDeferred
async def test_strongswan_gets_exactly_the_rendered_names_from_the_builtin_ca(tmp_path, daemon):
    android = await Android(daemon, "PIXEL-S").set_up("builtin", STRONGSWAN_SANS)
    rendered = await android.fetch()
    assert (await android.row())["lifecycle"] == "delivering"
    dn = "OU=Wi-Fi, CN=%s" % (rendered["renewal_id"],)

    # One name more than the template rendered: FAILURE, no certificate, the reason kept.
    extra = strongswan_names(rendered) + ["evil.wifi.example.com"]
    result = await threads.deferToThread(strongswan_enroll, tmp_path, "extra", rendered["scep"]["url"],
                                         rendered["scep"]["challenge"], dn, *extra)
    assert result.returncode != 0
    row = await android.row()
    assert (row["lifecycle"], row["status"], row["retries"], row["cert_serial"]) == ("pending", None, 1, None)
    assert "subjectAltName dns 'evil.wifi.example.com', which the profile does not render" in row["detail"]

    # The fresh copy, asked for exactly: issued, with those names and no other.
    rendered = await android.fetch()
    dn = "OU=Wi-Fi, CN=%s" % (rendered["renewal_id"],)
    result = await threads.deferToThread(strongswan_enroll, tmp_path, "ok", rendered["scep"]["url"],
                                         rendered["scep"]["challenge"], dn, *strongswan_names(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    certificate = x509.load_der_x509_certificate(result.stdout)
    assert sans_of(certificate) == sorted(map(repr, general_names(rendered)))
    row = await android.row()
    assert (row["lifecycle"], row["status"], row["cert_serial"]) == (
        "verified", "verified", "%x" % certificate.serial_number)
    log = daemon.log()
    assert rendered["scep"]["challenge"] not in log


@pytest_twisted.ensureDeferred
async def test_every_kind_with_upn_and_uri_from_the_builtin_ca_and_scepclient_without_names_refused(tmp_path, daemon):
    android = await Android(daemon, "PIXEL-U").set_up("builtin", EVERY_SAN)
    rendered = await android.fetch()
    assert len(rendered["subject_alt_names"]["upn"]) == len(rendered["subject_alt_names"]["uri"]) == 1

    # scepclient cannot write the names the template renders: refused, saying which is missing.
    result = await threads.deferToThread(scepclient, tmp_path / "scepclient", rendered["scep"]["url"],
                                         rendered["scep"]["challenge"], rendered["renewal_id"],
                                         "-organization", "", "-country", "", "-ou", "Wi-Fi")
    assert result.returncode != 0
    assert "CSR lacks subjectAltName dns" in (await android.row())["detail"]

    # A URI the template did not render, then the names exactly.
    rendered = await android.fetch()
    status, fail_info, _ = await threads.deferToThread(
        csr_enroll, rendered["scep"]["url"], rendered["scep"]["challenge"], subject(rendered),
        general_names(rendered) + [x509.UniformResourceIdentifier("urn:example:device:sp-0000000000000000")])
    assert (status, fail_info) == ("FAILURE", "badRequest")
    assert "subjectAltName uri 'urn:example:device:sp-0000000000000000'" in (await android.row())["detail"]
    rendered = await android.fetch()
    status, _, (certificate,) = await threads.deferToThread(
        csr_enroll, rendered["scep"]["url"], rendered["scep"]["challenge"], subject(rendered),
        general_names(rendered)[::-1])
    assert status == "SUCCESS"
    assert sans_of(certificate) == sorted(map(repr, general_names(rendered)))
    openssl_verify(daemon.directory / "state" / "ca" / "ca.pem", _pem(tmp_path / "every.pem", certificate))
    row = await android.row()
    assert (row["lifecycle"], row["cert_serial"]) == ("verified", "%x" % certificate.serial_number)


@pytest_twisted.ensureDeferred
async def test_through_scepserver_passthrough_and_ra_mode(tmp_path, daemon, upstream):
    admin = Api(daemon.admin_url, daemon.admin_token)
    await admin.acall("POST", "/api/v1/cas", {"name": "CORP_CA", "url": upstream.url, "challenge": STATIC})
    await admin.acall("POST", "/api/v1/cas", {"name": "CORP_RA", "url": upstream.url, "challenge": STATIC,
                                              "mode": "ra"})
    # scepserver copies DNS, email, IP and URI names from the CSR (and no otherName, so no UPN).
    sans = STRONGSWAN_SANS + ", URI=urn:example:device:$FLEET_VAR_SCEP_RENEWAL_ID"

    # Passthrough: scepserver judges the request itself; the device's names reach the certificate.
    android = await Android(daemon, "PIXEL-P").set_up("CORP_CA", sans)
    rendered = await android.fetch()
    assert rendered["scep"]["challenge"] == STATIC
    status, _, (certificate,) = await threads.deferToThread(
        csr_enroll, rendered["scep"]["url"], rendered["scep"]["challenge"], subject(rendered), general_names(rendered))
    assert status == "SUCCESS"
    assert sans_of(certificate) == sorted(map(repr, general_names(rendered)))
    assert (await android.row())["lifecycle"] == "delivered"

    # RA mode: the proxy binds the CSR to the template; one name more never reaches scepserver.
    android = await Android(daemon, "PIXEL-R").set_up("CORP_RA", sans)
    rendered = await android.fetch()
    before = upstream.operations("PKIOperation")
    status, fail_info, _ = await threads.deferToThread(
        csr_enroll, rendered["scep"]["url"], rendered["scep"]["challenge"], subject(rendered),
        general_names(rendered) + [upn("wifi@corp.example")])
    assert (status, fail_info) == ("FAILURE", "badRequest")
    assert upstream.operations("PKIOperation") == before
    assert "subjectAltName upn 'wifi@corp.example', which the profile does not render" in (await android.row())["detail"]
    rendered = await android.fetch()
    status, _, (certificate,) = await threads.deferToThread(
        csr_enroll, rendered["scep"]["url"], rendered["scep"]["challenge"], subject(rendered), general_names(rendered))
    assert status == "SUCCESS"
    assert sans_of(certificate) == sorted(map(repr, general_names(rendered)))
    openssl_verify(upstream.ca_pem, _pem(tmp_path / "ra.pem", certificate))
    row = await android.row()
    assert (row["lifecycle"], row["cert_serial"]) == ("verified", "%x" % certificate.serial_number)
    assert STATIC not in daemon.log()


def _pem(path, certificate):
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path
