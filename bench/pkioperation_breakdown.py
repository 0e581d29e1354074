"""Diagnostic: where the latency scepproxyd adds to a PKIOperation goes, stage by stage, in each mode.

Not a benchmark figure (bench/peers.py gives those); this is the profile behind its
"latency added" rows. The daemon runs in this process (parse_settings, prepare_state,
make_service, startService on the global reactor, as bench/process_profiles.py does)
with timing wrappers around the stages of the PKIOperation path, patched onto the
classes at run time (the code under test is unchanged):

- ``store.X``: a Store call from the reactor until its Deferred fires (DB-thread hop
  included); ``dbthread.X``: the same call's time on the DB thread (SQL + commit);
- ``upstream.X``: the treq request to scepserver until its body is read (GetCACaps and
  GetCACert come from the upstream client's cache);
- ``codec.*``, ``ra_flow.check_csr``: parses and checks run on the reactor thread;
- ``proxy.handle``: the whole decision, from the parsed request to the answer;
- RA mode only: ``ra.X`` the RaFlow steps (``ra.pki_operation`` is the whole RA flow,
  ``ra._judge`` the host profile's policy, ``ra._forward`` the upstream round trip with
  its RSA work); ``thread.F`` each function RaFlow hands to a worker thread, from the
  reactor until its Deferred fires, and ``onthread.F`` its time on the thread (RSA,
  asn1crypto): the difference is the thread hop and the wait for the GIL.

micromdm scepserver is the upstream CA, added twice through the admin API: once in
passthrough (macOS hosts) and once in RA mode (iOS hosts, its own copy of the profile),
as bench/peers.py does (bench/_peers_site.py). A load generator in a child process (so
it does not share this process's GIL) sends ``--requests`` real PKCSReqs one at a time,
alternating direct to scepserver and through the proxy, one mode after the other; each
request carries the subject its host profile renders and is encrypted to what the
proxy's GetCACert names (the CA, or the RA certificate). Per mode it prints client-side
p50s and, per stage, the count, p50 and mean in milliseconds.

With ``--cprofile N``, the RA phase also runs cProfile, one profiler on the reactor
thread and one around each function RaFlow runs on a worker thread, and prints the top
N functions of each by own time and by cumulative time (cProfile slows what it watches,
so the stage times of that phase are inflated; compare them with a run without it).
``--cprofile-out DIR`` also saves both profiles there (``reactor.prof``, ``threads.prof``)
for ``python -m pstats``.

With ``--postgresql`` the daemon's store is an empty database on the tests' PostgreSQL
server (tests/support/postgres.py, durable, as bench/engines.py starts it), reached by TCP
with a password file, ``pool_size`` 4.

    .venv/bin/python bench/pkioperation_breakdown.py [--requests 200] [--modes passthrough,ra] [--cprofile 25]
    .venv/bin/python bench/pkioperation_breakdown.py --modes passthrough --postgresql
"""

import argparse
import collections
import cProfile
import io
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

TIMES = collections.defaultdict(list)
LOADGEN = r"""
import json, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import _peers_load as load
from cryptography import x509
a = json.loads(sys.argv[1])
ca = x509.load_pem_x509_certificate(open(a["ca"], "rb").read())
(answer,), _ = load.drive(a["proxy_port"], [("GET", a["paths"][0] + "?operation=GetCACert", b"")], 1)
recipient = load.recipient_certificate(answer[1])
subjects = [x509.Name.from_rfc4514_string(s) for s in a["subjects"]]
key, cert = load.device_identity()
direct = [("POST", "/scep?operation=PKIOperation", load.pkcs_req(key, cert, ca, f"d{i}", a["challenge"]))
          for i in range(len(a["paths"]))]
proxied = [("POST", p + "?operation=PKIOperation", load.pkcs_req(key, cert, recipient, s, a["challenge"]))
           for p, s in zip(a["paths"], subjects)]
load.drive(a["proxy_port"], [("GET", a["paths"][0] + "?operation=GetCACaps", b"")], 1)
print("READY", flush=True)
sys.stdin.readline()
d, p = load.alternate([(a["scep_port"], direct), (a["proxy_port"], proxied)])
print("RESULT " + json.dumps({"direct": [x[2] for x in d if load.enrolled(x[1])],
                              "proxy": [x[2] for x in p if load.enrolled(x[1])],
                              "other": [x[1][:80].hex() for x in p if not load.enrolled(x[1])][:3]}), flush=True)
"""


class Profiles:
    """cProfile on the reactor thread and around each worker-thread call, while ``on``."""

    def __init__(self):
        self.on = False
        self.reactor = cProfile.Profile()
        self.threads = cProfile.Profile()

    def start(self):
        self.on = True
        self.reactor.enable()

    def stop(self):
        self.reactor.disable()
        self.on = False

    def run_on_thread(self, fn, *args, **kwargs):
        """Calls come one at a time at concurrency 1, so one profiler serves every worker thread."""
        if not self.on:
            return fn(*args, **kwargs)
        return self.threads.runcall(fn, *args, **kwargs)


