"""The one exception the codec raises for anything wrong with a message."""

import functools

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import InvalidVersion


class MessageError(Exception):
    """A SCEP message could not be decoded, verified or decrypted.

    ``str()`` is an internal reason for debug logs; never show it to a client.
    """


# What asn1crypto and cryptography raise on hostile input. asn1crypto parses
# lazily, so these can surface far from the call that loaded the bytes.
_DECODING_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    UnicodeError,
    RecursionError,
    InvalidSignature,
    UnsupportedAlgorithm,
    InvalidVersion,
)


def decoding(function):
    """Turn every decoding failure inside ``function`` into MessageError."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MessageError:
            raise
        except _DECODING_ERRORS as e:
            raise MessageError("malformed message (%s: %s)" % (type(e).__name__, e)) from e

    return wrapper
