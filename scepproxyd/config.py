"""
INI file -> typed, validated, immutable settings.

Only the tap module calls L{load_settings}; domain modules receive the plain
values they need, never the file. Everything is checked here, at start-up,
so that a typo stops the daemon with one message naming the file, section
and key, instead of surfacing as a strange failure hours later. Nothing is
created here: the tap makes the state directory.
"""

from __future__ import annotations

import configparser
import math
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.logger import InvalidLogLevelError, LogLevel


class ConfigError(Exception):
    """
    A configuration problem, worded for the operator who has to fix it.

    C{str(e)} is the whole message, e.g. C{"etc/scepproxyd.ini: [server]
    max_body_bytes: must be a whole number of bytes between 1024 and
    104857600, got 'lots'"}; C{section} and C{key} are L{None} when the
    problem is not tied to one.
    """

    def __init__(self, path: str | Path, section: str | None, key: str | None, problem: str):
        self.path = str(path)
        self.section = section
        self.key = key
        self.problem = problem
        where = ""
        if section is not None:
            where = "[%s] %s: " % (section, key) if key is not None else "[%s]: " % (section,)
        super().__init__("%s: %s%s" % (self.path, where, problem))


@attrs.frozen
class ServerSettings:
    listen: str
    public_url: str
    max_body_bytes: int
    idle_timeout: float
    request_timeout: float
    shutdown_grace: float
    max_connections: int
    tls_certificate: Path | None
    tls_key: Path | None
    tls_chain: Path | None


@attrs.frozen
class DatabaseSettings:
    path: Path
    busy_timeout: float
    write_probe_interval: float


@attrs.frozen
class ChallengeSettings:
    ttl: float
    cleanup_interval: float


@attrs.frozen
class UpstreamSettings:
    connect_timeout: float
    response_timeout: float
    body_timeout: float
    max_response_bytes: int
    caps_cache_seconds: float


@attrs.frozen
class LoggingSettings:
    level: LogLevel


@attrs.frozen
class AdminSettings:
    listen: str
    token_file: Path
    max_connections: int
    max_profile_bytes: int = 1024 * 1024
    #: Where scepproxyctl reaches the admin API (needed when ``listen`` is a systemd socket); the daemon ignores it.
    url: str | None = None


@attrs.frozen
class ProfileSettings:
    process_interval: float
    batch_size: int
    max_retries: int


@attrs.frozen
class RenewalSettings:
    interval: float
    threshold: float
    short_fraction: float


@attrs.frozen
class DeliverySettings:
    backend: str
    nanomdm_url: str | None
    nanomdm_api_key_file: Path
    webhook_token_file: Path
    command_retention: float


KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
)
EXTENDED_KEY_USAGES = ("client_auth", "server_auth", "email_protection", "code_signing", "ipsec_ike")


def _no_sans():
    from scepproxyd.ca.csr_policy import SanPolicy

    return SanPolicy()


def _default_key_policy():
    from scepproxyd.ca.csr_policy import KeyPolicy

    return KeyPolicy()


@attrs.frozen
class CertificateTemplate:
    name: str
    validity: float
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    #: scepproxyd.ca.csr_policy.SanPolicy: the subjectAltNames its certificates may carry.
    san_policy: object = attrs.field(factory=_no_sans)


@attrs.frozen
class CASettings:
    enabled: bool
    name: str
    key_file: Path
    certificate_file: Path
    import_key: Path | None
    import_certificate: Path | None
    import_key_password_file: Path | None
    key_size: int
    subject: str
    lifetime: float
    ra: bool
    challenge_file: Path
    static_challenge: bool
    allow_renew_days: int
    auto_approve: bool
    auto_approve_subject: str
    auto_approve_networks: tuple
    crl_validity: float
    default_template: str
    templates: dict = attrs.field(hash=False)
    #: scepproxyd.ca.csr_policy.KeyPolicy: the public keys the CA signs.
    key_policy: object = attrs.field(factory=_default_key_policy)


@attrs.frozen
class Settings:
    config_path: Path
    state_directory: Path
    key_file: Path
    server: ServerSettings
    database: DatabaseSettings
    challenges: ChallengeSettings
    upstream: UpstreamSettings
    logging: LoggingSettings
    admin: AdminSettings
    profiles: ProfileSettings
    renewal: RenewalSettings
    delivery: DeliverySettings
    ca: CASettings
    #: Where the retired shared agent token lived; the daemon warns if the file is still there.
    retired_agent_token_file: Path
    #: One line per retired setting the file still sets (ignored; the daemon warns at start).
    ignored: tuple[str, ...] = ()


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*([kKmM]?)", re.ASCII)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
MiB = 1024 * 1024


