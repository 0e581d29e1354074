"""Two daemons on one PostgreSQL database: nothing is done twice, nothing is lost.

The nodes run under twistd as the README runs them, on a real PostgreSQL
(support.postgres, started by the test set-up), sharing the state files as
docs/operations.md says; the upstream CA is a real micromdm scepserver and
the devices real scepclient runs or requests built by the codec.
"""

import os
import signal
import time

import psycopg
import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer, threads

from scepproxyd.scep import codec
from support.api import Api
from support.certs import self_signed
from support.clients import scepclient
from support.daemon import FAST, Daemon
from support.nodes import database_section, share_state, start_nodes
from support.site import scep_url_from
from support.store import postgres_password
from support.upstream import CHALLENGE as STATIC

HOSTS = 10_000


def connect(database):
    """psycopg on the nodes' database, to count rows behind their back."""
    return psycopg.connect(database.url, password=postgres_password(database), autocommit=True)


def counts(database) -> dict:
    with connect(database) as db:
        status = dict(db.execute(
            "SELECT COALESCE(status, 'NULL'), COUNT(*) FROM host_profiles GROUP BY status").fetchall())
        commands, distinct, current = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (c.host_uuid, c.profile_uuid)),"
            " COUNT(*) FILTER (WHERE hp.command_uuid = c.command_uuid) FROM commands c"
            " JOIN host_profiles hp USING (host_uuid, profile_uuid)").fetchone()
    return {"status": status, "commands": commands, "host_profiles_with_commands": distinct, "current": current}


async def many_hosts(admin: Api, upstream_url: str, count: int) -> str:
    """``count`` macOS hosts with the Fleet Wi-Fi profile on CORP_CA assigned (NULL host profiles); the profile."""
    from support.site import mobileconfig

    await admin.acall("POST", "/api/v1/cas", {"name": "CORP_CA", "url": upstream_url, "challenge": STATIC})
    rows = "uuid,serial,platform\n" + "".join("host-%05d,SER%05d,macos\n" % (i, i) for i in range(count))
    await admin.acall("POST", "/api/v1/hosts/import", raw=rows.encode(), content_type="text/csv")
    profile = await admin.acall("POST", "/api/v1/profiles?platform=macos", raw=mobileconfig("CORP_CA"),
                                content_type="application/x-apple-aspen-config")
    assigned = await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile["uuid"], {"platform": "macos"})
    assert assigned == {"assigned": count}
    return profile["uuid"]


def process(node) -> dict:
    return Api(node.admin_url, node.admin_token).call("POST", "/api/v1/jobs/process_profiles")["result"]


