"""Read SCEP's query parameters the way SCEP clients mean them.

Form decoding (``+`` as space) would corrupt base64 ``message=`` values that
clients send without escaping, so the raw query is split and percent-decoded
here by hand. Both base64 alphabets are accepted because clients differ.
"""

import base64
import binascii
import re

OPERATIONS = ("GetCACaps", "GetCACert", "PKIOperation")

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_WHITESPACE = re.compile(rb"[\r\n\t ]")


class InvalidQuery(ValueError):
    """The query cannot be a SCEP request; ``str()`` is the reason for the device."""


def _percent_decode(value: bytes) -> bytes:
    if b"%" not in value:
        return value  # the common case, with no regular expression at all
    if _BAD_ESCAPE.search(value):
        raise InvalidQuery("query has a malformed percent-escape")
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value)


def parse_query(uri: bytes) -> dict[str, bytes]:
    """Return the query parameters of a request URI, first value wins, ``+`` kept as data."""
    _, _, query = uri.partition(b"?")
    params: dict[str, bytes] = {}
    for pair in query.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key = _percent_decode(name).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidQuery("query parameter names must be ASCII") from None
        params.setdefault(key, _percent_decode(value))
    return params


def scep_operation(params: dict[str, bytes]) -> str:
    """The ``operation`` parameter, which must be one the proxy serves."""
    raw = params.get("operation")
    if raw is None or raw == b"":
        raise InvalidQuery("missing operation parameter")
    operation = raw.decode("ascii", "replace")
    if operation not in OPERATIONS:
        raise InvalidQuery("unsupported operation; expected GetCACaps, GetCACert or PKIOperation")
    return operation


def decode_message(value: bytes) -> bytes:
    """Decode a GET ``message=`` value in either base64 alphabet, with or without padding."""
    compact = _WHITESPACE.sub(b"", value)
    if not compact:
        raise InvalidQuery("message parameter is empty")
    standard = compact.replace(b"-", b"+").replace(b"_", b"/")
    standard += b"=" * (-len(standard) % 4)
    try:
        decoded = base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidQuery("message parameter is not valid base64") from None
    if not decoded:
        raise InvalidQuery("message parameter is empty")
    return decoded


def encode_message(der: bytes) -> str:
    """Standard base64 for forwarding a message by GET (the caller percent-escapes it)."""
    return base64.b64encode(der).decode("ascii")


def is_pkiclient(segment: bytes) -> bool:
    """Whether a path segment is ``pkiclient.exe``, in any case (clients write ``PKIClient.exe`` too)."""
    return segment.lower() == b"pkiclient.exe"
