"""scepproxyd.files: new private files and the check that a secret's mode is private."""

import os
import stat

import pytest

from scepproxyd.files import loose_mode_advice, open_new_private


def test_a_new_private_file_is_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "secret"
    old = os.umask(0)
    try:
        with open_new_private(path) as f:
            f.write(b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"data"


def test_text_mode_and_options_reach_open(tmp_path):
    path = tmp_path / "tokens.csv"
    with open_new_private(path, "w", encoding="ascii", newline="") as f:
        f.write("a,b\r\n")
    assert path.read_bytes() == b"a,b\r\n"


def test_nothing_there_is_replaced_or_followed(tmp_path):
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    target = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(target)
    for path in (existing, link):
        with pytest.raises(FileExistsError):
            open_new_private(path)
    assert existing.read_bytes() == b"keep" and not target.exists()


@pytest.mark.parametrize("mode, advice", [
    (0o600, None),
    (0o400, None),
    (0o640, "readable by others (mode 640); chmod 600 it"),
    (0o604, "readable by others (mode 604); chmod 600 it"),
    (0o620, "readable by others (mode 620); chmod 600 it"),
])
def test_loose_mode_advice_names_the_file_and_its_mode(tmp_path, mode, advice):
    path = tmp_path / "key"
    path.write_bytes(b"k")
    path.chmod(mode)
    assert loose_mode_advice(path) == (None if advice is None else "%s is %s" % (path, advice))


def test_loose_mode_advice_on_a_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        loose_mode_advice(tmp_path / "missing")
