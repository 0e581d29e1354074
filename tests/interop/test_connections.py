"""Connection caps per listener, against the real daemon with real sockets; the open-files limit they need."""

import re
import resource
import socket
import subprocess
import threading
import time

import pytest

from support.api import http_call as call
from support.daemon import Daemon
from support.processes import REPO
from scepproxyd.config import parse_settings
from scepproxyd.daemon.connections import OpenFilesError, ensure_open_files, open_files_needed

CAP = 20


def idle_sockets(port, count):
    """``count`` connected sockets that never send a byte."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(s)
    return sockets


def closed_by_peer(s, timeout=2.0) -> bool:
    """Whether the daemon closed ``s`` (EOF or reset) within ``timeout`` seconds."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def metric(port, name, listener) -> float:
    _, text = call(port, "GET", "/metrics")
    match = re.search(r'^%s\{listener="%s"\} (\S+)$' % (name, listener), text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_until_no_device_connections(daemon, timeout=10.0):
    deadline = time.monotonic() + timeout
    while metric(daemon.admin_port, "scepproxyd_open_connections", "proxy") > 0:
        assert time.monotonic() < deadline, "the daemon still counts open device connections"
        time.sleep(0.05)


pytestmark = pytest.mark.daemon(server={"max_connections": str(CAP), "idle_timeout": "1h"})


def test_device_listener_full_of_idle_sockets_leaves_admin_and_health_working(daemon):
    held = idle_sockets(daemon.port, CAP)
    try:
        # Over the cap: accepted, then closed at once.
        extra = idle_sockets(daemon.port, 15)
        assert all(closed_by_peer(s) for s in extra)
        for s in extra:
            s.close()
        assert not any(closed_by_peer(s, timeout=0.2) for s in held[:3])  # the ones within the cap stay
        # The device listener is full; the admin listener has its own budget and serves the health pages.
        assert call(daemon.admin_port, "GET", "/healthz") == (200, "ok\n")
        assert call(daemon.admin_port, "GET", "/readyz") == (200, "ready\n")
        status, text = call(daemon.admin_port, "GET", "/api/v1/hosts", daemon.admin_token)
        assert status == 200
        assert metric(daemon.admin_port, "scepproxyd_connections_refused_total", "proxy") >= 15
        assert metric(daemon.admin_port, "scepproxyd_open_connections", "proxy") == CAP
    finally:
        for s in held:
            s.close()
    # Once the idle sockets are gone, a device request works again.
    wait_until_no_device_connections(daemon)
    status, text = call(daemon.port, "GET", "/scep?operation=GetCACaps")
    assert status == 200 and "POSTPKIOperation" in text
    log = daemon.log()
    # One warn line for the burst (rate-limited), naming the setting.
    lines = [line for line in log.splitlines() if "is at its cap of %d open connections" % (CAP,) in line]
    assert len(lines) == 1, lines
    assert "proxy is at its cap" in lines[0] and "[server] max_connections" in lines[0]


def test_a_client_reconnecting_in_a_loop_does_not_keep_health_failing(daemon):
    held = idle_sockets(daemon.port, CAP)
    stop = threading.Event()
    attempts = [0]

    def hammer():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", daemon.port), timeout=2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.recv(1)
            except OSError:
                pass
            attempts[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        answers = [call(daemon.admin_port, "GET", "/healthz") for _ in range(30)]
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in held:
            s.close()
    assert attempts[0] > 30
    assert answers == [(200, "ok\n")] * 30
    # With the idle sockets gone, the looping client's kind of request is answered on the device listener too.
    wait_until_no_device_connections(daemon)
    assert call(daemon.port, "GET", "/healthz") == (200, "ok\n")


def test_admin_listener_keeps_health_pages_and_its_api_answers(daemon):
    assert call(daemon.admin_port, "GET", "/healthz") == (200, "ok\n")
    assert call(daemon.admin_port, "GET", "/metrics")[0] == 200
    status, text = call(daemon.admin_port, "GET", "/api/v1/hosts")
    assert status == 401
    status, text = call(daemon.admin_port, "GET", "/healthz/more", daemon.admin_token)
    assert status == 404 and "no such endpoint: GET /healthz/more" in text


def test_daemon_refuses_to_start_when_the_open_files_limit_cannot_hold_the_caps(tmp_path):
    d = Daemon(tmp_path)
    limit = (256, 256)
    result = subprocess.run(
        d.command(), cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
    )
    assert result.returncode != 0
    needed = open_files_needed(800, 64)
    assert (
        "the connection caps ([server] max_connections, [admin] max_connections) need up to %d open files, but "
        "the open-files limit (RLIMIT_NOFILE) is 256, hard limit 256: raise LimitNOFILE in the systemd unit "
        "(or ulimit -n) to at least %d, or lower max_connections" % (needed, needed)
    ) in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_soft_limit_raised_up_to_the_hard_limit():
    calls = []
    assert ensure_open_files(1728, getrlimit=lambda _: (1024, 524288),
                             setrlimit=lambda what, value: calls.append(value)) == 1728
    assert calls == [(1728, 524288)]
    assert ensure_open_files(1728, getrlimit=lambda _: (4096, 4096), setrlimit=calls.append) is None
    with pytest.raises(OpenFilesError, match="hard limit 1024: raise LimitNOFILE"):
        ensure_open_files(1728, getrlimit=lambda _: (1024, 1024), setrlimit=calls.append)
    assert len(calls) == 1


def test_shipped_unit_limit_holds_the_default_caps():
    unit = (REPO / "systemd" / "scepproxyd.service").read_text()
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    settings = parse_settings((REPO / "etc" / "scepproxyd.ini").read_text(), REPO / "etc" / "scepproxyd.ini")
    defaults = parse_settings("", REPO / "etc" / "scepproxyd.ini")
    for s in (settings, defaults):
        assert limit >= open_files_needed(s.server.max_connections, s.admin.max_connections)
