"""One strict reader for every JSON document that comes from outside.

Admin and agent API bodies, host imports, NanoMDM's webhook and Android
certificate templates all go through L{read_json}. Python's ``json`` module
accepts things that later break the daemon far from the request: lone
surrogates (``"\\ud800"`` decodes to a str that cannot be written as UTF-8
to the database or a log), nesting deep enough to exhaust the stack,
integers past Python's int-from-string limit, NaN and Infinity, and keys
given twice (the last silently wins). Each is refused here with a reason,
before anything else sees the document.
"""

import json
import math
import re

from scepproxyd.printable import printable

#: Deepest nesting of arrays and objects accepted (a document ``[[1]]`` nests 2 deep).
MAX_NESTING = 32
#: Longest integer accepted, in digits.
MAX_INTEGER_DIGITS = 40

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
# Only a \u escape can put a surrogate or a NUL into a string read from valid UTF-8.
_RISKY_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


class JsonInputError(ValueError):
    """A refused document: ``status`` 400 when it is not readable JSON, 422 when a value is refused.

    ``field`` names the top-level member at fault, when there is one.
    """

    def __init__(self, message: str, status: int = 400, field: str | None = None, *,
                 too_deep: bool = False, duplicate_key: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.too_deep = too_deep
        self.duplicate_key = duplicate_key


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of ``text`` nest more than ``limit`` deep, counted outside strings.

    A scan of the brackets, not a parse, so it cannot recurse however deep the text goes.
    """
    outside = _STRING.sub("", text)
    if outside.count("[") + outside.count("{") <= limit:
        return False
    depth = 0
    for match in _BRACKET.finditer(outside):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def read_json(raw: bytes, what: str = "request body"):
    """The JSON document in ``raw`` (UTF-8, an optional BOM), or L{JsonInputError} saying why not."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JsonInputError("%s is not valid UTF-8: byte 0x%02x at position %d" % (what, raw[e.start], e.start)) from None
    if nests_deeper_than(text, MAX_NESTING):
        raise JsonInputError("%s nests arrays and objects deeper than %d levels" % (what, MAX_NESTING), too_deep=True)

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
            raise JsonInputError(
                "%s has an integer of more than %d digits" % (what, MAX_INTEGER_DIGITS), status=422
            )
        return int(digits)

    def real(spelled: str) -> float:
        value = float(spelled)
        if not math.isfinite(value):
            raise JsonInputError("%s has a number too large to represent (%s)" % (what, spelled[:40]), status=422)
        return value

    def constant(name: str):
        raise JsonInputError("%s has %s, which is not a JSON number" % (what, name), status=422)

    def members(pairs: list) -> dict:
        result = {}
        for key, value in pairs:
            if key in result:
                raise JsonInputError(
                    '%s has the key "%s" twice' % (what, printable(key[:80])),
                    status=422, field=printable(key), duplicate_key=key,
                )
            result[key] = value
        return result

    try:
        value = json.loads(
            text, parse_int=integer, parse_float=real, parse_constant=constant, object_pairs_hook=members
        )
    except JsonInputError:  # a ValueError too: already says what is wrong
        raise
    except ValueError as e:  # JSONDecodeError
        raise JsonInputError("%s is not valid JSON: %s" % (what, e)) from None
    if _RISKY_ESCAPE.search(text):
        _refuse_bad_strings(value, what)
    return value


def _refuse_bad_strings(document, what: str) -> None:
    """Refuse a lone surrogate or a NUL in any string, keys included (nesting is already bounded)."""
    pending = [(document, None)]
    while pending:
        value, top = pending.pop()
        if isinstance(value, str):
            strings = (value,)
        elif isinstance(value, dict):
            strings = tuple(value)
            pending.extend((item, top if top is not None else printable(key)) for key, item in value.items())
        elif isinstance(value, list):
            strings = ()
            pending.extend((item, top) for item in value)
        else:
            continue
        for string in strings:
            bad = _BAD_CHAR.search(string)
            if bad is None:
                continue
            if bad.group() == "\x00":
                reason = "a NUL character (\\u0000) in a string"
            else:
                reason = "a lone surrogate (%s) in a string; text must be valid Unicode" % (printable(bad.group()),)
            field = top if top is not None or not isinstance(document, dict) else printable(string)
            raise JsonInputError("%s has %s" % (what, reason), status=422, field=field)
