"""Moving a site from SQLite to PostgreSQL: ``store.copy`` and ``scepproxyctl database copy``.

A populated SQLite store (support.store.populate: a row in every table) is
copied into an empty database on the real PostgreSQL server (``postgres_url``);
a Store on the copy must answer as the original did. Every refusal and failure
must leave the target without rows and the source as it was.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor

from scepproxyd.store import postgres
from scepproxyd.store import copy as copying
from scepproxyd.store.copy import CopyError, copy_to_postgres
from scepproxyd.store.database import _refuse_newer, _schema_files, statements
from scepproxyd.store.models import StoreError, challenge_hash
from support.ctl import ctl_in_process
from support.daemon import daemon_config
from support.processes import free_port
from support.store import (
    AGENT_TOKEN_HASH,
    CA,
    CA_CHALLENGE_HASH,
    HOST,
    PROFILE,
    SCHEMA_VERSION,
    database_at_schema,
    migrated,
    populate,
    postgres_password,
    started_store,
    table_rows,
)


def source_tables(path) -> dict[str, list]:
    """Every table of the SQLite file and its rows."""
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                            " AND name NOT LIKE 'sqlite_%'")]
        return {name: table_rows(conn, name) for name in names}
    finally:
        conn.close()


def target_counts(url) -> dict[str, int]:
    """Rows per table of the PostgreSQL database (none when it has no tables)."""
    conn = postgres.connect(url.url, postgres_password(url))
    try:
        names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables"
                                            " WHERE table_schema = current_schema()")]
        return {name: conn.execute("SELECT count(*) FROM %s" % (name,)).fetchone()[0]
                for name in names if name != "scepproxyd_schema"}
    finally:
        conn.close()


def target_version(url) -> int:
    conn = postgres.connect(url.url, postgres_password(url))
    try:
        return postgres.schema_version(conn)
    finally:
        conn.close()


def empty(counts: dict) -> bool:
    """Migrated and without rows: only the write probe's own row, which the migration makes."""
    return bool(counts) and all(rows == (1 if table in copying.SEEDED else 0) for table, rows in counts.items())


@pytest_twisted.async_fixture
async def source(tmp_path, clock):
    """A stopped site's SQLite file with a row in every table; ``(path, live proxy challenge)``."""
    (tmp_path / "state").mkdir()
    path = migrated(tmp_path / "state" / "scepproxyd.sqlite3")
    s = await started_store(path, reactor, clock)
    try:
        return path, await populate(s)
    finally:
        await s.stop()


# -- the copy ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_copy_answers_as_the_original(source, postgres_url, clock):
    path, live = source
    before = source_tables(path)
    assert all(before.values()), "populate leaves a table empty: %s" % ([t for t, r in before.items() if not r],)

    result = copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))

    assert (result.source, result.target, result.schema_version) == (str(path), postgres_url.url, SCHEMA_VERSION)
    assert result.tables == {table: len(rows) for table, rows in before.items()}
    # Parents before children: every table after the tables it refers to.
    order = list(result.tables)
    assert order.index("hosts") < order.index("host_profiles") < order.index("commands")
    assert order.index("cas") < order.index("profiles") < order.index("host_profiles")
    # Row for row, byte for byte (sealed challenges, DER, floats), and the source untouched.
    conn = postgres.connect(postgres_url.url, postgres_password(postgres_url))
    try:
        for table, rows in before.items():
            assert table_rows(conn, table) == rows, table
    finally:
        conn.close()
    assert source_tables(path) == before

    copy = await started_store(postgres_url.url, reactor, clock, password=postgres_password(postgres_url))
    original = await started_store(path, reactor, clock)
    try:
        for query, args in [("list_cas", ()), ("list_hosts", ()), ("list_host_profiles", ()),
                            ("get_ca", (CA,)), ("list_issued_certificates", ()), ("list_ca_requests", ()),
                            ("list_agent_credentials", ()), ("agent_identity", (AGENT_TOKEN_HASH,)),
                            ("peek_ca_challenge", (CA_CHALLENGE_HASH,)), ("count_host_profiles_by_status", ())]:
            assert await getattr(copy, query)(*args) == await getattr(original, query)(*args), query
        assert (await copy.get_ca(CA)).challenge_ciphertext == b"\x00sealed\xff"
        # The live one-time challenge, copied as its hash, is spent on PostgreSQL exactly once.
        spent = await copy.consume_challenge(live, HOST, PROFILE)
        assert spent.challenge_hash == challenge_hash(live)
        assert await copy.consume_challenge(live, HOST, PROFILE) is None
        # And the copy takes new rows as a daemon's store would.
        await copy.upsert_host("after-the-move", None, "ios")
    finally:
        await copy.stop()
        await original.stop()


