"""Fixtures every test module may use without importing them."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from support.store import make_clock, migrated, started_store


class LogCapture:
    """Every log event while it is installed, formatted and as its raw fields."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(formatEvent(e) + " " + repr(sorted(e.items(), key=lambda kv: kv[0])) for e in self.events)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") is not None and e["log_level"].name == "warn"]


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


@pytest.fixture
def clock():
    """A Clock standing at support.store.EPOCH."""
    return make_clock()


@pytest.fixture
def db_path(tmp_path):
    """A new database file at the latest schema."""
    return migrated(tmp_path / "scepproxyd.sqlite")


@pytest_twisted.async_yield_fixture
async def store(db_path, clock):
    """A started Store on ``db_path`` and ``clock``, stopped afterwards."""
    s = await started_store(db_path, reactor, clock)
    yield s
    await s.stop()


@pytest.fixture
def small_tmpfs():
    """``mount(path, size)``: a small tmpfs at ``path`` (a disk that can fill up), unmounted afterwards.

    Skips, saying why, where mounting is impossible (not root, no mount namespace rights).
    """
    import subprocess

    mounted = []

    def mount(path, size: str = "16m"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % (size,), "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip("cannot mount a tmpfs to fill up (%s)" % (result.stderr.strip() or result.returncode,))
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def fill_up():
    """``fill_up(directory)``: write a file there until its filesystem is full; returns the file (delete it to free)."""
    return _fill_up


def _fill_up(directory, name: str = "filler"):
    import errno
    import os
    from pathlib import Path

    path = Path(directory) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * (64 * 1024)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return path


@pytest.fixture
def builtin_ca_daemon(tmp_path):
    """The real daemon with the shipped defaults for the built-in CA (static challenge off).

    Jobs are triggered by the tests; enough retries that every attack a test
    tries can count one. Stopped by its pid; its log must hold no traceback.
    """
    from peers import Daemon

    daemon = Daemon(tmp_path, ca={"key_size": "2048"},
                    profiles={"process_interval": "1h", "max_retries": "20"}).start()
    yield daemon
    daemon.stop()
    assert "Traceback" not in daemon.log(), daemon.log()


@pytest_twisted.async_yield_fixture
async def web(store, clock, db_path, tmp_path):
    """The daemon's device-facing and admin web trees in process over ``store`` and ``clock`` (support.web)."""
    from support.web import build_web, stop_web

    w = await build_web(store, clock, tmp_path, database=db_path)
    yield w
    await stop_web(w)
