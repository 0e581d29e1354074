"""Key and token files: made once with mode 0600, refused when others can read them."""

import os
import stat

import pytest

from scepproxyd.keys import ChallengeCipher, KeyFileError, load_or_create_key, load_or_create_token, tokens_match


def test_key_made_once_private_and_stable(tmp_path):
    path = tmp_path / "state" / "secrets.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_world_readable_key_refused(tmp_path):
    path = tmp_path / "secrets.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_or_create_key(path)


def test_token_made_once_and_compared(tmp_path):
    path = tmp_path / "admin.token"
    token = load_or_create_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token
    assert tokens_match(token.encode(), token)
    assert not tokens_match(b"x" + token.encode()[1:], token)
    assert not tokens_match(b"", token)


def test_cipher_round_trip_and_no_plaintext(tmp_path):
    cipher = ChallengeCipher(load_or_create_key(tmp_path / "k"))
    blob = cipher.encrypt("static-secret")
    assert b"static-secret" not in blob
    assert cipher.encrypt("static-secret") != blob  # fresh nonce every time
    assert cipher.decrypt(blob) == "static-secret"
    other = ChallengeCipher(load_or_create_key(tmp_path / "other"))
    with pytest.raises(KeyFileError, match="does not decrypt with the current key file"):
        other.decrypt(blob)
    assert "static" not in repr(cipher)