def test_a_failing_table_rolls_everything_back(source, postgres_url):
    path, _ = source
    conn = sqlite3.connect(path)
    conn.execute("UPDATE issued_certificates SET not_before = 'SECRET-LOOKING-VALUE'")  # SQLite keeps text in REAL
    conn.commit()
    conn.close()
    before = source_tables(path)

    with pytest.raises(CopyError, match="copying table issued_certificates failed: invalid input syntax for type "
                                        "double precision; nothing was copied") as refused:
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    assert "SECRET-LOOKING-VALUE" not in str(refused.value)
    # Migrated, and not one row: the tables copied before the failing one went with the rollback.
    assert empty(target_counts(postgres_url)) and target_version(postgres_url) == SCHEMA_VERSION
    assert source_tables(path) == before

    # Mended, the same command works on the same target.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE issued_certificates SET not_before = created_at")
    conn.commit()
    conn.close()
    assert copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url)).tables["issued_certificates"] == 1


def test_a_row_count_that_differs_rolls_everything_back(source, postgres_url, monkeypatch):
    path, _ = source
    real = copying._copy_table

    def one_row_short(source_conn, target, table, columns, batch):
        written = real(source_conn, target, table, columns, batch)
        if table == "hosts":
            target.execute("DELETE FROM hosts WHERE uuid = 'host-2'")  # a row lost on the way
        return written

    monkeypatch.setattr(copying, "_copy_table", one_row_short)
    with pytest.raises(CopyError, match=r"^table hosts: 2 rows in SQLite, 2 written, 1 in PostgreSQL; nothing was "
                                        r"copied$"):
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    assert empty(target_counts(postgres_url))


def test_rows_are_read_in_batches(source, postgres_url):
    path, _ = source
    result = copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url), batch=1)
    assert result.tables["hosts"] == 2 and result.tables["host_profiles"] == 2


# -- refusals ------------------------------------------------------------------------------------


def test_a_target_with_rows_is_refused(source, postgres_url):
    path, _ = source
    copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    counts = target_counts(postgres_url)
    with pytest.raises(CopyError, match=r"^the target database %s is not empty: it already holds scepproxyd rows "
                                        r"\(.*cas: 2, .*hosts: 2, .*\); copy into a new, empty database"
                                        % (postgres_url.url,)):
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    assert target_counts(postgres_url) == counts


def test_a_target_at_another_schema_version_is_refused_and_not_migrated(source, postgres_url):
    path, _ = source
    from scepproxyd.daemon.logs import get_logger

    postgres.migrate(postgres_url.url, postgres_password(postgres_url), _schema_files()[:5], statements, _refuse_newer,
                     get_logger(__name__))
    with pytest.raises(CopyError, match=r"^the target database %s has scepproxyd schema version 5, not %d as the "
                                        r"SQLite database: it already holds a scepproxyd site; copy into a new, "
                                        r"empty database$" % (postgres_url.url, SCHEMA_VERSION)):
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    assert target_version(postgres_url) == 5


def test_a_target_with_other_tables_is_refused(source, postgres_url):
    path, _ = source
    conn = postgres.connect(postgres_url.url, postgres_password(postgres_url))
    conn.execute("CREATE TABLE invoices (id integer)")
    conn.close()
    with pytest.raises(CopyError, match=r"is not empty: it holds tables that are not scepproxyd's \(invoices\)"):
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    assert target_version(postgres_url) == 0 and target_counts(postgres_url) == {"invoices": 0}


def test_an_unreachable_server_is_named(source):
    path, _ = source
    url = "postgresql://scepproxyd@127.0.0.1:%d/scepproxyd" % (free_port(),)
    with pytest.raises(CopyError, match=r"^cannot open the target database %s: cannot reach the database server: "
                                        r".*Connection refused.*; nothing was copied$" % (url,)):
        copy_to_postgres(path, url, "a-password")


def test_a_wrong_password_is_named_and_never_shown(source, postgres_url):
    path, _ = source
    wrong = "not-the-password-%s" % (postgres_password(postgres_url) or "")
    try:
        postgres.connect(postgres_url.url, wrong).close()
    except StoreError:
        pass
    else:
        pytest.skip("this PostgreSQL server does not check passwords (trust authentication)")
    with pytest.raises(CopyError, match=r"^cannot open the target database %s: .*password authentication failed for "
                                        r"user \".*\"; nothing was copied$" % (postgres_url.url,)) as refused:
        copy_to_postgres(path, postgres_url.url, wrong)
    assert wrong not in str(refused.value)
    assert target_version(postgres_url) == 0  # nothing was touched


@pytest_twisted.ensureDeferred
async def test_a_running_daemon_is_refused(source, postgres_url, clock):
    path, _ = source
    running = await started_store(path, reactor, clock)
    try:
        with pytest.raises(CopyError, match=r"^scepproxyd is running: another process has the database %s open; "
                                            r"stop the daemon \(systemctl stop scepproxyd\) and run the copy again$"
                                            % (path,)):
            copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
        assert len(await running.list_hosts()) == 2  # it kept working
    finally:
        await running.stop()
    assert target_version(postgres_url) == 0  # nothing was touched


