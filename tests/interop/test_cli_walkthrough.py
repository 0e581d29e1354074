"""The README's admin story with the real tools: scepproxyctl -> twistd scepproxyd -> micromdm scepserver.

Every step runs the installed console script as an admin would, against the
daemon's own config file, and checks exit code and output. The CA's static
challenge goes in through a file and must come out nowhere: not in any
command's output, not in the daemon's log, not in plaintext in the database.
"""

from __future__ import annotations

from pathlib import Path


from support.ctl import Ctl, run_ctl
from support.daemon import Daemon
from support.site import FIXTURES
from support.upstream import CHALLENGE as STATIC

CA_NAME = "UPSTREAM_CA"
HOSTS = ["C8QHT3K1Q6L4", "F9FXK2LMQ1GC", "D25ZQ0AAHTD8"]
FIXTURE = "fleet-custom-scep-apple.mobileconfig"


def table_rows(output: str) -> list[list[str]]:
    """A human table's rows (header dropped), split on the two-space column gaps."""
    lines = output.splitlines()
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:]]


def sample_profile(tmp_path: Path) -> Path:
    source = FIXTURES / FIXTURE
    text = source.read_text()
    path = tmp_path / FIXTURE
    path.write_text(text.replace("CA_NAME", CA_NAME))
    return path


