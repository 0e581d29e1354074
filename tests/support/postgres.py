"""PostgreSQL from Debian's ``postgresql`` package as a real database server for the tests.

Issue 14 runs the store on PostgreSQL for several nodes, so its tests need a
real server, not a stand-in: ``PostgreSQL`` runs ``initdb`` and ``postgres``
from ``/usr/lib/postgresql/<version>/bin`` (the newest version there, found at
run time) in a temporary directory under /tmp, as ``nobody``: the tests run as
root and PostgreSQL refuses to, and pytest's own temporary directories are
root-only, which ``nobody`` could not enter.

The server listens on a free loopback TCP port only (no unix socket) and asks
every client for a password (scram-sha-256). The superuser's password lives in
one file, root's and mode 0600 (``password_file``), never in a URL, a command
line or the server's log: initdb and ``CREATE ROLE`` get a SCRAM verifier made
here, not the password, and psql gets it in its environment. ``fresh_database``
gives each test an empty database of its own; ``stop`` ends the server by its
pid (SIGINT, PostgreSQL's fast shutdown, then SIGKILL) and leaves no process.
"""

import base64
import hashlib
import hmac
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from support.processes import free_port, stop, wait_until

BIN_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "nobody"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
INSTALL_HINT = "run scripts/bootstrap --test, which installs Debian's postgresql"
# A throwaway server: no fsync (only an OS crash could lose data, and then the
# test is lost anyway). Commits keep their usual semantics (synchronous_commit on).
FAST = {"fsync": "off", "full_page_writes": "off"}
# How PostgreSQL says a password was missing or wrong, for tests that check a refusal.
REFUSALS = ("no password supplied", "password authentication failed")

_names = itertools.count(1)


class MissingPostgreSQL(RuntimeError):
    """Debian's PostgreSQL server binaries are not installed."""


class PsqlFailed(RuntimeError):
    """psql exited non-zero; ``stderr`` says why (never the password)."""

    def __init__(self, returncode: int, stderr: str):
        super().__init__("psql exited with %d: %s" % (returncode, stderr.strip()))
        self.returncode = returncode
        self.stderr = stderr


class Database(NamedTuple):
    """One database on the server: a libpq URL without the password, and the file that holds it."""

    url: str
    password_file: Path

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def user(self) -> str:
        return self.url.split("://", 1)[1].split("@", 1)[0]


