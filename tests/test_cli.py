"""scepproxyctl without a daemon: parsing, endpoints, rendering, challenges, error messages."""

from __future__ import annotations

import io
import json

import pytest

from scepproxyd.cli import build_parser
from scepproxyd.cli.challenge import read_challenge, strip_one_newline
from scepproxyd.cli.client import (
    AdminClient,
    ApiError,
    CliError,
    InvocationError,
    Target,
    api_path,
    target_from_endpoint,
    target_from_url,
)
from scepproxyd.cli.render import as_json, fields, table, text
from support.ctl import ctl_in_process

SECRET = "s3cr3t-static-challenge"


def parse(*argv):
    return build_parser().parse_args(list(argv))


def run(argv, stdin=""):
    """main() with captured streams: (exit code, stdout, stderr)."""
    return ctl_in_process(*argv, stdin=stdin)


# -- argument parsing ----------------------------------------------------------


def test_global_options_come_before_the_command():
    args = parse("--config", "/x.ini", "--url", "http://h:1", "--token-file", "/t", "--json", "ca", "list")
    assert (args.config, args.api_url, args.token_file, args.json) == ("/x.ini", "http://h:1", "/t", True)
    assert args.handler.__name__ == "ca_list"


@pytest.mark.parametrize(
    "argv",
    [
        ["ca", "list", "--config", "/x.ini", "--url", "http://h:1", "--token-file", "/t", "--json", "--timeout", "5"],
        ["ca", "--config", "/x.ini", "--url", "http://h:1", "list", "--token-file", "/t", "--json", "--timeout", "5"],
        ["--config", "/x.ini", "ca", "list", "--url", "http://h:1", "--token-file", "/t", "--json", "--timeout", "5"],
        ["--json", "--timeout", "5", "ca", "list", "--config", "/x.ini", "--url", "http://h:1", "--token-file", "/t"],
    ],
)
def test_global_options_also_come_after_the_command(argv):
    args = parse(*argv)
    assert (args.config, args.api_url, args.token_file, args.json, args.timeout) == (
        "/x.ini", "http://h:1", "/t", True, 5.0)
    assert args.handler.__name__ == "ca_list"


def test_global_options_not_given_keep_their_defaults_on_every_command(monkeypatch):
    monkeypatch.delenv("SCEPPROXYD_CONFIG", raising=False)
    for argv in (["jobs"], ["ca", "list"], ["builtin-ca", "show"], ["restore", "DIR"],
                 ["database", "copy", "--to", "postgresql://db.internal/scepproxyd"]):
        args = parse(*argv)
        assert (args.config, args.api_url, args.token_file, args.json, args.timeout) == (
            "/etc/scepproxyd/scepproxyd.ini", None, None, False, 60.0), argv


def test_global_option_after_the_command_wins_over_the_one_before():
    args = parse("--timeout", "5", "--config", "/a.ini", "jobs", "--timeout", "7")
    assert (args.timeout, args.config) == (7.0, "/a.ini")


def test_ca_add_and_edit_url_is_the_cas_and_the_admin_url_goes_before_the_command():
    args = parse("ca", "add", "UP", "--url", "http://ca.example/scep", "--json")
    assert (args.url, args.api_url, args.json) == ("http://ca.example/scep", None, True)
    args = parse("ca", "edit", "UP", "--url", "http://ca2.example/scep", "--token-file", "/t")
    assert (args.url, args.api_url, args.token_file) == ("http://ca2.example/scep", None, "/t")


@pytest.mark.parametrize(
    "argv, prog, unknown",
    [
        (["ca", "list", "--bogus"], "scepproxyctl ca list", "--bogus"),
        (["--bogus", "jobs"], "scepproxyctl jobs", "--bogus"),
        (["status", "--host", "H1", "--jsn"], "scepproxyctl status", "--jsn"),
        (["builtin-ca", "show", "--js"], "scepproxyctl builtin-ca show", "--js"),
    ],
)
def test_an_unknown_option_is_refused_by_the_command_it_was_given_to(capsys, argv, prog, unknown):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: %s " % (prog,))
    assert err.endswith("%s: error: unrecognized arguments: %s\n" % (prog, unknown))


