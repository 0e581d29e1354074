"""One run of bench/peers.py, in a fresh child process: start the peers, seed, measure, stop.

On loopback, free ports: micromdm ``scepserver`` (the real upstream CA, ``-challenge=S
-allowrenew=0``, a new depot), ``nginx`` proxy_pass to it, and scepproxyd under twistd
(shipped defaults, built-in CA included, log level info; timers pushed to 1 h so only
the benchmark triggers jobs), with a CA integration pointing at the same scepserver.
The site is seeded through the admin and agent APIs only (bench/_peers_site.py).
All request bodies are built before any timing. In order:

1. wrk on GetCACaps and GetCACert: scepproxyd (a proxy identifier URL of a pending host
   profile) and nginx, alternated; scepproxyd's CPU time from /proc during its runs.
2. PKIOperation throughput at ``concurrency``: direct to scepserver and through
   scepproxyd (one pre-minted one-time challenge each), in the order direct, proxy,
   proxy, direct, so scepserver's depot growth (its index.txt is rescanned at every
   issue) weighs on both alike. Only CertReps with pkiStatus SUCCESS count as
   enrollments; all CertReps, and scepserver's and the daemon's CPU, are recorded too.
3. PKIOperation latency at concurrency 1: requests alternate direct / proxy.
4. RSS: ``fleet`` (100,000) more hosts imported (JSON chunks of 5,000), assigned by
   platform, VmRSS/VmHWM of the twistd pid; then the process_profiles job and again.

With a profile directory, py-spy records the daemon during each load phase (Spy).
bench/engines.py gives ``database`` (a ``[database]`` section: the daemon on PostgreSQL)
and ``skip`` (phases left out: ``wrk``, ``enroll``).
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

from cryptography import x509

import _peers_load as load
import _peers_site as site
from _peers_procs import REPO, Daemon, Nginx, ScepServer, proc_memory_mb, py_spy, py_spy_stop, wrk

STATIC_CHALLENGE = "bench-static-challenge"
CA_NAME = "BENCH_CA"


def pct(values, q):
    """Nearest-rank percentile (q in 0..100); None when there are no values."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)] if ordered else None


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


class Spy:
    """py-spy on the daemon for one phase at a time, when --profile is given; else nothing."""

    def __init__(self, directory, pid):
        self.directory, self.pid, self.files, self.current = directory, pid, {}, None

    def start(self, name):
        if self.directory is not None:
            raw = Path(self.directory) / f"{name}.txt"
            self.current = (name, str(raw), time.perf_counter(), py_spy(self.pid, raw))

    def stop(self):
        if self.current is not None:
            name, raw, started, proc = self.current
            py_spy_stop(proc)
            self.files[name] = (raw, time.perf_counter() - started)
            self.current = None


def _enroll_legs(scep, proxy_port, daemon_pid, direct, proxied, concurrency, spy):
    """
    ABBA: direct half, proxy half, proxy half, direct half.

    Per leg: SUCCESS CertReps, all CertReps, seconds, other answers, and the CPU seconds
    scepserver and the daemon used per answered PKIOperation (from /proc/PID/stat).
    """
    half_d, half_p = len(direct) // 2, len(proxied) // 2
    scep_port, scep_pid = scep.port, scep.process.pid
    legs = {leg: {"enrolled": 0, "certreps": 0, "seconds": 0.0, "other": {}, "scep_cpu": 0.0, "daemon_cpu": 0.0}
            for leg in ("direct", "proxy")}
    for leg, port, reqs in (("direct", scep_port, direct[:half_d]), ("proxy", proxy_port, proxied[:half_p]),
                            ("proxy", proxy_port, proxied[half_p:]), ("direct", scep_port, direct[half_d:])):
        if leg == "proxy" and "pkioperation" not in spy.files:
            spy.start("pkioperation")
        cpu = (cpu_seconds(scep_pid), cpu_seconds(daemon_pid))
        results, seconds = load.drive(port, reqs, concurrency)
        spy.stop()
        got = legs[leg]
        got["scep_cpu"] += cpu_seconds(scep_pid) - cpu[0]
        got["daemon_cpu"] += cpu_seconds(daemon_pid) - cpu[1]
        got["seconds"] += seconds
        for status, body, _ in results:
            got["certreps"] += status == 200 and load.codec.looks_like_pki_message(body)
            if status == 200 and load.enrolled(body):
                got["enrolled"] += 1
            else:
                key = f"{status} {load.describe(status, body)}"
                got["other"][key] = got["other"].get(key, 0) + 1
    for got in legs.values():
        got["rate"] = got["enrolled"] / got["seconds"]
        got["certrep_rate"] = got["certreps"] / got["seconds"]
        got["scep_cpu_ms"] = 1000 * got["scep_cpu"] / max(1, got["certreps"])
        got["daemon_cpu_ms"] = 1000 * got["daemon_cpu"] / max(1, got["certreps"])
    return legs


