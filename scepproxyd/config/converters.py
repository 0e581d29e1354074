"""
Value converters: one config value's text -> its typed value, or a refusal.

Each converter takes the raw text of one INI value and returns what the
settings hold (seconds, bytes, a path string, a tuple of names...), or
raises L{Invalid} with the operator-facing reason and the value it got; the
loader adds the file, section and key. The schema names one converter per
key, and runs the defaults through them too.
"""

from __future__ import annotations

import math
import re
from typing import Callable
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.logger import InvalidLogLevelError, LogLevel

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


class Invalid(Exception):
    """A converter's refusal; the loader adds file, section and key."""


def _describe(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return "%d %s%s" % (count, unit, "" if count == 1 else "s")
    return "%g second%s" % (seconds, "" if seconds == 1 else "s")


def duration(low: float, high: float, allow_low: bool = False) -> Callable[[str], float]:
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
            raise Invalid("%s, got %r" % (expected, value))
        return seconds

    return convert


def size(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        try:
            size = parse_size(value)
        except ValueError:
            size = -1
        if not low <= size <= high:
            raise Invalid(
                "must be a whole number of bytes between %d and %d, got %r" % (low, high, value)
            )
        return size

    return convert


def endpoint(value: str) -> str:
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
        raise Invalid(
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


def public_url(value: str) -> str:
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
        raise Invalid("%s (%s), got %r" % (expected, e, value))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Invalid("%s, got %r" % (expected, value))
    if "?" in value or "#" in value:
        raise Invalid("must not have a query string or fragment, got %r" % (value,))
    if "@" in parts.netloc:
        raise Invalid("must not contain a user name or password, got %r" % (value,))
    if any(c.isspace() for c in value):
        raise Invalid("must not contain spaces, got %r" % (value,))
    return value.rstrip("/")


def log_level(value: str) -> LogLevel:
    name = value.lower()
    try:
        return LogLevel.levelWithName("warn" if name == "warning" else name)
    except InvalidLogLevelError:
        raise Invalid(
            "must be one of debug, info, warn, error, critical, got %r" % (value,)
        ) from None


def text(value: str) -> str:
    return value


def whole(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        text = value.strip()
        if not text.isdigit() or not low <= int(text) <= high:
            raise Invalid("must be a whole number from %d to %d, got %r" % (low, high, value))
        return int(text)

    return convert


def fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < 1:
        raise Invalid("must be a number between 0 and 1 (exclusive), got %r" % (value,))
    return number


def choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.strip() not in choices:
            raise Invalid("must be one of %s, got %r" % (", ".join(choices), value))
        return value.strip()

    return convert


def optional_url(value: str) -> str | None:
    return None if value.strip() == "-" else public_url(value)


def admin_url(value: str) -> str | None:
    """``[admin] url``: scheme, host and port only, since the API is always under /api/v1/."""
    if value.strip() == "-":
        return None
    url = public_url(value.strip())
    if urlsplit(url).path:
        raise Invalid("must be http://HOST:PORT or https://HOST:PORT with no path (the API is always "
                      "under /api/v1/), got %r" % (value,))
    return url


def database_url(value: str) -> str | None:
    """``-`` (SQLite at ``path``) or a ``postgresql://`` URL with no password in it (that goes in password_file)."""
    value = value.strip()
    if value == "-":
        return None
    example = "e.g. postgresql://scepproxyd@db.internal/scepproxyd"
    if not value.startswith(("postgresql://", "postgres://")):
        raise Invalid("must be - (SQLite at path) or a postgresql:// URL, %s, got %r" % (example, value))
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise Invalid("is not a valid URL (%s), got %r" % (e, value)) from None
    if parts.password is not None:
        # The message must not repeat the password: it goes to the journal.
        shown = value.replace(":" + parts.password + "@", ":***@")
        raise Invalid("must not hold a password (it would be in logs and ps): put it in password_file, got %r"
                      % (shown,))
    if not parts.path.strip("/"):
        raise Invalid("must name the database, %s, got %r" % (example, value))
    return value


def optional_text(value: str) -> str | None:
    return None if value.strip() == "-" else value.strip()


def boolean(value: str) -> bool:
    text = value.strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise Invalid("must be yes or no, got %r" % (value,))


def names(allowed: tuple[str, ...], allow_empty: bool = True) -> Callable[[str], tuple[str, ...]]:
    def convert(value: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in value.split(",") if n.strip() and n.strip() != "-")
        bad = [n for n in names if n not in allowed]
        if bad or (not names and not allow_empty):
            raise Invalid("must be a comma-separated list of %s, got %r" % (", ".join(allowed), value))
        return names

    return convert


def distinguished_name(value: str) -> str:
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(value.strip())
    except ValueError as e:
        raise Invalid("must be a distinguished name like 'CN=Example CA,O=Example' (%s), got %r" % (e, value))
    if not len(name):
        raise Invalid("must name at least one attribute, got %r" % (value,))
    return value.strip()


def regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise Invalid("must be a regular expression (%s), got %r" % (e, value))
    return value


def san_pattern(value: str) -> str | None:
    """A subjectAltName pattern, or None for "-" (no names of that type)."""
    if value.strip() == "-":
        return None
    try:
        re.compile(value.strip())
    except re.error as e:
        raise Invalid("must be a regular expression (%s) or -, got %r" % (e, value))
    return value.strip()


def rsa_exponents(value: str) -> tuple[int, ...]:
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() and int(p) >= 3 and int(p) % 2 == 1 for p in parts):
        raise Invalid("must be a comma-separated list of odd whole numbers of 3 or more, e.g. 65537, got %r"
                       % (value,))
    return tuple(int(p) for p in parts)


def ec_curves(value: str) -> tuple[str, ...]:
    from scepproxyd.ca.csr_policy import EC_CURVES

    return names(EC_CURVES)(value)


def networks(value: str) -> tuple:
    import ipaddress

    if value.strip() == "-":
        return ()
    networks = []
    for part in value.split(","):
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise Invalid("must be a comma-separated list of networks like 10.0.0.0/8, got %r" % (part.strip(),))
    return tuple(networks)


def ca_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,255}", value.strip()):
        raise Invalid("must be 1-255 letters, digits or underscores, got %r" % (value,))
    return value.strip()


#: The largest renewal limit a file may give: far above what one CA could take in any interval.
MAX_RENEWAL_LIMIT = 1_000_000


def renewal_limit(value: str) -> int | None:
    """
    Renewals started per CA in each ``[renewal] limit_interval``: a whole number, or ``none`` (no limit).

    ``0`` is refused rather than read either way: "no limit" would surprise
    whoever meant to pause renewals, and pausing them would let every
    certificate expire.
    """
    text = value.strip().lower()
    if text == "none":
        return None
    if text.isdigit() and int(text) == 0:
        raise Invalid("must not be 0, which would stop renewals and let every certificate expire; "
                      "write none for no limit, got %r" % (value,))
    if not text.isdigit() or int(text) > MAX_RENEWAL_LIMIT:
        raise Invalid("must be a whole number of renewals from 1 to %d, or none for no limit, got %r"
                      % (MAX_RENEWAL_LIMIT, value))
    return int(text)


def ca_limits(value: str) -> tuple[tuple[str, int | None], ...]:
    """
    ``-`` (none), or per-CA renewal limits ``NAME:LIMIT, ...`` overriding ``[renewal] limit``.

    Each LIMIT is written as ``limit`` is (a whole number or ``none``); each
    CA is named once, so the file never holds two answers for one CA. The
    name ``-`` stands for profiles that name no CA (no CA can be called so).
    """
    if value.strip() == "-":
        return ()
    limits: dict[str, int | None] = {}
    for part in value.split(","):
        entry = part.strip()
        name, colon, count = entry.partition(":")
        if not entry:
            raise Invalid("has an empty entry (a stray comma?); expected NAME:LIMIT, ..., got %r" % (value,))
        if not colon:
            raise Invalid("each entry must be CA_NAME:LIMIT, e.g. ndes:200 or builtin:none, got %r" % (entry,))
        try:
            name = "-" if name.strip() == "-" else ca_name(name)  # "-": profiles that name no CA
        except Invalid:
            raise Invalid("the CA name in %r must be 1-255 letters, digits or underscores" % (entry,)) from None
        if name in limits:
            raise Invalid("names CA %r twice; give each CA one limit, got %r" % (name, value))
        try:
            limits[name] = renewal_limit(count)
        except Invalid as e:
            raise Invalid("the limit for CA %r %s" % (name, e)) from None
    return tuple(limits.items())


def template_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value.strip()):
        raise Invalid("must be 1-64 letters, digits, '.', '_' or '-', got %r" % (value,))
    return value.strip()
