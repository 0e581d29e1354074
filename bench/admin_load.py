"""Does admin work hold up devices? /healthz and GetCACaps latency while an admin works hard.

One daemon under twistd (tests/support/daemon.py's Daemon, on free loopback ports,
timers pushed to 1 h). A probe thread in this process sends, one after the
other on two keep-alive connections, ``GET /healthz`` and ``GetCACaps`` for an
unknown proxy identifier (a store lookup, then 400) to the device listener,
and records each answer's latency. The probe runs:

- idle, for ``--idle`` seconds;
- during a host import of ``--rows`` rows (CSV, ``POST /api/v1/hosts/import``);
- during a ``--big-profile`` upload (15 MiB by default), which the daemon
  refuses with 413 unless ``--max-profile`` lets it in;
- during an upload of a profile of exactly ``--max-profile`` bytes (accepted);
- during a full host listing: every page of ``GET /api/v1/hosts?limit=5000``.

Prints one line per phase and a table: p50, p99 and max of each probe, and
the p99 ratio to idle. Exit status 0 whatever the figures.

    .venv/bin/python bench/admin_load.py                      # 1,000,000 rows
    .venv/bin/python bench/admin_load.py --rows 100000 --max-profile 16M
"""

import argparse
import http.client
import sys
import tempfile
import threading
import time
import shutil
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers_site as site  # noqa: E402
from _peers_procs import REPO, Daemon  # noqa: E402

from scepproxyd.config import parse_size  # noqa: E402

CAPS = "/mdm/scep/proxy/" + quote("bench-host,bench-profile,BENCH,bench-challenge", safe="") + "?operation=GetCACaps"


