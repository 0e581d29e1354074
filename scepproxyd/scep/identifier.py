"""Parse the proxy identifier that devices carry in their SCEP URL.

The identifier is ``hostUUID,profileUUID,caName,challenge``, path-escaped (so
commas usually arrive as ``%2C``). It comes from the network, so every part is
checked strictly and every refusal says what was wrong without echoing the
challenge back.
"""

import re

import attrs

#: Longest raw identifier we are willing to look at, before decoding.
MAX_IDENTIFIER_LENGTH = 2048

_PART_NAMES = ("hostUUID", "profileUUID", "caName", "challenge")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

# Host and profile identifiers are Apple UDIDs, UUIDs or similar opaque tokens.
_OPAQUE_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")
# A CA name becomes part of profile variable names: letters, digits, underscore.
CA_NAME = re.compile(r"[A-Za-z0-9_]{1,255}")
# One-time challenges are base64url; allow some room for other minting schemes.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{16,128}")


class InvalidIdentifier(ValueError):
    """The identifier cannot name a host profile; ``str()`` is the reason for the device."""


@attrs.frozen
class ProxyIdentifier:
    host_uuid: str
    profile_uuid: str
    ca_name: str
    challenge: str = attrs.field(repr=False)


def _percent_decode(raw: str) -> str:
    if "%" not in raw and raw.isascii():
        return raw  # nothing to decode, and ASCII is valid UTF-8 as it is
    if _BAD_ESCAPE.search(raw):
        raise InvalidIdentifier("identifier has a malformed percent-escape")
    try:
        decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw)
        # Escapes stand for bytes; re-read them as UTF-8.
        return decoded.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise InvalidIdentifier("identifier is not valid UTF-8") from None


def parse_identifier(raw: bytes | str) -> ProxyIdentifier:
    """Decode and validate one path segment into a L{ProxyIdentifier}."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidIdentifier("identifier must be ASCII (path-escape it)") from None
    if not raw:
        raise InvalidIdentifier("missing identifier: expected hostUUID,profileUUID,caName,challenge")
    if len(raw) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifier("identifier is too long")
    parts = _percent_decode(raw).split(",")
    if len(parts) != len(_PART_NAMES):
        raise InvalidIdentifier(
            "identifier must have 4 comma-separated parts "
            "(hostUUID,profileUUID,caName,challenge), got %d" % (len(parts),)
        )
    for name, value in zip(_PART_NAMES, parts):
        if not value:
            raise InvalidIdentifier("identifier part %s is empty" % (name,))
    host_uuid, profile_uuid, ca_name, challenge = parts
    for name, value in (("hostUUID", host_uuid), ("profileUUID", profile_uuid)):
        if not _OPAQUE_ID.fullmatch(value):
            raise InvalidIdentifier(
                "identifier part %s must be 1-255 letters, digits, '.', '_' or '-'" % (name,)
            )
    if not CA_NAME.fullmatch(ca_name):
        raise InvalidIdentifier(
            "identifier part caName must be 1-255 letters, digits or underscores"
        )
    if not _CHALLENGE.fullmatch(challenge):
        raise InvalidIdentifier("identifier part challenge is not a well-formed challenge")
    return ProxyIdentifier(host_uuid, profile_uuid, ca_name, challenge)
