"""Backups of scepproxyd's state: taken online while serving, restored offline.

A backup is a directory holding

- a consistent snapshot of the database (``VACUUM INTO`` on the DB thread,
  see ``store/backup.py``), named as the live database file;
- every secret and key-material file of the state directory that exists:
  the challenge key, the API tokens, the NanoMDM API key, the built-in CA's
  key, certificate and static challenge and its RA's key and certificate,
  each at its path relative to the state directory (a file configured
  outside it goes under ``external/<role>/``);
- ``MANIFEST.json``: for each file its name, role, size and SHA-256, with the
  database's schema version and the time. It is written last, so a backup
  without one is incomplete.

Everything is written with mode 0600 in a directory of mode 0700. The
contents of the files are never returned or logged, only their names.

Restore is offline: it refuses while a daemon has the live database open,
and verifies every file against the manifest and the database's integrity
before it touches the state directory. Files are then staged next to their
targets and renamed into place, so the state never holds a half-written file.
Each file goes where the restoring configuration says its role lives, so a
backup can be restored into a new state directory.

With ``[database] url`` set the database is on PostgreSQL, shared by every
node, and a backup holds the state files only: the manifest says the
database is not included (``database_included: false``, with the URL without
password and its schema version at the time), and the answer says to back
the database up with ``pg_dump``. Restore then puts back files only: it
refuses a backup without a database into a SQLite configuration, and
leaves out a SQLite snapshot when restoring into a PostgreSQL one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import stat
import time
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from twisted.internet.threads import deferToThreadPool

from scepproxyd.files import fsync_directory, open_new_private
from scepproxyd.ca.material import RA_CERTIFICATE_NAME, RA_KEY_NAME
from scepproxyd.daemon.logs import get_logger
from scepproxyd.store import StoreError, offline
from scepproxyd.timestamps import utc_iso

log = get_logger(__name__)

MANIFEST = "MANIFEST.json"
FORMAT = 1
DATABASE_ROLE = "database"
#: Roles older backups may hold whose files are no longer used: checked, then not restored.
#: (agent.token_file: the shared agent token, replaced by per-host agent credentials in the database.)
RETIRED_ROLES = frozenset({"agent.token_file"})
#: How long restore waits for the live database's lock before deciding a daemon holds it.
LOCK_TIMEOUT = offline.LOCK_TIMEOUT
_CHUNK = 1024 * 1024
_STAGED_SUFFIX = ".restoring"


class BackupError(Exception):
    """
    A backup or restore refused or failed; ``str()`` is the whole message.

    ``field`` is ``"directory"`` when the backup location is at fault
    (the admin API answers 422 then).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class DaemonRunning(BackupError):
    """Restore refused: a scepproxyd has the live database open."""


def _roles(settings) -> list[tuple[str, Path]]:
    """Every secret or key-material file the configuration names, by role (the config key)."""
    ca = settings.ca
    return [
        ("state.key_file", settings.key_file),
        ("admin.token_file", settings.admin.token_file),
        ("delivery.webhook_token_file", settings.delivery.webhook_token_file),
        ("delivery.nanomdm_api_key_file", settings.delivery.nanomdm_api_key_file),
        ("ca.key_file", ca.key_file),
        ("ca.certificate_file", ca.certificate_file),
        ("ca.challenge_file", ca.challenge_file),
        ("ca.ra_key", ca.key_file.with_name(RA_KEY_NAME)),
        ("ca.ra_certificate", ca.key_file.with_name(RA_CERTIFICATE_NAME)),
    ]


def _role_paths(settings) -> dict[str, Path]:
    paths = dict(_roles(settings))
    paths[DATABASE_ROLE] = settings.database.path
    return paths


def _present(settings) -> list[tuple[str, Path]]:
    """The roles whose file exists, each path once (the first role naming it wins)."""
    seen, found = set(), []
    for role, path in _roles(settings):
        if path in seen or path == settings.database.path:
            continue
        seen.add(path)
        if path.is_file():
            found.append((role, path))
    return found


def state_files(settings) -> list[Path]:
    """Every secret or key-material file of this configuration that exists (the database not included)."""
    return [path for _, path in _present(settings)]


def _backup_name(settings, role: str, path: Path) -> str:
    try:
        return PurePosixPath(*path.relative_to(settings.state_directory).parts).as_posix()
    except ValueError:
        return "external/%s/%s" % (role, path.name)


def on_postgres(settings) -> bool:
    """Whether the database is on PostgreSQL: then a backup holds the state files only."""
    return settings.database.engine == "postgresql"


def not_included(settings) -> str | None:
    """What a backup of ``settings`` leaves out and how to back it up, or None when it is complete."""
    if not on_postgres(settings):
        return None
    from scepproxyd.store.postgres import redacted

    return ("the database is not in this backup: it is on PostgreSQL (%s), shared by every node; back it up with "
            "pg_dump (docs/operations.md, Several nodes)" % (redacted(settings.database.url),))


def _plan(settings) -> list[tuple[str, str, Path]]:
    """``(name in the backup, role, source path)`` for each file, the database not included."""
    plan = [(_backup_name(settings, role, path), role, path) for role, path in _present(settings)]
    names = [name for name, _, _ in plan] + [MANIFEST]
    if not on_postgres(settings):
        names.append(settings.database.path.name)
    if len(set(names)) != len(names):
        raise BackupError(
            "two state files would have the same name in the backup (%s); give them distinct names in the "
            "configuration" % (", ".join(sorted(n for n in set(names) if names.count(n) > 1)),)
        )
    return plan


# -- files -----------------------------------------------------------------------


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy(source: Path, target: Path) -> tuple[str, int]:
    """Copy ``source`` to a new private file ``target``, synced; returns its sha256 and size."""
    with open(source, "rb") as src:
        return _copy_open(src, target)


