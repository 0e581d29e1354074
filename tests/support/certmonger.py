"""certmonger as a real SCEP client, on a private socket in a temporary directory."""

import os
import signal
import subprocess
import time
from pathlib import Path

from support.processes import children, need, stop


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
        helpers = children(self.process.pid)
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
