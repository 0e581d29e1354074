"""The real processes of bench/peers.py: scepserver, nginx, the daemon, wrk and py-spy.

bench's one door to the test harness: importing this module puts the repo's
tests/ directory on sys.path, so scepserver and the daemon are started by the
interop tests' own code (tests/support: ScepServer, Daemon), on free loopback
ports, bench's API client is the tests' one (support.api.Api), and so is the
fixture profile for a CA (support.site.mobileconfig) and the CSR a device
writes (support.certs.csr). nginx runs from a
generated config in a temporary prefix (master_process off, one worker, daemon
off), a plain ``proxy_pass`` to scepserver with a keep-alive upstream: the
yardstick for what a forwarding proxy costs. Every process is stopped by its pid.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support.api import Api  # noqa: E402
from support.certs import csr  # noqa: E402
from support.daemon import Daemon  # noqa: E402
from support.processes import free_port, stop, wait_for_port  # noqa: E402
from support.site import mobileconfig as site_mobileconfig  # noqa: E402
from support.upstream import ScepServer  # noqa: E402

__all__ = ["Api", "Daemon", "Nginx", "ScepServer", "csr", "free_port", "proc_memory_mb", "py_spy", "py_spy_stop",
           "site_mobileconfig", "stop", "stop_all", "wait_for_port", "wrk"]

SPY_RATE = 200

# bench/engines.py: the tests' PostgreSQL server, and a daemon's [database] section for one of its databases.
from support.nodes import database_section  # noqa: E402
from support.postgres import PostgreSQL, server_version  # noqa: E402

__all__ += ["PostgreSQL", "database_section", "server_version"]

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream scepserver {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /scep {{
            proxy_pass http://scepserver/scep;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Nginx:
    """nginx with proxy_pass to scepserver's /scep, in its own temporary prefix."""

    def __init__(self, directory: Path, upstream_port: int):
        self.prefix = directory
        self.port = free_port()
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.config = directory / "nginx.conf"
        self.config.write_text(NGINX_CONF.format(prefix=directory, port=self.port, upstream_port=upstream_port))
        self.process = None

    def start(self) -> "Nginx":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        log = open(self.prefix / "stderr.log", "ab")
        self.process = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, self.process)
        return self

    def url(self, query: str) -> str:
        return f"http://127.0.0.1:{self.port}/scep?{query}"

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def stop_all(top: Path, *procs) -> None:
    """The end of every benchmark run: stop each peer that started (by its pid), then remove its directory."""
    for proc in procs:
        if proc is not None:
            proc.stop()
    shutil.rmtree(top, ignore_errors=True)


def wrk(url: str, duration: int, connections: int = 16, threads: int = 1) -> dict:
    """Run wrk against one URL; Requests/sec, non-2xx count and errors as wrk prints them."""
    binary = shutil.which("wrk") or "/usr/bin/wrk"
    proc = subprocess.run([binary, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
                          capture_output=True, text=True, timeout=duration + 60)
    out = proc.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rate.group(1)) if rate else None,
        "requests": int(total.group(1)) if total else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "exit": proc.returncode,
        "raw": out if not rate else "",
    }


def proc_memory_mb(pid: int) -> dict:
    """VmRSS and VmHWM of another process, in MB, from /proc/PID/status."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def py_spy(pid: int, raw: Path) -> subprocess.Popen:
    """Start ``py-spy record`` on a pid, raw collapsed stacks to ``raw``, until py_spy_stop()."""
    binary = str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", str(SPY_RATE), "--format", "raw",
                             "--threads", "--nolineno", "--gil", "--nonblocking", "--output", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def py_spy_stop(process: subprocess.Popen) -> None:
    """SIGINT by pid (py-spy then writes its file), SIGKILL if it will not go."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            stop(process)