def _copy_open(src, target: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open_new_private(target) as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def _readonly_uri(path: Path) -> str:
    return "file:%s?mode=ro" % (quote(str(path)),)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


# -- backup ----------------------------------------------------------------------


def _prepare_directory(directory: Path, claim_name: str) -> bool:
    """
    Make ``directory`` (mode 0700) or check that it is empty and writable, and claim it.

    The claim is an empty file (the database snapshot's, or on PostgreSQL the
    manifest's staging file), made with O_EXCL: a second backup racing into
    the same directory fails there, before writing anything. Returns whether
    the directory was made here.
    """
    where = "directory"
    try:
        if directory.exists() or directory.is_symlink():
            if not directory.is_dir():
                raise BackupError("%s exists and is not a directory" % (directory,), field=where)
            if any(directory.iterdir()):
                raise BackupError(
                    "%s is not empty; back up into a new or empty directory" % (directory,), field=where
                )
            if not os.access(directory, os.W_OK | os.X_OK):
                raise BackupError("%s is not writable by scepproxyd" % (directory,), field=where)
            if directory.stat().st_uid == os.geteuid():
                os.chmod(directory, 0o700)
            created = False
        else:
            directory.mkdir(mode=0o700, parents=True)
            created = True
    except PermissionError:
        raise BackupError(
            "cannot create %s: permission denied (scepproxyd must be able to write there)" % (directory,),
            field=where,
        ) from None
    except OSError as e:
        hint = ""
        if e.errno == errno.EROFS:
            hint = (" (under systemd, ProtectSystem=strict lets scepproxyd write only to its state directory "
                    "and the unit's ReadWritePaths)")
        raise BackupError("cannot create %s: %s%s" % (directory, _reason(e), hint), field=where) from None
    try:
        open_new_private(directory / claim_name).close()
    except FileExistsError:
        raise BackupError(
            "%s is not empty; back up into a new or empty directory" % (directory,), field=where
        ) from None
    except OSError as e:
        if created:
            directory.rmdir()
        raise BackupError("cannot write into %s: %s" % (directory, _reason(e)), field=where) from None
    return created


def _schema_version(database: Path) -> int:
    conn = sqlite3.connect(_readonly_uri(database), uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _write_files(directory: Path, plan, database_name: str | None, postgres: dict | None = None) -> dict:
    """
    Copy the state files next to the database snapshot and write the manifest last.

    ``database_name`` None: no snapshot (the database is on PostgreSQL, described by ``postgres``:
    its URL without password and schema version); the claim file is then the manifest's staging file.
    """
    entries = []
    if database_name is not None:
        database = directory / database_name
        digest, size = _sha256(database)
        entries.append({"name": database_name, "role": DATABASE_ROLE, "bytes": size, "sha256": digest})
    for name, role, source in plan:
        target = directory / name
        try:
            src = open(source, "rb")
        except OSError as e:
            raise BackupError("cannot read %s: %s" % (source, _reason(e))) from None
        with src:
            try:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                digest, size = _copy_open(src, target)
            except OSError as e:
                raise BackupError("cannot write %s: %s" % (target, _reason(e)), field="directory") from None
        entries.append({"name": name, "role": role, "bytes": size, "sha256": digest})
    manifest = {
        "format": FORMAT,
        "created_at": utc_iso(time.time()),
        "database": database_name,
        "database_included": database_name is not None,
        "files": entries,
    }
    if database_name is not None:
        manifest["schema_version"] = _schema_version(database)
    else:
        manifest.update(schema_version=postgres["schema_version"], database_engine="postgresql",
                        database_url=postgres["url"], not_included=postgres["not_included"])
    staged = directory / (MANIFEST + ".tmp")
    try:
        if database_name is None:
            staged.unlink()  # the claim (see _prepare_directory), made anew as the manifest's own private file
        with open_new_private(staged) as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, directory / MANIFEST)
        for folder in {(directory / e["name"]).parent for e in entries}:
            fsync_directory(folder)
    except OSError as e:
        raise BackupError("cannot write %s: %s" % (directory / MANIFEST, _reason(e)), field="directory") from None
    return manifest


def _discard(directory: Path, created: bool, names) -> None:
    """Remove what a failed backup wrote (and only that)."""
    for name in names:
        try:
            (directory / name).unlink()
        except OSError:
            pass
    for folder, _, _ in sorted(os.walk(directory), key=lambda w: -len(w[0])):
        if Path(folder) != directory:
            try:
                os.rmdir(folder)
            except OSError:
                pass
    if created:
        try:
            directory.rmdir()
        except OSError:
            pass


async def take_backup(store, settings, directory: Path, reactor) -> dict:
    """
    Back up the database and state files into ``directory`` while the daemon serves.

    ``directory`` must be absolute and either not exist or be empty; it is
    made with mode 0700. Returns ``{"directory", "files": [names],
    "database_bytes"}``; refusals and failures are L{BackupError}, and a
    failed backup leaves nothing behind. File work runs on ``reactor``'s
    worker threads.
    """

    def in_thread(fn, *args):
        # Hashing and copying can take a while for a large database: off the reactor.
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    directory = Path(directory)
    if not directory.is_absolute():
        raise BackupError("directory must be an absolute path, got %r" % (str(directory),), field="directory")
    database_name = None if on_postgres(settings) else settings.database.path.name
    plan = await in_thread(_plan, settings)
    created = await in_thread(_prepare_directory, directory, database_name or MANIFEST + ".tmp")
    names = [MANIFEST, MANIFEST + ".tmp"] + [name for name, _, _ in plan] + [database_name] * bool(database_name)
    database_bytes, postgres = None, None
    try:
        try:
            if database_name is not None:
                database_bytes = await store.backup_database(directory / database_name)
            else:
                from scepproxyd.store.postgres import redacted

                postgres = {"url": redacted(settings.database.url), "schema_version": await store.schema_version(),
                            "not_included": not_included(settings)}
        except StoreError as e:
            raise BackupError("database backup into %s failed: %s" % (directory, e)) from None
        manifest = await in_thread(_write_files, directory, plan, database_name, postgres)
    except BaseException:
        await in_thread(_discard, directory, created, names)
        raise
    files = [entry["name"] for entry in manifest["files"]]
    answer = {"directory": str(directory), "files": files, "database_bytes": database_bytes,
              "database_included": database_name is not None}
    if database_name is None:
        answer["not_included"] = postgres["not_included"]
        log.info("backed up {count} state files to {directory}; {not_included}", count=len(files),
                 directory=str(directory), not_included=postgres["not_included"])
    else:
        log.info(
            "backed up {count} files ({database_bytes} bytes of database) to {directory}",
            count=len(files), database_bytes=database_bytes, directory=str(directory),
        )
    return answer


# -- restore ---------------------------------------------------------------------


def _running(path: Path) -> DaemonRunning:
    return DaemonRunning(
        "scepproxyd is running: another process has the database %s open; stop the daemon "
        "(systemctl stop scepproxyd) and run the restore again" % (path,)
    )


def _lock_live_database(path: Path) -> sqlite3.Connection | None:
    """
    Take an exclusive lock on the live database, or refuse because a daemon holds it (``store.offline``).

    Returns the locked connection (None when there is no live database, or
    SQLite cannot read it and no other process holds it).
    """
    if not path.exists():
        return None
    try:
        return offline.lock_exclusive(path, LOCK_TIMEOUT)
    except offline.DatabaseInUse:
        raise _running(path) from None
    except sqlite3.Error:
        # A damaged file (the reason for many restores): ask the OS about the lock instead.
        try:
            locked = offline.posix_locked(path)
        except OSError as os_error:
            raise BackupError(
                "cannot open the live database %s to check that scepproxyd is stopped: %s; run the restore "
                "as the user scepproxyd runs as" % (path, _reason(os_error))
            ) from None
        if locked:
            raise _running(path) from None
        return None


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(
            "%s has no %s: it is not a scepproxyd backup, or the backup did not finish" % (directory, MANIFEST)
        ) from None
    except OSError as e:
        raise BackupError("cannot read %s: %s" % (path, _reason(e))) from None
    except ValueError as e:
        raise BackupError("%s is not valid JSON: %s" % (path, e)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("%s is not a format %d scepproxyd backup manifest" % (path, FORMAT))
    return manifest


def _check_manifest(manifest: dict, known_roles) -> list[dict]:
    """The manifest's entries, each checked for shape, a safe name and a known role."""
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise BackupError("%s lists no files" % (MANIFEST,))
    names, roles = set(), set()
    for entry in files:
        if not isinstance(entry, dict):
            raise BackupError("%s has an entry that is not an object" % (MANIFEST,))
        name, role = entry.get("name"), entry.get("role")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(name, str) or not isinstance(role, str):
            raise BackupError("%s has an entry without a name or role" % (MANIFEST,))
        parts = PurePosixPath(name).parts
        if (
            not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name
            or name == MANIFEST
        ):
            raise BackupError("%s names an unsafe file %r" % (MANIFEST, name))
        if role not in known_roles:
            raise BackupError("%s lists %s with unknown role %r" % (MANIFEST, name, role))
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BackupError("%s has no valid sha256 for %s" % (MANIFEST, name))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BackupError("%s has no valid size for %s" % (MANIFEST, name))
        if name in names or role in roles:
            raise BackupError("%s lists %s (role %s) twice" % (MANIFEST, name, role))
        names.add(name)
        roles.add(role)
    included = manifest.get("database_included", True)
    if included is not False and DATABASE_ROLE not in roles:
        raise BackupError("%s lists no database" % (MANIFEST,))
    if included is False and DATABASE_ROLE in roles:
        raise BackupError("%s lists a database but says the database is not included" % (MANIFEST,))
    return files


def _refuse_symlinks(directory: Path) -> None:
    """A backup holds only regular files and directories: a symbolic link anywhere in it is refused.

    A link (to a file or a directory) would make restore read, and put into
    the state directory, something that is not what the backup took.
    """
    for folder, subfolders, files in os.walk(directory, followlinks=False):
        for name in sorted(subfolders + files):
            path = Path(folder) / name
            if path.is_symlink():
                kind = "directory" if name in subfolders else "file"
                raise BackupError(
                    "backup %s contains a symbolic link (%s %s -> %s); a backup holds only regular files and "
                    "directories: replace the link with what it points to, or use an untouched copy of the "
                    "backup; nothing was restored" % (directory, kind, path, os.readlink(path))
                )


def _verify_file(directory: Path, entry: dict) -> None:
    path = directory / entry["name"]
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise BackupError("backup file %s is not a regular file; nothing was restored" % (path,))
        digest, size = _sha256(path)
    except FileNotFoundError:
        raise BackupError("backup file %s listed in %s is missing; nothing was restored" % (path, MANIFEST)) from None
    except OSError as e:
        raise BackupError("cannot read backup file %s: %s; nothing was restored" % (path, _reason(e))) from None
    if size != entry["bytes"] or digest != entry["sha256"]:
        raise BackupError(
            "backup file %s does not match %s (%s differs): the backup is damaged or was altered; "
            "nothing was restored" % (path, MANIFEST, "size" if size != entry["bytes"] else "sha256")
        )


def _check_database(path: Path) -> None:
    from scepproxyd.store.database import _schema_files

    try:
        conn = sqlite3.connect(_readonly_uri(path), uri=True)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise BackupError("backup database %s cannot be read: %s; nothing was restored" % (path, e)) from None
    if problems != ["ok"]:
        raise BackupError(
            "backup database %s fails PRAGMA integrity_check (%s); nothing was restored"
            % (path, "; ".join(problems[:3]))
        )
    known = _schema_files()[-1][0]
    if version > known:
        raise BackupError(
            "backup database %s has schema version %d, newer than this scepproxyd knows (%d); restore it "
            "with the scepproxyd that took it; nothing was restored" % (path, version, known)
        )


def _owner(state_directory: Path) -> tuple[int, int] | None:
    """Run as root, restored files belong to the state directory's owner (the daemon's user)."""
    if os.geteuid() != 0:
        return None
    try:
        info = state_directory.stat()
    except OSError:
        return None
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def _make_directories(folder: Path, owner) -> None:
    """Make ``folder`` and its missing parents, mode 0700 (owned by ``owner`` when given)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        if owner is not None:
            os.chown(path, *owner)


def _stage(directory: Path, entry: dict, target: Path, owner) -> Path:
    """Copy one verified file next to its target, checking the copy against the manifest again."""
    staged = target.with_name(target.name + _STAGED_SUFFIX)
    _make_directories(target.parent, owner)
    staged.unlink(missing_ok=True)  # left by an interrupted restore
    digest, _ = _copy(directory / entry["name"], staged)
    if owner is not None:
        os.chown(staged, *owner)
    if digest != entry["sha256"]:
        raise BackupError(
            "backup file %s changed while it was restored; nothing was restored" % (directory / entry["name"],)
        )
    return staged


def restore_backup(directory: Path, settings) -> list[str]:
    """
    Put the backup in ``directory`` in place of the state of ``settings``, offline.

    Refuses (L{DaemonRunning}) while a daemon has the live database open.
    Every file is checked against ``MANIFEST.json`` and the database with
    ``PRAGMA integrity_check`` before anything in the state directory is
    touched; then each file is staged next to its target and renamed into
    place, mode 0600, and the old database's ``-wal``/``-shm`` are removed.
    Returns the names restored, as the manifest lists them.

    On PostgreSQL (``[database] url``) only the files are restored: the
    database is the server's (restored from its ``pg_dump``), a SQLite
    snapshot in the backup is checked but left out, and no daemon can be
    seen from here, so stopping this node first is the operator's part.
    A backup without a database (taken on PostgreSQL) is refused for a
    SQLite configuration, which would be left without one.
    """
    directory = Path(directory).absolute()
    paths = _role_paths(settings)
    database = settings.database.path
    files_only = on_postgres(settings)
    lock = None if files_only else _lock_live_database(database)
    staged: list[tuple[Path, Path]] = []
    try:
        _refuse_symlinks(directory)
        manifest = _read_manifest(directory)
        entries = _check_manifest(manifest, set(paths) | RETIRED_ROLES)
        for entry in entries:
            _verify_file(directory, entry)
        entries = [entry for entry in entries if entry["role"] not in RETIRED_ROLES]
        database_entry = next((e for e in entries if e["role"] == DATABASE_ROLE), None)
        if database_entry is None and not files_only:
            raise BackupError(
                "backup %s holds no database: it was taken with the database on PostgreSQL (%s), and this "
                "configuration keeps its database in SQLite at %s; restore it with a configuration whose "
                "[database] url names that PostgreSQL database, or use a backup taken on SQLite; nothing was "
                "restored" % (directory, manifest.get("database_url", "its URL is not recorded"), database))
        if database_entry is not None:
            _check_database(directory / database_entry["name"])
        if files_only:
            entries = [entry for entry in entries if entry["role"] != DATABASE_ROLE]
        targets = [(entry, paths[entry["role"]]) for entry in entries]
        if len({target for _, target in targets}) != len(targets):
            raise BackupError("two backup files would be restored to the same path; check the configuration")
        owner = _owner(settings.state_directory)
        try:
            _make_directories(settings.state_directory, owner)
            for entry, target in targets:
                staged.append((_stage(directory, entry, target, owner), target))
        except OSError as e:
            raise BackupError(
                "cannot write into the state directory %s: %s; nothing was restored"
                % (settings.state_directory, _reason(e))
            ) from None
    except BaseException:
        for path, _ in staged:
            path.unlink(missing_ok=True)
        if lock is not None:
            lock.close()
        raise
    if lock is not None:
        lock.close()  # before the stale -wal goes: closing may checkpoint into the old file
    for suffix in ("-wal", "-shm", "-journal") if not files_only else ():
        Path(str(database) + suffix).unlink(missing_ok=True)
    for path, target in staged:
        os.replace(path, target)
    for folder in {target.parent for _, target in staged}:
        fsync_directory(folder)
    names = [entry["name"] for entry in entries]
    log.info("restored {count} files from {directory}", count=len(names), directory=str(directory))
    return names