def parse_duration(text: str) -> float:
    """
    Seconds from C{"30"}, C{"2.5"} or a number with a unit: C{"30s"},
    C{"5m"}, C{"1h"}, C{"1d"}.

    No signs, exponents, NaN or infinity: a duration in a config file is
    always a plain non-negative number, and anything else is more likely a
    typo than intent. Raises L{ValueError} otherwise.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a duration: %r" % (text,))
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("duration too large: %r" % (text,))
    return seconds


def parse_size(text: str) -> int:
    """
    Bytes from C{"65536"} or a whole number with a 1024-based suffix:
    C{"64k"}/C{"64K"}, C{"1m"}/C{"1M"}. Raises L{ValueError} otherwise.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a size: %r" % (text,))
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


class _Invalid(Exception):
    """A converter's refusal; the loader adds file, section and key."""


def _describe(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return "%d %s%s" % (count, unit, "" if count == 1 else "s")
    return "%g second%s" % (seconds, "" if seconds == 1 else "s")


def _duration(low: float, high: float, allow_low: bool = False) -> Callable[[str], float]:
    """A converter for durations in C{[low, high]}, or C{(low, high]} unless C{allow_low}."""
    if allow_low:
        span = "from %s to %s" % (_describe(low), _describe(high))
    else:
        span = "greater than %s and at most %s" % (_describe(low), _describe(high))
    expected = "must be a duration %s (seconds, or a number followed by s, m, h or d)" % (span,)

    def convert(value: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = math.nan
        if not (seconds <= high and (seconds > low or (allow_low and seconds == low))):
            raise _Invalid("%s, got %r" % (expected, value))
        return seconds

    return convert


def _size(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        try:
            size = parse_size(value)
        except ValueError:
            size = -1
        if not low <= size <= high:
            raise _Invalid(
                "must be a whole number of bytes between %d and %d, got %r" % (low, high, value)
            )
        return size

    return convert


def _endpoint(value: str) -> str:
    """
    Check a strports description by building (not listening on) the endpoint.

    The reactor is a dummy: parsing never touches it, and a real one would
    invite someone to listen here by mistake. A ``systemd:`` description is
    checked for its form only: the socket exists only when systemd starts
    the daemon, and scepproxyctl reads the same file outside systemd (the
    daemon checks the socket itself at start).
    """
    try:
        serverFromString(object(), value)
    except Exception as e:
        if value.startswith("systemd:") and isinstance(e, (LookupError, ValueError)) and _systemd_form(value):
            return value
        reason = str(e) or type(e).__name__
        raise _Invalid(
            "not a valid Twisted endpoint description: %s; expected e.g. "
            "'tcp:8080:interface=127.0.0.1', got %r" % (reason, value)
        )
    return value


def _systemd_form(value: str) -> bool:
    """``systemd:domain=INET:name=NAME`` or ``...:index=N``: the forms Twisted accepts."""
    params = dict(part.partition("=")[::2] for part in value.split(":")[1:])
    has_one = ("name" in params) != ("index" in params)
    return params.get("domain") in ("INET", "INET6", "UNIX") and has_one and (
        "index" not in params or params["index"].isdigit()
    )


def _public_url(value: str) -> str:
    """
    The URL devices use to reach us; it is pasted into every rendered profile,
    so it must be absolute and clean, and carries no trailing slash so that
    C{public_url + "/mdm/scep/proxy/..."} is always right.
    """
    expected = "must be an absolute http:// or https:// URL with a host name"
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError on a bad port
    except ValueError as e:
        raise _Invalid("%s (%s), got %r" % (expected, e, value))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _Invalid("%s, got %r" % (expected, value))
    if "?" in value or "#" in value:
        raise _Invalid("must not have a query string or fragment, got %r" % (value,))
    if "@" in parts.netloc:
        raise _Invalid("must not contain a user name or password, got %r" % (value,))
    if any(c.isspace() for c in value):
        raise _Invalid("must not contain spaces, got %r" % (value,))
    return value.rstrip("/")


def _log_level(value: str) -> LogLevel:
    name = value.lower()
    try:
        return LogLevel.levelWithName("warn" if name == "warning" else name)
    except InvalidLogLevelError:
        raise _Invalid(
            "must be one of debug, info, warn, error, critical, got %r" % (value,)
        ) from None


def _text(value: str) -> str:
    return value


def _whole(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        text = value.strip()
        if not text.isdigit() or not low <= int(text) <= high:
            raise _Invalid("must be a whole number from %d to %d, got %r" % (low, high, value))
        return int(text)

    return convert


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < 1:
        raise _Invalid("must be a number between 0 and 1 (exclusive), got %r" % (value,))
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.strip() not in choices:
            raise _Invalid("must be one of %s, got %r" % (", ".join(choices), value))
        return value.strip()

    return convert


def _optional_url(value: str) -> str | None:
    return None if value.strip() == "-" else _public_url(value)


def _admin_url(value: str) -> str | None:
    """``[admin] url``: scheme, host and port only, since the API is always under /api/v1/."""
    if value.strip() == "-":
        return None
    url = _public_url(value.strip())
    if urlsplit(url).path:
        raise _Invalid("must be http://HOST:PORT or https://HOST:PORT with no path (the API is always "
                       "under /api/v1/), got %r" % (value,))
    return url


def _optional_text(value: str) -> str | None:
    return None if value.strip() == "-" else value.strip()


def _boolean(value: str) -> bool:
    text = value.strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise _Invalid("must be yes or no, got %r" % (value,))


def _names(allowed: tuple[str, ...], allow_empty: bool = True) -> Callable[[str], tuple[str, ...]]:
    def convert(value: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in value.split(",") if n.strip() and n.strip() != "-")
        bad = [n for n in names if n not in allowed]
        if bad or (not names and not allow_empty):
            raise _Invalid("must be a comma-separated list of %s, got %r" % (", ".join(allowed), value))
        return names

    return convert


def _distinguished_name(value: str) -> str:
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(value.strip())
    except ValueError as e:
        raise _Invalid("must be a distinguished name like 'CN=Example CA,O=Example' (%s), got %r" % (e, value))
    if not len(name):
        raise _Invalid("must name at least one attribute, got %r" % (value,))
    return value.strip()


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise _Invalid("must be a regular expression (%s), got %r" % (e, value))
    return value


def _san_pattern(value: str) -> str | None:
    """A subjectAltName pattern, or None for "-" (no names of that type)."""
    if value.strip() == "-":
        return None
    try:
        re.compile(value.strip())
    except re.error as e:
        raise _Invalid("must be a regular expression (%s) or -, got %r" % (e, value))
    return value.strip()


def _rsa_exponents(value: str) -> tuple[int, ...]:
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() and int(p) >= 3 and int(p) % 2 == 1 for p in parts):
        raise _Invalid("must be a comma-separated list of odd whole numbers of 3 or more, e.g. 65537, got %r"
                       % (value,))
    return tuple(int(p) for p in parts)


def _ec_curves(value: str) -> tuple[str, ...]:
    from scepproxyd.ca.csr_policy import EC_CURVES

    return _names(EC_CURVES)(value)


def _networks(value: str) -> tuple:
    import ipaddress

    if value.strip() == "-":
        return ()
    networks = []
    for part in value.split(","):
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise _Invalid("must be a comma-separated list of networks like 10.0.0.0/8, got %r" % (part.strip(),))
    return tuple(networks)


def _ca_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,255}", value.strip()):
        raise _Invalid("must be 1-255 letters, digits or underscores, got %r" % (value,))
    return value.strip()


def _template_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value.strip()):
        raise _Invalid("must be 1-64 letters, digits, '.', '_' or '-', got %r" % (value,))
    return value.strip()


# The subjectAltName types of scepproxyd.profiles.binding.SAN_TYPES, one san_TYPE key each.
_SAN_TYPES = ("dns", "email", "uri", "ip", "upn")

# section -> key -> (default, converter). Defaults go through the converters
# too, so a default can never be something a user could not write.
_SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "state": {
        "directory": ("../var", _text),
        "key_file": ("secrets.key", _text),
    },
    "server": {
        "listen": ("tcp:8080:interface=127.0.0.1", _endpoint),
        "public_url": ("http://127.0.0.1:8080", _public_url),
        "max_body_bytes": ("64k", _size(1024, 100 * MiB)),
        "idle_timeout": ("30s", _duration(0, HOUR)),
        "request_timeout": ("60s", _duration(0, HOUR)),
        "shutdown_grace": ("10s", _duration(0, HOUR, allow_low=True)),
        "max_connections": ("800", _whole(1, 1000000)),
        "tls_certificate": ("-", _optional_text),
        "tls_key": ("-", _optional_text),
        "tls_chain": ("-", _optional_text),
    },
    "database": {
        "path": ("scepproxyd.sqlite3", _text),
        "busy_timeout": ("5s", _duration(0, 10 * MINUTE)),
        "write_probe_interval": ("10s", _duration(0, HOUR)),
    },
    "challenges": {
        "ttl": ("1h", _duration(MINUTE, 30 * DAY, allow_low=True)),
        "cleanup_interval": ("5m", _duration(1, DAY, allow_low=True)),
    },
    "upstream": {
        "connect_timeout": ("5s", _duration(0, 10 * MINUTE)),
        "response_timeout": ("30s", _duration(0, HOUR)),
        "body_timeout": ("30s", _duration(0, HOUR)),
        "max_response_bytes": ("1M", _size(1024, 100 * MiB)),
        "caps_cache_seconds": ("60s", _duration(0, DAY, allow_low=True)),
    },
    "logging": {"level": ("info", _log_level)},
    "admin": {
        "listen": ("tcp:8081:interface=127.0.0.1", _endpoint),
        "token_file": ("admin.token", _text),
        "max_connections": ("64", _whole(1, 100000)),
        # Below the admin listener's 16 MiB body limit; checked as the upload streams in.
        "max_profile_bytes": ("1M", _size(1024, 16 * MiB)),
        # Read by scepproxyctl only: the address of a systemd-activated admin socket.
        "url": ("-", _admin_url),
    },
    "profiles": {
        "process_interval": ("30s", _duration(0, HOUR)),
        "batch_size": ("1000", _whole(1, 100000)),
        "max_retries": ("3", _whole(0, 1000)),
    },
    "renewal": {
        "interval": ("1d", _duration(0, 7 * DAY)),
        "threshold": ("30d", _duration(0, 3650 * DAY)),
        "short_fraction": ("0.5", _fraction),
    },
    "delivery": {
        "backend": ("outbox", _choice("outbox", "nanomdm")),
        "nanomdm_url": ("-", _optional_url),
        "nanomdm_api_key_file": ("nanomdm.key", _text),
        "webhook_token_file": ("nanomdm-webhook.token", _text),
        "command_retention": ("7d", _duration(0, 3650 * DAY)),
    },
    "ca": {
        "enabled": ("yes", _boolean),
        "name": ("builtin", _ca_name),
        "key_file": ("ca/ca.key", _text),
        "certificate_file": ("ca/ca.pem", _text),
        "import_key": ("-", _optional_text),
        "import_certificate": ("-", _optional_text),
        "import_key_password_file": ("-", _optional_text),
        "key_size": ("3072", lambda value: int(_choice("2048", "3072", "4096")(value))),
        "subject": ("CN=scepproxyd CA", _distinguished_name),
        "lifetime": ("3650d", _duration(DAY, 36500 * DAY, allow_low=True)),
        "ra": ("no", _boolean),
        "challenge_file": ("ca/challenge", _text),
        "static_challenge": ("no", _boolean),
        "allow_renew_days": ("14", _whole(0, 3650)),
        "auto_approve": ("yes", _boolean),
        "auto_approve_subject": (".*", _regex),
        "auto_approve_networks": ("-", _networks),
        "crl_validity": ("7d", _duration(MINUTE, 365 * DAY, allow_low=True)),
        "certificate_validity": ("365d", _duration(MINUTE, 3650 * DAY, allow_low=True)),
        "key_usage": ("digital_signature, key_encipherment", _names(KEY_USAGES)),
        "extended_key_usage": ("client_auth", _names(EXTENDED_KEY_USAGES)),
        "default_template": ("default", _template_name),
        "key_rsa_min_bits": ("2048", _whole(1024, 16384)),
        "key_rsa_exponents": ("65537", _rsa_exponents),
        "key_ec_curves": ("secp256r1, secp384r1, secp521r1", _ec_curves),
        "key_allow_ed25519": ("no", _boolean),
        **{"san_" + san_type: ("-", _san_pattern) for san_type in _SAN_TYPES},
    },
}

