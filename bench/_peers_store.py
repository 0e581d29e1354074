"""Challenge consumption through the store, in a child process of its own (bench/peers.py row 4).

What it measures: one-time challenges spent per second with ``Store.consume_challenge``,
the proxy's one write per PKIOperation before it goes upstream (one DELETE ... RETURNING
plus the in-flight record; a grouped write, so the consumes queued at the same moment
share one transaction on a DB thread, store/group_commit.py). A Store on a temporary
SQLite file (migrated as the daemon migrates it, WAL, synchronous=NORMAL) gets one CA,
the fixture profile and N macOS host profiles; then one challenge per host profile is
minted (``new_challenge``, timed but not the figure), and all of them are consumed with
``--concurrency`` Deferreds outstanding at a time, as concurrent PKIOperations would.
Every consume must fire a ConsumedChallenge (a spent or unknown one fires None): a run
where any did not is reported, not counted.

With ``--database-url`` (a ``postgresql://`` URL without the password, and
``--password-file``) the Store is on that PostgreSQL database instead, migrated the
same way, with ``--pool-size`` connections and DB threads (the daemon's default, 4):
bench/engines.py gives each run an empty database of its own.

Why: the issue's target is >= 5,000 consumes/s; it bounds how many enrollments per
second one daemon can admit whatever the CA's speed.

    .venv/bin/python bench/_peers_store.py [--challenges 20000] [--concurrency 64]
    .venv/bin/python bench/_peers_store.py --database-url postgresql://... --password-file F
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "profiles" / "fleet-custom-scep-apple.mobileconfig"


CA_NAME = "BENCH_CA"


async def seed(store, count: int) -> tuple[str, list[str]]:
    """One CA, the fixture profile, ``count`` macOS hosts assigned it: (profile uuid, host uuids).

    bench/store_calls.py seeds its stores the same way.
    """
    from scepproxyd.profiles import parse_profile

    await store.add_ca(CA_NAME, "http://127.0.0.1:9/scep")
    content = FIXTURE.read_bytes().replace(b"CA_NAME", CA_NAME.encode())
    parsed = parse_profile(content)
    profile = str(uuid.uuid4())
    await store.add_profile(profile, parsed.name, "macos", content, parsed.ca_name,
                            kind=parsed.kind, identifier=parsed.identifier, variables=parsed.variables)
    hosts = [f"BENCH-HOST-{i:08d}" for i in range(count)]
    for first in range(0, count, 5000):
        await store.import_hosts([(h, "SN" + h, "macos") for h in hosts[first:first + 5000]])
    await store.assign_profile_to_platform(profile, "macos")
    return profile, hosts


async def pump(work, make, concurrency: int) -> list:
    """Run make(item) for every item with ``concurrency`` outstanding; the results."""
    from twisted.internet import defer

    results, items = [], iter(work)

    async def lane():
        for item in items:
            results.append(await make(item))

    await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(concurrency)])
    return results


async def consume_run(reactor, count: int, concurrency: int, url: str | None = None, password: str | None = None,
                      pool_size: int = 4) -> dict:
    from scepproxyd.store import Store

    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-store-"))
    path = url or top / "scepproxyd.sqlite3"
    Store.migrate(path, password)
    store = Store(path, reactor, password=password, pool_size=pool_size)
    await store.start()
    try:
        profile, hosts = await seed(store, count)
        started = time.perf_counter()
        challenges = await pump(hosts, lambda h: store.new_challenge(h, profile).addCallback(lambda c, h=h: (c, h)),
                                concurrency)
        mint_seconds = time.perf_counter() - started

        started = time.perf_counter()
        consumed = await pump(challenges, lambda ch: store.consume_challenge(ch[0], ch[1], profile), concurrency)
        consume_seconds = time.perf_counter() - started
        spent = sum(1 for c in consumed if c is not None)
        return {"engine": store.engine, "challenges": count, "concurrency": concurrency, "mint_seconds": mint_seconds,
                "consume_seconds": consume_seconds, "consumed": spent,
                "consumes_per_s": spent / consume_seconds if spent == count else None}
    finally:
        await store.stop()
        shutil.rmtree(top, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenges", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", help="a postgresql:// URL (no password) instead of a temporary SQLite file")
    parser.add_argument("--password-file", help="the PostgreSQL password, first line")
    parser.add_argument("--pool-size", type=int, default=4, help="PostgreSQL connections and DB threads")
    args = parser.parse_args()
    password = Path(args.password_file).read_text().splitlines()[0] if args.password_file else None
    from twisted.internet import defer, task

    def run(reactor):
        async def go():
            print("RESULT " + json.dumps(await consume_run(reactor, args.challenges, args.concurrency,
                                                              args.database_url, password, args.pool_size)), flush=True)
        return defer.ensureDeferred(go())

    task.react(run)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