def test_a_source_at_an_older_schema_is_refused(tmp_path, postgres_url):
    path = tmp_path / "old.sqlite3"
    database_at_schema(path, SCHEMA_VERSION - 1).close()
    with pytest.raises(CopyError, match=r"has schema version %d, this scepproxyd's is %d: start scepproxyd on it "
                                        r"once" % (SCHEMA_VERSION - 1, SCHEMA_VERSION)):
        copy_to_postgres(path, postgres_url.url, postgres_password(postgres_url))
    with pytest.raises(CopyError, match=r"^there is no SQLite database at %s" % (tmp_path / "missing",)):
        copy_to_postgres(tmp_path / "missing", postgres_url.url, postgres_password(postgres_url))
    assert target_version(postgres_url) == 0


# -- scepproxyctl database copy ----------------------------------------------------------------------


def config_for(source_path, **database):
    """A daemon config whose [database] path is ``source_path`` (its state directory is the file's)."""
    directory = source_path.parent.parent
    return daemon_config(directory, free_port(), free_port(), database=dict({"path": str(source_path)}, **database))


def password_file(tmp_path, url) -> str:
    path = tmp_path / "pg-password"
    path.write_text((postgres_password(url) or "") + "\n")
    path.chmod(0o600)
    return str(path)


def test_ctl_database_copy(source, postgres_url, tmp_path):
    path, _ = source
    config = config_for(path)
    code, out, err = ctl_in_process("--config", str(config), "database", "copy", "--to", postgres_url.url,
                                    "--password-file", password_file(tmp_path, postgres_url))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    rows = sum(len(r) for r in source_tables(path).values())
    assert lines[0] == ("copied %d rows in %d tables from %s to %s (schema %d); row counts checked on both sides:"
                        % (rows, len(source_tables(path)), path, postgres_url.url, SCHEMA_VERSION))
    assert "  hosts" in out and lines[-1].startswith("now set [database] url = %s" % (postgres_url.url,))

    # Again: refused, exit 1, the reason on stderr.
    code, out, err = ctl_in_process("--config", str(config), "--json", "database", "copy", "--to", postgres_url.url,
                                    "--password-file", password_file(tmp_path, postgres_url))
    assert code == 1 and out == "" and "is not empty: it already holds scepproxyd rows" in err


def test_ctl_database_copy_json_and_the_configs_own_password_file(source, postgres_url, tmp_path):
    path, _ = source
    config = config_for(path, url=postgres_url.url, password_file=password_file(tmp_path, postgres_url))
    code, out, err = ctl_in_process("--config", str(config), "database", "copy", "--to", postgres_url.url, "--json")
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert (answer["source"], answer["target"], answer["schema_version"]) == (str(path), postgres_url.url,
                                                                              SCHEMA_VERSION)
    assert answer["tables"]["hosts"] == 2 and set(answer["tables"]) == set(source_tables(path))


def test_ctl_database_copy_refusals(source, tmp_path):
    path, _ = source
    config = str(config_for(path))
    code, out, err = ctl_in_process("--config", config, "database", "copy", "--to",
                                    "postgresql://scepproxyd:hunter2@db.internal/scepproxyd")
    assert code == 2 and "must not hold a password" in err and "hunter2" not in err
    code, out, err = ctl_in_process("--config", config, "database", "copy", "--to", "mysql://db/x")
    assert (code, err) == (2, "scepproxyctl: --to must be a postgresql:// URL, e.g. "
                              "postgresql://scepproxyd@db.internal/scepproxyd\n")
    code, out, err = ctl_in_process("--config", config, "database", "copy", "--to", "postgresql://db.internal/x",
                                    "--password-file", str(tmp_path / "nope"))
    assert code == 1 and "cannot read the password file %s: No such file or directory" % (tmp_path / "nope",) in err
    code, out, err = ctl_in_process("--config", str(tmp_path / "missing.ini"), "database", "copy", "--to",
                                    "postgresql://db.internal/x")
    assert code == 2 and "cannot read configuration file" in err
    port = free_port()
    code, out, err = ctl_in_process("--config", config, "database", "copy", "--to",
                                    "postgresql://scepproxyd@127.0.0.1:%d/scepproxyd" % (port,))
    assert code == 1 and "cannot reach the database server: " in err and "Connection refused" in err


def test_ctl_database_copy_needs_to(capsys):
    with pytest.raises(SystemExit) as exited:
        ctl_in_process("database", "copy")
    assert exited.value.code == 2
    assert "the following arguments are required: --to" in capsys.readouterr().err
