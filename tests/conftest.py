"""Fixtures every test module may use without importing them.

The helpers behind them live in tests/support/ (see its __init__): test
modules import helpers from there, never from another test module.
"""

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from scepproxyd.store import Store
from support.admin_site import admin_site, ca_admin_site
from support.api import apis
from support.certmonger import Certmonger
from support.daemon import FAST, HOLDS_DEVICES, Daemon, Site
from support.hostile import HostileCA
from support.postgres import need_postgres
from support.scep_capture import make_ca
from support.stepca import StepCA
from support.store import make_clock, migrated, postgres_password, started_store
from support.upstream import CHALLENGE, ScepServer


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "daemon(**sections): the config sections of the ``daemon`` (or, on a module, "
        "``module_daemon``) fixture's daemon",
    )


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


#: The store's engines. Store tests (modules test_store*) run on each, unless they look at the SQLite file.
ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """Run every store test that uses ``store``, ``database`` or ``empty_database`` (and not ``db_path``) on
    both engines."""
    module = metafunc.module.__name__.rpartition(".")[2]
    uses_store = {"store", "database", "empty_database"} & set(metafunc.fixturenames)
    if module.startswith("test_store") and uses_store and "db_path" not in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request):
    """The store's engine for this test: "sqlite" unless pytest_generate_tests parametrized it."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database(request, engine, tmp_path):
    """A new database at the latest schema on ``engine``: ``(target, password)``, target a file or a URL."""
    if engine == "sqlite" or "db_path" in request.fixturenames:
        return request.getfixturevalue("db_path"), None
    fresh = request.getfixturevalue("postgres_url")
    password = postgres_password(fresh)
    Store.migrate(fresh.url, password=password)
    return fresh.url, password


@pytest.fixture
def empty_database(request, engine, tmp_path):
    """A new database on ``engine`` that was never migrated: ``(target, password)``, target a file
    (not made yet) or a URL."""
    if engine == "sqlite":
        return tmp_path / "fresh.sqlite", None
    fresh = request.getfixturevalue("postgres_url")
    return fresh.url, fresh.password_file.read_text().strip() if fresh.password_file else None


@pytest_twisted.async_yield_fixture
async def store(database, clock):
    """A started Store on ``database`` (SQLite unless the test runs on both engines) and ``clock``, stopped afterwards."""
    target, password = database
    s = await started_store(target, reactor, clock, password=password)
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


# -- the daemon under twistd -------------------------------------------------------------


def _daemon_sections(request) -> dict:
    """The config sections of the closest ``pytest.mark.daemon(**sections)``."""
    marker = request.node.get_closest_marker("daemon")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def start_daemon(tmp_path):
    """``start_daemon(directory=None, **sections)``: a started daemon (in ``tmp_path`` unless told),
    stopped by its pid afterwards."""
    started = []

    def start(directory=None, **sections) -> Daemon:
        daemon = Daemon(directory or tmp_path, **sections).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def module_daemon(request, tmp_path_factory):
    """One daemon for all tests of a module (``pytestmark = pytest.mark.daemon(**sections)`` configures it)."""
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    daemon = Daemon(directory, **_daemon_sections(request)).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(request, tmp_path):
    """The real daemon in ``tmp_path``, configured by the closest ``pytest.mark.daemon(**sections)``.

    Stopped by its pid afterwards; if it was still running, it must stop cleanly
    (twistd re-raises SIGTERM after a clean shutdown, as systemd expects).
    """
    started = Daemon(tmp_path, **_daemon_sections(request)).start()
    yield started
    running = started.process is not None
    code = started.stop()
    if running:
        assert code in (0, -signal.SIGTERM), started.log()
        assert "Server Shut Down." in started.log()


@pytest_twisted.async_yield_fixture
async def daemon_store(daemon):
    """A started Store on the running ``daemon``'s database file (WAL: safe next to the daemon), stopped afterwards."""
    s = Store(daemon.database, reactor)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
def module_site(module_daemon):
    """(admin Api, AgentApi) of the module's daemon: each host's agent credential issued once per module."""
    return apis(module_daemon)


@pytest.fixture
def builtin_ca_daemon(tmp_path):
    """The real daemon with the shipped defaults for the built-in CA (static challenge off).

    Jobs are triggered by the tests; enough retries that every attack a test
    tries can count one. Stopped by its pid; its log must hold no traceback.
    """
    daemon = Daemon(tmp_path, ca={"key_size": "2048"},
                    profiles={"process_interval": "1h", "max_retries": "20"}).start()
    yield daemon
    daemon.stop()
    assert "Traceback" not in daemon.log(), daemon.log()


@pytest.fixture
def ca_site(tmp_path):
    """``ca_site(**ca)``: the daemon with the built-in CA's static challenge on (support.daemon.FAST, overridden
    by ``ca``), as network equipment uses it; a support.daemon.Site. Each must stop cleanly, with no traceback."""
    started = []

    def make(**ca) -> Site:
        daemon = Daemon(tmp_path, ca=dict(FAST, **ca)).start()
        started.append(daemon)
        return Site(daemon)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code in (0, -signal.SIGTERM), daemon.log()
        assert "Traceback" not in daemon.log(), daemon.log()


