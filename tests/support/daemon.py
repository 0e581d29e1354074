"""The daemon itself under ``twistd``, as the README runs it: one way to write its config and start it."""

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from support.ctl import run_ctl
from support.api import Api
from support.processes import BIN, free_port, stop, wait_for_port

TWISTD = str(BIN / "twistd")


def twistd_command(config, *options: str, twistd=TWISTD) -> list[str]:
    """``twistd --nodaemon --pidfile= [options] scepproxyd --config CONFIG``, as the README and the systemd unit run it."""
    return [str(twistd), "--nodaemon", "--pidfile=", *options, "scepproxyd", "--config", str(config)]


def run_twistd(config, *options: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """The daemon run to its end (one that refuses to start), text output captured."""
    return subprocess.run(twistd_command(config, *options), capture_output=True, text=True, timeout=timeout, **kwargs)


def daemon_config(directory: Path, port: int, admin_port: int | None = None, **sections) -> Path:
    """Write an INI for a test daemon; ``sections`` override or add keys."""
    base = {
        "state": {"directory": str(directory / "state")},
        "server": {
            "listen": "tcp:%d:interface=127.0.0.1" % (port,),
            "public_url": "http://127.0.0.1:%d" % (port,),
        },
        "upstream": {
            "connect_timeout": "2s",
            "response_timeout": "2s",
            "body_timeout": "2s",
            "caps_cache_seconds": "60s",
        },
        "logging": {"level": "debug"},
        "admin": {"listen": "tcp:%d:interface=127.0.0.1" % (admin_port or free_port(),)},
    }
    for section, keys in sections.items():
        base.setdefault(section, {}).update(keys)
    path = directory / "scepproxyd.ini"
    lines = []
    for section, keys in base.items():
        lines.append("[%s]" % (section,))
        lines.extend("%s = %s" % (k, v) for k, v in keys.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """``twistd --nodaemon scepproxyd --config ...`` as the README runs it."""

    def __init__(self, directory: Path, **sections):
        self.directory = directory
        self.port = free_port()
        self.admin_port = free_port()
        self.config = daemon_config(directory, self.port, self.admin_port, **sections)
        self.log_path = directory / "scepproxyd.log"
        self.process = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % (self.port,)

    @property
    def admin_url(self) -> str:
        return "http://127.0.0.1:%d" % (self.admin_port,)

    @property
    def admin_token(self) -> str:
        return (self.directory / "state" / "admin.token").read_text().strip()

    @property
    def database(self) -> Path:
        return self.directory / "state" / "scepproxyd.sqlite3"

    def command(self) -> list[str]:
        return twistd_command(self.config, "--logfile=" + str(self.log_path))

    def start(self) -> "Daemon":
        self.process = subprocess.Popen(
            self.command(), cwd=str(self.directory), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port, self.process)
            wait_for_port(self.admin_port, self.process)
            self.wait_healthy()
        except RuntimeError:
            output = self.process.stdout.read().decode(errors="replace") if self.process.poll() is not None else ""
            raise RuntimeError("daemon did not start: %s\n%s" % (output, self.log()))
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until /healthz answers 200: the database is open and start-up work (e.g. putting
        back challenges a killed run left in flight) is done, as systemd's READY=1 means."""
        import http.client

        deadline = time.monotonic() + timeout
        # With HTTPS on the device listener, ask the admin listener: it serves /healthz too, in plain HTTP.
        port = self.admin_port if "tls_certificate" in self.config.read_text() else self.port
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("daemon exited with %s" % (self.process.returncode,))
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("/healthz did not answer 200 within %.0f s" % (timeout,))

    def stop(self) -> int:
        if self.process is None:
            return 0
        code = stop(self.process)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


# The built-in CA as network equipment uses it: with the static challenge, which an admin
# turns on ([ca] static_challenge), and loopback auto-approved; a small key, to start fast.
FAST = {"key_size": "2048", "static_challenge": "yes", "auto_approve_networks": "127.0.0.0/8"}
# The built-in CA as the upstream of another daemon's RA: the RA's own enrollment (its subject,
# from loopback) is issued at once; every device's request through the RA waits for an admin.
HOLDS_DEVICES = dict(FAST, auto_approve_subject="CN=scepproxyd RA for .*")


class Site:
    """One running daemon with the built-in CA, and ways to talk to it."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.state = daemon.directory / "state"
        self.scep_url = daemon.url + "/scep"

    @property
    def ca_pem(self) -> Path:
        return self.state / "ca" / "ca.pem"

    @property
    def static_challenge(self) -> str:
        return (self.state / "ca" / "challenge").read_text().strip()

    def http(self, method, url, body=None, headers=None):
        """(status, Content-Type, body bytes) of one plain HTTP request (SCEP, health)."""
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()

    def admin(self, method, path, body=None):
        """(status, JSON) of one admin API call with the daemon's admin token."""
        return Api(self.daemon.admin_url, self.daemon.admin_token, timeout=30).request(method, path, body)

    def ctl(self, *args):
        return run_ctl(self.daemon.config, *args)
