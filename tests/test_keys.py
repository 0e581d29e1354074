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
    other_first = b"y" if token.startswith("x") else b"x"  # a random token may itself start with x
    assert not tokens_match(other_first + token.encode()[1:], token)
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


# -- atomic writes: a failed first start leaves nothing; an old 0-byte file gets a message --------


def _no_space_after(monkeypatch, budget: int):
    """os.write in scepproxyd.files writes ``budget`` bytes, then fails as a full disk does."""
    import errno

    from scepproxyd import files

    real_write, left = os.write, [budget]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:left[0]]))
        left[0] -= n
        return n

    monkeypatch.setattr(files.os, "write", write)


@pytest.mark.parametrize("make", [load_or_create_key, load_or_create_token])
def test_failed_write_leaves_nothing_and_the_next_start_works(tmp_path, monkeypatch, make):
    state = tmp_path / "state"
    path = state / "secret"
    _no_space_after(monkeypatch, 5)
    with pytest.raises(KeyFileError) as caught:
        make(path)
    assert str(caught.value) == (
        "cannot write %s: No space left on device; nothing was left behind: free some space (or fix the "
        "directory's permissions) and start again" % (path,)
    )
    assert list(state.iterdir()) == []  # no half-written file, no temporary
    monkeypatch.undo()
    value = make(path)
    assert make(path) == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == ["secret"]


def test_secret_files_are_private_from_creation_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / "secrets.key")
        load_or_create_token(tmp_path / "admin.token")
    finally:
        os.umask(old)
    for name in ("secrets.key", "admin.token"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_temporary_left_by_a_power_cut_is_cleaned_up(tmp_path):
    leftover = tmp_path / ".secrets.key.abc123.tmp"
    leftover.write_bytes(b"half")
    load_or_create_key(tmp_path / "secrets.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.key"]


def test_empty_key_file_from_an_older_version_is_explained(tmp_path):
    path = tmp_path / "secrets.key"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    with pytest.raises(KeyFileError) as caught:
        load_or_create_key(path)
    message = str(caught.value)
    assert message.startswith("%s (the challenge key) is empty (0 bytes): an earlier start was interrupted" % (path,))
    assert "delete it and start again" in message and "scepproxyctl restore" in message
    token = tmp_path / "admin.token"
    os.close(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600))
    with pytest.raises(KeyFileError, match=r"admin.token \(a token file\) is empty \(0 bytes\).*Delete it"):
        load_or_create_token(token)


def test_truncated_key_file_names_the_file_and_the_remedy(tmp_path):
    path = tmp_path / "secrets.key"
    load_or_create_key(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(KeyFileError, match=r"secrets.key .*(damaged or truncated|not a usable key file).*restore it"):
        load_or_create_key(path)