def one_run(opts) -> dict:
    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-peers-"))
    scep = nginx = daemon = None
    out = {}
    try:
        scep = ScepServer(top / "upstream", STATIC_CHALLENGE).start()
        nginx = Nginx(top / "nginx", scep.port).start()
        (top / "daemon").mkdir()
        engine = {"database": opts.database} if getattr(opts, "database", None) else {}  # bench/engines.py
        daemon = Daemon(top / "daemon", logging={"level": "info"}, profiles={"process_interval": "1h"},
                        renewal={"interval": "1d"},
                        upstream={"connect_timeout": "5s", "response_timeout": "30s", "body_timeout": "30s"},
                        **engine).start()
        skip = set(getattr(opts, "skip", ()))  # phases bench/engines.py leaves out
        pid = daemon.process.pid
        spy = Spy(opts.profile_dir, pid)
        admin = site.client(daemon.admin_port, daemon.admin_token)
        agent = site.client(daemon.port, None)  # each host's agent: its own credential per request

        # -- seed: CA, profile, hosts that will enroll, assignment, processing, agent fetch --
        started = time.perf_counter()
        site.add_ca(admin, CA_NAME, scep.url, STATIC_CHALLENGE)
        profile = site.upload_profile(admin, (REPO / site.REPO_FIXTURE).read_bytes(), CA_NAME)
        needed = 2 * opts.enrollments + opts.latency_requests + 1
        hosts = site.import_hosts(admin, "ENROLL", needed)
        site.assign_platform(admin, profile)
        site.process_profiles(admin)
        credentials = site.issue_agent_credentials(admin, hosts)
        fetched = [site.fetch_enrollment(agent, h, credentials[h]) for h in hosts]
        paths = [path for path, _ in fetched]
        device_challenge = fetched[0][1]
        out["seed_seconds"] = time.perf_counter() - started

        ca_cert = x509.load_pem_x509_certificate(scep.ca_pem.read_bytes())
        key, cert = load.device_identity()
        started = time.perf_counter()

        def bodies(tag, count):
            return [load.pkcs_req(key, cert, ca_cert, f"{tag}-{i}", device_challenge) for i in range(count)]

        direct_t = [("POST", "/scep?operation=PKIOperation", b) for b in bodies("direct", opts.enrollments)]
        proxy_paths = iter(paths[1:])
        proxy_t = [("POST", next(proxy_paths) + "?operation=PKIOperation", b) for b in bodies("proxy", opts.enrollments)]
        direct_l = [("POST", "/scep?operation=PKIOperation", b) for b in bodies("direct-l", opts.latency_requests)]
        proxy_l = [("POST", next(proxy_paths) + "?operation=PKIOperation", b)
                   for b in bodies("proxy-l", opts.latency_requests)]
        out["build_seconds"] = time.perf_counter() - started

        # -- 1. wrk: GetCACaps / GetCACert, scepproxyd vs nginx -----------------------------
        caps_path = paths[0]
        out["wrk"] = {}
        for op in () if "wrk" in skip else ("GetCACaps", "GetCACert"):
            query = f"operation={op}" + ("&message=bench" if op == "GetCACert" else "")
            for peer, url in (("proxy", f"http://127.0.0.1:{daemon.port}{caps_path}?{query}"),
                              ("nginx", nginx.url(query))):
                if peer == "proxy":
                    spy.start(f"wrk-{op}")
                cpu0, wall0 = cpu_times(pid), time.perf_counter()
                result = wrk(url, opts.duration, connections=opts.wrk_connections)
                cpu1, wall = cpu_times(pid), time.perf_counter() - wall0
                result["daemon_user"], result["daemon_sys"] = (cpu1[0] - cpu0[0]) / wall, (cpu1[1] - cpu0[1]) / wall
                result["daemon_cpu"] = result["daemon_user"] + result["daemon_sys"]
                spy.stop()
                out["wrk"][f"{op} {peer}"] = result

        # -- 2. PKIOperation throughput, ABBA ------------------------------------------------
        for port, path in ((scep.port, "/scep?operation=GetCACaps"), (daemon.port, caps_path + "?operation=GetCACaps")):
            load.drive(port, [("GET", path, b"")], 1)  # warm: keep-alive, caps cache
        out["enroll"] = None if "enroll" in skip else _enroll_legs(scep, daemon.port, pid, direct_t, proxy_t,
                                                                   opts.concurrency, spy)

        # -- 3. latency at concurrency 1, alternating ------------------------------------------
        d_res, p_res = load.alternate([(scep.port, direct_l), (daemon.port, proxy_l)])
        d_ms = [1000 * s for st, b, s in d_res if st == 200 and load.enrolled(b)]
        p_ms = [1000 * s for st, b, s in p_res if st == 200 and load.enrolled(b)]
        out["latency"] = {"direct_p50": pct(d_ms, 50), "direct_p99": pct(d_ms, 99), "proxy_p50": pct(p_ms, 50),
                          "proxy_p99": pct(p_ms, 99), "direct_n": len(d_ms), "proxy_n": len(p_ms),
                          "requests": len(d_res)}

        # -- 4. RSS with 100,000 more hosts and host profiles ---------------------------------
        out["mem_before_fleet"] = proc_memory_mb(pid)
        started = time.perf_counter()
        site.import_hosts(admin, "FLEET", opts.fleet)
        out["fleet_assigned"] = site.assign_platform(admin, profile)
        out["fleet_seed_seconds"] = time.perf_counter() - started
        out["mem_after_fleet"] = proc_memory_mb(pid)
        spy.start("process-fleet")
        result, seconds = site.process_profiles(admin)
        spy.stop()
        out["fleet_process"] = {"result": result, "seconds": seconds}
        out["mem_after_process"] = proc_memory_mb(pid)
        out["profiles"] = spy.files
        admin.close()
        agent.close()
    finally:
        for proc in (daemon, nginx, scep):
            if proc is not None:
                proc.stop()
        shutil.rmtree(top, ignore_errors=True)
    return out
