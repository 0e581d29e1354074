"""Backups: VACUUM INTO while serving, the backup directory, offline restore, and the real daemon under load.

The unit tests use a real Store on a temporary state directory made by the
daemon's own ``prepare_state``. The interop test runs ``twistd scepproxyd``
with writers hammering the admin, agent and proxy listeners, takes
``scepproxyctl backup`` in the middle of it, and restores into a new state
directory that a second daemon then serves from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from peers import Daemon, daemon_config
from scepproxyd.backup import (
    MANIFEST,
    BackupError,
    DaemonRunning,
    restore_backup,
    state_files,
    take_backup,
)
from scepproxyd.cli import main
from scepproxyd.config import load_settings
from scepproxyd.service import prepare_state
from scepproxyd.store import Store, StoreError
from scepproxyd.store.database import _schema_files
from scepproxyd.web.admin_backup import backup_routes
from scepproxyd.web.api import ApiError

CTL = str(Path(sys.executable).with_name("scepproxyctl"))
FIXTURE = Path(__file__).parent / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig"
DB_NAME = "scepproxyd.sqlite3"
# Every file a state with an RA and a NanoMDM key holds, by its name relative to the state directory.
STATE_NAMES = {
    "secrets.key", "admin.token", "nanomdm-webhook.token", "nanomdm.key",
    "ca/ca.key", "ca/ca.pem", "ca/challenge", "ca/ra.key", "ca/ra.pem",
}
FAST_CA = {"key_size": "2048"}


def make_settings(directory: Path, ra: bool = True, **sections):
    """A configuration whose state lives in ``directory/state``, with its state made as the daemon makes it."""
    directory.mkdir(parents=True, exist_ok=True)
    sections.setdefault("ca", {}).update(FAST_CA, ra="yes" if ra else "no")
    settings = load_settings(daemon_config(directory, 1, 2, **sections))
    prepare_state(settings)
    return settings


def new_settings(directory: Path, **sections):
    """A configuration for a state directory that does not exist yet (as before a restore)."""
    directory.mkdir(parents=True, exist_ok=True)
    sections.setdefault("ca", {}).update(FAST_CA)
    return load_settings(daemon_config(directory, 1, 2, **sections))


def fingerprint_files(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative name -> sha256 (the database by its rows, not its bytes)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(DB_NAME):
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def rows(database: Path, sql: str) -> list:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path):
    s = make_settings(tmp_path / "live")
    (s.state_directory / "nanomdm.key").write_text("nanomdm-api-key\n")
    os.chmod(s.state_directory / "nanomdm.key", 0o600)
    return s


@pytest_twisted.async_yield_fixture
async def store(settings):
    s = Store(settings.database.path, reactor)
    await s.start()
    await s.upsert_host("HOST-1", "C02AAA", "macos")
    await s.upsert_host("HOST-2", None, "android")
    yield s
    await s.stop()


async def backed_up(store, settings, directory):
    """A finished backup with the live store stopped, as restore expects."""
    result = await take_backup(store, settings, directory, reactor)
    await store.stop()
    return result


# -- what is backed up -------------------------------------------------------------


def test_state_files_are_the_existing_secrets(settings):
    state = settings.state_directory
    assert {p.relative_to(state).as_posix() for p in state_files(settings)} == STATE_NAMES
    (state / "nanomdm.key").unlink()
    assert {p.relative_to(state).as_posix() for p in state_files(settings)} == STATE_NAMES - {"nanomdm.key"}


def test_state_files_without_ra_or_ca(tmp_path):
    s = make_settings(tmp_path / "plain", ra=False, ca={"enabled": "no"})
    names = {p.relative_to(s.state_directory).as_posix() for p in state_files(s)}
    assert names == {"secrets.key", "admin.token", "nanomdm-webhook.token"}


# -- taking a backup -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_backup_writes_database_files_and_manifest(store, settings, tmp_path):
    directory = tmp_path / "backups" / "one"
    result = await take_backup(store, settings, directory, reactor)

    assert result["directory"] == str(directory)
    assert set(result["files"]) == STATE_NAMES | {DB_NAME}
    assert result["database_bytes"] == (directory / DB_NAME).stat().st_size > 0
    assert mode(directory) == 0o700
    written = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert written == STATE_NAMES | {DB_NAME, MANIFEST}
    for name in written:
        assert mode(directory / name) == 0o600, name
    for name in STATE_NAMES:
        assert (directory / name).read_bytes() == (settings.state_directory / name).read_bytes()

    manifest = json.loads((directory / MANIFEST).read_text())
    assert (manifest["format"], manifest["database"]) == (1, DB_NAME)
    assert manifest["schema_version"] == _schema_files()[-1][0]
    assert manifest["created_at"].endswith("+00:00")
    for entry in manifest["files"]:
        data = (directory / entry["name"]).read_bytes()
        assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert {e["role"] for e in manifest["files"]} >= {"database", "state.key_file", "ca.key_file", "ca.ra_key"}

    # The copy is a consistent, self-contained database: no -wal needed to read it.
    copy = directory / DB_NAME
    assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
    assert rows(copy, "PRAGMA journal_mode") == [("delete",)]
    assert rows(copy, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]

    # Names only: no secret leaves through the answer.
    answer = json.dumps(result)
    for name in STATE_NAMES:
        assert (settings.state_directory / name).read_text().strip() not in answer


@pytest_twisted.ensureDeferred
async def test_backup_into_existing_empty_directory(store, settings, tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir(mode=0o755)
    result = await take_backup(store, settings, directory, reactor)
    assert DB_NAME in result["files"] and mode(directory) == 0o700


@pytest_twisted.ensureDeferred
async def test_ping_and_backup_database(store, tmp_path):
    assert await store.ping() is None
    size = await store.backup_database(tmp_path / "copy.sqlite3")
    assert size == (tmp_path / "copy.sqlite3").stat().st_size
    with pytest.raises(StoreError):  # VACUUM INTO never overwrites a database
        await store.backup_database(tmp_path / "copy.sqlite3")


@pytest_twisted.ensureDeferred
async def test_backup_refuses_bad_directories(store, settings, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (Path("relative/dir"), "directory must be an absolute path"),
        (full, "is not empty"),
        (a_file, "exists and is not a directory"),
        (a_file / "below", "cannot create %s: Not a directory" % (a_file / "below",)),
    ]
    for directory, message in cases:
        with pytest.raises(BackupError, match=message) as caught:
            await take_backup(store, settings, directory, reactor)
        assert caught.value.field == "directory"
    assert [p.name for p in full.iterdir()] == ["old.txt"]
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
@pytest_twisted.ensureDeferred
async def test_backup_refuses_unwritable_location(store, settings, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(BackupError, match="permission denied") as caught:
        await take_backup(store, settings, locked / "backup", reactor)
    assert caught.value.field == "directory"
    empty = tmp_path / "read-only-empty"
    empty.mkdir(mode=0o500)
    with pytest.raises(BackupError, match="not writable"):
        await take_backup(store, settings, empty, reactor)


@pytest_twisted.ensureDeferred
async def test_failed_backup_leaves_nothing_behind(store, settings, tmp_path):
    await store.stop()  # the database part fails
    directory = tmp_path / "new"
    with pytest.raises(BackupError, match="store is not running"):
        await take_backup(store, settings, directory, reactor)
    assert not directory.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(BackupError):
        await take_backup(store, settings, existing, reactor)
    assert existing.is_dir() and not any(existing.iterdir())


# -- the admin route -------------------------------------------------------------------


class FakeRequest:
    def __init__(self, body):
        self.content = io.BytesIO(json.dumps(body).encode())


@pytest_twisted.ensureDeferred
async def test_route_answers_201_or_422(store, settings, tmp_path):
    [(method, pattern, handler)] = backup_routes(store, settings, reactor)
    assert (method, pattern) == ("POST", "/api/v1/backup")
    status, result = await handler(FakeRequest({"directory": str(tmp_path / "b")}))
    assert status == 201 and DB_NAME in result["files"] and result["directory"] == str(tmp_path / "b")

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for body, message in [
        ({}, "directory is required"),
        ({"directory": 7}, "directory must be a string"),
        ({"directory": "backups/today"}, "absolute path"),
        ({"directory": str(tmp_path / "full")}, "is not empty"),
        ({"directory": str(tmp_path / "full" / "x" / "y")}, "Not a directory"),
    ]:
        with pytest.raises(ApiError, match=message) as caught:
            await handler(FakeRequest(body))
        assert (caught.value.status, caught.value.field) == (422, "directory")


# -- restore ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restore_into_new_state_directory(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    # A stale -wal of an earlier database would be replayed into the restored one: it must go.
    target.state_directory.mkdir(parents=True)
    Path(str(target.database.path) + "-wal").write_bytes(b"stale wal" * 100)
    Path(str(target.database.path) + "-shm").write_bytes(b"stale shm")

    names = restore_backup(directory, target)

    assert set(names) == STATE_NAMES | {DB_NAME}
    assert not Path(str(target.database.path) + "-wal").exists()
    assert not Path(str(target.database.path) + "-shm").exists()
    for name in STATE_NAMES:
        assert (target.state_directory / name).read_bytes() == (settings.state_directory / name).read_bytes()
        assert mode(target.state_directory / name) == 0o600
    assert mode(target.database.path) == 0o600 and mode(target.state_directory / "ca") == 0o700
    assert not list(target.state_directory.rglob("*.restoring"))
    assert rows(target.database.path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(target.database.path, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]
    # The daemon starts on it as it is.
    prepare_state(target)
    restored = Store(target.database.path, reactor)
    await restored.start()
    try:
        assert [h.uuid for h in await restored.list_hosts()] == ["HOST-1", "HOST-2"]
    finally:
        await restored.stop()


@pytest_twisted.ensureDeferred
async def test_restore_over_the_old_state(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await take_backup(store, settings, directory, reactor)
    await store.upsert_host("AFTER-BACKUP", None, "ios")
    await store.stop()
    (settings.state_directory / "admin.token").unlink()
    restore_backup(directory, settings)
    assert rows(settings.database.path, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]
    assert (settings.state_directory / "admin.token").read_bytes() == (directory / "admin.token").read_bytes()


@pytest_twisted.ensureDeferred
async def test_restore_of_an_older_backup_skips_the_retired_agent_token(store, settings, tmp_path):
    """A backup from before per-host agent credentials holds agent.token: checked, never put back."""
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    old_token = b"old-shared-agent-token-0123456789\n"
    (directory / "agent.token").write_bytes(old_token)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"].append({"name": "agent.token", "role": "agent.token_file", "bytes": len(old_token),
                              "sha256": hashlib.sha256(old_token).hexdigest()})
    (directory / MANIFEST).write_text(json.dumps(manifest))
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    names = restore_backup(directory, target)
    assert set(names) == STATE_NAMES | {DB_NAME}
    assert not (target.state_directory / "agent.token").exists()
    # Still checked like every file: an altered one is refused.
    (directory / "agent.token").write_bytes(b"x" + old_token[1:])
    with pytest.raises(BackupError, match="agent.token does not match MANIFEST.json"):
        restore_backup(directory, new_settings(tmp_path / "newer", ca={"ra": "yes"}))


@pytest_twisted.ensureDeferred
async def test_restore_refuses_while_the_database_is_open(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await take_backup(store, settings, directory, reactor)
    before = fingerprint_files(settings.state_directory)
    with pytest.raises(DaemonRunning, match="scepproxyd is running"):
        restore_backup(directory, settings)
    # The store kept working and nothing changed.
    await store.upsert_host("HOST-3", None, "ios")
    assert len(await store.list_hosts()) == 3
    assert fingerprint_files(settings.state_directory) == before


@pytest_twisted.ensureDeferred
async def test_restore_refuses_tampered_file(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    target = make_settings(tmp_path / "other")
    before = fingerprint_files(target.state_directory)
    hosts = rows(target.database.path, "SELECT count(*) FROM hosts")
    key = directory / "ca" / "ca.key"
    key.write_bytes(key.read_bytes().replace(b"A", b"B", 1))

    with pytest.raises(BackupError, match=r"ca/ca.key does not match MANIFEST.json \(sha256 differs\)"):
        restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) == before
    assert rows(target.database.path, "SELECT count(*) FROM hosts") == hosts
    assert not list(target.state_directory.rglob("*.restoring"))

    code, out, err = run_ctl("--config", str(target.config_path), "restore", str(directory))
    assert code == 1 and "sha256 differs" in err and "nothing was restored" in err


@pytest_twisted.ensureDeferred
async def test_restore_refuses_corrupt_database(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    database = directory / DB_NAME
    [(root,)] = rows(database, "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_hosts_1'")
    [(page_size,)] = rows(database, "PRAGMA page_size")
    data = bytearray(database.read_bytes())
    start = (root - 1) * page_size
    at = data.index(b"HOST-1", start, start + page_size)
    data[at:at + 6] = b"HOST-0"  # the index no longer matches its table
    database.write_bytes(bytes(data))
    manifest = json.loads((directory / MANIFEST).read_text())
    for entry in manifest["files"]:  # as if damaged before the manifest was written
        if entry["name"] == DB_NAME:
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))
    target = new_settings(tmp_path / "new")
    refusal = r"fails PRAGMA integrity_check \(row 1 missing from index .*\); nothing was restored"
    with pytest.raises(BackupError, match=refusal):
        restore_backup(directory, target)
    assert not target.state_directory.exists()


@pytest_twisted.ensureDeferred
async def test_restore_refuses_incomplete_or_unsafe_manifest(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    target = new_settings(tmp_path / "new")
    manifest = json.loads((directory / MANIFEST).read_text())

    def refused(changed, message):
        (directory / MANIFEST).write_text(json.dumps(changed))
        with pytest.raises(BackupError, match=message):
            restore_backup(directory, target)
        assert not target.state_directory.exists()

    escape = json.loads(json.dumps(manifest))
    escape["files"][1]["name"] = "../outside"
    refused(escape, "unsafe file")
    unknown = json.loads(json.dumps(manifest))
    unknown["files"][1]["role"] = "etc.passwd"
    refused(unknown, "unknown role")
    missing = json.loads(json.dumps(manifest))
    missing["files"].append(dict(missing["files"][1], name="ghost", role="ca.ra_key"))
    missing["files"] = [f for f in missing["files"] if f["role"] != "ca.ra_key" or f["name"] == "ghost"]
    refused(missing, "ghost listed in MANIFEST.json is missing")
    (directory / MANIFEST).unlink()
    with pytest.raises(BackupError, match="has no MANIFEST.json"):
        restore_backup(directory, target)


# -- scepproxyctl restore, offline -----------------------------------------------------------


def run_ctl(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest_twisted.ensureDeferred
async def test_ctl_restore_needs_no_api(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    # No daemon, no admin token: restore reads only the config and the backup.
    code, out, err = run_ctl("--config", str(target.config_path), "restore", str(directory))
    assert (code, err) == (0, "")
    assert out.startswith("restored 10 files from %s into %s:\n" % (directory, target.state_directory))
    assert "  ca/ca.key\n" in out and "  %s\n" % (DB_NAME,) in out
    other = new_settings(tmp_path / "other")
    code, out, err = run_ctl("--config", str(other.config_path), "--json", "restore", str(directory))
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "directory": str(directory), "state_directory": str(other.state_directory), "files": json.loads(out)["files"],
    }
    assert set(json.loads(out)["files"]) == STATE_NAMES | {DB_NAME}
    code, out, err = run_ctl("--config", str(tmp_path / "missing.ini"), "restore", str(directory))
    assert code == 2 and "cannot read configuration file" in err


# -- the real daemon, under load ----------------------------------------------------------


def all_host_uuids(admin) -> list:
    """Every host's uuid, following the host list's pages."""
    uuids, cursor = [], None
    while True:
        status, page = admin("GET", "/api/v1/hosts" + ("?cursor=" + cursor if cursor else ""))
        assert status == 200, page
        uuids += [h["uuid"] for h in page["hosts"]]
        cursor = page["next"]
        if cursor is None:
            return uuids


class Http:
    def __init__(self, base: str, token: str):
        self.base = base
        self.token = token

    def __call__(self, method, path, body=None, timeout=30, content_type="application/json"):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": "Bearer " + self.token, "Content-Type": content_type,
        })
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw.strip() else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw


def make_daemon(directory: Path) -> Daemon:
    directory.mkdir(parents=True)
    return Daemon(directory, ca=dict(FAST_CA, ra="yes"))


def ctl(config, *argv, expect=0):
    result = subprocess.run([CTL, "--config", str(config), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == expect, (argv, result.returncode, result.stdout, result.stderr)
    return result


class Load:
    """Writers on every listener, each recording when its requests were sent and acknowledged."""

    def __init__(self, daemon: Daemon, agent_credentials: dict[str, str]):
        self.admin = Http(daemon.admin_url, daemon.admin_token)
        self.agents = {host: Http(daemon.url, token) for host, token in agent_credentials.items()}
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
            status, answer = self.admin("PUT", "/api/v1/hosts/" + uuid, {"serial": "S%d" % (n,), "platform": "macos"})
            assert status == 201, (status, answer)
            self.puts.append((uuid, sent, time.monotonic()))
            n += 1

    def _import(self):
        n = 0
        while not self.stop.is_set():
            batch = ["IMP-%04d-%02d" % (n, i) for i in range(40)]
            sent = time.monotonic()
            status, answer = self.admin("POST", "/api/v1/hosts/import",
                                        [{"uuid": u, "serial": None, "platform": "ios"} for u in batch])
            assert status in (200, 201), (status, answer)
            self.imports.append((batch, sent, time.monotonic()))
            n += 1

    def _agent(self):
        while not self.stop.is_set():
            for host, agent in self.agents.items():
                status, answer = agent("GET", "/api/v1/agent/hosts/%s/commands" % (host,))
                assert status == 200, (status, answer)
                self.counts["agent"] += 1

    def _challenges(self):
        while not self.stop.is_set():
            status, answer = self.admin("POST", "/api/v1/ca/challenges", {"ttl": "10m"})
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
        admin = Http(first.admin_url, first.admin_token)
        # A few thousand hosts, so the snapshot takes a moment, and a profile on the built-in CA.
        for n in range(0, 4000, 1000):
            status, _ = admin("POST", "/api/v1/hosts/import",
                              [{"uuid": "BASE-%05d" % (i,), "serial": None, "platform": "macos"}
                               for i in range(n, n + 1000)])
            assert status in (200, 201)
        profile = FIXTURE.read_text().replace("CA_NAME", "builtin")
        status, uploaded = admin("POST", "/api/v1/profiles?name=Wi-Fi", profile.encode(),
                                 content_type="application/x-apple-aspen-config")
        assert status == 201, uploaded
        agent_hosts = ["BASE-%05d" % (i,) for i in range(5)]
        status, _ = admin("POST", "/api/v1/profiles/%s/assign" % (uploaded["uuid"],), {"hosts": agent_hosts})
        assert status == 200
        status, _ = admin("POST", "/api/v1/jobs/process_profiles")
        assert status == 200

        status, issued = admin("POST", "/api/v1/agent-credentials", {"hosts": agent_hosts})
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

        _, ca_before = admin("GET", "/api/v1/ca")
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
        admin2 = Http(second.admin_url, admin_token)
        status, ca_after = admin2("GET", "/api/v1/ca")
        assert status == 200
        assert ca_after["fingerprint"] == ca_before["fingerprint"]
        assert ca_after["certificate"] == ca_before["certificate"]
        assert ca_after["ra"]["fingerprint"] == ca_before["ra"]["fingerprint"]
        assert set(all_host_uuids(admin2)) == hosts
        # Agent credentials live (hashed) in the database: the restored daemon accepts them.
        status, _ = Http(second.url, agent_credentials[agent_hosts[0]])(
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
        result = subprocess.run([CTL, "--config", str(daemon.config), "--json", "backup", "rel"],
                                capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["directory"] == str(tmp_path / "rel") and (tmp_path / "rel" / MANIFEST).is_file()
        status, answer = Http(daemon.admin_url, daemon.admin_token)("POST", "/api/v1/backup", {"directory": "rel"})
        assert (status, answer["field"]) == (422, "directory")
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_restore_refuses_symbolic_links_and_changes_nothing(store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(store, settings, directory)
    target = make_settings(tmp_path / "other")
    before = fingerprint_files(target.state_directory)
    hosts = rows(target.database.path, "SELECT count(*) FROM hosts")
    elsewhere = tmp_path / "elsewhere"
    # A linked directory: its files match the manifest, but restore must not follow it.
    (directory / "ca").rename(elsewhere)
    (directory / "ca").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BackupError, match=r"contains a symbolic link \(directory .*/backup/ca -> .*elsewhere\)"):
        restore_backup(directory, target)
    code, out, err = run_ctl("--config", str(target.config_path), "restore", str(directory))
    assert code == 1 and "symbolic link" in err and "nothing was restored" in err
    assert fingerprint_files(target.state_directory) == before
    assert rows(target.database.path, "SELECT count(*) FROM hosts") == hosts
    assert not list(target.state_directory.rglob("*.restoring"))

    # A linked file, the directory put back.
    (directory / "ca").unlink()
    elsewhere.rename(directory / "ca")
    key = directory / "ca" / "ca.key"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    with pytest.raises(BackupError, match=r"contains a symbolic link \(file .*/backup/ca/ca.key -> "):
        restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) == before

    # Without links the same backup restores.
    key.unlink()
    elsewhere.rename(key)
    restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) != before
