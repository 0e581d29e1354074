"""Secrets kept on disk: the key that encrypts static challenges, and API tokens.

Both are made on first start in the state directory with mode 0600 and never
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

_NONCE_BYTES = 12
# Binds ciphertexts to their purpose, so a blob cannot be replayed as another kind of secret.
_CHALLENGE_AAD = b"scepproxyd:ca-static-challenge:v1"


class KeyFileError(Exception):
    """A key or token file is unusable; ``str()`` names the file and the problem."""


def _create_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only; never replace an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError("%s is readable by others (mode %o); chmod 600 it" % (path, mode))
    return path.read_bytes()


def load_or_create_key(path: Path) -> bytes:
    """The 256-bit AES key, made on first start."""
    path = Path(path)
    if not path.exists():
        _create_private(path, base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
    try:
        key = base64.b64decode(_read_private(path).strip(), validate=True)
    except (ValueError, OSError) as e:
        raise KeyFileError("%s is not a usable key file: %s" % (path, e)) from None
    if len(key) != 32:
        raise KeyFileError("%s must hold a base64 256-bit key" % (path,))
    return key


def load_or_create_token(path: Path) -> str:
    """A bearer token, made on first start; the admin reads it from the file."""
    path = Path(path)
    if not path.exists():
        _create_private(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    try:
        token = _read_private(path).decode("ascii").strip()
    except (UnicodeDecodeError, OSError) as e:
        raise KeyFileError("%s is not a usable token file: %s" % (path, e)) from None
    if len(token) < 16:
        raise KeyFileError("%s holds a token shorter than 16 characters" % (path,))
    return token


def tokens_match(presented: bytes | str, expected: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "replace")
    return hmac.compare_digest(presented, expected.encode("ascii"))


class ChallengeCipher:
    """Encrypts CA static challenges at rest (AES-256-GCM, random nonce per value)."""

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
