"""Diagnostic (not a figure): where a PKIOperation's store time goes, on SQLite and on PostgreSQL.

For each engine, a Store as bench/_peers_store.py makes it (a temporary SQLite file; an
empty database on a durable PostgreSQL from tests/support/postgres.py, ``pool_size``
4, as the daemon's default), seeded the same way: N host profiles. Then, in phases:

1. **claim**: the processing job's store call, ``claim_host_profiles(1000)`` until
   none is left (what bench/process_profiles.py times, without the daemon around it);
   then one challenge minted for each of the next two phases' host profiles (not timed);
2. **c=1**: a PKIOperation's store calls, one host after the other (``--sequential``
   of them each way), each timed from the reactor: the four calls the proxy made one
   job each before issue 15 (``proxy_target``, ``consume_challenge``,
   ``challenge_settled``, ``enrollment_forwarded``), then, for as many other hosts,
   the two jobs it makes now (``begin_enrollment`` before the upstream call,
   ``finish_enrollment`` "forwarded" after), which do the same in two transactions;
3. **c=64**: ``consume_challenge`` for ``--consumes`` more, with 64 outstanding, as
   bench/_peers_store.py does.

Meanwhile, on the DB threads: each job's time on its thread (the reactor's time minus
this is the thread-pool hop and the queue; a grouped job, store.group_commit, gets an
equal share of its batch's time, BEGIN and COMMIT included), and within it each statement by its first
word (BEGIN, SELECT, DELETE, INSERT, UPDATE, COMMIT) and, on PostgreSQL, the pool's
checkout (``getconn``, which runs psycopg_pool's ``check_connection``, an empty query)
and return (``putconn``). With ``--cprofile N``, cProfile runs on every DB thread during
the claim and c=64 phases and the N functions with the most own time are printed per
engine and phase.

The timing wrappers cost a few microseconds a call; compare engines, not absolutes.

    .venv/bin/python bench/store_calls.py [--hosts 10000] [--sequential 1000] [--consumes 5000] [--cprofile 25]
    .venv/bin/python bench/store_calls.py --engines postgresql --pg-setting synchronous_commit=off
"""

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from _peers_procs import PostgreSQL  # noqa: E402
from _peers_store import CA_NAME, pump, seed  # noqa: E402

CALLS = ("proxy_target", "consume_challenge", "challenge_settled", "enrollment_forwarded")
#: The same PKIOperation in the proxy's two jobs (issue 15).
TWO_JOBS = ("begin_enrollment", "finish_enrollment")
CA_URL = "http://127.0.0.1:9/scep"  # what _peers_store.seed gives the CA
PHASES = ("claim", "c=1", "c=1 two jobs", "c=64")
PROFILED = ("claim", "c=64")


