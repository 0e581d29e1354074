"""Writing the daemon's secret and state files so a crash or a full disk never leaves half of one.

Every key, token and CA file is written the same way: into a temporary file
in the target's directory, created with mode 0600 (so no umask and no moment
exposes it), written in full, fsynced, then put in place with one rename (or
a hard link when an existing file must never be replaced), and the directory
fsynced so the name survives a power cut. A failure at any step removes the
temporary file: the target is either absent or complete.

Files that are streamed rather than written whole (a backup's copies, the
CLI's file of new agent credentials) are opened with L{open_new_private};
secrets are read only after L{loose_mode_advice} finds their mode private.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return ".%s." % (path.name,)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files an interrupted earlier write (power cut, kill -9) left behind."""
    prefix = _temp_prefix(path)
    for leftover in path.parent.glob(prefix + "*" + _TEMP_SUFFIX):
        if leftover.name.startswith(prefix) and leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def write_private_file(path: Path, data: bytes, replace: bool = False) -> None:
    """
    Put ``data`` at ``path`` (mode 0600) atomically and durably.

    With ``replace`` false an existing ``path`` is never replaced
    (FileExistsError), as two daemons starting at once must not overwrite
    each other's new key. Raises OSError (e.g. ENOSPC) with nothing left
    behind; the caller turns it into a message naming the file.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    # mkstemp creates the file O_EXCL with mode 0600 whatever the umask.
    fd, temporary = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            os.unlink(temporary)
        fsync_directory(path.parent)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def open_new_private(path, mode: str = "wb", **options):
    """
    A new file at ``path``, mode 0600 whatever the umask, opened for writing (``open()``'s ``mode`` and ``options``).

    Refuses to replace or follow anything that is there (FileExistsError),
    so a secret never lands in a file someone else made or linked in
    advance; other refusals are OSError for the caller to name the file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, mode, **options)
    except BaseException:
        os.close(fd)
        raise


def loose_mode_advice(path: Path) -> str | None:
    """A message for a secret file that its group or others may use (any of mode 0o077), else None.

    Raises OSError if ``path`` cannot be looked at.
    """
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        return "%s is readable by others (mode %o); chmod 600 it" % (path, mode)
    return None


def truncated_file_advice(path: Path, what: str, remedy: str) -> str | None:
    """A message for an empty ``path`` (an older scepproxyd's interrupted first start), else None."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    if size:
        return None
    return "%s (%s) is empty (0 bytes): an earlier start was interrupted while writing it, e.g. by a full disk. %s" % (
        path, what, remedy,
    )
