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


class ReactorWatch:
    """
    How the reactor fares, per named phase: a 5 ms LoopingCall records how late each tick is, and a GET every
    20 ms to the device-facing proxy listener (GetCACaps with a malformed identifier: 400 without any upstream)
    gives the proxy's latency. ``phase(name)`` switches what is recorded; ``phase(None)`` records nothing.
    """

    def __init__(self, reactor, pool, proxy_port):
        from twisted.internet import task

        self._reactor, self._pool, self._url = reactor, pool, f"http://127.0.0.1:{proxy_port}{PROXY_PATH}"
        self._name = None
        self.stalls, self.latencies, self.bad = {}, {}, {}
        self._in_flight = set()
        self._last = time.perf_counter()
        self._monitor, self._load = task.LoopingCall(self._tick), task.LoopingCall(self._fire)
        self._monitor.clock = self._load.clock = reactor

    def start(self, name):
        self.phase(name)
        self._monitor.start(TICK, now=True)
        self._load.start(LOAD_EVERY, now=True)

    def phase(self, name):
        self._name = name
        if name is not None:
            self.stalls.setdefault(name, [])
            self.latencies.setdefault(name, [])
            self.bad.setdefault(name, 0)

    def _tick(self):
        now = time.perf_counter()
        if self._name is not None:
            self.stalls[self._name].append(now - self._last - TICK)
        self._last = now

    def _fire(self):
        import treq

        which, sent = self._name, time.perf_counter()
        if which is None:
            return

        def done(code):
            self.latencies[which].append(time.perf_counter() - sent)
            if code != 400:
                self.bad[which] += 1

        d = treq.get(self._url, pool=self._pool)
        d.addCallback(lambda response: treq.content(response).addCallback(lambda _: response.code))
        d.addCallbacks(done, lambda _failure: self.bad.__setitem__(which, self.bad[which] + 1))
        self._in_flight.add(d)
        d.addBoth(lambda _: self._in_flight.discard(d))

    async def stop(self):
        from twisted.internet import defer

        self._name = None
        self._monitor.stop()
        self._load.stop()
        await defer.DeferredList(list(self._in_flight))

    def figures(self, name) -> dict:
        stalls, latencies = self.stalls[name], self.latencies[name]
        return {
            "ticks": len(stalls),
            "longest_stall_ms": 1000 * max(stalls, default=0.0),
            "stall_p99_ms": 1000 * (pct(stalls, 99) or 0.0),
            "requests": len(latencies),
            "bad_answers": self.bad[name],
            "proxy_p50_ms": 1000 * (pct(latencies, 50) or 0.0),
            "proxy_p99_ms": 1000 * (pct(latencies, 99) or 0.0),
        }


class BenchDaemon:
    """The daemon, built with parse_settings / prepare_state / make_service and started as twistd does, in this process."""

    def __init__(self, reactor, batch_size, database=None):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        from scepproxyd.config import parse_settings
        from scepproxyd.service import prepare_state

        self.reactor = reactor
        self.top_dir = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-"))
        self._log_file = open(self.top_dir / "scepproxyd.log", "a")  # as under twistd: events are written somewhere
        globalLogBeginner.beginLoggingTo([textFileLogObserver(self._log_file)], redirectStandardIO=False)
        self.proxy_port, self.admin_port = free_port(), free_port()
        ini = (
            f"[state]\ndirectory = {self.top_dir / 'var'}\n"
            f"[server]\nlisten = tcp:{self.proxy_port}:interface=127.0.0.1\npublic_url = http://127.0.0.1:{self.proxy_port}\n"
            f"[admin]\nlisten = tcp:{self.admin_port}:interface=127.0.0.1\n"
            f"[profiles]\nprocess_interval = 1h\nbatch_size = {batch_size}\n"
        )
        if database:  # {"url": ..., "password_file": ...}
            ini += "[database]\n" + "".join(f"{key} = {value}\n" for key, value in database.items())
        self.settings = parse_settings(ini, self.top_dir / "scepproxyd.ini")
        prepare_state(self.settings)

    async def start(self):
        from twisted.internet import defer
        from twisted.web.client import HTTPConnectionPool

        from scepproxyd.daemon.lifecycle import StoreService
        from scepproxyd.keys import ChallengeCipher, load_or_create_key
        from scepproxyd.service import make_service

        self._service = make_service(self.settings, self.reactor)
        await defer.maybeDeferred(self._service.startService)
        self.store = next(child.store for child in self._service if isinstance(child, StoreService))
        self.cipher = ChallengeCipher(load_or_create_key(self.settings.key_file))
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._token = self.settings.admin.token_file.read_text().strip()
        return self

    async def admin(self, method, path, body=None, content_type="application/json"):
        """An admin API call: (status, decoded JSON answer). ``body`` bytes go as they are (encoded beforehand,
        so a big one is not encoded on the reactor this process shares with the daemon)."""
        import treq

        if isinstance(body, bytes):
            extra = {"data": body, "headers": {"Authorization": f"Bearer {self._token}", "Content-Type": content_type}}
        else:
            extra = {} if body is None else {"json": body}
        extra.setdefault("headers", {"Authorization": f"Bearer {self._token}"})
        response = await treq.request(method, f"http://127.0.0.1:{self.admin_port}{path}", pool=self.pool, **extra)
        return response.code, await treq.json_content(response)

    async def stop(self):
        from twisted.internet import defer

        await self.pool.closeCachedConnections()
        await defer.maybeDeferred(self._service.stopService)
        self._log_file.close()
        shutil.rmtree(self.top_dir, ignore_errors=True)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS, so the next peak is the one of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


async def one_run(reactor, size, batch_size, database=None):
    """Start the daemon in this process, seed N host profiles, process them; a dict of figures."""
    from twisted.internet import task

    from scepproxyd.profiles import parse_profile

    daemon = await BenchDaemon(reactor, batch_size, database).start()
    store = daemon.store
    out = {"size": size, "batch_size": batch_size, "engine": store.engine}
    try:
        # -- seeding, through the store API ----------------------------------------
        started = time.perf_counter()
        await store.add_ca("BENCH_CA", "http://127.0.0.1:9/scep", daemon.cipher.encrypt("bench-static-challenge"))
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
        out["peak_reset"] = reset_peak_rss()

        # -- monitor and load, idle first, then while the job runs -----------------
        watch = ReactorWatch(reactor, daemon.pool, daemon.proxy_port)
        watch.start("idle")
        await task.deferLater(reactor, IDLE_SECONDS, lambda: None)
        watch.phase("job")
        started = time.perf_counter()
        status, body = await daemon.admin("POST", "/api/v1/jobs/process_profiles")
        out["process_seconds"] = time.perf_counter() - started
        await watch.stop()
        out["mem_after_process"] = memory_mb()
        out["job_status"], out["job_result"] = status, body.get("result", body)
        for which in ("idle", "job"):
            out[which] = watch.figures(which)
    finally:
        await daemon.stop()
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
