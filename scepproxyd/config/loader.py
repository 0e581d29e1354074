"""
INI file -> typed, validated, immutable settings.

Only the tap module (and scepproxyctl) call L{load_settings}; domain modules
receive the plain values they need, never the file. Everything is checked
here, at start-up, so that a typo stops the daemon with one message naming
the file, section and key, instead of surfacing as a strange failure hours
later. Nothing is created here: the tap makes the state directory.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from scepproxyd.config.converters import Invalid, template_name
from scepproxyd.config.schema import (
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


def read_ini(text: str, config_path: Path) -> configparser.ConfigParser:
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


def resolve_path(base: Path, value: str) -> Path:
    return Path(os.path.normpath(base / value))


def section_values(parser, config_path, section: str, keys) -> dict[str, object]:
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
                raise Invalid("must not be empty")
            values[key] = convert(raw)
        except Invalid as e:
            raise ConfigError(config_path, section, key, str(e)) from None
    return values


def _san_policy(values: dict, section: str):
    """Pop the san_TYPE keys of a template's ``values`` into its SanPolicy."""
    from scepproxyd.ca.csr_policy import SanPolicy

    return SanPolicy.from_patterns({t: values.pop("san_" + t) for t in SAN_TYPES}, section)


def _retired_values(parser, config_path) -> tuple[dict[str, str], list[str]]:
    """The retired keys the file sets, ``{"section.key": value}``, and a warning line for each."""
    given, warnings = {}, []
    for section, keys in RETIRED.items():
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
        name = section[len(TEMPLATE_PREFIX):]
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
        ca[key] = resolve_path(state_directory, ca[key])
    for key in ("import_key", "import_certificate", "import_key_password_file"):
        if ca[key] is not None:
            ca[key] = resolve_path(Path(os.path.abspath(config_path)).parent, ca[key])
    return CASettings(templates=templates, key_policy=key_policy, **ca)


def parse_settings(text: str, config_path: Path) -> Settings:
    """
    Validate INI C{text} as if read from C{config_path}, which names the
    file in messages and anchors relative paths.
    """
    parser = read_ini(text, config_path)
    template_sections = []
    for section in parser.sections():
        if section.startswith(TEMPLATE_PREFIX):
            try:
                template_name(section[len(TEMPLATE_PREFIX):])
            except Invalid as e:
                raise ConfigError(config_path, section, None, "template name %s" % (e,)) from None
            template_sections.append(section)
        elif section not in SCHEMA and section not in RETIRED:
            raise ConfigError(
                config_path, section, None,
                "unknown section; valid sections are: %s, and [template.NAME]" % (", ".join(SCHEMA),),
            )
    values: dict[str, dict[str, object]] = {}
    for section, keys in list(SCHEMA.items()) + [(t, TEMPLATE_SCHEMA) for t in template_sections]:
        values[section] = section_values(parser, config_path, section, keys)

    absolute_config = Path(os.path.abspath(config_path))
    state_directory = resolve_path(absolute_config.parent, values["state"]["directory"])
    values["database"]["path"] = resolve_path(state_directory, values["database"]["path"])
    if values["database"]["password_file"] is not None:
        if values["database"]["url"] is None:
            raise ConfigError(config_path, "database", "password_file", "applies to a postgresql:// url only")
        values["database"]["password_file"] = resolve_path(state_directory, values["database"]["password_file"])
    values["admin"]["token_file"] = resolve_path(state_directory, values["admin"]["token_file"])
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
            server[key] = resolve_path(Path(os.path.abspath(config_path)).parent, server[key])
    for key in ("nanomdm_api_key_file", "webhook_token_file"):
        values["delivery"][key] = resolve_path(state_directory, values["delivery"][key])
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
        key_file=resolve_path(state_directory, values["state"]["key_file"]),
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
        retired_agent_token_file=resolve_path(state_directory, retired.get("agent.token_file") or "agent.token"),
        ignored=tuple(ignored),
    )


def read_config_text(path: Path) -> str:
    """The text of the config file at C{path}, or a L{ConfigError} saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, None, None, "cannot read configuration file: %s" % (reason,))


def load_settings(path: str | Path) -> Settings:
    """Read and validate the config file at C{path}; every failure is a L{ConfigError}."""
    path = Path(path)
    return parse_settings(read_config_text(path), path)
