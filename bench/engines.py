"""Benchmark: bench/peers.py's store-bound rows on SQLite and on PostgreSQL, side by side (issue 14).

One command, one table: for each engine, in the same runs, the figures of bench/peers.py
that the store decides, each a median over --runs, with the ratio PostgreSQL / SQLite:

- the latency scepproxyd adds to a PKIOperation at concurrency 1 (p50 and p99, proxy
  minus scepserver direct, requests alternating): bench/_peers_run.py with its wrk and
  throughput phases left out;
- challenge consumes/s through the Store (bench/_peers_store.py);
- the processing job on 100,000 host profiles and the longest reactor stall meanwhile
  (bench/process_profiles.py --child);
- the twistd RSS with 100,000 more hosts and host profiles, then after processing them
  (bench/_peers_run.py's last phase).

The children are peers.py's own, unchanged but for where their store lives: on
PostgreSQL each gets an empty database of its own (``[database] url`` and
``password_file``, the daemon's default ``pool_size``). The PostgreSQL server is the
tests' (tests/support/postgres.py): Debian's, started here as nobody on a free loopback
port, durable (fsync on, synchronous_commit on), stopped by its pid at the end. Within
a run the engines take turns, in the order SQLite, PostgreSQL, then the reverse in the
next run, so drift on the shared machine weighs on both.

    .venv/bin/python bench/engines.py [--runs 3] [--fleet 100000] [--processing-size 100000]
    .venv/bin/python bench/engines.py --store-only [--challenges 20000]    # the consumes/s row alone
"""

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _peers_procs import PostgreSQL, database_section, server_version  # noqa: E402
from peers import child, fmt, med  # noqa: E402

ENGINES = ("sqlite", "postgresql")


def run_engine(args, engine, pg) -> dict:
    """One run of every child on one engine; PostgreSQL's databases are dropped after each child."""
    out = {}

    def database():
        return pg.fresh_database() if engine == "postgresql" else None

    def done(db):
        if db is not None:
            pg.drop_database(db)

    if not args.store_only:
        db = database()
        out["peers"] = child("peers.py", "--child-run", json.dumps(peers_options(args, db)), timeout=3600)
        done(db)

    db = database()
    extra = ["--database-url", db.url, "--password-file", db.password_file] if db else []
    out["store"] = child("_peers_store.py", "--challenges", args.challenges, "--concurrency", args.store_concurrency,
                         *extra)
    done(db)

    if args.processing_size and not args.store_only:
        db = database()
        extra = ["--database-url", db.url, "--password-file", db.password_file] if db else []
        out["processing"] = child("process_profiles.py", "--child", args.processing_size, "--batch-size", 1000, *extra)
        done(db)
    return out


def peers_options(args, db) -> dict:
    """The options of peers.py's child for the latency and RSS rows (its wrk and c=8 phases left out)."""
    return {"duration": 0, "concurrency": 1, "enrollments": 0, "latency_requests": args.latency_requests,
            "wrk_connections": 1, "fleet": args.fleet, "profile_dir": None, "skip": ["wrk", "enroll"],
            "database": database_section(db) if db else None}


def print_run(run, engine, r):
    p, s, j = r.get("peers"), r.get("store"), r.get("processing")
    parts = []
    if p:
        lat = p["latency"]
        parts.append(f"c=1 p50 {fmt(lat['proxy_p50'], '.1f')}/{fmt(lat['direct_p50'], '.1f')} ms,"
                     f" p99 {fmt(lat['proxy_p99'], '.1f')}/{fmt(lat['direct_p99'], '.1f')} ms"
                     f" ({lat['proxy_n']}/{lat['direct_n']} enrolled);"
                     f" fleet seeded in {p['fleet_seed_seconds']:.1f} s, RSS {p['mem_after_fleet']['VmRSS']:.0f} MB,"
                     f" processed in {p['fleet_process']['seconds']:.1f} s, RSS {p['mem_after_process']['VmRSS']:.0f}"
                     f" peak {p['mem_after_process']['VmHWM']:.0f} MB")
    if s:
        parts.append(f"consumed {s['consumed']}/{s['challenges']} at {fmt(s['consumes_per_s'])}/s")
    if j:
        parts.append(f"process_profiles {j['size']}: {j['process_seconds']:.2f} s {j['job_result']},"
                     f" stall {j['job']['longest_stall_ms']:.0f} ms")
    print(f"run {run} {engine}: " + "; ".join(parts), flush=True)


