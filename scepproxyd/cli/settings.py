"""
What scepproxyctl reads from the daemon's INI file: where the admin API is, and its token.

Only ``[state]`` (for the state directory that ``token_file`` is relative to)
and ``[admin]`` are read, with the daemon's own converters, defaults and
messages (``scepproxyd.config``). The other sections belong to the daemon:
whatever they hold (a ``systemd:`` ``[server] listen``, paths only the daemon
can read) never stops a command. ``restore`` is the exception: it works on
the daemon's state, so it reads the whole file like the daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scepproxyd.config import SCHEMA
from scepproxyd.config.loader import read_config_text, read_ini, resolve_path, section_values


@dataclass(frozen=True)
class AdminEndpoint:
    """``[admin] listen``, ``url`` (``None`` for ``-``) and ``token_file`` (absolute) of one config file."""

    listen: str
    url: str | None
    token_file: Path


def load_admin_endpoint(path: str | Path) -> AdminEndpoint:
    """Read ``[state]`` and ``[admin]`` of the file at ``path``; every problem is a ``ConfigError``."""
    path = Path(path)
    parser = read_ini(read_config_text(path), path)
    state = section_values(parser, path, "state", SCHEMA["state"])
    admin = section_values(parser, path, "admin", SCHEMA["admin"])
    state_directory = resolve_path(Path(os.path.abspath(path)).parent, state["directory"])
    return AdminEndpoint(admin["listen"], admin["url"], resolve_path(state_directory, admin["token_file"]))
