"""Benchmark: GetCACaps/GetCACert through scepproxyd beside the Python ceiling, a bare twisted.web resource.

The ceiling is what one Twisted process on one core can answer at all: a leaf
``twisted.web`` resource behind a plain ``Site`` that returns fixed bytes (the
very bytes the proxy answered, so bodies are the same size). The proxy, with
its identifier parsing, proxy-target cache, GetCACaps/GetCACert cache, limits
and log line, is measured in the same run with the same ``wrk``, alternated
with the ceiling. Issue 15's target: proxy req/s >= 0.8 x the ceiling.

Per run (fresh processes each run): micromdm ``scepserver`` as the upstream CA,
scepproxyd under twistd (tests/support's ``Daemon``, log level info, as
bench/peers.py starts it), one CA integration, the fixture profile, one host
seeded through the admin and agent APIs (bench/_peers_site.py), and this file
run again as ``--serve PORT DIR``, the ceiling. Prints a line per run, the
load average (``/proc/loadavg``) before and after each run, and the medians.

    .venv/bin/python bench/ceiling.py [--runs 3] [--duration 8] [--connections 16]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

OPERATIONS = {
    "GetCACaps": ("operation=GetCACaps", b"text/plain"),
    "GetCACert": ("operation=GetCACert&message=bench", b"application/x-x509-ca-cert"),
}
TARGET = 0.8


def serve(port: int, directory: Path) -> None:
    """The ceiling: a bare twisted.web leaf answering each operation with the bytes stored in ``directory``."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    answers = {op.encode(): ((directory / op).read_bytes(), ctype) for op, (_, ctype) in OPERATIONS.items()}

    class Fixed(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            body, ctype = answers[request.args[b"operation"][0]]
            request.setHeader(b"content-type", ctype)
            return body

    reactor.listenTCP(port, server.Site(Fixed()), interface="127.0.0.1")
    reactor.run()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_run(opts) -> dict:
    import _peers_load as load
    import _peers_site as site
    from _peers_procs import Daemon, ScepServer, free_port, py_spy, py_spy_stop, stop, stop_all, wait_for_port, wrk
    from _peers_run import CA_NAME, STATIC_CHALLENGE, cpu_seconds

    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-ceiling-"))
    scep = daemon = ceiling = None
    out = {"load_before": loadavg()}
    try:
        scep = ScepServer(top / "upstream", STATIC_CHALLENGE).start()
        (top / "daemon").mkdir()
        # target_cache_seconds given explicitly: a daemon from another checkout would refuse the key.
        daemon = Daemon(top / "daemon", logging={"level": "info"}, profiles={"process_interval": "1h"},
                        renewal={"interval": "1d"}, server={"target_cache_seconds": opts.target_cache},
                        upstream={"connect_timeout": "5s", "response_timeout": "30s", "body_timeout": "30s"}).start()
        admin = site.client(daemon.admin_port, daemon.admin_token)
        agent = site.client(daemon.port, None)
        site.add_ca(admin, CA_NAME, scep.url, STATIC_CHALLENGE)
        profile = site.upload_profile(admin, CA_NAME)
        (host,) = site.import_hosts(admin, "CEIL", 1)
        site.assign_platform(admin, profile)
        site.process_profiles(admin)
        credentials = site.issue_agent_credentials(admin, [host])
        path = site.fetch_enrollment(agent, host, credentials[host]).path
        admin.close()
        agent.close()

        answers = top / "answers"
        answers.mkdir()
        for op, (query, _) in OPERATIONS.items():
            ((status, body, _),), _ = load.drive(daemon.port, [("GET", f"{path}?{query}", b"")], 1)
            if status != 200:
                raise RuntimeError(f"{op} through the proxy answered {status}: {body[:200]!r}")
            (answers / op).write_bytes(body)
        port = free_port()
        ceiling = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(port), str(answers)])
        wait_for_port(port, ceiling)

        peers = {"proxy": (daemon.process.pid, f"http://127.0.0.1:{daemon.port}{path}"),
                 "ceiling": (ceiling.pid, f"http://127.0.0.1:{port}/")}
        for op, (query, _) in OPERATIONS.items():
            for name, (pid, base) in peers.items():
                wrk(f"{base}?{query}", 1, connections=opts.connections)  # warm: connections, caches
            for name, (pid, base) in peers.items():
                spy = None
                if opts.profile and name == "proxy":
                    raw = Path(opts.profile).resolve() / f"run{len(opts.profiles) + 1}-{op}.txt"
                    raw.parent.mkdir(parents=True, exist_ok=True)
                    spy = py_spy(pid, raw)
                cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
                result = wrk(f"{base}?{query}", opts.duration, connections=opts.connections)
                result["cores"] = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
                if spy is not None:
                    py_spy_stop(spy)
                    out.setdefault("profiles", {})[op] = (str(raw), time.perf_counter() - wall0)
                if result["non2xx"] or result["rps"] is None:
                    raise RuntimeError(f"wrk {op} {name}: {result}")
                out[f"{op} {name}"] = result
    finally:
        if ceiling is not None:
            stop(ceiling)
        stop_all(top, daemon, scep)
    out["load_after"] = loadavg()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (one wrk thread)")
    parser.add_argument("--target-cache", default="5s", help="the daemon's [server] target_cache_seconds")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the daemon under wrk (figures then lower)")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(int(args.serve[0]), Path(args.serve[1]))

    runs = []
    args.profiles = runs
    for run in range(1, args.runs + 1):
        r = one_run(args)
        runs.append(r)
        cells = ", ".join(
            f"{op} proxy {r[f'{op} proxy']['rps']:.0f} ({r[f'{op} proxy']['cores']:.2f} cores) /"
            f" ceiling {r[f'{op} ceiling']['rps']:.0f} ({r[f'{op} ceiling']['cores']:.2f} cores)"
            f" = {r[f'{op} proxy']['rps'] / r[f'{op} ceiling']['rps']:.2f}"
            for op in OPERATIONS)
        print(f"run {run}: {cells}; load average {r['load_before']} before, {r['load_after']} after", flush=True)

    print(f"\nGetCACaps/GetCACert req/s, wrk -t1 -c{args.connections} -d{args.duration}s, medians of {len(runs)} runs"
          f" (ratio: the median of each run's proxy/ceiling)\n")
    head = ("operation", "scepproxyd", "bare twisted.web", "ratio", "target", "verdict",
            "CPU us/request, proxy / ceiling")
    rows = []
    per_request = lambda r, key: 1e6 * r[key]["cores"] / r[key]["rps"]  # noqa: E731
    for op in OPERATIONS:
        proxy = statistics.median(r[f"{op} proxy"]["rps"] for r in runs)
        top = statistics.median(r[f"{op} ceiling"]["rps"] for r in runs)
        ratio = statistics.median(r[f"{op} proxy"]["rps"] / r[f"{op} ceiling"]["rps"] for r in runs)
        cores = statistics.median(r[f"{op} proxy"]["cores"] for r in runs)
        cpu = [statistics.median(per_request(r, f"{op} {peer}") for r in runs) for peer in ("proxy", "ceiling")]
        rows.append((op, f"{proxy:.0f} ({cores:.2f} cores)", f"{top:.0f}", f"{ratio:.2f}", f">= {TARGET}",
                     "PASS" if ratio >= TARGET else "MISS", f"{cpu[0]:.0f} / {cpu[1]:.0f}"))
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    for line in [head, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    if args.profile:
        from _peers_procs import SPY_RATE
        from _peers_profile import summarize
        for op, (raw, seconds) in runs[0].get("profiles", {}).items():
            print(f"\npy-spy, run 1, {op} through the proxy ({raw}):")
            print(summarize(Path(raw), SPY_RATE, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