def rows_for(args, results):
    """(figure, SQLite, PostgreSQL, ratio) rows, medians over runs, the ratio of the medians."""
    def pick(engine, get):
        return med(results[engine], lambda r: get(r))

    def peers(get):
        return lambda r: get(r["peers"]) if r.get("peers") else None

    def store(get):
        return lambda r: get(r["store"]) if r.get("store") else None

    def processing(get):
        return lambda r: get(r["processing"]) if r.get("processing") else None

    latency = [
        ("PKIOperation latency p50 ms, c=1, proxy", peers(lambda p: p["latency"]["proxy_p50"]), ".2f"),
        ("  scepserver direct p50 ms", peers(lambda p: p["latency"]["direct_p50"]), ".2f"),
        ("  added p50 ms (target <= 2)", peers(lambda p: p["latency"]["proxy_p50"] - p["latency"]["direct_p50"]), ".2f"),
        ("PKIOperation latency p99 ms, c=1, proxy", peers(lambda p: p["latency"]["proxy_p99"]), ".2f"),
        ("  scepserver direct p99 ms", peers(lambda p: p["latency"]["direct_p99"]), ".2f"),
        ("  added p99 ms", peers(lambda p: p["latency"]["proxy_p99"] - p["latency"]["direct_p99"]), ".2f"),
    ]
    figures = [] if args.store_only else latency
    figures += [
        (f"challenge consumes/s ({args.store_concurrency} outstanding; target >= 5,000)",
         store(lambda s: s["consumes_per_s"]), ".0f"),
    ]
    if args.processing_size and not args.store_only:
        figures += [
            (f"processing job, {args.processing_size:,} host profiles, s (target <= 10)",
             processing(lambda j: j["process_seconds"]), ".2f"),
            ("  longest reactor stall ms (target <= 50)", processing(lambda j: j["job"]["longest_stall_ms"]), ".1f"),
            ("  proxy p99 ms during the job", processing(lambda j: j["job"]["proxy_p99_ms"]), ".1f"),
            ("  RSS MB after processing (in-process daemon)", processing(lambda j: j["mem_after_process"]["VmRSS"]), ".0f"),
        ]
    figures += [] if args.store_only else [
        (f"twistd: {args.fleet:,} hosts imported + assigned, s", peers(lambda p: p["fleet_seed_seconds"]), ".1f"),
        ("  RSS MB seeded", peers(lambda p: p["mem_after_fleet"]["VmRSS"]), ".0f"),
        ("  processing them through the admin API, s", peers(lambda p: p["fleet_process"]["seconds"]), ".1f"),
        ("  RSS MB after processing", peers(lambda p: p["mem_after_process"]["VmRSS"]), ".0f"),
        ("  peak RSS MB, VmHWM (target <= 150)", peers(lambda p: p["mem_after_process"]["VmHWM"]), ".0f"),
    ]
    rows = []
    for name, get, spec in figures:
        lite, pg = pick("sqlite", get), pick("postgresql", get)
        ratio = pg / lite if lite and pg is not None else None
        rows.append((name, fmt(lite, spec), fmt(pg, spec), fmt(ratio, ".2f")))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=200, help="sequential PKIOperations per leg")
    parser.add_argument("--fleet", type=int, default=100_000, help="hosts and host profiles for the RSS figure")
    parser.add_argument("--challenges", type=int, default=20_000)
    parser.add_argument("--store-concurrency", type=int, default=64)
    parser.add_argument("--processing-size", type=int, default=100_000, help="0 skips process_profiles.py")
    parser.add_argument("--store-only", action="store_true",
                        help="only the challenge consumes/s row (bench/_peers_store.py), on both engines")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL server setting over the durable defaults (diagnostics only)")
    args = parser.parse_args()

    settings = dict(item.split("=", 1) for item in args.pg_setting)
    pg = PostgreSQL(settings=settings, durable=True).start()
    try:
        shown = pg.psql("SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN"
                        " ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'shared_buffers')")
        print(f"{server_version(pg.bin)} on 127.0.0.1:{pg.port}: {shown}", flush=True)
        results = {engine: [] for engine in ENGINES}
        for run in range(1, args.runs + 1):
            for engine in ENGINES if run % 2 else tuple(reversed(ENGINES)):
                r = run_engine(args, engine, pg)
                results[engine].append(r)
                print_run(run, engine, r)
    finally:
        pg.stop()
        pg.remove()

    rows = rows_for(args, results)
    head = ("figure", "SQLite", "PostgreSQL", "PostgreSQL/SQLite")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    legs = "" if args.store_only else f"{args.latency_requests} PKIOperations per leg at c=1, "
    print(f"\nscepproxyd's store on SQLite and PostgreSQL (durable, loopback), medians of {args.runs} runs"
          f" ({legs}{args.challenges:,} challenges)\n")
    for line in [head, tuple("-" * w for w in widths)] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


if __name__ == "__main__":
    main()
    sys.exit(0)
