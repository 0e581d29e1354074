"""
INI file -> typed, validated, immutable settings.

Three modules, one job each:

- L{scepproxyd.config.converters}: one value's text to its typed value, or a refusal;
- L{scepproxyd.config.schema}: every section and key with its default and
  converter, and the frozen settings objects;
- L{scepproxyd.config.loader}: reads the file, checks it against the schema
  and the rules between keys, and builds L{Settings} or raises L{ConfigError}.

Everything other modules use is importable from here.
"""

from scepproxyd.config.converters import parse_duration, parse_size
from scepproxyd.config.loader import ConfigError, load_settings, parse_settings
from scepproxyd.config.schema import (
    EXTENDED_KEY_USAGES,
    KEY_USAGES,
    RETIRED,
    SAN_TYPES,
    SCHEMA,
    TEMPLATE_PREFIX,
    TEMPLATE_SCHEMA,
    AdminSettings,
    CASettings,
    CertificateTemplate,
    ChallengeSettings,
    DatabaseSettings,
    DeliverySettings,
    LoggingSettings,
    ProfileSettings,
    RenewalSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)

# The names the schema had while it lived in one module; tests read them.
_SCHEMA = SCHEMA
_SAN_TYPES = SAN_TYPES

__all__ = [
    "ConfigError", "load_settings", "parse_settings", "parse_duration", "parse_size",
    "Settings", "ServerSettings", "DatabaseSettings", "ChallengeSettings", "UpstreamSettings",
    "LoggingSettings", "AdminSettings", "ProfileSettings", "RenewalSettings", "DeliverySettings",
    "CASettings", "CertificateTemplate", "KEY_USAGES", "EXTENDED_KEY_USAGES",
    "SCHEMA", "TEMPLATE_PREFIX", "TEMPLATE_SCHEMA", "SAN_TYPES", "RETIRED",
]
