"""Adversarial: SIGKILL the daemon mid-work, restart it on the same state, and audit the state.

Three crashes: in the middle of PKIOperation load through a real micromdm
scepserver, right after the built-in CA issued certificates to concurrent
enrollments (each device's retry must get its one certificate), and in the
middle of a processing run over 100,000 NULL host profiles. After each the daemon restarts on the same state directory and
the database must be sound: ``PRAGMA integrity_check`` ok, no host profile
lost or stuck, and the challenge books balance.
"""

import socket
import time

import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.internet import defer, reactor, task

from support.certs import self_signed, signed_blob
from support.api import apis
from support.hostile import HostileCA, assert_log_clean, db, integrity, kill9, request_once
from support.site import add_ca, challenge_from_url, fetch_urls, upload_profile
from support.daemon import Daemon
from support.upstream import CHALLENGE as STATIC
from scepproxyd.store.models import challenge_hash
from scepproxyd.scep import codec
from scepproxyd.scep.codec import attributes as codec_attributes
from scepproxyd.scep.codec import signed as codec_signed



def audit_host_profiles(daemon, expected: int) -> dict:
    """Every host profile is NULL, or pending with a deliverable current command; counts by status."""
    with db(daemon) as conn:
        total = conn.execute("SELECT count(*) FROM host_profiles").fetchone()[0]
        stuck = conn.execute(
            "SELECT host_uuid, profile_uuid, status, command_uuid FROM host_profiles hp WHERE NOT ("
            " (hp.status IS NULL AND hp.command_uuid IS NULL)"
            " OR (hp.status IN ('pending', 'verifying') AND EXISTS (SELECT 1 FROM commands c"
            "   WHERE c.command_uuid = hp.command_uuid AND c.host_uuid = hp.host_uuid"
            "   AND c.profile_uuid = hp.profile_uuid AND c.status IN ('queued', 'delivered'))))"
            " LIMIT 10"
        ).fetchall()
        # A command is only ever made together with its host profile's claim: none may dangle.
        outstanding = conn.execute(
            "SELECT count(*) FROM commands WHERE status IN ('queued', 'delivered')").fetchone()[0]
        current = conn.execute(
            "SELECT count(*) FROM host_profiles hp JOIN commands c ON c.command_uuid = hp.command_uuid"
            " WHERE c.status IN ('queued', 'delivered')").fetchone()[0]
        orphans = outstanding - current
        counts = dict(conn.execute("SELECT coalesce(status, 'NULL'), count(*) FROM host_profiles GROUP BY status"))
    assert total == expected, "host profiles were lost"
    assert not stuck, stuck
    assert orphans == 0
    return counts


# -- in the middle of PKIOperation load ---------------------------------------------------


HOSTS = 240
IN_FLIGHT = 24


@pytest_twisted.ensureDeferred
async def test_sigkill_during_pkioperation_load(tmp_path, upstream):
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d", profiles={"process_interval": "1h"}).start()
    try:
        admin, agent = apis(daemon)
        add_ca(admin, "CRASH_CA", upstream.url, STATIC)
        profile = upload_profile(admin, "CRASH_CA")
        hosts = ["load-%04d" % i for i in range(HOSTS)]
        admin.call("POST", "/api/v1/hosts/import", [{"uuid": h, "serial": None, "platform": "macos"} for h in hosts])
        admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"platform": "macos"})
        admin.call("POST", "/api/v1/jobs/process_profiles")
        urls = [fetch_urls(agent, h)[profile] for h in hosts]  # one render each: one live challenge each
        minted = {challenge_from_url(u) for u in urls}
        assert len(minted) == HOSTS
        with db(daemon) as conn:
            assert conn.execute("SELECT count(*) FROM challenges").fetchone()[0] == HOSTS
        warm = await treq.get(urls[0] + "?operation=GetCACaps")
        assert warm.code == 200
        await warm.content()
        seen_before = upstream.operations("PKIOperation")

        # Load: IN_FLIGHT PKIOperations at a time, each with its own challenge; SIGKILL a third of the way in.
        blob = signed_blob()
        answers = []
        queue = list(urls)

        async def device():
            while queue:
                url = queue.pop()
                try:
                    response = await treq.post(url + "?operation=PKIOperation", data=blob, timeout=30)
                    answers.append((response.code, await response.text()))
                except Exception:
                    return  # the daemon is gone

        devices = [defer.ensureDeferred(device()) for _ in range(IN_FLIGHT)]
        while len(answers) < HOSTS // 3:
            await task.deferLater(reactor, 0.005)
        kill9(daemon)
        await defer.gatherResults(devices)
        assert queue, "the load finished before the kill"
    finally:
        if daemon.process is not None:
            daemon.stop()

    daemon.start()
    try:
        assert integrity(daemon) == "ok"
        seen = upstream.operations("PKIOperation") - seen_before
        with db(daemon) as conn:
            left = {c for (c,) in conn.execute("SELECT challenge_hash FROM challenges")}
        assert left <= {challenge_hash(c) for c in minted}
        consumed = len(minted) - len(left)
        # Every answer the devices got with an upstream verdict was one upstream request ...
        assert all(code in (200, 502) for code, _ in answers), answers
        assert len(answers) <= seen
        # ... every challenge still spent produced an upstream answer (it is settled only then) ...
        assert consumed <= seen, (consumed, seen)
        # ... and the only challenges that reached the CA and came back are those in flight at the
        # kill: their answers never reached the daemon, so at restart they were put back, like a
        # request whose upstream never answered.
        assert seen - consumed <= IN_FLIGHT, (seen, consumed)
        assert "one-time challenges that a previous run took but never forwarded" in daemon.log() or seen == consumed
        audit_host_profiles(daemon, HOSTS)

        # The challenges left still work after the restart: each reaches the CA exactly once.
        responses = await defer.gatherResults([
            treq.post(daemon.url + "/mdm/scep/proxy/" + u.rsplit("/", 1)[1] + "?operation=PKIOperation", data=blob)
            for u in urls if challenge_hash(challenge_from_url(u)) in left
        ])
        for r in responses:
            assert r.code in (200, 502), await r.text()
            await r.content()
        assert upstream.operations("PKIOperation") - seen_before == seen + len(left)  # each exactly once more
        with db(daemon) as conn:
            assert conn.execute("SELECT count(*) FROM challenges").fetchone()[0] == 0
    finally:
        daemon.stop()
    assert_log_clean(daemon, [STATIC] + sorted(minted))


