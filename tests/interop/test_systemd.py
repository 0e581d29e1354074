"""systemd integration: unit files verify, socket activation, sd_notify, journal log lines."""

import os
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from twisted.logger import LogLevel, Logger

from support.daemon import TWISTD, daemon_config, twistd_command
from support.processes import REPO
from scepproxyd.daemon import logs
from scepproxyd.daemon.journald import format_journal_lines, observer


def test_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing; scripts/bootstrap installs the systemd package")
    for unit in (REPO / "systemd").iterdir():
        text = unit.read_text()
        # Verify the unit as installed, with the twistd of this checkout's virtualenv.
        (tmp_path / unit.name).write_text(text.replace("/opt/scepproxyd/bin/twistd", TWISTD))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "scepproxyd.service"), str(tmp_path / "scepproxyd.socket")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    # systemd-analyze exits 0 on some parse problems; any complaint about our units fails.
    complaints = [l for l in (result.stdout + result.stderr).splitlines() if "scepproxyd" in l]
    assert complaints == []


def test_service_unit_hardening():
    text = (REPO / "systemd" / "scepproxyd.service").read_text()
    for line in (
        "Type=notify", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service", "StateDirectory=scepproxyd", "ConfigurationDirectory=scepproxyd",
        "Restart=on-failure",
        "ExecStart=/opt/scepproxyd/bin/twistd --nodaemon --pidfile= --logger scepproxyd.journald.observer "
        "scepproxyd --config /etc/scepproxyd/scepproxyd.ini",
    ):
        assert line in text



def test_unit_files_logger_path_is_the_journal_observer():
    """The unit file's ``--logger scepproxyd.journald.observer`` reaches the observer in scepproxyd.daemon."""
    import importlib

    assert importlib.import_module("scepproxyd.journald").observer is observer

def test_journal_lines_have_priorities_and_no_timestamp():
    lines = []
    log = Logger(namespace="scepproxyd.test", observer=lambda e: lines.extend(format_journal_lines(e)))
    log.info("proxied {operation}", operation="GetCACaps")
    log.warn("slow upstream")
    log.error("broken")
    log.debug("detail")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("job failed")
    assert lines[0] == "<6>[scepproxyd.test] proxied GetCACaps"
    assert lines[1].startswith("<4>") and lines[2].startswith("<3>") and lines[3].startswith("<7>")
    failure_lines = lines[4:]
    # log.failure is critical in Twisted: <2>, on every line of the traceback.
    assert failure_lines[0].startswith("<2>[scepproxyd.test] job failed")
    assert len(failure_lines) > 3 and all(l.startswith("<2>") for l in failure_lines)
    assert any("ZeroDivisionError" in l for l in failure_lines)
    assert not any(l[3:5].isdigit() and "T" in l[:30] for l in lines)  # no ISO timestamp


def test_journal_observer_filters_by_level(capsys):
    import io

    stream = io.StringIO()
    obs = observer(stream)
    log = Logger(namespace="x", observer=obs)
    logs.set_level(LogLevel.warn)
    try:
        log.info("hidden")
        log.warn("shown")
    finally:
        logs.set_level(LogLevel.info)
    assert stream.getvalue() == "<4>[x] shown\n"


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_socket_activation_ready_and_stopping(tmp_path, tls):
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    server = {"listen": "systemd:domain=INET:name=scep"}
    context = None
    if tls:
        from support.certs import PrivateCA

        ca = PrivateCA(tmp_path)
        cert, key = ca.server("proxy")
        server.update(tls_certificate=str(cert), tls_key=str(key))
        context = __import__("ssl").create_default_context(cafile=str(ca.pem))
    config = daemon_config(tmp_path, port, server=server)
    notify = NotifySocket(tmp_path / "notify.sock")
    environ = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="scep", NOTIFY_SOCKET=str(notify.path))
    command = "LISTEN_PID=$$ exec " + shlex.join(twistd_command(config, "--logger", "scepproxyd.journald.observer"))

    def inherit_fd_3():
        os.dup2(listening.fileno(), 3)

    process = subprocess.Popen(
        ["/bin/sh", "-c", command], env=environ, preexec_fn=inherit_fd_3,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=False,
    )
    try:
        assert notify.receive().startswith("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            s = context.wrap_socket(raw, server_hostname="localhost") if context else raw
            s.sendall(b"GET /mdm/scep/proxy/x,y,z,w?operation=GetCACaps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 400 ")
        process.send_signal(signal.SIGTERM)
        assert notify.receive() == "STOPPING=1"
        assert process.wait(30) in (0, -signal.SIGTERM)
        output = process.stdout.read().decode()
        assert "<6>[" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listening.close()
