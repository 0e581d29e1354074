"""Moving a real site from SQLite to PostgreSQL, as docs/operations.md tells an operator to.

The daemon runs on SQLite and is set up through scepproxyctl; ``database copy``
is refused while it runs, copies once it is stopped, and the daemon started
again on the PostgreSQL copy (the same state directory) serves the same site:
its hosts, its built-in CA, its agents' credentials. The in-process tests of
the copy are in tests/test_database_copy.py.
"""

from __future__ import annotations

from support.api import Api, AgentApi
from support.ctl import Ctl
from support.daemon import Daemon
from support.state import FAST_CA
from support.store import postgres_password


def test_a_site_moves_from_sqlite_to_postgresql(tmp_path, postgres_url):
    directory = tmp_path / "site"
    directory.mkdir()
    password_file = directory / "db-password"
    password_file.write_text((postgres_password(postgres_url) or "") + "\n")
    password_file.chmod(0o600)
    copy = ("database", "copy", "--to", postgres_url.url, "--password-file", str(password_file))

    on_sqlite = Daemon(directory, ca=FAST_CA).start()
    ctl = Ctl(on_sqlite.config, timeout=120)
    try:
        ctl("host", "add", "HOST-1", "--platform", "macos", "--serial", "C02AAA")
        ctl("host", "add", "HOST-2", "--platform", "ios")
        token = ctl("agent-credential", "issue", "HOST-1").stdout.strip()
        before = {"hosts": ctl.json("host", "list"), "ca": ctl.json("builtin-ca", "show")}
        refused = ctl(*copy, expect=1)
        assert refused.stderr == ("scepproxyctl: scepproxyd is running: another process has the database %s open; "
                                  "stop the daemon (systemctl stop scepproxyd) and run the copy again\n"
                                  % (on_sqlite.database,))
    finally:
        assert on_sqlite.stop() in (0, -15)

    copied = ctl(*copy)
    assert copied.stdout.startswith("copied ") and " to %s (schema " % (postgres_url.url,) in copied.stdout
    assert copied.stderr == ""

    on_postgres = Daemon(directory, ca=FAST_CA,
                         database={"url": postgres_url.url, "password_file": str(password_file)}).start()
    try:
        moved = Ctl(on_postgres.config, timeout=120)
        assert moved.json("host", "list") == before["hosts"]
        assert moved.json("builtin-ca", "show")["fingerprint"] == before["ca"]["fingerprint"]
        # The agent's credential, issued on SQLite, works on PostgreSQL.
        agent = AgentApi(on_postgres.url, Api(on_postgres.admin_url, on_postgres.admin_token))
        status, _ = agent.request("GET", "/api/v1/agent/hosts/HOST-1/commands", token=token)
        assert status == 200
        other = token[:-1] + ("A" if token[-1] != "A" else "B")
        status, _ = agent.request("GET", "/api/v1/agent/hosts/HOST-1/commands", token=other)
        assert status == 401
    finally:
        on_postgres.stop()
    assert "Traceback" not in on_postgres.log()
    assert on_sqlite.database.exists()  # the SQLite file stays, untouched, for going back
