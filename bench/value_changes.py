"""Benchmark: host profiles sent again when a value they render changes, at fleet size, in a running daemon.

Issue 16 makes a changed host value or custom secret send again every host
profile that renders it. At fleet size that is one admin action touching
every row: this measures what it costs and whether devices notice. Per run
(each in a fresh child process, like bench/process_profiles.py, whose daemon
start-up and reactor watch it shares):

- seeding (store API, not a figure): N macos hosts, each with an IdP
  username; a custom secret BENCH; one profile whose SCEP payload is the
  fixture's and whose two Wi-Fi payloads render the username (EAP UserName)
  and the secret (a PSK password); assigned to every host;
- **process** (the peer, measured in the same run): the process_profiles job
  hands over all N host profiles, as it does every 30 s;
- **secret**: ``PUT /api/v1/secrets/BENCH`` with a new value; the answer
  waits until every host profile using it is sent again (``resent`` = N), in
  batches of 500, each its own transaction;
- process again (not a figure; it must claim N again);
- **import csv**: ``POST /api/v1/hosts/import`` of all N hosts as CSV with a
  new ``idp_username`` each: the import's batches send each host profile again;
- process again: claiming N proves the import sent every one again;
- **import json**: the same with the next username each, as a JSON list;
- process again, as above.

For each measured phase: seconds, host profiles per second, the reactor's
longest stall and the proxy's p99 latency against the same load while idle.

    .venv/bin/python bench/value_changes.py [--size 100000] [--runs 3]
"""

import argparse
import json
import plistlib
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from process_profiles import FIXTURE, IDLE_SECONDS, IMPORT_CHUNK, BenchDaemon, ReactorWatch, memory_mb

SECRET = "BENCH"
PHASES = ("process", "secret", "import_csv", "import_json")


def profile_content() -> bytes:
    """The fixture's SCEP profile plus two Wi-Fi payloads: one renders the username, the other the secret."""
    profile = plistlib.loads(FIXTURE.read_bytes().replace(b"CA_NAME", b"BENCH_CA"))
    for number, extra in enumerate((
        {"SSID_STR": "Corp", "EncryptionType": "WPA2",
         "EAPClientConfiguration": {"AcceptEAPTypes": [13], "UserName": "$FLEET_VAR_HOST_END_USER_IDP_USERNAME"}},
        {"SSID_STR": "Guest", "EncryptionType": "WPA2", "Password": "$FLEET_SECRET_" + SECRET},
    )):
        profile["PayloadContent"].append({
            "PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
            "PayloadIdentifier": "bench.wifi.%d" % (number,), "PayloadUUID": str(uuid.uuid4()).upper(), **extra,
        })
    return plistlib.dumps(profile)


def host(i: int) -> str:
    return f"BENCH-HOST-{i:08d}"


