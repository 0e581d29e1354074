"""The daemon as an operator runs it: start, refuse bad config, busy port, body limit."""

import signal
import socket
import subprocess

import pytest

from support.certs import PrivateCA
from support.hostile import raw_http
from support.daemon import daemon_config, run_twistd, twistd_command
from support.processes import REPO, free_port, wait_for_port


def test_bad_config_value_refused_at_start(tmp_path):
    config = daemon_config(tmp_path, free_port(), server={"max_body_bytes": "lots"})
    result = run_twistd(config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[server] max_body_bytes" in output
    assert "'lots'" in output
    assert "Traceback" not in output


def test_missing_config_file_refused(tmp_path):
    result = run_twistd(tmp_path / "nope.ini")
    assert result.returncode != 0
    assert "nope.ini" in result.stdout + result.stderr


def test_busy_port_exits_non_zero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = daemon_config(tmp_path, port)
        result = run_twistd(config)
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


def test_shipped_config_starts_and_answers(tmp_path):
    """etc/scepproxyd.ini as shipped, with only the port moved so tests never collide."""
    port = free_port()
    text = (REPO / "etc" / "scepproxyd.ini").read_text()
    text = text.replace("tcp:8080:interface=127.0.0.1", "tcp:%d:interface=127.0.0.1" % (port,))
    text = text.replace("tcp:8081:interface=127.0.0.1", "tcp:%d:interface=127.0.0.1" % (free_port(),))
    text = text.replace("directory = ../var", "directory = %s" % (tmp_path / "var",))
    config = tmp_path / "scepproxyd.ini"
    config.write_text(text)
    process = subprocess.Popen(twistd_command(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        reply = raw_http(port, b"GET /mdm/scep/proxy/x,y,z,w?operation=GetCACaps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"challenge is not a well-formed challenge" in reply
        assert (tmp_path / "var" / "scepproxyd.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) in (0, -signal.SIGTERM)


pytestmark = pytest.mark.daemon(server={"max_body_bytes": "4k", "idle_timeout": "2s"})


def test_declared_oversized_body_gets_413_before_it_is_sent(daemon):
    # Content-Length over the limit and not a byte of the body sent: the answer comes anyway.
    reply = raw_http(
        daemon.port,
        b"POST /mdm/scep/proxy/a,b,C,dddddddddddddddddddd?operation=PKIOperation HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 10000000\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"request body larger than 4096 bytes" in reply


def test_chunked_oversized_body_cut_at_limit(daemon):
    chunk = b"x" * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))
    reply = raw_http(
        daemon.port,
        b"POST /mdm/scep/proxy/a,b,C,dddddddddddddddddddd?operation=PKIOperation HTTP/1.1\r\n"
        b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    # The daemon still serves afterwards.
    again = raw_http(daemon.port, b"GET /mdm/scep/proxy/a?operation=GetCACaps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 400 ")


def test_silent_client_is_disconnected(daemon):
    """A client that stops sending mid-request is cut after idle_timeout (2 s here)."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(b"POST /mdm/scep/proxy/a HTTP/1.1\r\nHost: x\r\n")
        # recv returns b"" once the daemon closes; a socket.timeout here fails the test.
        while s.recv(65536):
            pass
    assert "Timing out client" in daemon.log()


def test_proxy_listener_never_serves_admin_api(daemon):
    token = daemon.admin_token
    request = (
        b"GET /api/v1/cas HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n"
        % token.encode()
    )
    # The device-facing listener has only the agent API under /api, which refuses the admin token.
    assert raw_http(daemon.port, request).startswith(b"HTTP/1.1 401 ")
    assert raw_http(daemon.admin_port, request).startswith(b"HTTP/1.1 200 ")


def test_systemd_listener_without_socket_is_refused_clearly(tmp_path):
    config = daemon_config(tmp_path, free_port(), server={"listen": "systemd:domain=INET:name=scep"})
    result = run_twistd(config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[server] listen: systemd passed in no such socket" in output
    assert "Traceback" not in output


def test_mismatched_tls_key_is_refused_clearly(tmp_path):
    ca = PrivateCA(tmp_path)
    cert, _ = ca.server("one")
    _, other_key = ca.server("two")
    config = daemon_config(tmp_path, free_port(), server={"tls_certificate": str(cert), "tls_key": str(other_key)})
    result = run_twistd(config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "does not match the key in" in output and "Traceback" not in output
