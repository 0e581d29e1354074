"""One run of bench/peers.py, in a fresh child process: start the peers, seed, measure, stop.

On loopback, free ports: micromdm ``scepserver`` (the real upstream CA, ``-challenge=S
-allowrenew=0``, a new depot), ``nginx`` proxy_pass to it, and scepproxyd under twistd
(shipped defaults, built-in CA included, log level info; timers pushed to 1 h so only
the benchmark triggers jobs), with two CA integrations pointing at the same scepserver:
one in passthrough (macOS hosts), one in RA mode (iOS hosts, its own copy of the
profile; the daemon enrolls its RA certificate from scepserver when it is added).
The site is seeded through the admin and agent APIs only (bench/_peers_site.py).
All request bodies are built before any timing; an RA-mode request carries the subject
the profile renders for its host and is encrypted to the RA certificate from the
proxy's GetCACert answer, as a device's is. In order:

1. wrk on GetCACaps and GetCACert: scepproxyd (a proxy identifier URL of a pending host
   profile) and nginx, alternated; scepproxyd's CPU time from /proc during its runs.
2. PKIOperation throughput at ``concurrency``: direct to scepserver, through scepproxyd
   in passthrough and through scepproxyd in RA mode (one pre-minted one-time challenge
   each), in ``rounds`` mirrored rounds of blocks (direct, proxy, ra, ra, proxy, direct),
   so scepserver's depot growth (its index.txt is rescanned at every issue) and other
   load on the machine weigh on all alike. Only
   CertReps with pkiStatus SUCCESS count as enrollments; all CertReps, and scepserver's
   and the daemon's CPU, are recorded too.
3. PKIOperation latency at concurrency 1: requests alternate direct / proxy / ra.
4. RSS: ``fleet`` (100,000) more hosts imported (JSON chunks of 5,000), assigned by
   platform, VmRSS/VmHWM of the twistd pid; then the process_profiles job and again.

With a profile directory, py-spy records the daemon during each load phase (Spy).
bench/engines.py gives ``database`` (a ``[database]`` section: the daemon on PostgreSQL)
and ``skip`` (phases left out: ``wrk``, ``enroll``).
"""

import os
import tempfile
import time
from pathlib import Path

from cryptography import x509

import _peers_load as load
import _peers_site as site
from _peers_procs import Daemon, Nginx, ScepServer, proc_memory_mb, py_spy, py_spy_stop, stop_all, wrk

STATIC_CHALLENGE = "bench-static-challenge"
CA_NAME = "BENCH_CA"
#: The same scepserver as a second CA integration, in RA mode, for the hosts of another platform.
RA_CA_NAME = "BENCH_RA"
RA_PLATFORM = "ios"


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


#: The PKIOperation legs: scepserver direct, through the proxy in passthrough, through the proxy in RA mode.
LEGS = ("direct", "proxy", "ra")