def test_config_default_and_environment(monkeypatch):
    monkeypatch.delenv("SCEPPROXYD_CONFIG", raising=False)
    assert parse("jobs").config == "/etc/scepproxyd/scepproxyd.ini"
    monkeypatch.setenv("SCEPPROXYD_CONFIG", "/srv/scep.ini")
    assert parse("jobs").config == "/srv/scep.ini"
    assert parse("--config", "/other.ini", "jobs").config == "/other.ini"


@pytest.mark.parametrize(
    "argv, handler",
    [
        (["ca", "add", "UP", "--url", "http://ca/scep"], "ca_add"),
        (["ca", "show", "UP"], "ca_show"),
        (["ca", "edit", "UP", "--name", "UP2"], "ca_edit"),
        (["ca", "delete", "UP"], "ca_delete"),
        (["host", "add", "H1", "--serial", "S", "--platform", "macos"], "host_add"),
        (["host", "import", "hosts.csv"], "host_import"),
        (["host", "list", "--platform", "ios"], "host_list"),
        (["host", "show", "H1"], "host_show"),
        (["host", "delete", "H1"], "host_delete"),
        (["profile", "upload", "p.mobileconfig", "--platform", "ios", "--name", "Wi-Fi"], "profile_upload"),
        (["profile", "list"], "profile_list"),
        (["profile", "show", "P"], "profile_show"),
        (["profile", "delete", "P"], "profile_delete"),
        (["profile", "assign", "P", "H1", "H2"], "profile_assign"),
        (["profile", "unassign", "P"], "profile_unassign"),
        (["status", "--host", "H1", "--status", "null"], "status"),
        (["resend", "H1", "P"], "resend"),
        (["trigger", "cleanup"], "trigger"),
        (["jobs"], "jobs"),
        (["database", "copy", "--to", "postgresql://db.internal/scepproxyd", "--password-file", "pw"], "copy"),
    ],
)
def test_every_command_parses(argv, handler):
    assert parse(*argv).handler.__name__ == handler


def test_ca_add_and_edit_take_a_mode_and_an_ra_certificate_source():
    args = parse("ca", "add", "UP", "--url", "http://ca/scep", "--mode", "ra", "--ra-certificate", "self-signed")
    assert (args.mode, args.ra_certificate) == ("ra", "self-signed")
    args = parse("ca", "edit", "UP", "--mode", "passthrough")
    assert (args.mode, args.ra_certificate) == ("passthrough", None)
    args = parse("ca", "add", "UP", "--url", "http://ca/scep")
    assert (args.mode, args.ra_certificate) == (None, None)  # the API's defaults: passthrough, enroll


@pytest.mark.parametrize("argv, option, choices", [
    (["ca", "add", "UP", "--url", "http://ca/scep", "--mode", "registration"], "--mode", "'passthrough', 'ra'"),
    (["ca", "edit", "UP", "--mode", "RA"], "--mode", "'passthrough', 'ra'"),
    (["ca", "edit", "UP", "--ra-certificate", "selfsigned"], "--ra-certificate", "'enroll', 'self-signed'"),
])
def test_a_mode_or_ra_certificate_source_not_offered_is_a_usage_error(capsys, argv, option, choices):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument %s: invalid choice: " % (option,) in err
    assert "(choose from %s)" % (choices,) in err


def test_there_is_no_challenge_value_option(capsys):
    # Not even as an abbreviation of --challenge-file, which would echo the value in "cannot read".
    for argv in (["ca", "add", "UP", "--url", "http://ca/scep", "--chall", SECRET],
                 ["ca", "edit", "UP", "--challenge-f", SECRET]):
        with pytest.raises(SystemExit) as e:
            parse(*argv)
        assert e.value.code == 2


@pytest.mark.parametrize("given", [["--challenge", SECRET], ["--challenge=" + SECRET]])
def test_a_challenge_on_the_command_line_is_refused_without_echoing_it(given):
    code, out, err = run(["ca", "add", "UP", "--url", "http://ca/scep", *given])
    assert (code, out) == (2, "")
    assert err == (
        "scepproxyctl: there is no --challenge option: a challenge on the command line lands in shell history "
        "and ps; use --challenge-file FILE, or give it on stdin\n"
    )
    assert SECRET not in err