def test_sigkill_between_spending_and_forwarding_puts_the_challenge_back(tmp_path):
    ca = HostileCA().start()
    daemon = Daemon(tmp_path, profiles={"process_interval": "1h"},
                    upstream={"connect_timeout": "60s", "response_timeout": "60s"}).start()
    try:
        admin, agent = apis(daemon)
        add_ca(admin, "STALL_CA", ca.url("ok"), STATIC)
        profile = upload_profile(admin, "STALL_CA")
        admin.call("PUT", "/api/v1/hosts/stall-host", {"serial": None, "platform": "macos"})
        admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"hosts": ["stall-host"]})
        admin.call("POST", "/api/v1/jobs/process_profiles")
        url = fetch_urls(agent, "stall-host")[profile]
        challenge = challenge_from_url(url)
        path = url.removeprefix(daemon.url).encode()
        assert request_once(daemon.port, "GET", path + b"?operation=GetCACaps")[0] == 200  # caps cached

        # The CA stops accepting: the daemon spends the challenge, then waits in connect().
        ca.stall()
        device = socket.create_connection(("127.0.0.1", daemon.port))
        body = signed_blob()
        device.sendall(b"POST %s?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                       % (path, len(body), body))
        with db(daemon) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT count(*) FROM challenges WHERE challenge_hash = ?", (challenge_hash(challenge),)).fetchone()[0]:
                assert time.monotonic() < deadline, "the challenge was never spent"
                time.sleep(0.01)
        kill9(daemon)
        device.close()
        ca.unstall()
        assert ca.pki_requests("ok") == 0  # the CA never saw it

        daemon.start()
        code, answer = request_once(daemon.port, "POST", path + b"?operation=PKIOperation", body=body)
        assert ca.pki_requests("ok") == 1, "the device's retry got %d %r" % (code, answer)
        assert code == 200
    finally:
        if daemon.process is not None:
            daemon.stop()
        ca.stop()


# -- the built-in CA killed right after issuing ------------------------------------------

DEVICES = 36


def builtin_ca_enrollment(ca_certificate, challenge: str, name: str):
    """A device's PKCSReq to the built-in CA: (message, its senderNonce, signer certificate, key)."""
    certificate, key = self_signed(name)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode()).sign(key, hashes.SHA256()))
    message, header = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=certificate,
                                          recipient_certificate=ca_certificate, csr=csr)
    return message, header.sender_nonce, certificate, key