def bin_dir(root: Path | None = None) -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with both ``initdb`` and ``postgres``, or None."""
    found = []
    for directory in (root or BIN_ROOT).glob("*/bin"):
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            try:
                key = tuple(int(part) for part in directory.parent.name.split("."))
            except ValueError:
                continue
            found.append((key, directory))
    return max(found)[1] if found else None


def require_bin_dir() -> Path:
    directory = bin_dir()
    if directory is None:
        raise MissingPostgreSQL("PostgreSQL's server binaries are not installed (no %s/<version>/bin/postgres); %s"
                                % (BIN_ROOT, INSTALL_HINT))
    return directory


def need_bin_dir() -> Path:
    """``require_bin_dir`` for a test: without the binaries it fails under CI (CI=true), and skips elsewhere.

    scripts/test installs them; a developer running pytest on a machine set up
    without ``--test`` gets a skip that says how to get them.
    """
    try:
        return require_bin_dir()
    except MissingPostgreSQL as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))


def need_postgres(**options) -> "PostgreSQL":
    """A PostgreSQL (not yet started) for a test or fixture, failing or skipping as ``need_bin_dir`` does."""
    need_bin_dir()
    return PostgreSQL(**options)


def server_version(directory: Path | None = None) -> str:
    """What ``postgres --version`` says, e.g. ``postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``."""
    directory = directory or require_bin_dir()
    return subprocess.run([str(directory / "postgres"), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    PostgreSQL takes a verifier wherever it takes a password, so the password
    itself never reaches initdb, a SQL statement or the server's log. The
    passwords made here are ASCII, for which SASLprep changes nothing.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored_key), b64(server_key))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path("/proc/%d/stat" % (pid,)).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class PostgreSQL:
    """A real PostgreSQL server as ``nobody`` in a new directory under /tmp, on a free loopback port.

    ``settings``: server settings (``-c name=value``) over FAST; ``durable=True``
    drops FAST (fsync on), for benchmarks that compare with SQLite's durability.
    """

    def __init__(self, settings: dict[str, str] | None = None, durable: bool = False):
        self.bin = require_bin_dir()
        self.settings = dict({} if durable else FAST, **(settings or {}))
        self.port = free_port()
        self.user = SUPERUSER
        # Resolved: ``server_pids`` compares it with the processes' working directories.
        self.directory = Path(tempfile.mkdtemp(prefix="scepproxyd-postgres-")).resolve()
        # Root's directory, which nobody may cross but not list: the password files stay root's.
        self.directory.chmod(0o711)
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgresql.log"
        self.password_file = self.directory / "password"
        self.process: subprocess.Popen | None = None
        self.pids: list[int] = []  # what ran, as ``stop`` found it
        account = pwd.getpwnam(RUN_AS)
        self._uid, self._gid = account.pw_uid, account.pw_gid
        self._password = secrets.token_urlsafe(24)
        self._write_secret(self.password_file, self._password)

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The superuser's URL to the ``postgres`` database, without the password (see ``password_file``)."""
        return self._url(self.user, "postgres")

    def _url(self, user: str, database: str) -> str:
        return "postgresql://%s@%s:%d/%s" % (user, HOST, self.port, database)

    # -- life --------------------------------------------------------------------------------------

    def start(self) -> "PostgreSQL":
        self._initdb()
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                   "-c", "listen_addresses=%s" % (HOST,), "-c", "unix_socket_directories="]
        for name, value in sorted(self.settings.items()):
            command += ["-c", "%s=%s" % (name, value)]
        log = open(self.log_path, "ab")
        os.chmod(self.log_path, 0o600)
        # setpriv execs postgres in its place: the Popen's pid is the postmaster's.
        self.process = subprocess.Popen(self._as_nobody(command), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self._server_env(), cwd=str(self.data))
        log.close()
        try:
            wait_until(self._accepts_sessions, self.process, timeout=60.0, what="accepting sessions")
        except RuntimeError as e:
            self.stop()
            raise RuntimeError("%s\n%s" % (e, self.log())) from None
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """Fast shutdown (SIGINT) by pid, SIGKILL if it will not go; then no process of the server is left.

        A postmaster that died or was SIGKILLed leaves its backends behind:
        every process still working in the data directory (``server_pids``) is
        then killed by its pid. ``pids`` keeps what ran, for tests to check.
        """
        self.pids = self.server_pids()
        code = None
        if self.process is not None:
            code = stop(self.process, timeout, sig=signal.SIGINT)
            self.process = None
        for pid in self.server_pids():
            if pid not in self.pids:
                self.pids.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A killed process leaves its directory before it is dead: wait for both.
        wait_until(lambda: not self.server_pids() and not any(alive(pid) for pid in self.pids),
                   timeout=timeout, what="gone")
        return code

    def server_pids(self) -> list[int]:
        """The running processes of this server: the postmaster and its backends all work in its data directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "cwd") == str(self.data) and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
        return sorted(found)

    def remove(self) -> None:
        """Delete the server's directory (its data, log and password files); the server must be stopped."""
        assert self.process is None, "stop the server before removing its directory"
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        """The server's log (its stderr), which never holds a password."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- databases and roles ------------------------------------------------------------------

    def fresh_database(self, owner: str | None = None, template: "Database | str | None" = None) -> Database:
        """A new database with a name of its own; its URL is the owner's (the superuser unless told).

        Empty unless ``template`` names a database to copy (one migrated once
        for many tests, say; nobody may be connected to it while it is copied).
        FILE_COPY: on a server without fsync it is about three times faster
        than PostgreSQL 15's default for a small database.
        """
        name = "test_%d_%s" % (next(_names), secrets.token_hex(4))
        clauses = " STRATEGY FILE_COPY"
        if template is not None:
            clauses += " TEMPLATE %s" % (_quote_ident(template.name if isinstance(template, Database) else template),)
        if owner:
            clauses += " OWNER %s" % (_quote_ident(owner),)
        self.psql("CREATE DATABASE %s%s" % (_quote_ident(name), clauses))
        user = owner or self.user
        password_file = self.password_file if user == self.user else self._user_password_file(user)
        return Database(self._url(user, name), password_file)

    def drop_database(self, database: "Database | str") -> None:
        """Drop a database, closing any session still on it."""
        name = database.name if isinstance(database, Database) else database
        self.psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % (_quote_ident(name),))

    def create_user(self, name: str) -> Path:
        """A login role without special rights, with a password of its own; returns its password file.

        For tests of what the daemon can do as an ordinary owner of its database.
        """
        password = secrets.token_urlsafe(24)
        path = self._user_password_file(name)
        self._write_secret(path, password)
        self.psql("CREATE ROLE %s LOGIN PASSWORD %s" % (_quote_ident(name), _quote_literal(scram_verifier(password))))
        return path

    def psql(self, sql: str, database: str = "postgres", user: str | None = None,
             password: str | None | bool = True) -> str:
        """Run ``sql`` with psql over TCP and return its unaligned, tuples-only output.

        ``password``: True (the default) for the user's own password, None to
        send none, or a string to send instead. Raises PsqlFailed on an error.
        """
        user = user or self.user
        env = self._client_env()
        if password is True:
            password = self._read_password(user)
        if password is not None:
            env["PGPASSWORD"] = password
        result = subprocess.run(
            [str(self.bin / "psql"), "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", HOST, "-p", str(self.port), "-U", user, "-d", database, "-c", sql],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise PsqlFailed(result.returncode, result.stderr)
        return result.stdout.strip()

    # -- helpers ---------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700)
        os.chown(self.data, self._uid, self._gid)
        # initdb reads the superuser's password from a file nobody can read: give it the
        # SCRAM verifier, not the password, and delete the file at once.
        verifier = self.directory / "initdb-verifier"
        verifier.write_text(scram_verifier(self._password) + "\n")
        os.chown(verifier, self._uid, self._gid)
        verifier.chmod(0o600)
        try:
            result = subprocess.run(
                self._as_nobody([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                                 "--pwfile", str(verifier), "--auth=scram-sha-256", "--encoding=UTF8",
                                 "--locale=C", "--no-sync", "--no-instructions"]),
                capture_output=True, text=True, env=self._server_env(), cwd=str(self.data),
                stdin=subprocess.DEVNULL)
        finally:
            verifier.unlink()
        if result.returncode != 0:
            raise RuntimeError("initdb failed (%d):\n%s%s" % (result.returncode, result.stdout, result.stderr))
        # TCP on loopback with a password, nothing else.
        hba = self.data / "pg_hba.conf"
        hba.write_text("# scepproxyd tests: loopback TCP with a password only\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        os.chown(hba, self._uid, self._gid)

    def _accepts_sessions(self) -> bool:
        try:
            return self.psql("SELECT 1") == "1"
        except PsqlFailed:
            return False

    def _as_nobody(self, command: list[str]) -> list[str]:
        return ["setpriv", "--reuid=%d" % (self._uid,), "--regid=%d" % (self._gid,), "--clear-groups", "--"] + command

    def _server_env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C", "TZ": "UTC", "HOME": str(self.data)}

    def _client_env(self) -> dict[str, str]:
        # HOME and PGPASSFILE in our directory: no ~/.pgpass of root's answers for us.
        return {"PATH": "/usr/bin:/bin", "LANG": "C", "HOME": str(self.directory),
                "PGPASSFILE": str(self.directory / "no-pgpass"), "PGCONNECT_TIMEOUT": "10"}

    def _user_password_file(self, user: str) -> Path:
        return self.directory / ("password-%s" % (user,))

    def _read_password(self, user: str) -> str:
        path = self.password_file if user == self.user else self._user_password_file(user)
        return path.read_text()

    @staticmethod
    def _write_secret(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
