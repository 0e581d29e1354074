"""Several scepproxyd nodes on one PostgreSQL database, set up as docs/operations.md says (Several nodes).

The first node makes the state files (secrets key, admin and webhook tokens,
the built-in CA's key material); every other node gets copies of them before
it starts, as an operator distributes them; all share the database.
"""

import shutil
from pathlib import Path

from support.daemon import Daemon

#: State files every node must share (relative to the state directory); the CA's directory when it is on.
SHARED = ("secrets.key", "admin.token", "nanomdm-webhook.token", "ca")


def database_section(database) -> dict:
    """``[database]`` for a support.postgres.Database ``(url, password_file)``."""
    section = {"url": database.url}
    if database.password_file is not None:
        section["password_file"] = str(database.password_file)
    return section


def share_state(first: Path, other: Path) -> None:
    """Copy the state files every node must share from ``first``'s state directory to ``other``'s."""
    other.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in SHARED:
        source = first / name
        if source.is_dir():
            shutil.copytree(source, other / name, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, other / name)


def start_nodes(directory: Path, database, count: int = 2, **sections) -> list[Daemon]:
    """``count`` started daemons in ``directory/node-N`` on ``database``, sharing the state files of the first."""
    sections = dict(sections)
    sections["database"] = {**database_section(database), **sections.get("database", {})}
    (directory / "node-1").mkdir(parents=True, exist_ok=True)
    nodes = [Daemon(directory / "node-1", **sections).start()]
    try:
        for number in range(2, count + 1):
            node_directory = directory / ("node-%d" % number)
            node_directory.mkdir(parents=True, exist_ok=True)
            share_state(directory / "node-1" / "state", node_directory / "state")
            nodes.append(Daemon(node_directory, **sections).start())
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes
