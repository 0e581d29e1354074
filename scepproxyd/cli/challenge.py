"""Reading a CA's static challenge (or a custom secret) without it ever touching argv, the screen or a log.

There is deliberately no ``--challenge VALUE``: a value on the command line
lands in shell history and in ``ps`` for every local user to read.
"""

from __future__ import annotations

import getpass
from pathlib import Path

from scepproxyd.cli.client import CliError


def strip_one_newline(value: str) -> str:
    """``echo secret > f`` adds one newline; the challenge itself may end in spaces, so only that goes."""
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def read_challenge(path: str | None, stdin, prompt: str, ask=getpass.getpass, what: str = "challenge") -> str:
    """
    The challenge from file ``path``, or (``None`` or ``-``) from ``stdin``:
    prompted without echo when stdin is a terminal, read to the end otherwise.

    Custom secrets are read the same way; ``what`` names the value in messages.
    """
    if path is not None and path != "-":
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise CliError("cannot read the %s from %s: %s" % (what, path, e.strerror or e)) from None
        except UnicodeDecodeError:
            raise CliError("cannot read the %s from %s: not UTF-8 text" % (what, path)) from None
        return strip_one_newline(raw)
    if stdin.isatty():
        try:
            return ask(prompt)
        except EOFError:
            raise CliError("no %s given" % (what,)) from None
    return strip_one_newline(stdin.read())