def test_global_url_and_ca_url_do_not_collide():
    args = parse("--url", "http://127.0.0.1:8081", "ca", "add", "UP", "--url", "http://ca.example/scep")
    assert (args.api_url, args.url) == ("http://127.0.0.1:8081", "http://ca.example/scep")


def test_edit_takes_one_challenge_source(capsys):
    with pytest.raises(SystemExit) as e:
        parse("ca", "edit", "UP", "--challenge-file", "f", "--challenge-stdin")
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_ca_add_needs_a_url(capsys):
    with pytest.raises(SystemExit) as e:
        parse("ca", "add", "UP")
    assert e.value.code == 2
    assert "--url" in capsys.readouterr().err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        parse()
    assert e.value.code == 2


def test_assign_wants_hosts_or_platform_not_both(tmp_path):
    token = tmp_path / "token"
    token.write_text("t" * 20)
    base = ["--url", "http://127.0.0.1:9", "--token-file", str(token)]
    code, out, err = run(base + ["profile", "assign", "P"])
    assert code == 2 and "either host UUIDs or --platform" in err
    code, out, err = run(base + ["profile", "assign", "P", "H1", "--platform", "macos"])
    assert code == 2 and "either host UUIDs or --platform" in err


def test_edit_with_nothing_to_change_is_a_usage_error(tmp_path):
    token = tmp_path / "token"
    token.write_text("t" * 20)
    code, out, err = run(["--url", "http://127.0.0.1:9", "--token-file", str(token), "ca", "edit", "UP"])
    assert (code, out) == (2, "")
    assert err == ("scepproxyctl: nothing to change; give --name, --url, --challenge-file, --challenge-stdin, "
                   "--trust-bundle, --no-trust-bundle, --tls-verify, --mode or --ra-certificate\n")


# -- endpoint -> URL -----------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, url",
    [
        ("tcp:8081:interface=127.0.0.1", "http://127.0.0.1:8081"),
        ("tcp:8081", "http://127.0.0.1:8081"),
        ("tcp:port=8081:interface=10.1.2.3", "http://10.1.2.3:8081"),
        ("tcp:8081:interface=0.0.0.0", "http://127.0.0.1:8081"),
        ("tcp:8081:interface=\\:\\:", "http://127.0.0.1:8081"),
        ("tcp:8081:interface=\\:\\:1", "http://[::1]:8081"),
        ("tcp6:8081:interface=\\:\\:1", "http://[::1]:8081"),
        ("tcp:8081:backlog=10:interface=192.0.2.7", "http://192.0.2.7:8081"),
        ("tcp:8081:192.0.2.8", "http://192.0.2.8:8081"),
        ("unix:/var/lib/scepproxyd/admin.sock:mode=600", "unix:/var/lib/scepproxyd/admin.sock"),
        ("unix:/run/admin.sock", "unix:/run/admin.sock"),
        ("unix:address=/run/admin.sock:lockfile=1", "unix:/run/admin.sock"),
    ],
)
def test_endpoint_to_target(endpoint, url):
    assert str(target_from_endpoint(endpoint)) == url


def test_unix_endpoint_target_fields():
    assert target_from_endpoint("unix:/run/a.sock:mode=600") == Target("unix", path="/run/a.sock")


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("systemd:domain=INET:index=0", "is a socket that systemd opens, so it does not say where the admin API is; "
                                        "set [admin] url = http://HOST:PORT in the config (the address of the socket "
                                        "unit's ListenStream=), or pass --url http://HOST:PORT"),
        ("ssl:8443:privateKey=k.pem", "is not a tcp: or unix: endpoint"),
        ("tcp:interface=127.0.0.1", "has no port a client can connect to"),
        ("tcp:0", "has no port a client can connect to"),
        ("unix:", "names no socket path"),
    ],
)
def test_endpoints_a_client_cannot_use(endpoint, message):
    with pytest.raises(InvocationError) as e:
        target_from_endpoint(endpoint)
    assert message in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "url, target",
    [
        ("http://127.0.0.1:8081", Target("http", "127.0.0.1", 8081)),
        ("http://admin.example:9000/", Target("http", "admin.example", 9000)),
        ("https://admin.example", Target("https", "admin.example", 443)),
        ("http://[::1]:8081", Target("http", "::1", 8081)),
    ],
)
def test_url_option(url, target):
    assert target_from_url(url) == target


