"""``twistd scepproxyd`` in process: Options parse a temp config, makeService wires it on a memory reactor.

Nothing listens and no reactor runs: these check what twistd would be
handed (the children, their types and their start order, which is the
reverse of the stop order the module docstring of scepproxyd.service
describes) and that a start-up problem is one clean line, not a traceback.
"""

import pytest
from twisted.application import internet
from twisted.application.internet import TimerService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from support.daemon import daemon_config
from scepproxyd import tap
from scepproxyd.ca.wiring import ManagedCaService
from scepproxyd.daemon.lifecycle import DrainService, HTTPPoolService, OrderedMultiService, StoreService
from scepproxyd.daemon.reload import ReloadService
from scepproxyd.daemon.sdnotify import SystemdNotifier

#: Nothing binds under a memory reactor; any port numbers do.
PORT, ADMIN_PORT = 18080, 18081

JOBS = [
    ("job-process_profiles", TimerService),
    ("job-renew_certificates", TimerService),
    ("job-cleanup", TimerService),
]
HEAD = [
    ("store", StoreService),
    ("write-probe", TimerService),
    ("upstream-pool", HTTPPoolService),
    ("drain", DrainService),
]
TAIL = [
    ("reload", ReloadService),
    ("proxy-listener", internet.StreamServerEndpointService),
    ("admin-listener", internet.StreamServerEndpointService),
    ("systemd-notify", SystemdNotifier),
]


def options_for(config) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["--config", str(config)])
    return options


def children(top) -> list:
    return [(child.name, type(child)) for child in top]


def test_children_and_their_order_without_the_builtin_ca(tmp_path):
    config = daemon_config(tmp_path, PORT, ADMIN_PORT, ca={"enabled": "no"})
    top = tap.makeService(options_for(config), reactor=MemoryReactorClock())
    assert isinstance(top, OrderedMultiService)
    assert children(top) == HEAD + JOBS + TAIL


def test_builtin_ca_registers_after_the_drain_and_before_the_jobs(tmp_path):
    config = daemon_config(tmp_path, PORT, ADMIN_PORT, ca={"key_size": "2048"})
    top = tap.makeService(options_for(config), reactor=MemoryReactorClock())
    assert children(top) == HEAD + [("builtin-ca", ManagedCaService)] + JOBS + TAIL
    # prepare_state made the CA's material on first start.
    assert (tmp_path / "state" / "ca" / "ca.key").exists()


def test_listeners_use_the_given_reactor_and_the_configured_endpoints(tmp_path):
    reactor = MemoryReactorClock()
    config = daemon_config(tmp_path, PORT, ADMIN_PORT, ca={"enabled": "no"})
    top = tap.makeService(options_for(config), reactor=reactor)
    for name, port in (("proxy-listener", PORT), ("admin-listener", ADMIN_PORT)):
        endpoint = top.getServiceNamed(name).endpoint
        assert endpoint._reactor is reactor
        assert endpoint._port == port


def test_missing_config_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError) as raised:
        options_for(tmp_path / "nope.ini")
    assert "nope.ini" in str(raised.value)


def test_state_that_cannot_be_prepared_is_one_line_and_exit_code_1(tmp_path):
    # The state directory's place is taken by a file: mkdir fails.
    (tmp_path / "state").write_text("not a directory")
    config = daemon_config(tmp_path, PORT, ADMIN_PORT, ca={"enabled": "no"})
    with pytest.raises(SystemExit) as raised:
        tap.makeService(options_for(config), reactor=MemoryReactorClock())
    message = raised.value.code
    # sys.exit with a string: twistd prints it on stderr and the process exits 1.
    assert isinstance(message, str)
    assert message.startswith("scepproxyd: cannot prepare state in %s: " % (tmp_path / "state",))
    assert "\n" not in message


def test_missing_systemd_socket_names_the_config_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    config = daemon_config(tmp_path, PORT, ADMIN_PORT, ca={"enabled": "no"},
                           server={"listen": "systemd:domain=INET:index=0"})
    with pytest.raises(SystemExit) as raised:
        tap.makeService(options_for(config), reactor=MemoryReactorClock())
    assert raised.value.code == (
        "scepproxyd: %s: [server] listen: systemd passed in no such socket (systemd:domain=INET:index=0);"
        " is the socket unit active?" % (config,)
    )
    # Nothing was prepared: the check comes before the state directory is made.
    assert not (tmp_path / "state").exists()