@pytest_twisted.ensureDeferred
async def test_sigkill_right_after_builtin_ca_issuance_retries_get_their_certificates(tmp_path):
    """
    Concurrent enrollments at /scep, SIGKILL once some certificates are recorded, restart: every device
    sends its same message again and gets its one certificate; no device gets two.

    The devices never read their first answers, as if every one was lost with the connection.
    """
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d", ca={"key_size": "2048", "static_challenge": "yes",
                                        "auto_approve_networks": "127.0.0.0/8"}).start()
    state = daemon.directory / "state" / "ca"
    ca_certificate = x509.load_pem_x509_certificate((state / "ca.pem").read_bytes())
    static = (state / "challenge").read_text().strip()
    devices = [builtin_ca_enrollment(ca_certificate, static, "crash-device-%02d" % i) for i in range(DEVICES)]
    url = daemon.url + "/scep?operation=PKIOperation"
    try:
        queue = [message for message, *_ in devices]

        async def device():
            while queue:
                message = queue.pop()
                try:
                    response = await treq.post(url, data=message, timeout=30)
                    await response.content()  # ... and lost
                except Exception:
                    return  # the daemon is gone

        running = [defer.ensureDeferred(device()) for _ in range(IN_FLIGHT)]
        with db(daemon) as conn:
            while conn.execute("SELECT count(*) FROM issued_certificates").fetchone()[0] < DEVICES // 3:
                await task.deferLater(reactor, 0.002)
        kill9(daemon)
        await defer.gatherResults(running)
    finally:
        if daemon.process is not None:
            daemon.stop()

    with db(daemon) as conn:
        before = dict(conn.execute("SELECT sender_nonce, serial FROM issued_certificates"))
    assert DEVICES // 3 <= len(before) < DEVICES, "the kill did not land mid-way"
    daemon.start()
    try:
        assert integrity(daemon) == "ok"
        for message, nonce, certificate, key in devices:
            status, answer = request_once(daemon.port, "POST", b"/scep?operation=PKIOperation", body=message)
            assert status == 200, answer
            pki_status, _, certificates = codec.read_response(answer, key, certificate, ca_certificate)
            assert pki_status == "SUCCESS", nonce.hex()
            # RFC 8894 clients check that recipientNonce is their senderNonce.
            recipient_nonce = codec_signed.open_signed_data(answer).attributes.octets(
                codec_attributes.RECIPIENT_NONCE_OID, "recipientNonce")
            assert recipient_nonce == nonce
            serial = "%x" % certificates[0].serial_number
            if nonce.hex() in before:  # recorded before the kill: the same certificate, not a second one
                assert serial == before[nonce.hex()]
            # Once more: the same answer again.
            assert request_once(daemon.port, "POST", b"/scep?operation=PKIOperation", body=message) == (200, answer)
        with db(daemon) as conn:
            issued = conn.execute("SELECT sender_nonce, count(*) FROM issued_certificates GROUP BY sender_nonce")
            per_message = dict(issued.fetchall())
        assert per_message == {nonce.hex(): 1 for _, nonce, _, _ in devices}
        log = daemon.log()
        assert log.count("outcome=answered_again") >= len(before)
    finally:
        daemon.stop()
    assert_log_clean(daemon, [static])


# -- in the middle of a processing run over 100,000 host profiles -----------------------

ROWS = 100_000


def test_sigkill_during_processing_run(tmp_path):
    ca = HostileCA().start()
    daemon = Daemon(tmp_path, profiles={"process_interval": "1h", "batch_size": "1000"}).start()
    try:
        admin, agent = apis(daemon)
        add_ca(admin, "BULK_CA", ca.url("ok"), STATIC)
        profile = upload_profile(admin, "BULK_CA")
        hosts = [{"uuid": "bulk-%06d" % i, "serial": None, "platform": "macos"} for i in range(ROWS)]
        assert admin.call("POST", "/api/v1/hosts/import", hosts)["created"] == ROWS
        assert admin.call("POST", "/api/v1/profiles/%s/assign" % (profile,), {"platform": "macos"}) == {"assigned": ROWS}

        # Start the run and do not wait for its answer; kill once a fifth of it is committed.
        trigger = socket.create_connection(("127.0.0.1", daemon.admin_port))
        trigger.sendall(b"POST /api/v1/jobs/process_profiles HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                        b"Authorization: Bearer %s\r\n\r\n" % daemon.admin_token.encode())
        with db(daemon) as conn:
            deadline = time.monotonic() + 120
            pending = 0
            while time.monotonic() < deadline:
                pending = conn.execute("SELECT count(*) FROM host_profiles WHERE status = 'pending'").fetchone()[0]
                if pending >= ROWS // 5:
                    break
                time.sleep(0.005)
        kill9(daemon)
        trigger.close()
        assert 0 < pending < ROWS, "the kill did not land in the middle of the run"
    except BaseException:
        if daemon.process is not None:
            daemon.stop()
        ca.stop()
        raise

    # The state the crash left, as the restarting daemon will find it.
    assert integrity(daemon) == "ok"
    counts = audit_host_profiles(daemon, ROWS)
    assert 0 < counts.get("pending", 0) < ROWS, counts  # the kill left a run half done
    assert counts.get("pending", 0) + counts.get("NULL", 0) == ROWS

    # Restart on the same state: the job's first tick runs at start, and a trigger waits for a
    # running job and then runs once more, so after its answer nothing is left NULL.
    daemon.start()
    try:
        assert integrity(daemon) == "ok"
        admin.call("POST", "/api/v1/jobs/process_profiles")
        counts = audit_host_profiles(daemon, ROWS)
        assert counts == {"pending": ROWS}
        with db(daemon) as conn:
            outstanding = conn.execute(
                "SELECT count(*), count(DISTINCT host_uuid || ',' || profile_uuid) FROM commands"
                " WHERE status IN ('queued', 'delivered')").fetchone()
        assert outstanding == (ROWS, ROWS)
        # An agent gets exactly its one command, rendered.
        for host in ("bulk-000000", "bulk-%06d" % (ROWS // 2), "bulk-%06d" % (ROWS - 1)):
            assert list(fetch_urls(agent, host)) == [profile]
    finally:
        daemon.stop()
        ca.stop()
    assert_log_clean(daemon, [STATIC, daemon.admin_token])