@pytest.mark.parametrize("url", ["127.0.0.1:8081", "ftp://h:1", "http://h:1/api/v1", "http://u:p@h:1", "http://h:x"])
def test_bad_url_option(url):
    with pytest.raises(InvocationError):
        target_from_url(url)


def test_api_path_escapes_segments_and_drops_empty_query():
    assert api_path("cas") == "/api/v1/cas"
    assert api_path("cas", "a/b c") == "/api/v1/cas/a%2Fb%20c"
    assert api_path("hosts", query={"platform": None}) == "/api/v1/hosts"
    assert api_path("host-profiles", query={"host": "H 1", "status": "null", "profile": None}) == (
        "/api/v1/host-profiles?host=H+1&status=null"
    )


# -- rendering -----------------------------------------------------------------


def test_table_aligns_columns_and_shows_null_as_dash():
    rendered = table(("HOST", "STATUS", "RETRIES"), [("H1", None, 0), ("LONG-HOST-2", "pending", 12)])
    assert rendered.splitlines() == [
        "HOST         STATUS   RETRIES",
        "H1           -        0",
        "LONG-HOST-2  pending  12",
    ]


def test_table_last_column_is_not_padded():
    assert table(("A", "B"), [("x", "")]) == "A  B\nx  -"


def test_text_of_values():
    assert text(None) == "-"
    assert text("") == "-"
    assert text([]) == "-"
    assert text(["a", "b"]) == "a, b"
    assert text(3) == "3"


def test_fields_align_values():
    assert fields([("name", "UP"), ("created_at", None)]) == "name:       UP\ncreated_at: -"


def test_json_output_is_pretty_and_sorted():
    assert as_json({"b": 1, "a": [None]}) == '{\n  "a": [\n    null\n  ],\n  "b": 1\n}'


# -- challenges ----------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_challenge_from_file_strips_one_newline(tmp_path):
    path = tmp_path / "challenge"
    path.write_text(SECRET + "\n\n")
    assert read_challenge(str(path), io.StringIO(), "prompt") == SECRET + "\n"
    path.write_text(SECRET + "  \r\n")
    assert read_challenge(str(path), io.StringIO(), "prompt") == SECRET + "  "


def test_challenge_from_piped_stdin():
    assert read_challenge(None, io.StringIO(SECRET + "\n"), "prompt") == SECRET
    assert read_challenge("-", io.StringIO(SECRET), "prompt") == SECRET


def test_challenge_on_a_terminal_is_prompted_without_echo():
    asked = []

    def ask(prompt):
        asked.append(prompt)
        return SECRET

    stdin = FakeTty("must not be read")
    assert read_challenge(None, stdin, "Static challenge for CA UP: ", ask=ask) == SECRET
    assert asked == ["Static challenge for CA UP: "]
    assert stdin.tell() == 0


def test_challenge_file_missing(tmp_path):
    with pytest.raises(CliError) as e:
        read_challenge(str(tmp_path / "nope"), io.StringIO(), "prompt")
    assert str(e.value) == "cannot read the challenge from %s: No such file or directory" % (tmp_path / "nope",)


def test_strip_one_newline():
    assert strip_one_newline("a\n") == "a"
    assert strip_one_newline("a\r\n") == "a"
    assert strip_one_newline("a\n\n") == "a\n"
    assert strip_one_newline("a ") == "a "


# -- errors --------------------------------------------------------------------


def test_api_error_message_with_and_without_field():
    assert str(ApiError(422, "url must not have a fragment", "url")) == "url must not have a fragment (field: url)"
    assert str(ApiError(404, "no CA named 'X'")) == "no CA named 'X'"