# [template.NAME] sections: certificate templates of the built-in CA, chosen
# per dynamic challenge; [ca] holds the "default" template's values.
_TEMPLATE_PREFIX = "template."
_TEMPLATE_SCHEMA: dict[str, tuple[str, Callable[[str], object]]] = {
    "validity": ("365d", _duration(MINUTE, 3650 * DAY, allow_low=True)),
    "key_usage": ("digital_signature, key_encipherment", _names(KEY_USAGES)),
    "extended_key_usage": ("client_auth", _names(EXTENDED_KEY_USAGES)),
    **{"san_" + san_type: ("-", _san_pattern) for san_type in _SAN_TYPES},
}


def _read_ini(text: str, config_path: Path) -> configparser.ConfigParser:
    """Parse strictly; turn configparser's complaints into a L{ConfigError}."""
    parser = configparser.ConfigParser(
        interpolation=None,
        # Only "=": endpoint strings and URLs are full of colons.
        delimiters=("=",),
        inline_comment_prefixes=(";",),
        # No magic [DEFAULT] section: it would copy its keys into every
        # section, so here it is just an unknown section.
        default_section="\x00",
    )
    section = key = None
    try:
        parser.read_string(text, source=str(config_path))
        return parser
    except configparser.DuplicateOptionError as e:
        section, key, problem = e.section, e.option, "given twice (line %s)" % (e.lineno,)
    except configparser.DuplicateSectionError as e:
        section, problem = e.section, "section given twice (line %s)" % (e.lineno,)
    except configparser.MissingSectionHeaderError as e:
        problem = "line %d: %r is outside any [section]" % (e.lineno, e.line.strip())
    except configparser.ParsingError as e:
        lineno = e.errors[0][0]
        line = text.splitlines()[lineno - 1].strip()
        problem = "line %d: not valid INI, expected 'key = value', got %r" % (lineno, line)
    except configparser.Error as e:
        problem = "not valid INI: %s" % (e,)
    raise ConfigError(config_path, section, key, problem)


