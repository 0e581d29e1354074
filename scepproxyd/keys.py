"""Secrets kept on disk: the key that encrypts static challenges, and API tokens.

Both are made on first start in the state directory with mode 0600 (written
atomically by ``scepproxyd.files``) and never
leave it: challenges are stored AES-GCM encrypted, and tokens are compared in
constant time.
"""

import base64
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from scepproxyd.files import loose_mode_advice, truncated_file_advice, write_private_file

_NONCE_BYTES = 12
# Binds ciphertexts to their purpose, so a blob cannot be replayed as another kind of secret.
_CHALLENGE_AAD = b"scepproxyd:ca-static-challenge:v1"
_RA_KEY_AAD = b"scepproxyd:ra-private-key:v1"


class KeyFileError(Exception):
    """A key or token file is unusable; ``str()`` names the file and the problem."""


#: What to do about an empty key file, and about an empty token file.
KEY_REMEDY = (
    "If no CA integration's static challenge was ever stored with it (the first start failed), delete it and "
    "start again; otherwise restore it from a backup (scepproxyctl restore)."
)
TOKEN_REMEDY = (
    "Delete it and start again to get a new token (whoever used the old one needs the new one), "
    "or restore it from a backup (scepproxyctl restore)."
)


def create_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only, atomically; never replace an existing one.

    A failed write (a full disk) leaves nothing, so the next start makes it again.
    """
    try:
        write_private_file(path, data)
    except FileExistsError:
        return  # another process made it first; the caller reads that one
    except OSError as e:
        raise KeyFileError(
            "cannot write %s: %s; nothing was left behind: free some space (or fix the directory's "
            "permissions) and start again" % (path, e.strerror or e)
        ) from None


def _read_private(path: Path, what: str, remedy: str) -> bytes:
    advice = loose_mode_advice(path) or truncated_file_advice(path, what, remedy)
    if advice is not None:
        raise KeyFileError(advice)
    return path.read_bytes()


def load_or_create_key(path: Path) -> bytes:
    """The 256-bit AES key, made on first start."""
    path = Path(path)
    if not path.exists():
        create_private(path, base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
    try:
        key = base64.b64decode(_read_private(path, "the challenge key", KEY_REMEDY).strip(), validate=True)
    except (ValueError, OSError) as e:
        raise KeyFileError("%s is not a usable key file: %s. %s" % (path, e, KEY_REMEDY)) from None
    if len(key) != 32:
        raise KeyFileError("%s must hold a base64 256-bit key (it is damaged or truncated). %s" % (path, KEY_REMEDY))
    return key


def load_or_create_token(path: Path) -> str:
    """A bearer token, made on first start; the admin reads it from the file."""
    path = Path(path)
    if not path.exists():
        create_private(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    try:
        token = _read_private(path, "a token file", TOKEN_REMEDY).decode("ascii").strip()
    except (UnicodeDecodeError, OSError) as e:
        raise KeyFileError("%s is not a usable token file: %s" % (path, e)) from None
    if len(token) < 16:
        raise KeyFileError("%s holds a token shorter than 16 characters. %s" % (path, TOKEN_REMEDY))
    return token


def tokens_match(presented: bytes | str, expected: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "replace")
    return hmac.compare_digest(presented, expected.encode("ascii"))


class ChallengeCipher:
    """Encrypts CA static challenges and RA private keys at rest (AES-256-GCM, random nonce per value)."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "<ChallengeCipher>"

    def encrypt(self, challenge: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, challenge.encode("utf-8"), _CHALLENGE_AAD)

    def decrypt(self, blob: bytes) -> str:
        try:
            plain = self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _CHALLENGE_AAD)
        except (InvalidTag, ValueError):
            raise KeyFileError(
                "a stored challenge does not decrypt with the current key file; "
                "was the key replaced? Set the CA's challenge again"
            ) from None
        return plain.decode("utf-8")

    def seal_ra_key(self, pkcs8_der: bytes) -> bytes:
        """An RA private key (PKCS#8 DER) sealed for the database; it cannot be opened as a challenge."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, pkcs8_der, _RA_KEY_AAD)

    def open_ra_key(self, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _RA_KEY_AAD)
        except (InvalidTag, ValueError):
            raise KeyFileError(
                "a stored RA key does not decrypt with the current key file; was the key replaced? "
                "Make the CA's RA identity again (scepproxyctl ca edit NAME --ra-certificate enroll|self-signed)"
            ) from None
