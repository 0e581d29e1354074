"""``scepproxyctl database copy --to URL``: move a stopped site's SQLite database to PostgreSQL (offline).

Like ``restore``, it needs no API and no running daemon: it reads the whole
``--config`` for ``[database] path`` (the source) and leaves the copying, and
every refusal, to ``scepproxyd.store.copy``. The password is read from a
file, never the command line, and shown nowhere.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from scepproxyd.cli.client import CliError, InvocationError


def _target_url(value: str) -> str:
    """``--to`` checked with the config's own rules for ``[database] url`` (no password in it, a database named)."""
    from scepproxyd.config.converters import Invalid, database_url
    from scepproxyd.store.postgres import is_postgres

    if not is_postgres(value.strip()):
        raise InvocationError("--to must be a postgresql:// URL, e.g. postgresql://scepproxyd@db.internal/scepproxyd")
    try:
        return database_url(value)
    except Invalid as e:
        raise InvocationError("--to %s" % (e,)) from None


def _password(settings, url: str, password_file: str | None) -> str | None:
    """From ``--password-file``; else the config's ``[database] password_file`` when its url is this one; else None."""
    database = settings.database
    if password_file is not None:
        database = attrs.evolve(database, url=url, password_file=Path(password_file).absolute())
    elif database.url != url:
        return None  # libpq's own: PGPASSWORD, ~/.pgpass, or none
    try:
        return database.password()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("cannot read the password file %s: %s"
                              % (database.password_file, getattr(e, "strerror", None) or e)) from None


def copy(api, args, stdin):
    from scepproxyd.config import ConfigError, load_settings
    from scepproxyd.store.copy import CopyError, copy_to_postgres

    url = _target_url(args.to)
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        raise InvocationError(str(e)) from None
    password = _password(settings, url, args.password_file)
    try:
        result = copy_to_postgres(settings.database.path, url, password)
    except CopyError as e:
        raise CliError(str(e)) from None
    total = sum(result.tables.values())
    answer = {"source": result.source, "target": result.target, "schema_version": result.schema_version,
              "tables": result.tables}
    width = max(len(name) for name in result.tables)
    lines = ["copied %d rows in %d tables from %s to %s (schema %d); row counts checked on both sides:"
             % (total, len(result.tables), result.source, result.target, result.schema_version)]
    lines += ["  %-*s  %d" % (width, name, rows) for name, rows in result.tables.items()]
    lines.append("now set [database] url = %s (and password_file) in every node's configuration, give every node "
                 "the same state files (docs/operations.md, Several nodes) and start them; the SQLite file is "
                 "unchanged" % (result.target,))
    return answer, "\n".join(lines)


def add_commands(command, group, arg) -> None:
    """Register the group on scepproxyctl's parser (called from ``build_parser``)."""
    database = group("database", "the daemon's database (offline)")
    copy_command = command(
        database, "copy", copy,
        "offline: copy the SQLite database of --config into an empty PostgreSQL database, in one transaction, "
        "and check the row counts (refused while scepproxyd runs)",
        arg("--to", required=True, metavar="URL",
            help="the target, postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=verify-full] (no password in it)"),
        arg("--password-file", metavar="FILE",
            help="the PostgreSQL password on the file's first line (default: [database] password_file when "
                 "[database] url is this URL, else libpq's PGPASSWORD or ~/.pgpass)"))
    copy_command.set_defaults(offline=True)
