"""
Tests for scepproxyd.config: the shipped file, defaults, and one clear message
per bad value.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs
import pytest
from twisted.logger import LogLevel

from scepproxyd.config import (
    ConfigError,
    Settings,
    load_settings,
    parse_duration,
    parse_settings,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "scepproxyd.ini"
CONFIG = Path("/srv/scep/etc/scepproxyd.ini")


def parse(text: str, config_path: Path = CONFIG) -> Settings:
    return parse_settings(text, config_path)


def refused(text: str, config_path: Path = CONFIG) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, config_path)
    return info.value


# -- the shipped file -------------------------------------------------------


def test_shipped_config_loads_with_state_under_repo_var():
    settings = load_settings(SHIPPED)
    assert settings.config_path == SHIPPED
    assert settings.state_directory == REPO / "var"
    assert settings.database.path == REPO / "var" / "scepproxyd.sqlite3"


def test_shipped_config_equals_the_defaults():
    """The shipped file documents the defaults; it must not drift from them."""
    shipped = load_settings(SHIPPED)
    defaults = parse_settings("", SHIPPED)
    assert shipped == defaults


def test_shipped_config_loads_from_relative_path(monkeypatch):
    """twistd is usually started from the checkout with a relative --config."""
    monkeypatch.chdir(REPO)
    settings = load_settings("etc/scepproxyd.ini")
    assert settings.config_path == SHIPPED
    assert settings.state_directory == REPO / "var"


def test_shipped_config_does_not_create_state_directory(tmp_path):
    config = tmp_path / "etc" / "scepproxyd.ini"
    config.parent.mkdir()
    config.write_text(SHIPPED.read_text())
    settings = load_settings(config)
    assert settings.state_directory == tmp_path / "var"
    assert not settings.state_directory.exists()


# -- defaults ---------------------------------------------------------------


def test_defaults_when_file_is_empty():
    settings = parse("")
    assert settings.config_path == CONFIG
    assert settings.state_directory == Path("/srv/scep/var")
    assert settings.server.listen == "tcp:8080:interface=127.0.0.1"
    assert settings.server.public_url == "http://127.0.0.1:8080"
    assert settings.server.max_body_bytes == 65536
    assert settings.server.idle_timeout == 30.0
    assert settings.database.path == Path("/srv/scep/var/scepproxyd.sqlite3")
    assert settings.database.busy_timeout == 5.0
    assert settings.challenges.ttl == 3600.0
    assert settings.challenges.cleanup_interval == 300.0
    assert settings.upstream.connect_timeout == 5.0
    assert settings.upstream.response_timeout == 30.0
    assert settings.upstream.body_timeout == 30.0
    assert settings.upstream.max_response_bytes == 1024 * 1024
    assert settings.admin.max_profile_bytes == 1024 * 1024
    assert settings.upstream.caps_cache_seconds == 60.0
    assert settings.logging.level is LogLevel.info
    assert settings.key_file == Path("/srv/scep/var/secrets.key")
    assert settings.admin.listen == "tcp:8081:interface=127.0.0.1"
    assert settings.admin.token_file == Path("/srv/scep/var/admin.token")
    assert settings.server.max_connections == 800
    assert settings.server.target_cache_seconds == 5.0
    assert settings.admin.max_connections == 64
    assert settings.database.write_probe_interval == 10.0
    assert (settings.database.url, settings.database.password_file, settings.database.pool_size) == (None, None, 4)
    assert (settings.database.engine, settings.database.target) == ("sqlite", settings.database.path)


def test_database_on_postgresql(tmp_path):
    settings = parse("[database]\nurl = postgresql://scepproxyd@db.internal:5432/scepproxyd\n"
                     "password_file = db.password\n")
    assert settings.database.engine == "postgresql"
    assert settings.database.target == "postgresql://scepproxyd@db.internal:5432/scepproxyd"
    assert settings.database.password_file == Path("/srv/scep/var/db.password")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert attrs.evolve(settings.database, password_file=secret).password() == "s3cret"


def test_database_url_with_a_password_is_refused_without_repeating_it():
    error = refused("[database]\nurl = postgresql://u:s3cret@db/scep\n")
    assert "must not hold a password" in error.problem
    assert "s3cret" not in str(error)
    assert str(error).endswith(", got 'postgresql://u:***@db/scep'")


def test_password_file_needs_a_postgresql_url():
    error = refused("[database]\npassword_file = db.password\n")
    assert (error.section, error.key) == ("database", "password_file")
    assert "applies to a postgresql:// url only" in str(error)


def test_section_present_other_keys_default():
    settings = parse("[server]\nidle_timeout = 10\n[upstream]\n")
    assert settings.server.idle_timeout == 10.0
    assert settings.server.max_body_bytes == 65536
    assert settings.upstream == parse("").upstream


def test_settings_are_immutable():
    settings = parse("")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.server.listen = "tcp:1"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.state_directory = Path("/")  # type: ignore[misc]


def test_all_keys_given():
    settings = parse(
        """
        [state]
        directory = /var/lib/scepproxyd
        [server]
        listen = unix:/run/scepproxyd/scep.sock
        public_url = https://mdm.example.com/scep/
        max_body_bytes = 1M
        idle_timeout = 1m
        target_cache_seconds = 0
        [database]
        path = db/main.sqlite3
        busy_timeout = 2.5
        [challenges]
        ttl = 2d
        cleanup_interval = 90s
        [upstream]
        connect_timeout = 1s
        response_timeout = 2m
        body_timeout = 45
        max_response_bytes = 512k
        caps_cache_seconds = 0
        [logging]
        level = DEBUG
        """.replace("        ", "")
    )
    assert settings.state_directory == Path("/var/lib/scepproxyd")
    assert settings.server.listen == "unix:/run/scepproxyd/scep.sock"
    assert settings.server.public_url == "https://mdm.example.com/scep"
    assert settings.server.max_body_bytes == 1024 * 1024
    assert settings.server.idle_timeout == 60.0
    assert settings.server.target_cache_seconds == 0.0
    assert settings.database.path == Path("/var/lib/scepproxyd/db/main.sqlite3")
    assert settings.database.busy_timeout == 2.5
    assert settings.challenges.ttl == 2 * 86400.0
    assert settings.challenges.cleanup_interval == 90.0
    assert settings.upstream.connect_timeout == 1.0
    assert settings.upstream.response_timeout == 120.0
    assert settings.upstream.body_timeout == 45.0
    assert settings.upstream.max_response_bytes == 512 * 1024
    assert settings.upstream.caps_cache_seconds == 0.0
    assert settings.logging.level is LogLevel.debug


def test_inline_comments_and_key_case():
    settings = parse("[server]\nIdle_Timeout = 10s ; ten seconds\n")
    assert settings.server.idle_timeout == 10.0


@pytest.mark.parametrize(
    "name, level",
    [
        ("debug", LogLevel.debug),
        ("info", LogLevel.info),
        ("warn", LogLevel.warn),
        ("warning", LogLevel.warn),
        ("error", LogLevel.error),
        ("Critical", LogLevel.critical),
    ],
)
def test_log_levels(name, level):
    assert parse("[logging]\nlevel = %s\n" % (name,)).logging.level is level


# -- paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "directory, path, state, database",
    [
        ("../var", "scepproxyd.sqlite3", "/srv/scep/var", "/srv/scep/var/scepproxyd.sqlite3"),
        ("state", "x.db", "/srv/scep/etc/state", "/srv/scep/etc/state/x.db"),
        (".", "../db/x.db", "/srv/scep/etc", "/srv/scep/db/x.db"),
        ("/var/lib/scepproxyd", "x.db", "/var/lib/scepproxyd", "/var/lib/scepproxyd/x.db"),
        ("../var", "/data/x.db", "/srv/scep/var", "/data/x.db"),
    ],
)
def test_path_resolution(directory, path, state, database):
    settings = parse("[state]\ndirectory = %s\n[database]\npath = %s\n" % (directory, path))
    assert settings.state_directory == Path(state)
    assert settings.database.path == Path(database)


def test_relative_config_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = parse("", Path("conf/scepproxyd.ini"))
    assert settings.config_path == tmp_path / "conf" / "scepproxyd.ini"
    assert settings.state_directory == tmp_path / "var"
    assert settings.database.path.is_absolute()


# -- public_url -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://mdm.example.com/", "https://mdm.example.com"),
        ("https://mdm.example.com///", "https://mdm.example.com"),
        ("https://mdm.example.com/scep/", "https://mdm.example.com/scep"),
        ("HTTPS://mdm.example.com:8443", "HTTPS://mdm.example.com:8443"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
    ],
)
def test_public_url_normalised(value, expected):
    assert parse("[server]\npublic_url = %s\n" % (value,)).server.public_url == expected


@pytest.mark.parametrize(
    "value, problem",
    [
        ("ftp://mdm.example.com", "absolute http:// or https:// URL"),
        ("mdm.example.com", "absolute http:// or https:// URL"),
        ("/mdm", "absolute http:// or https:// URL"),
        ("http://", "absolute http:// or https:// URL"),
        ("http:///path", "absolute http:// or https:// URL"),
        ("http://:8080", "absolute http:// or https:// URL"),
        ("http://h:99999", "absolute http:// or https:// URL"),
        ("http://h:port", "absolute http:// or https:// URL"),
        ("https://mdm.example.com/?a=1", "query string or fragment"),
        ("https://mdm.example.com?", "query string or fragment"),
        ("https://mdm.example.com/#x", "query string or fragment"),
        ("https://user:pw@mdm.example.com", "user name or password"),
        ("https://mdm.example.com/a b", "spaces"),
    ],
)
def test_public_url_refused(value, problem):
    error = refused("[server]\npublic_url = %s\n" % (value,))
    assert (error.section, error.key) == ("server", "public_url")
    assert problem in error.problem
    assert repr(value) in str(error)


# -- listen -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "tcp:8080",
        "tcp:port=443:interface=0.0.0.0",
        "tcp6:8080:interface=\\:\\:1",
        "unix:/run/x.sock",
    ],
)
def test_listen_accepted(value):
    assert parse("[server]\nlisten = %s\n" % (value,)).server.listen == value


@pytest.mark.parametrize(
    "value",
    [
        "tcp:abc",
        "bogus:8080",
        "tcp:8080:nonsense=1",
        "tcp:8080:backlog=x",
        "ssl:443:privateKey=/nonexistent/key.pem",
    ],
)
def test_listen_refused(value):
    error = refused("[server]\nlisten = %s\n" % (value,))
    assert str(error).startswith(
        "/srv/scep/etc/scepproxyd.ini: [server] listen: not a valid Twisted endpoint description: "
    )
    assert repr(value) in str(error)


def test_listen_systemd_checked_for_form_only(monkeypatch):
    """scepproxyctl reads the production file outside systemd; the daemon checks the socket at start."""
    monkeypatch.delenv("LISTEN_PID", raising=False)
    assert parse("[server]\nlisten = systemd:domain=INET:name=scep\n").server.listen == "systemd:domain=INET:name=scep"
    for bad in ("systemd:domain=INET", "systemd:domain=IPX:name=a", "systemd:domain=INET:index=x"):
        assert "not a valid Twisted endpoint description" in refused("[server]\nlisten = %s\n" % bad).problem


def test_admin_url_is_for_scepproxyctl_and_optional():
    assert parse("").admin.url is None
    settings = parse("[admin]\nlisten = systemd:domain=INET:name=admin\nurl = http://127.0.0.1:8081/\n")
    assert (settings.admin.listen, settings.admin.url) == ("systemd:domain=INET:name=admin", "http://127.0.0.1:8081")


# -- one message per bad value ----------------------------------------------


BAD_VALUES = [
    ("server", "max_body_bytes", "lots", "whole number of bytes between 1024 and 104857600"),
    ("server", "max_body_bytes", "1023", "whole number of bytes"),
    ("server", "max_body_bytes", "101M", "whole number of bytes"),
    ("server", "max_body_bytes", "1.5k", "whole number of bytes"),
    ("server", "max_body_bytes", "-64k", "whole number of bytes"),
    ("server", "idle_timeout", "0", "greater than 0 and at most 1 hour"),
    ("server", "idle_timeout", "2h", "greater than 0 and at most 1 hour"),
    ("server", "idle_timeout", "soon", "must be a duration"),
    ("database", "busy_timeout", "-5s", "greater than 0 and at most 10 minutes"),
    ("database", "busy_timeout", "nan", "must be a duration"),
    ("database", "write_probe_interval", "0", "greater than 0 and at most 1 hour"),
    ("database", "url", "mysql://db/scep", "must be - (SQLite at path) or a postgresql:// URL"),
    ("database", "url", "postgresql://db", "must name the database"),
    ("database", "url", "postgresql://db:port/scep", "is not a valid URL"),
    ("database", "pool_size", "0", "whole number from 1 to 64"),
    ("server", "max_connections", "0", "whole number from 1 to 1000000"),
    ("server", "target_cache_seconds", "-1", "from 0 to 1 hour"),
    ("server", "target_cache_seconds", "2h", "from 0 to 1 hour"),
    ("server", "max_connections", "lots", "whole number from 1 to 1000000"),
    ("admin", "max_connections", "100001", "whole number from 1 to 100000"),
    ("delivery", "max_unused_challenges", "0", "whole number from 1 to 1000000"),
    ("delivery", "stuck_after", "30s", "from 1 minute to 30 days"),
    ("delivery", "stuck_after", "31d", "from 1 minute to 30 days"),
    ("delivery", "stuck_after", "soon", "must be a duration"),
    ("challenges", "ttl", "59s", "from 1 minute to 30 days"),
    ("challenges", "ttl", "31d", "from 1 minute to 30 days"),
    ("challenges", "ttl", "inf", "from 1 minute to 30 days"),
    ("challenges", "cleanup_interval", "0", "from 1 second to 1 day"),
    ("challenges", "cleanup_interval", "5 minutes", "must be a duration"),
    ("upstream", "connect_timeout", "0s", "greater than 0 and at most 10 minutes"),
    ("upstream", "response_timeout", "1e3", "greater than 0 and at most 1 hour"),
    ("upstream", "body_timeout", "30ms", "greater than 0 and at most 1 hour"),
    ("upstream", "max_response_bytes", "1G", "whole number of bytes"),
    ("admin", "max_profile_bytes", "17M", "whole number of bytes"),
    ("admin", "url", "127.0.0.1:8081", "absolute http:// or https:// URL"),
    ("admin", "url", "http://127.0.0.1:8081/api/v1", "with no path"),
    ("admin", "url", "http://u:p@127.0.0.1:8081", "user name or password"),
    ("upstream", "caps_cache_seconds", "-1", "from 0 to 1 day"),
    ("upstream", "caps_cache_seconds", "2d", "from 0 to 1 day"),
    ("logging", "level", "loud", "one of debug, info, warn, error, critical"),
    ("logging", "level", "10", "one of debug, info, warn, error, critical"),
]


@pytest.mark.parametrize("section, key, value, expected", BAD_VALUES)
def test_bad_value_message(section, key, value, expected):
    error = refused("[%s]\n%s = %s\n" % (section, key, value))
    assert (error.path, error.section, error.key) == (str(CONFIG), section, key)
    assert str(error).startswith("%s: [%s] %s: " % (CONFIG, section, key))
    assert expected in error.problem
    assert str(error).endswith(", got %r" % (value,))


def test_message_matches_documented_example():
    error = refused("[server]\nmax_body_bytes = lots\n", Path("etc/scepproxyd.ini"))
    assert str(error) == (
        "etc/scepproxyd.ini: [server] max_body_bytes: must be a whole number of bytes"
        " between 1024 and 104857600, got 'lots'"
    )


EVERY_KEY = [
    ("state", "directory"),
    ("state", "key_file"),
    ("server", "listen"),
    ("server", "public_url"),
    ("server", "max_body_bytes"),
    ("server", "idle_timeout"),
    ("server", "request_timeout"),
    ("server", "shutdown_grace"),
    ("server", "max_connections"),
    ("server", "tls_certificate"),
    ("server", "tls_key"),
    ("server", "tls_chain"),
    ("server", "target_cache_seconds"),
    ("database", "path"),
    ("database", "busy_timeout"),
    ("database", "write_probe_interval"),
    ("database", "url"),
    ("database", "password_file"),
    ("database", "pool_size"),
    ("challenges", "ttl"),
    ("challenges", "cleanup_interval"),
    ("upstream", "connect_timeout"),
    ("upstream", "response_timeout"),
    ("upstream", "body_timeout"),
    ("upstream", "max_response_bytes"),
    ("upstream", "caps_cache_seconds"),
    ("logging", "level"),
    ("admin", "listen"),
    ("admin", "token_file"),
    ("admin", "max_connections"),
    ("admin", "max_profile_bytes"),
    ("admin", "url"),
    ("profiles", "process_interval"),
    ("profiles", "batch_size"),
    ("profiles", "max_retries"),
    ("renewal", "interval"),
    ("renewal", "threshold"),
    ("renewal", "short_fraction"),
    ("renewal", "limit"),
    ("renewal", "limit_interval"),
    ("renewal", "ca_limits"),
    ("delivery", "backend"),
    ("delivery", "nanomdm_url"),
    ("delivery", "nanomdm_api_key_file"),
    ("delivery", "webhook_token_file"),
    ("delivery", "command_retention"),
    ("delivery", "max_unused_challenges"),
    ("delivery", "stuck_after"),
    ("ca", "enabled"),
    ("ca", "name"),
    ("ca", "key_file"),
    ("ca", "certificate_file"),
    ("ca", "import_key"),
    ("ca", "import_certificate"),
    ("ca", "import_key_password_file"),
    ("ca", "key_size"),
    ("ca", "subject"),
    ("ca", "lifetime"),
    ("ca", "ra"),
    ("ca", "challenge_file"),
    ("ca", "static_challenge"),
    ("ca", "allow_renew_days"),
    ("ca", "auto_approve"),
    ("ca", "auto_approve_subject"),
    ("ca", "auto_approve_networks"),
    ("ca", "crl_validity"),
    ("ca", "certificate_validity"),
    ("ca", "key_usage"),
    ("ca", "extended_key_usage"),
    ("ca", "default_template"),
    ("ca", "key_rsa_min_bits"),
    ("ca", "key_rsa_exponents"),
    ("ca", "key_ec_curves"),
    ("ca", "key_allow_ed25519"),
    ("ca", "san_dns"),
    ("ca", "san_email"),
    ("ca", "san_uri"),
    ("ca", "san_ip"),
    ("ca", "san_upn"),
]


@pytest.mark.parametrize("section, key", EVERY_KEY)
def test_empty_value_refused(section, key):
    error = refused("[%s]\n%s =\n" % (section, key))
    assert str(error) == "%s: [%s] %s: must not be empty" % (CONFIG, section, key)


def test_every_key_is_tested():
    """Adding a key without adding it to these tests fails here."""
    from scepproxyd.config import _SCHEMA

    assert [(s, k) for s, keys in _SCHEMA.items() for k in keys] == EVERY_KEY


# -- unknown names, malformed files, missing files --------------------------


def test_unknown_section():
    error = refused("[sever]\nlisten = tcp:1\n")
    assert (error.section, error.key) == ("sever", None)
    assert str(error) == (
        "%s: [sever]: unknown section; valid sections are: "
        "state, server, database, challenges, upstream, logging, admin, profiles, renewal, delivery, ca, and [template.NAME]" % (CONFIG,)
    )


def test_default_section_is_not_special():
    error = refused("[DEFAULT]\nidle_timeout = 5\n")
    assert error.section == "DEFAULT"
    assert "unknown section" in error.problem


def test_unknown_key():
    error = refused("[server]\nlisen = tcp:1\n")
    assert (error.section, error.key) == ("server", "lisen")
    assert str(error) == (
        "%s: [server] lisen: unknown key; valid keys in [server] are: "
        "listen, public_url, max_body_bytes, idle_timeout, request_timeout, shutdown_grace, max_connections, "
        "tls_certificate, tls_key, tls_chain, target_cache_seconds" % (CONFIG,)
    )


def test_key_outside_section():
    error = refused("listen = tcp:1\n[server]\n")
    assert str(error) == "%s: line 1: 'listen = tcp:1' is outside any [section]" % (CONFIG,)


def test_colon_is_not_a_delimiter():
    error = refused("[server]\nlisten: tcp:1\n")
    assert "line 2: not valid INI, expected 'key = value'" in str(error)


def test_duplicate_key():
    error = refused("[server]\nlisten = tcp:1\nlisten = tcp:2\n")
    assert (error.section, error.key) == ("server", "listen")
    assert "given twice (line 3)" in str(error)


def test_duplicate_section():
    error = refused("[server]\n[logging]\n[server]\n")
    assert error.section == "server"
    assert "section given twice (line 3)" in str(error)


def test_line_that_is_not_a_key():
    error = refused("[server]\nlisten tcp:1\n")
    assert str(error) == (
        "%s: line 2: not valid INI, expected 'key = value', got 'listen tcp:1'" % (CONFIG,)
    )


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(info.value) == "%s: cannot read configuration file: No such file or directory" % (
        missing,
    )
    assert info.value.path == str(missing)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert str(info.value).startswith("%s: cannot read configuration file: " % (tmp_path,))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    config = tmp_path / "secret.ini"
    config.write_text("")
    config.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "Permission denied" in str(info.value)


def test_file_not_utf8(tmp_path):
    config = tmp_path / "latin1.ini"
    config.write_bytes(b"; caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert str(info.value).startswith("%s: cannot read configuration file: " % (config,))


def test_file_with_utf8_bom(tmp_path):
    """Windows editors like to start files with a byte order mark."""
    config = tmp_path / "bom.ini"
    config.write_bytes(b"\xef\xbb\xbf[logging]\nlevel = warn\n")
    assert load_settings(config).logging.level is LogLevel.warn


def test_load_settings_accepts_str(tmp_path):
    config = tmp_path / "a.ini"
    config.write_text("[logging]\nlevel = error\n")
    assert load_settings(str(config)).logging.level is LogLevel.error


# -- parse_duration / parse_size --------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("2.", 2.0),
        (".5", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
        ("007", 7.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        *("", "s", "-1", "+1", "1e3", "nan", "inf", "NaN", "1ms", "1 min", "1H", "1w"),
        *("1.2.3", "1s2", "9" * 400, "\u0663"),
    ],
)
def test_parse_duration_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_is_always_finite():
    for digits in range(1, 330, 7):
        text = "9" * digits + "d"
        try:
            value = parse_duration(text)
        except ValueError:
            continue
        assert math.isfinite(value) and value >= 0


@pytest.mark.parametrize(
    "text, size",
    [
        ("0", 0),
        ("1024", 1024),
        ("64k", 65536),
        ("64K", 65536),
        ("1m", 1048576),
        ("1M", 1048576),
        ("100M", 104857600),
        (" 2 k ", 2048),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "k", "-1", "1.5k", "1kb", "1KiB", "1G", "1e6", "0x400", "\u0663k"]
)
def test_parse_size_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_size_and_duration_bounds_are_inclusive():
    settings = parse(
        "[server]\nmax_body_bytes = 1024\nidle_timeout = 1h\n"
        "[challenges]\nttl = 60\n[upstream]\nmax_response_bytes = 100M\n"
        "caps_cache_seconds = 1d\n"
    )
    assert settings.server.max_body_bytes == 1024
    assert settings.server.idle_timeout == 3600.0
    assert settings.challenges.ttl == 60.0
    assert settings.upstream.max_response_bytes == 104857600
    assert settings.upstream.caps_cache_seconds == 86400.0


def test_admin_listener_must_not_be_the_proxy_listener():
    error = refused("[server]\nlisten = tcp:9000\n[admin]\nlisten = tcp:9000\n")
    assert (error.section, error.key) == ("admin", "listen")
    assert "must differ from [server] listen" in error.problem


def test_bad_admin_endpoint():
    error = refused("[admin]\nlisten = bogus:1\n")
    assert (error.section, error.key) == ("admin", "listen")
    assert "not a valid Twisted endpoint description" in error.problem


@pytest.mark.parametrize(
    "text, section, key, expected",
    [
        ("[profiles]\nbatch_size = 0\n", "profiles", "batch_size", "must be a whole number from 1 to 100000, got '0'"),
        ("[profiles]\nmax_retries = -1\n", "profiles", "max_retries", "must be a whole number from 0 to 1000"),
        ("[renewal]\nshort_fraction = 1.5\n", "renewal", "short_fraction", "between 0 and 1"),
        ("[delivery]\nbackend = pigeon\n", "delivery", "backend", "must be one of outbox, nanomdm, got 'pigeon'"),
        ("[delivery]\nbackend = nanomdm\n", "delivery", "nanomdm_url", "is required when backend = nanomdm"),
        ("[delivery]\nnanomdm_url = ftp://x\n", "delivery", "nanomdm_url", "absolute http"),
    ],
)
def test_engine_settings_refused(text, section, key, expected):
    error = refused(text)
    assert (error.section, error.key) == (section, key)
    assert expected in error.problem


def test_engine_defaults():
    settings = parse("")
    assert settings.profiles.process_interval == 30.0
    assert settings.profiles.max_retries == 3
    assert settings.renewal.interval == 86400.0
    assert settings.renewal.threshold == 30 * 86400.0
    assert settings.renewal.short_fraction == 0.5
    assert settings.delivery.backend == "outbox" and settings.delivery.nanomdm_url is None
    assert settings.delivery.max_unused_challenges == 1000
    assert settings.delivery.stuck_after == 12 * 3600.0
    assert parse("[delivery]\nstuck_after = 90m\n").delivery.stuck_after == 5400.0
    assert settings.retired_agent_token_file == Path("/srv/scep/var/agent.token")
    assert settings.ignored == ()


# -- renewal pacing ---------------------------------------------------------


def test_renewal_pacing_defaults():
    """A limit high enough that a small site never notices it, per hour, and no per-CA overrides."""
    renewal = parse("").renewal
    assert (renewal.limit, renewal.limit_interval, renewal.ca_limits) == (1000, 3600.0, ())


@pytest.mark.parametrize(
    "lines, expected",
    [
        ("limit = 200\nlimit_interval = 10m", (200, 600.0, ())),
        ("limit = none", (None, 3600.0, ())),
        ("limit = NONE\nlimit_interval = 7d", (None, 7 * 86400.0, ())),
        ("limit = 1000000\nlimit_interval = 1m", (1000000, 60.0, ())),
        ("ca_limits = ndes:200", (1000, 3600.0, (("ndes", 200),))),
        ("ca_limits = ndes : 200 ,builtin:none, -:5", (1000, 3600.0, (("ndes", 200), ("builtin", None), ("-", 5)))),
        ("limit = none\nca_limits = ndes:50", (None, 3600.0, (("ndes", 50),))),
    ],
)
def test_renewal_pacing_values(lines, expected):
    renewal = parse("[renewal]\n%s\n" % (lines,)).renewal
    assert (renewal.limit, renewal.limit_interval, renewal.ca_limits) == expected


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("limit", "0", "must not be 0, which would stop renewals and let every certificate expire; "
                       "write none for no limit, got '0'"),
        ("limit", "-5", "must be a whole number of renewals from 1 to 1000000, or none for no limit, got '-5'"),
        ("limit", "lots", "must be a whole number of renewals from 1 to 1000000, or none for no limit, got 'lots'"),
        ("limit", "1000001", "must be a whole number of renewals from 1 to 1000000, or none for no limit"),
        ("limit", "2.5", "must be a whole number of renewals from 1 to 1000000, or none for no limit"),
        ("limit_interval", "30s", "must be a duration from 1 minute to 7 days"),
        ("limit_interval", "8d", "must be a duration from 1 minute to 7 days"),
        ("limit_interval", "hourly", "must be a duration from 1 minute to 7 days"),
        ("ca_limits", "ndes", "each entry must be CA_NAME:LIMIT, e.g. ndes:200 or builtin:none, got 'ndes'"),
        ("ca_limits", "ndes=200", "each entry must be CA_NAME:LIMIT, e.g. ndes:200 or builtin:none, got 'ndes=200'"),
        ("ca_limits", "ndes:200,", "has an empty entry (a stray comma?); expected NAME:LIMIT, ..., got 'ndes:200,'"),
        ("ca_limits", "my ca:200", "the CA name in 'my ca:200' must be 1-255 letters, digits or underscores"),
        ("ca_limits", ":200", "the CA name in ':200' must be 1-255 letters, digits or underscores"),
        ("ca_limits", "ndes:200, ndes:100", "names CA 'ndes' twice; give each CA one limit, got 'ndes:200, ndes:100'"),
        ("ca_limits", "ndes:0", "the limit for CA 'ndes' must not be 0, which would stop renewals"),
        ("ca_limits", "ndes:many", "the limit for CA 'ndes' must be a whole number of renewals from 1 to 1000000, "
                                   "or none for no limit, got 'many'"),
        ("ca_limits", "ndes:", "the limit for CA 'ndes' must be a whole number of renewals"),
    ],
)
def test_renewal_pacing_refusals(key, value, problem):
    error = refused("[renewal]\n%s = %s\n" % (key, value))
    assert (error.section, error.key) == ("renewal", key)
    assert problem in error.problem
    assert str(error).startswith("%s: [renewal] %s: " % (CONFIG, key))


def test_renewal_pacing_messages_match_the_documented_examples():
    """docs/configuration.md quotes three of these messages whole."""
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key, value in (("limit", "0"), ("ca_limits", "ndes"), ("ca_limits", "ndes:200, ndes:100")):
        error = refused("[renewal]\n%s = %s\n" % (key, value), Path("/etc/scepproxyd/scepproxyd.ini"))
        assert str(error) in doc


def test_retired_agent_token_file_is_accepted_and_ignored():
    """A file written for the shared agent token still starts; the setting only makes a warning."""
    settings = parse("[agent]\ntoken_file = old/agent-shared.token\n")
    assert settings.retired_agent_token_file == Path("/srv/scep/var/old/agent-shared.token")
    (line,) = settings.ignored
    assert line.startswith("[agent] token_file is ignored: per-host agent credentials replaced the shared agent token")
    assert "docs/agent-api.md" in line
    assert not hasattr(settings, "agent")


def test_retired_agent_section_takes_no_new_keys():
    error = refused("[agent]\ntoken = x\n")
    assert (error.section, error.key) == ("agent", "token")
    assert "unknown key; [agent] is retired and has no settings" in error.problem


@pytest.mark.parametrize(
    "text, section, key, expected",
    [
        ("[ca]\nkey_size = 1024\n", "ca", "key_size", "must be one of 2048, 3072, 4096"),
        ("[ca]\nsubject = nonsense\n", "ca", "subject", "must be a distinguished name"),
        ("[ca]\nauto_approve_subject = (\n", "ca", "auto_approve_subject", "must be a regular expression"),
        ("[ca]\nauto_approve_networks = 10.0.0.0/8, lan\n", "ca", "auto_approve_networks", "got 'lan'"),
        ("[ca]\nenabled = maybe\n", "ca", "enabled", "must be yes or no"),
        ("[ca]\nname = built-in\n", "ca", "name", "letters, digits or underscores"),
        ("[ca]\nkey_usage = signing\n", "ca", "key_usage", "comma-separated list of digital_signature"),
        ("[ca]\ndefault_template = vpn\n", "ca", "default_template", "define [template.vpn]"),
        ("[ca]\nimport_key = depot/ca.key\n", "ca", "import_certificate", "go together"),
        ("[template.vpn]\nvalidity = forever\n", "template.vpn", "validity", "must be a duration"),
        ("[template.vpn]\ncolour = red\n", "template.vpn", "colour", "unknown key"),
    ],
)
def test_ca_settings_refused(text, section, key, expected):
    error = refused(text)
    assert (error.section, error.key) == (section, key)
    assert expected in error.problem


def test_ca_templates_and_paths():
    settings = parse("[ca]\ndefault_template = vpn\nimport_key = depot/ca.key\nimport_certificate = depot/ca.pem\n"
                     "[template.vpn]\nvalidity = 90d\nextended_key_usage = client_auth, ipsec_ike\n")
    ca = settings.ca
    assert ca.enabled and ca.name == "builtin" and ca.key_size == 3072
    assert ca.key_file == Path("/srv/scep/var/ca/ca.key")
    assert ca.import_key == CONFIG.parent / "depot" / "ca.key"
    assert set(ca.templates) == {"default", "vpn"}
    assert ca.templates["vpn"].validity == 90 * 86400.0
    assert ca.templates["vpn"].extended_key_usage == ("client_auth", "ipsec_ike")
    assert ca.templates["default"].key_usage == ("digital_signature", "key_encipherment")


def test_tls_files_go_together_and_resolve():
    assert refused("[server]\ntls_certificate = a.pem\n").key == "tls_key"
    assert refused("[server]\ntls_chain = c.pem\n").problem == "needs tls_certificate and tls_key"
    settings = parse("[server]\ntls_certificate = tls/cert.pem\ntls_key = tls/key.pem\n")
    assert settings.server.tls_certificate == CONFIG.parent / "tls" / "cert.pem"
    assert settings.server.tls_chain is None


# -- issuance policy: [ca] key_* and san_* keys -----------------------------


def test_issuance_policy_defaults():
    from scepproxyd.ca.csr_policy import KeyPolicy, SanPolicy

    ca = parse("[template.vpn]\nvalidity = 90d\n").ca
    assert ca.key_policy == KeyPolicy(2048, (65537,), ("secp256r1", "secp384r1", "secp521r1"), False)
    assert ca.templates["default"].san_policy == SanPolicy((), "ca")
    assert ca.templates["vpn"].san_policy == SanPolicy((), "template.vpn")


def test_key_policy_keys():
    ca = parse("[ca]\nkey_rsa_min_bits = 3072\nkey_rsa_exponents = 65537, 3\nkey_ec_curves = secp384r1\n"
               "key_allow_ed25519 = yes\n").ca
    assert ca.key_policy.rsa_min_bits == 3072
    assert ca.key_policy.rsa_exponents == (65537, 3)
    assert ca.key_policy.ec_curves == ("secp384r1",)
    assert ca.key_policy.allow_ed25519 is True
    assert parse("[ca]\nkey_ec_curves = -\n").ca.key_policy.ec_curves == ()


def test_san_policy_per_template():
    ca = parse("[ca]\nsan_dns = [a-z0-9-]+\\.corp\\.example\n"
               "[template.vpn]\nsan_ip = 10\\.20\\.[0-9.]+\nsan_upn = [a-z]+@corp\\.example\n").ca
    default, vpn = ca.templates["default"].san_policy, ca.templates["vpn"].san_policy
    assert [t for t, _ in default.allowed] == ["dns"] and default.section == "ca"
    assert default.pattern_for("dns").fullmatch("GW-1.corp.example")  # DNS ignores case
    assert default.pattern_for("dns").fullmatch("*.corp.example") is None
    assert default.pattern_for("ip") is None
    assert [t for t, _ in vpn.allowed] == ["ip", "upn"] and vpn.section == "template.vpn"
    assert vpn.pattern_for("upn").fullmatch("ann@corp.example")
    assert vpn.pattern_for("upn").fullmatch("Ann@corp.example") is None  # only DNS ignores case


def test_config_san_types_are_the_binding_ones():
    from scepproxyd.config import _SAN_TYPES
    from scepproxyd.profiles.binding import SAN_TYPES

    assert _SAN_TYPES == SAN_TYPES


@pytest.mark.parametrize(
    "text, section, key, expected",
    [
        ("[ca]\nkey_rsa_min_bits = 512\n", "ca", "key_rsa_min_bits",
         "must be a whole number from 1024 to 16384, got '512'"),
        ("[ca]\nkey_rsa_min_bits = big\n", "ca", "key_rsa_min_bits", "whole number from 1024 to 16384"),
        ("[ca]\nkey_rsa_exponents = 65536\n", "ca", "key_rsa_exponents",
         "must be a comma-separated list of odd whole numbers of 3 or more, e.g. 65537, got '65536'"),
        ("[ca]\nkey_rsa_exponents = 1\n", "ca", "key_rsa_exponents", "odd whole numbers of 3 or more"),
        ("[ca]\nkey_rsa_exponents = 65537,\n", "ca", "key_rsa_exponents", "odd whole numbers"),
        ("[ca]\nkey_ec_curves = P-256\n", "ca", "key_ec_curves",
         "must be a comma-separated list of secp192r1, secp224r1, secp256r1"),
        ("[ca]\nkey_allow_ed25519 = sometimes\n", "ca", "key_allow_ed25519", "must be yes or no"),
        ("[ca]\nsan_dns = [a-z\n", "ca", "san_dns", "must be a regular expression ("),
        ("[ca]\nsan_email = (\n", "ca", "san_email", "or -, got '('"),
        ("[ca]\nsan_uri = *\n", "ca", "san_uri", "must be a regular expression"),
        ("[ca]\nsan_ip = )\n", "ca", "san_ip", "must be a regular expression"),
        ("[ca]\nsan_upn = [\n", "ca", "san_upn", "must be a regular expression"),
        ("[template.vpn]\nsan_dns = (\n", "template.vpn", "san_dns", "must be a regular expression"),
        ("[template.vpn]\nsan_dnsname = x\n", "template.vpn", "san_dnsname", "unknown key"),
        ("[template.vpn]\nkey_rsa_min_bits = 4096\n", "template.vpn", "key_rsa_min_bits", "unknown key"),
    ],
)
def test_issuance_policy_refused(text, section, key, expected):
    error = refused(text)
    assert (error.path, error.section, error.key) == (str(CONFIG), section, key)
    assert str(error).startswith("%s: [%s] %s: " % (CONFIG, section, key))
    assert expected in error.problem