@pytest_twisted.ensureDeferred
async def test_processing_on_both_nodes_at_once_delivers_each_host_profile_once(tmp_path, postgres_url, upstream):
    one, two = start_nodes(tmp_path, postgres_url)
    try:
        await many_hosts(Api(one.admin_url, one.admin_token), upstream.url, HOSTS)
        results = await defer.gatherResults([threads.deferToThread(process, node) for node in (one, two)])
        assert sum(result["claimed"] for result in results) == HOSTS
        assert all(result["claimed"] > 0 for result in results), results  # both took part
        assert counts(postgres_url) == {"status": {"pending": HOSTS}, "commands": HOSTS,
                                        "host_profiles_with_commands": HOSTS, "current": HOSTS}
    finally:
        for node in (one, two):
            node.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_killed_mid_processing_leaves_the_other_to_finish(tmp_path, postgres_url, upstream):
    one, two = start_nodes(tmp_path, postgres_url)
    try:
        await many_hosts(Api(one.admin_url, one.admin_token), upstream.url, HOSTS)
        started = threads.deferToThread(process, one)
        deadline = time.monotonic() + 60
        while counts(postgres_url)["commands"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first batch is in
        os.kill(one.process.pid, signal.SIGKILL)
        try:
            await started
        except Exception:
            pass  # its admin call dies with it
        one.process.wait()
        one.process = None
        halfway = counts(postgres_url)
        assert 0 < halfway["commands"] < HOSTS, halfway  # killed in the middle
        process(two)
        assert counts(postgres_url) == {"status": {"pending": HOSTS}, "commands": HOSTS,
                                        "host_profiles_with_commands": HOSTS, "current": HOSTS}
    finally:
        for node in (one, two):
            node.stop()


def device_request(ca_certificate: x509.Certificate) -> bytes:
    """One PKCSReq a device would send for CORP_CA: its CSR carries the CA's static challenge."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "race")]))
           .add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, STATIC.encode())
           .sign(key, hashes.SHA256()))
    signer, _ = self_signed("race", key=key)
    message, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=signer,
                                     recipient_certificate=ca_certificate, csr=csr)
    return message


@pytest_twisted.ensureDeferred
async def test_one_challenge_sent_64_times_across_both_nodes_reaches_the_ca_once(tmp_path, postgres_url, upstream):
    one, two = start_nodes(tmp_path, postgres_url)
    try:
        admin = Api(one.admin_url, one.admin_token)
        await many_hosts(admin, upstream.url, 1)
        await threads.deferToThread(process, one)
        from support.api import aissue_agent_credential

        agent = Api(one.url, await aissue_agent_credential(admin, "host-00000"))
        (command,) = (await agent.acall("GET", "/api/v1/agent/hosts/host-00000/commands"))["commands"]
        url = scep_url_from(command["payload"])
        ca = (await (await treq.get(url + "?operation=GetCACert")).content())
        message = await threads.deferToThread(device_request, x509.load_der_x509_certificate(ca))
        before = upstream.operations("PKIOperation")
        urls = [url, url.replace(one.url, two.url)]
        answers = await defer.gatherResults([
            treq.post(urls[i % 2] + "?operation=PKIOperation", data=message,
                      headers={b"Content-Type": [b"application/x-pki-message"]})
            for i in range(64)
        ])
        codes = sorted(answer.code for answer in answers)
        for answer in answers:
            await answer.content()
        assert codes.count(200) == 1 and codes.count(400) == 63, codes
        assert upstream.operations("PKIOperation") == before + 1
    finally:
        for node in (one, two):
            node.stop()


@pytest_twisted.ensureDeferred
async def test_the_builtin_ca_on_both_nodes_never_repeats_a_serial(tmp_path, postgres_url):
    one, two = start_nodes(tmp_path, postgres_url, ca=FAST)
    try:
        static = (tmp_path / "node-1" / "state" / "ca" / "challenge").read_text().strip()
        runs = [threads.deferToThread(scepclient, tmp_path / ("device-%d" % i), node.url + "/scep", static,
                                      "device-%d" % i)
                for i, node in enumerate([one, two] * 8)]
        results = await defer.gatherResults(runs)
        assert all(result.returncode == 0 for result in results), [r.stderr for r in results if r.returncode]
        serials = {x509.load_pem_x509_certificate((tmp_path / ("device-%d" % i) / "client.pem").read_bytes())
                   .serial_number for i in range(16)}
        assert len(serials) == 16
        listed = (await Api(two.admin_url, two.admin_token).acall("GET", "/api/v1/ca/certificates"))["certificates"]
        assert {int(c["serial"], 16) for c in listed} == serials
    finally:
        for node in (one, two):
            node.stop()


def test_a_node_without_the_shared_state_files_refuses_to_start(tmp_path, postgres_url):
    (one,) = start_nodes(tmp_path, postgres_url, count=1)
    try:
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        with pytest.raises(RuntimeError) as refused:
            Daemon(stranger, database=database_section(postgres_url)).start()
        message = str(refused.value)
        for setting in ("[state] key_file", "[admin] token_file", "[delivery] webhook_token_file",
                        "[ca] key_file and certificate_file"):
            assert setting in message
        assert "copy them from a running node" in message
        assert postgres_password(postgres_url) not in message
        # The node that holds the files is unaffected, and a node given copies starts.
        share_state(tmp_path / "node-1" / "state", stranger / "state")
        Daemon(stranger, database=database_section(postgres_url)).start().stop()
        listed = Api(one.admin_url, one.admin_token).call("GET", "/api/v1/cas")["cas"]
        assert [ca["name"] for ca in listed] == ["builtin"]
    finally:
        one.stop()
