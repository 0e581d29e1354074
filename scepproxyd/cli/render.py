"""Human output: aligned tables and ``key: value`` blocks, and ``--json`` as the API sent it.

Much of what is shown was chosen by devices and agents (CSR subjects, host
serials, error text, profile names), so every cell and message goes through
L{printable}: control characters, newlines, tabs and bidi overrides show as
escapes such as ``\\x1b``, ``\\n`` and ``\\u202e``. ``--json`` is exact (JSON escaping only).
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from scepproxyd.printable import printable


def text(value) -> str:
    """A cell: NULL is ``-``, lists are comma-joined, mappings ``key:value`` comma-joined by key, everything
    else ``str()``, escaped by L{printable}."""
    if value is None or value == "":
        return "-"
    if isinstance(value, dict):
        return ",".join("%s:%s" % (text(k), text(value[k])) for k in sorted(value)) if value else "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value) if value else "-"
    return printable(str(value))


def message(line: str) -> str:
    """A message for people (the outcome of a command, an error) with each of its lines escaped."""
    return "\n".join(printable(part) for part in line.split("\n"))


def table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Columns separated by two spaces, each as wide as its widest cell; the last is not padded."""
    cells = [list(headers)] + [[text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(("%s:" % key).ljust(width) + " " + text(value) for key, value in pairs)


def as_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
