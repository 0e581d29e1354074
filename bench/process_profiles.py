"""Benchmark: the process_profiles job on N host profiles, inside a real, running daemon.

What it measures, per size N and per run (each run in a fresh child process, so the
reactor, memory and peak RSS start clean):

- processing time: N host profiles with status NULL handed over (claimed, one command
  each) by the ``process_profiles`` job, triggered through the admin API
  (POST /api/v1/jobs/process_profiles), i.e. the same ScheduledJob code path as the timer;
- reactor responsiveness while it runs: a 5 ms LoopingCall records how late each tick
  is (longest stall, p99), and a GET every 20 ms to the device-facing proxy listener
  (GetCACaps with a malformed identifier: 400 without any upstream) gives proxy latency
  during the job, compared with ~2 s of the same load while idle just before;
- memory: the daemon's VmRSS / VmHWM after seeding and after processing (the peak is
  reset after seeding, so "peak" is the peak while processing).

Why: the project's targets are 100,000 host profiles processed in <= 10 s, with no
reactor stall over 50 ms (devices keep enrolling meanwhile) and RSS <= 150 MB.
The daemon is built with parse_settings / prepare_state / make_service and started with
startService on the global reactor, exactly as twistd does; seeding (one CA, one
profile, N hosts, assignment) goes through the Store API and is timed but not the figure.

A child run (``--child N``) with ``--database-url`` and ``--password-file`` puts the
daemon's store on that (empty) PostgreSQL database through ``[database] url`` and
``password_file``, as an operator would: bench/engines.py runs it beside SQLite.

    .venv/bin/python bench/process_profiles.py [--sizes 10000,100000] [--runs 3] [--batch-size 1000]
"""

import argparse
import json
import math
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig"
TICK, LOAD_EVERY, IDLE_SECONDS, IMPORT_CHUNK = 0.005, 0.020, 2.0, 5000
PROXY_PATH = "/mdm/scep/proxy/x,y,z,w?operation=GetCACaps"
TARGET_SECONDS, TARGET_STALL_MS, TARGET_RSS_MB, TARGET_SIZE = 10.0, 50.0, 150.0, 100_000


