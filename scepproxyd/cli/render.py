"""Human output: aligned tables and ``key: value`` blocks, and ``--json`` as the API sent it."""

from __future__ import annotations

import json
from typing import Iterable, Sequence


def text(value) -> str:
    """A cell: NULL is ``-``, lists are comma-joined, everything else ``str()``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value) if value else "-"
    return str(value)


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