class Probe(threading.Thread):
    """Alternates /healthz and GetCACaps on the device listener until stopped; latencies in ms."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.samples = {"healthz": [], "caps": []}
        self._halt = threading.Event()
        self._recording = None
        self.errors = 0

    def record(self, phase: str | None) -> None:
        self._recording = phase

    def _one(self, conn, path):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return (time.perf_counter() - started) * 1000.0, response.status

    def run(self):
        conns = {name: http.client.HTTPConnection("127.0.0.1", self.port, timeout=120) for name in self.samples}
        paths = {"healthz": "/healthz", "caps": CAPS}
        while not self._halt.is_set():
            for name in self.samples:
                try:
                    ms, status = self._one(conns[name], paths[name])
                except (OSError, http.client.HTTPException):
                    self.errors += 1
                    conns[name].close()
                    conns[name] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                    continue
                if self._recording is not None:
                    self.samples[name].append((self._recording, ms, status))
            time.sleep(0.01)
        for conn in conns.values():
            conn.close()

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(30)

    def figures(self, phase: str, name: str) -> dict:
        values = sorted(ms for p, ms, _ in self.samples[name] if p == phase)
        if not values:
            return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return {"n": len(values), "p50": pick(0.50), "p99": pick(0.99), "max": values[-1]}


def csv_rows(count: int) -> bytes:
    return b"uuid,serial,platform\n" + b"".join(b"h%07d,,ios\n" % i for i in range(count))


def profile_of_size(size: int, identifier: str) -> bytes:
    """The fixture profile grown to ``size`` bytes by a long PayloadDescription (parsed like any string)."""
    content = (REPO / site.REPO_FIXTURE).read_bytes().replace(b">Fleet.WiFi<", b">%s<" % identifier.encode())
    end = content.rindex(b"</dict>")
    key = b"<key>PayloadDescription</key>\n<string></string>\n"
    filler = size - len(content) - len(key)
    if filler < 0:
        raise SystemExit("profile size %d is below the fixture's own size" % (size,))
    return content[:end] + key[:-10] + b"d" * filler + key[-10:] + content[end:]


def timed(probe, phase, action):
    probe.record(phase)
    started = time.perf_counter()
    try:
        outcome = action()
    finally:
        seconds = time.perf_counter() - started
        probe.record(None)
    return seconds, outcome


def upload(admin, body: bytes) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=600)
    try:
        conn.request("POST", "/api/v1/profiles?platform=macos", body=body, headers={
            "Authorization": "Bearer " + admin.token, "Content-Type": "application/x-apple-aspen-config"})
        response = conn.getresponse()
        data = response.read()
    except (BrokenPipeError, ConnectionResetError):
        # The daemon answered 413 on the headers and closed while the body was still being sent.
        try:
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            return "closed while sending (%s)" % (type(e).__name__,)
    finally:
        conn.close()
    if response.status < 300:
        return "%d" % (response.status,)
    return "%d %s" % (response.status, data[:100].decode(errors="replace").strip())


def summary(answers) -> str:
    counts = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return "; ".join("%dx %s" % (n, a) for a, n in counts.items())


def list_all_hosts(admin) -> int:
    rows, cursor = 0, None
    while True:
        path = "/api/v1/hosts?limit=5000" + ("&cursor=" + cursor if cursor else "")
        page = admin.call("GET", path)
        rows += len(page["hosts"])
        cursor = page["next"]
        if cursor is None:
            return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="hosts in the import (default 1000000)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle probing (default 5)")
    parser.add_argument("--big-profile", default="15M", help="size of the oversized upload (default 15M)")
    parser.add_argument("--uploads", type=int, default=10, help="uploads per profile phase (default 10)")
    parser.add_argument("--max-profile", default="1M", help="[admin] max_profile_bytes of the daemon (default 1M)")
    args = parser.parse_args()
    big, limit = parse_size(args.big_profile), parse_size(args.max_profile)

    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-admin-"))
    daemon = probe = None
    try:
        daemon = Daemon(top, logging={"level": "info"}, profiles={"process_interval": "1h"},
                        renewal={"interval": "1d"}, admin={"max_profile_bytes": args.max_profile}).start()
        admin = site.client(daemon.admin_port, daemon.admin_token)
        # The fixture profile names CA_NAME: here an integration pointing at the daemon's own built-in CA.
        site.add_ca(admin, "CA_NAME", daemon.url + "/scep", "bench-static-challenge")
        csv = csv_rows(args.rows)
        big_bodies = [profile_of_size(big, "Bench.Big%d" % i) for i in range(args.uploads)]
        max_bodies = [profile_of_size(limit, "Bench.Max%d" % i) for i in range(args.uploads)]
        probe = Probe(daemon.port)
        probe.start()
        phases = []

        seconds, _ = timed(probe, "idle", lambda: time.sleep(args.idle))
        phases.append(("idle", seconds, "-"))
        seconds, answer = timed(probe, "import", lambda: admin.call(
            "POST", "/api/v1/hosts/import", raw=csv, content_type="text/csv"))
        phases.append(("import %d rows (%.1f MB)" % (args.rows, len(csv) / 1e6), seconds, str(answer)))
        seconds, answers = timed(probe, "big", lambda: [upload(admin, b) for b in big_bodies])
        phases.append(("%d uploads of %d bytes" % (len(big_bodies), big), seconds, summary(answers)))
        seconds, answers = timed(probe, "max", lambda: [upload(admin, b) for b in max_bodies])
        phases.append(("%d uploads of %d bytes (the limit)" % (len(max_bodies), limit), seconds, summary(answers)))
        seconds, answer = timed(probe, "list", lambda: list_all_hosts(admin))
        phases.append(("list all hosts", seconds, "%d rows" % (answer,)))
    finally:
        if probe is not None:
            probe.stop()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(top, ignore_errors=True)

    keys = ["idle", "import", "big", "max", "list"]
    for (label, seconds, outcome), key in zip(phases, keys):
        print("%-40s %7.2f s  %s" % (label, seconds, outcome))
    print()
    idle = {name: probe.figures("idle", name) for name in ("healthz", "caps")}
    print("| phase | seconds | /healthz n | p50 ms | p99 ms | max ms | p99/idle | GetCACaps n | p50 ms | p99 ms"
          " | max ms | p99/idle |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (label, seconds, _), key in zip(phases, keys):
        cells = ["%s" % (label,), "%.2f" % (seconds,)]
        for name in ("healthz", "caps"):
            f = probe.figures(key, name)
            ratio = f["p99"] / idle[name]["p99"] if idle[name]["p99"] else float("nan")
            cells += ["%d" % f["n"], "%.1f" % f["p50"], "%.1f" % f["p99"], "%.1f" % f["max"], "%.1f" % ratio]
        print("| " + " | ".join(cells) + " |")
    if probe.errors:
        print("\nprobe errors (connection failures): %d" % (probe.errors,))


if __name__ == "__main__":
    main()
