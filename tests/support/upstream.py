"""micromdm scepserver as a real upstream CA on a free loopback port."""

import subprocess
from pathlib import Path

from support.processes import free_port, need, stop, wait_for_port

# The static challenge of the conftest ``upstream`` fixtures' scepserver.
CHALLENGE = "upstream-static-challenge"


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