def _blocks(legs, rounds):
    """
    ``legs``: {leg: (port, requests)} cut into ``2 * rounds`` blocks each, in ``rounds``
    mirrored rounds (direct, proxy, ra, ra, proxy, direct): scepserver's depot growth and
    the load other processes put on the machine weigh on every leg alike.
    """
    parts = 2 * rounds
    chunks = {leg: [reqs[i * len(reqs) // parts:(i + 1) * len(reqs) // parts] for i in range(parts)]
              for leg, (_, reqs) in legs.items()}
    for _ in range(rounds):
        for leg in list(legs) + list(reversed(legs)):
            yield leg, legs[leg][0], chunks[leg].pop(0)


def _enroll_legs(scep, daemon_pid, legs, concurrency, rounds, spy):
    """
    Per leg: SUCCESS CertReps, all CertReps, seconds, other answers, and the CPU seconds
    scepserver and the daemon used per answered PKIOperation (from /proc/PID/stat).
    """
    scep_pid = scep.process.pid
    got_legs = {leg: {"enrolled": 0, "certreps": 0, "seconds": 0.0, "other": {}, "scep_cpu": 0.0, "daemon_cpu": 0.0}
                for leg in legs}
    for leg, port, reqs in _blocks(legs, rounds):
        phase = "pkioperation" if leg == "proxy" else f"pkioperation-{leg}"
        if leg != "direct" and phase not in spy.files:
            spy.start(phase)
        cpu = (cpu_seconds(scep_pid), cpu_seconds(daemon_pid))
        results, seconds = load.drive(port, reqs, concurrency)
        spy.stop()
        got = got_legs[leg]
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
    for got in got_legs.values():
        got["rate"] = got["enrolled"] / got["seconds"]
        got["certrep_rate"] = got["certreps"] / got["seconds"]
        got["scep_cpu_ms"] = 1000 * got["scep_cpu"] / max(1, got["certreps"])
        got["daemon_cpu_ms"] = 1000 * got["daemon_cpu"] / max(1, got["certreps"])
    return got_legs


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

        # -- seed: the CA twice (passthrough, ra), profiles, hosts, assignment, processing, agent fetch --
        started = time.perf_counter()
        site.add_ca(admin, CA_NAME, scep.url, STATIC_CHALLENGE)
        site.add_ca(admin, RA_CA_NAME, scep.url, STATIC_CHALLENGE, mode="ra")  # enrolls its RA certificate
        profile = site.upload_profile(admin, CA_NAME)
        ra_profile = site.upload_profile(admin, RA_CA_NAME, platform=RA_PLATFORM, identifier="Bench.RA")
        per_leg = opts.enrollments + opts.latency_requests
        hosts = site.import_hosts(admin, "ENROLL", per_leg + 1)
        ra_hosts = site.import_hosts(admin, "RA", per_leg, platform=RA_PLATFORM)
        site.assign_platform(admin, profile)
        site.assign_platform(admin, ra_profile, RA_PLATFORM)
        site.process_profiles(admin)
        credentials = site.issue_agent_credentials(admin, hosts + ra_hosts)
        fetched = [site.fetch_enrollment(agent, h, credentials[h]) for h in hosts]
        ra_fetched = [site.fetch_enrollment(agent, h, credentials[h]) for h in ra_hosts]
        device_challenge = fetched[0].challenge
        out["seed_seconds"] = time.perf_counter() - started

        # -- every PKCSReq body, before any timing: one device key, one CSR per request --
        ca_cert = x509.load_pem_x509_certificate(scep.ca_pem.read_bytes())
        # A device of an RA-mode CA encrypts to the RA certificate, the first in the proxy's GetCACert answer.
        answers, _ = load.drive(daemon.port, [("GET", ra_fetched[0].path + "?operation=GetCACert", b"")], 1)
        if answers[0][0] != 200:
            raise RuntimeError(f"GetCACert through the RA answered {answers[0][0]}: {answers[0][1][:200]!r}")
        ra_cert = load.recipient_certificate(answers[0][1])
        key, cert = load.device_identity()
        started = time.perf_counter()

        def requests(recipient, subjects, paths=None, challenge=device_challenge):
            paths = paths or ["/scep"] * len(subjects)
            return [("POST", path + "?operation=PKIOperation", load.pkcs_req(key, cert, recipient, subject, challenge))
                    for path, subject in zip(paths, subjects)]

        n, m = opts.enrollments, opts.latency_requests
        proxy_paths = [e.path for e in fetched[1:]]
        ra_paths, ra_subjects = [e.path for e in ra_fetched], [e.subject for e in ra_fetched]
        throughput = {
            "direct": (scep.port, requests(ca_cert, [f"direct-{i}" for i in range(n)])),
            "proxy": (daemon.port, requests(ca_cert, [f"proxy-{i}" for i in range(n)], proxy_paths[:n])),
            "ra": (daemon.port, requests(ra_cert, ra_subjects[:n], ra_paths[:n], ra_fetched[0].challenge)),
        }
        latency = {
            "direct": (scep.port, requests(ca_cert, [f"direct-l-{i}" for i in range(m)])),
            "proxy": (daemon.port, requests(ca_cert, [f"proxy-l-{i}" for i in range(m)], proxy_paths[n:])),
            "ra": (daemon.port, requests(ra_cert, ra_subjects[n:], ra_paths[n:], ra_fetched[0].challenge)),
        }
        out["build_seconds"] = time.perf_counter() - started

        # -- 1. wrk: GetCACaps / GetCACert, scepproxyd vs nginx -----------------------------
        caps_path = fetched[0].path
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

        # -- 2. PKIOperation throughput, mirrored order ------------------------------------
        for port, path in ((scep.port, "/scep?operation=GetCACaps"), (daemon.port, caps_path + "?operation=GetCACaps"),
                           (daemon.port, ra_paths[0] + "?operation=GetCACaps")):
            load.drive(port, [("GET", path, b"")], 1)  # warm: keep-alive, caps cache
        out["enroll"] = None if "enroll" in skip else _enroll_legs(scep, pid, throughput, opts.concurrency,
                                                                   opts.rounds, spy)

        # -- 3. latency at concurrency 1, alternating ------------------------------------------
        answers = load.alternate([latency[leg] for leg in LEGS])
        out["latency"] = {"requests": m}
        for leg, results in zip(LEGS, answers):
            ms = [1000 * s for st, b, s in results if st == 200 and load.enrolled(b)]
            out["latency"].update({f"{leg}_p50": pct(ms, 50), f"{leg}_p99": pct(ms, 99), f"{leg}_n": len(ms)})

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
        stop_all(top, daemon, nginx, scep)
    return out