class Timings:
    """Durations by key, from any thread; ``profiles`` a list of cProfile.Profile, or None."""

    def __init__(self, profiles=None):
        self.lock = threading.Lock()
        self.values = defaultdict(list)
        self.phase = None
        self.profiles = {phase: [] for phase in PROFILED} if profiles else None

    def add(self, key, seconds):
        if self.phase is not None:
            with self.lock:
                self.values[(self.phase,) + key].append(seconds)

    def timed(self, key, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(key, time.perf_counter() - started)


class TimedSqlite:
    """An sqlite3 connection whose execute/executemany are timed by statement kind."""

    def __init__(self, raw, timings):
        self.raw, self.timings = raw, timings

    def execute(self, sql, params=()):
        return self.timings.timed(("sql", sql.split(None, 1)[0].upper()), self.raw.execute, sql, params)

    def executemany(self, sql, rows):
        return self.timings.timed(("sql", sql.split(None, 1)[0].upper()), self.raw.executemany, sql, rows)

    @property
    def in_transaction(self):
        return self.raw.in_transaction

    def __getattr__(self, name):
        return getattr(self.raw, name)


def instrument(current):
    """
    Patch the DB-thread side of the store, once: jobs, statements, pool checkout; cProfile when asked.

    ``current[0]`` is the Timings the wrappers record into (one per engine).
    """
    import psycopg_pool

    from scepproxyd.store import database, postgres

    run, execute, executemany = database.Database._run, postgres.Connection.execute, postgres.Connection.executemany
    run_batch = database.Database._run_batch
    getconn, putconn = psycopg_pool.ConnectionPool.getconn, psycopg_pool.ConnectionPool.putconn
    local = threading.local()

    def profiled(timings, call, *args):
        if timings.profiles is not None and timings.phase in PROFILED:
            if getattr(local, "owner", None) != (timings, timings.phase):
                local.owner, local.profile = (timings, timings.phase), cProfile.Profile()
                with timings.lock:
                    timings.profiles[timings.phase].append(local.profile)
            local.profile.enable()
            try:
                return call(*args)
            finally:
                local.profile.disable()
        return call(*args)

    def timed_run(self, fn, write):
        timings = current[0]
        return profiled(timings, timings.timed, ("job", fn.__name__), run, self, fn, write)

    def timed_batch(self, fns):
        """A group commit's batch (store.group_commit): each job is given an equal share of the batch's time."""
        timings = current[0]
        started = time.perf_counter()
        try:
            return profiled(timings, run_batch, self, fns)
        finally:
            share = (time.perf_counter() - started) / len(fns)
            for fn in fns:
                timings.add(("job", fn.__name__), share)
            timings.add(("batch", "jobs"), len(fns))

    def sql_kind(sql):
        return ("sql", sql.split(None, 1)[0].upper())

    database.Database._run = timed_run
    database.Database._run_batch = timed_batch
    postgres.Connection.execute = lambda self, sql, params=(): current[0].timed(
        sql_kind(sql), execute, self, sql, params)
    postgres.Connection.executemany = lambda self, sql, rows: current[0].timed(
        sql_kind(sql), executemany, self, sql, rows)
    psycopg_pool.ConnectionPool.getconn = lambda self, *a, **k: current[0].timed(
        ("pool", "getconn"), getconn, self, *a, **k)
    psycopg_pool.ConnectionPool.putconn = lambda self, *a, **k: current[0].timed(
        ("pool", "putconn"), putconn, self, *a, **k)


async def engine_run(reactor, engine, pg, args, timings):
    from scepproxyd.jobs import backends_for
    from scepproxyd.store import Store

    db = pg.fresh_database() if engine == "postgresql" else None
    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-calls-"))
    target = db.url if db else top / "scepproxyd.sqlite3"
    password = db.password_file.read_text().splitlines()[0] if db else None
    Store.migrate(target, password)
    store = Store(target, reactor, password=password, pool_size=4)
    await store.start()
    if engine == "sqlite":
        store._conn = TimedSqlite(store._conn, timings)
    try:
        profile, hosts = await seed(store, args.hosts)
        timings.phase = "claim"
        started, claimed = time.perf_counter(), 0
        while True:
            result = await store.claim_host_profiles(1000, backends_for("outbox"))
            claimed += len(result.claimed)
            if len(result.claimed) + len(result.failed) < 1000:
                break
        out = {"claimed": claimed, "claim_seconds": time.perf_counter() - started}
        timings.phase = None
        spend = hosts[:2 * args.sequential + args.consumes]
        challenges = await pump(spend, lambda h: store.new_challenge(h, profile).addCallback(lambda c, h=h: (c, h)), 64)
        half = args.sequential

        timings.phase = "c=1"
        for challenge, host in challenges[:half]:
            for name, call in (("proxy_target", lambda: store.proxy_target(host, profile, CA_NAME)),
                               ("consume_challenge", lambda: store.consume_challenge(challenge, host, profile))):
                started = time.perf_counter()
                result = await call()
                timings.add(("call", name), time.perf_counter() - started)
                if result is None:
                    raise RuntimeError(f"{name} answered None for {host}")
                if name == "consume_challenge":
                    consumed = result
            for name, call in (("challenge_settled", lambda: store.challenge_settled(consumed)),
                               ("enrollment_forwarded", lambda: store.enrollment_forwarded(host, profile))):
                started = time.perf_counter()
                await call()
                timings.add(("call", name), time.perf_counter() - started)

        timings.phase = "c=1 two jobs"
        for challenge, host in challenges[half:2 * half]:
            started = time.perf_counter()
            start = await store.begin_enrollment(challenge, host, profile, CA_NAME, CA_URL, "bench")
            timings.add(("call", "begin_enrollment"), time.perf_counter() - started)
            if start.consumed is None or start.target.status != "pending":
                raise RuntimeError(f"begin_enrollment took nothing for {host}: {start}")
            started = time.perf_counter()
            await store.finish_enrollment(start.consumed, "forwarded")
            timings.add(("call", "finish_enrollment"), time.perf_counter() - started)

        timings.phase = "c=64"
        started = time.perf_counter()
        done = await pump(challenges[2 * half:], lambda ch: store.consume_challenge(ch[0], ch[1], profile), 64)
        seconds = time.perf_counter() - started
        timings.phase = None
        out["consumes_per_s"] = sum(1 for c in done if c is not None) / seconds
        return out
    finally:
        timings.phase = None
        await store.stop()
        if db is not None:
            pg.drop_database(db)
        shutil.rmtree(top, ignore_errors=True)


def report(engine, timings, result, top_n):
    ms = lambda values: 1000 * statistics.median(values) if values else float("nan")  # noqa: E731
    mean = lambda values: 1000 * statistics.fmean(values) if values else float("nan")  # noqa: E731
    v = timings.values
    print(f"\n== {engine}: c=1, per PKIOperation's store calls (p50 ms; reactor = from the call to its Deferred)")
    print(f"{'call':22} {'reactor':>8} {'thread':>8}  {'hop':>6}")
    for phase, names in (("c=1", CALLS), ("c=1 two jobs", TWO_JOBS)):
        total_r = total_t = 0.0
        for name in names:
            r, t = ms(v[(phase, "call", name)]), ms(v[(phase, "job", name)])
            total_r, total_t = total_r + r, total_t + t
            print(f"{name:22} {r:8.3f} {t:8.3f}  {r - t:6.3f}")
        print(f"{'sum':22} {total_r:8.3f} {total_t:8.3f}  {total_r - total_t:6.3f}")
    print(f"\n== {engine}: claimed {result['claimed']} host profiles in {result['claim_seconds']:.2f} s;"
          f" claim_host_profiles(1000) on the thread p50 {ms(v[('claim', 'job', 'claim_host_profiles')]):.1f} ms")
    for phase in PHASES:
        names = {"claim": ("claim_host_profiles",), "c=1 two jobs": TWO_JOBS}.get(phase, CALLS)
        jobs = sum(len(v[(phase, "job", name)]) for name in names) or 1
        rows = sorted((k[2], vals) for k, vals in v.items() if k[0] == phase and k[1] in ("sql", "pool"))
        if phase == "c=64":
            sizes = v[(phase, "batch", "jobs")]
            grouped = f"; {len(sizes)} group commits of {statistics.fmean(sizes):.1f} jobs on average" if sizes else ""
            print(f"\n== {engine}: c=64 consume_challenge: {result['consumes_per_s']:.0f}/s; job on thread p50"
                  f" {ms(v[(phase, 'job', 'consume_challenge')]):.3f} ms{grouped}")
        print(f"-- {engine} {phase}: on the DB threads, by statement (count per job, mean ms, share of job time)")
        job_time = sum(sum(v[(phase, "job", name)]) for name in names) or 1.0
        for kind, vals in rows:
            print(f"   {kind:10} {len(vals) / jobs:5.2f} x {mean(vals):7.3f} ms  {100 * sum(vals) / job_time:5.1f} %")
    for phase, profiles in (timings.profiles or {}).items():
        if not profiles:
            continue
        out = io.StringIO()
        stats = pstats.Stats(profiles[0], stream=out)
        for p in profiles[1:]:
            stats.add(p)
        stats.sort_stats("tottime").print_stats(top_n)
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print(f"-- {engine} {phase}: cProfile of the DB threads, top {top_n} by own time")
        print("\n".join(lines[start:start + top_n + 1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10000, help="host profiles claimed, then consumed")
    parser.add_argument("--sequential", type=int, default=1000,
                        help="of which PKIOperations' store calls at c=1, each way (four calls, two jobs)")
    parser.add_argument("--consumes", type=int, default=5000, help="and then consumes at c=64")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="cProfile the DB threads at c=64")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    from twisted.internet import defer, task

    engines = [e for e in args.engines.split(",") if e]
    pg = PostgreSQL(settings=dict(s.split("=", 1) for s in args.pg_setting), durable=True).start() \
        if "postgresql" in engines else None

    def run(reactor):
        async def go():
            current = [None]
            instrument(current)
            for engine in engines:
                current[0] = timings = Timings(bool(args.cprofile))
                result = await engine_run(reactor, engine, pg, args, timings)
                report(engine, timings, result, args.cprofile)
        return defer.ensureDeferred(go())

    try:
        task.react(run)
    finally:
        if pg is not None:
            pg.stop()
            pg.remove()


if __name__ == "__main__":
    main()
