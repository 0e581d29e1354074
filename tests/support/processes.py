"""Real processes for tests: find a binary, free loopback ports, wait for a listener, stop by pid.

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

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


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


def wait_until(ready, process: subprocess.Popen | None = None, timeout: float = 20.0, what: str = "ready") -> None:
    """Poll ``ready()`` until it is true; fail early if ``process`` exits first.

    For peers whose open port is not yet readiness (a database still
    recovering answers its port but refuses sessions).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("process exited with %s before it was %s" % (process.returncode, what))
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError("not %s after %.0f s" % (what, timeout))


def stop(process: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """``sig`` (SIGTERM unless told) by pid, then SIGKILL if it will not go."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)
    return process.returncode


def children(pid: int) -> list[int]:
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
