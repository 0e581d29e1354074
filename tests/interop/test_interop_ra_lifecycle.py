"""A certificate's life through the RA, with real peers: renewal, renew_certificates, PENDING, FAILURE.

One daemon under twistd (the proxy) serves every test, each with its own CA
integration in ``ra`` mode and its own hosts, set up through the admin and
agent APIs (support.ra_site). Upstream are micromdm scepserver and, for a
CA that holds requests for an admin, the built-in CA of a second daemon
(conftest ``module_held_ca``). The devices are micromdm scepclient,
strongSwan ``pki --scep`` and certmonger.

What is proved: a device renews through the same proxy URL with its
current certificate, the one recorded on its host profile (scepclient's and
strongSwan's RenewalReq, certmonger's PKCSReq signed by that certificate),
and the RA asks upstream with its own PKCSReq; the new certificate is
recorded at once. A renewal signed by anything else, or by a certificate
renewed already, is refused before the CA sees it. ``renew_certificates``
works from the dates the RA recorded, with no report from an agent. A
PENDING upstream answer is followed through the device's CertPolls until
the upstream's admin approves (or rejects); an upstream FAILURE reaches the
device with the upstream's failInfo, signed by the RA, and counts on the
host profile. (scepclient polls by resending every 30 seconds, too slow to
wait for here; strongSwan polls every second.)
"""

import re
import shutil
import subprocess

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from scepproxyd.timestamps import utc_iso
from support.api import Api
from support.certmonger import Certmonger
from support.certs import self_signed
from support.clients import bound_scepclient as device, load, openssl_verify, pki
from support.processes import need
from support.ra_site import add_host, deliver, ra_site, strongswan_args
from support.site import OU, challenge_from_url, host_profile_status, move_certificate_into_renewal_window

pytestmark = pytest.mark.daemon(profiles={"process_interval": "1h"})  # the tests run the jobs


def serial(path) -> str:
    return "%x" % load(path).serial_number


def copy_device(source, target, certificate=None):
    """A device directory holding ``source``'s key and ``certificate`` (default: its client.pem) as client.pem."""
    target.mkdir(parents=True)
    shutil.copy(source / "key.pem", target / "key.pem")
    if certificate is not None:
        (target / "client.pem").write_bytes(certificate)
    else:
        shutil.copy(source / "client.pem", target / "client.pem")
    return target


def refused(result) -> bool:
    """scepclient ended on a FAILURE badRequest CertRep."""
    return result.returncode != 0 and "failInfo: badRequest" in result.stdout + result.stderr


