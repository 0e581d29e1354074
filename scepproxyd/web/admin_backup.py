"""Admin API route for online backups: ``POST /api/v1/backup``.

The backup is written by the daemon, on the daemon's machine, into the
directory the admin names (absolute, new or empty). The answer lists file
names only: key and token contents never leave the state directory except
into the backup itself. With the database on PostgreSQL the backup holds
the state files only and the answer says so (``database_included`` false,
``not_included``). Restore is offline (``scepproxyctl restore``), so it has
no route.
"""

from __future__ import annotations

from pathlib import Path

from scepproxyd.backup import BackupError, take_backup
from scepproxyd.daemon.logs import get_logger
from scepproxyd.web.api import HttpRefusal, Invalid, field, json_body

log = get_logger(__name__)


def backup_routes(store, settings, reactor) -> list:
    """Routes for the admin ``JsonApi``; the backup's file work runs on ``reactor``'s worker threads."""

    async def backup(request):
        body = json_body(request)
        directory = field(body, "directory")
        if not directory or "\0" in directory:
            raise Invalid("directory must be an absolute path", field="directory")
        path = Path(directory)
        if not path.is_absolute():
            raise Invalid(
                "directory must be an absolute path on the daemon's machine, got %r" % (directory,),
                field="directory",
            )
        try:
            result = await take_backup(store, settings, path, reactor=reactor)
        except BackupError as e:
            if e.field is not None:
                raise Invalid(e.message, field=e.field) from None
            log.error("backup to {directory} failed: {error}", directory=str(path), error=e.message)
            raise HttpRefusal(e.message, status=500) from None
        return (201, result)

    return [("POST", r"/api/v1/backup", backup)]