def test_connection_refused_names_the_url_and_asks_if_running(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        client = AdminClient(Target("http", "127.0.0.1", port), "t" * 20, "/tok")
        with pytest.raises(CliError) as e:
            client.request("GET", "/api/v1/jobs")
    assert str(e.value) == (
        "cannot reach the admin API at http://127.0.0.1:%d: Connection refused; is scepproxyd running?" % (port,)
    )


def test_missing_unix_socket_is_unreachable(tmp_path):
    client = AdminClient(Target("unix", path=str(tmp_path / "gone.sock")), "t" * 20, "/tok")
    with pytest.raises(CliError) as e:
        client.request("GET", "/api/v1/jobs")
    assert str(e.value) == (
        "cannot reach the admin API at unix:%s: No such file or directory; is scepproxyd running?"
        % (tmp_path / "gone.sock",)
    )


def test_bad_config_is_the_config_error_and_exit_2(tmp_path):
    config = tmp_path / "bad.ini"
    config.write_text("[admin]\nlisen = tcp:1\n")
    code, out, err = run(["--config", str(config), "jobs"])
    assert (code, out) == (2, "")
    assert err == (
        "scepproxyctl: %s: [admin] lisen: unknown key; valid keys in [admin] are: listen, token_file, max_connections, max_profile_bytes, url\n" % (config,)
    )


def test_missing_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCEPPROXYD_CONFIG", str(tmp_path / "none.ini"))
    code, out, err = run(["jobs"])
    assert (code, out) == (2, "")
    assert err == (
        "scepproxyctl: %s: cannot read configuration file: No such file or directory\n" % (tmp_path / "none.ini",)
    )


def test_url_and_token_file_need_no_config(tmp_path):
    token = tmp_path / "token"
    token.write_text("t" * 20)
    # Reaches the network step (refused), so no config file was needed.
    code, out, err = run(["--config", str(tmp_path / "none.ini"), "--url", "http://127.0.0.1:9",
                          "--token-file", str(token), "jobs"])
    assert code == 1
    assert "cannot reach the admin API at http://127.0.0.1:9" in err


def test_missing_token_file_says_where_it_looked(tmp_path):
    code, out, err = run(["--url", "http://127.0.0.1:9", "--token-file", str(tmp_path / "admin.token"), "jobs"])
    assert code == 1
    assert err == (
        "scepproxyctl: cannot read the admin token file %s: no such file; scepproxyd makes it on first start "
        "(wrong --config?)\n" % (tmp_path / "admin.token",)
    )


def test_empty_token_file(tmp_path):
    token = tmp_path / "admin.token"
    token.write_text("\n")
    code, out, err = run(["--url", "http://127.0.0.1:9", "--token-file", str(token), "jobs"])
    assert (code, err) == (1, "scepproxyctl: the admin token file %s is empty\n" % (token,))


def test_token_file_from_config_state_directory(tmp_path):
    config = tmp_path / "etc" / "scepproxyd.ini"
    config.parent.mkdir()
    config.write_text("[state]\ndirectory = ../state\n[admin]\nlisten = tcp:9:interface=0.0.0.0\n")
    code, out, err = run(["--config", str(config), "jobs"])
    assert code == 1
    assert "cannot read the admin token file %s" % (tmp_path / "state" / "admin.token",) in err



def test_restore_reads_a_socket_activated_config(tmp_path):
    """restore reads the whole file, as the daemon does; systemd: listeners are checked for form only."""
    config = tmp_path / "scepproxyd.ini"
    config.write_text("[state]\ndirectory = state\n[server]\nlisten = systemd:domain=INET:name=scep\n"
                      "[admin]\nlisten = systemd:domain=INET:name=admin\n")
    code, out, err = run(["restore", str(tmp_path / "nothing"), "--config", str(config)])
    assert (code, out) == (1, "")
    assert err == ("scepproxyctl: %s has no MANIFEST.json: it is not a scepproxyd backup, or the backup did not "
                   "finish\n" % (tmp_path / "nothing",))


def test_cells_show_controls_newlines_and_bidi_escaped():
    hostile = "S1\x1b[2J\x1b]0;t\x07\n\r\t\x00\x7f\x9b\u202e\u2066\u200f\ud800 é日本\\"
    shown = "S1\\x1b[2J\\x1b]0;t\\x07\\n\\r\\t\\x00\\x7f\\x9b\\u202e\\u2066\\u200f\\ud800 é日本\\"
    assert text(hostile) == shown
    assert table(("UUID", "SERIAL"), [("h", hostile), ("g", "x")]).split("\n") == [
        "UUID  SERIAL", "h     " + shown, "g     x"]
    assert fields([("serial", hostile)]) == "serial: " + shown
    assert json.loads(as_json({"serial": hostile.replace("\ud800", "")}))["serial"] == hostile.replace("\ud800", "")
