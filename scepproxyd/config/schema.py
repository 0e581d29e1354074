"""
The configuration's shape: every section and key, its default and its
converter, and the frozen settings objects the loader fills.

L{SCHEMA} is the one list of keys: the loader checks files against it,
docs/configuration.md documents each of its keys and defaults (a test holds
the two together), and the defaults go through the converters like any
value, so a default can never be something a user could not write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs
from twisted.logger import LogLevel

from scepproxyd.config import converters as c


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
    #: How long GetCACaps/GetCACert reuse a proxy target read from the database (0: never).
    target_cache_seconds: float = 5.0


@attrs.frozen
class DatabaseSettings:
    path: Path
    busy_timeout: float
    write_probe_interval: float
    #: A postgresql:// URL (no password), or None for SQLite at ``path``.
    url: str | None = None
    #: The file holding the PostgreSQL password (None: libpq's own, e.g. PGPASSWORD or ~/.pgpass).
    password_file: Path | None = None
    #: PostgreSQL connections (and DB threads) per node.
    pool_size: int = 4

    @property
    def engine(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    @property
    def target(self):
        """What the store opens: the SQLite file, or the PostgreSQL URL."""
        return self.path if self.url is None else self.url

    def password(self) -> str | None:
        """The PostgreSQL password from ``password_file`` (first line), or None; OSError if unreadable."""
        if self.url is None or self.password_file is None:
            return None
        text = self.password_file.read_text(encoding="utf-8")
        return text.splitlines()[0].strip() if text.strip() else None


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
    #: Renewals started per CA in each ``limit_interval`` (None: no limit), unless ``ca_limits`` names the CA.
    limit: int | None = 1000
    limit_interval: float = 3600.0
    #: ``((ca_name, limit or None), ...)``: per-CA overrides of ``limit``.
    ca_limits: tuple = ()


@attrs.frozen
class DeliverySettings:
    backend: str
    nanomdm_url: str | None
    nanomdm_api_key_file: Path
    webhook_token_file: Path
    command_retention: float
    #: Push delivery sends only while fewer of its challenges than this are unused (delivery/push.py).
    max_unused_challenges: int = 1000
    #: A host profile fetched (or pushed) this long ago and never reported on is sent again (store/deliveries.py).
    stuck_after: float = 43200.0


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


# The subjectAltName types of scepproxyd.profiles.binding.SAN_TYPES, one san_TYPE key each.
SAN_TYPES = ("dns", "email", "uri", "ip", "upn")

# section -> key -> (default, converter). Defaults go through the converters
# too, so a default can never be something a user could not write.
SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "state": {
        "directory": ("../var", c.text),
        "key_file": ("secrets.key", c.text),
    },
    "server": {
        "listen": ("tcp:8080:interface=127.0.0.1", c.endpoint),
        "public_url": ("http://127.0.0.1:8080", c.public_url),
        "max_body_bytes": ("64k", c.size(1024, 100 * c.MiB)),
        "idle_timeout": ("30s", c.duration(0, c.HOUR)),
        "request_timeout": ("60s", c.duration(0, c.HOUR)),
        "shutdown_grace": ("10s", c.duration(0, c.HOUR, allow_low=True)),
        "max_connections": ("800", c.whole(1, 1000000)),
        "tls_certificate": ("-", c.optional_text),
        "tls_key": ("-", c.optional_text),
        "tls_chain": ("-", c.optional_text),
        "target_cache_seconds": ("5s", c.duration(0, c.HOUR, allow_low=True)),
    },
    "database": {
        "path": ("scepproxyd.sqlite3", c.text),
        "busy_timeout": ("5s", c.duration(0, 10 * c.MINUTE)),
        "write_probe_interval": ("10s", c.duration(0, c.HOUR)),
        "url": ("-", c.database_url),
        "password_file": ("-", c.optional_text),
        "pool_size": ("4", c.whole(1, 64)),
    },
    "challenges": {
        "ttl": ("1h", c.duration(c.MINUTE, 30 * c.DAY, allow_low=True)),
        "cleanup_interval": ("5m", c.duration(1, c.DAY, allow_low=True)),
    },
    "upstream": {
        "connect_timeout": ("5s", c.duration(0, 10 * c.MINUTE)),
        "response_timeout": ("30s", c.duration(0, c.HOUR)),
        "body_timeout": ("30s", c.duration(0, c.HOUR)),
        "max_response_bytes": ("1M", c.size(1024, 100 * c.MiB)),
        "caps_cache_seconds": ("60s", c.duration(0, c.DAY, allow_low=True)),
    },
    "logging": {"level": ("info", c.log_level)},
    "admin": {
        "listen": ("tcp:8081:interface=127.0.0.1", c.endpoint),
        "token_file": ("admin.token", c.text),
        "max_connections": ("64", c.whole(1, 100000)),
        # Below the admin listener's 16 MiB body limit; checked as the upload streams in.
        "max_profile_bytes": ("1M", c.size(1024, 16 * c.MiB)),
        # Read by scepproxyctl only: the address of a systemd-activated admin socket.
        "url": ("-", c.admin_url),
    },
    "profiles": {
        "process_interval": ("30s", c.duration(0, c.HOUR)),
        "batch_size": ("1000", c.whole(1, 100000)),
        "max_retries": ("3", c.whole(0, 1000)),
    },
    "renewal": {
        "interval": ("1d", c.duration(0, 7 * c.DAY)),
        "threshold": ("30d", c.duration(0, 3650 * c.DAY)),
        "short_fraction": ("0.5", c.fraction),
        "limit": ("1000", c.renewal_limit),
        "limit_interval": ("1h", c.duration(c.MINUTE, 7 * c.DAY, allow_low=True)),
        "ca_limits": ("-", c.ca_limits),
    },
    "delivery": {
        "backend": ("outbox", c.choice("outbox", "nanomdm")),
        "nanomdm_url": ("-", c.optional_url),
        "nanomdm_api_key_file": ("nanomdm.key", c.text),
        "webhook_token_file": ("nanomdm-webhook.token", c.text),
        "command_retention": ("7d", c.duration(0, 3650 * c.DAY)),
        "max_unused_challenges": ("1000", c.whole(1, 1000000)),
        "stuck_after": ("12h", c.duration(c.MINUTE, 30 * c.DAY, allow_low=True)),
    },
    "ca": {
        "enabled": ("yes", c.boolean),
        "name": ("builtin", c.ca_name),
        "key_file": ("ca/ca.key", c.text),
        "certificate_file": ("ca/ca.pem", c.text),
        "import_key": ("-", c.optional_text),
        "import_certificate": ("-", c.optional_text),
        "import_key_password_file": ("-", c.optional_text),
        "key_size": ("3072", lambda value: int(c.choice("2048", "3072", "4096")(value))),
        "subject": ("CN=scepproxyd CA", c.distinguished_name),
        "lifetime": ("3650d", c.duration(c.DAY, 36500 * c.DAY, allow_low=True)),
        "ra": ("no", c.boolean),
        "challenge_file": ("ca/challenge", c.text),
        "static_challenge": ("no", c.boolean),
        "allow_renew_days": ("14", c.whole(0, 3650)),
        "auto_approve": ("yes", c.boolean),
        "auto_approve_subject": (".*", c.regex),
        "auto_approve_networks": ("-", c.networks),
        "crl_validity": ("7d", c.duration(c.MINUTE, 365 * c.DAY, allow_low=True)),
        "certificate_validity": ("365d", c.duration(c.MINUTE, 3650 * c.DAY, allow_low=True)),
        "key_usage": ("digital_signature, key_encipherment", c.names(KEY_USAGES)),
        "extended_key_usage": ("client_auth", c.names(EXTENDED_KEY_USAGES)),
        "default_template": ("default", c.template_name),
        "key_rsa_min_bits": ("2048", c.whole(1024, 16384)),
        "key_rsa_exponents": ("65537", c.rsa_exponents),
        "key_ec_curves": ("secp256r1, secp384r1, secp521r1", c.ec_curves),
        "key_allow_ed25519": ("no", c.boolean),
        **{"san_" + san_type: ("-", c.san_pattern) for san_type in SAN_TYPES},
    },
}

# [template.NAME] sections: certificate templates of the built-in CA, chosen
# per dynamic challenge; [ca] holds the "default" template's values.
TEMPLATE_PREFIX = "template."
TEMPLATE_SCHEMA: dict[str, tuple[str, Callable[[str], object]]] = {
    "validity": ("365d", c.duration(c.MINUTE, 3650 * c.DAY, allow_low=True)),
    "key_usage": ("digital_signature, key_encipherment", c.names(KEY_USAGES)),
    "extended_key_usage": ("client_auth", c.names(EXTENDED_KEY_USAGES)),
    **{"san_" + san_type: ("-", c.san_pattern) for san_type in SAN_TYPES},
}


#: Settings that once existed: accepted so an old file still starts, then ignored with a warning.
RETIRED = {
    "agent": {
        "token_file": "per-host agent credentials replaced the shared agent token, which is no longer accepted; "
                      "see docs/agent-api.md",
    },
}