def pct(values, q):
    """Nearest-rank percentile (q in 0..100); None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def memory_mb():
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_run(reactor, size, batch_size, database=None):
    """Start the daemon in this process, seed N host profiles, process them; a dict of figures."""
    import treq
    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.client import HTTPConnectionPool

    from scepproxyd.config import parse_settings
    from scepproxyd.keys import ChallengeCipher, load_or_create_key
    from scepproxyd.profiles import parse_profile
    from scepproxyd.daemon.lifecycle import StoreService
    from scepproxyd.service import make_service, prepare_state

    top_dir = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-"))
    log_file = open(top_dir / "scepproxyd.log", "a")  # as under twistd: events are written somewhere
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    proxy_port, admin_port = free_port(), free_port()
    ini = (
        f"[state]\ndirectory = {top_dir / 'var'}\n"
        f"[server]\nlisten = tcp:{proxy_port}:interface=127.0.0.1\npublic_url = http://127.0.0.1:{proxy_port}\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
        f"[profiles]\nprocess_interval = 1h\nbatch_size = {batch_size}\n"
    )
    if database:  # {"url": ..., "password_file": ...}
        ini += "[database]\n" + "".join(f"{key} = {value}\n" for key, value in database.items())
    settings = parse_settings(ini, top_dir / "scepproxyd.ini")
    prepare_state(settings)
    daemon = make_service(settings, reactor)
    await defer.maybeDeferred(daemon.startService)
    store = next(child.store for child in daemon if isinstance(child, StoreService))
    pool = HTTPConnectionPool(reactor, persistent=True)
    out = {"size": size, "batch_size": batch_size, "engine": store.engine}
    try:
        # -- seeding, through the store API ----------------------------------------
        started = time.perf_counter()
        cipher = ChallengeCipher(load_or_create_key(settings.key_file))
        await store.add_ca("BENCH_CA", "http://127.0.0.1:9/scep", cipher.encrypt("bench-static-challenge"))
        content = FIXTURE.read_bytes().replace(b"CA_NAME", b"BENCH_CA")
        parsed = parse_profile(content)
        profile_uuid = str(uuid.uuid4())
        await store.add_profile(profile_uuid, parsed.name, "macos", content, parsed.ca_name,
                                kind=parsed.kind, identifier=parsed.identifier, variables=parsed.variables)
        for first in range(0, size, IMPORT_CHUNK):
            rows = [(f"BENCH-HOST-{i:08d}", f"SN{i:010d}", "macos") for i in range(first, min(size, first + IMPORT_CHUNK))]
            await store.import_hosts(rows)
        out["assigned"] = await store.assign_profile_to_platform(profile_uuid, "macos")
        out["seed_seconds"] = time.perf_counter() - started
        out["mem_after_seed"] = memory_mb()
        try:  # reset VmHWM to the current RSS, so the next peak is the processing one
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            out["peak_reset"] = True
        except OSError:
            out["peak_reset"] = False

        # -- monitor and load, idle first, then while the job runs -----------------
        phase = ["idle"]
        stalls = {"idle": [], "job": []}
        latencies = {"idle": [], "job": []}
        bad = {"idle": 0, "job": 0}
        in_flight = set()
        last = [time.perf_counter()]

        def tick():
            now = time.perf_counter()
            if phase[0] in stalls:
                stalls[phase[0]].append(now - last[0] - TICK)
            last[0] = now

        def fire():
            which, sent = phase[0], time.perf_counter()
            if which not in latencies:
                return

            def done(code):
                latencies[which].append(time.perf_counter() - sent)
                if code != 400:
                    bad[which] += 1

            d = treq.get(f"http://127.0.0.1:{proxy_port}{PROXY_PATH}", pool=pool)
            d.addCallback(lambda response: treq.content(response).addCallback(lambda _: response.code))
            d.addCallbacks(done, lambda _failure: bad.__setitem__(which, bad[which] + 1))
            in_flight.add(d)
            d.addBoth(lambda _: in_flight.discard(d))

        monitor, load = task.LoopingCall(tick), task.LoopingCall(fire)
        monitor.clock = load.clock = reactor
        monitor.start(TICK, now=True)
        load.start(LOAD_EVERY, now=True)
        await task.deferLater(reactor, IDLE_SECONDS, lambda: None)

        token = settings.admin.token_file.read_text().strip()
        phase[0] = "job"
        started = time.perf_counter()
        response = await treq.post(f"http://127.0.0.1:{admin_port}/api/v1/jobs/process_profiles",
                                   headers={"Authorization": f"Bearer {token}"}, pool=pool)
        body = await treq.json_content(response)
        out["process_seconds"] = time.perf_counter() - started
        phase[0] = None
        monitor.stop()
        load.stop()
        await defer.DeferredList(list(in_flight))
        out["mem_after_process"] = memory_mb()
        out["job_status"], out["job_result"] = response.code, body.get("result", body)
        for which in ("idle", "job"):
            out[which] = {
                "ticks": len(stalls[which]),
                "longest_stall_ms": 1000 * max(stalls[which], default=0.0),
                "stall_p99_ms": 1000 * (pct(stalls[which], 99) or 0.0),
                "requests": len(latencies[which]),
                "bad_answers": bad[which],
                "proxy_p50_ms": 1000 * (pct(latencies[which], 50) or 0.0),
                "proxy_p99_ms": 1000 * (pct(latencies[which], 99) or 0.0),
            }
    finally:
        await pool.closeCachedConnections()
        await defer.maybeDeferred(daemon.stopService)
        log_file.close()
        shutil.rmtree(top_dir, ignore_errors=True)
    return out


def child(size, batch_size, database=None):
    from twisted.internet import defer, task

    def main(reactor):
        async def run():
            print("RESULT " + json.dumps(await one_run(reactor, size, batch_size, database)), flush=True)
        return defer.ensureDeferred(run())

    task.react(main)


def verdict(ok, text):
    return f"{'PASS' if ok else 'MISS'} ({text})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)  # with --child: PostgreSQL (bench/engines.py)
    parser.add_argument("--password-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        database = {"url": args.database_url, "password_file": args.password_file} if args.database_url else None
        return child(args.child, args.batch_size, database)
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        results = []
        for run in range(1, args.runs + 1):
            proc = subprocess.run([sys.executable, __file__, "--child", str(size), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, cwd=REPO)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"size {size} run {run}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            if r["job_status"] != 200 or r["job_result"].get("claimed") != size:
                print(f"size {size} run {run}: job answered {r['job_status']} {r['job_result']}", file=sys.stderr)
            results.append(r)
            j, i = r["job"], r["idle"]
            print(f"size {size} run {run}: seeded in {r['seed_seconds']:.1f} s; processed in {r['process_seconds']:.2f} s"
                  f" {r['job_result']}; stall {j['longest_stall_ms']:.0f} ms; proxy p50/p99 idle {i['proxy_p50_ms']:.1f}/"
                  f"{i['proxy_p99_ms']:.1f} ms, during {j['proxy_p50_ms']:.1f}/{j['proxy_p99_ms']:.1f} ms ({j['requests']}"
                  f" requests, {j['bad_answers']} not 400); RSS {r['mem_after_process']['VmRSS']:.0f} MB", flush=True)
        if results:
            m = lambda f: statistics.median([f(r) for r in results])  # noqa: E731
            rows.append({"size": size, "runs": len(results), "seconds": m(lambda r: r["process_seconds"]),
                         "stall": m(lambda r: r["job"]["longest_stall_ms"]), "stall99": m(lambda r: r["job"]["stall_p99_ms"]),
                         "idle99": m(lambda r: r["idle"]["proxy_p99_ms"]), "job99": m(lambda r: r["job"]["proxy_p99_ms"]),
                         "rss": m(lambda r: r["mem_after_process"]["VmRSS"]), "peak": m(lambda r: r["mem_after_process"]["VmHWM"])})
    print(f"\nprocess_profiles, batch_size {args.batch_size} (medians of runs)\n")
    head = ("size", "runs", "process s", "hp/s", "stall max ms", "stall p99 ms", "proxy p99 idle ms",
            "proxy p99 job ms", "ratio", "RSS MB", "peak RSS MB")
    print(" | ".join(head))
    for r in rows:
        ratio = r["job99"] / r["idle99"] if r["idle99"] else float("nan")
        print(" | ".join([f"{r['size']}", f"{r['runs']}", f"{r['seconds']:.2f}", f"{r['size'] / r['seconds']:.0f}",
                          f"{r['stall']:.1f}", f"{r['stall99']:.1f}", f"{r['idle99']:.1f}", f"{r['job99']:.1f}",
                          f"{ratio:.1f}x", f"{r['rss']:.0f}", f"{r['peak']:.0f}"]))
    target = next((r for r in rows if r["size"] == TARGET_SIZE), None)
    print(f"\ntargets (issue), at {TARGET_SIZE}:")
    if target is None:
        print(f"  not measured: add {TARGET_SIZE} to --sizes")
        return 0
    print(f"  processing <= {TARGET_SECONDS:.0f} s:    " + verdict(target["seconds"] <= TARGET_SECONDS, f"{target['seconds']:.2f} s"))
    print(f"  longest stall <= {TARGET_STALL_MS:.0f} ms: " + verdict(target["stall"] <= TARGET_STALL_MS, f"{target['stall']:.1f} ms"))
    print(f"  RSS <= {TARGET_RSS_MB:.0f} MB:         " + verdict(target["peak"] <= TARGET_RSS_MB,
                                                        f"peak {target['peak']:.0f} MB while processing, {target['rss']:.0f} MB after"))
    return 0


if __name__ == "__main__":
    main()
    sys.exit(0)
