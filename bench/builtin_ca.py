"""Benchmark: the built-in CA's enrollments/s beside micromdm scepserver direct, same CA key size, same run.

Issue 15's built-in CA rows. Every run is a fresh child process (this file with
``--child-run``) that starts, on free loopback ports:

- micromdm ``scepserver`` with a new depot (``scepserver ca -init``, whose CA key is
  RSA 4096 by default), ``-challenge=S -allowrenew=0``, as bench/peers.py starts it;
- scepproxyd under twistd (tests/support's ``Daemon``, log level info, timers at 1 h),
  its built-in CA given a key of the size read from scepserver's ``ca.pem``
  (``[ca] key_size``), so both CAs do the same RSA work per enrollment.

It seeds through the admin and agent APIs only (bench/_peers_site.py): the fixture
profile naming the built-in CA (``$FLEET_VAR_CUSTOM_SCEP_CHALLENGE_builtin``), macOS
hosts, assignment, processing, and each host's agent fetch. Each fetched profile gives
a proxy URL with its own one-time proxy challenge and a one-time CA challenge bound to
that host profile, and the subject the profile renders for the host. Three legs of
real PKCSReqs (bodies built before any timing, one distinct transaction ID each, as
one key per device gives):

- ``direct``: to scepserver's ``/scep``, its static challenge;
- ``builtin``: to the daemon's own ``/scep`` (the built-in CA), each request with the
  one-time CA challenge of its own host profile and that profile's subject, which the
  CA checks (docs/ca.md, Issuance policy); the static challenge is off by default;
- ``proxy``: to a host profile's proxy URL, whose CA integration is ``builtin`` (its
  URL is the daemon's own ``/scep``; the proxy reaches it in process), spending the
  proxy challenge and then the CA challenge.

Figures per leg: enrollments/s at ``--concurrency`` in ``--rounds`` mirrored rounds
of blocks (direct, builtin, proxy, proxy, builtin, direct), so database and depot
growth and other load weigh on every leg alike; latency p50/p99 at concurrency 1,
requests alternating direct / builtin / proxy; user+sys CPU of scepserver and of
twistd per answered request (/proc/PID/stat). Only CertReps with pkiStatus SUCCESS
count. Target: built-in CA enrollments/s >= 1.0 x scepserver direct.

    .venv/bin/python bench/builtin_ca.py [--runs 3] [--enrollments 400] [--profile DIR]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from peers import child, fmt, med, verdict  # noqa: E402

# twistd imports scepproxyd from sys.path: this checkout's, not the one the venv was installed from.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

#: The legs, in the order of a mirrored round's first half, and their names in the table.
LEGS = ("direct", "builtin", "proxy")
LEG_NAMES = {"direct": "scepserver direct", "builtin": "built-in CA /scep", "proxy": "proxy -> builtin"}
TARGET = 1.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_run(opts) -> dict:
    """Start scepserver and the daemon, seed, build every body, measure; the figures of one run."""
    from cryptography import x509

    import _peers_load as load
    import _peers_site as site
    from _peers_procs import Daemon, ScepServer, stop_all
    from _peers_run import STATIC_CHALLENGE, Spy, _enroll_legs, pct

    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-builtin-"))
    scep = daemon = None
    out = {"load_before": loadavg()}
    try:
        scep = ScepServer(top / "upstream", STATIC_CHALLENGE).start()
        scep_ca = x509.load_pem_x509_certificate(scep.ca_pem.read_bytes())
        bits = scep_ca.public_key().key_size
        (top / "daemon").mkdir()
        daemon = Daemon(top / "daemon", logging={"level": "info"}, profiles={"process_interval": "1h"},
                        renewal={"interval": "1d"}, ca={"key_size": str(bits)}).start()
        pid = daemon.process.pid
        admin = site.client(daemon.admin_port, daemon.admin_token)
        agent = site.client(daemon.port, None)

        # -- seed: the fixture profile naming the built-in CA, hosts, processing, each agent's fetch --
        started = time.perf_counter()
        name = admin.call("GET", "/api/v1/ca")["name"]
        profile = site.upload_profile(admin, name, identifier="Bench.Builtin")
        n, m = opts.enrollments, opts.latency_requests
        hosts = site.import_hosts(admin, "BUILTIN", 2 * (n + m))
        site.assign_platform(admin, profile)
        site.process_profiles(admin)
        credentials = site.issue_agent_credentials(admin, hosts)
        fetched = [site.fetch_enrollment(agent, h, credentials[h]) for h in hosts]
        admin.close()
        agent.close()
        out["seed_seconds"] = time.perf_counter() - started

        # -- every PKCSReq body, before any timing ---------------------------------------------
        answers, _ = load.drive(daemon.port, [("GET", "/scep?operation=GetCACert", b"")], 1)
        if answers[0][0] != 200:
            raise RuntimeError(f"GetCACert at /scep answered {answers[0][0]}: {answers[0][1][:200]!r}")
        builtin_ca = load.recipient_certificate(answers[0][1])
        out["key_bits"] = {"scepserver": bits, "builtin": builtin_ca.public_key().key_size}
        if out["key_bits"]["builtin"] != bits:
            raise RuntimeError(f"CA key sizes differ: {out['key_bits']}")
        key, cert = load.device_identity()
        started = time.perf_counter()
        counter = iter(range(10 ** 9))

        def body(recipient, subject, challenge):
            return load.pkcs_req(key, cert, recipient, subject, challenge, transaction_id=f"BENCH-{next(counter):08d}")

        def direct(count, tag):
            return [("POST", "/scep?operation=PKIOperation", body(scep_ca, f"direct-{tag}{i}", STATIC_CHALLENGE))
                    for i in range(count)]

        def at_scep(enrollments):
            return [("POST", "/scep?operation=PKIOperation", body(builtin_ca, e.subject, e.challenge))
                    for e in enrollments]

        def proxied(enrollments):
            return [("POST", e.path + "?operation=PKIOperation", body(builtin_ca, e.subject, e.challenge))
                    for e in enrollments]

        throughput = {"direct": (scep.port, direct(n, "")), "builtin": (daemon.port, at_scep(fetched[:n])),
                      "proxy": (daemon.port, proxied(fetched[n:2 * n]))}
        rest = fetched[2 * n:]
        latency = {"direct": (scep.port, direct(m, "l-")), "builtin": (daemon.port, at_scep(rest[:m])),
                   "proxy": (daemon.port, proxied(rest[m:]))}
        out["build_seconds"] = time.perf_counter() - started

        # -- throughput at c=N, mirrored blocks ----------------------------------------------
        for port, path in ((scep.port, "/scep?operation=GetCACaps"), (daemon.port, "/scep?operation=GetCACaps"),
                           (daemon.port, fetched[0].path + "?operation=GetCACaps")):
            load.drive(port, [("GET", path, b"")], 1)  # warm: keep-alive, caps cache
        spy = Spy(opts.profile_dir, pid)
        out["enroll"] = _enroll_legs(scep, pid, throughput, opts.concurrency, opts.rounds, spy)
        out["profiles"] = spy.files

        # -- latency at c=1, alternating ------------------------------------------------------
        results = load.alternate([latency[leg] for leg in LEGS])
        out["latency"] = {"requests": m}
        for leg, answered in zip(LEGS, results):
            ms = [1000 * s for status, b, s in answered if status == 200 and load.enrolled(b)]
            out["latency"].update({f"{leg}_p50": pct(ms, 50), f"{leg}_p99": pct(ms, 99), f"{leg}_n": len(ms)})
            other = [load.describe(status, b) for status, b, _ in answered if not (status == 200 and load.enrolled(b))]
            if other:
                out["latency"][f"{leg}_other"] = other[:5]
    finally:
        stop_all(top, daemon, scep)
    out["load_after"] = loadavg()
    return out


def run_child(opts_json):
    opts = argparse.Namespace(**json.loads(opts_json))
    print("RESULT " + json.dumps(one_run(opts)), flush=True)


def print_run(run, r):
    e, lat = r["enroll"], r["latency"]
    each = lambda get, spec=".1f": "/".join(fmt(get(leg), spec) for leg in LEGS)  # noqa: E731
    print(f"run {run}: {'/'.join(LEGS)} (RSA {r['key_bits']['scepserver']}): enroll/s {each(lambda g: e[g]['rate'])},"
          f" not SUCCESS {'/'.join(str(sum(e[g]['other'].values())) for g in LEGS)},"
          f" CPU ms each: scepserver {each(lambda g: e[g]['scep_cpu_ms'], '.2f')}"
          f" daemon {each(lambda g: e[g]['daemon_cpu_ms'], '.2f')};"
          f" c=1 p50 {each(lambda g: lat.get(f'{g}_p50'), '.2f')} ms, p99 {each(lambda g: lat.get(f'{g}_p99'), '.2f')} ms;"
          f" load average {r['load_before']} before, {r['load_after']} after", flush=True)
    for leg in LEGS:
        if e[leg]["other"]:
            print(f"run {run}:   {leg} answers not SUCCESS: {e[leg]['other']}", flush=True)
        if lat.get(f"{leg}_other"):
            print(f"run {run}:   {leg} c=1 answers not SUCCESS: {lat[f'{leg}_other']}", flush=True)


def print_table(args, runs):
    def leg_ratio(leg, get):
        return med(runs, lambda r: get(r, leg) / get(r, "direct") if get(r, leg) and get(r, "direct") else None)

    enroll = lambda key: lambda r, leg: r["enroll"][leg][key]  # noqa: E731
    latency = lambda q: lambda r, leg: r["latency"][f"{leg}_p{q}"]  # noqa: E731
    cpu = lambda r, leg: r["enroll"][leg]["scep_cpu_ms" if leg == "direct" else "daemon_cpu_ms"]  # noqa: E731
    figures = [
        (f"enrollments/s, c={args.concurrency}", enroll("rate"), ".1f", True),
        ("latency p50 ms, c=1", latency("50"), ".2f", False),
        ("latency p99 ms, c=1", latency("99"), ".2f", False),
        ("CPU ms per enrollment, the CA's process", cpu, ".2f", False),
    ]
    head = ("figure", *(LEG_NAMES[leg] for leg in LEGS), *(f"{LEG_NAMES[leg]} / direct" for leg in LEGS[1:]))
    rows = []
    for name, get, spec, targeted in figures:
        row = [name] + [fmt(med(runs, lambda r: get(r, leg)), spec) for leg in LEGS]
        for leg in LEGS[1:]:
            ratio = leg_ratio(leg, get)
            row.append(fmt(ratio, ".3f") + (f" {verdict(ratio, lambda v: v >= TARGET)}" if targeted else ""))
        rows.append(tuple(row))
    bits = sorted({r["key_bits"]["scepserver"] for r in runs})
    print(f"\nThe built-in CA beside scepserver direct, CA keys RSA {'/'.join(map(str, bits))} both, medians of"
          f" {len(runs)} runs ({args.enrollments} PKCSReqs per leg at c={args.concurrency} in {args.rounds} mirrored"
          f" rounds, {args.latency_requests} per leg at c=1; ratios: the median of each run's ratio;"
          f" target: enrollments/s >= {TARGET} x direct)\n")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    for line in [head, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    print("\nCPU: scepserver's for direct, twistd's for the other two (user + sys, per answered request).")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--enrollments", type=int, default=400, help="PKCSReqs per leg at --concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="mirrored rounds of blocks (direct, builtin, proxy, ...)")
    parser.add_argument("--latency-requests", type=int, default=100, help="sequential PKCSReqs per leg")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the daemon in its first block of each leg")
    parser.add_argument("--child-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_run:
        return run_child(args.child_run)
    runs = []
    for run in range(1, args.runs + 1):
        opts = {k: getattr(args, k) for k in ("concurrency", "enrollments", "rounds", "latency_requests")}
        opts["profile_dir"] = None
        if args.profile:
            opts["profile_dir"] = str(Path(args.profile).resolve() / f"run{run}")
            Path(opts["profile_dir"]).mkdir(parents=True, exist_ok=True)
        r = child("builtin_ca.py", "--child-run", json.dumps(opts), timeout=3600)
        if r is not None:
            runs.append(r)
            print_run(run, r)
    if runs:
        print_table(args, runs)
    if args.profile and runs:
        from _peers_procs import SPY_RATE
        from _peers_profile import summarize
        for phase, (raw, seconds) in runs[0]["profiles"].items():
            print(f"\npy-spy, run 1, {phase} ({raw}):")
            print(summarize(Path(raw), SPY_RATE, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
