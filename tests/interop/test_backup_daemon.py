"""Backups of the real daemon under load, and restored into a second daemon.

``twistd scepproxyd`` runs with writers hammering the admin, agent and proxy
listeners, ``scepproxyctl backup`` is taken in the middle of it, and the
backup is restored into a new state directory that a second daemon then
serves from. The in-process backup tests are in tests/test_backup.py.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from scepproxyd.backup import MANIFEST

from support.api import Api
from support.ctl import Ctl, run_ctl
from support.daemon import Daemon
from support.site import FIXTURES
from support.state import FAST_CA, fingerprint_files, rows
from support.store import postgres_password

FIXTURE = FIXTURES / "fleet-custom-scep-apple.mobileconfig"


# -- the real daemon, under load ----------------------------------------------------------


def all_host_uuids(admin) -> list:
    """Every host's uuid, following the host list's pages."""
    uuids, cursor = [], None
    while True:
        status, page = admin.request("GET", "/api/v1/hosts" + ("?cursor=" + cursor if cursor else ""))
        assert status == 200, page
        uuids += [h["uuid"] for h in page["hosts"]]
        cursor = page["next"]
        if cursor is None:
            return uuids


def make_daemon(directory: Path) -> Daemon:
    directory.mkdir(parents=True)
    return Daemon(directory, ca=dict(FAST_CA, ra="yes"))


def ctl(config, *argv, expect=0):
    return Ctl(config, timeout=120)(*argv, expect=expect)


class Load:
    """Writers on every listener, each recording when its requests were sent and acknowledged."""

    def __init__(self, daemon: Daemon, agent_credentials: dict[str, str]):
        self.admin = Api(daemon.admin_url, daemon.admin_token, timeout=30)
        self.agents = {host: Api(daemon.url, token, timeout=30) for host, token in agent_credentials.items()}
        self.proxy_url = daemon.url
        self.stop = threading.Event()
        self.puts: list[tuple[str, float, float]] = []  # (uuid, sent, acknowledged)
        self.imports: list[tuple[list[str], float, float]] = []
        self.counts = {"agent": 0, "challenges": 0, "proxy": 0}
        self.errors: list = []
        self.threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True)
                        for fn in (self._put, self._import, self._agent, self._challenges, self._proxy)]

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:  # reported by finish()
            self.errors.append(repr(e))

    def _put(self):
        n = 0
        while not self.stop.is_set():
            uuid = "PUT-%06d" % (n,)
            sent = time.monotonic()
            status, answer = self.admin.request("PUT", "/api/v1/hosts/" + uuid,
                                                {"serial": "S%d" % (n,), "platform": "macos"})
            assert status == 201, (status, answer)
            self.puts.append((uuid, sent, time.monotonic()))
            n += 1

    def _import(self):
        n = 0
        while not self.stop.is_set():
            batch = ["IMP-%04d-%02d" % (n, i) for i in range(40)]
            sent = time.monotonic()
            status, answer = self.admin.request("POST", "/api/v1/hosts/import",
                                                [{"uuid": u, "serial": None, "platform": "ios"} for u in batch])
            assert status in (200, 201), (status, answer)
            self.imports.append((batch, sent, time.monotonic()))
            n += 1

    def _agent(self):
        while not self.stop.is_set():
            for host, agent in self.agents.items():
                status, answer = agent.request("GET", "/api/v1/agent/hosts/%s/commands" % (host,))
                assert status == 200, (status, answer)
                self.counts["agent"] += 1

    def _challenges(self):
        while not self.stop.is_set():
            status, answer = self.admin.request("POST", "/api/v1/ca/challenges", {"ttl": "10m"})
            assert status == 201, (status, answer)
            self.counts["challenges"] += 1

    def _proxy(self):
        while not self.stop.is_set():
            for url in (self.proxy_url + "/scep?operation=GetCACert",
                        self.proxy_url + "/mdm/scep/proxy/x,y,z,w?operation=GetCACaps"):
                try:
                    with urllib.request.urlopen(url, timeout=30) as response:
                        response.read()
                except urllib.error.HTTPError as e:
                    assert e.code == 400, e.code
                self.counts["proxy"] += 1

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not self.errors, self.errors


def test_backup_under_load_and_restore_into_new_daemon(tmp_path):
    first = make_daemon(tmp_path / "first").start()
    second = None
    try:
        admin = Api(first.admin_url, first.admin_token, timeout=30)
        # A few thousand hosts, so the snapshot takes a moment, and a profile on the built-in CA.
        for n in range(0, 4000, 1000):
            status, _ = admin.request("POST", "/api/v1/hosts/import",
                                      [{"uuid": "BASE-%05d" % (i,), "serial": None, "platform": "macos"}
                                       for i in range(n, n + 1000)])
            assert status in (200, 201)
        profile = FIXTURE.read_text().replace("CA_NAME", "builtin")
        status, uploaded = admin.request("POST", "/api/v1/profiles?name=Wi-Fi", raw=profile.encode(),
                                         content_type="application/x-apple-aspen-config")
        assert status == 201, uploaded
        agent_hosts = ["BASE-%05d" % (i,) for i in range(5)]
        status, _ = admin.request("POST", "/api/v1/profiles/%s/assign" % (uploaded["uuid"],),
                                  {"hosts": agent_hosts})
        assert status == 200
        status, _ = admin.request("POST", "/api/v1/jobs/process_profiles")
        assert status == 200

        status, issued = admin.request("POST", "/api/v1/agent-credentials", {"hosts": agent_hosts})
        assert status == 200 and len(issued["issued"]) == 5, issued
        agent_credentials = {item["host_uuid"]: item["token"] for item in issued["issued"]}
        load = Load(first, agent_credentials).start()
        time.sleep(1.0)
        backup = tmp_path / "backups" / "nightly"
        started = time.monotonic()
        result = ctl(first.config, "backup", str(backup))
        returned = time.monotonic()
        time.sleep(0.5)
        load.finish()
        assert result.stdout.strip() == "backed up 9 files to %s" % (backup,)
        assert all(load.counts.values()) and load.puts and load.imports, load.counts
        # Writes were in flight while the backup ran.
        assert any(sent < returned and acked > started for _, sent, acked in load.puts + load.imports)

        _, ca_before = admin.request("GET", "/api/v1/ca")
        admin_token = first.admin_token
        first.stop()
        live = first.database
        ca_row = rows(live, "SELECT name, url, challenge_ciphertext, created_at FROM cas WHERE name = 'builtin'")

        # Restore into a new state directory, offline, then serve from it.
        second = make_daemon(tmp_path / "second")
        restored = ctl(second.config, "restore", str(backup)).stdout
        assert restored.startswith("restored 9 files from %s into %s" % (backup, second.directory / "state"))
        assert rows(second.database, "PRAGMA integrity_check") == [("ok",)]
        assert rows(second.database, "SELECT name, url, challenge_ciphertext, created_at FROM cas "
                                     "WHERE name = 'builtin'") == ca_row
        hosts = {uuid for (uuid,) in rows(second.database, "SELECT uuid FROM hosts")}

        # Every write acknowledged before the backup started is in it; nothing sent after it returned is.
        acknowledged = {u for u, _, acked in load.puts if acked < started}
        acknowledged |= {u for batch, _, acked in load.imports if acked < started for u in batch}
        assert acknowledged and acknowledged <= hosts
        late = {u for u, sent, _ in load.puts if sent > returned}
        late |= {u for batch, sent, _ in load.imports if sent > returned for u in batch}
        assert late and not late & hosts
        # A snapshot, not a smear: each import (one transaction) is there whole or not at all.
        for batch, _, _ in load.imports:
            assert set(batch) <= hosts or not set(batch) & hosts, batch
        assert {"BASE-%05d" % (i,) for i in range(4000)} <= hosts

        for name in ("ca/ca.key", "ca/ca.pem", "ca/ra.key", "ca/ra.pem", "ca/challenge", "secrets.key",
                     "admin.token", "nanomdm-webhook.token"):
            assert (second.directory / "state" / name).read_bytes() == (first.directory / "state" / name).read_bytes()

        second.start()
        assert second.admin_token == admin_token
        admin2 = Api(second.admin_url, admin_token, timeout=30)
        status, ca_after = admin2.request("GET", "/api/v1/ca")
        assert status == 200
        assert ca_after["fingerprint"] == ca_before["fingerprint"]
        assert ca_after["certificate"] == ca_before["certificate"]
        assert ca_after["ra"]["fingerprint"] == ca_before["ra"]["fingerprint"]
        assert set(all_host_uuids(admin2)) == hosts
        # Agent credentials live (hashed) in the database: the restored daemon accepts them.
        status, _ = Api(second.url, agent_credentials[agent_hosts[0]], timeout=30).request(
            "GET", "/api/v1/agent/hosts/%s/commands" % (agent_hosts[0],))
        assert status == 200
        # The built-in CA's row holds no reusable secret: its profiles get one-time CA challenges.
        assert rows(second.database, "SELECT challenge_ciphertext, builtin FROM cas WHERE name = 'builtin'") == [
            (None, 1)
        ]

        # While a daemon runs on the state, restore refuses and changes nothing.
        before = fingerprint_files(second.directory / "state")
        refused = ctl(second.config, "restore", str(backup), expect=1)
        assert "scepproxyd is running" in refused.stderr
        assert fingerprint_files(second.directory / "state") == before
        assert set(all_host_uuids(admin2)) == hosts
        # The daemon logged the backup, by name only.
        log = first.log()
        assert "backed up 9 files" in log
        for name in ("secrets.key", "admin.token", "ca/challenge"):
            assert (first.directory / "state" / name).read_text().strip() not in log
        for token in agent_credentials.values():
            assert token not in log
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_ctl_backup_refusals_from_the_daemon(tmp_path):
    daemon = make_daemon(tmp_path / "d").start()
    try:
        full = tmp_path / "full"
        full.mkdir()
        (full / "x").write_text("x")
        refused = ctl(daemon.config, "backup", str(full), expect=1)
        assert refused.stderr.strip() == "scepproxyctl: %s is not empty; back up into a new or empty directory " \
                                         "(field: directory)" % (full,)
        # A relative DIR means the caller's directory, not the daemon's.
        result = run_ctl(daemon.config, "--json", "backup", "rel", cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["directory"] == str(tmp_path / "rel") and (tmp_path / "rel" / MANIFEST).is_file()
        status, answer = Api(daemon.admin_url, daemon.admin_token, timeout=30).request(
            "POST", "/api/v1/backup", {"directory": "rel"})
        assert (status, answer["field"]) == (422, "directory")
    finally:
        daemon.stop()


def test_ctl_backup_and_restore_of_a_daemon_on_postgresql(tmp_path, postgres_url):
    """On PostgreSQL the real daemon's backup holds the state files, says the database is not in it, and restore
    puts back the files only."""
    directory = tmp_path / "d"
    directory.mkdir()
    password_file = directory / "db-password"
    password_file.write_text((postgres_password(postgres_url) or "") + "\n")
    password_file.chmod(0o600)
    daemon = Daemon(directory, ca=dict(FAST_CA, ra="yes"),
                    database={"url": postgres_url.url, "password_file": str(password_file)}).start()
    try:
        result = ctl(daemon.config, "backup", str(tmp_path / "backup"))
    finally:
        daemon.stop()
    lines = result.stdout.splitlines()
    assert lines == [
        "backed up 8 files to %s: the state files only (the secrets key, the API tokens, the built-in CA's key "
        "material)" % (tmp_path / "backup",),
        "the database is not in this backup: it is on PostgreSQL (%s), shared by every node; back it up with "
        "pg_dump (docs/operations.md, Several nodes)" % (postgres_url.url,),
    ]
    manifest = json.loads((tmp_path / "backup" / MANIFEST).read_text())
    assert manifest["database_included"] is False and manifest["database"] is None
    assert "database" not in {entry["role"] for entry in manifest["files"]}

    state = directory / "state"
    key = (state / "ca" / "ca.key").read_bytes()
    (state / "ca" / "ca.key").unlink()
    restored = ctl(daemon.config, "restore", str(tmp_path / "backup"))
    assert "the database was not restored: it is on PostgreSQL (%s)" % (postgres_url.url,) in restored.stdout
    assert (state / "ca" / "ca.key").read_bytes() == key
    assert not list(state.glob("*.sqlite3*"))