PROFILES = Profiles()


def timed_async(owner, name, label):
    """Replace owner.name with a wrapper timing its call until its Deferred / coroutine fires."""
    from twisted.internet import defer
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        d = result if isinstance(result, defer.Deferred) else defer.ensureDeferred(result)
        return d.addBoth(lambda value: (TIMES[label].append(time.perf_counter() - started), value)[1])

    setattr(owner, name, wrapper)


def timed_sync(owner, name, label):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def timed_thread(run_in_thread):
    """RaFlow's ``run_in_thread``, timed from the reactor (``thread.F``) and on the worker (``onthread.F``)."""

    def on_thread(fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return PROFILES.run_on_thread(fn, *args, **kwargs)
        finally:
            TIMES["onthread." + fn.__name__].append(time.perf_counter() - started)

    def wrapper(fn, *args, **kwargs):
        started = time.perf_counter()
        d = run_in_thread(on_thread, fn, *args, **kwargs)
        return d.addBoth(lambda value: (TIMES["thread." + fn.__name__].append(time.perf_counter() - started),
                                        value)[1])

    return wrapper


def instrument():
    from scepproxyd.scep import codec, proxy, ra_flow, upstream
    from scepproxyd.store import Store
    from scepproxyd.store.database import Database

    for name in ("proxy_target", "begin_enrollment", "finish_enrollment", "consume_challenge", "challenge_settled",
                 "enrollment_forwarded", "get_ca", "binding_facts", "ra_certificate_issued"):
        if hasattr(Store, name):  # so the same script times an older tree (before begin_enrollment) too
            timed_async(Store, name, "store." + name)
    run = Database._run

    def timed_run(self, fn, write):
        started = time.perf_counter()
        try:
            return run(self, fn, write)
        finally:
            TIMES["dbthread." + fn.__name__].append(time.perf_counter() - started)

    Database._run = timed_run
    run_batch = Database._run_batch

    def timed_batch(self, fns):
        """A group commit's batch (store.group_commit): each job is given an equal share of its time."""
        started = time.perf_counter()
        try:
            return run_batch(self, fns)
        finally:
            share = (time.perf_counter() - started) / len(fns)
            for fn in fns:
                TIMES["dbthread." + fn.__name__].append(share)

    Database._run_batch = timed_batch
    for name in ("pki_operation", "get_ca_caps", "get_ca_cert", "supports_post"):
        timed_async(upstream.UpstreamClient, name, "upstream." + name)
    timed_async(proxy.ScepProxy, "handle", "proxy.handle")
    for name in ("pki_operation", "_identity", "_view", "_judge", "_forward", "_answer"):
        timed_async(ra_flow.RaFlow, name, "ra." + name)
    timed_sync(codec, "looks_like_pki_message", "codec.looks_like_pki_message")
    timed_sync(codec, "cert_rep_status", "codec.cert_rep_status")
    timed_sync(ra_flow, "check_csr", "ra_flow.check_csr")
    timed_sync(ra_flow.ra, "issued_to", "ra.issued_to")
    init = ra_flow.RaFlow.__init__

    def timed_init(self, *args, run_in_thread=None, **kwargs):
        init(self, *args, run_in_thread=timed_thread(run_in_thread), **kwargs)

    ra_flow.RaFlow.__init__ = timed_init


def seed(admin_port, token, device_port, ca_url, challenge, count):
    """Both CA integrations, their profiles and ``count`` hosts each, through the admin and agent APIs:
    {mode: [Enrollment, ...]} (blocking: run it off the reactor)."""
    import _peers_site as site

    admin, agent = site.client(admin_port, token), site.client(device_port, None)
    try:
        site.add_ca(admin, "BENCH_CA", ca_url, challenge)
        site.add_ca(admin, "BENCH_RA", ca_url, challenge, mode="ra")
        hosts = {}
        for mode, ca, platform in (("passthrough", "BENCH_CA", "macos"), ("ra", "BENCH_RA", "ios")):
            profile = site.upload_profile(admin, ca, platform=platform, identifier="Bench." + ca)
            hosts[mode] = site.import_hosts(admin, mode.upper(), count, platform=platform)
            site.assign_platform(admin, profile, platform)
        site.process_profiles(admin)
        credentials = site.issue_agent_credentials(admin, hosts["passthrough"] + hosts["ra"])
        return {mode: [site.fetch_enrollment(agent, h, credentials[h]) for h in names] for mode, names in hosts.items()}
    finally:
        admin.close()
        agent.close()


def load_phase(arg):
    """Start the load generator, wait until its bodies are built, then let it send: (Popen, ready)."""
    proc = subprocess.Popen([sys.executable, "-c", LOADGEN, arg, str(BENCH), str(BENCH.parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = proc.stdout.readline()
    return proc, ready.strip() == "READY"


def finish_phase(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(f"load generator failed:\n{err[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])


def report(mode, client, times):
    ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
    print(f"\n== {mode}: client p50: direct {ms(client['direct']):.2f} ms, through scepproxyd"
          f" {ms(client['proxy']):.2f} ms, added {ms(client['proxy']) - ms(client['direct']):.2f} ms"
          f" ({len(client['proxy'])} enrollments)\n")
    if client["other"]:
        print(f"   answers that were not SUCCESS (first bytes): {client['other']}")
    print(f"{'stage (inside scepproxyd)':42} {'count':>6} {'p50 ms':>8} {'mean ms':>8}")
    for label, values in sorted(times.items()):
        print(f"{label:42} {len(values):6d} {ms(values):8.3f} {1000 * statistics.mean(values):8.3f}")


def print_profile(title, profile, top):
    for sort in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(profile, stream=buffer)
        stats.strip_dirs().sort_stats(sort).print_stats(top)
        text = buffer.getvalue()
        print(f"\n-- cProfile, {title}, by {sort} --")
        print(text[text.find("   ncalls"):].rstrip())


async def breakdown(reactor, requests, modes, top, profile_out=None, database=None):
    from twisted.internet import defer, threads
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from _peers_procs import ScepServer, free_port
    from scepproxyd.config import parse_settings
    from scepproxyd.service import make_service, prepare_state

    instrument()  # first: if it fails, nothing is left running
    top_dir = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-breakdown-"))
    scep = ScepServer(top_dir / "upstream", "bench-static-challenge").start()
    log_file = open(top_dir / "scepproxyd.log", "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    port, admin_port = free_port(), free_port()
    settings = parse_settings(
        f"[state]\ndirectory = {top_dir / 'var'}\n[server]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"public_url = http://127.0.0.1:{port}\n[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
        "[profiles]\nprocess_interval = 1h\n[renewal]\ninterval = 1d\n"
        + (f"[database]\nurl = {database.url}\npassword_file = {database.password_file}\n"
           if database is not None else ""), top_dir / "scepproxyd.ini")
    prepare_state(settings)
    daemon = make_service(settings, reactor)
    await defer.maybeDeferred(daemon.startService)
    try:
        token = settings.admin.token_file.read_text().strip()
        enrollments = await threads.deferToThread(seed, admin_port, token, port, scep.url, "bench-static-challenge",
                                                  requests)
        for mode in modes:
            arg = json.dumps({"ca": str(scep.ca_pem), "paths": [e.path for e in enrollments[mode]],
                              "subjects": [e.subject.rfc4514_string() for e in enrollments[mode]],
                              "challenge": enrollments[mode][0].challenge, "proxy_port": port,
                              "scep_port": scep.port})
            proc, ready = await threads.deferToThread(load_phase, arg)
            TIMES.clear()
            profiling = top and mode == "ra" and ready
            if profiling:
                PROFILES.start()
            client = await threads.deferToThread(finish_phase, proc)
            if profiling:
                PROFILES.stop()
            if client is None:
                return
            report(mode + (" (under cProfile)" if profiling else ""), client, dict(TIMES))
            if profiling:
                print_profile("reactor thread, RA phase", PROFILES.reactor, top)
                print_profile("worker threads (RaFlow's run_in_thread), RA phase", PROFILES.threads, top)
                if profile_out:
                    Path(profile_out).mkdir(parents=True, exist_ok=True)
                    PROFILES.reactor.dump_stats(str(Path(profile_out) / "reactor.prof"))
                    PROFILES.threads.dump_stats(str(Path(profile_out) / "threads.prof"))
    finally:
        await defer.maybeDeferred(daemon.stopService)
        scep.stop()
        log_file.close()
        shutil.rmtree(top_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--modes", default="passthrough,ra", help="phases in order: passthrough, ra")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="cProfile the RA phase, top N functions")
    parser.add_argument("--cprofile-out", metavar="DIR", help="with --cprofile: save reactor.prof and threads.prof")
    parser.add_argument("--postgresql", action="store_true", help="the daemon's store on PostgreSQL (durable)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    from twisted.internet import defer, task
    pg = database = None
    if args.postgresql:
        from _peers_procs import PostgreSQL
        pg = PostgreSQL(durable=True).start()
        database = pg.fresh_database()
    try:
        task.react(lambda reactor: defer.ensureDeferred(breakdown(reactor, args.requests, modes, args.cprofile,
                                                                  args.cprofile_out, database)))
    finally:
        if pg is not None:
            pg.drop_database(database)
            pg.stop()
            pg.remove()


if __name__ == "__main__":
    main()
