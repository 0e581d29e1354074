"""Show text that came from outside (devices, agents, uploads) without letting it drive a terminal.

One function, used by every ``scepproxyctl`` table and by the daemon's log
observer, so a CSR subject, a host serial or an agent's error text cannot
move the cursor, retitle or clear an operator's terminal, start a new log
line, or reorder what is shown around it. Plain text (including non-ASCII
letters) is unchanged; backslashes are not doubled, so a DN such as
``CN=a\\,b`` reads as the daemon got it.
"""

import re

# C0 controls (tab and newline included), DEL, C1 controls; the line and
# paragraph separators; the bidi marks, embeddings, overrides and isolates;
# and lone surrogates, which cannot be written as UTF-8 at all.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return "\\x%02x" % (code,) if code < 0x100 else "\\u%04x" % (code,)


def printable(text: str) -> str:
    """``text`` with every control, separator, bidi and surrogate character written as an escape."""
    if text.isprintable():
        return text  # Python counts each character _CONTROL matches as unprintable; this test is C-fast
    return _CONTROL.sub(_escape, text)