@pytest.fixture(scope="module")
def module_held_ca(tmp_path_factory):
    """A second daemon whose built-in CA (support.daemon.HOLDS_DEVICES) issues an RA its certificate at once
    and holds every device request for an admin: the upstream CA of an RA that must follow PENDING.
    One per module, a support.daemon.Site; it must stop cleanly, with no traceback."""
    daemon = Daemon(tmp_path_factory.mktemp("held-ca"), ca=HOLDS_DEVICES).start()
    yield Site(daemon)
    code = daemon.stop()
    assert code in (0, -signal.SIGTERM), daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


# -- a real upstream CA: micromdm scepserver ------------------------------------------------


@pytest.fixture
def upstream(tmp_path):
    """scepserver with support.upstream.CHALLENGE, new for each test (tests count what reached it)."""
    server = ScepServer(tmp_path / "upstream", CHALLENGE).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_upstream(tmp_path_factory):
    """scepserver with support.upstream.CHALLENGE, one for a module."""
    server = ScepServer(tmp_path_factory.mktemp("upstream"), CHALLENGE).start()
    yield server
    server.stop()


# -- certmonger, a real SCEP client daemon -------------------------------------------------------


@pytest.fixture
def certmonger(tmp_path):
    """support.certmonger.Certmonger on a private socket in ``tmp_path``; stopped by its pid, and gone afterwards."""
    client = Certmonger(tmp_path / "certmonger").start()
    pid = client.process.pid
    yield client
    client.stop()
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % (pid,)) as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


# -- a second real upstream CA: step-ca ------------------------------------------------------


@pytest.fixture
def stepca(tmp_path):
    """support.stepca.StepCA with support.upstream.CHALLENGE and step-ca's defaults (DES CertReps), new for
    each test (tests count what reached it)."""
    ca = StepCA(tmp_path / "step-ca").start()
    yield ca
    ca.stop()


@pytest.fixture(scope="module")
def module_stepca(tmp_path_factory):
    """support.stepca.StepCA with support.upstream.CHALLENGE and step-ca's defaults, one for a module."""
    ca = StepCA(tmp_path_factory.mktemp("step-ca")).start()
    yield ca
    ca.stop()


@pytest.fixture
def start_stepca(tmp_path):
    """``start_stepca(**options)``: a started support.stepca.StepCA (``encryption``, ``capabilities``,
    ``challenge``), each in its own directory under ``tmp_path``, stopped by its pid afterwards."""
    started = []

    def start(**options) -> StepCA:
        ca = StepCA(tmp_path / ("step-ca-%d" % (len(started),)), **options).start()
        started.append(ca)
        return ca

    yield start
    for ca in started:
        ca.stop()


# -- a real PostgreSQL server (issue 14: several nodes on one database) ----------------------


@pytest.fixture(scope="session")
def postgres_server():
    """support.postgres.PostgreSQL: one real server for the whole run, as nobody on a free loopback port,
    password (scram-sha-256) on TCP; stopped by its pid at the end, leaving no process, and its directory removed."""
    server = need_postgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def postgres_url(postgres_server):
    """support.postgres.Database ``(url, password_file)``: a new, empty database on ``postgres_server`` for
    this test, the superuser's URL without its password (that is in ``password_file``); dropped afterwards."""
    database = postgres_server.fresh_database()
    yield database
    postgres_server.drop_database(database)


@pytest.fixture(scope="module")
def hostile_ca():
    """support.hostile.HostileCA, one for a module: a CA on loopback that misbehaves on PKIOperation as told."""
    ca = HostileCA().start()
    yield ca
    ca.stop()


# -- the SCEP codec ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec_ca():
    """support.scep_capture.make_ca: a CA certificate and key for the codec tests, one per module."""
    return make_ca("Codec Test CA")


# -- the admin API in the test's own reactor --------------------------------------------------


@pytest.fixture
def api(tmp_path):
    """support.admin_site.AdminSite: the admin API on a real store file, with a working and a broken upstream CA."""
    yield from admin_site(tmp_path)


@pytest.fixture
def ca_api(store, clock):
    """support.admin_site.CaAdminSite: ``/api/v1/ca/...`` with the built-in CA in process,
    on ``store`` and ``clock``."""
    yield from ca_admin_site(store, clock)


@pytest.fixture
def web_sections():
    """INI values for the ``web`` fixture's daemon, ``{section: {key: value}}``; a test module overrides this
    fixture to run the daemon with other settings."""
    return {}


@pytest_twisted.async_yield_fixture
async def web(store, clock, db_path, tmp_path, web_sections):
    """The daemon's device-facing and admin web trees in process over ``store`` and ``clock`` (support.web)."""
    from support.web import build_web, stop_web

    w = await build_web(store, clock, tmp_path, database=db_path, **web_sections)
    yield w
    await stop_web(w)
