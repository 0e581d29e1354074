"""Real processes for interop tests: micromdm scepserver/scepclient, certmonger and the daemon itself.

Everything runs on loopback on free ports, and every process started here is
stopped by its pid when the test is done.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        # The README's test command installs the Debian packages; a missing peer is a set-up bug.
        pytest.fail("%s is not installed; run scripts/test, which installs the real peers" % (binary,))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (process.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on port %d after %.0f s" % (port, timeout))


def stop(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM by pid, then SIGKILL if it will not go."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)
    return process.returncode


class ScepServer:
    """micromdm scepserver with its own depot, as a real upstream CA."""

    def __init__(self, directory: Path, challenge: str):
        self.directory = directory
        self.depot = directory / "depot"
        self.challenge = challenge
        self.port = free_port()
        self.log_path = directory / "scepserver.log"
        self.process = None
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [need("scepserver"), "ca", "-init", "-depot", str(self.depot)],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/scep" % (self.port,)

    @property
    def ca_pem(self) -> Path:
        return self.depot / "ca.pem"

    def start(self) -> "ScepServer":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [need("scepserver"), "-depot", str(self.depot), "-port", str(self.port),
             "-challenge=" + self.challenge, "-allowrenew=0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def operations(self, name: str) -> int:
        """How many requests of one operation reached this CA (from its own log)."""
        return self.log_path.read_text().count("op=%s " % (name,))


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
        return [TWISTD, "--nodaemon", "--pidfile=", "--logfile=" + str(self.log_path),
                "scepproxyd", "--config", str(self.config)]

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


def http_call(port, method, path, token=None, body=None):
    """(status, body text) of one plain HTTP request to 127.0.0.1:port (JSON body and bearer token optional)."""
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": "Bearer " + token} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response.status, text


class Certmonger:
    """certmonger as a real SCEP client, with no D-Bus and nothing outside ``directory``.

    The daemon listens only on a private socket in ``directory`` (``-L -P``),
    keeps its requests, CAs, local CA, configuration, temporary files and lock
    file there (the ``CERTMONGER_*`` variables), and ``getcert`` reaches it
    through ``CERTMONGER_PVT_ADDRESS``. It runs in the foreground (``-n``,
    implied by ``-d``) and is stopped by its pid, with any helper it left
    running (``scep-submit``) stopped by theirs.
    """

    # getcert list's "status:" values, as certmonger names its states.
    DONE = "MONITORING"
    REJECTED = "CA_REJECTED"
    UNREACHABLE = "CA_UNREACHABLE"
    WAITING = "CA_WORKING"  # the CA answered PENDING; certmonger keeps the cookie and polls

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "certmonger.sock"
        self.log_path = directory / "certmonger.log"
        self.process = None
        for sub in ("requests", "cas", "local", "config", "tmp", "keys"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    @property
    def environment(self) -> dict:
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("CERTMONGER_", "DBUS_"))}
        environment.update({
            "CERTMONGER_REQUESTS_DIR": str(self.directory / "requests"),
            "CERTMONGER_CAS_DIR": str(self.directory / "cas"),
            "CERTMONGER_LOCAL_CA_DIR": str(self.directory / "local"),
            "CERTMONGER_CONFIG_DIR": str(self.directory / "config"),
            "CERTMONGER_TMPDIR": str(self.directory / "tmp"),
            "CERTMONGER_SYSTEM_LOCK_FILE": str(self.directory / "lock"),
            "CERTMONGER_PVT_ADDRESS": "unix:path=" + str(self.socket),
        })
        return environment

    def start(self, timeout: float = 20.0) -> "Certmonger":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [need("certmonger"), "-L", "-P", str(self.socket), "-n", "-d", "1"],
            env=self.environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("certmonger exited with %s:\n%s" % (self.process.returncode, self.log()))
            if self.socket.exists() and self.getcert("list-cas").returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("certmonger did not answer on %s within %.0f s:\n%s" % (self.socket, timeout, self.log()))

    def stop(self) -> None:
        if self.process is None:
            return
        helpers = _children(self.process.pid)
        stop(self.process)
        for pid in helpers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def getcert(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([need("getcert"), *args], env=self.environment,
                              capture_output=True, text=True, timeout=timeout)

    def _must(self, *args: str) -> str:
        result = self.getcert(*args)
        assert result.returncode == 0, "getcert %s: %s%s" % (args[0], result.stdout, result.stderr)
        return result.stdout

    def add_scep_ca(self, name: str, url: str, signing_ca: Path) -> str:
        """``getcert add-scep-ca -c NAME -u URL -N ca.pem``: ``-N`` because GetCACert answers
        one self-signed certificate, which certmonger will not take as its trust anchor alone."""
        return self._must("add-scep-ca", "-c", name, "-u", url, "-N", str(signing_ca))

    def key_path(self, request_id: str) -> Path:
        return self.directory / "keys" / (request_id + ".key.pem")

    def certificate_path(self, request_id: str) -> Path:
        return self.directory / "keys" / (request_id + ".pem")

    def request(self, request_id: str, ca: str, subject: str, challenge: str | None, key_size: int = 2048) -> str:
        """``getcert request`` with a PEM key and certificate in files; ``-L`` is the SCEP challenge."""
        args = ["request", "-c", ca, "-I", request_id, "-k", str(self.key_path(request_id)),
                "-f", str(self.certificate_path(request_id)), "-N", subject, "-G", "rsa", "-g", str(key_size)]
        if challenge is not None:
            args += ["-L", challenge]
        return self._must(*args)

    def resubmit(self, request_id: str) -> str:
        """A new signing request for the entry, sent as a new PKCSReq."""
        return self._must("resubmit", "-i", request_id)

    def refresh(self, request_id: str) -> str:
        """Poll now: certmonger asks about a request the CA left PENDING (CertPoll with its cookie)
        instead of waiting its own interval, which is a week for a SCEP CA's PENDING."""
        return self._must("refresh", "-i", request_id)

    def status(self, request_id: str) -> dict[str, str]:
        """``getcert list -i ID`` as a dict of its ``key: value`` lines (``status``, ``ca-error``, ``subject`` ...)."""
        fields = {}
        for line in self._must("list", "-i", request_id).splitlines():
            if line.startswith("\t") and ": " in line:
                key, _, value = line.strip().partition(": ")
                fields.setdefault(key, value)
            elif line.startswith("\t") and line.strip().endswith(":"):
                fields.setdefault(line.strip()[:-1], "")
        return fields

    def wait_for(self, request_id: str, *states: str, timeout: float = 90.0) -> dict[str, str]:
        """Until the request's status is one of ``states``; fails with its listing and the log if not."""
        deadline = time.monotonic() + timeout
        fields = {}
        while time.monotonic() < deadline:
            fields = self.status(request_id)
            if fields.get("status") in states:
                return fields
            time.sleep(0.2)
        raise AssertionError("request %s still %r after %.0f s (wanted %s): %r\n%s"
                             % (request_id, fields.get("status"), timeout, "/".join(states), fields, self.log()))


def _children(pid: int) -> list[int]:
    """The pids of a process's descendants (from /proc), so they can be stopped by their pids."""
    found = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % (parent,))
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                text = Path("/proc/%d/task/%s/children" % (parent, task)).read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for child in text.split():
                found.append(int(child))
                pending.append(int(child))
    return found
