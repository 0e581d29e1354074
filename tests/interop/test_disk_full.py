"""A sick disk: /readyz says so, every write is answered 503, and both recover when space returns.

The state directory is a small tmpfs that the test fills up, so SQLite meets
a real ENOSPC (SQLITE_FULL); the daemon is the real one (tests/support/daemon.py).
Also here: the database and its -wal/-shm files are 0600 whatever the umask.
"""

import json
import os
import stat
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from support.api import http_call as call
from support.clients import enroll
from support.daemon import Daemon
from support.site import FIXTURES, scep_settings_from_mobileconfig, set_up
from support.upstream import CHALLENGE as STATIC, ScepServer
from scepproxyd.store import Store, StoreUnavailable


def wait_for(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def test_full_disk_is_not_ready_answers_503_and_recovers(tmp_path, small_tmpfs, fill_up):
    state = small_tmpfs(tmp_path / "state", "16m")
    daemon = Daemon(tmp_path, database={"write_probe_interval": "0.5s"}, ca={"enabled": "no"}).start()
    try:
        admin, token = daemon.admin_port, daemon.admin_token
        assert call(admin, "PUT", "/api/v1/hosts/HOST-1", token, {"serial": "S1", "platform": "macos"})[0] == 201
        status, text = call(admin, "POST", "/api/v1/hosts/HOST-1/agent-credential", token)
        assert status == 201
        agent_token = json.loads(text)["token"]
        assert call(admin, "GET", "/readyz") == (200, "ready\n")

        filler = fill_up(state)
        # The write probe notices without any traffic.
        wait_for(lambda: call(admin, "GET", "/readyz")[0] == 503, "/readyz to turn 503")
        assert call(admin, "GET", "/readyz") == (503, "not ready: database writes fail: disk full (SQLITE_FULL)\n")
        assert call(daemon.port, "GET", "/readyz")[0] == 503
        # Restarting would not free space: /healthz stays 200.
        assert call(admin, "GET", "/healthz") == (200, "ok\n")

        status, text = call(admin, "PUT", "/api/v1/hosts/HOST-2", token, {"serial": "S2", "platform": "ios"})
        assert (status, json.loads(text)) == (503, {
            "error": "the database cannot be written right now: disk full (SQLITE_FULL); nothing was changed, "
                     "try again later"
        })
        # The agent API: a credential's first use is recorded, a write.
        status, text = call(daemon.port, "GET", "/api/v1/agent/hosts/HOST-1/commands", agent_token)
        assert status == 503 and "disk full" in json.loads(text)["error"]
        # Reads still work.
        assert call(admin, "GET", "/api/v1/hosts/HOST-1", token)[0] == 200

        filler.unlink()
        wait_for(lambda: call(admin, "GET", "/readyz")[0] == 200, "/readyz to turn 200 again")
        assert call(admin, "PUT", "/api/v1/hosts/HOST-2", token, {"serial": "S2", "platform": "ios"})[0] == 201
        assert call(daemon.port, "GET", "/api/v1/agent/hosts/HOST-1/commands", agent_token)[0] == 200
    finally:
        daemon.stop()
    log = daemon.log()
    assert "database writes fail: disk full (SQLITE_FULL)" in log
    assert "database writes work again after" in log
    assert "Traceback" not in log


def test_first_start_on_a_full_disk_leaves_no_half_file_and_the_next_start_works(tmp_path, small_tmpfs, fill_up):
    """(The key files' own failing write is tested in test_keys.py: on a full disk the database stops us first.)"""
    state = small_tmpfs(tmp_path / "state", "4m")
    daemon = Daemon(tmp_path, ca={"enabled": "no"})
    filler = fill_up(state)
    with pytest.raises(RuntimeError, match="daemon did not start") as caught:
        daemon.start()
    assert "Traceback" not in str(caught.value)
    assert "scepproxyd: cannot prepare state in %s: cannot open database %s: " % (state, daemon.database) \
        in str(caught.value)
    assert "(is the disk full, or the directory not writable?)" in str(caught.value)
    # No key or token file, whole or empty, and no temporary: only the (empty) database file SQLite may use.
    assert set(p.name for p in state.iterdir()) <= {"filler", "scepproxyd.sqlite3"}
    filler.unlink()
    daemon.start()
    try:
        assert call(daemon.admin_port, "GET", "/readyz") == (200, "ready\n")
        assert len((state / "secrets.key").read_bytes()) == 45
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_store_notes_write_failures_and_the_probe_notices_recovery(tmp_path, small_tmpfs, fill_up):
    directory = small_tmpfs(tmp_path / "db", "4m")
    path = directory / "scepproxyd.sqlite3"
    Store.migrate(path)
    store = Store(path, reactor)
    await store.start()
    try:
        await store.probe_writes()
        assert store.write_problem is None
        filler = fill_up(directory)
        with pytest.raises(StoreUnavailable) as caught:
            await store.probe_writes()
        assert caught.value.reason == "disk full (SQLITE_FULL)"
        assert store.write_problem == "disk full (SQLITE_FULL)"
        with pytest.raises(StoreUnavailable, match="disk full"):
            await store.upsert_host("HOST-1", "S", "macos")
        assert store.write_problem == "disk full (SQLITE_FULL)"
        filler.unlink()
        await store.probe_writes()
        assert store.write_problem is None
        await store.upsert_host("HOST-1", "S", "macos")
        assert [h.uuid for h in await store.list_hosts()] == ["HOST-1"]
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_database_files_are_private_whatever_the_umask(tmp_path):
    path = tmp_path / "scepproxyd.sqlite3"
    old = os.umask(0o022)
    try:
        Store.migrate(path)
        store = Store(path, reactor)
        await store.start()
        try:
            await store.upsert_host("HOST-1", "S", "macos")
            for suffix in ("", "-wal", "-shm"):
                companion = tmp_path / ("scepproxyd.sqlite3" + suffix)
                assert companion.exists(), companion
                assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion
        finally:
            await store.stop()
        # A database an older version left readable by others is made private at open.
        os.chmod(path, 0o644)
        Store.migrate(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest_twisted.ensureDeferred
async def test_proxy_answers_503_on_a_full_disk_and_the_device_retry_enrolls(tmp_path, small_tmpfs, fill_up):
    """scepclient through the proxy: a full disk answers 503 and spends nothing; once space returns it enrolls."""
    state = small_tmpfs(tmp_path / "state", "16m")
    upstream = ScepServer(tmp_path / "upstream", STATIC).start()
    daemon = Daemon(tmp_path, database={"write_probe_interval": "0.5s"}, profiles={"process_interval": "1h"}).start()
    try:
        host = "MAC-0001"
        template = (FIXTURES / "fleet-custom-scep-apple.mobileconfig").read_bytes().replace(b"CA_NAME", b"CORP_CA")
        admin, agent, profile = await set_up(daemon, upstream, template, "application/x-apple-aspen-config", host,
                                             "macos")
        await admin.acall("POST", "/api/v1/jobs/process_profiles")
        commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
        url, challenge, cn = scep_settings_from_mobileconfig(commands[0]["payload"])
        cn = cn.replace("%SerialNumber%", "SER" + host)

        filler = fill_up(state)
        await threads.deferToThread(wait_for, lambda: call(daemon.admin_port, "GET", "/readyz")[0] == 503, "503")
        with pytest.raises(AssertionError):
            await threads.deferToThread(enroll, tmp_path / "mac", url, challenge, cn)
        assert "outcome=store_unavailable status=503" in daemon.log()
        assert upstream.operations("PKIOperation") == 0

        filler.unlink()
        await threads.deferToThread(wait_for, lambda: call(daemon.admin_port, "GET", "/readyz")[0] == 200, "200")
        pem = await threads.deferToThread(enroll, tmp_path / "mac", url, challenge, cn)
        assert "BEGIN CERTIFICATE" in pem
        assert upstream.operations("PKIOperation") == 1  # the one that worked: the refused one never left
    finally:
        daemon.stop()
        upstream.stop()
    assert "Traceback" not in daemon.log()