def _resolve(base: Path, value: str) -> Path:
    return Path(os.path.normpath(base / value))


def _section_values(parser, config_path, section: str, keys) -> dict[str, object]:
    given = dict(parser.items(section)) if parser.has_section(section) else {}
    for key in given:
        if key not in keys:
            raise ConfigError(
                config_path, section, key,
                "unknown key; valid keys in [%s] are: %s" % (section, ", ".join(keys)),
            )
    values = {}
    for key, (default, convert) in keys.items():
        raw = given.get(key, default)
        try:
            if not raw.strip():
                raise _Invalid("must not be empty")
            values[key] = convert(raw)
        except _Invalid as e:
            raise ConfigError(config_path, section, key, str(e)) from None
    return values


def _san_policy(values: dict, section: str):
    """Pop the san_TYPE keys of a template's ``values`` into its SanPolicy."""
    from scepproxyd.ca.csr_policy import SanPolicy

    return SanPolicy.from_patterns({t: values.pop("san_" + t) for t in _SAN_TYPES}, section)


#: Settings that once existed: accepted so an old file still starts, then ignored with a warning.
_RETIRED = {
    "agent": {
        "token_file": "per-host agent credentials replaced the shared agent token, which is no longer accepted; "
                      "see docs/agent-api.md",
    },
}


