"""The real PostgreSQL peer (support.postgres) that issue 14's store tests run on.

What the store's tests rely on: the server runs from Debian's binaries as
nobody on a loopback TCP port, answers a client with the password and refuses
one without it, keeps the password out of URLs, command lines and its log,
gives each test a database of its own, and leaves no process when stopped.
"""

import os
import pwd
import secrets
import signal
import stat
from pathlib import Path

import psycopg
import pytest

from support.postgres import REFUSALS, RUN_AS, PsqlFailed, alive, need_postgres


def _owner_and_command(pid: int) -> tuple[int, str] | None:
    """The real uid (from its status: /proc's file owners turn root as a process exits) and command line of
    ``pid``; None if it has gone (a backend of a psql that just ended)."""
    try:
        status = Path("/proc/%d/status" % (pid,)).read_text()
        command = Path("/proc/%d/cmdline" % (pid,)).read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return uid, command


def test_answers_psql_over_tcp_with_the_password(postgres_server, postgres_url):
    assert postgres_url.url == "postgresql://postgres@127.0.0.1:%d/%s" % (postgres_server.port, postgres_url.name)
    answer = postgres_server.psql("SELECT current_user, current_database(), inet_server_addr(), "
                                  "inet_server_port()", database=postgres_url.name)
    assert answer == "postgres|%s|127.0.0.1|%d" % (postgres_url.name, postgres_server.port)
    assert postgres_server.psql("SHOW password_encryption") == "scram-sha-256"
    # TCP only: no unix socket to reach it by another way.
    assert postgres_server.psql("SHOW unix_socket_directories") == ""
    assert postgres_server.psql("SHOW listen_addresses") == "127.0.0.1"


def test_libpq_client_connects_with_url_and_password_file(postgres_url):
    """psycopg (the store's driver) with the URL and the password read from the file, as the daemon will."""
    with psycopg.connect(postgres_url.url, password=postgres_url.password_file.read_text()) as connection:
        row = connection.execute("SELECT current_database(), "
                                 "(SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host')").fetchone()
    assert row == (postgres_url.name, "scram-sha-256")


def test_refuses_without_the_password(postgres_server, postgres_url):
    with pytest.raises(PsqlFailed) as none:
        postgres_server.psql("SELECT 1", database=postgres_url.name, password=None)
    assert "no password supplied" in none.value.stderr
    with pytest.raises(PsqlFailed) as wrong:
        postgres_server.psql("SELECT 1", database=postgres_url.name, password="not-the-password")
    assert 'password authentication failed for user "postgres"' in wrong.value.stderr
    with pytest.raises(psycopg.OperationalError) as driver:
        psycopg.connect(postgres_url.url, password="not-the-password").close()
    assert any(refusal in str(driver.value) for refusal in REFUSALS)


def test_runs_as_nobody_and_keeps_the_password_to_root(postgres_server, postgres_url):
    password = postgres_url.password_file.read_text()
    assert len(password) >= 24
    assert password not in postgres_url.url
    info = postgres_url.password_file.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)
    pids = postgres_server.server_pids()
    assert postgres_server.process.pid in pids and len(pids) > 1  # the postmaster and its helpers
    nobody = pwd.getpwnam(RUN_AS).pw_uid
    seen = {pid: _owner_and_command(pid) for pid in pids}
    assert seen[postgres_server.process.pid] is not None
    for owner, command in filter(None, seen.values()):
        assert owner == nobody
        assert password not in command
    # A refused attempt and a role with a password leave no password in the server's log.
    with pytest.raises(PsqlFailed):
        postgres_server.psql("SELECT 1", password="wrong-" + password[:4])
    role_password_file = postgres_server.create_user("peer_" + secrets.token_hex(4))
    log = postgres_server.log()
    assert "password authentication failed" in log
    assert password not in log
    assert role_password_file.read_text() not in log