async def one_run(reactor, size, batch_size):
    from twisted.internet import task

    from scepproxyd.profiles import parse_profile

    daemon = await BenchDaemon(reactor, batch_size).start()
    store = daemon.store
    out = {"size": size, "engine": store.engine}
    try:
        started = time.perf_counter()
        await store.add_ca("BENCH_CA", "http://127.0.0.1:9/scep", daemon.cipher.encrypt("bench-static-challenge"))
        await store.put_secret(SECRET, daemon.cipher.encrypt("first value"))
        content = profile_content()
        parsed = parse_profile(content)
        profile_uuid = str(uuid.uuid4())
        await store.add_profile(profile_uuid, parsed.name, "macos", content, parsed.ca_name,
                                kind=parsed.kind, identifier=parsed.identifier, variables=parsed.variables)
        for first in range(0, size, IMPORT_CHUNK):
            await store.import_hosts([(host(i), f"SN{i:010d}", "macos", {"idp_username": f"user{i}@corp.example"})
                                      for i in range(first, min(size, first + IMPORT_CHUNK))])
        out["assigned"] = await store.assign_profile_to_platform(profile_uuid, "macos")
        out["seed_seconds"] = time.perf_counter() - started
        as_csv = b"uuid,serial,platform,idp_username\n" + b"".join(
            b"%s,SN%010d,macos,renamed%d@corp.example\n" % (host(i).encode(), i, i) for i in range(size))
        as_json = json.dumps([{"uuid": host(i), "serial": f"SN{i:010d}", "platform": "macos",
                               "idp_username": f"again{i}@corp.example"} for i in range(size)]).encode()
        out["body_mb"] = {"csv": len(as_csv) / 2**20, "json": len(as_json) / 2**20}

        watch = ReactorWatch(reactor, daemon.pool, daemon.proxy_port)
        watch.start("idle")
        await task.deferLater(reactor, IDLE_SECONDS, lambda: None)

        async def measured(phase, method, path, body=None, content_type="application/json"):
            watch.phase(phase)
            began = time.perf_counter()
            status, answer = await daemon.admin(method, path, body, content_type)
            out[phase + "_seconds"] = time.perf_counter() - began
            watch.phase(None)
            out[phase + "_answer"] = [status, answer.get("result", answer) if isinstance(answer, dict) else answer]
            return answer

        async def process_again(key):
            status, answer = await daemon.admin("POST", "/api/v1/jobs/process_profiles")
            out[key] = answer.get("result", answer)

        await measured("process", "POST", "/api/v1/jobs/process_profiles")
        answer = await measured("secret", "PUT", "/api/v1/secrets/" + SECRET, {"value": "second value"})
        out["secret_resent"] = answer.get("resent")
        await process_again("after_secret")
        await measured("import_csv", "POST", "/api/v1/hosts/import", as_csv, "text/csv")
        await process_again("after_import_csv")
        await measured("import_json", "POST", "/api/v1/hosts/import", as_json)
        await process_again("after_import_json")
        await watch.stop()
        out["mem_after"] = memory_mb()
        for which in ("idle",) + PHASES:
            out[which] = watch.figures(which)
    finally:
        await daemon.stop()
    return out


def child(size, batch_size):
    from twisted.internet import defer, task

    def main(reactor):
        async def run():
            print("RESULT " + json.dumps(await one_run(reactor, size, batch_size)), flush=True)
        return defer.ensureDeferred(run())

    task.react(main)


def checked(r, size) -> list[str]:
    """What in a run's answers says the phases did not do what they measure."""
    problems = []
    if r["process_answer"][1].get("claimed") != size:
        problems.append("process claimed %r" % (r["process_answer"][1],))
    if r["secret_resent"] != size:
        problems.append("secret change resent %r, not %d" % (r["secret_resent"], size))
    for key in ("after_secret", "after_import_csv", "after_import_json"):
        if r[key].get("claimed") != size:
            problems.append("%s: the job claimed %r, not %d" % (key, r[key], size))
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000, help="[profiles] batch_size")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.size, args.batch_size)
    results = []
    for run in range(1, args.runs + 1):
        proc = subprocess.run([sys.executable, __file__, "--child", "--size", str(args.size),
                               "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                              cwd=Path(__file__).parent)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"run {run}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        for problem in checked(r, args.size):
            print(f"run {run}: {problem}", file=sys.stderr)
        results.append(r)
        print(f"run {run}: seeded in {r['seed_seconds']:.1f} s; " + "; ".join(
            f"{p} {r[p + '_seconds']:.2f} s (stall {r[p]['longest_stall_ms']:.0f} ms,"
            f" proxy p99 {r[p]['proxy_p99_ms']:.1f} ms, {r[p]['bad_answers']} not 400)" for p in PHASES)
            + f"; idle proxy p99 {r['idle']['proxy_p99_ms']:.1f} ms; RSS {r['mem_after']['VmRSS']:.0f} MB", flush=True)
    if not results:
        return 1
    med = lambda f: statistics.median(f(r) for r in results)  # noqa: E731
    print(f"\nvalue changes at {args.size:,} host profiles (medians of {len(results)} runs; SQLite)\n")
    head = ("phase", "seconds", "host profiles/s", "÷ process", "stall max ms", "proxy p99 ms", "÷ idle p99")
    print(" | ".join(head))
    process = med(lambda r: r["process_seconds"])
    idle = med(lambda r: r["idle"]["proxy_p99_ms"])
    for phase in PHASES:
        seconds = med(lambda r: r[phase + "_seconds"])
        p99 = med(lambda r: r[phase]["proxy_p99_ms"])
        print(" | ".join([phase, f"{seconds:.2f}", f"{args.size / seconds:,.0f}", f"{seconds / process:.2f}",
                          f"{med(lambda r: r[phase]['longest_stall_ms']):.1f}", f"{p99:.1f}",
                          f"{p99 / idle:.1f}x" if idle else "-"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