def test_walkthrough(tmp_path, upstream, daemon):
    ctl = Ctl(daemon.config)
    challenge_file = tmp_path / "challenge"
    challenge_file.write_text(STATIC + "\n")

    # CA: added with the challenge from a file; listed without it.
    out = ctl("ca", "add", CA_NAME, "--url", upstream.url, "--challenge-file", str(challenge_file)).stdout
    assert out == "added CA %s at %s\n" % (CA_NAME, upstream.url)
    listed = ctl("ca", "list").stdout
    assert listed.splitlines()[0].split() == ["NAME", "URL", "MODE", "RA_CERTIFICATE", "RA_NOT_AFTER", "PROFILES",
                                              "UPDATED"]
    assert table_rows(listed)[0][:6] == [CA_NAME, upstream.url, "passthrough", "-", "-", "0"]
    shown = ctl.json("ca", "show", CA_NAME)
    assert (shown["name"], shown["url"], shown["profiles"]) == (CA_NAME, upstream.url, [])
    assert "challenge" not in shown
    # A new challenge through stdin, as a script would pipe it.
    assert ctl("ca", "edit", CA_NAME, "--challenge-stdin", input=STATIC + "\n").stdout == (
        "changed CA %s (challenge)\n" % (CA_NAME,))

    # Hosts: a CSV import, then the list.
    hosts_csv = tmp_path / "hosts.csv"
    hosts_csv.write_text("uuid,serial,platform\n" + "".join("%s,SN%d,macos\n" % (h, i) for i, h in enumerate(HOSTS)))
    assert ctl("host", "import", str(hosts_csv)).stdout == "imported 3 hosts: 3 created, 0 updated\n"
    rows = table_rows(ctl("host", "list").stdout)
    assert sorted(row[0] for row in rows) == sorted(HOSTS)
    assert all(row[2] == "macos" for row in rows)
    assert [h["uuid"] for h in ctl.json("host", "list", "--platform", "ios")["hosts"]] == []
    assert ctl("host", "add", "IPAD-1", "--serial", "DMPX", "--platform", "ipados").stdout == (
        "created host IPAD-1 (ipados, serial DMPX)\n")
    assert ctl("host", "add", "IPAD-1", "--serial", "DMPY", "--platform", "ipados").stdout == (
        "updated host IPAD-1 (ipados, serial DMPY)\n")

    # Profile: upload, assign to the three hosts; every host profile starts at status NULL.
    profile = ctl.json("profile", "upload", str(sample_profile(tmp_path)))
    uuid = profile["uuid"]
    assert (profile["ca"], profile["platform"], profile["kind"]) == (CA_NAME, "macos", "mobileconfig")
    assert uuid in ctl("profile", "list").stdout
    # The same profile again: its PayloadIdentifier is taken, and the answer says by which profile.
    again = ctl("profile", "upload", str(sample_profile(tmp_path)), "--platform", "ios", expect=1)
    assert again.stderr == (
        "scepproxyctl: PayloadIdentifier 'Fleet.WiFi' is already used by profile %s (SCEP proxy cert);"
        " give this one another PayloadIdentifier, or delete that profile first (field: PayloadIdentifier)\n" % (uuid,))
    assert [p["uuid"] for p in ctl.json("profile", "list")["profiles"]] == [uuid]
    assert ctl("profile", "assign", uuid, *HOSTS).stdout == "assigned profile %s to 3 new hosts\n" % (uuid,)
    assert ctl("profile", "assign", uuid, HOSTS[0]).stdout == "assigned profile %s to 0 new hosts\n" % (uuid,)
    mismatch = ctl("profile", "assign", uuid, "IPAD-1", expect=1)
    assert mismatch.stderr == (
        "scepproxyctl: host IPAD-1 is ipados but profile %s is for macos (field: hosts)\n" % (uuid,))
    assert ctl.json("profile", "show", uuid)["hosts"] == 3
    status = ctl("status").stdout
    assert status.splitlines()[0].split() == [
        "HOST", "PROFILE", "STATUS", "LIFECYCLE", "RETRIES", "CERT_SERIAL", "CERT_NOT_AFTER", "UPDATED", "DETAIL"]
    rows = table_rows(status)
    assert sorted(row[0] for row in rows) == sorted(HOSTS)
    assert all(row[1] == uuid and row[2] == "-" and row[3] == "pending" and row[4] == "0" for row in rows)
    nulls = ctl.json("status", "--profile", uuid, "--status", "null")["host_profiles"]
    assert len(nulls) == 3 and all(hp["status"] is None for hp in nulls)
    assert ctl.json("status", "--status", "pending")["host_profiles"] == []
    host_shown = ctl("host", "show", HOSTS[0]).stdout
    assert "platform:   macos" in host_shown and uuid in host_shown

    assert ctl("resend", HOSTS[0], uuid).stdout == (
        "profile %s will be sent again to host %s with a fresh challenge\n" % (uuid, HOSTS[0]))
    resent = ctl.json("status", "--host", HOSTS[0])["host_profiles"]
    assert [(hp["status"], hp["retries"]) for hp in resent] == [(None, 0)]

    # Jobs, also through python -m.
    assert ctl("jobs", module=True).stdout == "cleanup\nprocess_profiles\nrenew_certificates\n"
    assert ctl("trigger", "cleanup").stdout.startswith("ran job cleanup: ")
    assert ctl.json("trigger", "cleanup")["job"] == "cleanup"

    # The CA is in use: deleting or renaming it is refused with the profile named.
    refused = ctl("ca", "delete", CA_NAME, expect=1)
    assert refused.stdout == ""
    assert refused.stderr.startswith("scepproxyctl: ") and uuid in refused.stderr and CA_NAME in refused.stderr
    renamed = ctl("ca", "edit", CA_NAME, "--name", "OTHER_CA", expect=1)
    assert uuid in renamed.stderr
    assert ctl("ca", "show", "OTHER_CA", expect=1).stderr.startswith("scepproxyctl: ")

    # A wrong token: refused with 401, naming the token file used.
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-admin-token-at-all\n")
    denied = ctl("--token-file", str(wrong), "ca", "list", expect=1)
    assert "401" in denied.stderr and str(wrong) in denied.stderr and "token" in denied.stderr

    # Tear down in dependency order.
    assert ctl("profile", "unassign", uuid, HOSTS[2]).stdout == "unassigned profile %s from 1 host\n" % (uuid,)
    assert ctl("profile", "delete", uuid).stdout == "deleted profile %s\n" % (uuid,)
    assert ctl("ca", "delete", CA_NAME).stdout == "deleted CA %s\n" % (CA_NAME,)
    # Only the built-in CA, which the daemon manages itself, is left.
    assert [ca["name"] for ca in ctl.json("ca", "list")["cas"]] == ["builtin"]
    assert ctl("host", "delete", HOSTS[0]).stdout == "deleted host %s\n" % (HOSTS[0],)
    assert sorted(h["uuid"] for h in ctl.json("host", "list")["hosts"]) == sorted(HOSTS[1:] + ["IPAD-1"])
    gone = ctl("host", "show", HOSTS[0], expect=1)
    assert gone.stderr.startswith("scepproxyctl: ") and HOSTS[0] in gone.stderr

    # The static challenge went in, and came out nowhere.
    printed = "".join(ctl.printed)
    assert STATIC not in printed
    assert STATIC not in daemon.log()
    database = daemon.database
    for path in [database, database.with_name(database.name + "-wal")]:
        if path.exists():
            assert STATIC.encode() not in path.read_bytes(), path


def test_unreachable_daemon(tmp_path):
    directory = tmp_path / "daemon"
    directory.mkdir()
    daemon = Daemon(directory)  # configured, never started
    state = directory / "state"
    state.mkdir()
    (state / "admin.token").write_text("x" * 32 + "\n")
    result = run_ctl(daemon.config, "jobs")
    assert result.returncode == 1
    assert result.stderr == (
        "scepproxyctl: cannot reach the admin API at %s: Connection refused; is scepproxyd running?\n"
        % (daemon.admin_url,)
    )


def test_bad_config_exits_2(tmp_path):
    config = tmp_path / "scepproxyd.ini"
    config.write_text("[admin]\nlisten = nonsense:1\n")
    result = run_ctl(config, "jobs")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "scepproxyctl: %s: [admin] listen: not a valid Twisted endpoint description" % (config,))