def _retired_values(parser, config_path) -> tuple[dict[str, str], list[str]]:
    """The retired keys the file sets, ``{"section.key": value}``, and a warning line for each."""
    given, warnings = {}, []
    for section, keys in _RETIRED.items():
        if not parser.has_section(section):
            continue
        for key, value in parser.items(section):
            if key not in keys:
                raise ConfigError(
                    config_path, section, key,
                    "unknown key; [%s] is retired and has no settings (%s)" % (section, keys[next(iter(keys))]),
                )
            given["%s.%s" % (section, key)] = value
            warnings.append("[%s] %s is ignored: %s" % (section, key, keys[key]))
    return given, warnings


def _ca_settings(values, template_sections, state_directory: Path, config_path) -> CASettings:
    from scepproxyd.ca.csr_policy import KeyPolicy

    ca = dict(values["ca"])
    key_policy = KeyPolicy(
        rsa_min_bits=ca.pop("key_rsa_min_bits"),
        rsa_exponents=ca.pop("key_rsa_exponents"),
        ec_curves=ca.pop("key_ec_curves"),
        allow_ed25519=ca.pop("key_allow_ed25519"),
    )
    templates = {
        "default": CertificateTemplate(
            "default", ca.pop("certificate_validity"), ca.pop("key_usage"), ca.pop("extended_key_usage"),
            _san_policy(ca, "ca"),
        )
    }
    for section in template_sections:
        name = section[len(_TEMPLATE_PREFIX):]
        template = dict(values[section])
        san_policy = _san_policy(template, section)
        templates[name] = CertificateTemplate(name, san_policy=san_policy, **template)
    if ca["default_template"] not in templates:
        raise ConfigError(
            config_path, "ca", "default_template",
            "names no template; define [template.%s] or use 'default'" % (ca["default_template"],),
        )
    if (ca["import_key"] is None) != (ca["import_certificate"] is None):
        raise ConfigError(
            config_path, "ca", "import_key" if ca["import_key"] is None else "import_certificate",
            "import_key and import_certificate go together",
        )
    for key in ("key_file", "certificate_file", "challenge_file"):
        ca[key] = _resolve(state_directory, ca[key])
    for key in ("import_key", "import_certificate", "import_key_password_file"):
        if ca[key] is not None:
            ca[key] = _resolve(Path(os.path.abspath(config_path)).parent, ca[key])
    return CASettings(templates=templates, key_policy=key_policy, **ca)


