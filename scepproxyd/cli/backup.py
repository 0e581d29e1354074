"""``scepproxyctl backup DIR`` (online, through the admin API) and ``restore DIR`` (offline).

With the database on PostgreSQL both work on the state files only, and say
so: the database is the server's, backed up with ``pg_dump``.

Same shape as ``commands``: each returns ``(answer, text)``. ``restore``
needs no API and no running daemon: it reads the state's location from
``--config`` and refuses while a daemon has the database open.
"""

from __future__ import annotations

import os
from pathlib import Path

from scepproxyd.cli.client import CliError, InvocationError, api_path


def backup(api, args, stdin):
    # The daemon writes the backup, so the path must mean the same to it: made absolute here.
    directory = os.path.abspath(args.directory)
    _, answer = api.request("POST", api_path("backup"), {"directory": directory})
    count = len(answer["files"])
    done = "backed up %d file%s to %s" % (count, "" if count == 1 else "s", answer["directory"])
    if answer.get("database_included", True):
        return answer, done
    # On PostgreSQL: say plainly what is in it and what is not.
    return answer, "%s: the state files only (the secrets key, the API tokens, the built-in CA's key material)\n%s" % (
        done, answer.get("not_included") or "the database is not in this backup: back it up with pg_dump")


def restore(api, args, stdin):
    from scepproxyd.backup import BackupError, on_postgres, restore_backup
    from scepproxyd.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        raise InvocationError(str(e)) from None
    directory = Path(os.path.abspath(args.directory))
    try:
        names = restore_backup(directory, settings)
    except BackupError as e:
        raise CliError(str(e)) from None
    files_only = on_postgres(settings)
    answer = {"directory": str(directory), "state_directory": str(settings.state_directory), "files": names,
              "database_restored": not files_only}
    lines = ["restored %d file%s from %s into %s:" % (
        len(names), "" if len(names) == 1 else "s", directory, settings.state_directory)]
    lines += ["  %s" % (name,) for name in names]
    if files_only:
        from scepproxyd.store.postgres import redacted

        lines.append("the database was not restored: it is on PostgreSQL (%s); restore it from its pg_dump "
                     "(pg_restore) if it needs to go back too" % (redacted(settings.database.url),))
    lines.append("start scepproxyd now and check it (scepproxyctl builtin-ca show, scepproxyctl status)")
    return answer, "\n".join(lines)


def add_commands(command, groups, arg) -> None:
    """Register the commands on scepproxyctl's parser (called from ``build_parser``)."""
    command(groups, "backup", backup,
            "back up the database and the key and token files of the running daemon into DIR "
            "(on PostgreSQL the files only: back the database up with pg_dump)",
            arg("directory", metavar="DIR",
                help="a new or empty directory on the daemon's machine (made with mode 0700)"))
    restore_command = command(groups, "restore", restore,
                              "offline: put the backup in DIR in place of the state of --config "
                              "(refused while scepproxyd runs)",
                              arg("directory", metavar="DIR", help="a directory written by scepproxyctl backup"))
    restore_command.set_defaults(offline=True)
