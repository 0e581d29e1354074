"""The offline install path: build the wheelhouse, install it with no index, start the daemon."""

import signal
import subprocess
import sys

from support.ctl import run_ctl
from support.daemon import daemon_config, twistd_command
from support.processes import REPO, free_port, wait_for_port


def test_wheelhouse_installs_without_index_and_starts(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run(["bash", str(REPO / "scripts" / "wheelhouse"), str(wheelhouse)], check=True,
                   capture_output=True, timeout=600)
    assert (wheelhouse / "MANIFEST.txt").exists()
    assert (wheelhouse / "share" / "systemd" / "scepproxyd.service").exists()

    venv = tmp_path / "opt-scepproxyd"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(wheelhouse), "scepproxyd"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    port = free_port()
    config = daemon_config(tmp_path, port)
    process = subprocess.Popen(twistd_command(config, twistd=venv / "bin" / "twistd"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        wait_for_port(port, process, timeout=60)
        ctl = run_ctl(config, "jobs", ctl=venv / "bin" / "scepproxyctl")
        assert ctl.returncode == 0, ctl.stderr
        assert "process_profiles" in ctl.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