# -- renewal ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_scepclient_renews_with_the_recorded_certificate_and_nothing_else(tmp_path, module_daemon,
                                                                                 module_upstream):
    daemon, upstream = module_daemon, module_upstream
    admin, agent_a, profile, ca = await ra_site(daemon, upstream, host="RENEW-A", name="RENEW_CA")
    agent_b = await add_host(admin, daemon, "RENEW-B", profile)
    url, challenge, cn = await deliver(admin, agent_a, profile, host="RENEW-A")
    url_b, challenge_b, cn_b = await deliver(admin, agent_b, profile, host="RENEW-B")
    a, b = tmp_path / "a", tmp_path / "b"
    for workdir, target, secret, name in ((a, url, challenge, cn), (b, url_b, challenge_b, cn_b)):
        result = await threads.deferToThread(device, workdir, target, secret, name)
        assert result.returncode == 0, result.stdout + result.stderr
    first = load(a / "client.pem")
    enrolled = await host_profile_status(admin, "RENEW-A", profile)
    assert (enrolled["status"], enrolled["cert_serial"]) == ("verified", serial(a / "client.pem"))
    before = upstream.operations("PKIOperation")

    # Signed by another host's certificate from the same CA, or by a self-signed one: refused, never upstream.
    other_host = copy_device(b, tmp_path / "b-at-a")
    own_key = serialization.load_pem_private_key((a / "key.pem").read_bytes(), None)
    self_made = copy_device(a, tmp_path / "self-signed",
                            self_signed(cn, key=own_key)[0].public_bytes(serialization.Encoding.PEM))
    for workdir in (other_host, self_made):
        result = await threads.deferToThread(device, workdir, url, None, cn)
        assert refused(result), (workdir.name, result.stdout + result.stderr)
    assert upstream.operations("PKIOperation") == before
    assert await host_profile_status(admin, "RENEW-A", profile) == enrolled

    # Its own certificate, through the same proxy URL (its challenge spent long ago): a RenewalReq.
    old = (a / "client.pem").read_bytes()
    result = await threads.deferToThread(device, a, url, None, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert upstream.operations("PKIOperation") == before + 1
    renewed = load(a / "client.pem")
    openssl_verify(upstream.ca_pem, a / "client.pem")
    assert renewed.serial_number != first.serial_number and renewed.subject == first.subject
    row = await host_profile_status(admin, "RENEW-A", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % renewed.serial_number)
    assert row["cert_not_after"] == utc_iso(renewed.not_valid_after_utc.timestamp()) >= enrolled["cert_not_after"]
    assert renewed.not_valid_before_utc >= first.not_valid_before_utc

    # The old certificate again, after its renewal: refused, never upstream, the new one stays recorded.
    result = await threads.deferToThread(device, copy_device(a, tmp_path / "old", old), url, None, cn)
    assert refused(result), result.stdout + result.stderr
    assert upstream.operations("PKIOperation") == before + 1
    assert await host_profile_status(admin, "RENEW-A", profile) == row

    log = daemon.log()
    assert log.count("outcome=renewal_refused") == 3
    for secret in (challenge, challenge_from_url(url), challenge_from_url(url_b)):
        assert secret not in log


def strongswan(workdir, url, challenge, cn, *extra):
    """strongSwan ``pki --scep`` through the RA (a new key in ``workdir``): the finished run, its certificate
    in ``workdir``/cert.der on success."""
    result = pki(*strongswan_args(workdir, url, challenge, cn, *extra))
    if result.returncode == 0:
        (workdir / "cert.der").write_bytes(result.stdout)
    return result


@pytest_twisted.ensureDeferred
async def test_strongswan_renews_with_a_new_key(tmp_path, module_daemon, module_upstream):
    daemon, upstream = module_daemon, module_upstream
    admin, agent, profile, ca = await ra_site(daemon, upstream, host="RENEW-S", name="SWAN_CA")
    url, challenge, cn = await deliver(admin, agent, profile, host="RENEW-S")
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    result = await threads.deferToThread(strongswan, first_dir, url, challenge, cn)
    assert result.returncode == 0, result.stderr.decode()
    first = load(first_dir / "cert.der")
    assert (await host_profile_status(admin, "RENEW-S", profile))["cert_serial"] == "%x" % first.serial_number
    before = upstream.operations("PKIOperation")

    # A new key in a RenewalReq signed by the old certificate (its --password: the profile's static challenge,
    # which scepserver wants in every CSR), through the same proxy URL.
    result = await threads.deferToThread(strongswan, second_dir, url, challenge, cn,
                                         "--cert", str(first_dir / "cert.der"), "--key", str(first_dir / "key.der"))
    assert result.returncode == 0, result.stderr.decode()
    renewed = load(second_dir / "cert.der")
    assert renewed.serial_number != first.serial_number and renewed.subject == first.subject
    assert renewed.public_key() != first.public_key()
    openssl_verify(upstream.ca_pem, second_dir / "cert.der", der=True)
    assert upstream.operations("PKIOperation") == before + 1
    row = await host_profile_status(admin, "RENEW-S", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % renewed.serial_number)


@pytest_twisted.ensureDeferred
async def test_certmonger_resubmit_renews_with_its_current_certificate(module_daemon, module_upstream, certmonger):
    """certmonger renews as the SCEP drafts did: a PKCSReq signed by the certificate it renews (its log says
    "Signing using previously-issued key and cert"), which the RA takes as a renewal."""
    daemon, upstream = module_daemon, module_upstream
    admin, agent, profile, ca = await ra_site(daemon, upstream, host="RENEW-C", name="CERTMONGER_CA")
    url, challenge, cn = await deliver(admin, agent, profile, host="RENEW-C")
    await threads.deferToThread(certmonger.add_scep_ca, "ra", url, upstream.ca_pem)
    # certmonger (NSS) writes the subject's RDNs in the order given: the profile's order.
    await threads.deferToThread(certmonger.request, "wifi", "ra", "OU=%s,CN=%s" % (OU, cn), challenge)
    fields = await threads.deferToThread(certmonger.wait_for, "wifi", Certmonger.DONE, Certmonger.REJECTED,
                                         Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.DONE, fields
    path = certmonger.certificate_path("wifi")
    first = load(path)
    assert (await host_profile_status(admin, "RENEW-C", profile))["cert_serial"] == "%x" % first.serial_number
    before = upstream.operations("PKIOperation")

    # The URL's one-time challenge was spent on the enrollment: only the certificate can renew now.
    await threads.deferToThread(certmonger.resubmit, "wifi")

    def settled():
        if certmonger.status("wifi")["status"] in (Certmonger.REJECTED, Certmonger.UNREACHABLE):
            return True
        try:
            return load(path).serial_number != first.serial_number
        except ValueError:  # being written
            return False

    await until(settled, "certmonger's renewal")
    fields = await threads.deferToThread(certmonger.wait_for, "wifi", Certmonger.DONE, Certmonger.REJECTED,
                                         Certmonger.UNREACHABLE)
    assert fields["status"] == Certmonger.DONE, fields
    assert "Signing using previously-issued key and cert" in certmonger.log()
    renewed = load(path)
    assert renewed.serial_number != first.serial_number and renewed.subject == first.subject
    openssl_verify(upstream.ca_pem, path)
    assert upstream.operations("PKIOperation") == before + 1
    row = await host_profile_status(admin, "RENEW-C", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % renewed.serial_number)
    assert "host=RENEW-C profile=%s ca=CERTMONGER_CA outcome=challenge" % (profile,) not in daemon.log()


# -- renew_certificates ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_renew_certificates_uses_the_dates_the_ra_recorded(tmp_path, module_daemon, module_upstream):
    daemon, upstream = module_daemon, module_upstream
    admin, agent, profile, ca = await ra_site(daemon, upstream, host="RENEW-J", name="JOB_CA")
    url, challenge, cn = await deliver(admin, agent, profile, host="RENEW-J")
    result = await threads.deferToThread(device, tmp_path / "first", url, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    first = load(tmp_path / "first" / "client.pem")
    row = await host_profile_status(admin, "RENEW-J", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % first.serial_number)

    # Not due yet: the job leaves it alone. No agent ever reported a certificate.
    await admin.acall("POST", "/api/v1/jobs/renew_certificates")
    assert (await host_profile_status(admin, "RENEW-J", profile))["status"] == "verified"
    move_certificate_into_renewal_window(daemon, "RENEW-J", profile)
    answer = await admin.acall("POST", "/api/v1/jobs/renew_certificates")
    assert answer["result"]["renewals_due"] >= 1, answer
    row = await host_profile_status(admin, "RENEW-J", profile)
    assert row["status"] is None and row["cert_serial"] == "%x" % first.serial_number

    # The profile goes out again with a fresh one-time challenge in its URL; the Mac enrolls anew through the RA.
    again, challenge, cn_again = await deliver(admin, agent, profile, host="RENEW-J")
    assert challenge_from_url(again) != challenge_from_url(url) and cn_again == cn
    result = await threads.deferToThread(device, tmp_path / "second", again, challenge, cn)
    assert result.returncode == 0, result.stdout + result.stderr
    second = load(tmp_path / "second" / "client.pem")
    assert second.serial_number != first.serial_number
    row = await host_profile_status(admin, "RENEW-J", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % second.serial_number)
    assert row["cert_not_after"] == utc_iso(second.not_valid_after_utc.timestamp())
    # Its new dates are far from the window: the next run leaves it alone.
    await admin.acall("POST", "/api/v1/jobs/renew_certificates")
    assert (await host_profile_status(admin, "RENEW-J", profile))["status"] == "verified"


# -- PENDING upstream --------------------------------------------------------------------------------


async def until(check, what: str, tries: int = 300):
    """``check()`` until it returns something true (every 0.1 s, ``tries`` times); its last value."""
    for _ in range(tries):
        value = check()
        if value:
            return value
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("still waiting for " + what)


def held_requests(held, status: str) -> list:
    """The upstream built-in CA's requests with ``status``, through its admin API."""
    code, answer = held.admin("GET", "/api/v1/ca/requests?status=" + status)
    assert code == 200, answer
    return answer["requests"]


async def decided_upstream(daemon, held, host, profile, cn, args, decision="approve", body=None):
    """strongSwan ``pki`` with ``args`` (polling every second) through the RA to ``held``: once its request for
    the profile's subject with ``cn`` waits there and the device has polled at least once, the upstream's admin
    makes ``decision`` (approve, reject). (the finished pki run, the upstream's request as its admin API listed
    it while it waited)."""
    subject = "CN=%s,OU=%s" % (cn, OU)
    polls = re.compile(r"proxy PKIOperation host=%s profile=%s ca=\w+ outcome=pending" % (host, profile))
    polled = len(polls.findall(daemon.log()))
    client = subprocess.Popen([need("pki"), *args, "--interval", "1", "--maxpolltime", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        (waiting,) = await until(lambda: [r for r in held_requests(held, "pending") if r["subject"] == subject],
                                 "the upstream's pending request")
        await until(lambda: len(polls.findall(daemon.log())) >= polled + 2, "the device to poll while PENDING")
        row = await host_profile_status(Api(daemon.admin_url, daemon.admin_token), host, profile)
        assert row["retries"] == 0 and row["detail"] is None, row
        code, decided = held.admin("POST", "/api/v1/ca/requests/%s/%s" % (waiting["transaction_id"], decision), body)
        assert code == 200, decided
        out, err = await threads.deferToThread(client.communicate, timeout=120)
    finally:
        if client.poll() is None:
            client.terminate()
            client.wait(10)
    return subprocess.CompletedProcess(args, client.returncode, out, err), waiting


async def approved_upstream(daemon, held, host, profile, cn, args):
    """decided_upstream, approved: (the certificate strongSwan wrote, the upstream's request)."""
    result, waiting = await decided_upstream(daemon, held, host, profile, cn, args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout, waiting


@pytest_twisted.ensureDeferred
async def test_pending_upstream_is_followed_until_its_admin_approves(tmp_path, module_daemon, module_held_ca):
    daemon, held = module_daemon, module_held_ca
    admin, agent, profile, ca = await ra_site(daemon, held.scep_url, host="HELD-1", name="HELD_CA",
                                              challenge=held.static_challenge)
    assert ca["ra"]["certificate"] == "enrolled"  # the RA's own request is the one the upstream issues at once
    url, challenge, cn = await deliver(admin, agent, profile, host="HELD-1")
    # strongSwan polls with CertPoll every second after PENDING; the host profile waits with it.
    args = strongswan_args(tmp_path / "swan", url, challenge, cn)
    out, waiting = await approved_upstream(daemon, held, "HELD-1", profile, cn, args)
    assert waiting["requester"] == "127.0.0.1"  # the RA asked, over SCEP, from the daemon
    (tmp_path / "cert.der").write_bytes(out)
    openssl_verify(held.ca_pem, tmp_path / "cert.der", der=True)
    certificate = load(tmp_path / "cert.der")
    assert certificate.subject.rfc4514_string() == waiting["subject"]
    row = await host_profile_status(admin, "HELD-1", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % certificate.serial_number)
    issued = {r["transaction_id"]: r["subject"] for r in held_requests(held, "issued")}
    assert issued[waiting["transaction_id"]] == waiting["subject"]

    upstream_log = held.daemon.log()
    transaction = "transaction=%s " % (waiting["transaction_id"],)
    assert "type=PKCSReq %soutcome=pending" % (transaction,) in upstream_log
    assert "type=CertPoll %soutcome=delivered" % (transaction,) in upstream_log
    log = daemon.log()
    assert "host=HELD-1 profile=%s ca=HELD_CA outcome=ok" % (profile,) in log
    assert challenge_from_url(url) not in log and held.static_challenge not in log

    # The device renews: its RenewalReq goes upstream as the RA's own PKCSReq, waits, and is polled for.
    renewal = tmp_path / "renewal"
    args = strongswan_args(renewal, url, challenge, cn, "--cert", str(tmp_path / "cert.der"),
                           "--key", str(tmp_path / "swan" / "key.der"))
    out, waiting = await approved_upstream(daemon, held, "HELD-1", profile, cn, args)
    (renewal / "cert.der").write_bytes(out)
    renewed = load(renewal / "cert.der")
    assert renewed.serial_number != certificate.serial_number and renewed.subject == certificate.subject
    row = await host_profile_status(admin, "HELD-1", profile)
    assert (row["status"], row["cert_serial"]) == ("verified", "%x" % renewed.serial_number)
    upstream_log = held.daemon.log()
    transaction = "transaction=%s " % (waiting["transaction_id"],)
    assert "type=PKCSReq %soutcome=pending" % (transaction,) in upstream_log
    assert "type=CertPoll %soutcome=delivered" % (transaction,) in upstream_log
    assert "type=RenewalReq" not in upstream_log


@pytest_twisted.ensureDeferred
async def test_pending_upstream_rejected_reaches_the_polling_device_as_failure(tmp_path, module_daemon,
                                                                              module_held_ca):
    daemon, held = module_daemon, module_held_ca
    admin, agent, profile, ca = await ra_site(daemon, held.scep_url, host="HELD-2", name="REJECTING_CA",
                                              challenge=held.static_challenge)
    url, challenge, cn = await deliver(admin, agent, profile, host="HELD-2")
    args = strongswan_args(tmp_path / "swan", url, challenge, cn)
    result, waiting = await decided_upstream(daemon, held, "HELD-2", profile, cn, args, "reject",
                                             {"reason": "unknown device"})
    assert result.returncode != 0
    said = result.stderr.decode()
    assert 'using trusted certificate "O=scepproxyd, CN=scepproxyd RA for REJECTING_CA"' in said, said
    assert "failInfo:     badRequest" in said, said
    row = await host_profile_status(admin, "HELD-2", profile)
    assert (row["status"], row["retries"], row["cert_serial"]) == (None, 1, None)
    assert row["detail"] == "upstream CA refused the request (badRequest)"
    transaction = "transaction=%s " % (waiting["transaction_id"],)
    assert "type=CertPoll %soutcome=rejected" % (transaction,) in held.daemon.log()
    assert "host=HELD-2 profile=%s ca=REJECTING_CA outcome=ca_refused" % (profile,) in daemon.log()


# -- FAILURE upstream --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upstream_failure_is_relayed_signed_by_the_ra_and_counted(tmp_path, module_daemon, module_upstream):
    daemon, upstream = module_daemon, module_upstream
    admin, agent, profile, ca = await ra_site(daemon, upstream, host="REFUSED-1", name="REFUSING_CA")
    assert ca["ra"]["certificate"] == "enrolled"
    # The admin then saves a challenge scepserver does not know: every request the RA sends is refused there.
    await admin.acall("PATCH", "/api/v1/cas/REFUSING_CA", {"challenge": "not-scepservers-challenge"})
    before = upstream.operations("PKIOperation")

    url, challenge, cn = await deliver(admin, agent, profile, host="REFUSED-1")
    result = await threads.deferToThread(device, tmp_path / "scepclient", url, challenge, cn)
    assert result.returncode != 0
    assert "request failed, failInfo: badRequest" in result.stdout + result.stderr
    assert upstream.operations("PKIOperation") == before + 1
    row = await host_profile_status(admin, "REFUSED-1", profile)
    assert (row["status"], row["retries"], row["cert_serial"]) == (None, 1, None)
    assert row["detail"] == "upstream CA refused the request (badRequest)"

    # strongSwan takes the CertRep's signer from --cacert-sig: the RA's certificate alone.
    url, challenge, cn = await deliver(admin, agent, profile, host="REFUSED-1")
    result = await threads.deferToThread(strongswan, tmp_path / "swan", url, challenge, cn)
    assert result.returncode != 0
    said = result.stderr.decode()
    assert 'using trusted certificate "O=scepproxyd, CN=scepproxyd RA for REFUSING_CA"' in said, said
    assert "failInfo:     badRequest" in said, said
    assert upstream.operations("PKIOperation") == before + 2
    row = await host_profile_status(admin, "REFUSED-1", profile)
    assert (row["status"], row["retries"]) == (None, 2)
    assert row["detail"] == "upstream CA refused the request (badRequest)"
    log = daemon.log()
    assert log.count("host=REFUSED-1 profile=%s ca=REFUSING_CA outcome=ca_refused" % (profile,)) == 2
    assert "not-scepservers-challenge" not in log and challenge_from_url(url) not in log
