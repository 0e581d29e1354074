"""RA mode in front of micromdm scepserver, with micromdm scepclient as the device.

The daemon runs under twistd as the README runs it; the CA integration is
added in ``ra`` mode through the admin API (its RA certificate enrolled from
scepserver), the profile assigned and delivered through the admin and agent
APIs. The proxy must check every CSR against the host profile before
scepserver sees it, and record every certificate it learns at once.
"""

import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
import treq
from twisted.internet import threads

from scepproxyd.scep import codec

from support.clients import bound_scepclient as device, load, openssl_verify
from support.ra_site import HOST, deliver, ra_site
from support.site import host_profile_status
from support.upstream import CHALLENGE as STATIC


@pytest_twisted.ensureDeferred
async def test_enrollment_through_the_ra_is_checked_and_recorded_at_once(tmp_path, upstream, daemon):
    admin, agent, profile, ca = await ra_site(daemon, upstream)
    assert ca["mode"] == "ra"
    assert ca["ra"]["certificate"] == "enrolled"
    ca_cert = load(upstream.ca_pem)
    assert ca["ra"]["issuer"] == ca_cert.subject.rfc4514_string()
    url, challenge, cn = await deliver(admin, agent, profile)
    before = upstream.operations("PKIOperation")

    # Another subject: refused by the proxy, never seen by scepserver; the host profile is sent again.
    result = await threads.deferToThread(device, tmp_path / "wrong", url, challenge, "SER-OTHER WIFI x")
    assert result.returncode != 0
    assert upstream.operations("PKIOperation") == before
    row = await host_profile_status(admin, HOST, profile)
    assert row["status"] is None and row["retries"] == 1
    assert "RA refused" in row["detail"] and "subject" in row["detail"]

    url, challenge, cn = await deliver(admin, agent, profile)
    result = await threads.deferToThread(device, tmp_path / "mac", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert upstream.operations("PKIOperation") == before + 1
    certificate = load(tmp_path / "mac" / "client.pem")
    openssl_verify(upstream.ca_pem, tmp_path / "mac" / "client.pem")
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    row = await host_profile_status(admin, HOST, profile)
    assert row["status"] == "verified"
    assert row["cert_serial"] == "%x" % certificate.serial_number
    assert row["cert_not_after"] is not None

    log = daemon.log()
    assert challenge not in log and STATIC not in log
    assert "outcome=policy_refused" in log and "outcome=ok" in log


@pytest_twisted.ensureDeferred
async def test_a_self_signed_ra_is_in_getcacert_and_scepclient_enrolls_through_it(tmp_path, upstream, daemon):
    admin, agent, profile, ca = await ra_site(daemon, upstream, ra_certificate="self-signed")
    assert ca["ra"]["certificate"] == "self-signed"
    url, challenge, cn = await deliver(admin, agent, profile)
    answer = await treq.get(url + "?operation=GetCACert")
    assert answer.headers.getRawHeaders(b"Content-Type") == [b"application/x-x509-ca-ra-cert"]
    certificates = [x509.load_der_x509_certificate(der) for der in codec.ca_certificates(await answer.content())]
    assert sorted(c.subject.rfc4514_string() for c in certificates) == sorted(
        [ca["ra"]["subject"], load(upstream.ca_pem).subject.rfc4514_string()])
    caps = await treq.get(url + "?operation=GetCACaps")
    assert b"Renewal" in await caps.content()
    result = await threads.deferToThread(device, tmp_path / "mac", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    openssl_verify(upstream.ca_pem, tmp_path / "mac" / "client.pem")