def parse_settings(text: str, config_path: Path) -> Settings:
    """
    Validate INI C{text} as if read from C{config_path}, which names the
    file in messages and anchors relative paths.
    """
    parser = _read_ini(text, config_path)
    template_sections = []
    for section in parser.sections():
        if section.startswith(_TEMPLATE_PREFIX):
            try:
                _template_name(section[len(_TEMPLATE_PREFIX):])
            except _Invalid as e:
                raise ConfigError(config_path, section, None, "template name %s" % (e,)) from None
            template_sections.append(section)
        elif section not in _SCHEMA and section not in _RETIRED:
            raise ConfigError(
                config_path, section, None,
                "unknown section; valid sections are: %s, and [template.NAME]" % (", ".join(_SCHEMA),),
            )
    values: dict[str, dict[str, object]] = {}
    for section, keys in list(_SCHEMA.items()) + [(t, _TEMPLATE_SCHEMA) for t in template_sections]:
        values[section] = _section_values(parser, config_path, section, keys)

    absolute_config = Path(os.path.abspath(config_path))
    state_directory = _resolve(absolute_config.parent, values["state"]["directory"])
    values["database"]["path"] = _resolve(state_directory, values["database"]["path"])
    values["admin"]["token_file"] = _resolve(state_directory, values["admin"]["token_file"])
    retired, ignored = _retired_values(parser, config_path)
    server = values["server"]
    if (server["tls_certificate"] is None) != (server["tls_key"] is None):
        raise ConfigError(
            config_path, "server", "tls_key" if server["tls_key"] is None else "tls_certificate",
            "tls_certificate and tls_key go together",
        )
    if server["tls_chain"] is not None and server["tls_certificate"] is None:
        raise ConfigError(config_path, "server", "tls_chain", "needs tls_certificate and tls_key")
    for key in ("tls_certificate", "tls_key", "tls_chain"):
        if server[key] is not None:
            server[key] = _resolve(Path(os.path.abspath(config_path)).parent, server[key])
    for key in ("nanomdm_api_key_file", "webhook_token_file"):
        values["delivery"][key] = _resolve(state_directory, values["delivery"][key])
    if values["delivery"]["backend"] == "nanomdm" and values["delivery"]["nanomdm_url"] is None:
        raise ConfigError(
            config_path, "delivery", "nanomdm_url",
            "is required when backend = nanomdm (the URL of NanoMDM's API, e.g. https://mdm.example:9000)",
        )
    if values["admin"]["listen"] == values["server"]["listen"]:
        raise ConfigError(
            config_path, "admin", "listen",
            "must differ from [server] listen: the admin API never shares the device-facing listener",
        )
    return Settings(
        config_path=absolute_config,
        state_directory=state_directory,
        key_file=_resolve(state_directory, values["state"]["key_file"]),
        server=ServerSettings(**values["server"]),
        database=DatabaseSettings(**values["database"]),
        challenges=ChallengeSettings(**values["challenges"]),
        upstream=UpstreamSettings(**values["upstream"]),
        logging=LoggingSettings(**values["logging"]),
        admin=AdminSettings(**values["admin"]),
        profiles=ProfileSettings(**values["profiles"]),
        renewal=RenewalSettings(**values["renewal"]),
        delivery=DeliverySettings(**values["delivery"]),
        ca=_ca_settings(values, template_sections, state_directory, config_path),
        retired_agent_token_file=_resolve(state_directory, retired.get("agent.token_file") or "agent.token"),
        ignored=tuple(ignored),
    )


def load_settings(path: str | Path) -> Settings:
    """Read and validate the config file at C{path}; every failure is a L{ConfigError}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, None, None, "cannot read configuration file: %s" % (reason,))
    return parse_settings(text, path)
