"""A daemon's state directory and database, made as the daemon makes them and read from outside."""

import hashlib
import sqlite3
from pathlib import Path

from scepproxyd.config import load_settings
from scepproxyd.service import prepare_state

from support.daemon import daemon_config

DB_NAME = "scepproxyd.sqlite3"
# The built-in CA with a small key, so state is made fast.
FAST_CA = {"key_size": "2048"}


def make_settings(directory: Path, ra: bool = True, **sections):
    """A configuration whose state lives in ``directory/state``, with its state made as the daemon makes it."""
    directory.mkdir(parents=True, exist_ok=True)
    sections.setdefault("ca", {}).update(FAST_CA, ra="yes" if ra else "no")
    settings = load_settings(daemon_config(directory, 1, 2, **sections))
    prepare_state(settings)
    return settings


def new_settings(directory: Path, **sections):
    """A configuration for a state directory that does not exist yet (as before a restore)."""
    directory.mkdir(parents=True, exist_ok=True)
    sections.setdefault("ca", {}).update(FAST_CA)
    return load_settings(daemon_config(directory, 1, 2, **sections))


def fingerprint_files(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative name -> sha256 (the database by its rows, not its bytes)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(DB_NAME):
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def rows(database: Path, sql: str) -> list:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
