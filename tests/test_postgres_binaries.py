"""What the PostgreSQL peer and the store's driver need on the machine, checked without starting a server.

scripts/bootstrap installs psycopg with its binary libpq and its pool (setup.cfg)
and, with --test, Debian's postgresql (scripts/test-packages). Without the
server binaries the tests that need them fail under CI and skip elsewhere,
saying how to install them.
"""

import os

import psycopg
import psycopg_pool
import pytest

from support.postgres import INSTALL_HINT, bin_dir, need_bin_dir, server_version
from support.processes import REPO


def test_psycopg_is_installed_with_its_binary_libpq_and_pool():
    assert tuple(int(part) for part in psycopg.__version__.split(".")[:2]) >= (3, 1)
    assert psycopg.pq.__impl__ == "binary"
    assert psycopg_pool.ConnectionPool is not None


def test_setup_cfg_and_test_packages_name_them():
    assert "psycopg[binary,pool]>=3.1" in (REPO / "setup.cfg").read_text()
    packages = [line.strip() for line in (REPO / "scripts" / "test-packages").read_text().splitlines()]
    assert "postgresql" in packages


def test_debian_server_binaries_are_there():
    directory = need_bin_dir()
    for name in ("initdb", "postgres", "psql"):
        assert os.access(directory / name, os.X_OK), directory / name
    assert "(PostgreSQL) %s." % (directory.parent.name,) in server_version(directory)


def test_the_newest_version_directory_is_chosen(tmp_path):
    for version, complete in (("9.6", True), ("15", True), ("16", True), ("17", False), ("devel", True)):
        directory = tmp_path / version / "bin"
        directory.mkdir(parents=True)
        (directory / "initdb").touch()
        if complete:
            (directory / "postgres").touch()
    assert bin_dir(tmp_path) == tmp_path / "16" / "bin"
    assert bin_dir(tmp_path / "nothing") is None


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_binaries_fail_under_ci_and_skip_elsewhere(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setattr("support.postgres.BIN_ROOT", tmp_path)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome) as raised:
        need_bin_dir()
    assert "scripts/bootstrap --test" in str(raised.value)
    assert INSTALL_HINT in str(raised.value)