def test_fresh_databases_are_empty_and_isolated(postgres_server):
    first, second = postgres_server.fresh_database(), postgres_server.fresh_database()
    try:
        assert first.name != second.name
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        assert postgres_server.psql(tables, database=first.name) == "0"
        postgres_server.psql("CREATE TABLE only_here (x int); INSERT INTO only_here VALUES (1)", database=first.name)
        assert postgres_server.psql("SELECT x FROM only_here", database=first.name) == "1"
        assert postgres_server.psql(tables, database=second.name) == "0"
        with pytest.raises(PsqlFailed) as missing:
            postgres_server.psql("SELECT x FROM only_here", database=second.name)
        assert 'relation "only_here" does not exist' in missing.value.stderr
    finally:
        postgres_server.drop_database(first)
        postgres_server.drop_database(second)
    names = postgres_server.psql("SELECT datname FROM pg_database").split()
    assert first.name not in names and second.name not in names


def test_a_fresh_database_copied_from_a_template(postgres_server):
    """A database set up once (a migrated schema, say) copied for each test; the copies do not touch it."""
    template = postgres_server.fresh_database()
    copies = []
    try:
        postgres_server.psql("CREATE TABLE schema_version (v int); INSERT INTO schema_version VALUES (14)",
                             database=template.name)
        copies = [postgres_server.fresh_database(template=template) for _ in range(2)]
        postgres_server.psql("UPDATE schema_version SET v = 15", database=copies[0].name)
        assert postgres_server.psql("SELECT v FROM schema_version", database=copies[0].name) == "15"
        assert postgres_server.psql("SELECT v FROM schema_version", database=copies[1].name) == "14"
        assert postgres_server.psql("SELECT v FROM schema_version", database=template.name) == "14"
    finally:
        for database in copies + [template]:
            postgres_server.drop_database(database)


def test_a_database_owned_by_an_ordinary_role(postgres_server):
    """For tests of what the daemon can do without superuser rights: the owner's URL and password file."""
    role = "owner_" + secrets.token_hex(4)
    postgres_server.create_user(role)
    database = postgres_server.fresh_database(owner=role)
    try:
        assert database.url.startswith("postgresql://%s@127.0.0.1:" % (role,))
        with psycopg.connect(database.url, password=database.password_file.read_text()) as connection:
            connection.execute("CREATE TABLE mine (x int)")
            assert connection.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
                False,)
    finally:
        postgres_server.drop_database(database)


def started_with_a_session(server):
    """``server`` started, with one session open: (the connection, its backend's pid, the postmaster's pid)."""
    server.start()
    connection = psycopg.connect(server.url, password=server.password_file.read_text())
    return connection, connection.execute("SELECT pg_backend_pid()").fetchone()[0], server.process.pid


def test_stop_leaves_no_process():
    server = need_postgres()
    try:
        # A session held open: its backend is one more process that must go.
        connection, backend, postmaster = started_with_a_session(server)
        assert backend in server.server_pids()
        assert server.stop() == 0  # fast shutdown, not SIGKILL
        assert postmaster in server.pids and backend in server.pids
        assert not [pid for pid in server.pids if alive(pid)]
        assert "received fast shutdown request" in server.log()
        connection.close()
    finally:
        server.stop()
        server.remove()
    assert not server.directory.exists()


def test_stop_after_the_postmaster_was_killed_ends_its_backends():
    """A SIGKILLed postmaster leaves orphans behind; stop finds them by their data directory and ends them.

    The backend is stopped (SIGSTOP) first, so that it cannot notice the
    postmaster's death and leave by itself before ``stop`` looks.
    """
    server = need_postgres()
    try:
        connection, backend, postmaster = started_with_a_session(server)
        os.kill(backend, signal.SIGSTOP)
        os.kill(postmaster, signal.SIGKILL)
        server.process.wait()
        assert alive(backend)
        assert server.stop() == -signal.SIGKILL
        assert backend in server.pids
        assert not alive(backend) and not alive(postmaster)
        assert server.server_pids() == []
        connection.close()
    finally:
        server.stop()
        server.remove()
